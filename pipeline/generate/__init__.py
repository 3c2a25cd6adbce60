"""Any-to-any generation with a trained model (single-device; no Ray, no DeepSpeed): MaskGIT-style parallel
decoding for grids and other parallel modalities (`parallel.py`), token-by-token decoding for sequences
(`autoregressive.py`), chained over several targets (`chain.py`), decoded to files (`render.py`) and a contact
sheet (`sheet.py`); `run.py` is the generate job's work once its model is loaded."""

from pipeline.generate.chain import generate

__all__ = ["generate"]

"""The any-to-any encoder-decoder, its layers and the size registry. Imports only torch and `schemas`."""

from pipeline.model.fourm import FourM, ModelOutput, build_model, decoder_mask
from pipeline.model.sizes import SIZES, Dims, resolve

__all__ = ["SIZES", "Dims", "FourM", "ModelOutput", "build_model", "decoder_mask", "resolve"]

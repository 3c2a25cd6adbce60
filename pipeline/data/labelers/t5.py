"""`t5_caption`: a T5 encoder's hidden states over the caption, as a fixed-length feature sequence.

4M-21 feeds T5-XXL's encoder states of the caption (up to 77 tokens) to its encoder as input-only continuous
features. Tessera's model reads discrete tokens only, so the states are stored as one (L, C) float16 array per
sample and tokenized by the signal-patch family (pipeline/tokenizers/signal.py), exactly as a time series is:
frames are T5 tokens, channels the hidden size. That needs no tokenizer code of its own, and makes t5_caption a
target as well as an input.

L is `labelers.t5_caption.max_length` (default 80: ml-4m's 77 rounded up to a multiple of 16, so the signal
tokenizer's patches tile it). Rows past the caption's last T5 token (its EOS) are zeros, and a longer caption is
cut to L tokens (EOS kept last), so every member has the same shape, as the signal tokenizer needs.

Weights: a local or s3:// directory holding `config.json`, `model.safetensors` (a T5EncoderModel, or a whole T5
whose encoder is taken) and the tokenizer's files, as `save_pretrained` writes them; loaded with
`local_files_only` and safetensors only. Run T5 in bf16 or fp32: its activations overflow fp16.
"""

from __future__ import annotations

import json

import numpy as np

from pipeline.data.encoding import encode_npy
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler, torch_device, torch_dtype
from pipeline.data.labelers.weights import required_weights, resolve_weights
from schemas.common import StorageConfig
from schemas.preprocess import LabelerConfig

DEFAULT_MAX_LENGTH = 80
FLOAT16_MAX = float(np.finfo(np.float16).max)


@register_labeler
class T5CaptionLabeler(Labeler):
    """`t5_caption`: float16 (L, C) states of T5EncoderModel over the caption, zero past its tokens."""

    modality = "t5_caption"
    needs_weights = True
    needs_pool = True
    reads_pixels = False

    def __init__(self, config: LabelerConfig | None = None, storage: StorageConfig | None = None):
        super().__init__(config, storage)
        import torch  # heavy imports stay out of the decode workers that never build this labeler
        from transformers import AutoTokenizer, T5EncoderModel

        self.torch = torch
        self.max_length = self.config.max_length or DEFAULT_MAX_LENGTH
        path = resolve_weights(required_weights(self.modality, self.config), self.storage)
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type not in ("t5", "umt5", "mt5"):
            raise ValueError(f"weights at {path} are a {model_type!r} model; labeler {self.modality} runs "
                             f"T5EncoderModel")
        self.device, dtype = torch_device(self.config), torch_dtype(self.config)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model, info = T5EncoderModel.from_pretrained(path, local_files_only=True, use_safetensors=True, dtype=dtype,
                                                     output_loading_info=True)
        if info["missing_keys"]:  # an encoder left partly random would still label, with noise
            raise ValueError(f"weights at {path} do not fit T5EncoderModel: missing "
                             f"{', '.join(sorted(info['missing_keys'])[:4])}")
        self.model = model.to(self.device).eval()

    def states(self, captions: list[str]) -> np.ndarray:
        """Captions -> (N, L, C) float32 states, zero at padding."""
        inputs = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with self.torch.inference_mode():
            states = self.model(**inputs).last_hidden_state.float()
            states = states * inputs["attention_mask"].unsqueeze(-1)  # T5 writes states at padding too
        return states.clamp(-FLOAT16_MAX, FLOAT16_MAX).cpu().numpy()

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [encode_npy(states.astype(np.float16)) for states in self.states(batch.captions)]

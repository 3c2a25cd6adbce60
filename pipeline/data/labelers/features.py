"""Feature maps and global embeddings of frozen vision transformers: CLIP and DINOv2, as 4M-21 extracts them.

Feature maps are float16 (h, w, C) over the patch grid of the model's input (14x14 for CLIP-B/16 and 16x16 for
DINOv2-B/14 at 224 px, 4M-21's 196 and 256 tokens); global embeddings are float16 (C,).
"""

from __future__ import annotations

import numpy as np

from pipeline.data.labelers.base import register_labeler
from pipeline.data.labelers.image_model import ImageModelLabeler


def patch_grid(tokens, pixel_values, patch: int):
    """(N, h*w, C) patch tokens -> (N, h, w, C) over the input's patch grid."""
    height, width = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    return tokens.reshape(tokens.shape[0], height, width, tokens.shape[-1])


@register_labeler
class ClipFeatureLabeler(ImageModelLabeler):
    """`clip_feature`: CLIP's patch tokens after the final LayerNorm and the visual projection (C = projection_dim,
    512 for B/16), which is what ml-4m's CLIP feature tokenizer is trained on; the CLS token is dropped."""

    modality = "clip_feature"
    architecture = "CLIPVisionModelWithProjection"

    def predict(self, pixel_values, out_size: tuple[int, int]) -> np.ndarray:
        hidden = self.model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state
        tokens = self.model.visual_projection(self.model.vision_model.post_layernorm(hidden[:, 1:]))
        return patch_grid(tokens, pixel_values, self.patch_size()).float().cpu().numpy().astype(np.float16)


@register_labeler
class Dinov2FeatureLabeler(ImageModelLabeler):
    """`dinov2_feature`: DINOv2's normalised patch tokens (its `x_norm_patchtokens`)."""

    modality = "dinov2_feature"
    architecture = "Dinov2Model"

    def predict(self, pixel_values, out_size: tuple[int, int]) -> np.ndarray:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # final LayerNorm applied; no registers
        return patch_grid(hidden[:, 1:], pixel_values, self.patch_size()).float().cpu().numpy().astype(np.float16)


@register_labeler
class Dinov2GlobalLabeler(ImageModelLabeler):
    """`dinov2_global`: DINOv2's normalised CLS token (its `x_norm_clstoken`)."""

    modality = "dinov2_global"
    architecture = "Dinov2Model"

    def predict(self, pixel_values, out_size: tuple[int, int]) -> np.ndarray:
        return self.model(pixel_values=pixel_values).pooler_output.float().cpu().numpy().astype(np.float16)

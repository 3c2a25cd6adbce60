"""Per-pixel pseudo-labels from DPT and SegFormer: depth, surface normals and semantic segmentation.

Each model runs at its processor's input size; its prediction is resized bilinearly to the sample's resolution
(before the argmax for segmentation, as transformers' own post-processing does), so every map lines up pixel for
pixel with the sample's `rgb`.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.labelers.base import register_labeler
from pipeline.data.labelers.image_model import ImageModelLabeler

FLOAT16_MAX = float(np.finfo(np.float16).max)


@register_labeler
class DepthLabeler(ImageModelLabeler):
    """`depth`: float16 (H, W), whatever the DPT checkpoint predicts (relative inverse depth for MiDaS weights,
    depth for Omnidata's)."""

    modality = "depth"
    architecture = "DPTForDepthEstimation"

    def predict(self, pixel_values, out_size: tuple[int, int]) -> np.ndarray:
        depth = self.model(pixel_values=pixel_values).predicted_depth.unsqueeze(1)
        depth = self.resize_to(depth, out_size)[:, 0].clamp(-FLOAT16_MAX, FLOAT16_MAX)
        return depth.cpu().numpy().astype(np.float16)


@register_labeler
class SurfaceNormalLabeler(ImageModelLabeler):
    """`normal`: uint8 RGB (H, W, 3) = (n + 1) / 2 * 255 of the unit normal n, from DPTForSurfaceNormals."""

    modality = "normal"
    architecture = "DPTForSurfaceNormals"

    def model_class(self) -> type:
        from pipeline.data.labelers.dpt_normals import DPTForSurfaceNormals

        return DPTForSurfaceNormals

    def predict(self, pixel_values, out_size: tuple[int, int]) -> np.ndarray:
        encoded = self.model(pixel_values=pixel_values).predicted_depth  # (N, 3, h, w): (n + 1) / 2, see dpt_normals
        normals = self.resize_to(encoded, out_size).clamp(0, 1) * 2 - 1
        # Unit length after resizing, since interpolation shortens vectors; a zero vector stays zero (mid-grey).
        normals = self.torch.nn.functional.normalize(normals, dim=1, eps=1e-6)
        rgb = ((normals + 1) * 127.5).round().clamp(0, 255).to(self.torch.uint8)
        return rgb.permute(0, 2, 3, 1).cpu().numpy()


@register_labeler
class SemanticSegmentationLabeler(ImageModelLabeler):
    """`semseg`: uint8 (H, W) class ids, the argmax of SegFormer's logits at the sample's resolution."""

    modality = "semseg"
    architecture = "SegformerForSemanticSegmentation"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model.config.num_labels > 256:
            raise ValueError(f"semseg stores class ids as uint8; the model has {self.model.config.num_labels} classes")

    def predict(self, pixel_values, out_size: tuple[int, int]) -> np.ndarray:
        logits = self.resize_to(self.model(pixel_values=pixel_values).logits, out_size)
        return logits.argmax(dim=1).to(self.torch.uint8).cpu().numpy()

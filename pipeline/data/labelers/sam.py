"""SAM pseudo-labels, as 4M-21 makes them: automatic instance masks (`sam_instance`) and their edges (`sam_edge`).

Automatic mask generation (Kirillov et al., 2023) with transformers' `SamModel`, directly in torch and batched: the
image encoder runs once per image; a regular grid of `points_per_side ** 2` single-point prompts goes through the
prompt encoder and mask decoder `points_per_batch` at a time, each prompt giving SAM's three candidate masks. A
candidate is kept when its predicted IoU and its stability score (the IoU of the mask thresholded at +offset and
-offset logits: how little it moves with the threshold) reach their thresholds; duplicates are removed by greedy
non-maximum suppression on mask IoU, best predicted IoU first. transformers' mask-generation pipeline does the
same in numpy one image at a time; this keeps every step on the model's device.

The two modalities are two labelers, so each has its own actor pool and runs SAM itself: a labeler makes one
modality, and sharing one run between two pools would need a cross-pool cache for no other modality's benefit.
Both come from the same masks (same weights, same settings), so the edges are exactly the instances' boundaries.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.data.encoding import encode_png
from pipeline.data.labelers.base import register_labeler
from pipeline.data.labelers.image_model import ImageModelLabeler
from schemas.instances import sort_by_area, write_instances
from schemas.preprocess import MaskGenerationConfig

MASK_THRESHOLD = 0.0  # SAM's logit threshold for a pixel to be in the mask


def point_grid(points_per_side: int, size: int) -> np.ndarray:
    """(points_per_side ** 2, 2) (x, y) prompt coordinates at the cell centres of a regular grid over `size` px."""
    centres = (np.arange(points_per_side) + 0.5) / points_per_side * size
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def stability_scores(logits, offset: float):
    """IoU between the masks thresholded at +offset and at -offset (the first lies inside the second)."""
    inner = (logits > MASK_THRESHOLD + offset).flatten(1).sum(1)
    outer = (logits > MASK_THRESHOLD - offset).flatten(1).sum(1)
    return inner.float() / outer.clamp(min=1).float()


def mask_nms(masks, scores, iou_threshold: float):
    """Indices of the masks kept by greedy non-maximum suppression on mask IoU, best score first."""
    import torch

    order = torch.argsort(scores, descending=True)
    flat = masks[order].flatten(1).float()
    areas = flat.sum(1)
    intersection = flat @ flat.T
    iou = intersection / (areas[:, None] + areas[None, :] - intersection).clamp(min=1)
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=masks.device)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[keep]


def instance_edges(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks -> (H, W) uint8 0/255: pixels of a mask with a 4-neighbour outside it. The image
    border is not an edge: a mask running off the image has no boundary there."""
    masks = np.asarray(masks, bool)
    inner = masks.copy()
    inner[:, 1:] &= masks[:, :-1]
    inner[:, :-1] &= masks[:, 1:]
    inner[:, :, 1:] &= masks[:, :, :-1]
    inner[:, :, :-1] &= masks[:, :, 1:]
    edges = (masks & ~inner).any(axis=0) if len(masks) else np.zeros(masks.shape[1:], bool)
    return edges.astype(np.uint8) * 255


class SamMaskGenerator(ImageModelLabeler):
    """SAM's automatic masks of each image: `predict` gives every kept mask at the sample's resolution, largest
    first; the two modalities differ only in how they `encode` them."""

    architecture = "SamModel"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings: MaskGenerationConfig = self.config.mask_generation
        # SAM's encoder takes exactly its trained input size (a square, as Tessera's samples are), whatever the
        # processor's `longest_edge` + padding recipe says for other shapes.
        side = self.model.config.vision_config.image_size
        self.input = dataclasses.replace(self.input, size=(side, side))
        self.points = self.torch.from_numpy(point_grid(self.settings.points_per_side, side)).to(self.device)

    def predict(self, pixel_values, out_size: tuple[int, int]) -> list[np.ndarray]:
        embeddings = self.model.get_image_embeddings(pixel_values)
        return [self.image_masks(embeddings[i:i + 1], out_size) for i in range(len(embeddings))]

    def image_masks(self, embedding, out_size: tuple[int, int]) -> np.ndarray:
        """(N, H, W) bool: the kept masks of one image."""
        torch, settings = self.torch, self.settings
        masks, scores = [], []
        for start in range(0, len(self.points), settings.points_per_batch):
            points = self.points[start:start + settings.points_per_batch]
            output = self.model(image_embeddings=embedding, input_points=points[None, :, None, :],
                                input_labels=torch.ones((1, len(points), 1), dtype=torch.long, device=self.device),
                                multimask_output=True)
            logits = output.pred_masks[0].flatten(0, 1)[:, None]  # (prompts * 3, 1, h, w)
            logits = self.resize_to(logits, out_size)[:, 0]
            iou = output.iou_scores[0].flatten().float()
            good = ((iou >= settings.pred_iou_threshold)
                    & (stability_scores(logits, settings.stability_offset) >= settings.stability_threshold))
            binary = logits[good] > MASK_THRESHOLD
            nonempty = binary.flatten(1).any(1)
            masks.append(binary[nonempty])
            scores.append(iou[good][nonempty])
        masks, scores = torch.cat(masks), torch.cat(scores)
        if len(masks):
            masks = masks[mask_nms(masks, scores, settings.nms_iou)]
        return sort_by_area(masks.cpu().numpy())


@register_labeler
class SamInstanceLabeler(SamMaskGenerator):
    """`sam_instance`: the `max_instances` largest masks, packed (schemas/instances.py)."""

    modality = "sam_instance"

    def encode(self, output: np.ndarray) -> bytes:
        return write_instances(output[:self.settings.max_instances])


@register_labeler
class SamEdgeLabeler(SamMaskGenerator):
    """`sam_edge`: uint8 0/255 (H, W), the boundaries of every kept mask (4M-21's SAM edges)."""

    modality = "sam_edge"

    def encode(self, output: np.ndarray) -> bytes:
        return encode_png(instance_edges(output))

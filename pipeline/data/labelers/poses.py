"""`human_poses`: 2-D COCO-17 keypoints of every person in the image, top-down: people first, then ViTPose.

4M-21's human_poses are HMR2.0's outputs (SMPL body pose, shape and camera per person, binned into text). HMR2.0 has
no transformers architecture and ships pickled weights only, so Tessera labels the same people with transformers'
VitPoseForPoseEstimation and writes 2-D keypoints instead: same name and role, a different (2-D) label, and tokens
that are not ml-4m's.

- People: the det labeler (pipeline/data/labelers/detection.py) runs in-process on the same images, DETR when
  `labelers.human_poses.detector_weights` names its weights, else its offline OpenCV detector; its "person" boxes
  are kept, the MAX_PEOPLE largest.
- Crops: as ViTPose's image processor makes them (box widened to the model's aspect ratio, grown by 1.25, the
  window resampled bilinearly to the input size with zeros outside the image), here in torch, batched on the
  model's device.
- Keypoints: the heatmaps decoded by the processor's own `keypoints_from_heatmaps` (argmax refined by DARK, mapped
  back through the crop), so decoding is transformers' reference; a keypoint's score is its heatmap maximum.

Member (JSON, pixels of the sample), people largest box first, keypoints in COCO order (COCO_KEYPOINTS in
pipeline/tokenizers/poses.py, which also turns this record into tokens), clipped to the person's crop window and
to the image:

    {"width": W, "height": H,
     "people": [{"box": [x0, y0, x1, y1], "score": detector score, "keypoints": [[x, y, score], ... x 17]}, ...]}

Weights: a local or s3:// directory with `config.json`, `model.safetensors` and `preprocessor_config.json`, as
`save_pretrained` writes them (e.g. usyd-community/vitpose-base-simple); safetensors only, nothing downloaded.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.labelers.base import DecodedBatch, register_labeler
from pipeline.data.labelers.detection import DetectionLabeler
from pipeline.data.labelers.image_model import ImageModelLabeler
from pipeline.tokenizers.poses import COCO_KEYPOINTS, box_area
from schemas.common import StorageConfig
from schemas.preprocess import LabelerConfig

PERSON = "person"  # the det labeler's class name for people (COCO's)
MAX_PEOPLE = 16  # crops per image: a crowd's far figures cost compute, and max_tokens holds about 5 people anyway
BOX_PADDING = 1.25  # ViTPose's crop margin around a person box
SCALE_UNIT = 200.0  # transformers' keypoint decoding takes crop sizes in units of 200 px (mmpose's convention)
DARK_KERNEL = 11  # heatmap smoothing of the DARK refinement, transformers' default


def crop_windows(boxes: np.ndarray, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) xyxy boxes -> (centres, sizes) of ViTPose's crops, (n, 2) each in pixels: each box widened or
    heightened to the model's width / height `aspect`, then grown by BOX_PADDING."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes = np.stack([np.maximum(width, height * aspect), np.maximum(height, width / aspect)], axis=1)
    return centres, sizes * BOX_PADDING


@register_labeler
class HumanPoseLabeler(ImageModelLabeler):
    modality = "human_poses"
    architecture = "VitPoseForPoseEstimation"

    def __init__(self, config: LabelerConfig | None = None, storage: StorageConfig | None = None):
        super().__init__(config, storage)
        from transformers import VitPoseImageProcessorPil

        if self.input.size is None:
            raise ValueError("the ViTPose weights' preprocessor_config.json gives no input size")
        if self.model.config.num_labels != len(COCO_KEYPOINTS):
            raise ValueError(f"human_poses writes COCO's {len(COCO_KEYPOINTS)} keypoints; the model predicts "
                             f"{self.model.config.num_labels}")
        # Reads the processor's JSON only.
        self.decoder = VitPoseImageProcessorPil.from_pretrained(self.weights_dir, local_files_only=True)
        # ViTPose+ (a mixture of experts per dataset) needs the dataset's index: COCO's is 0 in its checkpoints.
        self.experts = self.model.config.backbone_config.num_experts
        # The det labeler in-process, with this labeler's resources and score threshold.
        detector = self.config.model_copy(update={"weights": self.config.detector_weights})
        self.detector = DetectionLabeler(detector, self.storage)

    def people(self, batch: DecodedBatch) -> list[list[tuple[list[float], float]]]:
        """Per image, the det labeler's person (xyxy box in pixels, score) pairs, the MAX_PEOPLE largest first."""
        height, width = batch.images.shape[1:3]
        scale = (width, height, width, height)  # det's boxes are fractions of the sample
        found = []
        for detections in self.detector.detect(batch):
            persons = [([v * s for v, s in zip(d.box, scale)], d.score) for d in detections if d.name == PERSON]
            found.append(sorted(persons, key=lambda p: -box_area(p[0]))[:MAX_PEOPLE])
        return found

    def crops(self, images: np.ndarray, owners: np.ndarray, centres: np.ndarray, sizes: np.ndarray):
        """The normalised (n, 3, h, w) model inputs of n person windows of `images[owners]`."""
        torch = self.torch
        height, width = self.input.size
        pixels = torch.from_numpy(np.ascontiguousarray(images[owners])).to(self.device).permute(0, 3, 1, 2).float()
        centre = torch.as_tensor(centres, dtype=torch.float32, device=self.device)
        size = torch.as_tensor(sizes, dtype=torch.float32, device=self.device)
        # Output pixel u samples x = cx - w/2 + u * w / (out_w - 1): the processor's (unbiased) warp, same corners.
        xs = centre[:, :1] + size[:, :1] * (torch.arange(width, device=self.device) / (width - 1) - 0.5)
        ys = centre[:, 1:] + size[:, 1:] * (torch.arange(height, device=self.device) / (height - 1) - 0.5)
        grid_x = (2 * xs / (images.shape[2] - 1) - 1)[:, None, :].expand(-1, height, -1)
        grid_y = (2 * ys / (images.shape[1] - 1) - 1)[:, :, None].expand(-1, -1, width)
        windows = torch.nn.functional.grid_sample(pixels, torch.stack([grid_x, grid_y], dim=-1), mode="bilinear",
                                                  padding_mode="zeros", align_corners=True)
        # Zero, not a blend with the zero border, where a sample falls outside the outermost pixel centres, as
        # the processor's scipy warp (mode "constant") does.
        inside = (grid_x.abs() <= 1) & (grid_y.abs() <= 1)
        windows = windows * inside[:, None]
        if self.input.rescale is not None:
            windows = windows * self.input.rescale
        mean = torch.tensor(self.input.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.input.std, device=self.device).view(1, 3, 1, 1)
        return ((windows - mean) / std).to(self.dtype)

    def keypoints(self, images: np.ndarray, owners: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(n, 17, 3) x, y, score of the people in `boxes` (xyxy pixels of `images[owners]`)."""
        torch = self.torch
        height, width = self.input.size
        centres, sizes = crop_windows(boxes, width / height)
        heatmaps = []
        with torch.inference_mode():
            for start in range(0, len(boxes), self.config.batch_size):
                part = slice(start, start + self.config.batch_size)
                pixel_values = self.crops(images, owners[part], centres[part], sizes[part])
                extra = {"dataset_index": torch.zeros(len(pixel_values), dtype=torch.long, device=self.device)
                         } if self.experts > 1 else {}
                heatmaps.append(self.model(pixel_values=pixel_values, **extra).heatmaps.float().cpu().numpy())
        coords, scores = self.decoder.keypoints_from_heatmaps(np.concatenate(heatmaps), centres, sizes / SCALE_UNIT,
                                                              kernel=DARK_KERNEL)
        # Clipped to the person's crop window (the model saw nothing beyond it; DARK's refinement of a flat
        # heatmap can step past its edge) and to the image.
        low = np.maximum(centres - sizes / 2, 0)[:, None]
        high = np.minimum(centres + sizes / 2, [images.shape[2], images.shape[1]])[:, None]
        return np.concatenate([np.clip(coords, low, high), scores], axis=-1)

    def label(self, batch: DecodedBatch) -> list[bytes]:
        people = self.people(batch)
        height, width = batch.images.shape[1:3]
        records = [{"width": int(width), "height": int(height), "people": []} for _ in people]
        owners = np.array([i for i, found in enumerate(people) for _ in found], dtype=np.int64)
        if len(owners):
            flat = [person for found in people for person in found]
            points = self.keypoints(batch.images, owners, np.array([box for box, _ in flat]))
            for owner, (box, score), keypoints in zip(owners, flat, points):
                records[owner]["people"].append({"box": [round(v, 2) for v in box], "score": round(score, 4),
                                                 "keypoints": [[round(float(x), 2), round(float(y), 2),
                                                                round(float(s), 4)] for x, y, s in keypoints]})
        return [self.encode(record) for record in records]

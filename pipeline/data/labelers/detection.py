"""`det`: object boxes, written as ml-4m's record (schemas/labels.py: boxes as fractions of the sample, class name,
score; highest score first), by one of two detectors:

- with `labelers.det.weights` (a local or s3:// directory as `save_pretrained` writes it): a transformers object
  detector of any architecture `AutoModelForObjectDetection` maps (DETR, Conditional / Deformable DETR, RT-DETR,
  YOLOS, ...), run batched on the actor's device. The weights' own image processor decodes the outputs
  (`post_process_object_detection`: softmax with a no-object class for DETR, sigmoid for its successors), so every
  architecture is decoded exactly as transformers decodes it; class names are the model's `id2label`. A DETR
  checkpoint whose config asks for a timm backbone (facebook/detr-resnet-50's main revision) needs `timm`, which
  Tessera does not install: use its `no_timm` revision, whose ResNet is transformers' own.
- without weights: the trained detectors that ship inside opencv-python-headless, so a run downloads nothing:
  the HOG + linear SVM people detector (Dalal & Triggs 2005) and the Viola-Jones frontal-face Haar cascade, as
  classes "person" and "face". Their score is the logistic of each detector's own decision value (the SVM margin;
  the cascade's last-stage sum): it ranks boxes and makes `score_threshold` monotone in the detector's confidence,
  but it is not a calibrated probability.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline.data.encoding import encode_json
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler
from pipeline.data.labelers.image_model import ImageModelLabeler
from schemas.common import StorageConfig
from schemas.labels import Detection, detection_record
from schemas.preprocess import LabelerConfig

# HOG scans a 64 x 128 px window over an image pyramid that only shrinks the image; upscaling the sample 2x first
# finds people from 64 px tall in it (half a window), the smallest INRIA pedestrians the detector was trained on.
PEOPLE_UPSCALE = 2
HOG_WINDOW = (64, 128)  # (width, height) of OpenCV's default people detector
HOG_STRIDE, HOG_PADDING, HOG_PYRAMID = (8, 8), (8, 8), 1.05  # OpenCV's people-detection sample settings
FACE_CASCADE = "haarcascade_frontalface_default.xml"
FACE_PYRAMID = 1.1
# Raw cascade hits that must overlap for a face to be kept: with 4, 82 of the 100 faces of skimage's LFW subset at
# 64 px are found and none of its 100 non-faces (3: 86 and none; tests/test_det_labeler.py checks it).
FACE_NEIGHBOURS = 4


def logistic(margin: float) -> float:
    return 1.0 / (1.0 + math.exp(-margin))


class OpenCVDetector:
    """People (HOG) and frontal faces (Haar cascade), from OpenCV's shipped models; CPU only."""

    def __init__(self, threshold: float):
        import cv2  # heavy import kept out of processes that never build this detector

        self.cv2, self.threshold = cv2, threshold
        self.people = cv2.HOGDescriptor()
        self.people.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        cascade = Path(cv2.data.haarcascades) / FACE_CASCADE
        self.faces = cv2.CascadeClassifier(str(cascade))
        if self.faces.empty():
            raise FileNotFoundError(f"OpenCV's face cascade {cascade} is missing or unreadable")

    def boxes(self, rects, margins, name: str, width: float, height: float) -> list[Detection]:
        """(x, y, w, h) rectangles in pixels of a (width, height) image -> detections above the threshold."""
        found = []
        for (x, y, w, h), margin in zip(np.asarray(rects).reshape(-1, 4), np.ravel(margins)):
            score = logistic(float(margin))
            if score >= self.threshold:
                box = (max(float(x) / width, 0.0), max(float(y) / height, 0.0), min(float(x + w) / width, 1.0),
                       min(float(y + h) / height, 1.0))
                found.append(Detection(box, name, score))
        return found

    def detect_one(self, image: np.ndarray) -> list[Detection]:
        cv2 = self.cv2
        height, width = image.shape[:2]
        found = []
        if height * PEOPLE_UPSCALE >= HOG_WINDOW[1] and width * PEOPLE_UPSCALE >= HOG_WINDOW[0]:
            size = (width * PEOPLE_UPSCALE, height * PEOPLE_UPSCALE)
            large = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_LINEAR)
            # Colour input: HOG takes each pixel's strongest channel gradient, as Dalal & Triggs did.
            rects, margins = self.people.detectMultiScale(large, winStride=HOG_STRIDE, padding=HOG_PADDING,
                                                          scale=HOG_PYRAMID)
            found += self.boxes(rects, margins, "person", *size)
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        rects, _, margins = self.faces.detectMultiScale3(gray, scaleFactor=FACE_PYRAMID, minNeighbors=FACE_NEIGHBOURS,
                                                         outputRejectLevels=True)
        return found + self.boxes(rects, margins, "face", width, height)

    def detect(self, images: np.ndarray) -> list[list[Detection]]:
        return [self.detect_one(image) for image in images]


class ObjectDetectionModel(ImageModelLabeler):
    """The configured transformers detector, loaded and fed like every image model (image_model.py); the det
    labeler's backend when weights are set, never registered on its own."""

    modality = "det"
    architecture = "AutoModelForObjectDetection"  # replaced by the weights' concrete class in load_model

    def __init__(self, config: LabelerConfig | None = None, storage: StorageConfig | None = None):
        super().__init__(config, storage)
        from transformers import AutoImageProcessor

        # Reads preprocessor_config.json only (JSON, nothing unpickled).
        self.processor = AutoImageProcessor.from_pretrained(self.weights_dir, local_files_only=True)

    def load_model(self, path: Path):
        from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES as DETECTORS

        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type not in DETECTORS:
            raise ValueError(f"weights at {path} are a {model_type!r} model, not an object detector; labeler det "
                             f"runs one of {sorted(DETECTORS)}")
        self.architecture = DETECTORS[model_type]
        return super().load_model(path)

    def predict(self, pixel_values, out_size: tuple[int, int]) -> list[list[Detection]]:
        outputs = self.model(pixel_values=pixel_values)
        # No target sizes: boxes stay (xmin, ymin, xmax, ymax) fractions of the input, i.e. of the sample.
        results = self.processor.post_process_object_detection(outputs, threshold=self.config.score_threshold)
        names = self.model.config.id2label
        found = []
        for result in results:
            boxes = result["boxes"].float().clamp(0, 1).cpu().numpy().tolist()
            scores = result["scores"].float().clamp(0, 1).cpu().numpy().tolist()
            labels = result["labels"].cpu().numpy().tolist()
            found.append([Detection(tuple(box), str(names.get(label, label)), score)
                          for box, score, label in zip(boxes, scores, labels)])
        return found

    def detect(self, images: np.ndarray) -> list[list[Detection]]:
        with self.torch.inference_mode():
            return self.predict(self.pixel_values(images), tuple(images.shape[1:3]))


@register_labeler
class DetectionLabeler(Labeler):
    """`det`: the weights' transformers detector, or OpenCV's people and face detectors when no weights are set."""

    modality = "det"
    # A model, or OpenCV's multi-scale scans (about 0.2 s per 224 px image on one core): either way its own actors.
    needs_pool = True

    def __init__(self, config: LabelerConfig | None = None, storage: StorageConfig | None = None):
        super().__init__(config, storage)
        if self.config.weights:
            self.detector = ObjectDetectionModel(self.config, self.storage)
        else:
            self.detector = OpenCVDetector(self.config.score_threshold)

    def detect(self, batch: DecodedBatch) -> list[list[Detection]]:
        """Per sample, its detections (boxes as fractions of the sample)."""
        return self.detector.detect(batch.images)

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [encode_json(detection_record(found)) for found in self.detect(batch)]

"""How a decoded dense or vector target is scored: by the metrics its `Values` kind implies, against the label
shard's ground truth, next to the kind's trivial baseline fitted on the fit set. Decoding tasks (decoding.py) and
anything else that turns tokens back into maps or vectors score through `score_decoded`.

    kind         what the metrics compare                 metrics                 baseline, fitted on the fit set
    color        pixel values (H, W, 3)                   psnr                    mean colour everywhere
    depth        depth (H, W), 0 = no measurement         abs_rel, delta1         mean depth everywhere
    classes      class ids (H, W), 255 ignored            miou                    majority class everywhere
    binary       pixel > 127 (H, W): edges, masks         f1 of positive pixels   better of all / no positives
    unit_vector  rgb / 127.5 - 1 (H, W, 3): normals       mean_angle_deg          mean direction everywhere
    features     per-patch vectors (h, w, C)              cosine (mean per patch) mean feature everywhere
    vector       one embedding (C,)                       cosine (mean per sample) mean embedding

Metric names are those of the tokenizers' own reconstruction scores (pipeline/tokenizers/codecs.py), so a task's
number reads against what the tokenizer alone reaches on the same labels: decode(encode(label)) bounds the model.
Predictions at another resolution than the label's are resampled to it, channel by channel: nearest neighbour for
class ids and masks (values in between mean nothing), bilinear otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.eval import baselines, metrics
from pipeline.eval.context import EvalSample
from pipeline.eval.registry import Metric
from schemas.modalities import Values

IGNORE_INDEX = 255  # class maps: pixels without a label


@dataclass(frozen=True)
class KindScoring:
    """How one `Values` kind is scored."""

    metrics: tuple[Metric, ...]
    baseline: str  # what the trivial baseline is, as the task registry reports it
    values: Callable[[np.ndarray], np.ndarray]  # a label-format array -> what the metrics compare
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]]  # (pred, true), pooled over the samples
    constant: Callable[[list[np.ndarray]], Any]  # the fit set's values -> the baseline's value everywhere
    nearest: bool = False  # resampled with nearest neighbour
    vectors: bool = False  # the last axis is one vector, pooled as rows, rather than pixels


def _class_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    # Every class either side names counts, so predicting a class absent from the truth costs an IoU of 0.
    num_classes = int(max(pred.max(initial=0), true[true != IGNORE_INDEX].max(initial=0))) + 1
    return {"miou": metrics.mean_iou(pred, true, num_classes, IGNORE_INDEX)}


def _unit_vectors(encoded: np.ndarray) -> np.ndarray:
    return np.asarray(encoded, np.float64) / 127.5 - 1  # lengths do not matter to the angle


def _as_float(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, np.float64)


def _cosine(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {"cosine": metrics.mean_cosine(pred, true)}


SCORING: dict[Values, KindScoring] = {
    Values.COLOR: KindScoring((Metric("psnr", True),), "mean colour", _as_float,
                              lambda p, t: {"psnr": metrics.psnr(p, t)}, baselines.mean_vector, vectors=True),
    Values.DEPTH: KindScoring((Metric("abs_rel", False), Metric("delta1", True)), "mean depth", _as_float,
                              lambda p, t: {"abs_rel": metrics.abs_rel(p, t), "delta1": metrics.delta_accuracy(p, t)},
                              baselines.mean_value),
    Values.CLASSES: KindScoring((Metric("miou", True),), "majority class", lambda a: np.asarray(a, np.int64),
                                _class_scores, lambda fit: baselines.majority_value(fit, IGNORE_INDEX), nearest=True),
    Values.BINARY: KindScoring((Metric("f1", True),), "better of all-positive and all-negative",
                               lambda a: np.asarray(a) > 127, lambda p, t: {"f1": metrics.edge_f1(p, t)},
                               lambda fit: baselines.best_constant_mask(fit, metrics.edge_f1), nearest=True),
    Values.UNIT_VECTOR: KindScoring((Metric("mean_angle_deg", False),), "mean direction", _unit_vectors,
                                    lambda p, t: {"mean_angle_deg": metrics.mean_angle_error(p, t)},
                                    baselines.mean_direction, vectors=True),
    Values.FEATURES: KindScoring((Metric("cosine", True),), "mean feature", _as_float, _cosine,
                                 baselines.mean_vector, vectors=True),
    Values.VECTOR: KindScoring((Metric("cosine", True),), "mean embedding", _as_float, _cosine,
                               baselines.mean_vector, vectors=True),
}


def scoring(values: Values | None) -> KindScoring:
    if values not in SCORING:
        raise ValueError(f"no decoded-target scoring for values {values}; scored kinds: {[v.value for v in SCORING]}")
    return SCORING[values]


def read_label(sample: EvalSample, folder: str) -> np.ndarray:
    """A label-shard member as an array: `.npy` as stored, images as their pixel values."""
    members = sample.aux[folder]
    if "npy" in members:
        return np.load(io.BytesIO(members["npy"]), allow_pickle=False)
    (payload,) = members.values()
    return np.asarray(Image.open(io.BytesIO(payload)))


def resize_to(prediction: np.ndarray, shape: tuple[int, ...], nearest: bool) -> np.ndarray:
    """`prediction` at the label's spatial size `shape[:2]`; vectors (1-D) and maps already that size as given."""
    prediction = np.asarray(prediction)
    if prediction.ndim == 3 and len(shape) == 2:  # a one-channel map decoded as (H, W, 1)
        prediction = prediction[..., 0]
    if prediction.ndim < 2 or prediction.shape[:2] == tuple(shape[:2]):
        return prediction
    mode, dtype = (Image.NEAREST, np.int32) if nearest else (Image.BILINEAR, np.float32)

    def plane(values: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(values.astype(dtype)).resize((shape[1], shape[0]), mode))

    if prediction.ndim == 2:
        return plane(prediction)
    return np.stack([plane(prediction[..., c]) for c in range(prediction.shape[-1])], axis=-1)


def _pooled(arrays: Sequence[np.ndarray], kind: KindScoring) -> np.ndarray:
    values = [kind.values(a) for a in arrays]
    return np.concatenate([v.reshape(-1, v.shape[-1]) if kind.vectors else v.ravel() for v in values])


def score_decoded(values: Values | None, pred: Sequence[np.ndarray], truth: Sequence[np.ndarray],
                  fit_truth: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    """(model scores, baseline scores): `pred` (decoded label-format arrays, one per `truth` array) and the kind's
    constant fitted on `fit_truth`, each scored against `truth` by the kind's metrics."""
    kind = scoring(values)
    if len(pred) != len(truth) or not truth:
        raise ValueError(f"{len(pred)} predictions for {len(truth)} labels")
    true = _pooled(truth, kind)
    predicted = _pooled([resize_to(p, t.shape, kind.nearest) for p, t in zip(pred, truth)], kind)
    constant = kind.constant([kind.values(t) for t in fit_truth])
    return kind.score(predicted, true), kind.score(np.broadcast_to(np.asarray(constant, true.dtype), true.shape), true)

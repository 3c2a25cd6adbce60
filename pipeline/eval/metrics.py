"""Evaluation metrics on numpy arrays: one function per metric, each a plain formula with its conventions stated.

Every metric returns a Python float so results rows stay plain data (parquet, markdown, JSON).
"""

from __future__ import annotations

import math

import numpy as np


def _valid_depth(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Pixels scored for depth: finite, positive ground truth (0 marks 'no measurement' in depth maps)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    mask = np.isfinite(target) & (target > 0)
    if valid is not None:
        mask &= np.asarray(valid, bool)
    if not mask.any():
        raise ValueError("no valid ground-truth depth to score")
    return pred[mask], target[mask]


def abs_rel(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean absolute relative error |pred - gt| / gt over valid pixels (lower is better)."""
    p, t = _valid_depth(pred, target, valid)
    return float(np.mean(np.abs(p - t) / t))


def delta_accuracy(pred: np.ndarray, target: np.ndarray, threshold: float = 1.25,
                   valid: np.ndarray | None = None) -> float:
    """Fraction of valid pixels with max(pred/gt, gt/pred) < threshold (higher is better).

    Non-positive predictions count as misses rather than dividing by zero."""
    p, t = _valid_depth(pred, target, valid)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(p / t, t / p)
    ratio = np.where(p > 0, ratio, np.inf)
    return float(np.mean(ratio < threshold))


def mean_iou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> float:
    """Mean over classes of intersection / union, pixels whose ground truth is `ignore_index` left out.

    A class is averaged only where it occurs in the ground truth or the prediction (its union is non-empty), the
    usual convention: a class absent from both is neither right nor wrong."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in size")
    keep = np.ones_like(target, bool) if ignore_index is None else target != ignore_index
    pred, target = pred[keep].astype(np.int64), target[keep].astype(np.int64)
    if pred.size == 0:
        raise ValueError("every pixel is ignored")
    inside = (pred >= 0) & (pred < num_classes)
    if ((target < 0) | (target >= num_classes)).any():
        raise ValueError(f"ground-truth class outside [0, {num_classes})")
    # Confusion matrix in one bincount; predictions outside the classes only count against their target class.
    confusion = np.bincount(target[inside] * num_classes + pred[inside], minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)
    intersection = np.diag(confusion).astype(np.float64)
    target_count = np.bincount(target, minlength=num_classes)
    pred_count = confusion.sum(axis=0)
    union = target_count + pred_count - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present]))


def token_accuracy(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of (unmasked) positions where the predicted id equals the target id."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    keep = np.ones(target.shape, bool) if mask is None else np.asarray(mask, bool)
    if not keep.any():
        raise ValueError("no positions to score")
    return float(np.mean(pred[keep] == target[keep]))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)  # stable: exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_nll(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target id under softmax(logits): logits (..., V), target (...)."""
    logp = log_softmax(logits)
    target = np.asarray(target, np.int64)
    if logp.shape[:-1] != target.shape:
        raise ValueError(f"logits {logp.shape} do not match targets {target.shape}")
    return -np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]


def perplexity(logits: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """exp(mean negative log-likelihood of the target ids) from logits (..., V) (lower is better)."""
    nll = token_nll(logits, target)
    keep = np.ones(nll.shape, bool) if mask is None else np.asarray(mask, bool)
    if not keep.any():
        raise ValueError("no positions to score")
    return float(np.exp(nll[keep].mean()))


def recall_at_k(queries: np.ndarray, gallery: np.ndarray, k: int, labels: np.ndarray | None = None) -> float:
    """Fraction of queries with a true match among the k most cosine-similar gallery rows. Rows pair row by row:
    gallery row j matches query i when j == i, or, given `labels` (one per row pair), when their labels are equal.
    Ties are broken against the true matches, so a constant embedding scores no better than chance."""
    queries, gallery = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    if queries.shape != gallery.shape:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must pair row by row")
    labels = np.arange(len(queries)) if labels is None else np.asarray(labels)
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    similarity = q @ g.T
    match = labels[:, None] == labels[None, :]
    best = np.where(match, similarity, -np.inf).max(axis=1, keepdims=True)
    # Rank of the best true match = non-matching gallery rows scoring at least as high.
    others_ahead = ((similarity >= best) & ~match).sum(axis=1)
    return float(np.mean(others_ahead < k))


def classification_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the label."""
    return token_accuracy(pred, labels)


def chance_recall_at_k(n: int, k: int, matches: np.ndarray | None = None) -> float:
    """Expected recall@k of a random ranking of n gallery items: k / n with one true match per query; with
    `matches[i]` true matches for query i, the mean of 1 - C(n - m_i, k) / C(n, k) (some match among the k drawn)."""
    if matches is None or k >= n:
        return min(k, n) / n
    return float(np.mean([1 - math.comb(n - int(m), k) / math.comb(n, k) for m in matches]))


def majority_class(labels: np.ndarray) -> int:
    """The most frequent label (the smallest one among ties, so the baseline is deterministic)."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return int(values[np.argmax(counts)])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of boxes (N, 4) and (M, 4) as (xmin, ymin, xmax, ymax); 0 where the union
    is empty."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    sides = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = sides.prod(axis=-1)
    area_a, area_b = (np.clip(x[:, 2:] - x[:, :2], 0, None).prod(axis=-1) for x in (a, b))
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(scores: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """Area under the precision-recall curve of detections ranked by score (ties keep their order), precision
    made monotone from the right (all-point interpolation, VOC 2010+ / COCO); `hits` marks true positives."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = np.asarray(hits, bool)[order]
    true_pos = np.cumsum(hits)
    precision = true_pos / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(envelope[hits]) / positives) if positives else 0.0


def mean_average_precision(predictions, truths, iou_threshold: float = 0.5) -> float:
    """mAP@iou_threshold of box detections (higher is better), COCO's matching: per class, detections in score
    order each take the best-overlapping unmatched true box of their image and class with IoU >= the threshold,
    else count as false positives (a second detection of a matched box included).

    predictions: per image (boxes (n, 4), labels (n,), scores (n,)); truths: per image (boxes (m, 4), labels (m,)).
    The mean is over the classes that have true boxes (a class only predicted adds nothing, as in COCO)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} images of predictions for {len(truths)} of ground truth")
    classes = sorted({str(label) for _, labels in truths for label in labels})
    if not classes:
        raise ValueError("no ground-truth boxes to score")
    precisions = []
    for name in classes:
        scores, hits, positives = [], [], 0
        for (boxes, labels, confidences), (true_boxes, true_labels) in zip(predictions, truths):
            mine = np.asarray([str(label) == name for label in labels], bool)
            theirs = np.asarray([str(label) == name for label in true_labels], bool)
            positives += int(theirs.sum())
            if not mine.any():
                continue
            order = np.argsort(-np.asarray(confidences, np.float64)[mine], kind="stable")
            overlap = box_iou(np.asarray(boxes).reshape(-1, 4)[mine][order],
                              np.asarray(true_boxes).reshape(-1, 4)[theirs])
            taken = np.zeros(overlap.shape[1], bool)
            for row in overlap:
                candidates = np.where(~taken & (row >= iou_threshold), row, -1.0)
                best = int(np.argmax(candidates)) if candidates.size else 0
                hit = bool(candidates.size) and bool(candidates[best] >= 0)
                if hit:
                    taken[best] = True
                hits.append(hit)
            scores.extend(np.asarray(confidences, np.float64)[mine][order])
        precisions.append(average_precision(np.asarray(scores), np.asarray(hits, bool), positives))
    return float(np.mean(precisions))


def edge_f1(pred: np.ndarray, target: np.ndarray) -> float:
    """F1 of the positive (edge) pixels, pooled over every pixel given: 2 TP / (predicted + true positives).

    Exact pixel agreement, no matching tolerance (BSDS-style edge benchmarks allow a few pixels of slack; at the
    token grid's resolution one pixel is already coarse). Nothing positive in either is perfect agreement: 1."""
    pred, target = np.asarray(pred, bool).ravel(), np.asarray(target, bool).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in size")
    positives = int(pred.sum()) + int(target.sum())
    return 1.0 if positives == 0 else float(2 * np.sum(pred & target) / positives)


def _rows(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arrays (..., C) as (N, C) float64 rows: one vector per pixel, patch or sample."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if pred.ndim == 0 or pred.size == 0:
        raise ValueError("no vectors to score")
    return pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])


def _cosines(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    p, t = _rows(pred, target)
    # A zero vector (a normal the labeler could not estimate) has no direction: it scores cosine 0.
    norms = np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1)
    return np.clip(np.sum(p * t, axis=1) / np.maximum(norms, 1e-12), -1.0, 1.0)


def mean_angle_error(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean angle in degrees between predicted and true vectors (..., 3), e.g. surface normals (lower is better).
    Lengths do not matter; a zero vector is 90 degrees from everything."""
    return float(np.degrees(np.arccos(_cosines(pred, target))).mean())


def mean_cosine(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean cosine similarity of matching vectors (..., C): per patch for feature maps, per sample for embeddings."""
    return float(_cosines(pred, target).mean())


def psnr(pred: np.ndarray, target: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over every value given (higher is better); identical arrays: infinity."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    mse = float(np.mean((pred - target) ** 2))
    return math.inf if mse == 0 else float(10 * np.log10(peak ** 2 / mse))

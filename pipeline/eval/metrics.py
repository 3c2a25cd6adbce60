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

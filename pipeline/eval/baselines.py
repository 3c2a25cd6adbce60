"""Trivial baselines, each fitted on the fit set only, so that every task's number has something to beat.

- constant maps: the fit set's mean (depth-like values), majority class (class maps), mean vector (colours,
  features, embeddings) or mean direction (normals) at every pixel, patch or sample; for binary masks the better
  of all-positive and all-negative on the fit set;
- unigram: the fit set's token frequencies, for token accuracy (always the most frequent token) and perplexity
  (Witten-Bell smoothed, so an unseen token costs a finite amount; see `unigram_log_probs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def constant_maps(value: float, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.full(np.shape(target), value, dtype=np.float64) for target in like]


def mean_value(maps: Sequence[np.ndarray]) -> float:
    """Mean over every valid (finite, positive) value of the fit maps: the 'mean prediction' depth baseline."""
    values = np.concatenate([np.asarray(m, np.float64).ravel() for m in maps])
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        raise ValueError("no valid values to average")
    return float(values.mean())


def majority_value(maps: Sequence[np.ndarray], ignore_index: int | None = None) -> int:
    """Most frequent class over every pixel of the fit maps (ties to the smaller id)."""
    values = np.concatenate([np.asarray(m).ravel() for m in maps]).astype(np.int64)
    if ignore_index is not None:
        values = values[values != ignore_index]
    counts = np.bincount(values)
    return int(np.argmax(counts))


def mean_vector(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(C,) per-channel mean over every pixel, patch or sample of arrays (..., C)."""
    return np.concatenate([np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1]) for a in arrays]).mean(axis=0)


def mean_direction(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """(C,) unit mean of the unit vectors of arrays (..., C): each vector counts for its direction, not its length
    (zero vectors, directions a labeler could not estimate, count for nothing)."""
    rows = np.concatenate([np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1]) for a in arrays])
    mean = (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).sum(axis=0)
    norm = np.linalg.norm(mean)
    if norm == 0:
        raise ValueError("the vectors have no mean direction")
    return mean / norm


def best_constant_mask(masks: Sequence[np.ndarray], score: Callable[[np.ndarray, np.ndarray], float]) -> bool:
    """The constant (all True or all False) that `score`s higher on the fit masks; all True on ties. For edge F1
    that is all-edge whenever the fit set has an edge (no-edge then scores 0)."""
    truth = np.concatenate([np.asarray(m, bool).ravel() for m in masks])
    return bool(score(np.ones_like(truth), truth) >= score(np.zeros_like(truth), truth))


def unigram_log_probs(token_rows: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """(V,) Witten-Bell smoothed log frequencies of the fit set's tokens: of N fit tokens of T distinct ids, an id
    seen c times gets c / (N + T) and the ids never seen share T / (N + T) evenly.

    Not add-one: in the 30k shared text vocabulary a fit set of a few thousand tokens would leave over 90% of an
    add-one unigram's mass on ids it never saw, a baseline so weak that a model near uniform over the few hundred
    ids it was trained on beat it on perplexity (the tiny trained model on rgb_to_metadata: 569 against add-one's
    1206, where Witten-Bell's is 163). Witten-Bell's unseen mass is the rate at which the fit set met new ids."""
    counts = np.bincount(np.concatenate([np.asarray(r, np.int64).ravel() for r in token_rows]),
                         minlength=vocab_size)[:vocab_size].astype(np.float64)
    seen = counts > 0
    total, types = counts.sum(), int(seen.sum())
    if types == 0:
        raise ValueError("no fit tokens to count")
    unseen = vocab_size - types
    if unseen == 0:  # every id seen: nothing to hold back
        return np.log(counts / total)
    return np.log(np.where(seen, counts, types / unseen) / (total + types))


def unigram_scores(fit_rows: Sequence[np.ndarray], score_rows: Sequence[np.ndarray],
                   vocab_size: int) -> tuple[float, float]:
    """(token accuracy, perplexity) of the unigram model of `fit_rows` on `score_rows`."""
    log_probs = unigram_log_probs(fit_rows, vocab_size)
    targets = np.concatenate([np.asarray(r, np.int64).ravel() for r in score_rows])
    accuracy = float(np.mean(targets == int(np.argmax(log_probs))))
    return accuracy, float(np.exp(-log_probs[targets].mean()))

"""Trivial baselines, each fitted on the fit set only, so that every task's number has something to beat.

- constant maps: the fit set's mean (depth-like values) or majority class (class maps) at every pixel;
- unigram: the fit set's token frequencies, for token accuracy (always the most frequent token) and perplexity
  (add-one smoothed, so an unseen token costs log(V) rather than infinity).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def unigram_log_probs(token_rows: Sequence[np.ndarray], vocab_size: int) -> np.ndarray:
    """(V,) add-one smoothed log frequencies of the fit set's tokens."""
    counts = np.bincount(np.concatenate([np.asarray(r, np.int64).ravel() for r in token_rows]),
                         minlength=vocab_size)[:vocab_size].astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def unigram_scores(fit_rows: Sequence[np.ndarray], score_rows: Sequence[np.ndarray],
                   vocab_size: int) -> tuple[float, float]:
    """(token accuracy, perplexity) of the unigram model of `fit_rows` on `score_rows`."""
    log_probs = unigram_log_probs(fit_rows, vocab_size)
    targets = np.concatenate([np.asarray(r, np.int64).ravel() for r in score_rows])
    accuracy = float(np.mean(targets == int(np.argmax(log_probs))))
    return accuracy, float(np.exp(-log_probs[targets].mean()))

"""Time-series forecasting from tokens: the next `HORIZON` steps after a window, from that window's tokens alone.

A window `<series>_w<start>` and the window that follows it without overlap (`<series>_w<start + T>`) make one
pair: the input is the first window's tokens through the frozen encoder (mean-pooled), the target the first
HORIZON values of the second, read from the raw label folder. A ridge probe predicts the change from the input
window's last value. Errors are in units of the input window's own standard deviation (per channel), so series of
any scale (CO2 in ppm, sunspot counts, GDP) weigh alike; the window's mean and spread are what its scale tokens
carry, so nothing the model is not given leaks in.

Two trivial baselines: last value (the input's last step repeated) and seasonal naive (the input's last season
repeated, with the series' period from the sample corpus; series without one fall back to last value).
"""

from __future__ import annotations

import re

import numpy as np

from pipeline.data.raw.frames import read_frames
from pipeline.data.sample_corpus.time_series import SEASONS
from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.heads import pooled_features, ridge_predictor
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, Score, TokenSplit, register_task

SERIES = "time_series"
HORIZON = 16
WINDOW_KEY = re.compile(r"^(?P<series>.+)_w(?P<start>\d{6})$")


def _frames(sample: EvalSample) -> np.ndarray:
    return read_frames(sample.aux[SERIES]["npy"]).astype(np.float64)


def forecast_pairs(samples: list[EvalSample], every: dict[str, np.ndarray]) -> tuple[list[EvalSample], list]:
    """The samples that have a following window in `every` (key -> frames), and (input, next window, series)."""
    kept, pairs = [], []
    for sample in samples:
        match = WINDOW_KEY.match(sample.key)
        if match is None:
            continue
        context = every[sample.key]
        following = f"{match['series']}_w{int(match['start']) + len(context):06d}"
        if following in every:
            kept.append(sample)
            pairs.append((context, every[following][:HORIZON], match["series"]))
    return kept, pairs


def standardised(pairs: list) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(inputs (N, T, C), targets (N, H, C)) in units of each input window's own mean and std."""
    inputs, targets = [], []
    for context, target, _ in pairs:
        mean, std = context.mean(0), context.std(0) + 1e-6
        inputs.append((context - mean) / std)
        targets.append((target - mean) / std)
    return np.stack(inputs), np.stack(targets), [series for _, _, series in pairs]


def seasonal_naive(inputs: np.ndarray, series: list[str], horizon: int) -> np.ndarray:
    steps = inputs.shape[1]
    predictions = []
    for window, name in zip(inputs, series):
        period = SEASONS.get(name, 1)
        period = period if period <= steps else 1
        predictions.append(window[[steps - period + (h % period) for h in range(horizon)]])
    return np.stack(predictions)


def evaluate_forecast(ctx: TaskContext) -> list[Score]:
    every = {s.key: _frames(s) for s in ctx.samples}
    fit, score = ctx.fit_and_score()
    (fit, fit_pairs), (score, score_pairs) = forecast_pairs(fit, every), forecast_pairs(score, every)
    if len(fit) < 2 or not score:  # series shorter than two windows, or keys not named `<series>_w<start>`
        raise DataUnmet(f"too few windows with a following window (fit {len(fit)}, score {len(score)})")
    (x_fit, y_fit, _), (x_score, y_score, names) = standardised(fit_pairs), standardised(score_pairs)
    features = pooled_features(ctx, (fit, score), (SERIES,))
    last_fit, last_score = x_fit[:, -1:], x_score[:, -1:]
    change = ridge_predictor(features[0], (y_fit - last_fit).reshape(len(fit), -1))(features[1])
    predicted = last_score + change.reshape(y_score.shape)
    horizon = y_score.shape[1]
    baselines = {"last value": np.repeat(last_score, horizon, axis=1),
                 "seasonal naive": seasonal_naive(x_score, names, horizon)}
    scores = []
    for label, baseline in baselines.items():
        suffix = "" if label == "last value" else "_vs_seasonal_naive"
        scores.append(Score(f"mse{suffix}", float(np.mean((predicted - y_score) ** 2)),
                            float(np.mean((baseline - y_score) ** 2))))
        scores.append(Score(f"mae{suffix}", float(np.mean(np.abs(predicted - y_score))),
                            float(np.mean(np.abs(baseline - y_score)))))
    return scores


register_task(name="time_series_forecast", inputs=(SERIES,), target=f"the next {HORIZON} steps",
              head=HeadKind.LINEAR_PROBE, data=TokenSplit((SERIES,), (SERIES,)),
              metrics=tuple(Metric(f"{m}{s}", False) for s in ("", "_vs_seasonal_naive") for m in ("mse", "mae")),
              baseline="last value (and seasonal naive in the *_vs_seasonal_naive scores)",
              evaluate=evaluate_forecast,
              description=f"next {HORIZON} steps of a series from its previous window's tokens, ridge probe on "
                          "mean-pooled encoder features; errors in the input window's standard deviations")

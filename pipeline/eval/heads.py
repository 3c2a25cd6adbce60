"""Probe heads fitted on frozen features: a linear classifier or a small MLP, full batch, on the CPU or GPU, and a
ridge regression for real-valued targets.

Features are standardised with the fit set's statistics first, so one learning rate and weight decay suit
encoders of any width. Classes are the labels seen in the fit set; a score-set label never seen while fitting
cannot be predicted and simply counts as a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.eval.metrics import classification_accuracy, majority_class
from pipeline.eval.registry import HeadKind, Score
from schemas.evaluate import ProbeConfig

if TYPE_CHECKING:
    from pipeline.eval.context import EvalSample, TaskContext


def fit_probe(features: np.ndarray, labels: np.ndarray, head: HeadKind, config: ProbeConfig,
              device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """Fit `head` (linear_probe or mlp_probe) on (N, D) features and integer labels; returns a predictor."""
    features = np.asarray(features, np.float32)
    classes, targets = np.unique(np.asarray(labels), return_inverse=True)
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    generator = torch.Generator().manual_seed(config.seed)
    width = features.shape[1]
    if head is HeadKind.LINEAR_PROBE:
        module = torch.nn.Linear(width, len(classes))
    elif head is HeadKind.MLP_PROBE:
        module = torch.nn.Sequential(torch.nn.Linear(width, config.mlp_hidden), torch.nn.GELU(),
                                     torch.nn.Linear(config.mlp_hidden, len(classes)))
    else:
        raise ValueError(f"{head.value} is not a probe head")
    with torch.no_grad():  # seeded init, so equal configs fit equal probes
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * (0.02 if parameter.ndim > 1 else 0))
    module.to(device)
    x = torch.from_numpy((features - mean) / std).to(device)
    y = torch.from_numpy(targets.astype(np.int64)).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.l2)
    for _ in range(config.steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()
    module.eval()

    def predict(new_features: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(new_features, np.float32) - mean) / std
        with torch.no_grad():
            index = module(torch.from_numpy(scaled).to(device)).argmax(dim=1).cpu().numpy()
        return classes[index]

    return predict


def ridge_predictor(features: np.ndarray, targets: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Ridge regression of (N,) or (N, K) targets on standardised (N, D) features, its strength picked by
    leave-one-out (closed form, no seed); returns a predictor."""
    from sklearn.linear_model import RidgeCV

    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((features - mean) / std, targets)
    return lambda new: model.predict((np.asarray(new) - mean) / std)


def pooled_features(ctx: TaskContext, parts: Sequence[Sequence[EvalSample]],
                    inputs: tuple[str, ...]) -> list[np.ndarray]:
    """The frozen encoder's mean-pooled features (N, D) of each list of samples, from their `inputs` tokens alone."""
    return [ctx.model.pooled_features([{m: s.tokens[m] for m in inputs} for s in part], inputs,
                                      ctx.config.probe.batch_size) for part in parts]


def probe_accuracy(ctx: TaskContext, x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray,
                   y_score: np.ndarray) -> list[Score]:
    """The task's probe head fitted on the fit set: its accuracy on the score set, against always answering the fit
    set's majority class."""
    predict = fit_probe(x_fit, y_fit, ctx.task.head, ctx.config.probe, device=ctx.model.device)
    baseline = classification_accuracy(np.full_like(y_score, majority_class(y_fit)), y_score)
    return [Score("accuracy", classification_accuracy(predict(x_score), y_score), baseline)]

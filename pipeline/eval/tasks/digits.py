"""Real data: scikit-learn's handwritten digits (1,797 8x8 greyscale images, shipped with scikit-learn, offline)
through the run's RGB tokenizer (`tokenizers.rgb` in the evaluate config: the one the model's RGB tokens came
from) and the frozen encoder; linear-probe accuracy against the majority class.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.eval.context import TaskContext
from pipeline.eval.heads import fit_probe
from pipeline.eval.metrics import classification_accuracy, majority_class
from pipeline.eval.registry import ExternalDataset, HeadKind, Metric, Score, register_task
from schemas.keys import in_holdout


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) uint8 0..255, labels (N,))."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target.astype(np.int64)


def as_rgb(images: np.ndarray, resolution: int) -> list[np.ndarray]:
    """Dark strokes on white, as ink on paper, upscaled bilinearly to the tokenizer's input size, three channels."""
    out = []
    for image in images:
        big = Image.fromarray(255 - image).resize((resolution, resolution), Image.BILINEAR)
        out.append(np.repeat(np.asarray(big)[..., None], 3, axis=2))
    return out


def evaluate_digits(ctx: TaskContext) -> list[Score]:
    task, probe = ctx.task, ctx.config.probe
    tokenizer = ctx.tokenizer(task.inputs[0])
    expected = ctx.model.table[task.inputs[0]].max_tokens
    if tokenizer.tokens_per_sample != expected:
        raise ValueError(f"{task.name}: tokenizer {tokenizer.tokenizer_id} makes {tokenizer.tokens_per_sample} "
                         f"tokens per image, the model was trained on {expected}: not the run's tokenizer")
    images, labels = ctx.external()
    images, labels = images[:probe.max_samples], labels[:probe.max_samples]
    tokens = tokenizer.encode(as_rgb(images, tokenizer.input_resolution))
    rows = [{task.inputs[0]: tokens[i:i + 1]} for i in range(len(tokens))]
    features = ctx.model.pooled_features(rows, task.inputs, probe.batch_size)
    score = np.array([in_holdout(f"digit_{i:05d}", probe.test_fraction) for i in range(len(labels))])
    predict = fit_probe(features[~score], labels[~score], task.head, probe, device=ctx.model.device)
    accuracy = classification_accuracy(predict(features[score]), labels[score])
    baseline = classification_accuracy(np.full(score.sum(), majority_class(labels[~score])), labels[score])
    return [Score("accuracy", accuracy, baseline)]


def register_digits() -> None:
    register_task(name="digits_probe", inputs=("rgb",), target="digit class", head=HeadKind.LINEAR_PROBE,
                  data=ExternalDataset("scikit-learn handwritten digits (8x8, 10 classes)", load_digits),
                  metrics=(Metric("accuracy", True),), baseline="majority class", evaluate=evaluate_digits,
                  tokenizers=("rgb",),
                  description="digits through the rgb tokenizer, linear probe on mean-pooled encoder features")


register_digits()

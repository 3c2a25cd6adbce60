"""Recognition from signal tokens: which activity an IMU window records, and which word or sound an audio clip
holds. The class is the sample's caption (the sample corpora write the activity, the spoken word or the sound
class as it); a linear probe on the frozen encoder's mean-pooled features of the signal's tokens alone is scored
against always answering the fit set's majority class.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.heads import pooled_features, probe_accuracy
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, Score, TokenSplit, register_task

CAPTION = "caption"


def caption_classes(fit: list[EvalSample], score: list[EvalSample]) -> tuple[np.ndarray, np.ndarray]:
    """Class ids of both sets' captions, numbered over the fit set's classes; a score sample of a class the fit set
    lacks gets -1 (always counted wrong, by the probe and by the baseline alike)."""
    def text(sample: EvalSample) -> str:
        return sample.aux[CAPTION]["txt"].decode("utf-8").strip().lower()

    classes = sorted({text(s) for s in fit})
    index = {c: i for i, c in enumerate(classes)}
    return (np.array([index[text(s)] for s in fit], np.int64),
            np.array([index.get(text(s), -1) for s in score], np.int64))


def evaluate_recognition(ctx: TaskContext, modality: str) -> list[Score]:
    fit, score = ctx.fit_and_score()
    y_fit, y_score = caption_classes(fit, score)
    if len(set(y_fit.tolist())) < 2:  # the captions are not classes (a user's data), or one class only
        raise DataUnmet(f"the fit set's {len(fit)} captions name fewer than two classes")
    if not (y_score >= 0).any():  # e.g. free-text captions: no score sample's class was ever fitted
        raise DataUnmet(f"none of the score set's {len(score)} captions names a class of the fit set")
    x_fit, x_score = pooled_features(ctx, (fit, score), (modality,))
    return probe_accuracy(ctx, x_fit, y_fit, x_score, y_score)


def register_recognition(name: str, modality: str, target: str) -> None:
    register_task(name=name, inputs=(modality,), target=target, head=HeadKind.LINEAR_PROBE,
                  data=TokenSplit((modality,), (CAPTION,)), metrics=(Metric("accuracy", True),),
                  baseline="majority class", evaluate=functools.partial(evaluate_recognition, modality=modality),
                  description=f"{target} from {modality} tokens, linear probe on mean-pooled encoder features")


register_recognition("imu_activity", "imu", "activity (still, walk, run, stairs, fall)")
register_recognition("audio_class", "audio", "spoken word or sound class")

"""Linear probes on frozen encoder features of the sample corpus's scenes: how many objects, and the shape of the
largest one. Labels come from the raw sample json that preprocess keeps in the `annotations` aux folder."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import numpy as np

from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.heads import pooled_features, probe_accuracy
from pipeline.eval.registry import HeadKind, Metric, Score, TokenSplit, register_task

ANNOTATIONS = "annotations"
Label = Callable[[dict], "int | None"]


def scene_objects(annotation: dict) -> list[dict] | None:
    """The objects of a procedural scene; None for samples that are not scenes (photos carry no objects)."""
    return annotation.get("objects") if annotation.get("kind") == "scene" else None


def object_count(annotation: dict) -> int | None:
    objects = scene_objects(annotation)
    return None if objects is None else len(objects)


def largest_shape(annotation: dict) -> int | None:
    """class_id of the object with the largest box area (the one a viewer notices first)."""
    objects = scene_objects(annotation)
    if not objects:
        return None
    area = [(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in objects]
    return int(objects[int(np.argmax(area))]["class_id"])


def labelled(samples: list[EvalSample], label: Label) -> tuple[list[EvalSample], np.ndarray]:
    pairs = [(s, label(json.loads(s.aux[ANNOTATIONS]["json"]))) for s in samples]
    pairs = [(s, y) for s, y in pairs if y is not None]
    return [s for s, _ in pairs], np.array([y for _, y in pairs], np.int64)


def evaluate_probe(ctx: TaskContext, label: Label) -> list[Score]:
    """Fit the task's probe on pooled encoder features of the fit set; accuracy on the score set, against always
    answering the fit set's majority class."""
    task = ctx.task
    fit, score = ctx.fit_and_score()
    (fit, y_fit), (score, y_score) = labelled(fit, label), labelled(score, label)
    if len(fit) < 2 or not len(score):
        raise ValueError(f"{task.name}: too few labelled samples (fit {len(fit)}, score {len(score)})")
    x_fit, x_score = pooled_features(ctx, (fit, score), task.inputs)
    return probe_accuracy(ctx, x_fit, y_fit, x_score, y_score)


def register_probe(name: str, label: Label, target: str, head: HeadKind = HeadKind.LINEAR_PROBE,
                   inputs: tuple[str, ...] = ("rgb",)) -> None:
    register_task(name=name, inputs=inputs, target=target, head=head,
                  data=TokenSplit(inputs, (ANNOTATIONS,)), metrics=(Metric("accuracy", True),),
                  baseline="majority class", evaluate=functools.partial(evaluate_probe, label=label),
                  description=f"{head.value} on mean-pooled encoder features of {'+'.join(inputs)} tokens -> {target}")


register_probe("object_count", object_count, "number of objects")
register_probe("largest_shape", largest_shape, "shape class of the largest object")
register_probe("largest_shape_mlp", largest_shape, "shape class of the largest object", HeadKind.MLP_PROBE)
# The same probes from text-like inputs: what a model trained without image tokens can be scored on.
register_probe("object_count_from_palette", object_count, "number of objects", inputs=("color_palette",))
register_probe("largest_shape_from_caption", largest_shape, "shape class of the largest object", inputs=("caption",))

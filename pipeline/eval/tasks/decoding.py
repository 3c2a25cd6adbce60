"""Tasks where the model's own decoder predicts a target modality from inputs it sees whole.

- dense maps (RGB -> depth, RGB -> semseg): every target token predicted in parallel (argmax), turned back into a
  map by the target's tokenizer, scored against the label shard's ground truth (resized to it: nearest for class
  maps, bilinear otherwise); baseline: the fit set's mean value / majority class at every pixel;
- token targets (RGB -> caption, caption -> RGB): teacher-forced token accuracy (and perplexity for sequences)
  against the target tokens; baseline: the fit set's unigram frequencies.

Dense-map tasks need the target's tokenizer (`tokenizers.<target>` in the evaluate config) to turn tokens back
into maps; every task needs its modalities in both the model's table and the data's token folders. A task whose
requirements are absent fails alone, with a row saying what is missing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.eval import baselines, metrics
from pipeline.eval.batches import target_run
from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.registry import HeadKind, Metric, Score, TokenSplit, register_task
from schemas.modalities import get_modality

IGNORE_INDEX = 255


def read_label(sample: EvalSample, folder: str) -> np.ndarray:
    """A label-shard member as an array: `.npy` maps as stored, images as their pixel values."""
    members = sample.aux[folder]
    if "npy" in members:
        return np.load(io.BytesIO(members["npy"]), allow_pickle=False)
    (payload,) = members.values()
    return np.asarray(Image.open(io.BytesIO(payload)))


def resize_to(prediction: np.ndarray, shape: tuple[int, ...], categorical: bool) -> np.ndarray:
    prediction = np.asarray(prediction)
    if prediction.ndim == 3 and len(shape) == 2:
        prediction = prediction[..., 0]
    if prediction.shape[:2] == tuple(shape[:2]):
        return prediction
    mode = Image.NEAREST if categorical else Image.BILINEAR
    image = Image.fromarray(prediction.astype(np.int32 if categorical else np.float32))
    return np.asarray(image.resize((shape[1], shape[0]), mode))


def _depth_scores(pred: list[np.ndarray], true: list[np.ndarray]) -> dict[str, float]:
    p, t = np.concatenate([x.ravel() for x in pred]), np.concatenate([x.ravel() for x in true])
    return {"abs_rel": metrics.abs_rel(p, t), "delta1": metrics.delta_accuracy(p, t)}


def _class_scores(pred: list[np.ndarray], true: list[np.ndarray], num_classes: int) -> dict[str, float]:
    p, t = np.concatenate([x.ravel() for x in pred]), np.concatenate([x.ravel() for x in true])
    return {"miou": metrics.mean_iou(p, t, num_classes, IGNORE_INDEX)}


def score_maps(pred: list[np.ndarray], truth: list[np.ndarray], fit_truth: list[np.ndarray],
               categorical: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(model scores, baseline scores): mIoU for class maps, abs-rel and delta<1.25 for continuous ones; the
    baseline paints the fit set's majority class / mean value everywhere."""
    if categorical:
        num_classes = int(max(np.max(t[t != IGNORE_INDEX], initial=0) for t in truth + fit_truth)) + 1
        constant = baselines.majority_value(fit_truth, IGNORE_INDEX)
        return (_class_scores(pred, truth, num_classes),
                _class_scores(baselines.constant_maps(constant, truth), truth, num_classes))
    constant = baselines.mean_value(fit_truth)
    return _depth_scores(pred, truth), _depth_scores(baselines.constant_maps(constant, truth), truth)


def evaluate_map(ctx: TaskContext) -> list[Score]:
    task, target = ctx.task, ctx.task.target
    categorical = get_modality(target).categorical
    tokenizer = ctx.tokenizer(target)  # first, so a missing tokenizer fails before any model or data work
    fit, score = ctx.fit_and_score()
    truth = [read_label(s, target) for s in score]
    # The tokenizer decodes only its own codes; the model's head spans the registry's (larger) vocabulary.
    ids = [logits[:, :tokenizer.vocab_size].argmax(-1) for logits, _ in
           ctx.model.target_logits([s.tokens for s in score], task.inputs, target, ctx.config.probe.batch_size)]
    decoded = tokenizer.decode(np.stack(ids))
    pred = [resize_to(m, t.shape, categorical) for m, t in zip(decoded, truth)]
    value, baseline = score_maps(pred, truth, [read_label(s, target) for s in fit], categorical)
    return [Score(name, value[name], baseline[name]) for name in value]


def evaluate_tokens(ctx: TaskContext) -> list[Score]:
    task, target = ctx.task, ctx.task.target
    fit, score = ctx.fit_and_score()
    model = ctx.model
    predicted, targets, nll = [], [], []
    for logits, ids in model.target_logits([s.tokens for s in score], task.inputs, target,
                                           ctx.config.probe.batch_size):
        predicted.append(logits.argmax(-1))
        targets.append(ids)
        nll.append(metrics.token_nll(logits, ids))
    fit_targets = [target_run(model.table, target, s.tokens[target])[0] for s in fit]
    accuracy = metrics.token_accuracy(np.concatenate(predicted), np.concatenate(targets))
    base_accuracy, base_ppl = baselines.unigram_scores(fit_targets, targets, model.table[target].vocab_size)
    scores = [Score("token_accuracy", accuracy, base_accuracy)]
    if any(m.name == "perplexity" for m in task.metrics):
        scores.append(Score("perplexity", float(np.exp(np.concatenate(nll).mean())), base_ppl))
    return scores


def register_decoding() -> None:
    decoder = HeadKind.DECODER
    register_task(name="rgb_to_depth", inputs=("rgb",), target="depth", head=decoder,
                  data=TokenSplit(("rgb", "depth"), ("depth",)),
                  metrics=(Metric("abs_rel", False), Metric("delta1", True)), baseline="mean depth",
                  evaluate=evaluate_map, tokenizers=("depth",),
                  description="decoded depth tokens vs ground-truth depth")
    register_task(name="rgb_to_semseg", inputs=("rgb",), target="semseg", head=decoder,
                  data=TokenSplit(("rgb", "semseg"), ("semseg",)), metrics=(Metric("miou", True),),
                  baseline="majority class", evaluate=evaluate_map, tokenizers=("semseg",),
                  description="decoded semseg tokens vs ground-truth classes")
    register_task(name="rgb_to_caption", inputs=("rgb",), target="caption", head=decoder,
                  data=TokenSplit(("rgb", "caption")),
                  metrics=(Metric("token_accuracy", True), Metric("perplexity", False)), baseline="unigram",
                  evaluate=evaluate_tokens, description="teacher-forced caption tokens given the image")
    register_task(name="caption_to_rgb", inputs=("caption",), target="rgb", head=decoder,
                  data=TokenSplit(("caption", "rgb")), metrics=(Metric("token_accuracy", True),),
                  baseline="majority token", evaluate=evaluate_tokens,
                  description="all RGB tokens predicted in parallel from the caption")


register_decoding()

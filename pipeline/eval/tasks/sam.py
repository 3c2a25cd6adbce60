"""Decoding tasks of 4M-21's SAM modalities.

- `rgb_to_sam_edge`: SAM edges are an image-like binary map, scored like Canny edges (decoding.py's decoded
  targets: F1 of edge pixels against the label shard; baseline the better of all-edge / no-edge everywhere);
- `rgb_to_sam_instance`: the model predicts every token of the instance row in parallel from the image, given
  the row's length (how many instances the label has, at most the four a row holds); the instance tokenizer
  decodes each block to a mask, scored by its IoU with the label's instance of the same rank (both are ordered
  by area). Baseline: the fit set's mean mask of each rank, thresholded at one half (where an instance of that
  rank usually lies), which is what a model that ignores the image can reach.
"""

from __future__ import annotations

import numpy as np

from pipeline.eval.context import TaskContext
from pipeline.eval.registry import HeadKind, Metric, Score, TokenSplit, register_task
from pipeline.eval.tasks.decoding import register_decoded
from schemas.instances import read_instances

INSTANCES = "sam_instance"


def instance_label(sample, folder: str) -> np.ndarray:
    return read_instances(sample.aux[folder]["npy"])


def mean_rank_masks(fit: list[np.ndarray], ranks: int, size: int) -> np.ndarray:
    """(ranks, size, size): where the fit set's instance of each rank covers at least half of the samples having
    one (empty for a rank no sample has, or a fit set at another resolution)."""
    out = np.zeros((ranks, size, size), bool)
    for rank in range(ranks):
        masks = [m[rank] for m in fit if len(m) > rank and m.shape[1] == size]
        if masks:
            out[rank] = np.mean(masks, axis=0) >= 0.5
    return out


def rank_iou(pred: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean IoU of predicted instance i against true instance i, over every true instance a row holds."""
    ious = [np.sum(p & t) / max(np.sum(p | t), 1) for ps, ts in zip(pred, truth) for p, t in zip(ps, ts)]
    return float(np.mean(ious)) if ious else 0.0


def evaluate_instances(ctx: TaskContext) -> list[Score]:
    task, target = ctx.task, ctx.task.target
    tokenizer = ctx.tokenizer(target)  # first, so a missing tokenizer fails before any model or data work
    fit, score = ctx.fit_and_score()
    truth = [instance_label(s, target)[:tokenizer.max_instances] for s in score]
    pred = []
    for (logits, _), labels in zip(ctx.model.target_logits([s.tokens for s in score], task.inputs, target,
                                                           ctx.config.probe.batch_size), truth):
        ids = logits[:, :tokenizer.vocab_size].argmax(-1)
        pred.append(tokenizer.decode([ids], size=labels.shape[1])[0])
    fit_truth = [instance_label(s, target) for s in fit]
    baseline = [mean_rank_masks(fit_truth, len(t), t.shape[1]) for t in truth]
    return [Score("mask_iou", rank_iou(pred, truth), rank_iou(baseline, truth))]


register_decoded(("rgb",), "sam_edge")
register_task(name="rgb_to_sam_instance", inputs=("rgb",), target=INSTANCES, head=HeadKind.DECODER,
              data=TokenSplit(("rgb", INSTANCES), (INSTANCES,)), metrics=(Metric("mask_iou", True),),
              baseline="mean mask per rank", evaluate=evaluate_instances, tokenizers=(INSTANCES,),
              description="decoded instance masks vs the label's instances of the same rank (mask IoU)")

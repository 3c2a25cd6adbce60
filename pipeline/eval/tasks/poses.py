"""Tasks of two 4M-21 pseudo-labels: human poses (pipeline/data/labelers/poses.py) and the caption's T5 states
(pipeline/data/labelers/t5.py).

- rgb_to_human_poses: teacher-forced token accuracy and perplexity of the pose rows given the image, against the
  fit set's unigram frequencies, exactly as rgb_to_caption (decoding.py's token tasks);
- caption_to_t5_caption: every t5_caption token predicted in parallel from the caption (argmax), decoded by the
  t5_caption signal tokenizer back to (L, C) states and scored by the mean cosine with the labelled states over
  the caption's T5 tokens (the label's non-zero rows; padding says nothing about the caption); baseline: the fit
  set's mean state at every token. The tokenizer's own decode(encode(label)) cosine bounds what a model can reach.
"""

from __future__ import annotations

import numpy as np

from pipeline.eval import baselines, metrics
from pipeline.eval.context import TaskContext
from pipeline.eval.registry import HeadKind, Metric, Score, TokenSplit, register_task
from pipeline.eval.tasks.decoding import SEQUENCE_METRICS, decoded_argmax, register_tokens, task_name
from pipeline.eval.tasks.dense import read_label

T5 = "t5_caption"


def caption_rows(states: np.ndarray) -> np.ndarray:
    """The rows of an (L, C) t5_caption label that hold a caption token: every row before the zero padding."""
    return np.any(np.asarray(states) != 0, axis=-1)


def evaluate_states(ctx: TaskContext) -> list[Score]:
    target = ctx.task.target
    fit, score, decoded = decoded_argmax(ctx)
    truth = [read_label(s, target).astype(np.float64) for s in score]
    kept = [caption_rows(t) for t in truth]
    true = np.concatenate([t[k] for t, k in zip(truth, kept)])
    pred = np.concatenate([np.asarray(d, np.float64)[:len(k)][k] for d, k in zip(decoded, kept)])
    fit_rows = [t[caption_rows(t)] for t in (read_label(s, target).astype(np.float64) for s in fit)]
    mean = baselines.mean_vector(fit_rows)
    return [Score("cosine", metrics.mean_cosine(pred, true),
                  metrics.mean_cosine(np.broadcast_to(mean, true.shape), true))]


register_tokens(("rgb",), "human_poses", SEQUENCE_METRICS, "unigram",
                "teacher-forced human pose tokens (boxes and COCO keypoints) given the image")
register_task(name=task_name(("caption",), T5), inputs=("caption",), target=T5, head=HeadKind.DECODER,
              data=TokenSplit(("caption", T5), (T5,)), metrics=(Metric("cosine", True),), baseline="mean state",
              evaluate=evaluate_states, tokenizers=(T5,),
              description="decoded t5_caption tokens vs the label's T5 states, per caption token")

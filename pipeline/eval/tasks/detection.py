"""rgb -> det: the model's decoder writes the det token sequence from the image, greedily, one token at a time;
the text is parsed back to boxes by the det serializer and scored with mAP@0.5 against the label shard's boxes.

Decoding is generation's own loop (pipeline/generate/autoregressive.py) at temperature 0: the question training asks
of a fully masked sequence, the image and the det sentinel in the encoder, the decoder writing from that sentinel
to EOS or the modality's token bound, limited to the det tokenizer's vocabulary.

A box's confidence, which mAP ranks by, is the geometric mean probability the model gave its tokens (from its
`v0=` token up to the next box). Baseline: the fit set's most common class at its mean box, one per image.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import numpy as np

from pipeline.eval import metrics
from pipeline.eval.batches import Row
from pipeline.eval.checkpoint import EvalModel
from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, Score, TokenSplit, register_task
from pipeline.generate.autoregressive import generate_scored_sequence
from pipeline.generate.sampling import Sampler
from pipeline.tokenizers.sequence import VALUE_BINS, get_serializer, value_token
from schemas.labels import Detection, read_detections

Prediction = tuple[np.ndarray, list[str], np.ndarray]  # boxes (n, 4), class names, scores: one image's
Truth = tuple[np.ndarray, list[str]]


def greedy_runs(model: EvalModel, rows: Sequence[Row], inputs: Sequence[str], target: str, vocab_size: int,
                batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row, the (ids, log-probabilities) the decoder writes greedily for the sequence `target` given `inputs`,
    EOS excluded, `batch_size` rows at a time. Ids stay below `vocab_size` (the tokenizer's; the head spans the
    registry's vocabulary)."""
    runs = []
    for start in range(0, len(rows), batch_size):
        # Generation reads every modality a row holds as given: only the inputs, not the eval row's own target.
        given = [{m: row[m] for m in inputs} for row in rows[start:start + batch_size]]
        made = generate_scored_sequence(model.module, model.table, given, target, Sampler.greedy(), vocab_size)
        runs += [(ids[:-1], logps[:-1]) for ids, logps in made]  # every stored row ends with EOS
    return runs


def parse_boxes(ids: np.ndarray, logps: np.ndarray, tokenizer, box_starts: frozenset[int]) -> list[Detection]:
    """A generated det run -> its boxes (fractions of the image), each scored by the geometric mean probability
    of its tokens. The run is cut before every `v0=` token, so a malformed box costs only itself."""
    serializer = get_serializer("det")
    cuts = [i for i, token in enumerate(ids) if int(token) in box_starts] + [len(ids)]
    found = []
    for begin, end in zip(cuts, cuts[1:]):
        (text,) = tokenizer.decode([ids[begin:end]])
        confidence = float(np.exp(np.mean(logps[begin:end])))
        found += [Detection(tuple(obj["box"]), obj["class"], confidence)  # type: ignore[arg-type]
                  for obj in serializer.parse(text, (1.0, 1.0))["objects"]]
    return found


def class_name(name: str) -> str:
    """Names as decoded text has them (the WordPiece normaliser lowercases), so truth and prediction compare."""
    return " ".join(name.lower().split())


def as_prediction(found: Sequence[Detection]) -> Prediction:
    return (np.asarray([d.box for d in found], np.float64).reshape(-1, 4), [class_name(d.name) for d in found],
            np.asarray([d.score for d in found], np.float64))


def read_truth(sample: EvalSample) -> Truth:
    """The label shard's boxes the model was trained on: ml-4m's record read with its threshold (schemas/labels.py)."""
    found = read_detections(json.loads(sample.aux["det"]["json"]))
    return np.asarray([d.box for d in found], np.float64).reshape(-1, 4), [class_name(d.name) for d in found]


def majority_box(fit: Sequence[Truth], count: int) -> list[Prediction]:
    """The baseline: the fit set's most common class (ties: the first name in sorted order) at the mean of its
    boxes, predicted once in each of `count` images."""
    names = Counter(name for _, labels in fit for name in labels)
    if not names:
        return [as_prediction([]) for _ in range(count)]
    top = min(names, key=lambda name: (-names[name], name))
    mean = np.mean([box for boxes, labels in fit for box, name in zip(boxes, labels) if name == top], axis=0)
    return [as_prediction([Detection(tuple(mean), top, 1.0)]) for _ in range(count)]


def evaluate_detection(ctx: TaskContext) -> list[Score]:
    task, target = ctx.task, ctx.task.target
    tokenizer = ctx.tokenizer(target)  # first, so a missing tokenizer fails before any model or data work
    fit, score = ctx.fit_and_score()
    truth = [read_truth(s) for s in score]
    if not any(len(labels) for _, labels in truth):
        raise DataUnmet(f"task {task.name!r}: the score set's {target} labels hold no box to score")
    starts = frozenset(tokenizer.token_id(value_token(0, b)) for b in range(VALUE_BINS))
    runs = greedy_runs(ctx.model, [s.tokens for s in score], task.inputs, target, tokenizer.vocab_size,
                       ctx.config.probe.batch_size)
    predicted = [as_prediction(parse_boxes(ids, logps, tokenizer, starts)) for ids, logps in runs]
    baseline = majority_box([read_truth(s) for s in fit], len(score))
    return [Score("map50", metrics.mean_average_precision(predicted, truth, 0.5),
                  metrics.mean_average_precision(baseline, truth, 0.5))]


register_task(name="rgb_to_det", inputs=("rgb",), target="det", head=HeadKind.DECODER,
              data=TokenSplit(("rgb", "det"), ("det",)), metrics=(Metric("map50", True),),
              baseline="most common class at its mean box", evaluate=evaluate_detection, tokenizers=("det",),
              description="greedily decoded det tokens parsed to boxes vs the label shard's boxes, mAP@0.5")

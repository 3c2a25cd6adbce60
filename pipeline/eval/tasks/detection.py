"""rgb -> det: the model's decoder writes the det token sequence from the image, greedily, one token at a time;
the text is parsed back to boxes by the det serializer and scored with mAP@0.5 against the label shard's boxes.

Decoding asks the question training asks of a fully masked sequence (batches.py): the image and the det sentinel in
the encoder; the decoder fed SOS then its own tokens, its run starting with that sentinel and ending at EOS or the
modality's token bound. Sentinels, PAD and SOS are never chosen after the first token. Each step reruns the decoder
over the tokens so far (no key-value cache: runs are short and eval batches small).

A box's confidence, which mAP ranks by, is the geometric mean probability the model gave its tokens (from its
`v0=` token up to the next box). Baseline: the fit set's most common class at its mean box, one per image.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import numpy as np

from pipeline.data.masking import EOS_ID, PAD_ID, SENTINEL_IDS, SOS_ID
from pipeline.eval import metrics
from pipeline.eval.batches import Row, pack
from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, Score, TokenSplit, register_task
from pipeline.tokenizers.sequence import VALUE_BINS, get_serializer, value_token
from schemas.labels import Detection, read_detections

Prediction = tuple[np.ndarray, list[str], np.ndarray]  # boxes (n, 4), class names, scores: one image's
Truth = tuple[np.ndarray, list[str]]


def greedy_runs(model, rows: Sequence[Row], inputs: Sequence[str], target: str, vocab_size: int,
                batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row, the (ids, log-probabilities) the decoder writes greedily for the fully masked sequence `target`
    after its leading sentinel, EOS excluded. `model` is an EvalModel; ids stay below `vocab_size` (the
    tokenizer's; the head spans the registry's vocabulary)."""
    import torch

    table, module, device = model.table, model.module, model.device
    index, bound = table.index(target), table[target].max_tokens
    banned = torch.tensor([i for i in (PAD_ID, SOS_ID, *SENTINEL_IDS) if i < vocab_size], device=device)
    runs = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            # Only the encoder half is used: the image, and the target as the one sentinel standing for all of it.
            batch = {k: torch.from_numpy(v).to(device) for k, v in pack(table, chunk, inputs, target).items()}
            memory, memory_pad = module.encode(batch)
            n = len(chunk)
            run = torch.full((n, 1), SENTINEL_IDS[0], dtype=torch.long, device=device)
            logps = torch.zeros((n, 1), device=device)
            done = torch.zeros(n, dtype=torch.bool, device=device)
            while run.shape[1] < bound and not bool(done.all()):
                width = run.shape[1] + 1
                fed = torch.cat([torch.full((n, 1), SOS_ID, dtype=torch.long, device=device), run], dim=1)
                decoder = {"dec_input": fed, "dec_modality": torch.full_like(fed, index),
                           "dec_position": torch.arange(width, device=device).expand(n, width),
                           "dec_causal": torch.ones_like(fed, dtype=torch.bool),
                           "dec_pad": torch.zeros_like(fed, dtype=torch.bool)}
                logits = module.heads[index](module.decode(decoder, memory, memory_pad)[:, -1]).float()
                logits = logits[:, :vocab_size].index_fill(1, banned, float("-inf"))
                logp, best = logits.log_softmax(-1).max(-1)
                best = torch.where(done, torch.full_like(best, PAD_ID), best)
                run, logps = torch.cat([run, best[:, None]], 1), torch.cat([logps, logp[:, None]], 1)
                done |= best == EOS_ID
            for ids, scores in zip(run[:, 1:].cpu().numpy(), logps[:, 1:].cpu().numpy()):
                end = int(np.argmax(ids == EOS_ID)) if (ids == EOS_ID).any() else len(ids)
                runs.append((ids[:end], scores[:end]))
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

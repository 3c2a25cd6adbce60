"""Tasks where the model's own decoder predicts a target modality from inputs it sees whole, declared as data: one
row per (inputs, target) in the two tables below.

- decoded targets (DECODED: depth, semseg, edges, normals, CLIP/DINOv2 features, global embeddings): every target
  token predicted in parallel (argmax), turned back into a map or vector by the target's tokenizer, scored against
  the label shard's ground truth by the metrics the target's `Values` kind implies, next to that kind's baseline
  (dense.py has the table: F1 for masks, mean angle for normals, cosine for features and embeddings, ...);
- token targets (TOKENS: caption, metadata, RGB from the caption): teacher-forced token accuracy (and perplexity
  for sequences) against the target tokens; baseline: the fit set's unigram frequencies (accuracy: always its most
  frequent token; perplexity: Witten-Bell smoothed, baselines.py).

Token accuracy is an argmax score: a model that has learned little more than which ids its targets use can score 0
on it while its perplexity improves. The tiny test model (tests/trained_model.py, 40 steps) is one: its logits over
the few hundred ids of a text target are nearly flat (the top five within 0.3 nats, log p about -5), and the argmax
is one id at every position of every sample. For caption that id is `a`, the commonest word, so it still scores;
for metadata it is `[S_1]`, common in training's span-masked target runs (`S_0 span S_1 span ... EOS`) but never in
the whole-sequence runs scored here (`S_0 key v0=bin ... EOS`: one span), so rgb_to_metadata's accuracy is exactly
0, under the unigram's 0.1 (`v0=6`: both sizes of the 32 px images). Its perplexity (569) is worse than the
unigram's (163); the add-one unigram used before left 93% of its mass on the 30k vocabulary's unseen ids, scored
1206, and made the model look better than a unigram. The same model trained 300 steps scores 0.65 and 15.

Decoded targets need the target's tokenizer (`tokenizers.<target>` in the evaluate config) to turn tokens back
into labels, and the target's label folder beside the token folders; every task needs its modalities in both the
model's table and the data's token folders. `--tasks all` skips a task whose requirements the run lacks, saying
which; a task named explicitly fails alone, with a row saying what is missing.
"""

from __future__ import annotations

import numpy as np

from pipeline.eval import baselines, metrics
from pipeline.eval.batches import target_run
from pipeline.eval.context import TaskContext
from pipeline.eval.registry import HeadKind, Metric, Score, TokenSplit, register_task
from pipeline.eval.tasks.dense import read_label, score_decoded, scoring
from schemas.modalities import get_modality

# (inputs, target): the model decodes all of `target` from all of `inputs`; the metrics follow the target's kind.
DECODED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("rgb",), "depth"),
    (("rgb",), "semseg"),
    (("rgb",), "canny_edge"),
    (("rgb",), "normal"),
    (("rgb",), "clip_feature"),
    (("rgb",), "dinov2_feature"),
    (("rgb",), "dinov2_global"),
    (("caption",), "caption_embedding"),
)
SEQUENCE_METRICS = (Metric("token_accuracy", True), Metric("perplexity", False))
# (inputs, target, metrics, baseline, description)
TOKENS: tuple[tuple[tuple[str, ...], str, tuple[Metric, ...], str, str], ...] = (
    (("rgb",), "caption", SEQUENCE_METRICS, "unigram", "teacher-forced caption tokens given the image"),
    (("rgb",), "metadata", SEQUENCE_METRICS, "unigram", "teacher-forced metadata tokens given the image"),
    (("caption",), "rgb", (Metric("token_accuracy", True),), "majority token",
     "all RGB tokens predicted in parallel from the caption"),
)


def decoded_argmax(ctx: TaskContext) -> tuple[list, list, np.ndarray]:
    """(fit samples, score samples, the target decoded by its tokenizer from the model's argmax tokens on the score
    samples)."""
    task, target = ctx.task, ctx.task.target
    tokenizer = ctx.tokenizer(target)  # first, so a missing tokenizer fails before any model or data work
    fit, score = ctx.fit_and_score()
    # The tokenizer decodes only its own codes; the model's head spans the registry's (larger) vocabulary.
    ids = [logits[:, :tokenizer.vocab_size].argmax(-1) for logits, _ in
           ctx.model.target_logits([s.tokens for s in score], task.inputs, target, ctx.config.probe.batch_size)]
    return fit, score, tokenizer.decode(np.stack(ids))


def evaluate_map(ctx: TaskContext) -> list[Score]:
    """Decode the model's argmax tokens of the target through its tokenizer; score them against the label shard."""
    target = ctx.task.target
    fit, score, decoded = decoded_argmax(ctx)
    value, baseline = score_decoded(get_modality(target).values, decoded,
                                    [read_label(s, target) for s in score], [read_label(s, target) for s in fit])
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


def task_name(inputs: tuple[str, ...], target: str) -> str:
    return f"{'_'.join(inputs)}_to_{target}"


def register_decoded(inputs: tuple[str, ...], target: str) -> None:
    kind = scoring(get_modality(target).values)
    register_task(name=task_name(inputs, target), inputs=inputs, target=target, head=HeadKind.DECODER,
                  data=TokenSplit((*inputs, target), (target,)), metrics=kind.metrics, baseline=kind.baseline,
                  evaluate=evaluate_map, tokenizers=(target,),
                  description=f"decoded {target} tokens vs the label shard's {target}")


def register_tokens(inputs: tuple[str, ...], target: str, task_metrics: tuple[Metric, ...], baseline: str,
                    description: str) -> None:
    register_task(name=task_name(inputs, target), inputs=inputs, target=target, head=HeadKind.DECODER,
                  data=TokenSplit((*inputs, target)), metrics=task_metrics, baseline=baseline,
                  evaluate=evaluate_tokens, description=description)


for _inputs, _target in DECODED:
    register_decoded(_inputs, _target)
for _row in TOKENS:
    register_tokens(*_row)

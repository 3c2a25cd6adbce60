"""Tasks that score what the model generates (pipeline/generate), not what it predicts in one teacher-forced pass.

- generate_rgb_to_depth: depth generated MaskGIT-style from the image, decoded by its tokenizer, abs-rel against the
  ground-truth depth;
- generate_caption_to_rgb: the image generated from the caption, decoded, PSNR against the ground-truth image;
- generate_rgb_to_caption: the caption generated token by token, the share of ground-truth tokens it matches at
  their positions.

Baselines: random tokens decoded by the same tokenizer (uniform over its vocabulary) for maps; for captions, tokens
drawn from the fit set's unigram frequencies, as long as the ground truth. Sampling is deterministic (argmax,
`SAMPLING`), so a score is a fixed function of the checkpoint.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.eval import baselines, metrics
from pipeline.eval.context import TaskContext
from pipeline.eval.registry import HeadKind, Metric, Score, TokenSplit, register_task
from pipeline.eval.tasks.dense import read_label, resize_to
from pipeline.generate import generate
from pipeline.generate.parallel import random_tokens
from pipeline.generate.slots import content
from schemas.generate import SamplingConfig

SAMPLING = SamplingConfig(steps=4, temperature=0.0)


def _generated(ctx: TaskContext, vocab: int | None) -> tuple[list, list, list[np.ndarray]]:
    """(fit samples, score samples, the generated target row of each score sample). A sequence's run is bounded
    by the fit set's longest (a model that never draws EOS would otherwise run to the modality's bound, and
    decoding token by token costs a decoder pass per token)."""
    task, model = ctx.task, ctx.model
    fit, score = ctx.fit_and_score()
    rows = [{m: s.tokens[m][0] for m in task.inputs} for s in score]
    sampling = SAMPLING
    if model.table[task.target].autoregressive:
        longest = max(len(content(s.tokens[task.target][0], True)) for s in fit)
        sampling = SAMPLING.model_copy(update={"max_tokens": longest + 2})  # S_0 ... EOS
    made = generate(model.module, model.table, rows, [task.target], sampling,
                    {task.target: vocab} if vocab else None, ctx.config.probe.seed, ctx.config.probe.batch_size)
    name = model.table[task.target].name
    return fit, score, [row[name] for row in made]


def evaluate_generated_depth(ctx: TaskContext) -> list[Score]:
    tokenizer = ctx.tokenizer(ctx.task.target)
    _, score, made = _generated(ctx, tokenizer.vocab_size)
    truth = [read_label(s, ctx.task.target) for s in score]
    noise = random_tokens(len(made), len(made[0]), tokenizer.vocab_size, ctx.config.probe.seed)

    def abs_rel(ids: np.ndarray) -> float:
        maps = [resize_to(m, t.shape, False) for m, t in zip(tokenizer.decode(ids), truth)]
        return metrics.abs_rel(np.concatenate([m.ravel() for m in maps]), np.concatenate([t.ravel() for t in truth]))

    return [Score("abs_rel", abs_rel(np.stack(made)), abs_rel(noise))]


def _psnr(pred: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean PSNR (dB) over images, each prediction resized to its ground truth's size."""
    values = []
    for p, t in zip(pred, truth):
        t = np.asarray(Image.fromarray(np.asarray(t, np.uint8)).convert("RGB"), np.float64)
        if p.shape[:2] != t.shape[:2]:
            p = np.asarray(Image.fromarray(np.asarray(p, np.uint8)).resize((t.shape[1], t.shape[0]), Image.BILINEAR))
        mse = np.mean((np.asarray(p, np.float64) - t) ** 2)
        values.append(100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return float(np.mean(values))


def evaluate_generated_image(ctx: TaskContext) -> list[Score]:
    tokenizer = ctx.tokenizer(ctx.task.target)
    _, score, made = _generated(ctx, tokenizer.vocab_size)
    truth = [read_label(s, ctx.task.target) for s in score]
    noise = random_tokens(len(made), len(made[0]), tokenizer.vocab_size, ctx.config.probe.seed)
    return [Score("psnr", _psnr(tokenizer.decode(np.stack(made)), truth), _psnr(tokenizer.decode(noise), truth))]


def positional_accuracy(made: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Share of ground-truth tokens matched at their position (a generated run too short misses the rest)."""
    hits = sum(int(np.sum(t[:len(m)] == m[:len(t)])) for m, t in zip(made, truth))
    return hits / max(1, sum(len(t) for t in truth))


def evaluate_generated_sequence(ctx: TaskContext) -> list[Score]:
    target = ctx.task.target
    fit, score, made = _generated(ctx, None)
    truth = [content(s.tokens[target][0], True) for s in score]
    fit_rows = [content(s.tokens[target][0], True) for s in fit]
    vocab = ctx.model.table[target].vocab_size
    unigram = np.exp(baselines.unigram_log_probs(fit_rows, vocab))
    rng = np.random.default_rng(ctx.config.probe.seed)
    drawn = [rng.choice(vocab, size=len(t), p=unigram / unigram.sum()) for t in truth]
    return [Score("token_accuracy", positional_accuracy([content(m, True) for m in made], truth),
                  positional_accuracy(drawn, truth))]


def register_generation() -> None:
    decoder = HeadKind.DECODER
    register_task(name="generate_rgb_to_depth", inputs=("rgb",), target="depth", head=decoder,
                  data=TokenSplit(("rgb", "depth"), ("depth",)), metrics=(Metric("abs_rel", False),),
                  baseline="random tokens decoded", evaluate=evaluate_generated_depth, tokenizers=("depth",),
                  description="depth generated MaskGIT-style from the image, decoded, vs ground-truth depth")
    register_task(name="generate_caption_to_rgb", inputs=("caption",), target="rgb", head=decoder,
                  data=TokenSplit(("caption", "rgb"), ("rgb",)), metrics=(Metric("psnr", True),),
                  baseline="random tokens decoded", evaluate=evaluate_generated_image, tokenizers=("rgb",),
                  description="the image generated MaskGIT-style from the caption, decoded, vs the ground truth")
    register_task(name="generate_rgb_to_caption", inputs=("rgb",), target="caption", head=decoder,
                  data=TokenSplit(("rgb", "caption")), metrics=(Metric("token_accuracy", True),),
                  baseline="unigram draws", evaluate=evaluate_generated_sequence,
                  description="the caption generated token by token from the image vs the ground-truth tokens")


register_generation()

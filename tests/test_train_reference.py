"""A few pretraining steps of the job's own parts (`build_engine`, `apply_lr`, `train_step`, `MetricsWindow`) under
DeepSpeed against a hand-written PyTorch loop with no DeepSpeed: the same model init, the same batches, torch's
AdamW, gradient clipping by global norm, the same learning rates, gradient accumulation as a sum of loss / n.
A consistent error in the job's parts (a wrong LR, clipping or accumulation, or counting a step twice) would move
both the ZeRO-0 and ZeRO-2 losses away from the reference. One spawned gloo process of world size 1."""

from __future__ import annotations

import numpy as np
import pytest
from gloo_ranks import run_on_ranks

from schemas.loading import LoaderConfig, MaskingConfig
from schemas.model import ModelConfig
from schemas.pretrain import OptimConfig, PretrainConfig, ZeroConfig

STEPS = 6
MODALITIES = ("rgb", "depth")


def recipe(stage: int, accumulation: int) -> PretrainConfig:
    return PretrainConfig(
        steps=STEPS, seed=3, precision="fp32", workers=1, modalities=MODALITIES,
        model=ModelConfig(size="custom", dim=32, encoder_depth=1, decoder_depth=1, heads=2),
        masking=MaskingConfig(input_tokens=12, target_tokens=12), loader=LoaderConfig(batch_size=4),
        # a small clip, so that clipping acts on every step and its norm matters
        optim=OptimConfig(lr=3e-3, warmup_steps=2, grad_clip=0.05, grad_accumulation=accumulation),
        zero=ZeroConfig(stage=stage, bucket_elements=50_000))


def batches(config: PretrainConfig, table) -> list[dict]:
    """Random token grids of both modalities, masked and packed by the job's masker: one batch per micro-step."""
    from pipeline.data.masking import Masker

    rng = np.random.default_rng(0)
    masker = Masker(table, config.masking)
    rows = [[{s.name: rng.integers(0, s.vocab_size, s.max_tokens) for s in table.specs}
             for _ in range(config.loader.batch_size)] for _ in range(STEPS * config.optim.grad_accumulation)]
    return [masker.batch(samples, rng) for samples in rows]


def deepspeed_losses(config: PretrainConfig, table, data: list[dict]) -> tuple[list[float], dict]:
    import torch

    from pipeline.model.sizes import resolve
    from pipeline.train.engine import build_engine
    from pipeline.train.metrics_window import MetricsWindow
    from pipeline.train.schedule import apply_lr
    from pipeline.train.step import train_step

    torch.manual_seed(config.seed)
    engine, optimizer = build_engine(config, table)
    window = MetricsWindow(table, resolve(config.model), torch.device("cpu"), total_peak_flops=1.0)
    stream, losses = iter(data), []
    for step in range(STEPS):
        apply_lr(optimizer, step, STEPS, config.optim)
        train_step(engine, stream, config.optim.grad_accumulation, torch.device("cpu"), window)
        losses.append(window.row()["loss"])
    return losses, {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def reference_losses(config: PretrainConfig, table, data: list[dict]) -> tuple[list[float], dict, list[float], float]:
    """The plain loop, written out with nothing of pipeline/train."""
    import math

    import torch

    from pipeline.data.loader import to_torch
    from pipeline.model import build_model

    torch.manual_seed(config.seed)
    model = build_model(config.model, table).train()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optim = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas,
                                  weight_decay=optim.weight_decay)
    stream, losses, norms = iter(data), [], []
    for step in range(STEPS):
        # warmup 2 steps, then cosine from the peak to 0.1 of it over the remaining 4
        factor = (step + 1) / 2 if step < 2 else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - 2) / 4))
        for group in optimizer.param_groups:
            group["lr"] = optim.lr * factor
        micro = []
        for _ in range(optim.grad_accumulation):
            loss = model(to_torch(next(stream))).loss
            (loss / optim.grad_accumulation).backward()
            micro.append(float(loss.detach()))
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(sum(micro) / len(micro))
    moved = max(float((v - initial[k]).abs().max()) for k, v in model.state_dict().items())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, norms, moved


def _compare_on_rank(rank: int, world: int) -> dict:
    import deepspeed
    import torch

    from pipeline.train.cpu_patches import install_cpu_patches
    from schemas.batch import ModalitySpec, ModalityTable

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    install_cpu_patches()  # as the job does
    table = ModalityTable.of([ModalitySpec.from_registry(name, 16) for name in MODALITIES])
    outcome = {}
    for stage, accumulation in ((0, 1), (2, 2)):
        config = recipe(stage, accumulation)
        data = batches(config, table)
        ours, our_weights = deepspeed_losses(config, table, data)
        theirs, their_weights, norms, moved = reference_losses(config, table, data)
        drift = max(float((our_weights[k] - v).abs().max()) for k, v in their_weights.items())
        outcome[stage] = {"ours": ours, "theirs": theirs, "norms": norms, "weight_drift": drift, "moved": moved,
                          "same_keys": set(our_weights) == set(their_weights)}
    torch.distributed.destroy_process_group()
    return outcome


def test_deepspeed_steps_match_a_plain_pytorch_loop():
    outcome = run_on_ranks(_compare_on_rank, 1, timeout=600)[0]
    for stage, result in outcome.items():
        assert min(result["norms"]) > 0.05, stage  # clipping was active on every step
        assert result["moved"] > 1e-3, stage  # the steps changed the weights: there was something to compare
        assert result["ours"] == pytest.approx(result["theirs"], rel=1e-5), stage
        assert result["same_keys"] and result["weight_drift"] < 1e-5, stage

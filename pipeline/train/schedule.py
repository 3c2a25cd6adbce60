"""Learning-rate schedules as multipliers of the peak LR: warmup then cosine, or warmup-stable-decay."""

from __future__ import annotations

import math

from schemas.pretrain import OptimConfig


def lr_factor(step: int, total: int, optim: OptimConfig) -> float:
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    floor = optim.min_lr_ratio
    if optim.schedule == "cosine":
        progress = (step - optim.warmup_steps) / max(1, total - optim.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = total - int(optim.decay_fraction * total)
    if step < decay_start:
        return 1.0
    return 1.0 - (1 - floor) * (step - decay_start) / max(1, total - decay_start)


def apply_lr(optimizer, step: int, total: int, optim: OptimConfig) -> float:
    """Set the LR of optimizer step `step` (0-based) on every parameter group, by hand: DeepSpeed's and torch's
    schedulers count calls, which a resumed run would have to replay, while this follows from the step alone."""
    lr = optim.lr * lr_factor(step, total, optim)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr

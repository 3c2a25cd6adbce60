"""ZeRO's gradient norm in fp32 on the CPU accelerator, instead of a float64 copy of every gradient.

DeepSpeed's ZeRO optimizers take the gradient norm (for clipping, and to report it) over `grad.to(get_norm_dtype())`,
and `get_norm_dtype()` is float64 wherever the accelerator supports it, the CPU included. On the CPU that cast
allocates and fills a float64 copy of each rank's whole gradient partition every step: 0.6-1.1 s of S's 1.3-1.9 s ZeRO-2
optimizer step on 2 gloo ranks (`bench/zero_step.py`, BENCHMARKS.md). No config key reaches it (the one related key,
`compute_grad_norm: false`, skips the norm and is refused with clipping on), so this points the name the ZeRO
modules imported at a function that answers float32 on the CPU. torch reduces float32 on the CPU with cascade
summation, so the norm stays accurate to ~1e-7 relative (tested against the float64 one); the losses of the
benchmark's steps were identical to every printed digit. GPU runs keep DeepSpeed's choice.
"""

from __future__ import annotations

import torch


def install_fp32_grad_norm() -> bool:
    """Make ZeRO stages 1-3 take gradient norms in float32 when DeepSpeed runs on its CPU accelerator; returns
    whether it did. Call once per process, before `deepspeed.initialize`."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    if get_accelerator().device_name() != "cpu":
        return False
    for module in (stage_1_and_2, stage3):
        module.get_norm_dtype = _float32
    return True


def _float32() -> torch.dtype:
    return torch.float32

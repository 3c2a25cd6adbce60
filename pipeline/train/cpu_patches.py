"""The CPU-only speed-ups of training, in one place: what each changes, the measurement that justifies it, and the
one call that installs them.

Each patch reaches into DeepSpeed where no config key does, so each lives in its own module with its test, and each
is a no-op where it does not apply (GPUs with NCCL run DeepSpeed untouched):

- `gloo_all_gather` (`gloo_collectives.py`): DeepSpeed's all-gather on 2-rank gloo groups as one broadcast per
  rank. Gloo's own all-gather of 160 MB per rank took 0.705 s, the broadcasts 0.176 s (4.0x,
  `python bench/gloo_collectives.py`); ZeRO-2's optimizer step on S fell from 2.05 s to 1.36 s, losses identical
  (`python bench/zero_step.py --all-gather gloo|broadcast`; BENCHMARKS.md, "Gloo's all-gather replaced by
  broadcasts"). Bitwise equal to gloo's: tests/test_gloo_collectives.py.
- `fp32_grad_norm` (`grad_norm.py`): ZeRO's gradient norm in float32 instead of a float64 copy of every gradient
  on the CPU accelerator. S's ZeRO-2 optimizer step fell from 1.34-1.85 s to 0.71-0.75 s, losses identical to every
  printed digit (`python bench/zero_step.py --grad-norm fp64|fp32`; BENCHMARKS.md, "Gradient norm in fp32 on CPU").
  Within 1e-6 of the float64 norm: tests/test_grad_norm.py.

A third CPU speed-up of the training path is not a patch and stays with the code it speeds up: the loader's cached
`.npy` header parse (`decode_npy` in `pipeline/data/token_shards.py`; numpy's own parse cost ~100 us per member,
the largest loader cost before the cache: BENCHMARKS.md, "Loader"). The Ray worker prestart of preprocessing is in
`cluster/prestart.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.train.gloo_collectives import install_broadcast_all_gather
from pipeline.train.grad_norm import install_fp32_grad_norm

# name -> installer (returns whether it applied here). Order matters only in that both need
# `deepspeed.init_distributed` done and must run before `deepspeed.initialize`.
CPU_PATCHES: dict[str, Callable[[], bool]] = {
    "gloo_all_gather": install_broadcast_all_gather,
    "fp32_grad_norm": install_fp32_grad_norm,
}


def install_cpu_patches() -> dict[str, bool]:
    """Install every CPU training patch that applies to this process; returns name -> installed. Call once per
    worker, after `deepspeed.init_distributed` and before `deepspeed.initialize`."""
    return {name: install() for name, install in CPU_PATCHES.items()}

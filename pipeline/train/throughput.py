"""Model FLOPs of a training batch, the declared peak they are measured against, and MFU.

FLOPs come from the model's own counter (`pipeline/model/flops.py`) fed each sample's live token counts: padding
slots cost time but do no useful work, so they lower MFU instead of counting as model FLOPs. The peak is the config's
`peak_flops` when set; otherwise a table of dense bf16 peaks by GPU name (bf16 runs only), else a short timing of a
square matmul in the run's precision on the worker's own device, once at start-up.
"""

from __future__ import annotations

import re
import time

import numpy as np

from pipeline.model.flops import training_flops
from pipeline.model.sizes import Dims

# Dense (no 2:4 sparsity) bf16 tensor-core peaks with fp32 accumulate, from NVIDIA's datasheets; first match wins.
# AWS's A10G is not the A10 (125): its tensor cores run half rate, and its bf16 matmuls measure ~69.5 TFLOPS.
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756e12),
    (r"H100|H200", 989e12),  # SXM; H100 and H200 share the GH100 die and clocks
    (r"A100", 312e12),
    (r"A10G", 70e12),
    (r"\bL4\b", 121e12),
)
MEASURE_SECONDS = 1.0  # the start-up matmul timing's budget


def gpu_bf16_peak(device_name: str) -> float | None:
    """The table's dense bf16 peak for a `torch.cuda.get_device_name()`, or None for a GPU it does not know (NVL
    variants too: their clocks differ)."""
    if "NVL" in device_name:
        return None
    for pattern, peak in GPU_BF16_PEAKS:
        if re.search(pattern, device_name):
            return peak
    return None


def measure_matmul_peak(dtype, device, seconds: float = MEASURE_SECONDS) -> float:
    """Best FLOP/s of square matmuls of growing size within about `seconds` (a size is skipped when its first
    multiply would not fit in what is left, so a slow dtype, e.g. bf16 on a CPU without AMX, cannot stall start-up)."""
    import torch

    sizes = (256, 512, 1024) if device.type == "cpu" else (2048, 4096, 8192)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator(device).manual_seed(0)  # leaves the global RNG, which checkpoints restore, alone
    deadline = time.perf_counter() + seconds
    best, last = 0.0, 0.0
    for index, n in enumerate(sizes):
        remaining = deadline - time.perf_counter()
        if index and last * 8 > remaining:  # next size does 8x the work of the last multiply
            break
        a, b = (torch.randn(n, n, device=device, generator=generator).to(dtype) for _ in range(2))
        until = time.perf_counter() + remaining / (len(sizes) - index)
        while True:
            start = time.perf_counter()
            torch.matmul(a, b)
            sync()
            last = time.perf_counter() - start
            best = max(best, 2 * n**3 / last)
            if time.perf_counter() >= until:
                break
    return best


def declared_peak(configured: float | None, precision: str, device) -> tuple[float, str]:
    """(peak FLOP/s of this worker, where the number came from)."""
    import torch

    if configured is not None:
        return configured, "config"
    if device.type == "cuda" and precision == "bf16":
        name = torch.cuda.get_device_name(device)
        peak = gpu_bf16_peak(name)
        if peak is not None:
            return peak, f"{name} bf16 datasheet"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measure_matmul_peak(dtype, device), f"measured {precision} matmul"


def batch_flops(dims: Dims, batch: dict[str, np.ndarray], vocab_sizes: np.ndarray) -> int:
    """Training FLOPs (forward + backward) of one packed batch: the counter per sample, over its live encoder and
    decoder slots, with the mean vocabulary of the heads its live target slots go through."""
    live_in = (~batch["enc_pad"]).sum(axis=1)
    live_out = ~batch["dec_pad"]
    head_vocab_sum = np.where(live_out, vocab_sizes[batch["dec_modality"]], 0).sum(axis=1)
    return sum(training_flops(dims, int(i), int(t), float(v) / t if t else 0.0)
               for i, t, v in zip(live_in, live_out.sum(axis=1), head_vocab_sum))


def mfu(flops: float, seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the declared peak FLOP/s of the same workers."""
    return flops / seconds / peak

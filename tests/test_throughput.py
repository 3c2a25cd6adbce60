"""MFU arithmetic of the pretrain loop (pipeline/train/throughput.py) against numbers worked out by hand."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipeline.model.sizes import Dims
from pipeline.train.throughput import batch_flops, declared_peak, gpu_bf16_peak, measure_matmul_peak, mfu

# Width 8, one encoder and one decoder block, one head; SwiGLU hidden int(2 * 3 * 8 / 3) = 16, rounded up to 64.
DIMS = Dims(dim=8, encoder_depth=1, decoder_depth=1, heads=1, mlp_ratio=3.0)
VOCAB = np.array([10, 30])  # modality 0, modality 1


def test_batch_flops_count_live_slots_with_each_samples_heads():
    assert DIMS.mlp_hidden == 64
    batch = {  # sample 0: 2 live inputs, 1 live target of modality 0; sample 1: 1 input, 2 targets (0 and 1)
        "enc_pad": np.array([[False, False, True], [False, True, True]]),
        "dec_pad": np.array([[False, True], [False, False]]),
        "dec_modality": np.array([[0, 1], [0, 1]]),  # sample 0's padded slot says 1: it must not count
    }
    # Per token, block = 4 d^2 + 3 d h = 256 + 1536 = 1792.
    # Sample 0 (I=2, T=1, head vocab 10): encoder 2*2*1792 + 4*2*2*8 = 7296; decoder self 2*1*1792 + 4*1*1*8 = 3616,
    # cross 2*1*2*64 + 2*2*2*64 + 4*1*2*8 = 832; heads 2*8*10 = 160. Forward 11904, training 3x = 35712.
    # Sample 1 (I=1, T=2, head vocab 10 + 30): encoder 2*1*1792 + 4*1*1*8 = 3616; self 2*2*1792 + 4*2*2*8 = 7296,
    # cross 2*2*2*64 + 2*1*2*64 + 4*2*1*8 = 832; heads 2*8*(10+30) = 640. Forward 12384, training 37152.
    assert batch_flops(DIMS, batch, VOCAB) == 35712 + 37152


def test_mfu_is_achieved_over_declared_flops():
    # 72,864 FLOPs in 0.5 s is 145,728 FLOP/s; against two workers of 1e6 FLOP/s each: 7.2864%.
    assert mfu(72_864, 0.5, 2e6) == pytest.approx(0.072864)


def test_gpu_peaks_by_device_name():
    assert gpu_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert gpu_bf16_peak("NVIDIA H200") == 989e12
    assert gpu_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_bf16_peak("NVIDIA A10G") == 70e12
    assert gpu_bf16_peak("NVIDIA L4") == 121e12
    for unknown in ("NVIDIA A10", "NVIDIA L40S", "NVIDIA H100 NVL", "NVIDIA GeForce RTX 4090"):
        assert gpu_bf16_peak(unknown) is None  # measured instead


def test_cpu_peak_is_measured_briefly_unless_configured():
    cpu = torch.device("cpu")
    assert declared_peak(3e11, "fp32", cpu) == (3e11, "config")
    state = torch.get_rng_state()
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        peak = measure_matmul_peak(dtype, cpu, seconds=0.5)
        # A bounded timing, even for bf16 matmuls where the CPU lacks fast kernels (one multiply may overrun a bit).
        assert time.perf_counter() - start < 2.0
        assert 1e7 < peak < 1e13  # between a very slow core and far more than any CPU core does
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG, which checkpoints restore, is untouched

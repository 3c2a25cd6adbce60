"""ZeRO's float32 gradient norm on CPU (pipeline/train/grad_norm.py) against DeepSpeed's float64 one: real ZeRO-2 and
ZeRO-3 engines on two gloo processes, the same seeded model and batch, one step each way."""

from __future__ import annotations

import pytest
from gloo_ranks import run_on_ranks


def _norms_on_rank(rank: int, world: int, stage: int) -> dict:
    import deepspeed
    import torch
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    from pipeline.train.grad_norm import install_fp32_grad_norm

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": stage, "reduce_bucket_size": 5000, "allgather_bucket_size": 5000},
              "zero_allow_untested_optimizer": True}

    def one_step() -> float:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        batch = torch.randn(4, 64, generator=torch.Generator().manual_seed(rank)) * 100  # norm well above the clip
        engine.backward(engine(batch).pow(2).mean())
        engine.step()
        return float(engine.get_global_grad_norm())

    float64_norm = one_step()
    dtypes_before = (stage_1_and_2.get_norm_dtype(), stage3.get_norm_dtype())
    installed = install_fp32_grad_norm()
    dtypes_after = (stage_1_and_2.get_norm_dtype(), stage3.get_norm_dtype())
    float32_norm = one_step()
    torch.distributed.destroy_process_group()
    return {"float64": float64_norm, "float32": float32_norm, "installed": installed,
            "dtypes": (dtypes_before, dtypes_after)}


@pytest.mark.parametrize("stage", [2, 3])
def test_fp32_grad_norm_matches_deepspeeds_fp64_norm(stage):
    import torch

    outcome = run_on_ranks(_norms_on_rank, 2, stage)
    for rank, result in outcome.items():
        assert result["installed"], rank
        assert result["dtypes"] == ((torch.float64, torch.float64), (torch.float32, torch.float32)), rank
        assert result["float64"] > 1.0, rank  # clipping is active, so the norm decides the update
        assert result["float32"] == pytest.approx(result["float64"], rel=1e-6), rank
    assert outcome[0]["float32"] == outcome[1]["float32"]  # a global norm: every rank holds the same value

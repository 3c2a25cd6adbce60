"""The broadcast all-gather that DeepSpeed uses on gloo: bitwise equal to gloo's own, sync and async, and installed
into DeepSpeed's backend only where it applies, by the job's one call for the CPU patches
(pipeline/train/cpu_patches.py). Two and three real gloo processes on this machine."""

from __future__ import annotations

import pytest
from gloo_ranks import run_on_ranks


def _compare_on_rank(rank: int, world: int) -> dict:
    import torch
    import torch.distributed as dist

    from pipeline.train.gloo_collectives import broadcast_all_gather_into_tensor, install_broadcast_all_gather

    dist.init_process_group("gloo", rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(rank)
    checks = {}
    for dtype in (torch.float32, torch.bfloat16):
        part = torch.randn(1000 + 7, generator=generator).to(dtype)  # odd size: no alignment is assumed
        expected = torch.empty(part.numel() * world, dtype=dtype)
        dist.all_gather_into_tensor(expected, part)
        synced = torch.full_like(expected, float("nan"))
        assert broadcast_all_gather_into_tensor(synced, part) is None
        prefetched = torch.full_like(expected, float("nan")).view(world, -1)  # a 2-D output, as ZeRO-3 may pass
        work = broadcast_all_gather_into_tensor(prefetched, part, async_op=True)
        work.wait()
        checks[str(dtype)] = (torch.equal(synced, expected), torch.equal(prefetched.view(-1), expected))
    import deepspeed
    import deepspeed.comm.comm as ds_comm
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    from pipeline.train.cpu_patches import CPU_PATCHES, install_cpu_patches

    deepspeed.init_distributed(dist_backend="gloo")
    installed = install_cpu_patches()  # what the job's workers call: every CPU patch, each where it applies
    checks["patches"] = sorted(installed) == sorted(CPU_PATCHES)
    checks["installed"] = (installed["gloo_all_gather"],
                           ds_comm.cdb.all_gather_function is broadcast_all_gather_into_tensor)
    checks["fp32_grad_norm"] = (installed["fp32_grad_norm"],
                                stage_1_and_2.get_norm_dtype() == stage3.get_norm_dtype() == torch.float32)
    checks["again"] = install_broadcast_all_gather()  # the gloo installer alone, as bench/ calls it
    dist.barrier()
    dist.destroy_process_group()
    return checks


@pytest.mark.parametrize("world", [2, 3])
def test_broadcast_all_gather_equals_gloo_and_is_installed_for_two_ranks(world):
    outcome = run_on_ranks(_compare_on_rank, world, timeout=180)
    for rank, checks in outcome.items():
        assert checks["torch.float32"] == (True, True), rank
        assert checks["torch.bfloat16"] == (True, True), rank
        # installed with 2 ranks only (measured there); 3 ranks keep gloo's ring all-gather
        assert checks["patches"], rank
        assert checks["installed"] == ((True, True) if world == 2 else (False, False)), rank
        assert checks["again"] == (world == 2), rank
        assert checks["fp32_grad_norm"] == (True, True), rank  # the CPU accelerator, whatever the group size

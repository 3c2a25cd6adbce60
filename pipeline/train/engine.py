"""A pretraining worker's set-up: its place in the group, the process group, the CPU patches, the model under a
DeepSpeed engine, and the peak FLOP/s its MFU is measured against."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.train.cpu_patches import install_cpu_patches
from pipeline.train.deepspeed_config import deepspeed_config
from pipeline.train.throughput import declared_peak
from schemas.batch import ModalityTable
from schemas.pretrain import PretrainConfig


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: object  # torch.device


def start_worker(config: PretrainConfig) -> Worker:
    """Threads, seed and device of this Ray Train worker, and DeepSpeed's distributed state on the process group Ray
    Train has set up (zero.Init needs it before the model exists)."""
    if not config.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # in the worker only: the driver never initialises DeepSpeed
    import ray.train
    import torch

    context = ray.train.get_context()
    torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if config.use_gpu else torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if config.use_gpu else "gloo")
    install_cpu_patches()  # no-ops on GPUs (cpu_patches.py)
    return Worker(context.get_world_rank(), context.get_world_size(), device)


def build_engine(config: PretrainConfig, table: ModalityTable):
    """(engine, optimizer): the model and the job's torch AdamW under DeepSpeed ZeRO."""
    import deepspeed
    import torch

    from pipeline.model import build_model

    ds_config = deepspeed_config(config)
    if config.zero.stage == 3:
        # No dtype argument: DeepSpeed 0.19.8 turns any dtype passed here into bf16 on CPU (BENCHMARKS.md).
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = build_model(config.model, table)
    else:
        model = build_model(config.model, table)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay, fused=config.optim.fused)
    engine, optimizer, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    # No other reference to the model survives this function: a second one would keep full copies alive.
    return engine, optimizer


def total_peak_flops(config: PretrainConfig, worker: Worker) -> tuple[float, str]:
    """The sum of every worker's peak FLOP/s (MFU's denominator) and where this worker's came from. Every rank times
    its matmuls at the same moment, after DeepSpeed's one-off op build, so that no rank is timed while a peer
    compiles."""
    import torch.distributed as dist

    from pipeline.train.metrics_window import gather_rows

    dist.barrier()
    peak, source = declared_peak(config.peak_flops, config.precision, worker.device)
    return float(gather_rows([peak], worker.device).sum()), source

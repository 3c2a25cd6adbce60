"""The Ray Train worker function of the pretrain job, composed of the training skeleton's parts.

Every rank builds the model under a DeepSpeed engine (`engine.py`; under `deepspeed.zero.Init` for stage 3, so
large sizes are never whole on a rank), streams the training part of its own token shards, and steps the engine
(`step.py`); `MetricsWindow` turns what the ranks counted into metrics rows, `Validator` scores the held-out part,
`PretrainCheckpointer` saves and resumes. A restarted worker group resumes from the latest checkpoint.
"""

from __future__ import annotations

from pipeline.data.storage import Storage
from pipeline.train.callbacks import StepEnd, notify
from pipeline.train.checkpoint import PretrainCheckpointer
from pipeline.train.engine import build_engine, start_worker, total_peak_flops
from pipeline.train.metrics import RunMetrics, print_progress
from pipeline.train.metrics_window import MetricsWindow, RunCounts, gather_rows
from pipeline.train.schedule import apply_lr
from pipeline.train.step import Cadence, endless, train_step
from pipeline.train.validation import Validator, fixed_batch_eval, token_loader
from schemas.batch import ModalityTable
from schemas.pretrain import PretrainConfig


def train_loop(loop_config: dict) -> None:
    """`loop_config`: the typed `config`, the run's modality `table` (JSON), its `run_dir` and `callbacks` called on
    every rank after every optimizer step (callbacks.py)."""
    import torch

    from pipeline.model import resolve

    config = PretrainConfig.model_validate(loop_config["config"])
    table = ModalityTable.from_json(loop_config["table"])
    callbacks = loop_config.get("callbacks", ())
    worker = start_worker(config)
    rank, world, device = worker.rank, worker.world, worker.device
    engine, optimizer = build_engine(config, table)
    loader = token_loader(config, table, worker, "train")
    validate = Validator(config, table, worker) if config.validation.fraction > 0 else None
    checkpointer = PretrainCheckpointer(config, table, rank, world)

    total_peak, peak_source = total_peak_flops(config, worker)
    if rank == 0:
        print_progress(f"MFU against {total_peak / 1e12:.3g} TFLOP/s over {world} worker(s) ({peak_source})")
    step, counts = checkpointer.restore(engine, loader) or (0, RunCounts())
    if step and rank == 0:
        print_progress(f"resumed from step {step}")

    # Rank 0 writes the metrics into the run directory through Storage: it may be on another node than the driver.
    metrics = RunMetrics(Storage(loop_config["run_dir"], config.storage)) if rank == 0 else None
    window = MetricsWindow(table, resolve(config.model), device, total_peak, counts,
                           strategies=loader.masker.strategy_names)
    cadence = Cadence(config.steps, config.log_every, config.checkpoint_every, frozenset(config.checkpoint_steps))
    batches = endless(loader)
    while step < config.steps:
        lr = apply_lr(optimizer, step, config.steps, config.optim)
        train_step(engine, batches, config.optim.grad_accumulation, device, window)
        step += 1
        validating = validate is not None and config.validates_at(step)
        row = {}
        if cadence.logs_at(step) or validating:
            row = {"step": step, "lr": lr, **window.row(), "epoch": loader.epoch}
            if config.use_gpu:
                row["peak_gpu_gib"] = float(gather_rows([torch.cuda.max_memory_allocated() / 2**30], device).max())
            if validating:
                row.update(validate(engine))
                window.restart_clock()  # validation time is not training throughput either
            if step == config.steps:
                row.update(fixed_batch_eval(engine, config, table, worker))
            if rank == 0:
                # metrics reach remote storage at least with every checkpoint, so a resumed run has its history
                print_progress(progress_line(row, config.steps))
                metrics.log(row, flush=cadence.checkpoints_at(step))
        if cadence.checkpoints_at(step):
            checkpointer.save(engine, loader, step, window.run, row)
            window.restart_clock()  # checkpoint time is not training throughput
        elif row:
            import ray.train

            ray.train.report(row)
        notify(callbacks, StepEnd(step, rank, world))


def progress_line(row: dict, steps: int) -> str:
    line = (f"step {row['step']:>6}/{steps} loss {row['loss']:.4f} lr {row['lr']:.2e} "
            f"{row['tokens_per_s']:,.0f} tok/s {row['samples_per_s']:,.1f} samples/s "
            f"MFU {row['mfu']:.2%} peak {row['peak_rss_gib']:.2f} GiB")
    return line + (f" val {row['val_loss']:.4f}" if "val_loss" in row else "")

"""The Ray Train worker function of the pretrain job: model + loader + DeepSpeed engine, checkpoints, metrics.

Every rank builds the model (under `deepspeed.zero.Init` for stage 3, so large sizes are never whole on a rank),
streams its own token shards, and steps a DeepSpeed engine. A checkpoint is DeepSpeed's own layout (every rank
calls `save_checkpoint`, each writing its shards) plus per-rank loader positions and RNG states, reported to Ray
Train as one directory; a restarted worker group resumes from the latest one.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.train.deepspeed_config import deepspeed_config
from pipeline.train.schedule import lr_factor
from pipeline.train.throughput import batch_flops, declared_peak, mfu
from schemas.batch import ModalityTable
from schemas.pretrain import PretrainConfig

TAG = "state"  # one DeepSpeed tag per reported checkpoint directory
META = "tessera_meta.json"
WEIGHTS = "model.safetensors"  # consolidated weights, loadable without DeepSpeed and without unpickling anything
MODEL_JSON = "model.json"  # ModelConfig + ModalityTable of those weights


def train_loop(loop_config: dict) -> None:
    config = PretrainConfig.model_validate(loop_config["config"])
    table = ModalityTable.from_json(loop_config["table"])
    if not config.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # in the worker only: the driver never initialises DeepSpeed
    import ray.train
    import torch
    import torch.distributed as dist

    from pipeline.data.loader import TokenShardLoader, to_torch
    from pipeline.model import build_model, resolve

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if config.use_gpu else torch.device("cpu")
    # Ray Train has set up the process group; DeepSpeed adopts it (zero.Init needs it before the model exists).
    deepspeed.init_distributed(dist_backend="nccl" if config.use_gpu else "gloo")
    ds_config = deepspeed_config(config)
    if config.zero.stage == 3:
        # No dtype argument: DeepSpeed 0.19.8 turns any dtype passed here into bf16 on CPU (BENCHMARKS.md).
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = build_model(config.model, table)
    else:
        model = build_model(config.model, table)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    engine, optimizer, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    del model  # the engine owns the (partitioned) parameters now; a second reference would keep full copies alive
    loader = TokenShardLoader(config.data, table, config.masking, config.loader, rank, world, config.storage)

    # Every rank times its matmuls at the same moment, after DeepSpeed's one-off op build, so that no rank is timed
    # while a peer compiles; MFU is then taken against the sum of the workers' peaks.
    dist.barrier()
    peak, peak_source = declared_peak(config.peak_flops, config.precision, device)
    total_peak = float(_gather([peak], device).sum())
    if rank == 0:
        print(f"MFU against {total_peak / 1e12:.3g} TFLOP/s over {world} worker(s) ({peak_source})", flush=True)

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            engine.load_checkpoint(directory, tag=TAG)
            meta = json.loads(Path(directory, META).read_text())
            step = meta["step"]
            loader.load_state_dict(meta["loaders"][str(rank)])
            torch.set_rng_state(torch.tensor(meta["torch_rng"][str(rank)], dtype=torch.uint8))
        if rank == 0:
            print(f"resumed from step {step}", flush=True)

    dims, vocab_sizes = resolve(config.model), np.array([s.vocab_size for s in table.specs])

    metrics_path = loop_config.get("metrics_path")
    events = None
    if metrics_path and rank == 0:  # TensorBoard event files beside the JSONL: `tensorboard --logdir RUN_DIR/tb`
        from tensorboardX import SummaryWriter

        events = SummaryWriter(str(Path(metrics_path).parent / "tb"))
    window_start, window = time.perf_counter(), np.zeros(3)  # tokens, samples, model FLOPs of this rank
    batches = iter(loader)
    while step < config.steps:
        try:
            batch = next(batches)
        except StopIteration:  # next epoch: every rank has the same number of batches, so all roll over together
            batches = iter(loader)
            continue
        for group in optimizer.param_groups:
            group["lr"] = config.optim.lr * lr_factor(step, config.steps, config.optim)
        tensors = {k: v.to(device) for k, v in to_torch(batch).items()}
        out = engine(tensors)
        engine.backward(out.loss)
        engine.step()
        step += 1
        window += (int((~batch["enc_pad"]).sum() + (~batch["dec_pad"]).sum()), len(batch["enc_pad"]),
                   batch_flops(dims, batch, vocab_sizes))
        if loop_config.get("fail_at_step") == step and rank == world - 1 and _first_failure(loop_config):
            os._exit(1)  # a test hook: a worker dying mid-run, which FailureConfig must recover from
        report = {}
        if step % config.log_every == 0 or step == config.steps:
            seconds = time.perf_counter() - window_start
            memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            per_rank = _gather([*window, memory], device)  # (world, 4): every rank's window and peak RSS
            tokens, samples, flops = map(float, per_rank[:, :3].sum(axis=0))
            report = {
                "step": step, "loss": float(out.loss.detach()), "lr": optimizer.param_groups[0]["lr"],
                **{f"loss_{name}": float(value.detach()) for name, value in out.losses.items()},
                "tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds, "flops_per_s": flops / seconds,
                "mfu": mfu(flops, seconds, total_peak), "peak_flops": total_peak,
                "peak_rss_gib": float(per_rank[:, 3].max()), "peak_rss_gib_by_rank": per_rank[:, 3].tolist(),
                "epoch": loader.epoch,
            }
            if config.use_gpu:
                report["peak_gpu_gib"] = float(_gather([torch.cuda.max_memory_allocated() / 2**30], device).max())
            if step == config.steps:
                report.update(_fixed_batch_eval(engine, config, table, rank, world, device))
            if rank == 0:
                _log(report, config.steps, metrics_path, events)
            window_start, window = time.perf_counter(), np.zeros(3)
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save(engine, loader, step, rank, world, report, config, table)
            window_start = time.perf_counter()  # checkpoint time is not training throughput
        elif report:
            ray.train.report(report)


def _gather(values: list[float], device) -> np.ndarray:
    """(world, len(values)): one row per rank, in rank order."""
    import torch
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    return torch.stack(rows).cpu().numpy()


def _log(report: dict, steps: int, metrics_path: str | None, events) -> None:
    """Rank 0: the progress line, a JSONL row and TensorBoard scalars."""
    print(f"step {report['step']:>6}/{steps} loss {report['loss']:.4f} lr {report['lr']:.2e} "
          f"{report['tokens_per_s']:,.0f} tok/s {report['samples_per_s']:,.1f} samples/s MFU {report['mfu']:.2%} "
          f"peak {report['peak_rss_gib']:.2f} GiB", flush=True)
    if metrics_path:
        with open(metrics_path, "a") as handle:
            handle.write(json.dumps(report) + "\n")
    if events is not None:
        step = report["step"]
        for name, value in report.items():
            if name == "peak_rss_gib_by_rank":
                for rank, gib in enumerate(value):
                    events.add_scalar(f"peak_rss_gib/rank{rank}", gib, step)
            elif name != "step":
                events.add_scalar(name.replace("loss_", "loss/"), value, step)
        events.flush()


def _fixed_batch_eval(engine, config: PretrainConfig, table: ModalityTable, rank: int, world: int, device) -> dict:
    """The engine's loss on a batch anyone can rebuild: the first batch of this rank's stream (a fresh loader with the
    run's settings), so that an export can be checked against the engine itself. Every rank runs it (ZeRO-3 gathers
    parameters collectively); rank 0's numbers are the ones logged."""
    import torch

    from pipeline.data.loader import TokenShardLoader, to_torch

    settings = config.loader.model_copy(update={"prefetch_batches": 0})
    batch = next(iter(TokenShardLoader(config.data, table, config.masking, settings, rank, world, config.storage)))
    engine.eval()
    with torch.no_grad():
        out = engine({k: v.to(device) for k, v in to_torch(batch).items()})
    engine.train()
    return {"eval_loss": float(out.loss), **{f"eval_loss_{name}": float(v) for name, v in out.losses.items()}}


def _save(engine, loader, step: int, rank: int, world: int, report: dict, config: PretrainConfig,
          table: ModalityTable) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    # Loader positions and RNG states of every rank go into one small file that every rank holds alike.
    states = [None] * world
    dist.all_gather_object(states, {"loader": loader.state_dict(), "rng": torch.get_rng_state().tolist()})
    with tempfile.TemporaryDirectory(prefix="tessera-ckpt-") as directory:
        engine.save_checkpoint(directory, tag=TAG)
        meta = {"step": step, "loaders": {str(r): s["loader"] for r, s in enumerate(states)},
                "torch_rng": {str(r): s["rng"] for r, s in enumerate(states)}}
        Path(directory, META).write_text(json.dumps(meta))
        # Whole weights beside the ZeRO shards, so export and evaluation never unpickle DeepSpeed's files. Under
        # stage 3 every rank takes part in gathering them; rank 0 writes them.
        if config.zero.stage == 3:
            weights = engine._zero3_consolidated_16bit_state_dict()
        else:
            weights = engine.module.state_dict()
        if rank == 0:
            save_file({k: v.detach().float().contiguous().cpu() for k, v in weights.items()},
                      str(Path(directory, WEIGHTS)))
            Path(directory, MODEL_JSON).write_text(json.dumps(
                {"model": config.model.model_dump(mode="json"), "table": table.to_json(), "step": step}))
        ray.train.report({"step": step, **report},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def _first_failure(loop_config: dict) -> bool:
    marker = Path(loop_config["failure_marker"])
    if marker.exists():
        return False
    marker.write_text("failed once")
    return True


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_loss(metrics: list[dict], out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([m["step"] for m in metrics])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [m["loss"] for m in metrics], label="loss", linewidth=2)
    for name in sorted({k for m in metrics for k in m if k.startswith("loss_")}):
        ax.plot(steps, [m.get(name, np.nan) for m in metrics], label=name[5:], alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)

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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.storage import Storage
from pipeline.train.deepspeed_config import deepspeed_config
from pipeline.train.metrics import RunMetrics
from pipeline.train.schedule import lr_factor
from pipeline.train.throughput import batch_flops, declared_peak, mfu
from schemas.batch import ModalityTable
# consolidated weights (no DeepSpeed, nothing unpickled) and their ModelConfig + ModalityTable
from schemas.export import MODEL_JSON, WEIGHTS
from schemas.pretrain import PretrainConfig

TAG = "state"  # one DeepSpeed tag per reported checkpoint directory
META = "tessera_meta.json"


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
    from pipeline.train.gloo_collectives import install_broadcast_all_gather
    from pipeline.train.grad_norm import install_fp32_grad_norm

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if config.use_gpu else torch.device("cpu")
    # Ray Train has set up the process group; DeepSpeed adopts it (zero.Init needs it before the model exists).
    deepspeed.init_distributed(dist_backend="nccl" if config.use_gpu else "gloo")
    install_broadcast_all_gather()  # gloo's own all-gather is ~4x slower than broadcasts (gloo_collectives.py)
    install_fp32_grad_norm()  # on CPU: no float64 copy of the gradients every step (grad_norm.py)
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
    del model  # the engine owns the (partitioned) parameters now; a second reference would keep full copies alive
    loader = TokenShardLoader(config.data, table, config.masking, config.loader, rank, world, config.storage)

    # Every rank times its matmuls at the same moment, after DeepSpeed's one-off op build, so that no rank is timed
    # while a peer compiles; MFU is then taken against the sum of the workers' peaks.
    dist.barrier()
    peak, peak_source = declared_peak(config.peak_flops, config.precision, device)
    total_peak = float(_gather([peak], device).sum())
    if rank == 0:
        print_progress(f"MFU against {total_peak / 1e12:.3g} TFLOP/s over {world} worker(s) ({peak_source})")

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            engine.load_checkpoint(directory, tag=TAG)
            meta = json.loads(Path(directory, META).read_text())
            step = meta["step"]
            loader.load_state_dict(meta["loaders"][str(rank)])
            torch.set_rng_state(torch.tensor(meta["torch_rng"][str(rank)], dtype=torch.uint8))
            if config.use_gpu and "cuda_rng" in meta:
                torch.cuda.set_rng_state(torch.tensor(meta["cuda_rng"][str(rank)], dtype=torch.uint8))
        if rank == 0:
            print_progress(f"resumed from step {step}")

    dims, vocab_sizes = resolve(config.model), np.array([s.vocab_size for s in table.specs])

    # Rank 0 writes the metrics into the run directory through Storage: it may be on another node than the driver.
    metrics = RunMetrics(Storage(loop_config["run_dir"], config.storage)) if rank == 0 else None
    window_start, window = time.perf_counter(), np.zeros(3)  # tokens, samples, model FLOPs of this rank
    # Loss sums over the log window, kept on the device so that no micro-batch waits for a host sync: the total
    # first, then each modality's in table order; with their counts, the logged losses are window means over all
    # ranks' micro-batches, not one micro-batch of rank 0.
    losses, counts = torch.zeros(len(table) + 1, dtype=torch.float64, device=device), np.zeros(len(table) + 1)
    slot = {name: 1 + i for i, name in enumerate(table.names)}
    batches = _endless(loader)
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = config.optim.lr * lr_factor(step, config.steps, config.optim)
        # A step is one optimizer step: `grad_accumulation` micro-batches, DeepSpeed applying the update after the
        # last. Counting steps this way keeps every checkpoint on an update boundary, where no partial gradient
        # exists that the checkpoint would lose (DeepSpeed saves none, and a restored engine restarts its
        # micro-step count at 0).
        for _ in range(config.optim.grad_accumulation):
            batch = next(batches)
            tensors = {k: v.to(device) for k, v in to_torch(batch).items()}
            out = engine(tensors)
            engine.backward(out.loss)
            engine.step()
            window += (int((~batch["enc_pad"]).sum() + (~batch["dec_pad"]).sum()), len(batch["enc_pad"]),
                       batch_flops(dims, batch, vocab_sizes))
            losses[0] += out.loss.detach()
            counts[0] += 1
            for name, value in out.losses.items():
                losses[slot[name]] += value.detach()
                counts[slot[name]] += 1
        step += 1
        if loop_config.get("fail_at_step") == step and rank == world - 1 and _first_failure(loop_config):
            os._exit(1)  # a test hook: a worker dying mid-run, which FailureConfig must recover from
        report = {}
        if step % config.log_every == 0 or step == config.steps:
            seconds = time.perf_counter() - window_start
            memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            # (world, 4 + 2 x (modalities + 1)): every rank's window, peak RSS, loss sums and counts
            per_rank = _gather([*window, memory, *losses.tolist(), *counts], device)
            tokens, samples, flops = map(float, per_rank[:, :3].sum(axis=0))
            loss_sums, loss_counts = np.split(per_rank[:, 4:].sum(axis=0), 2)
            means = {name: float(total / count) for name, total, count
                     in zip(("", *table.names), loss_sums, loss_counts) if count}
            report = {
                "step": step, "loss": means.pop(""), "lr": optimizer.param_groups[0]["lr"],
                **{f"loss_{name}": value for name, value in means.items()},
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
                # metrics reach remote storage at least with every checkpoint, so a resumed run has its history
                _log(report, config.steps, metrics,
                     flush=step % config.checkpoint_every == 0 or step == config.steps)
            window_start, window = time.perf_counter(), np.zeros(3)
            losses.zero_()
            counts[:] = 0
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save(engine, loader, step, rank, world, report, config, table)
            window_start = time.perf_counter()  # checkpoint time is not training throughput
        elif report:
            ray.train.report(report)


def _endless(loader):
    """The loader's batches epoch after epoch: every rank has the same number of batches per epoch, so all roll
    over together."""
    while True:
        produced = False
        for batch in loader:
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("the loader made no batch in a whole epoch: this rank's shards hold fewer samples "
                               "than loader.batch_size")


def _gather(values: list[float], device) -> np.ndarray:
    """(world, len(values)): one row per rank, in rank order."""
    import torch
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    return torch.stack(rows).cpu().numpy()


def print_progress(line: str) -> None:
    """A progress line from a Ray Train worker, printed once. Ray Train V2 swaps `print` in its workers for one that,
    because Ray has replaced sys.stdout there, both prints and logs to the console: every line reached the driver
    twice. The process's own stdout passes through that patch untouched and is still forwarded to the driver (and a
    submitted job's log), without turning off Ray's capture of everything else."""
    print(line, file=sys.__stdout__, flush=True)


def _log(report: dict, steps: int, metrics: RunMetrics, flush: bool) -> None:
    """Rank 0: the progress line, then the JSONL row and TensorBoard scalars."""
    print_progress(f"step {report['step']:>6}/{steps} loss {report['loss']:.4f} lr {report['lr']:.2e} "
                   f"{report['tokens_per_s']:,.0f} tok/s {report['samples_per_s']:,.1f} samples/s "
                   f"MFU {report['mfu']:.2%} peak {report['peak_rss_gib']:.2f} GiB")
    metrics.log(report, flush=flush)


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
    mine = {"loader": loader.state_dict(), "rng": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and config.use_gpu:  # dropout or sampling on the GPU draws from this generator
        mine["cuda_rng"] = torch.cuda.get_rng_state().tolist()
    dist.all_gather_object(states, mine)
    with tempfile.TemporaryDirectory(prefix="tessera-ckpt-") as directory:
        engine.save_checkpoint(directory, tag=TAG)
        meta = {"step": step, "loaders": {str(r): s["loader"] for r, s in enumerate(states)},
                "torch_rng": {str(r): s["rng"] for r, s in enumerate(states)}}
        if "cuda_rng" in states[0]:
            meta["cuda_rng"] = {str(r): s["cuda_rng"] for r, s in enumerate(states)}
        Path(directory, META).write_text(json.dumps(meta))
        # Whole weights beside the ZeRO shards, so export and evaluation never unpickle DeepSpeed's files. Every
        # rank takes part in gathering them; rank 0 writes them.
        weights = _master_weights(engine, keep=rank == 0)
        if rank == 0:
            save_file(weights, str(Path(directory, WEIGHTS)))
            Path(directory, MODEL_JSON).write_text(json.dumps(
                {"model": config.model.model_dump(mode="json"), "table": table.to_json(), "step": step}))
        ray.train.report({"step": step, **report},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def _master_weights(engine, keep: bool) -> dict:
    """The full fp32 master weights (what DeepSpeed's zero_to_fp32 recovers), not the 16-bit copy the forward pass
    uses, which under bf16 is rounded. A collective: every rank calls it, in the same parameter order; only a rank
    with `keep` holds the result (a full fp32 copy on every rank would cost what ZeRO saves)."""
    from deepspeed.utils import safe_get_full_fp32_param

    # state_dict keys (tied names, persistent buffers) as the plain model expects them; parameters replaced below,
    # since under stage 3 the module holds only empty partitions.
    weights = dict(engine.module.state_dict())
    gathered: dict[int, object] = {}
    for name, param in engine.module.named_parameters(remove_duplicate=False):
        if id(param) not in gathered:
            full = safe_get_full_fp32_param(param)
            # None where the optimizer keeps no separate master copy (stage 0 in fp32): the parameter is the master.
            gathered[id(param)] = (param if full is None else full) if keep else None
        weights[name] = gathered[id(param)]
    return {k: v.detach().float().contiguous().cpu() for k, v in weights.items()} if keep else {}


def _first_failure(loop_config: dict) -> bool:
    marker = Path(loop_config["failure_marker"])
    if marker.exists():
        return False
    marker.write_text("failed once")
    return True

"""The pretrain job itself (`run_pretrain`: Ray Train + DeepSpeed, the real model and loader) under benchmark.

    python bench/pretrain_job.py scaling [--batches 4 8 16] [--size S] [--steps 16 --log-every 4]
    python bench/pretrain_job.py run --size B --precision bf16 --gpu [--stage 3 --offload] [--batch 32]

scaling: tokens/s of N Ray Train workers running the job (ZeRO-`--stage`, 1 CPU and 1 torch thread each) against
    one plain PyTorch process training the same model with the same loader on the same per-worker batch (no Ray,
    no DeepSpeed, torch AdamW, the job's gradient clipping), in one run, for each per-worker batch in `--batches`;
    efficiency = Ray tokens/s / (N x plain tokens/s). A third measurement runs N plain processes at once with no
    communication at all: the machine's own scaling (shared caches, memory bandwidth, the loader threads that a
    lone process runs on an idle core), which splits the gap into what the hardware costs and what Ray Train +
    DeepSpeed cost.
run: one job run of any size and setting (GPU or CPU); prints tokens/s, MFU and peak memory as the job logs them.
    On a GPU node: `run --size B --precision bf16 --gpu`, `run --size L --precision bf16 --gpu` (MFU), and
    `run --size XL --precision bf16 --gpu --stage 3 --offload` (XL with ZeRO-3 and CPU offload).

Both read synthetic token shards written by bench/loader.py's writer (every modality of the S recipe, 224 px
grids); tokens are counted as the job counts them (live encoder + decoder slots). Throughput is taken from the
job's own metrics rows after the first `--log-every` window (start-up, first allocations), so checkpoint time and
DeepSpeed's set-up are not in it, as they are not in the plain loop's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loader import write_synthetic_output  # noqa: E402
from schemas.loading import LoaderConfig, MaskingConfig  # noqa: E402
from schemas.model import ModelConfig  # noqa: E402
from schemas.pretrain import OptimConfig, PretrainConfig, ZeroConfig  # noqa: E402

# The S recipe's modalities (configs/pretrain/S.yaml) that the synthetic writer produces.
MODALITIES = ("rgb", "depth", "semseg", "canny_edge", "caption", "color_palette", "metadata")


def job_config(args, data: str, storage: str, batch: int, name: str) -> PretrainConfig:
    return PretrainConfig(
        name=name, data=data, storage_path=storage, modalities=MODALITIES, workers=args.workers,
        cpus_per_worker=args.threads, use_gpu=args.gpu, steps=args.steps, precision=args.precision,
        model=ModelConfig(size=args.size, activation_checkpointing=args.activation_checkpointing),
        masking=MaskingConfig(input_tokens=args.tokens, target_tokens=args.tokens),
        loader=LoaderConfig(batch_size=batch, shuffle_buffer=256),
        optim=OptimConfig(lr=1e-4, warmup_steps=2),
        zero=ZeroConfig(stage=args.stage, offload_optimizer=args.offload, offload_params=args.offload and args.stage == 3),
        checkpoint_every=10 ** 6, log_every=args.log_every, max_failures=0, peak_flops=args.peak_flops,
    )


# ---------------------------------------------------------------- the plain baseline

def plain_worker(config_json: str, timed_from: int, queue) -> None:
    """One process, no Ray, no DeepSpeed: the job's model, loader, optimizer and clipping, step after step."""
    import torch

    from pipeline.data.loader import TokenShardLoader, to_torch
    from pipeline.data.token_shards import modality_table_from_output
    from pipeline.model import build_model

    config = PretrainConfig.model_validate_json(config_json)
    torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed)
    table = modality_table_from_output(config.data, config.modalities)
    model = build_model(config.model, table).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay, fused=config.optim.fused)
    loader = iter(TokenShardLoader(config.data, table, config.masking, config.loader, 0, 1))
    tokens = seconds = 0.0
    for step in range(1, config.steps + 1):
        started = time.perf_counter()
        batch = next(loader)
        loss = model(to_torch(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        if step > timed_from:
            tokens += int((~batch["enc_pad"]).sum() + (~batch["dec_pad"]).sum())
            seconds += elapsed
        print(f"  plain step {step}: loss {float(loss.detach()):.3f} {elapsed:.2f} s", flush=True)
    queue.put({"tokens_per_s": tokens / seconds, "step_s": seconds / (config.steps - timed_from)})


def run_plain(config: PretrainConfig, timed_from: int, copies: int = 1) -> dict:
    """`copies` independent plain processes at once (fresh, spawned: nothing of the driver's imports or threads);
    tokens/s summed over them."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    processes = [ctx.Process(target=plain_worker, args=(config.model_dump_json(), timed_from, queue))
                 for _ in range(copies)]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in results),
            "step_s": max(r["step_s"] for r in results)}


# ---------------------------------------------------------------- the job

def run_job(config: PretrainConfig, timed_from: int) -> dict:
    """Runs the pretrain job and reads its metrics rows: tokens/s over the rows after step `timed_from`."""
    from pipeline.train.metrics import read_metrics
    from pipeline.train.trainer import run_pretrain

    summary = run_pretrain(config)
    rows = [r for r in read_metrics(summary["metrics_file"]) if r["step"] > timed_from]
    # each row covers log_every steps of every rank: its seconds follow from its sample count and rate
    seconds = [config.log_every * config.loader.batch_size * config.workers / r["samples_per_s"] for r in rows]
    tokens = sum(r["tokens_per_s"] * s for r, s in zip(rows, seconds))
    return {"tokens_per_s": tokens / sum(seconds), "step_s": sum(seconds) / (len(rows) * config.log_every),
            "mfu": sum(r["mfu"] * s for r, s in zip(rows, seconds)) / sum(seconds),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in rows),
            "peak_gpu_gib": max((r.get("peak_gpu_gib", 0.0) for r in rows), default=0.0),
            "loss": rows[-1]["loss"]}


def start_ray(args) -> None:
    import os

    from cluster.connect import connect

    if not args.gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    connect(None)


def cmd_scaling(args, data: str, storage: str) -> None:
    timed_from = args.log_every
    rows = []
    for batch in args.batches:
        config = job_config(args, data, storage, batch, f"scaling-b{batch}")
        print(f"scaling: {args.size}, per-worker batch {batch} x ({args.tokens}+{args.tokens}) slots, plain process",
              flush=True)
        plain = run_plain(config, timed_from)
        print(f"scaling: {args.workers} plain processes at once (the machine's own scaling, no communication)",
              flush=True)
        together = run_plain(config, timed_from, copies=args.workers)
        print(f"scaling: the job, {args.workers} workers, ZeRO-{args.stage}", flush=True)
        job = run_job(config, timed_from)
        efficiency = job["tokens_per_s"] / (args.workers * plain["tokens_per_s"])
        rows.append((batch, plain, together, job, efficiency))
        print(f"  batch {batch}: plain {plain['tokens_per_s']:.0f} tok/s, {args.workers} at once "
              f"{together['tokens_per_s']:.0f}, job {job['tokens_per_s']:.0f} tok/s, efficiency {efficiency:.2f}",
              flush=True)
    print(f"\n{args.size}, {args.precision}, {args.workers} workers x {args.threads} thread(s), ZeRO-{args.stage}, "
          f"{args.steps} steps, timed after step {timed_from}")
    n = args.workers
    print(f"| per-worker batch | plain step s | plain tokens/s | {n} plain at once: step s | tokens/s | "
          f"machine scaling | job step s | job tokens/s | efficiency (job / {n} x plain) | job / {n} plain at once |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch, plain, together, job, efficiency in rows:
        print(f"| {batch} | {plain['step_s']:.2f} | {plain['tokens_per_s']:.0f} | {together['step_s']:.2f} | "
              f"{together['tokens_per_s']:.0f} | {together['tokens_per_s'] / (n * plain['tokens_per_s']):.2f} | "
              f"{job['step_s']:.2f} | {job['tokens_per_s']:.0f} | **{efficiency:.2f}** | "
              f"{job['tokens_per_s'] / together['tokens_per_s']:.2f} |")


def cmd_run(args, data: str, storage: str) -> None:
    batch = args.batches[0]
    config = job_config(args, data, storage, batch, f"run-{args.size}")
    result = run_job(config, args.log_every)
    setting = f"ZeRO-{args.stage}" + (" + CPU offload" if args.offload else "")
    print("\n| size | precision | device | workers | setting | batch | step s | tokens/s | MFU | peak RSS GiB | "
          "peak GPU GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.size} | {args.precision} | {'GPU' if args.gpu else 'CPU'} | {args.workers} | {setting} | {batch} | "
          f"{result['step_s']:.3f} | {result['tokens_per_s']:.0f} | {result['mfu']:.1%} | "
          f"{result['peak_rss_gib']:.2f} | {result['peak_gpu_gib']:.2f} |")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["scaling", "run"])
    parser.add_argument("--size", default="S")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="per-worker batch sizes (scaling: one pair of runs each; run: the first)")
    parser.add_argument("--tokens", type=int, default=256, help="encoder and decoder slots per sample")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=4, help="the first window is start-up and is not timed")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="CPUs and torch threads per worker")
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--offload", action="store_true", help="optimizer (and, with stage 3, parameter) offload")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--peak-flops", type=float, default=None, help="per-worker peak FLOP/s for MFU")
    parser.add_argument("--samples", type=int, default=1024, help="synthetic samples written (cycled as epochs)")
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = [4, 8, 16] if args.command == "scaling" else [8]
    if args.workers is None:
        args.workers = 2 if args.command == "scaling" else 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start_ray(args)
    with tempfile.TemporaryDirectory(prefix="tessera-bench-pretrain-") as tmp:
        data = str(Path(tmp, "tokens"))
        write_synthetic_output(Path(data), args.samples, 128)  # 8 shards by default: 4 per worker
        {"scaling": cmd_scaling, "run": cmd_run}[args.command](args, data, str(Path(tmp, "runs")))


if __name__ == "__main__":
    main()

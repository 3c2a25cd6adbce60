"""Where DeepSpeed ZeRO's memory goes on CPU: per-rank peak RSS and a live-tensor breakdown for stages 0-3.

    python bench/zero_memory.py --size B --stages 0 1 2 3 [--variant naive|tuned] [--dtype fp32|bf16]

Launches N ranks (torch.multiprocessing, gloo, DS_ACCELERATOR=cpu) per stage, trains a few steps of the job's model
(`pipeline/model` at a size of its registry, the S recipe's modalities, random tokens masked and packed by the job's
own masker) and reports for each rank: RSS high-water per phase (build model, deepspeed.initialize, forward,
backward, step), the live tensor bytes after a step split into params / grads / fp32 master / optimizer states /
other, and the ZeRO paper's model-state formula for the stage. `--variant tuned` is the pretrain job's setting
(its DeepSpeed config from `pipeline/train/deepspeed_config.py`, `zero.Init` for stage 3, its CPU patches, fused
AdamW) plus the glibc malloc env; `--variant naive` is what a first attempt does (model built whole on every rank,
DeepSpeed's default bucket sizes, glibc's default malloc). Single settings can be toggled to see each one's share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (  # noqa: E402
    GiB,
    MemoryGuard,
    SavedTensorBytes,
    check_free_memory,
    free_port,
    job_config,
    job_table,
    live_tensor_bytes,
    param_count,
    random_batch,
    reset_rss_peak,
    rss,
    rss_peak,
    setup_rank_env,
)
from pipeline.train.deepspeed_config import deepspeed_config  # noqa: E402

# Model-state bytes per parameter as (replicated, partitioned over N). "paper" is the ZeRO paper's mixed-precision
# case (bf16 params and grads, fp32 master + Adam m, v: K=12). "fp32" is pure fp32 training as DeepSpeed 0.19.8
# implements it: params 4 + grads 4 + Adam m, v 8 = 16P for stage 0, but ZeRO's optimizer also keeps an fp32 master
# copy of its partition even when the params are fp32 already (+4P/N). Stage 1 and 2 clone it on purpose
# (stage_1_and_2.py); stage 3 means to reuse it when dtypes and devices match, but compares `tensor.device == "cpu"`,
# a torch.device against a str, which is always False, so it clones too (stage3.py, _create_fp32_partitions).
# Stage 1 holds full grads only during backward (DeepSpeed reduces them into the partition at its end).
FORMULAS = {
    "paper": {0: (16, 0), 1: (4, 12), 2: (2, 14), 3: (0, 16)},
    "bf16": {0: (16, 0), 1: (4, 12), 2: (2, 14), 3: (0, 16)},
    "fp32": {0: (16, 0), 1: (8, 12), 2: (4, 16), 3: (0, 20)},
}

# The job's small communication buckets (ZeroConfig.bucket_elements, 2e7 elements = 80 MB fp32, and stage 3's
# prefetch / live-parameter limits derived from it): DeepSpeed's defaults (5e8 elements) are sized for GPUs and each
# bucket is a full fp32 buffer on CPU. `--no-buckets` drops these keys, leaving DeepSpeed's defaults.
BUCKET_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
               "stage3_max_live_parameters", "stage3_max_reuse_distance", "stage3_param_persistence_threshold",
               "sub_group_size")
# glibc otherwise raises its mmap threshold to the largest freed block (up to 32 MB) and serves later tensors from
# arenas it never gives back, so RSS stays at the high-water of every transient. A fixed threshold keeps every
# tensor >= 1 MiB in its own mapping, returned to the OS on free; one arena per process limits fragmentation.
TUNED_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20), "MALLOC_ARENA_MAX": "2"}


def config_of(args, stage: int):
    return job_config(args.size, stage, args.batch, args.tokens, args.dtype)


def ds_config(args, stage: int) -> dict:
    """The pretrain job's own DeepSpeed config for this stage (pipeline/train/deepspeed_config.py), less its bucket
    settings under `--no-buckets`."""
    cfg = deepspeed_config(config_of(args, stage))
    if not args.buckets:
        for key in BUCKET_KEYS:
            cfg["zero_optimization"].pop(key, None)
    return cfg


def tensor_groups(engine, stage: int) -> dict[str, list]:
    """Name the tensors DeepSpeed keeps per role, so the live bytes can be split (first group that claims wins)."""
    import torch

    opt = engine.optimizer
    params = list(engine.module.parameters())
    groups = {"params": [], "grads": [], "master": [], "optimizer": []}
    for p in params:
        groups["params"].append(p.data)
        if getattr(p, "ds_tensor", None) is not None:
            groups["params"].append(p.ds_tensor)
        if p.grad is not None:
            groups["grads"].append(p.grad)
    groups["params"] += list(getattr(opt, "bit16_groups_flat", []) or [])
    groups["params"] += list(getattr(opt, "fp16_partitioned_groups_flat", []) or [])
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        for t in getattr(opt, name, []) or []:
            groups["master"].append(t)
            if t.grad is not None:
                groups["grads"].append(t.grad)
    for name in ("averaged_gradients",):
        for v in (getattr(opt, name, {}) or {}).values():
            groups["grads"] += [g for g in (v or []) if isinstance(g, torch.Tensor)]
    for name in ("grad_partitions_flat_buffer", "_DeepSpeedZeroOptimizer_Stage3__ipg_bucket_flat_buffer"):
        t = getattr(opt, name, None)
        if isinstance(t, torch.Tensor):
            groups["grads"].append(t)
    basic = getattr(opt, "optimizer", opt)
    for state in basic.state.values():
        groups["optimizer"] += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return groups


def measure(args, stage: int, rank: int) -> dict:
    """Build, initialize and train `args.steps` steps under `stage` in this rank's process (torch.distributed
    already up); return its memory record. Shared by the torch.multiprocessing launcher here and bench/train.py's
    Ray Train workers."""
    import deepspeed
    import torch

    from pipeline.model import build_model

    torch.set_num_threads(args.threads)
    if args.cpu_patches:  # as the job's workers do (pipeline/train/engine.py: start_worker)
        from pipeline.train.cpu_patches import install_cpu_patches

        install_cpu_patches()
    config = config_of(args, stage)
    table = job_table(config)
    peaks, t0 = {}, time.perf_counter()
    base = rss()
    reset_rss_peak()
    cfg = ds_config(args, stage)
    if stage == 3 and args.zero_init:
        # Each rank allocates only its partition of every parameter as the module is constructed. No `dtype=`:
        # given one, DeepSpeed 0.19.8 ignores it on CPU and builds bf16 params (`dtype or torch.float16 if
        # fp16_supported else torch.bfloat16 ...` parses as `(dtype or fp16) if ... else bf16`); from the
        # config alone it picks fp32, or bf16 when "bf16" is enabled.
        with deepspeed.zero.Init(config_dict_or_path=cfg):
            model = build_model(config.model, table)
    else:
        model = build_model(config.model, table)
    peaks["build"] = rss_peak()
    reset_rss_peak()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay, fused=args.fused_adam)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    del model, optimizer  # the engine holds what it needs; our names must not pin the unpartitioned originals
    peaks["initialize"] = rss_peak()
    step_times, losses, live_bwd = [], [], {}
    for step in range(args.steps):
        batch = random_batch(config, seed=1000 * step + rank)
        t = time.perf_counter()
        reset_rss_peak()
        if step == args.steps - 1:
            states = [t for ts in tensor_groups(engine, stage).values() for t in ts]
            with SavedTensorBytes({t.untyped_storage().data_ptr() for t in states}) as saved:
                loss = engine(batch).loss
            activations = saved.nbytes
        else:
            loss = engine(batch).loss
        peaks["forward"] = max(peaks.get("forward", 0), rss_peak())
        reset_rss_peak()
        engine.backward(loss)
        peaks["backward"] = max(peaks.get("backward", 0), rss_peak())
        if step == args.steps - 1:  # grads are alive only between backward and step
            scan = time.perf_counter()
            live_bwd = live_tensor_bytes(tensor_groups(engine, stage), report_other=args.show_other and rank == 0)
            t += time.perf_counter() - scan  # the scan is not part of the step
        reset_rss_peak()
        engine.step()
        peaks["step"] = max(peaks.get("step", 0), rss_peak())
        step_times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
        if rank == 0:
            print(f"  stage {stage} step {step}: loss {losses[-1]:.3f} {step_times[-1]:.2f}s "
                  f"rss {rss() / GiB:.2f} GiB", flush=True)
    return {"rank": rank, "stage": stage, "base_rss": base, "peaks": peaks, "peak": max(peaks.values()),
            "live": live_bwd, "activations": activations,
            "live_after_step": live_tensor_bytes(tensor_groups(engine, stage)), "end_rss": rss(),
            "step_s": step_times[1:] or step_times, "losses": losses, "seconds": time.perf_counter() - t0}


def rank_main(rank: int, args, stage: int, port: int, queue) -> None:
    setup_rank_env(rank, args.workers, port)
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend="gloo")
    queue.put(measure(args, stage, rank))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def run_stage(args, stage: int) -> list[dict]:
    """One stage in fresh processes (so peaks do not leak between stages); returns one record per rank."""
    env_saved = dict(os.environ)
    if args.malloc:
        os.environ.update(TUNED_ENV)  # read by glibc at process start, so set before spawning
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=rank_main, args=(r, args, stage, port, queue)) for r in range(args.workers)]
    for p in procs:
        p.start()
    os.environ.clear()
    os.environ.update(env_saved)
    results = []
    with MemoryGuard([p.pid for p in procs], int(args.limit_gib * GiB)) as guard:
        deadline = time.time() + args.timeout
        while len(results) < args.workers and time.time() < deadline and not guard.tripped:
            try:
                results.append(queue.get(timeout=1))
            except Exception:
                if all(not p.is_alive() for p in procs):
                    break
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if guard.tripped:
        print(f"  stage {stage}: killed at {guard.peak_total / GiB:.1f} GiB summed RSS (limit {args.limit_gib} GiB)")
        return [{"stage": stage, "rank": r, "oom": True, "peak": guard.peak_total / args.workers}
                for r in range(args.workers)]
    return sorted(results, key=lambda r: r["rank"])


def formula_bytes(kind: str, stage: int, params: int, workers: int) -> float:
    replicated, partitioned = FORMULAS[kind][stage]
    return params * (replicated + partitioned / workers)


def print_table(args, params: int, records: list[dict]) -> None:
    kind = args.dtype
    print(f"\nsize {args.size} ({params / 1e6:.0f}M params), {args.workers} ranks, {args.dtype}, variant "
          f"{args.variant}, batch {args.batch}x{args.tokens} tokens; GiB per rank (rank 0)")
    cols = ["stage", "formula", "live model states", "live other", "activations", "peak RSS", "peak - base", "build",
            "init", "fwd", "bwd", "step", "step s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in records:
        if r["rank"] != 0:
            continue
        f = formula_bytes(kind, r["stage"], params, args.workers) / GiB
        if r.get("oom"):
            print(f"| {r['stage']} | {f:.2f} | - | - | - | > {r['peak'] / GiB:.1f} (killed) |" + " |" * 7)
            continue
        live = r["live"]
        states = sum(v for k, v in live.items() if k != "other") / GiB
        p = r["peaks"]
        print(f"| {r['stage']} | {f:.2f} | {states:.2f} | {live['other'] / GiB:.2f} | "
              f"{r['activations'] / GiB:.2f} | {r['peak'] / GiB:.2f} | "
              f"{(r['peak'] - r['base_rss']) / GiB:.2f} | " + " | ".join(
                  f"{p[k] / GiB:.2f}" for k in ("build", "initialize", "forward", "backward", "step"))
              + f" | {sum(r['step_s']) / len(r['step_s']):.2f} |")
    print("\nlive tensor bytes after a step (GiB, rank 0): "
          + "; ".join(f"stage {r['stage']}: " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in r["live"].items())
                      for r in records if r["rank"] == 0 and not r.get("oom")))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="S")
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=256, help="encoder and decoder tokens per sample")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", choices=["naive", "tuned"], default="tuned")
    for flag in ("zero-init", "buckets", "malloc", "fused-adam", "cpu-patches"):
        ap.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                        help="override the variant for this one setting")
    ap.add_argument("--limit-gib", type=float, default=12.0, help="kill the run if the ranks' summed RSS passes this")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--show-other", action="store_true", help="print the largest unclaimed tensors (rank 0)")
    ap.add_argument("--json", type=Path, help="also write the per-rank records here")
    args = ap.parse_args(argv)
    tuned = args.variant == "tuned"
    for flag in ("zero_init", "buckets", "malloc", "fused_adam", "cpu_patches"):
        if getattr(args, flag) is None:
            setattr(args, flag, tuned)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    params = param_count(config_of(args, 0))
    check_free_memory(int(args.limit_gib * GiB))
    print(f"{args.size}: {params / 1e6:.1f}M params; settings zero_init={args.zero_init} buckets={args.buckets} "
          f"malloc={args.malloc} fused_adam={args.fused_adam} cpu_patches={args.cpu_patches}", flush=True)
    records = []
    for stage in args.stages:
        records += run_stage(args, stage)
    print_table(args, params, records)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "params": params,
                                         "records": records}, indent=1))
    return records


if __name__ == "__main__":
    main()

"""Training benchmarks on Ray Train + DeepSpeed: scaling efficiency, ZeRO memory per worker, scale, job runs.

    python bench/train.py scaling [--batches 4 16 --size S --steps 12]
    python bench/train.py run     --size B --precision bf16 --gpu [--stage 3 --offload]
    python bench/train.py memory  [--sizes S B --stages 0 1 2 3]
    python bench/train.py scale   [--size L --stages 3 0 --steps 3 --limit-gib 19]

scaling, run: the pretrain job itself (the real model, loader and train loop) against a plain PyTorch loop, and
    single job runs for MFU on a GPU: see bench/pretrain_job.py, which these two commands run.
memory:  per-worker RSS high-water and live model-state bytes for each ZeRO stage, in Ray Train workers, against the
    ZeRO paper's formulas (bench/zero_memory.py holds the measurement and the settings).
scale:   the L size (~0.7B params) under ZeRO-3 on N workers within this machine, and stage 0 for contrast; a
    worker passing its share of --limit-gib (summed over workers) kills itself so the shared machine never OOMs.

memory and scale train the job's model (`pipeline/model`, sizes from its registry, the S recipe's modalities) with
the job's DeepSpeed config, driven directly inside TorchTrainer workers (bench/zero_memory.py's `measure`). Their
memory settings (`--variant tuned`, the default) set glibc malloc env vars in the driver before Ray starts so every
Ray worker inherits them; they cost ~15% CPU time (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import zero_memory  # noqa: E402
from bench._common import GiB, SelfRssLimit, check_free_memory, param_count  # noqa: E402


# ---------------------------------------------------------------- Ray Train workers


def ray_memory_loop(config: dict) -> None:
    """Ray Train worker: bench/zero_memory.py's measurement for one stage, written to a per-rank file."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    import ray.train

    import deepspeed

    args, stage = config["args"], config["stage"]
    rank = ray.train.get_context().get_world_rank()
    deepspeed.init_distributed(dist_backend="gloo")  # on Ray Train's process group; the CPU patches need it
    SelfRssLimit(int(args.limit_gib * GiB / args.workers), marker=str(Path(config["out"], f"oom{rank}")))
    record = zero_memory.measure(args, stage, rank)
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(record))


def run_ray(loop, args, extra: dict) -> list[dict | list]:
    """One TorchTrainer run of `loop` on N gloo workers with 1 CPU each; returns each rank's file (or an OOM mark)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = tempfile.mkdtemp(prefix="tessera-bench-train-")
    trainer = TorchTrainer(
        loop,
        train_loop_config={"args": args, "out": out, **extra},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(storage_path=out, name="bench", failure_config=FailureConfig(max_failures=0)),
    )
    try:
        trainer.fit()
    except Exception as exc:  # a worker that killed itself over the memory limit fails the run
        ooms = [int(Path(out, f"oom{r}").read_text()) for r in range(args.workers) if Path(out, f"oom{r}").exists()]
        if not ooms:
            raise
        print(f"  killed over the memory limit ({type(exc).__name__}): worker RSS {max(ooms) / GiB:.2f} GiB")
        return [{"oom": True, "peak": max(ooms), "rank": r, "stage": extra.get("stage")} for r in range(args.workers)]
    return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.workers)]


def start_ray(args) -> None:
    from cluster.connect import connect

    if args.malloc:  # inherited by the raylet and so by every worker it starts
        os.environ.update(zero_memory.TUNED_ENV)
    os.environ["DS_ACCELERATOR"] = "cpu"
    connect(None, num_cpus=args.workers)


# ---------------------------------------------------------------- subcommands

def cmd_memory(args) -> None:
    start_ray(args)
    rows = []
    for size in args.sizes:
        args.size = size
        params = param_count(zero_memory.config_of(args, 0))
        for stage in args.stages:
            print(f"memory: {size} ZeRO-{stage}", flush=True)
            records = run_ray(ray_memory_loop, args, {"stage": stage})
            rows.append((size, params, records))
            if args.json:
                args.json.write_text(json.dumps([[s, p, r] for s, p, r in rows], indent=1))
    print_memory_table(args, rows)


def print_memory_table(args, rows) -> None:
    print(f"\nper-worker GiB ({args.workers} Ray Train workers, {args.dtype}, batch {args.batch}x({args.tokens}+"
          f"{args.tokens}), variant {args.variant}); formula = model states only")
    print("| size | params | stage | formula (fp32 DeepSpeed) | paper | live model states | activations | "
          "other live | peak RSS | peak RSS - process base | step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, params, records in rows:
        r = max(records, key=lambda rec: rec["peak"])
        stage = r["stage"]
        f = zero_memory.formula_bytes(args.dtype, stage, params, args.workers) / GiB
        paper = zero_memory.formula_bytes("paper", stage, params, args.workers) / GiB
        if r.get("oom"):
            print(f"| {size} | {params / 1e6:.0f}M | {stage} | {f:.2f} | {paper:.2f} | - | "
                  f"- | - | > {r['peak'] / GiB:.2f} (killed at limit) | - | - |")
            continue
        states = sum(v for k, v in r["live"].items() if k != "other") / GiB
        step = sum(r["step_s"]) / len(r["step_s"])
        print(f"| {size} | {params / 1e6:.0f}M | {stage} | {f:.2f} | {paper:.2f} | {states:.2f} | "
              f"{r['activations'] / GiB:.2f} | {r['live']['other'] / GiB:.2f} | {r['peak'] / GiB:.2f} | "
              f"{(r['peak'] - r['base_rss']) / GiB:.2f} | {step:.1f} |")


def cmd_scale(args) -> None:
    params = param_count(zero_memory.config_of(args, 0))
    # Expected use of the ZeRO-3 run: its model states by formula plus ~1.5 GiB per worker (process base,
    # activations, buckets); the per-worker limit stops the stage-0 run before it takes the machine.
    expected = zero_memory.formula_bytes(args.dtype, 3, params, args.workers) * args.workers + 1.5 * GiB * args.workers
    check_free_memory(int(expected))
    start_ray(args)
    rows = []
    for stage in args.stages:
        print(f"scale: {args.size} ({params / 1e6:.0f}M) ZeRO-{stage}, per-worker limit "
              f"{args.limit_gib / args.workers:.1f} GiB", flush=True)
        rows.append((args.size, params, run_ray(ray_memory_loop, args, {"stage": stage})))
        if args.json:
            args.json.write_text(json.dumps([[s, p, r] for s, p, r in rows], indent=1))
    print_memory_table(args, rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["memory", "scale"])
    ap.add_argument("--size", default=None)
    ap.add_argument("--sizes", nargs="+", default=["S", "B"])
    ap.add_argument("--stages", type=int, nargs="+", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=256, help="encoder and decoder tokens per sample")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--variant", choices=["naive", "tuned"], default="tuned")
    ap.add_argument("--limit-gib", type=float, default=None, help="summed RSS limit over the workers")
    ap.add_argument("--malloc", action=argparse.BooleanOptionalAction, default=None,
                    help="override the variant's glibc malloc env (it costs CPU time: see BENCHMARKS.md)")
    ap.add_argument("--show-other", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    defaults = {  # per command: size, batch, steps, stages, limit
        "memory": ("S", 1, 3, [0, 1, 2, 3], 14.0),
        "scale": ("L", 1, 3, [3, 0], 19.0),
    }[args.command]
    for name, value in zip(("size", "batch", "steps", "stages", "limit_gib"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    tuned = args.variant == "tuned"
    for flag in ("zero_init", "buckets", "malloc", "fused_adam", "cpu_patches"):
        if getattr(args, flag, None) is None:
            setattr(args, flag, tuned)
    return args


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("scaling", "run"):
        from bench import pretrain_job

        return pretrain_job.main(argv)
    args = parse_args(argv)
    {"memory": cmd_memory, "scale": cmd_scale}[args.command](args)


if __name__ == "__main__":
    main()

"""One ZeRO engine's step split into forward, backward and optimizer step, on N gloo processes without Ray.

    python bench/zero_step.py [--size S] [--batch 4] [--stage 2] [--steps 5] [--ranks 2] [--all-gather gloo|broadcast]
    python bench/zero_step.py --plain        # one process, torch AdamW and clipping, no DeepSpeed: the baseline
    python bench/zero_step.py --zero use_multi_rank_bucket_allreduce=false   # a DeepSpeed setting against the job's

The job's own model, loader and DeepSpeed config (`pipeline/train/deepspeed_config.py`) on synthetic token shards of
the S recipe's modalities, fp32, 1 thread per rank. `--all-gather broadcast` installs the job's broadcast all-gather
(`pipeline/train/gloo_collectives.py`), `gloo` keeps gloo's own; `--grad-norm fp32` the job's float32 gradient norm
(`pipeline/train/grad_norm.py`), `fp64` DeepSpeed's: the A/Bs of BENCHMARKS.md. Means over the steps
after the first two; rank 0's per-step losses are printed so two variants can be compared number for number.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pretrain_job import MODALITIES  # noqa: E402


def _config(args, data: str):
    from schemas.loading import LoaderConfig, MaskingConfig
    from schemas.model import ModelConfig
    from schemas.pretrain import OptimConfig, PretrainConfig, ZeroConfig

    return PretrainConfig(
        name="zero-step", data=data, storage_path=str(Path(data).parent / "runs"), modalities=MODALITIES,
        workers=args.ranks, cpus_per_worker=1, use_gpu=False, steps=args.steps, model=ModelConfig(size=args.size),
        masking=MaskingConfig(input_tokens=256, target_tokens=256),
        loader=LoaderConfig(batch_size=args.batch, shuffle_buffer=256), optim=OptimConfig(lr=1e-4, warmup_steps=2),
        zero=ZeroConfig(stage=args.stage))


def _rank(rank: int, args, data: str, port: int, results) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(args.ranks), LOCAL_RANK=str(rank))
    import torch

    from pipeline.data.loader import TokenShardLoader, to_torch
    from pipeline.data.token_shards import modality_table_from_output
    from pipeline.model import build_model

    torch.set_num_threads(1)
    config = _config(args, data)
    table = modality_table_from_output(data, config.modalities)
    torch.manual_seed(config.seed)
    model = build_model(config.model, table)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, fused=config.optim.fused)
    engine = None
    if not args.plain:
        import deepspeed

        from pipeline.train.deepspeed_config import deepspeed_config
        from pipeline.train.gloo_collectives import install_broadcast_all_gather
        from pipeline.train.grad_norm import install_fp32_grad_norm

        deepspeed.init_distributed(dist_backend="gloo")
        if args.all_gather == "broadcast":
            install_broadcast_all_gather()
        if args.grad_norm == "fp32":
            install_fp32_grad_norm()
        ds_config = deepspeed_config(config)
        for override in args.zero:  # e.g. use_multi_rank_bucket_allreduce=false
            key, value = override.split("=", 1)
            ds_config["zero_optimization"][key] = json.loads(value)
        engine, optimizer, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    world = 1 if args.plain else args.ranks
    batches = iter(TokenShardLoader(data, table, config.masking, config.loader, rank, world))
    phases = []
    for step in range(args.steps):
        batch = to_torch(next(batches))
        started = time.perf_counter()
        out = (engine or model)(batch)
        forward = time.perf_counter()
        if engine is None:
            out.loss.backward()
        else:
            engine.backward(out.loss)
        backward = time.perf_counter()
        if engine is None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            engine.step()
        done = time.perf_counter()
        phases.append((forward - started, backward - forward, done - backward, done - started))
        if rank == 0:
            print(f"  step {step}: forward {phases[-1][0]:.2f} s, backward {phases[-1][1]:.2f} s, "
                  f"step {phases[-1][2]:.2f} s, loss {out.loss.item():.4f}", flush=True)
    if rank == 0:
        timed = phases[2:] or phases
        results.put([sum(p[i] for p in timed) / len(timed) for i in range(4)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--all-gather", choices=["gloo", "broadcast"], default="broadcast")
    parser.add_argument("--grad-norm", choices=["fp64", "fp32"], default="fp32",
                        help="fp32: the job's (pipeline/train/grad_norm.py); fp64: DeepSpeed's own on CPU")
    parser.add_argument("--plain", action="store_true", help="one process, no DeepSpeed")
    parser.add_argument("--zero", action="append", default=[], metavar="KEY=JSON",
                        help="override a zero_optimization key of the job's DeepSpeed config (repeatable)")
    args = parser.parse_args(argv)
    from bench.loader import write_synthetic_output

    with tempfile.TemporaryDirectory(prefix="tessera-zero-step-") as tmp:
        data = str(Path(tmp, "tokens"))
        write_synthetic_output(Path(data), 1024, 128)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        context = mp.get_context("spawn")
        results = context.Queue()
        ranks = 1 if args.plain else args.ranks
        processes = [context.Process(target=_rank, args=(r, args, data, port, results)) for r in range(ranks)]
        for process in processes:
            process.start()
        forward, backward, step, total = results.get()
        for process in processes:
            process.join()
    setting = "plain, 1 process" if args.plain else (f"ZeRO-{args.stage}, {ranks} ranks, {args.all_gather} all-gather, "
                                                     f"{args.grad_norm} grad norm")
    print(f"{args.size} batch {args.batch}, {setting}: forward {forward:.2f} s, backward {backward:.2f} s, "
          f"step {step:.2f} s, total {total:.2f} s")


if __name__ == "__main__":
    main()

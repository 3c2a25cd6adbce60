"""Gloo's all-gather against one broadcast per rank, on N local processes (what DeepSpeed's all-gather costs on CPU).

    python bench/gloo_collectives.py [--megabytes 160] [--ranks 2] [--repeats 3]

Times, per call, `all_gather_into_tensor` (what DeepSpeed calls), the list `all_gather`, and the broadcast version
that `pipeline/train/gloo_collectives.py` installs into DeepSpeed on 2-rank gloo groups; checks that all three give
the same bytes. `--megabytes` is each rank's partition.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rank(rank: int, args: argparse.Namespace, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from pipeline.train.gloo_collectives import broadcast_all_gather_into_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    numel = int(args.megabytes * 1e6 / 4)
    part = torch.randn(numel, generator=torch.Generator().manual_seed(rank))
    outputs = {}
    ways = {
        "all_gather_into_tensor (gloo)": lambda out: dist.all_gather_into_tensor(out, part),
        "all_gather, list (gloo)": lambda out: dist.all_gather(list(out.chunk(args.ranks)), part),
        "one broadcast per rank": lambda out: broadcast_all_gather_into_tensor(out, part),
    }
    timings = {}
    for name, gather in ways.items():
        out = torch.empty(numel * args.ranks)
        dist.barrier()
        started = time.perf_counter()
        for _ in range(args.repeats):
            gather(out)
        timings[name] = (time.perf_counter() - started) / args.repeats
        outputs[name] = out
    reference = outputs["all_gather_into_tensor (gloo)"]
    same = all(torch.equal(out, reference) for out in outputs.values())
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        results.put((timings, same))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=160.0)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_rank, args=(r, args, port, results)) for r in range(args.ranks)]
    for process in processes:
        process.start()
    timings, same = results.get()
    for process in processes:
        process.join()
    base = timings["all_gather_into_tensor (gloo)"]
    print(f"{args.ranks} ranks, {args.megabytes:.0f} MB per rank, mean of {args.repeats}; identical bytes: {same}")
    print("| all-gather | s per call | GB/s gathered per rank | vs all_gather_into_tensor |")
    print("|---|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.3f} | {args.megabytes * (args.ranks - 1) / 1e3 / seconds:.2f} | "
              f"{base / seconds:.2f}x |")


if __name__ == "__main__":
    main()

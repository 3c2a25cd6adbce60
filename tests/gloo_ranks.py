"""Run a function on N real processes of this machine that share one gloo rendezvous, and collect their results."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(target: Callable, rank: int, world: int, port: int, results, args: tuple) -> None:
    # The env:// rendezvous that both torch.distributed and deepspeed.init_distributed read; DeepSpeed on its CPU path.
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    results.put((rank, target(rank, world, *args)))


def run_on_ranks(target: Callable, world: int, *args, timeout: float = 300) -> dict[int, object]:
    """`target(rank, world, *args)` in `world` spawned processes; returns rank -> what it returned. A module-level
    function, since spawned processes import it by name."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(target, r, world, port, results, args))
                 for r in range(world)]
    for process in processes:
        process.start()
    outcome = dict(results.get(timeout=timeout) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return outcome

"""Start a job's Ray worker processes, with the job's stage modules imported, before its pipeline needs them.

A job's tasks run in worker processes of its own, which Ray spawns when the first tasks arrive: a Python interpreter
importing Ray, then the modules the task's function needs. On the 2-core box that is ~1.7 s for the processes and
~0.7 s for the stage imports, all of it after the pipeline has started and in front of its first units (BENCHMARKS.md,
"Preprocess throughput"). Asked for right after the driver connects, the same work overlaps with the driver's own
start-up (its imports, config, listing the input), and the pipeline's tasks then land on warm, idle workers: Ray
reuses an idle worker of the same job and runtime environment for any later task.

Best effort: nothing waits on these tasks, and one that fails (a node gone, say) only leaves a cold worker.
"""

from __future__ import annotations

import importlib

import ray


@ray.remote(num_cpus=1, max_retries=0)
def _import(modules: tuple[str, ...]) -> None:
    for module in modules:
        importlib.import_module(module)


def prestart_workers(modules: tuple[str, ...], count: int | None = None) -> list[ray.ObjectRef]:
    """Submit one import task per CPU of the cluster (or `count`) and return at once; the refs are only for
    callers that want to wait (tests)."""
    if count is None:
        count = int(ray.cluster_resources().get("CPU", 0))
    return [_import.remote(modules) for _ in range(count)]

"""Worker prestart (cluster/prestart.py) on the local 3-node test cluster: one import task per CPU, each importing
what the preprocess job names for its stages; a module that does not exist fails the task, not the caller."""

from __future__ import annotations

import importlib

import pytest
import ray

from cluster.prestart import prestart_workers
from jobs.preprocess import WORKER_MODULES

pytestmark = pytest.mark.usefixtures("ray_session")


def test_one_import_task_per_cpu_runs_the_stage_imports():
    refs = prestart_workers(WORKER_MODULES["label"])
    assert len(refs) == int(ray.cluster_resources()["CPU"])
    assert ray.get(refs, timeout=120) == [None] * len(refs)


def test_every_named_worker_module_exists():
    for modules in WORKER_MODULES.values():
        for module in modules:
            importlib.import_module(module)  # a renamed module would leave the job's workers cold, silently


def test_a_missing_module_fails_in_the_task_without_raising_at_submission():
    (ref,) = prestart_workers(("pipeline.data.no_such_stage",), count=1)
    with pytest.raises(ray.exceptions.RayTaskError, match="no_such_stage"):
        ray.get(ref, timeout=120)

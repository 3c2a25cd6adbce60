"""The evaluate fan-out on the session's real local Ray cluster: tasks overlap in time, a failing task is reported
with its traceback while the others finish, the exit code says so, and the results files read back."""

from __future__ import annotations

import sys
import time

import pyarrow.parquet as pq
import pytest
import ray

from jobs import evaluate as evaluate_job
from pipeline.eval.registry import HeadKind, Metric, Score, register_task, unregister_task
from pipeline.eval.report import markdown_table
from schemas.evaluate import TaskResources

pytestmark = pytest.mark.cluster

SLEEP_S = 2.0


def _sleepy(ctx) -> list[Score]:
    # Long enough that two tasks submitted together overlap if (and only if) they run side by side.
    time.sleep(SLEEP_S)
    return [Score("seconds_slept", SLEEP_S, 0.0)]


def _deliberately_failing(ctx) -> list[Score]:
    raise ValueError("deliberate failure for the test")


def _assigned_cpus(ctx) -> list[Score]:
    return [Score("seconds_slept", ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0), 0.0)]


TEST_TASKS = {
    "test_sleepy_a": _sleepy,
    "test_sleepy_b": _sleepy,
    "test_failing": _deliberately_failing,
    "test_resources": _assigned_cpus,
}


@pytest.fixture(scope="module")
def test_tasks():
    # Workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for name, function in TEST_TASKS.items():
        register_task(name=name, inputs=(), target="none", head=HeadKind.NONE, data=None,
                      metrics=(Metric("seconds_slept", higher_is_better=True),), baseline="zero",
                      evaluate=function, resources=TaskResources(num_cpus=1), needs_model=False, replace=True)
    yield list(TEST_TASKS)
    for name in TEST_TASKS:
        unregister_task(name)
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _run(address: str, tasks: str, out, checkpoints: str | None = None, overrides: tuple[str, ...] = ()) -> int:
    argv = ["--tasks", tasks, "--out", str(out), "--address", address]
    argv += [arg for override in overrides for arg in ("--set", override)]
    return evaluate_job.main(argv + (["--checkpoint", checkpoints] if checkpoints else []))


def test_tasks_overlap_and_a_failure_is_reported(ray_session, test_tasks, tmp_path, capsys):
    address = ray.get_runtime_context().gcs_address
    code = _run(address, "test_sleepy_a,test_sleepy_b,test_failing,test_resources", tmp_path,
                overrides=("resources.test_resources.num_cpus=0.5",))
    assert code == 1  # one task failed

    rows = pq.read_table(tmp_path / "results.parquet").to_pylist()
    by_task = {row["task"]: row for row in rows}
    assert set(by_task) == set(TEST_TASKS)
    assert by_task["test_resources"]["value"] == pytest.approx(0.5)  # the config's per-task resources reached Ray
    a, b = by_task["test_sleepy_a"], by_task["test_sleepy_b"]
    assert a["status"] == b["status"] == "ok" and a["value"] == pytest.approx(SLEEP_S)
    # The two sleepy tasks ran at the same time: each started before the other finished.
    assert a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
    assert min(a["seconds"], b["seconds"]) >= SLEEP_S

    failed = by_task["test_failing"]
    assert failed["status"] == "failed"
    assert "ValueError: deliberate failure for the test" in failed["error"]
    assert "_deliberately_failing" in failed["traceback"]

    table = (tmp_path / "results.md").read_text()
    assert "| test_sleepy_a | seconds_slept | 2 |" in table and "### test_failing failed" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "curves.png").exists()  # one checkpoint: no curves
    assert "test_failing" in capsys.readouterr().out


def test_several_checkpoints_give_curves_and_exit_zero(ray_session, test_tasks, tmp_path):
    address = ray.get_runtime_context().gcs_address
    code = _run(address, "test_sleepy_a", tmp_path, checkpoints="run/step-000010,run/step-000020")
    assert code == 0
    rows = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert sorted((row["step"], row["status"]) for row in rows) == [(10, "ok"), (20, "ok")]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert markdown_table(rows).count("test_sleepy_a") == 2


def test_unknown_task_is_a_config_error(tmp_path):
    from schemas.config import ConfigError

    with pytest.raises(ConfigError, match="unknown eval task 'no_such_task'"):
        evaluate_job.main(["--tasks", "no_such_task", "--out", str(tmp_path)])
    # Built-in tasks score a checkpoint on token shards: without them the job stops before scheduling anything.
    with pytest.raises(ConfigError, match=r"give --checkpoint.*give --data"):
        evaluate_job.main(["--tasks", "object_count", "--out", str(tmp_path)])
    assert not (tmp_path / "results.parquet").exists()

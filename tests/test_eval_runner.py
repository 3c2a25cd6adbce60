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


def test_curves_plot_each_run_against_its_tokens_and_flops(tmp_path):
    """Two runs checkpointed at the same steps but seeing different tokens and FLOPs per step (sizes and batches
    differ): each is its own line, at the tokens and FLOPs its metrics rows give (interpolated between log steps)."""
    from pipeline.data.storage import Storage
    from pipeline.eval.report import CURVES_FLOPS_PNG, CURVES_PNG, curve_series, write_results
    from pipeline.eval.runner import checkpoint_progress, with_progress
    from pipeline.train.metrics import METRICS, RunMetrics, read_metrics
    from schemas.common import StorageConfig

    per_step = {"small": (100.0, 1e9), "big": (400.0, 1e11)}  # tokens, FLOPs per step
    for run, (tokens, flops) in per_step.items():
        metrics = RunMetrics(Storage(str(tmp_path / run), StorageConfig()))
        for step in (2, 4):  # log_every 2
            metrics.log({"step": step, "loss": 1.0, "tokens_seen": tokens * step, "flops_seen": flops * step})
        metrics.flush()
    def run_metrics(run: str) -> list[dict]:  # what jobs/evaluate.py passes
        return read_metrics(f"{run}/{METRICS}")

    rows = with_progress([
        {"checkpoint": str(tmp_path / run / f"step-{step:06d}"), "step": step, "task": "t", "metric": "accuracy",
         "value": value, "baseline": 0.25, "higher_is_better": True, "head": "none", "baseline_kind": "chance",
         "status": "ok", "seconds": 1.0} for run in per_step for step, value in ((3, 0.5), (4, 0.7))], run_metrics)
    assert checkpoint_progress(str(tmp_path / "small" / "step-000006"), run_metrics).tokens_seen is None  # past it
    assert checkpoint_progress(None, run_metrics).run == ""
    assert checkpoint_progress(str(tmp_path / "elsewhere" / "x.safetensors"), run_metrics).tokens_seen is None

    label, series = curve_series(rows)
    assert label == "tokens seen"
    assert series == {("t", "accuracy"): {"small": [(300.0, 0.5, 0.25), (400.0, 0.7, 0.25)],
                                          "big": [(1200.0, 0.5, 0.25), (1600.0, 0.7, 0.25)]}}
    assert curve_series(rows, "flops_seen")[1][("t", "accuracy")]["big"][0][0] == pytest.approx(3e11)

    written = write_results(rows, Storage(str(tmp_path / "out"), StorageConfig()))
    assert {CURVES_PNG, CURVES_FLOPS_PNG} <= {uri.rsplit("/", 1)[1] for uri in written}
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert sorted((r["run"], r["tokens_seen"]) for r in table) == [
        ("big", 1200.0), ("big", 1600.0), ("small", 300.0), ("small", 400.0)]
    # Without tokens for every checkpoint the charts fall back to the step, and no FLOPs chart is written.
    rows[0]["tokens_seen"] = rows[0]["flops_seen"] = None
    assert curve_series(rows)[0] == "step"
    written = write_results(rows, Storage(str(tmp_path / "fallback"), StorageConfig()))
    assert CURVES_FLOPS_PNG not in {uri.rsplit("/", 1)[1] for uri in written}


def test_an_empty_fit_or_score_set_is_one_line_naming_the_task_and_what_to_do():
    import pipeline.eval.tasks  # noqa: F401 (registers the tasks)
    from pipeline.eval.context import EvalSample, TaskContext
    from pipeline.eval.registry import get_task
    from schemas.evaluate import EvaluateConfig, ProbeConfig
    from schemas.keys import in_holdout

    context = TaskContext(get_task("object_count"), None, EvaluateConfig(probe=ProbeConfig(test_fraction=0.3)))
    key = "sample_000000"
    context.__dict__["samples"] = [EvalSample(key, {})]  # one sample: it lands in one set, the other is empty
    empty = "fit" if in_holdout(key, 0.3) else "score"
    with pytest.raises(ValueError) as refused:
        context.fit_and_score()
    message = str(refused.value)
    assert "\n" not in message and message.startswith(
        f"task 'object_count': the {empty} set of its split (tok_rgb, annotations) is empty: 1 samples read")
    assert "probe.test_fraction=0.3" in message and "more samples" in message
    context.__dict__["samples"] = []
    with pytest.raises(ValueError, match=r"the fit and score set of its split .*: 0 samples read"):
        context.fit_and_score()

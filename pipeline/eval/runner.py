"""Fan-out: every (checkpoint, task) pair is one Ray task with the task's own resources; rows gathered as they end.

A task that raises is caught on its worker and comes back as a `failed` row carrying the error and traceback; a
task whose worker dies is run once more, and if that one dies too, comes back the same way from the driver. Either
way the other tasks keep running, and the caller decides the exit code from the rows (`any_failed`).
"""

from __future__ import annotations

import math
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import ray

from pipeline.eval.registry import DataUnmet, Task
from schemas.evaluate import EvaluateConfig
from schemas.common import StorageConfig


def checkpoint_step(uri: str | None, storage: StorageConfig | None = None) -> int | None:
    """Training step of a checkpoint, from the sidecar when the export records it, else the last number in its
    final path component (`.../step-000200` -> 200); None when neither says."""
    if uri is None:
        return None
    from pipeline.eval.checkpoint import read_step

    return read_step(uri, storage)


@dataclass(frozen=True)
class CheckpointProgress:
    """Where a checkpoint stands in its run: what charts put on the x axis, so that checkpoints of different sizes
    at the same step do not fall on one line."""

    run: str  # the run's directory name ("" for no checkpoint)
    tokens_seen: float | None  # cumulative over all ranks at the checkpoint's step; None when the run does not say
    flops_seen: float | None


def checkpoint_progress(uri: str | None, run_metrics: Callable[[str], Sequence[dict]],
                        storage: StorageConfig | None = None) -> CheckpointProgress:
    """The run of a checkpoint and its cumulative tokens and FLOPs at the checkpoint's step.

    A pretrain checkpoint is a directory in its run directory (`RUN_DIR/checkpoint_000004`, Ray Train's layout),
    an export a `.safetensors` file in some directory; either way `run_metrics(parent)` gives the run's metrics rows
    (the pretrain job's reader, `pipeline.train.metrics`, which this layer does not import: the caller passes it;
    no rows where the parent is no run directory). The rows carry `tokens_seen` / `flops_seen` at log steps; a
    checkpoint between two log steps gets the linear interpolation (both grow by about the same amount every
    step), one past the last logged row gets None.
    """
    if uri is None:
        return CheckpointProgress("", None, None)
    run_dir = uri.rstrip("/").rpartition("/")[0] or "."
    rows = run_metrics(run_dir)
    step = checkpoint_step(uri, storage)
    return CheckpointProgress(run_dir.rpartition("/")[2],
                              *(_cumulative_at(rows, column, step) for column in ("tokens_seen", "flops_seen")))


def with_progress(rows: Sequence[dict], run_metrics: Callable[[str], Sequence[dict]],
                  storage: StorageConfig | None = None) -> list[dict]:
    """Result rows with their checkpoint's `run`, `tokens_seen` and `flops_seen` (read once per checkpoint)."""
    checkpoints = {row["checkpoint"] or None for row in rows}
    progress = {c: asdict(checkpoint_progress(c, run_metrics, storage)) for c in checkpoints}
    return [{**row, **progress[row["checkpoint"] or None]} for row in rows]


def _cumulative_at(rows: Sequence[dict], column: str, step: int | None) -> float | None:
    # A resumed run repeats the steps after its checkpoint: the later row of a step is the one that counts.
    logged = {int(row["step"]): float(row[column]) for row in rows if row.get(column) is not None}
    if step is None or not logged or step > max(logged):
        return None
    steps = sorted(logged)
    return float(np.interp(step, [0, *steps], [0.0, *(logged[s] for s in steps)]))


def _node() -> str:
    """The Ray node that ran the task (host names repeat on a local multi-node cluster; node ids do not)."""
    try:
        return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"
    except Exception:  # not inside Ray (a task evaluated in-process)
        return socket.gethostname()


def _row(task: Task, checkpoint: str | None, step: int | None, started: float, **fields) -> dict:
    finished = time.time()
    row = {"checkpoint": checkpoint or "", "step": step, "task": task.name, "head": task.head.value,
           "baseline_kind": task.baseline, "started_at": started, "finished_at": finished,
           "seconds": finished - started, "node": _node(), "error": None, "traceback": None}
    row.update(fields)
    return row


def evaluate_task(task: Task, checkpoint: str | None, config: EvaluateConfig) -> list[dict]:
    """Run one task in this process: one `ok` row per metric, or one `failed` row with the traceback."""
    from pipeline.eval.context import TaskContext

    started = time.time()
    step = None
    try:
        step = checkpoint_step(checkpoint, config.storage)
        scores = task.evaluate(TaskContext(task, checkpoint, config))
        declared = {m.name for m in task.metrics}
        returned = [s.metric for s in scores]
        if sorted(returned) != sorted(declared):
            raise RuntimeError(f"task {task.name!r} returned metrics {returned}, declared {sorted(declared)}")
        rows = []
        for score in scores:
            rows.append(_row(task, checkpoint, step, started, metric=score.metric, value=float(score.value),
                             baseline=float(score.baseline), status="ok",
                             higher_is_better=task.metric(score.metric).higher_is_better))
        return rows
    except Exception as exc:  # any failure of the task is its result, never the job's crash
        if isinstance(exc, DataUnmet) and config.tasks == ("all",):  # what `all` skips, as drop_unmet does
            return [skipped_row(task, checkpoint, [str(exc)])]
        return [failed_row(task, checkpoint, step, started, f"{type(exc).__name__}: {exc}", traceback.format_exc())]


def failed_row(task: Task, checkpoint: str | None, step: int | None, started: float, error: str,
               trace: str) -> dict:
    return _row(task, checkpoint, step, started, metric=task.metrics[0].name, value=math.nan, baseline=math.nan,
                status="failed", higher_is_better=task.metrics[0].higher_is_better, error=error, traceback=trace)


# A task's own errors are caught inside it (a `failed` row, never retried); max_retries only reruns a task whose
# worker process died (killed, OOM, node lost), once: a second death is reported as the task's failed row.
_evaluate_remote = ray.remote(max_retries=1)(evaluate_task)


def run_evaluation(config: EvaluateConfig, tasks: Sequence[Task], checkpoints: Sequence[str | None],
                   progress: Callable[[str], None] = print) -> list[dict]:
    """Submit every (checkpoint, task) at once; Ray runs as many side by side as the cluster's resources allow."""
    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (cluster.connect.connect)")
    pending = {}
    for checkpoint in checkpoints or [None]:
        for task in tasks:
            resources = config.resources_of(task.name, task.resources)
            # "DEFAULT": the task asks the cluster for its own resources, even when the caller runs inside a
            # placement group that would capture it (a study's Tune trial, whose group holds no CPU).
            ref = _evaluate_remote.options(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                           name=f"eval:{task.name}", scheduling_strategy="DEFAULT",
                                           ).remote(task, checkpoint, config)
            pending[ref] = (task, checkpoint, time.time())
    total, rows = len(pending), []
    progress(f"evaluate: {total} task runs submitted ({len(tasks)} tasks x {len(checkpoints or [None])} checkpoints)")
    waiting = list(pending)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        for ref in done:
            task, checkpoint, submitted = pending[ref]
            try:
                task_rows = ray.get(ref)
            except Exception as exc:  # the worker itself died (OOM kill, lost node): still one row for the task
                task_rows = [failed_row(task, checkpoint, None, submitted, f"{type(exc).__name__}: {exc}",
                                        traceback.format_exc())]
            rows.extend(task_rows)
            status = task_rows[0]["status"]
            detail = ", ".join(f"{r['metric']}={r['value']:.4g} (baseline {r['baseline']:.4g})"
                               for r in task_rows if r["status"] == "ok") or task_rows[0]["error"]
            progress(f"[{total - len(waiting)}/{total}] {task.name} @ {checkpoint or '-'}: {status} "
                     f"in {task_rows[0]['seconds']:.1f}s: {detail}")
    return rows


def missing_inputs(config: EvaluateConfig, tasks: Sequence[Task]) -> list[str]:
    """What the selected tasks need that the config lacks, found before anything is scheduled."""
    from pipeline.eval.registry import TokenSplit

    problems = []
    needs_model = sorted(t.name for t in tasks if t.needs_model)
    if needs_model and not config.checkpoints:
        problems.append(f"tasks {needs_model} score a model: give --checkpoint")
    needs_data = sorted(t.name for t in tasks if isinstance(t.data, TokenSplit))
    if needs_data and config.data is None:
        problems.append(f"tasks {needs_data} read token shards: give --data (a preprocess output)")
    return problems


@dataclass(frozen=True)
class RunInventory:
    """What a run offers the tasks, read once per job: the model's modalities, the data's folders, the tokenizers."""

    model_modalities: frozenset[str] | None  # None: no checkpoint given
    data_folders: frozenset[str] | None  # None: no --data given
    tokenizers: frozenset[str]

    @classmethod
    def of(cls, config: EvaluateConfig, checkpoint: str | None) -> RunInventory:
        from pipeline.data.manifest import manifest_folders
        from pipeline.data.storage import Storage
        from pipeline.eval.checkpoint import read_modalities

        return cls(
            frozenset(read_modalities(checkpoint, config.storage)) if checkpoint else None,
            # over several datasets, the union: a task whose folders no one dataset holds fails naming them
            frozenset(folder for path in config.datasets().values()
                      for folder in manifest_folders(Storage(path, config.storage)))
            if config.data is not None else None,
            frozenset(config.tokenizers))


def unmet_requirements(task: Task, run: RunInventory) -> list[str]:
    """What the checkpoint's run, the data or the config lacks for `task`: the reasons `--tasks all` skips it."""
    from pipeline.eval.registry import TokenSplit
    from schemas.shards import token_folder

    reasons = []
    if task.needs_model and run.model_modalities is not None:
        unknown = [m for m in task.modalities if m not in run.model_modalities]
        if unknown:
            reasons.append(f"the model was not trained on {unknown}")
    if isinstance(task.data, TokenSplit) and run.data_folders is not None:
        wanted = [token_folder(m) for m in task.data.modalities] + list(task.data.aux)
        absent = [f for f in wanted if f not in run.data_folders]
        if absent:
            reasons.append(f"the data has no {absent} folders")
    untold = [m for m in task.tokenizers if m not in run.tokenizers]
    if untold:
        reasons.append(f"no tokenizer given for {untold} (tokenizers.<modality>)")
    return reasons


def drop_unmet(config: EvaluateConfig, tasks: Sequence[Task],
               progress: Callable[[str], None] = print) -> tuple[list[Task], list[dict]]:
    """(the tasks the run can be scored on, a `skipped` row per checkpoint for each of the others)."""
    checkpoints = list(config.checkpoints) or [None]
    run = RunInventory.of(config, checkpoints[0])
    runnable, skipped = [], []
    for task in tasks:
        reasons = unmet_requirements(task, run)
        if reasons:
            skipped += [skipped_row(task, checkpoint, reasons) for checkpoint in checkpoints]
            progress(f"skipping {task.name}: {'; '.join(reasons)}")
        else:
            runnable.append(task)
    return runnable, skipped


def skipped_row(task: Task, checkpoint: str | None, reasons: Sequence[str]) -> dict:
    return _row(task, checkpoint, None, time.time(), metric=task.metrics[0].name, value=math.nan, baseline=math.nan,
                status="skipped", higher_is_better=task.metrics[0].higher_is_better, error="; ".join(reasons))


def any_failed(rows: Sequence[dict]) -> bool:
    """Skipped rows (tasks `all` left out for what the run lacks) are not failures."""
    return any(row["status"] == "failed" for row in rows)

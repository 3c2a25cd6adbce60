"""Run a study on the connected Ray cluster: Ray Tune schedules the runs, each trial is one pretrain run.

Each Tune trial is a driver (Ray Train V2's pattern for Train inside Tune): it calls `run_pretrain`, whose
TorchTrainer places the run's workers, then evaluates the final checkpoint if the spec asks. A trial reserves no
CPU itself; `max_concurrent_trials` keeps as many runs in flight as the cluster holds, so that no run's workers
wait on another's. The experiment lives in the study folder, so a rerun restores it (`Tuner.restore`): finished
runs are skipped, runs in flight when the driver died start again and `run_pretrain` resumes each from its latest
checkpoint (same run name, same directory), and failed runs are retried. Tune retries a failing run
`resources.retries` times; after that the run is recorded as failed with its error.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from pipeline.data.storage import Storage, arrow_filesystem
from pipeline.study.plan import PlannedRun, concurrency, family, plan_study, run_config, trial_seconds
from pipeline.study.records import (RUNS, TUNE, claim_folder, error_line, finish_attempt, mark_failed, read_record,
                                    start_attempt)
from pipeline.study.results import latest_loss, results_table, run_metrics, write_results
from schemas.study import RunRecord, StudySpec

# Tune will not schedule a trial that asks for nothing; one byte of the `memory` resource is the smallest real ask
# (a CPU, even a fraction of one, would be taken from the runs' workers).
TRIAL_RESOURCES = {"CPU": 0, "memory": 1}


def run_trial(config: dict, *, spec: StudySpec, study_root: str) -> None:
    """One Tune trial: train (or resume) the run `config["run"]`, and the WSD cooldowns that branch off it, each
    evaluated and recorded. A retried trial skips the members already done."""
    from ray import tune

    runs = plan_study(spec)
    study = Storage(study_root, spec.pretrain.storage)
    members = family(runs, config["run"])
    seconds = 0.0
    for run in members:
        record = read_record(study, run.run_id)
        if record is None or record.status != "done":
            trunk = members[0] if run.trunk else None
            seconds += train_and_record(spec, run, study, trunk).seconds
    step, loss = latest_loss(run_metrics(study, members[-1].run_id))
    tune.report({"step": step, "val_loss": loss, "seconds": seconds})


def train_and_record(spec: StudySpec, run: PlannedRun, study: Storage, trunk: PlannedRun | None) -> RunRecord:
    """Train (or resume) one run, from `trunk`'s checkpoint at the run's branch step if it is a cooldown; evaluate
    it; record the attempt and its outcome. An error is recorded, then raised again: Tune decides on a retry."""
    from pipeline.train.trainer import checkpoint_at_step, run_pretrain

    record = start_attempt(study, run.run_id)
    try:
        init_from = None
        if trunk is not None:
            trunk_config = run_config(spec, trunk, storage_path=study.uri(RUNS))
            init_from = checkpoint_at_step(trunk_config, run.branch_step)
        summary = run_pretrain(run_config(spec, run, storage_path=study.uri(RUNS), init_from=init_from))
        evaluation = evaluate_run(spec, run, summary["checkpoint"], study) if spec.evaluation.tasks else {}
    except Exception as exc:
        finish_attempt(study, record, error=f"{type(exc).__name__}: {exc}")
        raise
    return finish_attempt(study, record, evaluation=evaluation)


def evaluate_run(spec: StudySpec, run: PlannedRun, checkpoint: str, study: Storage) -> dict[str, float]:
    """The spec's evaluation tasks on the run's final checkpoint, one column per (task, metric)."""
    import pipeline.eval.tasks  # noqa: F401  (the built-in tasks register themselves on import)
    from pipeline.eval.registry import select_tasks
    from pipeline.eval.runner import run_evaluation
    from pipeline.train.export import export_checkpoint
    from schemas.evaluate import EvaluateConfig

    exported = study.uri(f"{RUNS}/{run.run_id}/export/model.safetensors")
    export_checkpoint(checkpoint, exported, spec.pretrain.storage)
    config = EvaluateConfig(checkpoints=(exported,), tasks=spec.evaluation.tasks, data=spec.data,
                            out=study.uri(f"{RUNS}/{run.run_id}/eval"), tokenizers=spec.evaluation.tokenizers,
                            probe=spec.evaluation.probe, storage=spec.pretrain.storage)
    rows = run_evaluation(config, select_tasks(config.tasks), [exported], progress=lambda _: None)
    failed = [f"{r['task']}: {error_line(r['error'] or '')}" for r in rows if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"evaluation failed: {'; '.join(failed)}")
    return {f"eval_{r['task']}_{r['metric']}": float(r["value"]) for r in rows}


def _progress_callback(total: int, progress: Callable[[str], None]):
    """A Tune callback printing a line when a run starts, finishes (with its latest loss), is retried or fails."""
    from ray import tune

    class StudyProgress(tune.Callback):
        def _counts(self, trials) -> str:
            done = sum(t.status == "TERMINATED" for t in trials)
            return f"[{done}/{total} done, {sum(t.status == 'RUNNING' for t in trials)} running]"

        def on_trial_start(self, iteration, trials, trial, **info):
            progress(f"{self._counts(trials)} started {trial.config['run']}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            loss = result.get("val_loss")
            progress(f"{self._counts(trials)} done {trial.config['run']} in {result.get('seconds', 0):.0f} s: "
                     f"step {result.get('step')}, val_loss {loss:.4f}" if loss is not None else
                     f"{self._counts(trials)} done {trial.config['run']}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            progress(f"{self._counts(trials)} retrying {trial.config['run']} after an error")

        def on_trial_error(self, iteration, trials, trial, **info):
            progress(f"{self._counts(trials)} FAILED {trial.config['run']} (retries spent)")

    return StudyProgress()


def print_line(line: str) -> None:
    """The default progress sink. A function of this module, not `print` itself: Tune pickles its callbacks, and once
    Ray Train has replaced `builtins.print` in a driver (the demo trains before its study) the original `print`
    object no longer pickles by name."""
    print(line, flush=True)


def run_study(spec: StudySpec, storage: Storage, *, cluster_resources: dict[str, float],
              progress: Callable[[str], None] = print_line) -> pd.DataFrame:
    """Run (or resume) every run of the study in `storage` (the study folder) on the spec's data; returns the
    results table, which is also written there. Needs a Ray connection."""
    from ray import tune

    if not spec.data:
        raise ValueError("data: a study trains on token shards; set data in the spec or pass --data URI")
    claim_folder(storage, spec)
    runs = plan_study(spec)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec, study_root=storage.uri()),
                                    TRIAL_RESOURCES)
    # Tune reaches s3:// through pyarrow, with the study's endpoint and credentials and a path without the scheme.
    filesystem = arrow_filesystem(spec.pretrain.storage) if storage.is_remote else None
    root = storage.root.partition("://")[2] if filesystem is not None else storage.root
    experiment = f"{root}/{TUNE}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        progress(f"resuming the study in {storage.uri()}: finished runs are kept, the others resume or restart")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=True, storage_filesystem=filesystem)
    else:
        slots = concurrency(spec, cluster_resources)
        # One trial per run, or per WSD family (trunk and cooldowns, trained in turn). Longest first, so that the
        # last trials to start are short ones (the plan's makespan assumes this order).
        order = sorted(trial_seconds(runs), key=lambda trunk: -trial_seconds(runs)[trunk])
        trials = "" if len(order) == len(runs) else f" in {len(order)} trials (WSD trunks train their cooldowns)"
        progress(f"{len(runs)} runs{trials}, {slots} at a time, in {storage.uri()}")
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search(order)},
            tune_config=tune.TuneConfig(max_concurrent_trials=slots),
            run_config=tune.RunConfig(
                name=TUNE, storage_path=root, storage_filesystem=filesystem, verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.resources.retries),
                callbacks=[_progress_callback(len(order), progress)]))
    grid = tuner.fit()
    for result in grid:
        if result.error is not None:
            for run in family(runs, result.config["run"]):
                record = read_record(storage, run.run_id)
                if record is None or record.status != "done":
                    mark_failed(storage, run.run_id, f"{type(result.error).__name__}: {result.error}")
    table = results_table(spec, storage)
    write_results(storage, table)
    return table

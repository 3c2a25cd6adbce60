"""Chaos scenarios 2 and 3 of bench/chaos.py: training and evaluation workers SIGKILLed mid-job.

pretrain: `python -m jobs.pretrain` (the tiny recipe, 30 steps, a checkpoint every 5) runs once undisturbed and once
    while a training worker (one rank's Ray Train actor process) is SIGKILLed twice, each time just after Ray Train
    registered a new checkpoint; the second kill hits the worker group Ray Train started after the first. The run
    must finish, log the undisturbed run's loss at every step it logs, see as many samples, and end on the same
    weights (the fp32 safetensors of its last checkpoint).
evaluation: `python -m jobs.evaluate` scores the pretrain runs' final checkpoints undisturbed, then again while one
    task's worker process is SIGKILLed: once (Ray retries it: every row must equal the undisturbed one), then twice
    on one checkpoint (the retry is spent: that task must come back `failed` with its reason, the other `ok`).

Both scenarios drive the real jobs as subprocesses on chaos.py's cluster and inject faults from outside: Ray titles
each worker process `ray::<actor class>` or `ray::<task name>`, so this driver finds the victim by title among the
processes of its own cluster (never another Ray instance on the machine) and SIGKILLs it.

Column meanings (RELIABILITY.md): pretrain: samples in / written = samples_seen at the last step of the undisturbed /
killed run, lost / duplicated = the shortfall / excess of the second against the first, quarantined left empty.
evaluation: samples in = (checkpoint, task) runs submitted, written = runs scored `ok`, quarantined = runs reported
`failed` with a reason, lost = runs with no row, duplicated = runs with more than one row per metric.
"""

from __future__ import annotations

import collections
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from cluster.local import LocalCluster
from jobs.cli import REPO_ROOT
from pipeline.train.metrics import METRICS, read_metrics
from schemas.export import WEIGHTS

PRETRAIN_FAULT = "pretrain: training worker killed twice"
EVAL_FAULT = "evaluation: one task's worker killed"
TRAIN_WORKER = "ray::RayTrainWorker"  # Ray Train's per-rank actor
EVAL_TASK = "ray::eval:"  # pipeline/eval/runner.py names each Ray task eval:<task>
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered, in the run dir

# Token shards of the sample corpus's text modalities (`python -m jobs.study sample-data`, ~10 s) and the tiny
# recipe at toy length: ~1 min a run, most of it start-up and the six checkpoints.
SAMPLES, VOCAB, TEXT = 512, 4400, ("caption", "color_palette", "metadata")
PRETRAIN_KILLS = 2
RECIPE = ("steps=30", "checkpoint_every=5", "log_every=5", "precision=fp32", "loader.batch_size=8",
          "masking.input_tokens=32", "masking.target_tokens=32", "optim.warmup_steps=4",
          f"max_failures={PRETRAIN_KILLS + 1}", "vocab_sizes={" + ", ".join(f"{m}: {VOCAB}" for m in TEXT) + "}")
# The two tasks a model of text modalities alone is scored on (probes of the scenes' annotations). A longer probe
# fit (default 300 steps, ~0.2 s) keeps each task's worker busy ~2 s, so that the killer also catches a retry that
# Ray hands to a worker already warm from the other task.
EVAL_TASKS = ("object_count_from_palette", "largest_shape_from_caption")
EVAL_RECIPE = ("probe.steps=3000",)
# Resume is exact (loader position, RNG and optimizer states come back with the checkpoint); these bounds leave
# room only for the order of floating-point reductions.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5
JOB_TIMEOUT_S = 900


# ---------------------------------------------------------------- finding and killing workers

def cluster_roots(cluster: LocalCluster) -> set[int]:
    """The `ray start` process of each live node: every Ray worker of this cluster descends from one of them."""
    return {node.pid for node in cluster.nodes.values() if not node.killed}


def titled_processes(prefix: str, roots: set[int]) -> list[psutil.Process]:
    """Live processes whose title (argv[0], which Ray rewrites) starts with `prefix`, below one of `roots`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(prefix):
            try:
                if any(parent.pid in roots for parent in proc.parents()):
                    found.append(proc)
            except psutil.Error:  # gone meanwhile
                continue
    return found


def sigkill(proc: psutil.Process) -> bool:
    """SIGKILL `proc` (no cleanup of any kind); False if it had already gone (psutil also refuses a reused pid)."""
    try:
        proc.kill()
    except psutil.NoSuchProcess:
        return False
    return True


def registered_checkpoints(run_dir: Path) -> dict[str, int]:
    """Checkpoint folder -> step, for the checkpoints Ray Train has registered in `run_dir` so far."""
    try:
        snapshot = json.loads((run_dir / SNAPSHOT).read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
        return {}
    return {c["checkpoint_dir_name"]: c["metrics"]["step"] for c in snapshot.get("checkpoint_results", [])}


def kill_workers_after_checkpoints(job: subprocess.Popen, roots: set[int], run_dir: Path, world: int, kills: int,
                                   rng: random.Random) -> list[int]:
    """SIGKILL one training rank `kills` times, each time soon after a new checkpoint was registered, each kill in a
    worker group Ray Train started after the previous one; returns the checkpoint step each kill followed."""
    seen: set[str] = set()
    killed_group: set[int] = set()
    after: list[int] = []
    while len(after) < kills and job.poll() is None:
        new = {name: step for name, step in registered_checkpoints(run_dir).items() if name not in seen}
        workers = [p for p in titled_processes(TRAIN_WORKER, roots) if p.pid not in killed_group]
        if new and len(workers) == world:
            time.sleep(rng.uniform(0.0, 0.5))  # somewhere in the steps that follow the checkpoint
            if sigkill(rng.choice(workers)):
                after.append(max(new.values()))
                killed_group = {p.pid for p in workers}
                seen |= set(registered_checkpoints(run_dir))
        time.sleep(0.1)
    return after


def kill_task_worker(job: subprocess.Popen, roots: set[int], task: str, kills: int) -> int:
    """SIGKILL the worker process running evaluation task `task`, `kills` times (a retry is a new process); returns
    how many kills landed before the job ended."""
    killed: set[int] = set()
    while len(killed) < kills and job.poll() is None:
        for proc in titled_processes(EVAL_TASK + task, roots):
            if proc.pid not in killed and sigkill(proc):
                killed.add(proc.pid)
                break
        time.sleep(0.02)  # a task's worker lives ~1 s
    return len(killed)


# ---------------------------------------------------------------- running the jobs

def run_job(module: str, args: list[str], log: Path, during: Callable[[subprocess.Popen], object] | None = None,
            ) -> tuple[int, object]:
    """`python -m module args` with its output in `log`; `during(job)` runs while it does. (exit code, its result)"""
    with log.open("w") as out:
        job = subprocess.Popen([sys.executable, "-u", "-m", module, *args], cwd=REPO_ROOT, stdout=out,
                               stderr=subprocess.STDOUT, text=True)
        try:
            injected = during(job) if during is not None else None
            return job.wait(timeout=JOB_TIMEOUT_S), injected
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{module} ran past {JOB_TIMEOUT_S} s (log: {log})") from None
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()


def require_ok(code: int, what: str, log: Path) -> None:
    if code != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"{what} failed ({code}): {tail[0]}")


def study_data(cluster: LocalCluster, work: Path) -> str:
    """Token shards for the training scenarios (made once per chaos run)."""
    out = work / "train-data"
    if not (out / "shards" / "manifest.parquet").exists():
        log = work / "sample-data.log"
        code, _ = run_job("jobs.study", ["sample-data", str(out), "--samples", str(SAMPLES), "--vocab", str(VOCAB),
                                         "--address", cluster.address], log)
        require_ok(code, "sample-data", log)
    return str(out / "shards")


def pretrain(cluster: LocalCluster, data: str, work: Path, name: str,
             during: Callable[[subprocess.Popen], object] | None = None) -> tuple[Path, object]:
    """One run of the pretrain job named `name`; (its run directory, what `during` returned)."""
    args = ["--data", data, "--storage", str(work / "runs"), "--name", name, "--address", cluster.address]
    args += [arg for override in RECIPE for arg in ("--set", override)]
    log = work / f"{name}.log"
    code, injected = run_job("jobs.pretrain", args, log, during)
    require_ok(code, f"pretrain {name}", log)
    return work / "runs" / name, injected


def final_weights(run_dir: Path) -> dict:
    from safetensors.numpy import load_file

    checkpoint = json.loads((run_dir / "summary.json").read_text())["checkpoint"]
    return load_file(str(Path(checkpoint, WEIGHTS)))


def compare_runs(clean_dir: Path, chaos_dir: Path) -> dict:
    """How far the killed run ended from the undisturbed one: losses at every logged step, samples, weights."""
    import numpy as np

    clean, chaos = read_metrics(clean_dir / METRICS), read_metrics(chaos_dir / METRICS)
    by_step = {row["step"]: row for row in clean}
    # a step logged before a kill and again after the resume is compared both times
    curve = [abs(row["loss"] - by_step[row["step"]]["loss"]) / abs(by_step[row["step"]]["loss"])
             for row in chaos if row["step"] in by_step]
    ours, theirs = final_weights(chaos_dir), final_weights(clean_dir)
    weight_diff = max(float(np.max(np.abs(ours[k] - theirs[k]))) for k in theirs) if set(ours) == set(theirs) \
        else float("inf")
    return {"steps_logged": [row["step"] for row in chaos], "clean_steps": sorted(by_step),
            "final_step": chaos[-1]["step"], "final_loss": chaos[-1]["loss"], "clean_final_loss": clean[-1]["loss"],
            "max_loss_rel_diff": max(curve) if len(curve) == len(chaos) else float("inf"),
            "val_loss_diff": abs(chaos[-1]["val_loss"] - clean[-1]["val_loss"]),
            "max_weight_abs_diff": weight_diff,
            "samples_clean": clean[-1]["samples_seen"], "samples_chaos": chaos[-1]["samples_seen"]}


# ---------------------------------------------------------------- scenario 2: pretrain

def scenario_pretrain_kills(cluster: LocalCluster, corpus: Path, work: Path, args, rng: random.Random) -> list[dict]:
    """The pretrain job undisturbed, then with a training worker SIGKILLed twice after checkpoints (module doc)."""
    started = time.perf_counter()
    data = study_data(cluster, work)
    clean_dir, _ = pretrain(cluster, data, work, "pretrain-clean")
    roots = cluster_roots(cluster)
    chaos_dir, after = pretrain(cluster, data, work, "pretrain-killed", lambda job: kill_workers_after_checkpoints(
        job, roots, work / "runs" / "pretrain-killed", world=2, kills=PRETRAIN_KILLS, rng=rng))
    measured = compare_runs(clean_dir, chaos_dir)
    measured.update(killed_after_checkpoint_steps=after, seconds=round(time.perf_counter() - started))
    print(f"{PRETRAIN_FAULT}: {json.dumps(measured)}")
    samples_clean, samples_chaos = measured["samples_clean"], measured["samples_chaos"]
    ok = (len(after) == PRETRAIN_KILLS and measured["final_step"] == measured["clean_steps"][-1]
          and sorted(set(measured["steps_logged"])) == measured["clean_steps"]
          and measured["max_loss_rel_diff"] <= LOSS_RTOL and measured["max_weight_abs_diff"] <= WEIGHT_ATOL
          and samples_chaos == samples_clean)
    return [{"fault": PRETRAIN_FAULT, "injected": len(after), "samples in": samples_clean, "written": samples_chaos,
             "quarantined": "", "lost": max(0, samples_clean - samples_chaos),
             "duplicated": max(0, samples_chaos - samples_clean), "result": "pass" if ok else "FAIL",
             "measured": measured}]


# ---------------------------------------------------------------- scenario 3: evaluation

def trained_checkpoints(cluster: LocalCluster, work: Path) -> list[str]:
    """The final checkpoints of scenario 2's runs; an undisturbed run's alone if scenario 2 did not run."""
    names = [name for name in ("pretrain-clean", "pretrain-killed") if (work / "runs" / name / "summary.json").exists()]
    if "pretrain-clean" not in names:
        pretrain(cluster, study_data(cluster, work), work, "pretrain-clean")
        names = ["pretrain-clean"]
    return [json.loads((work / "runs" / name / "summary.json").read_text())["checkpoint"] for name in names]


def evaluate(cluster: LocalCluster, work: Path, checkpoints: list[str], name: str,
             during: Callable[[subprocess.Popen], object] | None = None) -> tuple[int, list[dict], object]:
    """One run of the evaluate job on EVAL_TASKS: (exit code, its result rows, what `during` returned)."""
    out = work / name
    args = ["--checkpoint", ",".join(checkpoints), "--tasks", ",".join(EVAL_TASKS),
            "--data", study_data(cluster, work), "--out", str(out), "--address", cluster.address]
    args += [arg for override in EVAL_RECIPE for arg in ("--set", override)]
    code, injected = run_job("jobs.evaluate", args, work / f"{name}.log", during)
    rows = pq.read_table(out / "results.parquet").to_pylist() if (out / "results.parquet").exists() else []
    return code, rows, injected


def eval_row(fault: str, checkpoints: list[str], rows: list[dict], clean: list[dict], code: int, kills: int,
             injected: int, reported: str | None) -> dict:
    """The table row of one evaluation under `kills` kills: every (checkpoint, task) run has exactly one row per
    metric; task `reported` (None: none) comes back failed with a reason, every other run scores what it did
    undisturbed, and the exit code says whether any failed."""
    runs = {(c, t) for c in checkpoints for t in EVAL_TASKS}
    per_run = collections.Counter((r["checkpoint"], r["task"]) for r in rows)
    per_metric = collections.Counter((r["checkpoint"], r["task"], r["metric"]) for r in rows)
    reference = {(r["checkpoint"], r["task"], r["metric"]): r["value"] for r in clean if r["status"] == "ok"}
    failed = {(r["checkpoint"], r["task"]) for r in rows if r["status"] == "failed" and r["error"]}
    scored = {(r["checkpoint"], r["task"]) for r in rows if r["status"] == "ok"} - failed
    same = all(r["value"] == reference.get((r["checkpoint"], r["task"], r["metric"]))
               for r in rows if r["status"] == "ok")
    expected_failed = {run for run in runs if run[1] == reported}
    ok = (injected == kills and same and failed == expected_failed and scored == runs - expected_failed
          and code == (1 if reported else 0))
    errors = sorted({r["error"].splitlines()[0][:160] for r in rows if r["status"] == "failed"})
    print(f"{fault}: exit {code}, injected {injected}, failed {sorted(failed)} {errors}, same scores: {same}")
    return {"fault": fault, "injected": injected, "samples in": len(runs), "written": len(scored),
            "quarantined": len(failed), "lost": len(runs - set(per_run)),
            "duplicated": sum(n - 1 for n in per_metric.values() if n > 1), "result": "pass" if ok else "FAIL",
            "errors": errors}


def scenario_eval_kills(cluster: LocalCluster, corpus: Path, work: Path, args, rng: random.Random) -> list[dict]:
    """The evaluate job undisturbed, with one task's worker killed once (retried), and twice (reported)."""
    started = time.perf_counter()
    checkpoints = trained_checkpoints(cluster, work)
    code, clean, _ = evaluate(cluster, work, checkpoints, "eval-clean")
    require_ok(code, "undisturbed evaluation", work / "eval-clean.log")
    roots, victim = cluster_roots(cluster), rng.choice(EVAL_TASKS)
    code, rows, injected = evaluate(cluster, work, checkpoints, "eval-killed-once",
                                    lambda job: kill_task_worker(job, roots, victim, kills=1))
    once = eval_row(f"{EVAL_FAULT} (retried)", checkpoints, rows, clean, code, 1, injected, None)
    # One checkpoint: the victim's retry is then the only process with its title.
    code, rows, injected = evaluate(cluster, work, checkpoints[:1], "eval-killed-twice",
                                    lambda job: kill_task_worker(job, roots, victim, kills=2))
    twice = eval_row(f"{EVAL_FAULT} twice (reported)", checkpoints[:1], rows, clean, code, 2, injected, victim)
    print(f"{EVAL_FAULT}: {time.perf_counter() - started:.0f} s for the three evaluations")
    return [once, twice]

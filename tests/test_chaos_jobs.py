"""The chaos suite's victim finders (bench/chaos_jobs.py) on real processes titled as Ray titles its workers; the
scenarios themselves run in `make chaos`, not here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from bench.chaos_jobs import (EVAL_TASK, SNAPSHOT, TRAIN_WORKER, kill_task_worker, registered_checkpoints, sigkill,
                              titled_processes)

SLEEP = shutil.which("sleep")


@pytest.fixture
def spawn():
    """Start `sleep` with argv[0] set to a title (what Ray's setproctitle shows); all are killed at the end."""
    started = []

    def start(title: str) -> subprocess.Popen:
        started.append(subprocess.Popen([title, "60"], executable=SLEEP))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_workers_are_found_by_title_below_the_roots_only_and_killed(spawn):
    worker, _ = spawn(TRAIN_WORKER), spawn("ray::IDLE")
    outsider = spawn("outside-the-cluster")  # a root that the workers do not descend from
    assert [p.pid for p in titled_processes(TRAIN_WORKER, {os.getpid()})] == [worker.pid]
    assert titled_processes(TRAIN_WORKER, {outsider.pid}) == []
    victim = titled_processes(TRAIN_WORKER, {os.getpid()})[0]
    assert sigkill(victim)
    assert worker.wait(timeout=10) == -9  # SIGKILL: no cleanup ran
    assert not sigkill(victim)  # already gone
    assert titled_processes(TRAIN_WORKER, {os.getpid()}) == []


def test_task_killer_kills_each_attempt_of_its_task_only(spawn):
    job = spawn("the-evaluate-job")  # the killer stops when the job ends; here it outlives both kills
    first, retry = spawn(EVAL_TASK + "object_count_from_palette"), spawn(EVAL_TASK + "object_count_from_palette")
    other = spawn(EVAL_TASK + "largest_shape_from_caption")
    assert kill_task_worker(job, {os.getpid()}, "object_count_from_palette", kills=2) == 2
    assert first.wait(timeout=10) == retry.wait(timeout=10) == -9
    assert other.poll() is None and job.poll() is None
    job.kill()
    job.wait()
    assert kill_task_worker(job, {os.getpid()}, "largest_shape_from_caption", kills=1) == 0  # job over: no kill


def test_registered_checkpoints_read_ray_trains_snapshot(tmp_path):
    assert registered_checkpoints(tmp_path) == {}  # nothing registered yet
    (tmp_path / SNAPSHOT).write_text('{"checkpoint_results": [{"checkpoint_dir_name"')  # caught mid-write
    assert registered_checkpoints(tmp_path) == {}
    results = [{"checkpoint_dir_name": f"checkpoint_{i}", "metrics": {"step": 5 * i}} for i in (1, 2)]
    (tmp_path / SNAPSHOT).write_text(json.dumps({"ray_version": "2.60.0", "checkpoint_results": results}))
    assert registered_checkpoints(tmp_path) == {"checkpoint_1": 5, "checkpoint_2": 10}

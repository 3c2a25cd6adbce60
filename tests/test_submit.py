"""Job submission through Ray's Jobs API to the session's local cluster: run, follow, stop, list."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster.submit import entrypoint, split_args
from pipeline.data.inspect import verify_output
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import StorageConfig

REPO = Path(__file__).resolve().parent.parent


def submit_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.submit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_own_options_are_split_from_the_jobs():
    own, rest = split_args(["preprocess", "--input", "x", "--address=http://h:1", "--set", "a=1", "--follow"])
    assert own == {"--address": "http://h:1", "--follow": True}
    assert rest == ["preprocess", "--input", "x", "--set", "a=1"]
    assert entrypoint("preprocess", ["--set", "a=b c"]).endswith("--set 'a=b c' --address auto")
    with pytest.raises(SystemExit, match="no job 'nope'"):
        entrypoint("nope", [])


@pytest.mark.cluster
def test_submit_follow_stop_and_list(ray_cluster, tmp_path):
    address = ray_cluster.dashboard_url
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=16, image_size=48, samples_per_shard=8))

    done = submit_cli("preprocess", "--input", str(corpus), "--output", str(out), "--set", "image.resolution=32",
                      "--address", address, "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "preprocess done: 16/16 samples" in done.stdout and "SUCCEEDED" in done.stdout
    assert verify_output(Storage(str(out), StorageConfig())).samples == 16
    finished_id = done.stdout.split("submitted preprocess as ", 1)[1].split()[0]

    big = tmp_path / "big"
    write_corpus(SampleCorpusConfig(out=str(big), samples=400, image_size=64, samples_per_shard=8))
    started = submit_cli("preprocess", "--input", str(big), "--output", str(tmp_path / "big-out"), "--address", address)
    assert started.returncode == 0, started.stderr
    running_id = started.stdout.split("submitted preprocess as ", 1)[1].split()[0]
    jobs = JobSubmissionClient(address)
    deadline = time.monotonic() + 120
    while jobs.get_job_status(running_id) != JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped = submit_cli("stop", running_id, "--address", address)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    while jobs.get_job_status(running_id) not in (JobStatus.STOPPED, JobStatus.FAILED) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jobs.get_job_status(running_id) == JobStatus.STOPPED

    listing = submit_cli("list", "--address", address).stdout
    rows = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:] if line.strip()}
    assert finished_id in rows and running_id in rows, listing
    assert rows[finished_id] == "SUCCEEDED" and rows[running_id] == "STOPPED"
    assert "preprocess done" in submit_cli("logs", finished_id, "--address", address).stdout

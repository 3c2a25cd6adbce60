"""Job submission through Ray's Jobs API to the session's local cluster: run, follow, stop, list."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster.submit import entrypoint, split_args
from pipeline.data.inspect import verify_output
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from schemas.corpus import SampleCorpusConfig
from schemas.common import StorageConfig

REPO = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"step +\d+/100000 loss")  # a train worker's log line, forwarded to the job's log


def submit_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.submit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_own_options_are_split_from_the_jobs():
    own, rest = split_args(["preprocess", "--input", "x", "--address=http://h:1", "--set", "a=1", "--follow"])
    assert own == {"--address": "http://h:1", "--follow": True}
    assert rest == ["preprocess", "--input", "x", "--set", "a=1"]
    assert entrypoint("preprocess", ["--set", "a=b c"]).endswith("--set 'a=b c' --address auto")
    assert entrypoint("export", ["--checkpoint", "s3://b/c", "--out", "m.safetensors"]).endswith("m.safetensors")
    with pytest.raises(SystemExit, match="no job 'nope'"):
        entrypoint("nope", [])


def submitted_id(result: subprocess.CompletedProcess, job: str) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split(f"submitted {job} as ", 1)[1].split()[0]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


@pytest.mark.cluster
def test_submit_follow_stop_and_list(ray_cluster, ray_session, tokens, tmp_path):
    address = ray_cluster.dashboard_url
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=16, image_size=48, samples_per_shard=8))

    done = submit_cli("preprocess", "--input", str(corpus), "--output", str(out), "--set", "image.resolution=32",
                      "--address", address, "--follow")
    finished_id = submitted_id(done, "preprocess")
    assert "preprocess done: 16/16 samples" in done.stdout and "SUCCEEDED" in done.stdout
    assert verify_output(Storage(str(out), StorageConfig())).samples == 16

    # A tiny pretrain far longer than the test waits: stopped once it is really training, not while it starts.
    started = submit_cli("pretrain", "--config", "configs/pretrain/tiny.yaml", "--data", tokens,
                         "--storage", str(tmp_path / "runs"), "--set", "steps=100000", "--set", "log_every=1",
                         "--set", "checkpoint_every=100000", "--set", "loader.batch_size=8",
                         "--set", "masking.input_tokens=32", "--set", "masking.target_tokens=32", "--address", address)
    running_id = submitted_id(started, "pretrain")
    jobs = JobSubmissionClient(address)
    wait_for(lambda: STEP_LINE.search(jobs.get_job_logs(running_id))
             or jobs.get_job_status(running_id).is_terminal(), 300, "the pretrain's first step")
    assert jobs.get_job_status(running_id) == JobStatus.RUNNING, jobs.get_job_logs(running_id)[-3000:]
    stopped = submit_cli("stop", running_id, "--address", address)
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    wait_for(lambda: jobs.get_job_status(running_id).is_terminal(), 120, "the pretrain to stop")
    assert jobs.get_job_status(running_id) == JobStatus.STOPPED
    # Its Ray Train workers went with it: the cluster's CPUs are free for whatever runs next.
    wait_for(lambda: ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"], 60,
             "the stopped run's workers to release their CPUs")

    listing = submit_cli("list", "--address", address).stdout
    rows = {line.split()[0]: line.split()[1:3] for line in listing.splitlines()[1:] if line.strip()}
    assert rows.get(finished_id) == ["SUCCEEDED", "preprocess"], listing
    assert rows.get(running_id) == ["STOPPED", "pretrain"], listing
    assert "preprocess done" in submit_cli("logs", finished_id, "--address", address).stdout

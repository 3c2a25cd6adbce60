"""The tokenizer training job on the session's real Ray cluster: 2 DDP workers, real label shards, real checkpoints."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.inspect import iter_members
from pipeline.data.label_stream import LabelStream, iter_split
from pipeline.data.manifest import read_manifest
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from pipeline.tokenizers import load_tokenizer
from pipeline.tokenizers.codecs import read_member
from pipeline.train.tokenizer import run_train_tokenizer
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.keys import in_holdout
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig
from schemas.train_tokenizer import TrainTokenizerConfig

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.widths=[8, 16]", "model.quantizer.levels=[4, 4, 3]", "fit_samples=32", "eval_samples=32",
        "batch_size=8", "optim.warmup_steps=2", "holdout_fraction=0.2"]
pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tokenizer-data")
    write_corpus(SampleCorpusConfig(out=str(root / "corpus"), samples=60, image_size=32, samples_per_shard=20,
                                    real_fraction=0.0))
    config = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml", [
        f"input={root / 'corpus'}", f"output={root / 'shards'}", "image.resolution=16",
        "modalities=[rgb, semseg]", "labelers={semseg: {source: ground_truth}}"])
    run_preprocess(config, log=lambda _: None)
    return config.output


def job_config(labels: str, tmp_path: Path, modality: str, *overrides: str) -> TrainTokenizerConfig:
    return load_config(TrainTokenizerConfig, REPO / "configs/train_tokenizer/default.yaml", [
        f"modality={modality}", f"input={labels}", f"output={tmp_path / 'out'}", f"storage_path={tmp_path / 'runs'}",
        *TINY, *overrides])


def test_streams_are_disjoint_per_rank_and_never_touch_the_held_out_split(labels):
    storage = Storage(labels, StorageConfig())
    held_out = {k for k, _ in iter_split(storage, "rgb", bytes, holdout=0.2, held_out=True)}
    train = {k for k, _ in iter_split(storage, "rgb", bytes, holdout=0.2, held_out=False)}
    assert held_out and train and not held_out & train and len(held_out | train) == 60
    assert all(in_holdout(k, 0.2) for k in held_out)
    # The reader returns the member bytes themselves, so streamed samples can be traced back to their keys.
    key_of = {p: k for k, p in iter_split(storage, "rgb", lambda p: p, holdout=0.2, held_out=False)}
    seen = []
    for rank in range(2):
        stream = iter(LabelStream(storage, "rgb", lambda p: p, rank=rank, world=2, seed=0, holdout=0.2, buffer=4))
        seen.append({key_of[next(stream)] for _ in range(150)})  # several epochs of this rank's shards
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == train


def test_train_writes_a_tokenizer_with_held_out_metrics_and_plots(labels, tmp_path):
    config = job_config(labels, tmp_path, "semseg", "steps=12", "checkpoint_every=6", "log_every=3",
                        "model.quantizer={kind: vq, codebook_size: 32, code_dim: 8, restart_after: 4}")
    summary = run_train_tokenizer(config)
    out = tmp_path / "out"
    tokenizer = load_tokenizer(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["content_hash"] == tokenizer.content_hash == summary["metrics"]["content_hash"]
    assert metrics["steps"] == 12 and [h["step"] for h in metrics["history"]] == [3, 6, 9, 12]
    held_out = metrics["held_out"]
    assert 0 <= held_out["miou"] <= 1 and 0 < held_out["usage"] <= 1 and held_out["perplexity"] >= 1
    assert held_out["samples"] == len(list(iter_split(Storage(labels, StorageConfig()), "semseg", bytes,
                                                       holdout=0.2, held_out=True)))
    for png in ("reconstructions.png", "loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # The written tokenizer is the trained one: it re-scores the held-out split exactly as the job did.
    storage = Storage(labels, StorageConfig())
    maps = [a for _, a in iter_split(storage, "semseg", lambda p: read_member("semseg", p), holdout=0.2,
                                     held_out=True)]
    from pipeline.tokenizers.fit import evaluate

    assert evaluate(tokenizer, maps)["miou"] == pytest.approx(held_out["miou"])
    assert tokenizer.encode(maps).shape == (len(maps), 64)

    # The preprocess tokenize stage uses it by name (looked up under tokenizer_root): tok_semseg shards aligned with
    # the label shards, every row the tokenizer's own encoding, the manifest naming tokenizer id and hash.
    tokenize = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml", [
        f"output={labels}", "stages=[tokenize]", f"tokenizer_root={tmp_path}", "tokenizers={semseg: out}"])
    report = run_preprocess(tokenize, log=lambda _: None)
    assert report["tokens"]["tok_semseg"]["longest"] == 64
    rows = [r for r in read_manifest(storage) if r.folder == "tok_semseg"]
    assert len(rows) == 3 and {(r.tokenizer_id, r.tokenizer_hash) for r in rows} == {
        (tokenizer.tokenizer_id, tokenizer.content_hash)}
    labels_by_key = {k: read_member("semseg", p) for k, p in iter_members(storage, "semseg")}
    tokens = dict(iter_members(storage, "tok_semseg"))
    assert list(tokens) == list(labels_by_key)
    for key, payload in tokens.items():
        row = np.load(io.BytesIO(payload))
        assert row.dtype == np.int16 and row.shape == (1, 64)
        assert np.array_equal(row[0], tokenizer.encode([labels_by_key[key]])[0])


def committed_checkpoints(run_dir: Path) -> list:
    """Checkpoints Ray Train has registered (its snapshot), not merely copied: the ones a rerun restores."""
    try:
        return json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def test_a_killed_job_resumes_from_its_checkpoint(labels, tmp_path, ray_cluster):
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "jobs.train_tokenizer", "--modality", "rgb", "--input", labels,
               "--output", str(tmp_path / "out"), "--storage", str(runs), "--address", ray_cluster.address,
               *(a for o in TINY + ["steps=60", "checkpoint_every=5", "log_every=5"] for a in ("--set", o))]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not committed_checkpoints(runs / "tokenizer-rgb"):
            assert first.poll() is None, f"the job ended before its first checkpoint:\n{first.stdout.read()}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        assert first.poll() is None, "the job ended before it was killed"  # killed mid-run, not after the end
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started in its session
        first.wait()
    assert not (tmp_path / "out" / "metrics.json").exists()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    log = second.stdout + second.stderr
    resumed = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "resumed from step" in line]
    assert resumed and 5 <= resumed[0] < 60 and resumed[0] % 5 == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    steps = [h["step"] for h in metrics["history"]]
    assert metrics["steps"] == 60 and steps == sorted(set(steps)) and steps[0] == 5  # history survives the kill
    assert np.isfinite(metrics["held_out"]["psnr"])

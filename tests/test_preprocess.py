"""The preprocess job end to end on a real Ray cluster, real tars, read back with the webdataset library."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from PIL import Image

from hostile_corpus import MAX_PIXELS, write_hostile_corpus
from pipeline.data.inspect import iter_members, iterate_shard, verify_output
from pipeline.data.labelers.weights import MissingWeightsError
from pipeline.data.preprocess import OutputConflictError, run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig
from schemas.shards import MANIFEST_FILE, braceexpand_pattern

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("ray_session")


def recipe(input_dir, output_dir, *overrides: str) -> PreprocessConfig:
    return load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml", [
        f"input={input_dir}", f"output={output_dir}", "image.resolution=32", *overrides,
    ])


def shard_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("shard-*.tar"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(SampleCorpusConfig(out=str(root), samples=40, image_size=64, samples_per_shard=16))
    return root


@pytest.fixture(scope="module")
def labelled(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("labelled") / "out"
    return out, run_preprocess(recipe(corpus, out), log=lambda _: None)


def test_output_is_complete_aligned_and_readable(labelled):
    out, report = labelled
    assert report["samples_in"] == report["samples_written"] == 40 and report["samples_quarantined"] == 0
    summary = verify_output(Storage(str(out), StorageConfig()))
    assert summary.shards == 3 and summary.samples == 40
    assert set(summary.folders) == {"rgb", "caption", "canny_edge", "color_palette", "metadata",
                                    "crop_settings", "source", "annotations"}


def test_webdataset_and_ray_data_read_the_same_samples(labelled):
    out, _ = labelled
    urls = braceexpand_pattern(str(out), ["caption"], 3)
    via_wds = {s["__key__"]: s["txt"].decode() for s in wds.WebDataset(urls, shardshuffle=False)}
    via_ray = {r["__key__"]: r["txt"] for r in ray.data.read_webdataset(str(out / "caption")).take_all()}
    assert len(via_wds) == 40 and via_wds == via_ray
    # the source modality points back at the raw sample
    first = next(iter(wds.WebDataset(str(out / "source" / "shard-000000.tar"), shardshuffle=False)))
    assert json.loads(first["json"])["uri"].endswith("corpus-000000.tar")


def test_same_input_gives_byte_identical_shards_and_rerun_changes_nothing(corpus, labelled, tmp_path):
    out, _ = labelled
    again = tmp_path / "again"
    run_preprocess(recipe(corpus, again), log=lambda _: None)
    assert shard_digests(again) == shard_digests(out)
    before = {p: p.stat().st_mtime_ns for p in again.rglob("*") if p.is_file()}
    run_preprocess(recipe(corpus, again), log=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*") if p.is_file()} == before


def test_hostile_corpus_every_sample_written_or_quarantined_once(tmp_path):
    expected = write_hostile_corpus(tmp_path / "in")
    out = tmp_path / "out"
    report = run_preprocess(recipe(tmp_path / "in", out, f"image.max_pixels={MAX_PIXELS}", "caption.max_chars=1000"),
                            log=lambda _: None)
    written = [key for p in sorted((out / "rgb").glob("shard-*.tar"))
               for key, _ in iterate_shard(p.read_bytes())]
    quarantined = pq.read_table(out / "quarantine" / "quarantine.parquet").to_pylist()
    outcomes = sorted([(k, "written") for k in written] + [(q["source_key"], q["reason"]) for q in quarantined])
    assert outcomes == expected
    assert report["samples_in"] == len(expected)
    assert report["quarantine_reasons"] == dict(sorted(Counter(o for _, o in expected if o != "written").items()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"], "nothing written outside OUTPUT"
    assert verify_output(Storage(str(out), StorageConfig())).shards == 4, "the empty tar still has its shard"


def test_resume_after_partial_output_matches_uninterrupted(corpus, labelled, tmp_path):
    out, _ = labelled
    partial = tmp_path / "partial"
    run_preprocess(recipe(corpus, partial), log=lambda _: None)
    # A crash after unit 1's shards were written but before its record, and one before unit 2 started at all.
    (partial / "_units" / "unit-000001.json").unlink()
    (partial / "_units" / "unit-000002.json").unlink()
    for folder in ("rgb", "caption"):
        (partial / folder / "shard-000002.tar").unlink()
    (partial / "rgb" / ".tmp-deadbeef-shard-000001.tar").write_bytes(b"half a shard")
    (partial / MANIFEST_FILE).unlink()
    log = []
    run_preprocess(recipe(corpus, partial), log=log.append)
    assert "1 already done, 2 to do" in log[0]
    assert shard_digests(partial) == shard_digests(out)
    assert verify_output(Storage(str(partial), StorageConfig())).samples == 40


def test_other_recipe_on_same_output_is_refused_unless_overwrite(corpus, labelled, tmp_path):
    out = tmp_path / "o"
    run_preprocess(recipe(corpus, out), log=lambda _: None)
    with pytest.raises(OutputConflictError, match="--overwrite"):
        run_preprocess(recipe(corpus, out, "image.resolution=48"), log=lambda _: None)
    report = run_preprocess(recipe(corpus, out, "image.resolution=48", "overwrite=true"), log=lambda _: None)
    assert report["samples_written"] == 40


def run_job(*args: str, address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.preprocess", "--address", address, *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_killed_driver_then_rerun_gives_same_shards(corpus, labelled, tmp_path, ray_cluster):
    out, _ = labelled
    target = tmp_path / "killed"
    args = ("--input", str(corpus), "--output", str(target), "--set", "image.resolution=32")
    job = run_job(*args, address=ray_cluster.address)
    deadline = time.monotonic() + 120
    while not list((target / "_units").glob("unit-*.json")) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.01)
    running, done = job.poll() is None, len(list((target / "_units").glob("unit-*.json")))
    os.killpg(job.pid, signal.SIGKILL)  # no cleanup of any kind: as if the driver's machine died
    job.wait()
    # Killed mid-run (else the rerun below proves nothing): the driver alive, some units done, not all.
    assert running and 1 <= done < 3, f"at the kill: driver running {running}, {done} of 3 units done"
    assert not (target / MANIFEST_FILE).exists()
    rerun = run_job(*args, address=ray_cluster.address)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "preprocess done: 40/40 samples" in output
    assert shard_digests(target) == shard_digests(out)


def test_cli_refuses_bad_config_and_missing_input(tmp_path, ray_cluster):
    bad = run_job("--input", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "modalities=[point_cloud]",
                  address=ray_cluster.address)
    output, _ = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "point_cloud" in output and "not implemented" in output
    missing = run_job("--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), address=ray_cluster.address)
    output, _ = missing.communicate(timeout=120)
    assert missing.returncode == 1 and "does not exist" in output


def test_killed_worker_node_then_rerun_gives_same_shards(corpus, labelled, tmp_path, ray_cluster):
    """A worker node dies mid-run: Ray retries its tasks elsewhere or the job fails; either way, after at most one
    rerun the output equals the uninterrupted run's."""
    out, _ = labelled
    target = tmp_path / "node-killed"
    args = ("--input", str(corpus), "--output", str(target), "--set", "image.resolution=32")
    job = run_job(*args, address=ray_cluster.address)
    victim = ray_cluster.live_workers()[0]
    try:
        deadline = time.monotonic() + 120
        while not list((target / "_units").glob("unit-*.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
        running, done = job.poll() is None, len(list((target / "_units").glob("unit-*.json")))
        ray_cluster.kill_node(victim)
        output, _ = job.communicate(timeout=300)
        if job.returncode != 0:
            rerun = run_job(*args, address=ray_cluster.address)
            output, _ = rerun.communicate(timeout=300)
            assert rerun.returncode == 0, output
    finally:
        ray_cluster.add_worker()  # later tests get two workers again
    # The node died mid-run (else nothing was lost to recover): the job running, some units done, not all.
    assert running and 1 <= done < 3, f"at the kill: job running {running}, {done} of 3 units done"
    assert shard_digests(target) == shard_digests(out)
    assert verify_output(Storage(str(target), StorageConfig())).samples == 40


def test_adding_a_modality_writes_only_its_folder_aligned_to_existing_keys(corpus, tmp_path):
    out = tmp_path / "grow"
    run_preprocess(recipe(corpus, out, "modalities=[rgb, caption]"), log=lambda _: None)
    before = shard_digests(out)
    log: list[str] = []
    report = run_preprocess(recipe(corpus, out, "modalities=[canny_edge, color_palette]"), log=log.append)
    assert any("add-canny_edge+color_palette" in line and "3 to do" in line for line in log)
    after = shard_digests(out)
    assert {k: v for k, v in after.items() if k in before} == before, "existing shards untouched"
    assert sorted({k.split("/")[0] for k in after} - {k.split("/")[0] for k in before}) == [
        "canny_edge", "color_palette"]
    assert verify_output(Storage(str(out), StorageConfig())).samples == 40  # all folders aligned, per the manifest
    assert report["folders"][:4] == ["rgb", "caption", "canny_edge", "color_palette"]
    # the grown output equals a one-shot run of all four, folder by folder
    once = tmp_path / "once"
    run_preprocess(recipe(corpus, once, "modalities=[rgb, caption, canny_edge, color_palette]"), log=lambda _: None)
    assert shard_digests(once) == after
    rerun: list[str] = []
    run_preprocess(recipe(corpus, out, "modalities=[canny_edge]"), log=rerun.append)
    assert all("0 to do" in line for line in rerun)


def test_tokenize_stage_writes_aligned_token_shards_that_decode_back(labelled, tmp_path, ray_cluster):
    import shutil

    import numpy as np

    from pipeline.tokenizers import decode_records, load_tokenizer, train_wordpiece

    out, _ = labelled
    root = tmp_path / "tok"
    shutil.copytree(out, root)
    captions = [m["txt"].decode() for p in sorted((root / "caption").glob("*.tar"))
                for _, m in iterate_shard(p.read_bytes())]
    tokenizer_dir = train_wordpiece(captions, vocab_size=4700).save(tmp_path / "wordpiece")
    tokenizers = ",".join(f"{m}: {tokenizer_dir}" for m in ("caption", "color_palette", "metadata"))
    job = run_job("--output", str(root), "--stages", "tokenize", "--set", f"tokenizers={{{tokenizers}}}",
                  address=ray_cluster.address)
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output

    summary = verify_output(Storage(str(root), StorageConfig()))  # every folder, tok_* included, holds the same keys
    assert {"tok_caption", "tok_color_palette", "tok_metadata"} <= set(summary.folders)
    report = json.loads((root / "report.json").read_text())
    tokenizer = load_tokenizer(tokenizer_dir)
    assert report["tokens"]["tok_caption"]["tokenizer_hash"] == tokenizer.content_hash
    assert 0 < report["tokens"]["tok_metadata"]["longest"] <= 40
    rows = [(k, np.load(__import__("io").BytesIO(m["npy"]))) for k, m in
            iterate_shard((root / "tok_caption" / "shard-000000.tar").read_bytes())]
    assert all(r.ndim == 2 and r.shape[0] == 1 and r.dtype == np.int16 for _, r in rows)
    texts = decode_records("caption", np.stack([np.pad(r[0], (0, 256 - r.shape[1])) for _, r in rows]), tokenizer)
    assert texts[0] == captions[0].lower()
    rerun = run_job("--output", str(root), "--stages", "tokenize", "--set", f"tokenizers={{{tokenizers}}}",
                    address=ray_cluster.address)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "0 to do" in output


def test_units_spread_over_the_worker_nodes(corpus, tmp_path, ray_cluster):
    report = run_preprocess(recipe(corpus, tmp_path / "spread"), log=lambda _: None)
    per_node = report["units_per_node_this_run"]
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeName"] in ray_cluster.live_workers()}
    assert sum(per_node.values()) == 3
    assert set(per_node) <= workers, "units run on worker nodes (the head offers no CPU)"
    assert len(per_node) == 2, f"3 units over 2 one-CPU workers use both: {per_node}"


def test_ground_truth_maps_follow_the_image_crop(tmp_path):
    """`source: ground_truth` takes the corpus's own depth/semseg maps, cut exactly like the RGB; samples without
    them are quarantined with their reason; the raw json rides along in `annotations`."""
    corpus = tmp_path / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=12, image_size=64, samples_per_shard=12,
                                    real_fraction=0.25))
    raw = {s["__key__"]: s for s in wds.WebDataset(str(corpus / "corpus-000000.tar"), shardshuffle=False)}
    out = tmp_path / "out"
    config = recipe(corpus, out, "modalities=[rgb, depth, semseg]", "image.resolution=64",
                    "labelers={depth: {source: ground_truth}, semseg: {source: ground_truth}}")
    report = run_preprocess(config, log=lambda _: None)
    photos = [k for k, s in raw.items() if "depth.npy" not in s]
    assert photos and report["samples_written"] == 12 - len(photos)
    quarantined = pq.read_table(out / "quarantine" / "quarantine.parquet").to_pylist()
    assert sorted(q["source_key"] for q in quarantined) == sorted(photos)
    assert {q["reason"] for q in quarantined} == {"missing_ground_truth"}
    storage = Storage(str(out), StorageConfig())
    depth = dict(iter_members(storage, "depth"))
    semseg = dict(iter_members(storage, "semseg"))
    annotations = dict(iter_members(storage, "annotations"))
    assert set(depth) == set(semseg) == set(annotations) == set(raw) - set(photos)
    for key in depth:
        truth = np.load(io.BytesIO(raw[key]["depth.npy"]))
        ours = np.load(io.BytesIO(depth[key]))
        assert ours.shape == (64, 64) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, truth, rtol=1e-6)  # 64 px scenes in, 64 px out: the identity crop
        classes = np.asarray(Image.open(io.BytesIO(semseg[key])))
        np.testing.assert_array_equal(classes, np.asarray(Image.open(io.BytesIO(raw[key]["semseg.png"]))))
        assert json.loads(annotations[key])["objects"] == json.loads(raw[key]["json"])["objects"]


def test_ground_truth_is_resampled_without_mixing_classes(tmp_path):
    from pipeline.data.decode import Crop, DecodeError
    from pipeline.data.encoding import encode_npy, encode_png
    from pipeline.data.ground_truth import ground_truth_payload

    classes = np.zeros((40, 60), dtype=np.uint8)
    classes[:, 30:] = 7  # two classes; bilinear resampling would invent values between them
    depth = np.linspace(1, 2, 40 * 60, dtype=np.float32).reshape(40, 60)
    crop = Crop(0, 10, 40, 40)
    semseg = np.asarray(Image.open(io.BytesIO(ground_truth_payload("semseg", encode_png(classes), crop, (60, 40), 16))))
    assert semseg.shape == (16, 16) and set(np.unique(semseg)) == {0, 7}
    resized = np.load(io.BytesIO(ground_truth_payload("depth", encode_npy(depth), crop, (60, 40), 16)))
    assert resized.shape == (16, 16) and depth[:, 10:50].min() <= resized.min() < resized.max() <= depth[:, 10:50].max()
    with pytest.raises(DecodeError, match="map is 60x40, the image 64x64"):
        ground_truth_payload("depth", encode_npy(depth), Crop(0, 0, 64, 64), (64, 64), 16)
    with pytest.raises(DecodeError, match="NaN"):
        ground_truth_payload("depth", encode_npy(np.full((40, 60), np.nan, np.float32)), crop, (60, 40), 16)
    with pytest.raises(DecodeError, match="bad_ground_truth"):
        ground_truth_payload("semseg", b"not a png", crop, (60, 40), 16)


def test_missing_weights_fail_before_any_work(corpus, tmp_path):
    config = recipe(corpus, tmp_path / "out", "modalities=[rgb, depth]")
    with pytest.raises(MissingWeightsError, match="labelers.depth.weights"):
        run_preprocess(config, log=lambda _: None)
    assert not (tmp_path / "out").exists()

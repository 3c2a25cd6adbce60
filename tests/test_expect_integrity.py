"""The integrity checks made to fail: `verify_output` on outputs broken one way at a time, and `AlignmentError`
from a run that adds a modality whose keys would differ from the output's. A check that never fires in a test
could be checking nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expected_images import BLUE, GREEN, RED, WHITE, encode, paint
from pipeline.data.inspect import OutputCorruptError, verify_output
from pipeline.data.preprocess import run_preprocess
from pipeline.data.shard_writer import AlignmentError
from pipeline.data.storage import Storage
from schemas.config import load_config
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig
from schemas.shards import MANIFEST_FILE

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("ray_session")
COLOURS = {"a": RED, "b": GREEN, "c": BLUE, "d": WHITE}  # two units of two samples


def folder_input(root: Path) -> Path:
    for key, colour in COLOURS.items():
        (root / "in").mkdir(parents=True, exist_ok=True)
        (root / "in" / f"{key}.png").write_bytes(encode(paint(32, 32, [], background=colour)))
    return root / "in"


def recipe(source, out, *overrides: str) -> PreprocessConfig:
    return load_config(PreprocessConfig, None, [f"input={source}", f"output={out}", "image.resolution=32",
                                                "reader.samples_per_unit=2", *overrides])


@pytest.fixture(scope="module")
def good_output(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    run_preprocess(recipe(folder_input(root), root / "out", "modalities=[rgb, caption]"), log=lambda _: None)
    assert verify_output(Storage(str(root / "out"), StorageConfig())).samples == 4
    return root / "out"


def edit_manifest(out: Path, edit) -> None:
    """Rewrite the manifest with `edit(rows) -> rows`, in the manifest's own schema."""
    table = pq.read_table(out / MANIFEST_FILE)
    pq.write_table(pa.Table.from_pylist(edit(table.to_pylist()), schema=table.schema), out / MANIFEST_FILE)


def row_of(rows: list[dict], folder: str, shard: int) -> dict:
    (row,) = [r for r in rows if r["folder"] == folder and r["shard"] == shard]
    return row


def verify(out: Path):
    return verify_output(Storage(str(out), StorageConfig()))


def test_a_changed_byte_fails_the_checksum(good_output, tmp_path):
    out = shutil.copytree(good_output, tmp_path / "out")
    shard = out / "rgb" / "shard-000001.tar"
    payload = bytearray(shard.read_bytes())
    payload[700] ^= 0x01  # inside the first member's JPEG data: the tar itself still reads fine
    shard.write_bytes(bytes(payload))
    with pytest.raises(OutputCorruptError, match="rgb/shard-000001.tar: sha256 differs"):
        verify(out)


def test_a_dropped_manifest_row_is_a_missing_shard(good_output, tmp_path):
    out = shutil.copytree(good_output, tmp_path / "out")
    edit_manifest(out, lambda rows: [r for r in rows if (r["folder"], r["shard"]) != ("caption", 1)])
    with pytest.raises(OutputCorruptError, match=r"shard 1 is missing in folders \['caption'\]"):
        verify(out)


def test_a_sample_count_that_is_not_the_shards(good_output, tmp_path):
    out = shutil.copytree(good_output, tmp_path / "out")

    def overcount(rows):
        row_of(rows, "crop_settings", 0)["samples"] = 3
        return rows

    edit_manifest(out, overcount)
    with pytest.raises(OutputCorruptError, match="crop_settings/shard-000000.tar: 2 samples, manifest says 3"):
        verify(out)


def test_a_folder_with_other_keys_is_misaligned(good_output, tmp_path):
    """Caption shard 1's tar in place of shard 0 (keys c, d instead of a, b), its manifest row consistent with
    the bytes: every checksum and count holds, only the keys differ across folders."""
    out = shutil.copytree(good_output, tmp_path / "out")
    shutil.copyfile(out / "caption" / "shard-000001.tar", out / "caption" / "shard-000000.tar")

    def swap(rows):
        first, second = row_of(rows, "caption", 0), row_of(rows, "caption", 1)
        first.update(sha256=second["sha256"], bytes=second["bytes"], samples=second["samples"])
        return rows

    edit_manifest(out, swap)
    with pytest.raises(OutputCorruptError, match="shard 0: folder .* holds other keys than"):
        verify(out)


def test_adding_a_modality_that_loses_a_sample_is_refused(tmp_path):
    """The input changed after the base run: one image no longer decodes, so the added folder would lack its key.
    The run refuses (AlignmentError naming the sample and why), and the output stays as the base run left it."""
    source = folder_input(tmp_path)
    out = tmp_path / "out"
    run_preprocess(recipe(source, out, "modalities=[rgb, caption]"), log=lambda _: None)
    manifest = (out / MANIFEST_FILE).read_bytes()
    (source / "c.png").write_bytes(b"no longer a png")
    with pytest.raises(AlignmentError, match=r"shard 1: the added modalities cover 1 of the 2 existing samples; "
                                             r"failed: c \(bad_image"):
        run_preprocess(recipe(source, out, "modalities=[canny_edge]"), log=lambda _: None)
    assert (out / MANIFEST_FILE).read_bytes() == manifest
    assert set(verify(out).folders) == {"rgb", "caption", "crop_settings", "source", "annotations"}


def parquet_input(root: Path, keys: list[str]) -> Path:
    (root / "in").mkdir(parents=True, exist_ok=True)
    images = [encode(paint(32, 32, [], background=colour)) for colour in COLOURS.values()]
    pq.write_table(pa.table({"key": keys, "image": images, "caption": ["x"] * len(keys)}), root / "in" / "t.parquet")
    return root / "in"


def test_the_job_refuses_an_added_modality_over_other_keys_in_one_line(tmp_path, ray_cluster):
    """Same rows, same unit listing, but a row's key changed since the base run: nothing failed, the keys simply
    differ. The job exits 1 with one line saying so, not a traceback."""
    source = parquet_input(tmp_path, ["a", "b", "c", "d"])
    out = tmp_path / "out"
    run_preprocess(recipe(source, out, "modalities=[rgb]"), log=lambda _: None)
    parquet_input(tmp_path, ["a", "b", "c", "renamed"])
    job = subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", "--address", ray_cluster.address, "--input", str(source),
         "--output", str(out), "--modalities", "caption", "--set", "image.resolution=32",
         "--set", "reader.samples_per_unit=2"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert job.returncode == 1, job.stderr[-3000:]
    errors = [line for line in job.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: shard 1: the added modalities cover 2 of the 2 existing samples; "
                      "the input changed since the first run"], job.stderr[-3000:]
    assert "Traceback" not in job.stderr, job.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["folders"][0] == "rgb"
    assert not any(r["folder"] == "caption" for r in pq.read_table(out / MANIFEST_FILE).to_pylist())

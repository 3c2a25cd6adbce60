"""Hostile inputs that once got through (issue 20, holes 3, 7, 8, 9, 12), each reproduced and now failing safe:
a quarantine record with its reason, or one clear error. Memory bounds are measured with tracemalloc, which sees
Python and numpy allocations, so a reader that expanded the payload again would fail them."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic
import pytest
from PIL import EpsImagePlugin, Image

from hostile_corpus import encode, rgb_image
from pipeline.data.decode import Crop, DecodeError, decode_image
from pipeline.data.ground_truth import ground_truth_payload
from pipeline.data.readers import InputError, RawSample, list_units, read_unit
from pipeline.data.storage import Storage
from pipeline.data.tar_io import tar_bytes
from schemas.common import StorageConfig
from schemas.config import ConfigError, load_config
from schemas.preprocess import ImageConfig, PreprocessConfig, ReaderConfig
from schemas.pretrain import PretrainConfig
from schemas.shards import MANIFEST_FILE, QuarantineRecord, Reason
from schemas.train_tokenizer import TrainTokenizerConfig

REPO = Path(__file__).resolve().parent.parent
MiB, GiB = 1024**2, 1024**3
JPEG = encode(rgb_image(7), "JPEG")


def read_all(root: Path, config: ReaderConfig = ReaderConfig()) -> list:
    source = Storage(str(root), StorageConfig())
    return [item for unit in list_units(source, config) for item in read_unit(source, unit, config)]


def peak_bytes(action) -> tuple[object, int]:
    """What action() returns, and the most memory Python and numpy held above the start while it ran."""
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def records(items: list) -> dict[str, QuarantineRecord]:
    return {r.source_key: r for r in items if isinstance(r, QuarantineRecord)}


def samples(items: list) -> dict[str, RawSample]:
    return {s.key: s for s in items if isinstance(s, RawSample)}


# --- hole 3: unbounded reads --------------------------------------------------------------------------------------
def sparse_member_tar(name: str, real_size: int) -> bytes:
    """A GNU sparse member (type 'S') whose one 512-byte data block sits at the end of `real_size` bytes of holes.
    tarfile reads such members but cannot write them, so the header's sparse map is filled in here."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 512
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:398] = tarfile.itn(real_size - 512, 12, tarfile.GNU_FORMAT)  # first map entry: offset,
    header[398:410] = tarfile.itn(512, 12, tarfile.GNU_FORMAT)  # numbytes
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # the expanded size
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[148:155] = b"%06o\x00" % sum(header)
    return bytes(header) + b"x" * 512 + tar_bytes([("ok.jpg", JPEG)])


def test_a_sparse_member_is_refused_without_expanding_its_holes(tmp_path):
    payload = sparse_member_tar("holes.jpg", GiB)
    assert len(payload) < 16 * 1024
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:  # the attack: a few KB that say 1 GiB
        assert tar.getmember("holes.jpg").issparse() and tar.getmember("holes.jpg").size == GiB
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.tar").write_bytes(payload)
    items, peak = peak_bytes(lambda: read_all(tmp_path / "in"))
    assert records(items)["holes.jpg"].reason == Reason.UNSAFE_MEMBER and "sparse" in records(items)["holes.jpg"].detail
    assert list(samples(items)) == ["ok"], "the members after it are still read"
    assert peak < 4 * MiB, f"reading a 10 KB sparse tar held {peak / MiB:.1f} MiB"


def test_a_compressed_tar_is_refused_before_anything_is_decompressed(tmp_path):
    payload = gzip.compress(tar_bytes([("zeros.jpg", bytes(32 * MiB)), ("ok.jpg", JPEG)]), mtime=0)
    assert len(payload) < 64 * 1024
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.tar").write_bytes(payload)  # named .tar, as the attack had it
    items, peak = peak_bytes(lambda: read_all(tmp_path / "in"))
    (record,) = items
    assert record.reason == Reason.UNSAFE_MEMBER and "gzip-compressed tar refused" in record.detail
    assert peak < 4 * MiB, f"refusing a gzip tar held {peak / MiB:.1f} MiB"


def test_a_member_over_the_limit_is_refused_from_its_header_and_its_sample_goes_whole(tmp_path):
    (tmp_path / "in").mkdir()
    big = os.urandom(3 * MiB)
    (tmp_path / "in" / "part.tar").write_bytes(tar_bytes([
        ("big.txt", b"caption of the big one"), ("big.jpg", big), ("big.json", b"{}"), ("after.jpg", JPEG)]))
    items, peak = peak_bytes(lambda: read_all(tmp_path / "in", ReaderConfig(max_member_bytes=MiB)))
    assert records(items)["big"].reason == Reason.DECOMPRESSION_BOMB
    assert "by its tar header" in records(items)["big"].detail and len(records(items)) == 1
    assert list(samples(items)) == ["after"], "nothing of the refused sample is kept"
    assert peak < MiB, f"skipping a 3 MiB member held {peak / MiB:.1f} MiB"


def test_a_folder_file_over_the_limit_is_refused_from_its_size(tmp_path):
    (tmp_path / "big.jpg").write_bytes(os.urandom(3 * MiB))
    (tmp_path / "small.jpg").write_bytes(JPEG)
    items, peak = peak_bytes(lambda: read_all(tmp_path, ReaderConfig(max_member_bytes=MiB)))
    assert records(items)["big"].reason == Reason.DECOMPRESSION_BOMB and list(samples(items)) == ["small"]
    assert peak < MiB


def npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """An .npy file's magic and header with no data after it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_a_ground_truth_map_is_size_checked_before_it_is_decoded():
    crop = Crop(0, 0, 64, 64)
    huge = npy_header((100_000, 100_000))  # 128 bytes claiming an 80 GB array

    def decode_huge() -> DecodeError:
        with pytest.raises(DecodeError, match="map is 100000x100000, the image 64x64") as caught:
            ground_truth_payload("depth", huge, crop, (64, 64), 16)
        return caught.value

    error, peak = peak_bytes(decode_huge)
    assert error.reason == Reason.BAD_GROUND_TRUTH and peak < MiB, f"refusing it held {peak / MiB:.1f} MiB"
    short = npy_header((64, 64))  # the right size by its header, but no data behind it
    with pytest.raises(DecodeError, match="0 data bytes"):
        ground_truth_payload("depth", short, crop, (64, 64), 16)
    # A PNG map: its header's size is compared before a pixel is inflated; and only PNG is opened.
    big_png = encode(Image.new("L", (640, 640)), "PNG")
    with pytest.raises(DecodeError, match="map is 640x640, the image 64x64"):
        ground_truth_payload("semseg", big_png, crop, (64, 64), 16)
    with pytest.raises(DecodeError, match="bad_ground_truth"):
        ground_truth_payload("semseg", encode(Image.new("L", (64, 64)), "TIFF"), crop, (64, 64), 16)


# --- hole 7: output inside input, duplicate keys across units ------------------------------------------------------
@pytest.mark.parametrize("source, output", [
    ("{tmp}/in", "{tmp}/in"), ("{tmp}/in", "{tmp}/in/out"), ("{tmp}/in/", "{tmp}/in/./sub/../out"),
    ("{tmp}/in", "{tmp}/alias/out"),  # alias -> in: the same folder by another name
    ("s3://bucket/in", "s3://bucket/in"), ("s3://bucket/in/", "s3://bucket/in/out"), ("s3://bucket", "s3://bucket/o"),
])
def test_output_inside_input_is_refused(tmp_path, source, output):
    (tmp_path / "in").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    overrides = [f"input={source.format(tmp=tmp_path)}", f"output={output.format(tmp=tmp_path)}"]
    with pytest.raises(ConfigError, match="is inside input"):
        load_config(PreprocessConfig, None, overrides)


@pytest.mark.parametrize("source, output", [("{tmp}/in", "{tmp}/in2"), ("s3://bucket/in", "s3://bucket/in-out"),
                                            ("s3://bucket/in", "s3://other/in"), ("{tmp}/in/raw", "{tmp}/in")])
def test_output_beside_input_is_accepted(tmp_path, source, output):
    PreprocessConfig(input=source.format(tmp=tmp_path), output=output.format(tmp=tmp_path))


def test_the_job_refuses_output_inside_input_in_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    done = subprocess.run([sys.executable, "-m", "jobs.preprocess", "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "in" / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "is inside input" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # a config error: its header line and the one bad value
    assert not (tmp_path / "in" / "out").exists()


def test_one_key_twice_in_a_folder_unit_is_quarantined_once(tmp_path):
    (tmp_path / "x.jpg").write_bytes(JPEG)
    (tmp_path / "x.png").write_bytes(encode(rgb_image(8), "PNG"))
    items = read_all(tmp_path)
    assert list(samples(items)) == ["x"] and records(items)["x"].reason == Reason.DUPLICATE_KEY


def test_a_key_shared_by_two_units_fails_the_job_before_the_manifest(tmp_path, ray_session):
    from pipeline.data.preprocess import run_preprocess

    (tmp_path / "in").mkdir()
    for name, keys in (("a.tar", ("one", "same")), ("b.tar", ("same", "two"))):
        (tmp_path / "in" / name).write_bytes(tar_bytes([(f"{key}.jpg", JPEG) for key in keys]))
    config = load_config(PreprocessConfig, None, [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
                                                  "image.resolution=32", "modalities=[rgb]"])
    with pytest.raises(InputError, match=r"'same' comes from two input units, a.tar \(shard 0\) and b.tar"):
        run_preprocess(config, log=lambda _: None)
    assert not (tmp_path / "out" / MANIFEST_FILE).exists(), "no manifest: the loader has nothing to train on"
    with pytest.raises(InputError, match="'same'"):  # and a rerun does not slip past it
        run_preprocess(config, log=lambda _: None)


# --- hole 8: image formats -----------------------------------------------------------------------------------------
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nnewpath 0 0 moveto 32 32 lineto stroke\n%%EOF\n"


@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that only leaves a mark when run: PIL's EPS plugin runs `gs` to render."""
    marker = tmp_path / "ghostscript-ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # PIL caches where it found gs
    return marker


def test_eps_named_jpg_never_reaches_ghostscript(fake_ghostscript, tmp_path):
    with pytest.raises(subprocess.CalledProcessError):  # the attack: without an allow-list PIL runs Ghostscript
        Image.open(io.BytesIO(EPS)).load()
    assert fake_ghostscript.exists()
    fake_ghostscript.unlink()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.tar").write_bytes(tar_bytes([("eps.jpg", EPS), ("eps.txt", b"a caption")]))
    (sample,) = read_all(tmp_path / "in")
    with pytest.raises(DecodeError, match="not an image in an allowed format") as caught:
        decode_image(sample.image, ImageConfig())
    assert caught.value.reason == Reason.BAD_IMAGE
    assert not fake_ghostscript.exists(), "Ghostscript ran"
    decode_image(JPEG, ImageConfig(formats=("JPEG",)))  # an allowed format still decodes
    with pytest.raises(DecodeError, match=r"allowed format \(PNG\)"):
        decode_image(JPEG, ImageConfig(formats=("PNG",)))
    with pytest.raises(pydantic.ValidationError):
        ImageConfig(formats=("EPS",))


# --- hole 9: links -------------------------------------------------------------------------------------------------
def test_no_reader_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(JPEG)
    (outside / "secret.txt").write_text("the secret caption")
    (outside / "part.tar").write_bytes(tar_bytes([("secret.jpg", JPEG)]))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "own.jpg").write_bytes(JPEG)
    (folder / "own.txt").symlink_to(outside / "secret.txt")  # a sidecar link
    (folder / "linked.jpg").symlink_to(outside / "secret.jpg")  # an image link
    (folder / "dir").symlink_to(outside)  # a linked folder: never entered
    os.mkfifo(folder / "fifo.jpg")  # would block a reader forever
    items = read_all(folder)
    assert records(items)["own"].reason == Reason.UNSAFE_MEMBER and "symbolic link" in records(items)["own"].detail
    assert records(items)["linked"].reason == Reason.UNSAFE_MEMBER
    fifo = records(items)["fifo"]
    assert fifo.reason == Reason.UNSAFE_MEMBER and "not a regular file" in fifo.detail
    assert not samples(items) and not any("secret" in r.source_uri for r in records(items).values())

    tars = tmp_path / "tars"
    tars.mkdir()
    (tars / "part.tar").symlink_to(outside / "part.tar")
    (record,) = read_all(tars)
    assert record.reason == Reason.UNSAFE_MEMBER and "symbolic link" in record.detail

    table = tmp_path / "table"
    (table / "images").mkdir(parents=True)
    (table / "images" / "a.jpg").symlink_to(outside / "secret.jpg")
    (table / "up").symlink_to(outside)
    pq.write_table(pa.table({"key": ["a", "b"], "image": ["images/a.jpg", "up/secret.jpg"], "caption": ["", ""]}),
                   table / "data.parquet")
    (table / "linked.parquet").symlink_to(table / "data.parquet")
    items = read_all(table)  # rows a and b of data.parquet, and linked.parquet as a whole
    assert not samples(items) and len(items) == 3
    assert {r.reason for r in items} == {Reason.UNSAFE_MEMBER} and items[-1].source_uri.endswith("linked.parquet")


# --- hole 12: names and paths --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "../up", "a/b", "a\\b", ".hidden", "/abs", ""])
def test_a_run_name_cannot_leave_the_storage(name):
    with pytest.raises(pydantic.ValidationError):
        PretrainConfig(name=name)
    with pytest.raises(pydantic.ValidationError):
        TrainTokenizerConfig(name=name)


def test_plain_run_names_are_accepted():
    assert PretrainConfig(name="tiny-run_2.v3").name == "tiny-run_2.v3"


def test_a_file_given_as_input_is_not_a_folder(tmp_path):
    (tmp_path / "part.tar").write_bytes(tar_bytes([("a.jpg", JPEG)]))
    with pytest.raises(InputError, match="is a file, not a folder"):
        list_units(Storage(str(tmp_path / "part.tar"), StorageConfig()), ReaderConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is empty"):
        list_units(Storage(str(tmp_path / "empty"), StorageConfig()), ReaderConfig())

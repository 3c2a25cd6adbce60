"""The job's other input formats, each checked sample by sample against what was put in: Parquet whose image
column holds paths (in a bucket on moto's S3 server) and a folder tree with sidecar captions and metadata. Every
image is one flat colour of its own, so a sample's pixels say which source file it was made from."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from expected_images import BLUE, GREEN, RED, WHITE, YELLOW, assert_pixels, decode_jpeg, encode, paint
from pipeline.data.inspect import verify_output
from pipeline.data.preprocess import run_preprocess
from pipeline.data.storage import Storage
from schemas.config import load_config
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig

pytestmark = pytest.mark.usefixtures("ray_session")
RES = 32


def flat(colour, width=48, height=32) -> bytes:
    return encode(paint(height, width, [], background=colour))


def read_folder(out, folder: str, shard: int) -> dict[str, dict]:
    url = str(out / folder / f"shard-{shard:06d}.tar")
    return {sample["__key__"]: sample for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False)}


def test_parquet_with_image_paths_on_s3(tmp_path, s3_bucket):
    """Paths are relative to the parquet file's folder; a missing file and a path that climbs out of the input
    root (to an object that does exist) are quarantined, the rest written with their own pixels and captions."""
    bucket, storage_overrides = s3_bucket
    config = load_config(PreprocessConfig, None, [
        f"input=s3://{bucket}/raw", f"output={tmp_path / 'out'}", f"image.resolution={RES}",
        "modalities=[rgb, caption]", "reader.samples_per_unit=2", *storage_overrides])
    raw = Storage(config.input, config.storage)
    raw.write_atomic("images/red.png", flat(RED))
    raw.write_atomic("images/deeper/blue.png", flat(BLUE))
    Storage(f"s3://{bucket}", config.storage).write_atomic("outside.png", flat(GREEN))  # beside the input root
    table = pa.table({
        "key": ["r", "b", "gone", "escape", "y"],
        "image": ["../images/red.png", "../images/deeper/blue.png", "../images/missing.png", "../../outside.png",
                  "yellow.png"],
        "caption": ["a red card", "a blue card", "nothing", "out of bounds", "a yellow card"],
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    raw.write_atomic("table/part.parquet", sink.getvalue().to_pybytes())
    raw.write_atomic("table/yellow.png", flat(YELLOW))

    report = run_preprocess(config, log=lambda _: None)

    out = tmp_path / "out"
    assert report["units"] == 3 and report["samples_written"] == 3
    quarantined = {q["source_key"]: q for q in pq.read_table(out / "quarantine/quarantine.parquet").to_pylist()}
    assert {k: q["reason"] for k, q in quarantined.items()} == {"gone": "missing_image", "escape": "missing_image"}
    assert quarantined["gone"]["source_uri"] == f"s3://{bucket}/raw/table/part.parquet#row=2"
    expected = {0: {"r": (RED, "a red card"), "b": (BLUE, "a blue card")}, 1: {}, 2: {"y": (YELLOW, "a yellow card")}}
    for shard, samples in expected.items():
        rgb, caption = read_folder(out, "rgb", shard), read_folder(out, "caption", shard)
        assert list(rgb) == list(caption) == list(samples), shard
        for key, (colour, text) in samples.items():
            assert_pixels(decode_jpeg(rgb[key]["jpg"]), paint(RES, RES, [], background=colour), what=key)
            assert caption[key]["txt"].decode() == text
    source = read_folder(out, "source", 2)["y"]
    assert json.loads(source["json"]) == {"key": "y", "uri": f"s3://{bucket}/raw/table/part.parquet#row=4",
                                          "crop": [0, 8, 32, 32]}  # top, left, height, width in the 48 x 32 source
    assert verify_output(Storage(str(out), StorageConfig())).samples == 3


def test_folder_tree_with_sidecars(tmp_path):
    """Files in sorted path order, `samples_per_unit` to a shard; keys from the path, '/' as '_' and a dot as '-'
    plus 8 hex digits of the name's sha1 (schemas/keys.py); a sidecar .txt is the caption and a sidecar .json the
    raw metadata (kept whole in `annotations`)."""
    files = {"a/one.png": RED, "a/two.v2.png": GREEN, "b/three.jpg": BLUE, "b/c/four.png": WHITE,
             "five.png": YELLOW}
    for path, colour in files.items():
        (tmp_path / "in" / path).parent.mkdir(parents=True, exist_ok=True)
        payload = encode(paint(32, 48, [], background=colour), "JPEG" if path.endswith(".jpg") else "PNG")
        (tmp_path / "in" / path).write_bytes(payload)
    (tmp_path / "in" / "a/two.v2.txt").write_text("  green, with spaces around  ")
    (tmp_path / "in" / "b/c/four.json").write_text(json.dumps({"photographer": "nobody", "iso": 100}))
    config = load_config(PreprocessConfig, None, [
        f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", f"image.resolution={RES}",
        "modalities=[rgb, caption, metadata]", "reader.samples_per_unit=2"])

    report = run_preprocess(config, log=lambda _: None)

    out = tmp_path / "out"
    assert report["units"] == 3 and report["samples_written"] == 5 and report["samples_quarantined"] == 0
    # sorted listing: a/one.png, a/two.v2.png | b/c/four.png, b/three.jpg | five.png
    two = f"a_two-v2-{hashlib.sha1(b'a_two.v2').hexdigest()[:8]}"
    shards = [("a_one", RED), (two, GREEN)], [("b_c_four", WHITE), ("b_three", BLUE)], [("five", YELLOW)]
    for shard, samples in enumerate(shards):
        rgb = read_folder(out, "rgb", shard)
        assert list(rgb) == [key for key, _ in samples], shard
        for key, colour in samples:
            assert_pixels(decode_jpeg(rgb[key]["jpg"]), paint(RES, RES, [], background=colour), what=key)
    captions = {k: s["txt"].decode() for shard in range(3) for k, s in read_folder(out, "caption", shard).items()}
    assert captions == {"a_one": "", two: "green, with spaces around", "b_c_four": "", "b_three": "",
                        "five": ""}
    annotations = read_folder(out, "annotations", 1)
    assert json.loads(annotations["b_c_four"]["json"]) == {"photographer": "nobody", "iso": 100}
    assert json.loads(annotations["b_three"]["json"]) == {}
    metadata = json.loads(read_folder(out, "metadata", 0)[two]["json"])
    assert (metadata["original_width"], metadata["original_height"], metadata["caption_n_words"]) == (48, 32, 4)
    # ml-4m's crop_settings describe the stored image (an identity crop); the crop of the source is in `source`
    crop = np.load(io.BytesIO(read_folder(out, "crop_settings", 2)["five"]["npy"]))
    assert crop.tolist() == [[0, 0, RES, RES, 0]]
    assert json.loads(read_folder(out, "source", 2)["five"]["json"])["crop"] == [0, 8, 32, 32]  # (48 - 32) // 2

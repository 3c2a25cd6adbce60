"""Readers and decoding on their own, without Ray: hostile tars, every PIL mode, strict captions and JSON."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hostile_corpus import MAX_PIXELS, unusual_images, write_hostile_corpus
from pipeline.data.decode import DecodeError, decode_caption, decode_image, decode_metadata
from pipeline.data.readers import InputError, RawSample, list_units, read_unit
from pipeline.data.storage import Storage
from schemas.common import StorageConfig
from schemas.preprocess import CaptionConfig, ImageConfig, ReaderConfig
from schemas.shards import QuarantineRecord, Reason


def storage(path) -> Storage:
    return Storage(str(path), StorageConfig())


def read_everything(root, config=ReaderConfig()):
    source = storage(root)
    return [item for unit in list_units(source, config) for item in read_unit(source, unit, config)]


def test_hostile_tars_are_read_without_following_anything(tmp_path):
    write_hostile_corpus(tmp_path / "in")
    items = read_everything(tmp_path / "in")
    records = {(r.source_key, r.reason) for r in items if isinstance(r, QuarantineRecord)}
    for name in ("/etc/passwd.jpg", "../escape.jpg", "sub/../../up.jpg", "link.jpg", "hard.jpg", "fifo.jpg"):
        assert (name, Reason.UNSAFE_MEMBER) in records
    assert ("bad key", Reason.INVALID_KEY) in records and ("ok_before", Reason.DUPLICATE_KEY) in records
    assert ("cut_2", Reason.TRUNCATED) in records
    keys = [s.key for s in items if isinstance(s, RawSample)]
    assert "cut_0" in keys and "cut_1" in keys and "cut_2" not in keys and "cut_3" not in keys
    assert len(keys) == len(set(keys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"], "reading wrote nothing anywhere"


def test_listing_is_sorted_and_deterministic(tmp_path):
    for name in ("b.tar", "a.tar", "c.tar"):
        (tmp_path / name).write_bytes(b"")
    units = list_units(storage(tmp_path), ReaderConfig())
    assert [u.path for u in units] == ["a.tar", "b.tar", "c.tar"] and [u.index for u in units] == [0, 1, 2]


def test_missing_or_empty_input_is_a_job_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_units(storage(tmp_path / "nope"), ReaderConfig())
    with pytest.raises(InputError, match="empty"):
        list_units(storage(tmp_path), ReaderConfig())


def test_parquet_reader_with_bytes_and_paths(tmp_path):
    image = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(image, format="PNG")
    (tmp_path / "img.png").write_bytes(image.getvalue())
    table = pa.table({"key": ["a", "b.c", "d"], "image": [image.getvalue(), None, None],
                      "caption": ["red", "dotted key", "missing"]})
    pq.write_table(table, tmp_path / "data.parquet")
    items = read_everything(tmp_path, ReaderConfig(samples_per_unit=2))
    samples = [i for i in items if isinstance(i, RawSample)]
    assert [s.key for s in samples][0] == "a" and "." not in samples[1].key
    assert samples[0].image == image.getvalue() and samples[0].caption == b"red"


def test_folder_reader_uses_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "sub" / "x.1.jpg")
    (tmp_path / "sub" / "x.1.txt").write_text("a blue square")
    (sample,) = read_everything(tmp_path)
    assert sample.caption == b"a blue square" and "." not in sample.key and sample.image


@pytest.mark.parametrize("key", sorted(unusual_images()))
def test_every_pil_mode_becomes_rgb_at_resolution(key):
    ext, payload = unusual_images()[key]
    pixels, crop, size = decode_image(payload, ImageConfig(resolution=24))
    assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8
    assert crop.height == crop.width == min(size)


def test_sixteen_bit_is_rescaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    pixels, _, _ = decode_image(buffer.getvalue(), ImageConfig(resolution=64))
    assert pixels.max() > 240 and pixels.min() < 15 and len(np.unique(pixels)) > 100


def test_bomb_guard_refuses_before_decoding():
    buffer = io.BytesIO()
    Image.new("1", (1100, 1000)).save(buffer, format="PNG")
    with pytest.raises(DecodeError) as info:
        decode_image(buffer.getvalue(), ImageConfig(max_pixels=MAX_PIXELS))
    assert info.value.reason is Reason.DECOMPRESSION_BOMB


@pytest.mark.parametrize("payload,reason", [
    (b"\xff\xfe", Reason.BAD_CAPTION), (b"x" * 20, Reason.BAD_CAPTION), (b"a\x00", Reason.BAD_CAPTION)])
def test_bad_captions(payload, reason):
    with pytest.raises(DecodeError) as info:
        decode_caption(payload, CaptionConfig(max_chars=10))
    assert info.value.reason is reason


def test_caption_rules():
    assert decode_caption("  caf\u00e9  ".encode(), CaptionConfig()) == "caf\u00e9"
    assert decode_caption(None, CaptionConfig()) == ""
    with pytest.raises(DecodeError):
        decode_caption(None, CaptionConfig(required=True))


@pytest.mark.parametrize("payload", [b'{"a": NaN}', b'{"a": 1, "a": 1}', b"[]", b"{", b'{"a": Infinity}'])
def test_metadata_is_strict(payload):
    with pytest.raises(DecodeError) as info:
        decode_metadata(payload)
    assert info.value.reason is Reason.BAD_METADATA


def test_metadata_accepts_plain_objects():
    assert decode_metadata(json.dumps({"a": [1, 2.5, None]}).encode()) == {"a": [1, 2.5, None]}

"""Sample keys and the key-hash split, shard names, the manifest, unit record and quarantine schemas, and the one
shard commit and manifest reader."""

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.manifest import QUARANTINE_FILE, folder_rows, read_manifest, write_manifest, write_quarantine
from pipeline.data.storage import Storage
from pipeline.data.tar_io import commit_shard, commit_token_shard
from schemas.keys import InvalidKeyError, in_holdout, make_key, sanitize_key, validate_key
from schemas.common import StorageConfig
from schemas.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    ManifestRow,
    QuarantineRecord,
    Reason,
    Stage,
    UnitRecord,
    braceexpand_pattern,
    shard_index,
    shard_name,
)


@pytest.mark.parametrize("bad", ["", "a.b", "a/b", "../x", "a b", "x" * 200, "é"])
def test_invalid_keys(bad):
    with pytest.raises(InvalidKeyError):
        validate_key(bad)


def test_make_and_sanitize_keys():
    assert make_key("scene", 42) == "scene_000000042"
    assert sanitize_key("plain_key-1") == "plain_key-1"
    a, b = sanitize_key("img.001"), sanitize_key("img-001")
    assert validate_key(a) and a != b, "sanitized names that collide stay apart"
    assert sanitize_key("img.001") == a, "stable"


def test_shard_names_round_trip():
    assert shard_name(42) == "shard-000042.tar"
    assert shard_index("shard-000042.tar") == 42
    with pytest.raises(ValueError):
        shard_index("shard-42.tar")
    assert braceexpand_pattern("/d", ["rgb", "caption"], 3) == "/d/[rgb,caption]/shard-{000000..000002}.tar"


def test_manifest_schema_is_versioned_and_sorted(tmp_path):
    rows = [ManifestRow("rgb", "rgb", shard, f"rgb/{shard_name(shard)}", 2, 10, "0" * 64, ("u",))
            for shard in (2, 0, 1)]
    write_manifest(Storage(str(tmp_path), StorageConfig()), rows)
    table = pq.read_table(tmp_path / MANIFEST_FILE)
    # Parquet names a list's child "element" where Arrow says "item": the same type.
    assert [(f.name, str(f.type).replace("element", "item"), f.nullable) for f in table.schema] == \
        [(f.name, str(f.type), f.nullable) for f in MANIFEST_SCHEMA]
    assert table.schema.metadata[b"tessera.format_version"] == str(FORMAT_VERSION).encode()
    assert table.column("shard").to_pylist() == [0, 1, 2]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        pa.Table.from_pylist([{"folder": "rgb", "shard": "not-a-number"}], schema=MANIFEST_SCHEMA)


def test_quarantine_records(tmp_path):
    record = QuarantineRecord("s3://b/x.tar", "k1", Stage.DECODE, Reason.BAD_IMAGE, "cannot identify image")
    write_quarantine(Storage(str(tmp_path), StorageConfig()), [record])
    table = pq.read_table(tmp_path / QUARANTINE_FILE)
    assert table.schema.equals(QUARANTINE_SCHEMA)
    assert table.to_pylist()[0] == {"source_uri": "s3://b/x.tar", "source_key": "k1", "stage": "decode",
                                   "reason": "bad_image", "detail": "cannot identify image"}


def test_holdout_split_is_sha256_of_salt_and_key():
    # sha256("abc") starts ba7816bf (the FIPS 180-2 test vector): 0xba7816bf / 2**32 = 0.72839...
    assert in_holdout("abc", 0.7284) and not in_holdout("abc", 0.7283)
    assert in_holdout("bc", 0.7284, salt="a") and not in_holdout("bc", 0.7283, salt="a")
    keys = [f"sample_{i:06d}" for i in range(4000)]
    small, large = ({k for k in keys if in_holdout(k, f)} for f in (0.05, 0.3))
    assert small < large  # without a salt, splits nest
    assert 0.04 < len(small) / len(keys) < 0.06 and 0.27 < len(large) / len(keys) < 0.33
    salted = {k for k in keys if in_holdout(k, 0.3, salt="eval")}
    assert 0.2 < len(salted & large) / len(large) < 0.4  # a salt draws an independent split


def test_unit_records_and_manifest_rows_round_trip(tmp_path):
    row = ManifestRow("tok_rgb", "rgb", 3, "tok_rgb/shard-000003.tar", 2, 10, "0" * 64, ("rgb/shard-000003.tar",),
                      token_count=32, tokenizer_id="rgb-vq", tokenizer_hash="ab", longest_row=16)
    record = UnitRecord(3, "unit label", 3, 2, (row,), (QuarantineRecord("u", "k", Stage.READ, Reason.TRUNCATED),))
    assert UnitRecord.from_json(record.to_json()) == record
    assert UnitRecord.from_json(record.to_json()).to_json() == record.to_json()
    storage = Storage(str(tmp_path), StorageConfig())
    write_manifest(storage, [row])
    assert read_manifest(storage) == [row]
    older = {k: v for k, v in row.as_dict().items() if k != "longest_row"}  # a manifest from before the column
    assert ManifestRow.from_dict(older).longest_row is None


def test_committed_shards_are_what_the_manifest_reader_returns(tmp_path):
    storage = Storage(str(tmp_path), StorageConfig())
    caption = commit_shard(storage, "caption", 1, [("k1.txt", b"a cat"), ("k2.txt", b"a dog")], modality="caption",
                           source_units=("unit-1",))
    tokens = commit_token_shard(storage, "caption", 1, ["k1", "k2"],
                                [np.array([5, 6, 7], np.int16), np.array([[5, 6]], np.int16)], tokenizer_id="wp")
    aux = commit_shard(storage, "source", 0, [])
    write_manifest(storage, [tokens, aux, caption])
    with tarfile.open(tmp_path / "caption/shard-000001.tar") as tar:
        assert tar.getnames() == ["k1.txt", "k2.txt"] and tar.extractfile("k2.txt").read() == b"a dog"
    with tarfile.open(tmp_path / "tok_caption/shard-000001.tar") as tar:
        first = np.load(io.BytesIO(tar.extractfile("k1.npy").read()))
    assert first.shape == (1, 3) and first.dtype == np.int16
    assert (caption.samples, caption.bytes) == (2, (tmp_path / "caption/shard-000001.tar").stat().st_size)
    assert (tokens.token_count, tokens.longest_row, tokens.tokenizer_id) == (5, 3, "wp")
    assert (aux.samples, aux.modality) == (0, None)
    assert pq.read_table(tmp_path / MANIFEST_FILE).column_names == MANIFEST_SCHEMA.names
    rows = read_manifest(storage)
    assert rows == [caption, aux, tokens]  # typed rows, in (folder, shard) order
    assert folder_rows(rows, "tok_caption") == [tokens] and folder_rows(rows, "rgb") == []

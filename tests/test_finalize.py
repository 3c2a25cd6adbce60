"""The preprocess job's finalize with flat memory: manifest and quarantine spilled to disk and published whole,
records and source tars read many at a time in order, keys checked through hashed buckets."""

import dataclasses
import io
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import S3_TEST_KEY, S3_TEST_SECRET, new_bucket
from pipeline.data import manifest as manifest_module
from pipeline.data import unique_keys
from pipeline.data.finalize import RowDigest, record_key_hashes
from pipeline.data.manifest import QUARANTINE_FILE, read_manifest, write_manifest, write_quarantine
from pipeline.data.readers import InputError
from pipeline.data.shard_writer import source_relpath
from pipeline.data.storage import Storage
from schemas.common import StorageConfig
from schemas.keys import decode_key_hashes, encode_key_hashes, key_hash
from schemas.shards import MANIFEST_FILE, ManifestRow, QuarantineRecord, Reason, Stage, UnitRecord, shard_name


def row(folder: str, shard: int, sha: str = "0" * 64) -> ManifestRow:
    return ManifestRow(folder, folder, shard, f"{folder}/{shard_name(shard)}", 1, 10 + shard, sha, ("u",))


def test_manifest_spills_in_pieces_and_is_published_in_folder_then_shard_order(tmp_path, monkeypatch):
    # Tiny spill batches and row groups, so that a few hundred rows cross every boundary the streamed path has.
    monkeypatch.setattr(manifest_module, "SPILL_ROWS", 7)
    monkeypatch.setattr(manifest_module, "ROW_GROUP_ROWS", 50)
    rows = [row(folder, shard) for shard in range(120) for folder in ("tok_rgb", "rgb", "caption")]  # as finalize
    edited = [row("depth", shard) for shard in (5, 3, 9, 3)]  # out of order, one shard twice: sorted, stably
    edited[3] = row("depth", 3, sha="f" * 64)
    storage = Storage(str(tmp_path), StorageConfig())
    write_manifest(storage, rows + edited)
    expected = sorted(rows + edited, key=lambda r: (r.folder, r.shard))  # Python's sort is stable too
    assert read_manifest(storage) == expected
    assert pq.ParquetFile(tmp_path / MANIFEST_FILE).num_row_groups > 1
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")], "no temporary file is left"


def test_an_empty_manifest_and_a_long_quarantine_table_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_module, "SPILL_ROWS", 3)
    storage = Storage(str(tmp_path), StorageConfig())
    write_manifest(storage, [])
    assert read_manifest(storage) == []
    records = [QuarantineRecord(f"u{i}", f"k{i}", Stage.DECODE, Reason.BAD_IMAGE, "x") for i in range(10)]
    write_quarantine(storage, records)
    table = pq.read_table(tmp_path / QUARANTINE_FILE)
    assert [QuarantineRecord.from_row(r) for r in table.to_pylist()] == records


def test_publish_file_replaces_the_object_whole_on_s3(s3_endpoint, tmp_path):
    bucket, _ = new_bucket(s3_endpoint)
    config = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1", access_key_id=S3_TEST_KEY,
                           secret_access_key=S3_TEST_SECRET)
    storage = Storage(f"s3://{bucket}/out", config)
    local = tmp_path / "big.bin"
    for payload in (b"first" * 1000, b"second"):
        local.write_bytes(payload)
        storage.publish_file("deep/er/file.bin", str(local))
        assert storage.read_bytes("deep/er/file.bin") == payload


def test_read_many_keeps_the_order_and_raises_what_a_read_raises(tmp_path):
    storage = Storage(str(tmp_path), StorageConfig())
    for i in range(100):
        storage.write_atomic(f"f/{i}", str(i).encode())
    assert [int(p) for p in storage.read_many((f"f/{i}" for i in range(99, -1, -1)), in_flight=8)] == \
        list(range(99, -1, -1))
    with pytest.raises(FileNotFoundError):
        list(storage.read_many(["f/1", "f/missing", "f/2"]))


def write_source_shards(storage: Storage, keys_per_shard: list[list[str]]) -> dict[int, str]:
    for index, keys in enumerate(keys_per_shard):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for key in keys:
                info = tarfile.TarInfo(f"{key}.json")
                info.size = 2
                tar.addfile(info, io.BytesIO(b"{}"))
        storage.write_atomic(source_relpath(index), buffer.getvalue())
    return {index: f"part-{index}.tar" for index in range(len(keys_per_shard))}


def check_keys(storage: Storage, labels: dict[int, str], directory, carried: dict[int, list[str]] | None = None):
    """The key check as finalize runs it: hashes `carried` by records, the other shards' keys from their tars."""
    buckets = unique_keys.KeyBuckets(str(directory), len(labels))
    for shard, keys in (carried or {}).items():
        buckets.add(shard, np.frombuffer(decode_key_hashes(encode_key_hashes(keys)), "<u8"))
    unique_keys.require_unique_keys(storage, labels, buckets)


@pytest.mark.parametrize("carried", ["none", "half"])
def test_a_key_two_units_share_is_found_among_many(tmp_path, carried):
    storage = Storage(str(tmp_path), StorageConfig())
    shards = [[f"s{s}_k{k}" for k in range(200)] for s in range(20)]
    labels = write_source_shards(storage, shards)
    records = {s: keys for s, keys in enumerate(shards) if s % 2} if carried == "half" else {}
    check_keys(storage, labels, tmp_path / "b1", records)  # 4,000 distinct keys in 64 buckets: nothing to report
    shards[17][5] = "s3_k42"
    shards[19][0] = "s3_k43"
    labels = write_source_shards(storage, shards)
    records = {s: keys for s, keys in enumerate(shards) if s % 2} if carried == "half" else {}
    with pytest.raises(InputError, match=r"'s3_k42' comes from two input units, part-3.tar \(shard 3\) and "
                                         r"part-17.tar \(shard 17\); 2 key\(s\) repeat"):
        check_keys(storage, labels, tmp_path / "b2", records)


def test_keys_that_only_share_a_hash_are_not_reported(tmp_path, monkeypatch):
    # Every key in one bucket under one hash: the check must confirm candidates against the keys themselves.
    monkeypatch.setattr(unique_keys, "key_hash", lambda key: 7)
    storage = Storage(str(tmp_path), StorageConfig())
    labels = write_source_shards(storage, [[f"a{i}" for i in range(30)], [f"b{i}" for i in range(30)]])
    check_keys(storage, labels, tmp_path / "b1")
    labels = write_source_shards(storage, [["a1", "a2"], ["b1", "a2"]])
    with pytest.raises(InputError, match="'a2'"):
        check_keys(storage, labels, tmp_path / "b2")


def test_record_key_hashes_are_trusted_only_when_they_cover_every_sample():
    keys = ["a", "b", "c"]
    record = UnitRecord(0, "u", 3, 3, (), key_hashes=encode_key_hashes(keys))
    assert UnitRecord.from_json(record.to_json()) == record
    assert list(record_key_hashes(record)) == [key_hash(k) for k in keys]
    assert record_key_hashes(dataclasses.replace(record, samples_written=4)) is None  # edited: read the tar
    assert record_key_hashes(dataclasses.replace(record, key_hashes="not base64!")) is None
    assert record_key_hashes(dataclasses.replace(record, key_hashes=None)) is None  # an older record
    assert b"key_hashes" not in dataclasses.replace(record, key_hashes=None).to_json()


def test_row_digest_is_order_free_and_sees_any_change():
    rows = [row("rgb", s) for s in range(5)]

    def digest(rows: list[ManifestRow]) -> RowDigest:
        found = RowDigest()
        for one in rows:
            found.add(one)
        return found

    assert digest(rows) == digest(rows[::-1])
    assert digest(rows) != digest(rows[:-1])
    assert digest(rows) != digest([*rows[:-1], row("rgb", 4, sha="1" * 64)])
    assert digest(rows) != digest([*rows, rows[0]])

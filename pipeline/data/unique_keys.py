"""Every sample key at most once in an output, across all its units.

A reader sees one unit, so it catches a key repeated inside that unit (quarantined as duplicate_key) but not one
that two units share: two parquet files with the same key column, x.jpg and x.png cut into different folder units,
or shards fed back in as input. Units run in parallel, so there is no "first" one to keep; the job instead refuses
the whole output, before its manifest is written, so the loader (which reads only what the manifest lists) never
trains on such a sample twice.

The check must hold for 10^9 keys on a driver with tens of GB, where a set of the keys themselves would take ~100 GB
and parsing every unit's `source` tar ~30 us a key (hours). So the writers put each key's 64-bit hash in their unit
record (`UnitRecord.key_hashes`), finalize hands them to `KeyBuckets` as it reads the records, and only records
from before that field send the check to the unit's `source` tar. Buckets spill (hash, shard) pairs to local disk
by the hash's top bits, 12 bytes a key; each is then sorted on its own (~200 MB at 10^9 keys). A hash found twice is
confirmed against the real keys of the shards involved, since two different keys may share a hash (~3% odds
somewhere among 10^9 keys).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from pipeline.data.readers import InputError
from pipeline.data.shard_writer import source_keys, source_relpath
from pipeline.data.storage import Storage
from schemas.keys import key_hash

BUCKETS = 64  # a power of two: a hash's top bits pick its bucket
SPILL_PAIRS = 16_384  # (hash, shard) pairs a bucket holds in memory before they are appended to its file
PAIR = np.dtype([("hash", "<u8"), ("shard", "<u4")])
SHIFT = np.uint64(64 - (BUCKETS.bit_length() - 1))


class KeyBuckets:
    """Every key's hash with its shard, spilled to `BUCKETS` files under `directory` by the hash's top bits."""

    def __init__(self, directory: str, shards: int):
        os.makedirs(directory, exist_ok=True)
        self._paths = [os.path.join(directory, f"bucket-{b:03d}.bin") for b in range(BUCKETS)]
        self._pending: list[list[np.ndarray]] = [[] for _ in range(BUCKETS)]
        self._counts = [0] * BUCKETS
        self.hashed = np.zeros(shards, bool)  # which shards' keys are in

    def add(self, shard: int, hashes: np.ndarray) -> None:
        pairs = np.empty(len(hashes), PAIR)
        pairs["hash"], pairs["shard"] = hashes, shard
        buckets = (pairs["hash"] >> SHIFT).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        pairs, bounds = pairs[order], np.searchsorted(buckets[order], np.arange(BUCKETS + 1))
        for bucket in np.flatnonzero(np.diff(bounds)):
            self._pending[bucket].append(pairs[bounds[bucket]:bounds[bucket + 1]])
            self._counts[bucket] += int(bounds[bucket + 1] - bounds[bucket])
            if self._counts[bucket] >= SPILL_PAIRS:
                self._flush(bucket)
        self.hashed[shard] = True

    def shards_sharing_a_hash(self) -> set[int]:
        """The shards holding a hash that another key (in that shard or another) also has."""
        found: set[int] = set()
        for bucket, path in enumerate(self._paths):
            self._flush(bucket)
            if not os.path.exists(path):
                continue
            pairs = np.fromfile(path, dtype=PAIR)
            order = np.argsort(pairs["hash"])  # 6x faster than sorting the structured array by a field
            hashes, shards = pairs["hash"][order], pairs["shard"][order]
            repeated = np.flatnonzero(hashes[1:] == hashes[:-1])
            found.update(int(s) for s in np.concatenate([shards[repeated], shards[repeated + 1]]))
        return found

    def _flush(self, bucket: int) -> None:
        if self._pending[bucket]:
            with open(self._paths[bucket], "ab") as handle:
                handle.write(np.concatenate(self._pending[bucket]).tobytes())
            self._pending[bucket], self._counts[bucket] = [], 0


def hashes_of(keys: Iterable[str]) -> np.ndarray:
    return np.array([key_hash(key) for key in keys], np.uint64)


def require_unique_keys(storage: Storage, unit_labels: dict[int, str], buckets: KeyBuckets) -> None:
    """Raise InputError naming a key that two shards of `storage` share (shard index -> its input unit's label).
    `buckets` holds the hashes the unit records carried; shards it lacks are read from their `source` tars."""
    unhashed = [shard for shard in sorted(unit_labels) if not buckets.hashed[shard]]
    for shard, payload in zip(unhashed, storage.read_many(source_relpath(i) for i in unhashed)):
        buckets.add(shard, hashes_of(source_keys(payload)))
    shared = _shared_keys(storage, sorted(buckets.shards_sharing_a_hash()))
    if shared:
        key, first, second = shared[0]
        raise InputError(
            f"sample key {key!r} comes from two input units, {unit_labels[first]} (shard {first}) and "
            f"{unit_labels[second]} (shard {second}); {len(shared)} key(s) repeat across units. Keys must be unique "
            "across the input (for parquet, `reader.key_column: null` derives them from file and row); fix the input "
            "and rerun with --overwrite. No manifest was written, so nothing here can be trained on"
        )


def _shared_keys(storage: Storage, shards: list[int]) -> list[tuple[str, int, int]]:
    """(key, first shard, later shard) for every key that two of `shards` both hold, in shard order."""
    first_shard: dict[str, int] = {}
    shared: list[tuple[str, int, int]] = []
    for shard, payload in zip(shards, storage.read_many(source_relpath(i) for i in shards)):
        for key in source_keys(payload):
            if first_shard.setdefault(key, shard) != shard:
                shared.append((key, first_shard[key], shard))
    return shared

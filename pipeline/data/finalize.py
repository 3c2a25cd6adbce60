"""The preprocess job's last step: every run's unit records merged into the manifest, the quarantine table and the
report, with the driver's memory flat in the number of units.

At 10^6 units (10^9 samples in units of 1,000) the records hold 2.4 x 10^7 manifest rows; merged in memory they took
~32 GiB of driver RSS, and read one GET at a time ~11 hours (docs/scaling.md). Here the records are read many at a
time (`Storage.read_many`), in unit order, and consumed as they arrive: manifest rows go to a spill on local disk
(`ManifestSpill`), quarantine rows to another, and what the report and the checks need is summed (`Totals`). The
shard listing is then checked folder by folder against the sizes the records gave, keys are checked for repeats
across units, and only then are the manifest and the quarantine table published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator

import numpy as np

from pipeline.data.manifest import QUARANTINE_FILE, ManifestSpill, RowSpool, iter_manifest
from pipeline.data.output_checks import recorded_units, verify_folder_listing
from pipeline.data.shard_writer import WritePlan
from pipeline.data.storage import Storage
from pipeline.data.unique_keys import KeyBuckets, require_unique_keys
from schemas.keys import decode_key_hashes
from schemas.shards import MANIFEST_FILE, QUARANTINE_SCHEMA, ManifestRow, UnitRecord, shard_relpath


def unit_records(output: Storage, runs: list[WritePlan], shards: int) -> Iterator[list[UnitRecord]]:
    """Per unit, in unit order, each run's record of it (in the runs' order)."""
    payloads = output.read_many(plan.record_path(i) for i in range(shards) for plan in runs)
    for _ in range(shards):
        yield [UnitRecord.from_json(next(payloads)) for _ in runs]


@dataclasses.dataclass
class Totals:
    """What the report and the shard check need from the records, summed as they stream past."""

    shards: int
    sizes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # folder -> bytes per shard, -1: no row
    bytes_per_folder: Counter = dataclasses.field(default_factory=Counter)
    tokens: dict[str, dict] = dataclasses.field(default_factory=dict)
    samples_in: int = 0
    samples_written: int = 0
    processed_samples: int = 0
    quarantine_reasons: Counter = dataclasses.field(default_factory=Counter)

    def add_row(self, row: ManifestRow) -> None:
        if row.folder not in self.sizes:
            self.sizes[row.folder] = np.full(self.shards, -1, np.int64)
        self.sizes[row.folder][row.shard] = row.bytes
        self.bytes_per_folder[row.folder] += row.bytes
        if row.token_count is not None:
            entry = self.tokens.setdefault(row.folder, {"tokens": 0, "samples": 0, "tokenizer_id": row.tokenizer_id,
                                                        "tokenizer_hash": row.tokenizer_hash, "longest": 0})
            entry["tokens"] += row.token_count
            entry["samples"] += row.samples
            entry["longest"] = max(entry["longest"], row.longest_row or 0)

    def add_base(self, record: UnitRecord, processed: bool) -> None:
        """A base-run record: only the base run decides which samples exist and which were refused."""
        self.samples_in += record.samples_in
        self.samples_written += record.samples_written
        self.processed_samples += record.samples_in if processed else 0
        self.quarantine_reasons.update(q.reason.value for q in record.quarantine)

    def token_stats(self) -> dict[str, dict]:
        """Per token folder: tokens, samples, mean and longest row, and the tokenizer that made them."""
        stats = {}
        for folder, entry in sorted(self.tokens.items()):
            mean = round(entry["tokens"] / entry["samples"], 2) if entry["samples"] else 0.0
            stats[folder] = {**{k: v for k, v in entry.items() if k != "longest"}, "mean_per_sample": mean,
                             "longest": entry["longest"]}
        return stats


def merge_records(output: Storage, runs: list[WritePlan], shards: int, processed: set[int]) -> Totals:
    """Read every record once; publish the manifest and quarantine table once the shards and keys check out."""
    with tempfile.TemporaryDirectory(prefix="tessera-finalize-") as directory:
        merged = gather(output, runs, shards, processed, directory)
        require_unique_keys(output, merged.labels, merged.keys)  # before the manifest names them
        verify_sizes(output, merged.totals)  # every shard there, as recorded
        merged.publish(output)
    return merged.totals


@dataclasses.dataclass
class Merged:
    """The records of an output, gathered: the manifest and quarantine rows spilled to local disk, the totals, the
    keys' hashes, and each unit's input label (for the key check's message)."""

    totals: Totals
    manifest: ManifestSpill
    quarantine: RowSpool
    keys: KeyBuckets
    labels: dict[int, str]

    def publish(self, output: Storage) -> None:
        self.manifest.publish(output)
        self.quarantine.publish(output, QUARANTINE_FILE)


def gather(output: Storage, runs: list[WritePlan], shards: int, processed: set[int], directory: str) -> Merged:
    """Stream every run's records into spills under `directory` and the totals."""
    base = next(i for i, plan in enumerate(runs) if plan.is_base)
    merged = Merged(Totals(shards), ManifestSpill(directory),
                    RowSpool(os.path.join(directory, "quarantine.arrows"), QUARANTINE_SCHEMA),
                    KeyBuckets(os.path.join(directory, "keys"), shards), {})
    for records in unit_records(output, runs, shards):
        for record in records:
            for row in record.manifest:
                merged.manifest.add(row)
                merged.totals.add_row(row)
        merged.labels[records[base].unit] = records[base].source
        hashes = record_key_hashes(records[base])
        if hashes is not None:
            merged.keys.add(records[base].unit, hashes)
        merged.totals.add_base(records[base], records[base].unit in processed)
        for entry in records[base].quarantine:
            merged.quarantine.append(entry.as_row())
    return merged


def record_key_hashes(record: UnitRecord) -> np.ndarray | None:
    """The key hashes a base record carries, or None when it has none that account for every sample it wrote (an
    older record, or one edited since): the key check then reads that unit's `source` tar instead."""
    try:
        raw = decode_key_hashes(record.key_hashes) if record.key_hashes is not None else b""
    except ValueError:
        return None
    return np.frombuffer(raw, "<u8") if len(raw) == 8 * record.samples_written and raw else None


def verify_sizes(output: Storage, totals: Totals) -> None:
    """`verify_shard_listing` from the totals' compact size arrays, one folder's rows in memory at a time."""
    units = recorded_units(output)
    for folder, sizes in sorted(totals.sizes.items()):
        rows = {int(shard): (shard_relpath(folder, int(shard)), int(sizes[shard]))
                for shard in np.flatnonzero(sizes >= 0)}
        verify_folder_listing(output, folder, rows, units)


def manifest_current(output: Storage, runs: list[WritePlan], shards: int) -> bool:
    """Whether the manifest holds exactly the rows the runs' unit records committed (and the shards are there, as
    `verify_shard_listing` checks): a deleted or edited manifest is not trusted, the records rebuild it. Both sides
    are streamed and compared as multisets of rows (a sum of row hashes and a count), so memory stays flat."""
    totals, expected = Totals(shards), RowDigest()
    for records in unit_records(output, runs, shards):
        for row in (row for record in records for row in record.manifest):
            totals.add_row(row)
            expected.add(row)
    verify_sizes(output, totals)
    if not output.exists(MANIFEST_FILE):
        return False
    found = RowDigest()
    for row in iter_manifest(output):
        found.add(row)
    return found == expected


@dataclasses.dataclass
class RowDigest:
    """An order-free fingerprint of a multiset of manifest rows: their count and the sum of their SHA-256s."""

    count: int = 0
    total: int = 0

    def add(self, row: ManifestRow) -> None:
        digest = hashlib.sha256(repr(sorted(row.as_dict().items())).encode()).digest()
        self.count += 1
        self.total = (self.total + int.from_bytes(digest, "big")) % 2**256

"""Read an output back the way consumers do and check it: manifest, checksums, key alignment across folders.

Readers trust the manifest, never a directory listing: a stray or half-written file is never opened here.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipeline.data.storage import Storage
from schemas.shards import FORMAT_VERSION, MANIFEST_FILE


class OutputCorruptError(RuntimeError):
    pass


@dataclass
class OutputSummary:
    shards: int
    samples: int
    folders: dict[str, dict] = field(default_factory=dict)  # folder -> samples, bytes, shards
    first_sample: dict[str, bytes] = field(default_factory=dict)  # folder -> payload of the first written key


def read_manifest(storage: Storage) -> list[dict]:
    with storage.open(MANIFEST_FILE) as handle:
        table = pq.read_table(handle)
    versions = set(table.column("format_version").to_pylist())
    if versions - {FORMAT_VERSION}:
        raise OutputCorruptError(f"manifest has format versions {versions}; this Tessera reads {FORMAT_VERSION}")
    return table.to_pylist()


def iterate_shard(payload: bytes):
    """(key, {ext: bytes}) pairs of one tar, through the webdataset library's own tar grouping."""
    # Imported here: webdataset imports torch (~1 s), and only this function needs it.
    import webdataset as wds

    sources = [{"url": "shard", "stream": io.BytesIO(payload)}]
    for sample in wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(sources)):
        key = sample.pop("__key__")
        sample.pop("__url__", None)
        yield key, sample


def verify_output(storage: Storage) -> OutputSummary:
    """Check every manifest row against its shard and that all folders agree on keys, shard by shard."""
    rows = read_manifest(storage)
    by_shard: dict[int, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_shard[row["shard"]][row["folder"]] = row
    folders = sorted({row["folder"] for row in rows})
    summary = OutputSummary(shards=len(by_shard), samples=0,
                            folders={f: {"samples": 0, "bytes": 0, "shards": 0} for f in folders})
    for shard, entries in sorted(by_shard.items()):
        if set(entries) != set(folders):
            raise OutputCorruptError(f"shard {shard} is missing in folders {sorted(set(folders) - set(entries))}")
        keys_by_folder = {}
        for folder, row in entries.items():
            payload = storage.read_bytes(row["uri"])
            if hashlib.sha256(payload).hexdigest() != row["sha256"]:
                raise OutputCorruptError(f"{row['uri']}: sha256 differs from the manifest")
            samples = list(iterate_shard(payload))
            keys_by_folder[folder] = [key for key, _ in samples]
            if len(samples) != row["samples"]:
                raise OutputCorruptError(f"{row['uri']}: {len(samples)} samples, manifest says {row['samples']}")
            stats = summary.folders[folder]
            stats["samples"] += len(samples)
            stats["bytes"] += row["bytes"]
            stats["shards"] += 1
            if samples and folder not in summary.first_sample:
                summary.first_sample[folder] = next(iter(samples[0][1].values()))
        reference = keys_by_folder[folders[0]]
        for folder, keys in keys_by_folder.items():
            if keys != reference:
                raise OutputCorruptError(f"shard {shard}: folder {folder} holds other keys than {folders[0]}")
        summary.samples += len(reference)
    return summary


def iter_members(storage: Storage, folder: str):
    """(key, payload) of every sample of one folder, shard by shard, as the manifest lists them."""
    for row in sorted((r for r in read_manifest(storage) if r["folder"] == folder), key=lambda r: r["shard"]):
        for key, fields in iterate_shard(storage.read_bytes(row["uri"])):
            yield key, next(iter(fields.values()))

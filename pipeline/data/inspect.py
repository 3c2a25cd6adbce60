"""Read an output back the way consumers do and check it: manifest, checksums, key alignment across folders.

Readers trust the manifest, never a directory listing: a stray or half-written file is never opened here.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from pipeline.data.manifest import OutputCorruptError, folder_rows, read_manifest
from pipeline.data.storage import Storage
from pipeline.data.tar_io import iterate_shard
from schemas.shards import ManifestRow


@dataclass
class OutputSummary:
    shards: int
    samples: int
    folders: dict[str, dict] = field(default_factory=dict)  # folder -> samples, bytes, shards
    first_sample: dict[str, bytes] = field(default_factory=dict)  # folder -> payload of the first written key


def verify_output(storage: Storage) -> OutputSummary:
    """Check every manifest row against its shard and that all folders agree on keys, shard by shard."""
    rows = read_manifest(storage)
    by_shard: dict[int, dict[str, ManifestRow]] = defaultdict(dict)
    for row in rows:
        by_shard[row.shard][row.folder] = row
    folders = sorted({row.folder for row in rows})
    summary = OutputSummary(shards=len(by_shard), samples=0,
                            folders={f: {"samples": 0, "bytes": 0, "shards": 0} for f in folders})
    for shard, entries in sorted(by_shard.items()):
        if set(entries) != set(folders):
            raise OutputCorruptError(f"shard {shard} is missing in folders {sorted(set(folders) - set(entries))}")
        keys_by_folder = {}
        for folder, row in entries.items():
            payload = storage.read_bytes(row.uri)
            if hashlib.sha256(payload).hexdigest() != row.sha256:
                raise OutputCorruptError(f"{row.uri}: sha256 differs from the manifest")
            samples = list(iterate_shard(payload))
            keys_by_folder[folder] = [key for key, _ in samples]
            if len(samples) != row.samples:
                raise OutputCorruptError(f"{row.uri}: {len(samples)} samples, manifest says {row.samples}")
            stats = summary.folders[folder]
            stats["samples"] += len(samples)
            stats["bytes"] += row.bytes
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
    for row in folder_rows(read_manifest(storage, [folder]), folder):
        for key, fields in iterate_shard(storage.read_bytes(row.uri)):
            yield key, next(iter(fields.values()))

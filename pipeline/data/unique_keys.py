"""Every sample key at most once in an output, across all its units.

A reader sees one unit, so it catches a key repeated inside that unit (quarantined as duplicate_key) but not one
that two units share: two parquet files with the same key column, x.jpg and x.png cut into different folder units,
or shards fed back in as input. Units run in parallel, so there is no "first" one to keep; the job instead refuses
the whole output, before its manifest is written, so the loader (which reads only what the manifest lists) never
trains on such a sample twice. The check reads each shard's small `source` tar, about 1 KB per sample.
"""

from __future__ import annotations

from pipeline.data.readers import InputError
from pipeline.data.shard_writer import existing_keys
from pipeline.data.storage import Storage


def require_unique_keys(storage: Storage, unit_labels: dict[int, str]) -> None:
    """Raise InputError naming a key that two shards of `storage` share (shard index -> its input unit's label)."""
    first_shard: dict[str, int] = {}
    shared: list[tuple[str, int, int]] = []
    for index in sorted(unit_labels):
        for key in existing_keys(storage, index):
            if key in first_shard:
                shared.append((key, first_shard[key], index))
            else:
                first_shard[key] = index
    if shared:
        key, first, second = shared[0]
        raise InputError(
            f"sample key {key!r} comes from two input units, {unit_labels[first]} (shard {first}) and "
            f"{unit_labels[second]} (shard {second}); {len(shared)} key(s) repeat across units. Keys must be unique "
            "across the input (for parquet, `reader.key_column: null` derives them from file and row); fix the input "
            "and rerun with --overwrite. No manifest was written, so nothing here can be trained on"
        )

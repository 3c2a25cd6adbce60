"""An output's tables: `manifest.parquet` (one writer, one reader, one filter by folder) and the quarantine table.

Readers trust the manifest, never a directory listing: a stray or half-written file is never opened. Every reader
gets typed `ManifestRow`s, never the table's dicts.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.storage import Storage
from schemas.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    QUARANTINE_DIR,
    ManifestRow,
    QuarantineRecord,
    manifest_table,
    quarantine_table,
)

QUARANTINE_FILE = f"{QUARANTINE_DIR}/quarantine.parquet"


class OutputCorruptError(RuntimeError):
    """The output does not match its own manifest (or the manifest is of another format)."""


class MissingManifestError(FileNotFoundError):
    """The root holds no manifest: not a Tessera output (an ml-4m-style folder becomes one through jobs.import_ml4m)."""


def read_manifest(storage: Storage) -> list[ManifestRow]:
    """Every row of the output's manifest, in (folder, shard) order."""
    try:
        handle = storage.open(MANIFEST_FILE)
    except FileNotFoundError:
        raise MissingManifestError(
            f"{storage.uri()} has no {MANIFEST_FILE}, so it is not a Tessera output; if it is an ml-4m-style folder, "
            f"import it first: python -m jobs.import_ml4m {storage.uri()} --output DST") from None
    with handle:
        table = pq.read_table(handle)
    versions = set(table.column("format_version").to_pylist())
    if versions - {FORMAT_VERSION}:
        raise OutputCorruptError(f"manifest has format versions {versions}; this Tessera reads {FORMAT_VERSION}")
    return [ManifestRow.from_dict(row) for row in table.to_pylist()]


def folder_rows(rows: Iterable[ManifestRow], folder: str) -> list[ManifestRow]:
    """The rows of one folder, in shard order."""
    return sorted((row for row in rows if row.folder == folder), key=lambda row: row.shard)


def shard_location(storage: Storage, uri: str) -> tuple[Storage, str]:
    """The storage and path a manifest row's shard is read through. Shards Tessera wrote sit under the root (`uri`
    is relative); an output imported from elsewhere (`jobs.import_ml4m --output`) leaves its tars where they were,
    and its rows name them by absolute path or URI, read with the output's storage settings."""
    if "://" not in uri and not uri.startswith("/"):
        return storage, uri
    parent, name = uri.rsplit("/", 1)
    return Storage(parent, storage.config), name


def write_manifest(storage: Storage, rows: Iterable[ManifestRow]) -> None:
    _write_parquet(storage, MANIFEST_FILE, manifest_table(list(rows)))


def write_quarantine(storage: Storage, records: Iterable[QuarantineRecord]) -> None:
    _write_parquet(storage, QUARANTINE_FILE, quarantine_table(list(records)))


def _write_parquet(storage: Storage, relpath: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_atomic(relpath, sink.getvalue().to_pybytes())

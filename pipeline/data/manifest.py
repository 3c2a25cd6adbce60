"""An output's tables: `manifest.parquet` (one writer, one reader, one filter by folder) and the quarantine table.

Readers trust the manifest, never a directory listing: a stray or half-written file is never opened. Every reader
gets typed `ManifestRow`s, never the table's dicts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.storage import Storage
from schemas.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    QUARANTINE_DIR,
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    ManifestRow,
    QuarantineRecord,
)

QUARANTINE_FILE = f"{QUARANTINE_DIR}/quarantine.parquet"
SPILL_ROWS = 1024  # rows a spool holds as Python objects before writing them out: ~1 MB
ROW_GROUP_ROWS = 131_072  # rows per row group of a published table: ~10 MB of manifest in memory at a time


class OutputCorruptError(RuntimeError):
    """The output does not match its own manifest (or the manifest is of another format)."""


class MissingManifestError(FileNotFoundError):
    """The root holds no manifest: not a Tessera output (an ml-4m-style folder becomes one through jobs.import_ml4m)."""


def read_manifest(storage: Storage, folders: Iterable[str] | None = None) -> list[ManifestRow]:
    """The manifest's rows in (folder, shard) order: every row, or only those of `folders`. A reader that knows its
    folders gives them: the other folders' row groups are never read, and the process holds their rows alone
    (docs/scaling.md, "What reads the manifest")."""
    return list(iter_manifest(storage, folders))


def iter_manifest(storage: Storage, folders: Iterable[str] | None = None) -> Iterator[ManifestRow]:
    """The manifest's rows (of `folders` only, if given) one row group at a time, for a reader that must not hold
    millions of them at once."""
    wanted = None if folders is None else sorted(set(folders))
    shared: dict = {}  # one object per distinct value of the repeated columns, for this read (see _rows)
    with _open_manifest(storage) as table:
        for batch in table.iter_batches(batch_size=ROW_GROUP_ROWS, row_groups=_row_groups(table, wanted)):
            _require_versions(batch.column("format_version"))
            if wanted is not None:
                batch = batch.filter(pc.is_in(batch.column("folder"), pa.array(wanted, pa.string())))
            yield from _rows(batch, shared)


def manifest_folders(storage: Storage) -> list[str]:
    """The folders the manifest lists, sorted, read from its `folder` column alone (never as rows)."""
    found: set[str] = set()
    with _open_manifest(storage) as table:
        for batch in table.iter_batches(batch_size=ROW_GROUP_ROWS, columns=["folder", "format_version"]):
            _require_versions(batch.column("format_version"))
            found.update(pc.unique(batch.column("folder")).to_pylist())
    return sorted(found)


@contextlib.contextmanager
def _open_manifest(storage: Storage) -> Iterator[pq.ParquetFile]:
    try:
        handle = storage.open(MANIFEST_FILE)
    except FileNotFoundError:
        raise MissingManifestError(
            f"{storage.uri()} has no {MANIFEST_FILE}, so it is not a Tessera output; if it is an ml-4m-style folder, "
            f"import it first: python -m jobs.import_ml4m {storage.uri()} --output DST") from None
    with handle:
        yield pq.ParquetFile(handle)


def _require_versions(column: pa.Array) -> None:
    versions = set(pc.unique(column).to_pylist())
    if versions - {FORMAT_VERSION}:
        raise OutputCorruptError(f"manifest has format versions {versions}; this Tessera reads {FORMAT_VERSION}")


def _row_groups(table: pq.ParquetFile, folders: list[str] | None) -> list[int]:
    """The row groups that may hold rows of `folders` (all of them for None), by each group's min and max folder:
    the manifest is written sorted by folder, so one folder's rows sit in a few adjacent groups."""
    groups = range(table.metadata.num_row_groups)
    if folders is None:
        return list(groups)
    kept = []
    for index in groups:
        group = table.metadata.row_group(index)
        stats = next(group.column(j) for j in range(group.num_columns)
                     if group.column(j).path_in_schema == "folder").statistics
        if stats is None or not stats.has_min_max or any(stats.min <= f <= stats.max for f in folders):
            kept.append(index)
    return kept


# Columns whose values repeat across rows: every row of a folder has its folder, modality and tokenizer; the 24
# folders of one shard share its source units; most shards hold the same number of samples.
_REPEATED = ("folder", "modality", "tokenizer_id", "tokenizer_hash", "samples", "format_version")


def _rows(batch: pa.RecordBatch, shared: dict) -> Iterator[ManifestRow]:
    """The batch's rows as ManifestRows, built from its columns (no table of dicts), with one object per distinct
    value of the repeated columns: 10^6 rows of a folder share one `folder` string instead of holding 10^6 copies.
    `shared` lives for one read, not for the process as `sys.intern`'s table would: source unit labels are millions
    of distinct strings that must go when the rows do. A column the manifest predates (`longest_row`) takes its
    default."""
    columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
    for name in _REPEATED:
        if name in columns:
            columns[name] = [_share(shared, value) for value in columns[name]]
    columns["source_units"] = [_share(shared, tuple(_share(shared, unit) for unit in units))
                               for units in columns["source_units"]]
    names = list(columns)
    for values in zip(*columns.values()):
        yield ManifestRow(**dict(zip(names, values)))


def _share(shared: dict, value):
    """The one object `shared` holds equal to `value` (which becomes it if none is)."""
    return shared.setdefault(value, value)


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
    """Publish `rows` (in any order) as the output's manifest, in (folder, shard) order."""
    with tempfile.TemporaryDirectory(prefix="tessera-manifest-") as directory:
        spill = ManifestSpill(directory)
        for row in rows:
            spill.add(row)
        spill.publish(storage)


def write_quarantine(storage: Storage, records: Iterable[QuarantineRecord]) -> None:
    with tempfile.TemporaryDirectory(prefix="tessera-quarantine-") as directory:
        spool = RowSpool(os.path.join(directory, "quarantine.arrows"), QUARANTINE_SCHEMA)
        for record in records:
            spool.append(record.as_row())
        spool.publish(storage, QUARANTINE_FILE)


class RowSpool:
    """Rows of one schema kept in a local Arrow stream file, SPILL_ROWS at a time, so that a table of any length
    is built and published with flat memory."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path, self.schema = path, schema
        self._pending: list[dict] = []
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    def append(self, row: dict) -> None:
        self._pending.append(row)
        if len(self._pending) >= SPILL_ROWS:
            self._flush()

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every row appended, in order; the spool takes no more rows after this."""
        self._flush()
        if self._writer is None:
            return
        self._writer.close()
        with pa.OSFile(self.path) as handle:
            yield from pa.ipc.open_stream(handle)

    def publish(self, storage: Storage, relpath: str) -> None:
        publish_table(storage, relpath, self.schema, self.batches(), self.path + ".parquet")

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self._writer = pa.ipc.new_stream(self.path, self.schema)
        self._writer.write_batch(pa.RecordBatch.from_pylist(self._pending, schema=self.schema))
        self._pending = []


class ManifestSpill:
    """Manifest rows gathered on local disk, one spool per folder, and published in (folder, shard) order. The job's
    finalize adds rows unit by unit, so each folder's rows arrive in shard order and are copied as they are; a folder
    whose rows came out of order (a caller editing a manifest) is sorted in memory, one folder at a time."""

    def __init__(self, directory: str):
        self._directory = directory
        self._folders: dict[str, RowSpool] = {}
        self._last_shard: dict[str, int] = {}
        self._unsorted: set[str] = set()

    def add(self, row: ManifestRow) -> None:
        spool = self._folders.get(row.folder)
        if spool is None:
            path = os.path.join(self._directory, f"folder-{len(self._folders)}.arrows")
            spool = self._folders[row.folder] = RowSpool(path, MANIFEST_SCHEMA)
        if row.shard < self._last_shard.get(row.folder, row.shard):
            self._unsorted.add(row.folder)
        self._last_shard[row.folder] = row.shard
        spool.append(row.as_dict())

    def publish(self, storage: Storage) -> None:
        publish_table(storage, MANIFEST_FILE, MANIFEST_SCHEMA, self._ordered(),
                      os.path.join(self._directory, "manifest.parquet"))

    def _ordered(self) -> Iterator[pa.RecordBatch]:
        for folder in sorted(self._folders):
            batches = self._folders[folder].batches()
            if folder in self._unsorted:  # Arrow's sort is stable: rows of one shard keep their order, as in Python
                yield from pa.Table.from_batches(list(batches), MANIFEST_SCHEMA).sort_by("shard").to_batches()
            else:
                yield from batches


def publish_table(storage: Storage, relpath: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                  local_path: str) -> None:
    """Write `batches` as a parquet file at `local_path`, in row groups of ROW_GROUP_ROWS, then publish it at
    relpath in one atomic step."""
    with pq.ParquetWriter(local_path, schema) as writer:
        pending: list[pa.RecordBatch] = []
        for batch in batches:
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(pending, schema))
                pending = []
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema))
    storage.publish_file(relpath, local_path)

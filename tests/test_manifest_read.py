"""Reading an output's manifest: one folder's rows without the others' row groups, the folder list alone, rows that
share their repeated values, and manifests of other writers (an older one without `longest_row`, another format)."""

import dataclasses

import pyarrow.parquet as pq
import pytest

from pipeline.data import manifest as manifest_module
from pipeline.data.manifest import (
    MissingManifestError,
    OutputCorruptError,
    manifest_folders,
    read_manifest,
    write_manifest,
)
from pipeline.data.storage import Storage
from schemas.common import StorageConfig
from schemas.shards import MANIFEST_FILE, ManifestRow, shard_relpath

FOLDERS = ("caption", "rgb", "tok_caption", "tok_rgb")


def row(folder: str, shard: int, **fields) -> ManifestRow:
    token = folder.startswith("tok_")
    return ManifestRow(folder, folder.removeprefix("tok_"), shard, shard_relpath(folder, shard), 4, 100 + shard,
                       f"{shard:064x}", (f"part-{shard}.tar",), token_count=8 if token else None,
                       tokenizer_id="wp" if token else None, longest_row=2 if token else None, **fields)


@pytest.fixture
def written(tmp_path, monkeypatch) -> tuple[Storage, list[ManifestRow]]:
    """A manifest of 4 folders x 30 shards in row groups of ~16 rows: folders start and end inside row groups."""
    monkeypatch.setattr(manifest_module, "SPILL_ROWS", 4)
    monkeypatch.setattr(manifest_module, "ROW_GROUP_ROWS", 16)
    rows = [row(folder, shard) for shard in range(30) for folder in reversed(FOLDERS)]  # published sorted
    storage = Storage(str(tmp_path), StorageConfig())
    write_manifest(storage, rows)
    return storage, sorted(rows, key=lambda r: (r.folder, r.shard))


def test_a_folder_filter_returns_those_folders_rows_in_shard_order_from_their_row_groups_alone(written, tmp_path):
    storage, rows = written
    assert read_manifest(storage) == rows
    for folder in FOLDERS:
        assert read_manifest(storage, [folder]) == [r for r in rows if r.folder == folder]
    assert read_manifest(storage, {"tok_rgb", "caption"}) == [r for r in rows if r.folder in ("caption", "tok_rgb")]
    assert read_manifest(storage, ["depth"]) == read_manifest(storage, []) == []
    # the pushdown: only the row groups holding a folder's rows are opened
    table = pq.ParquetFile(tmp_path / MANIFEST_FILE)
    holding = [set(table.read_row_group(group, ["folder"]).column(0).to_pylist())
               for group in range(table.num_row_groups)]
    assert len(holding) > 4 and any(len(held) > 1 for held in holding)
    for folder in FOLDERS:
        expected = [group for group, held in enumerate(holding) if folder in held]
        assert manifest_module._row_groups(table, [folder]) == expected
    assert manifest_module._row_groups(table, ["zzz"]) == []


def test_the_folder_list_is_read_without_rows(written):
    storage, _ = written
    assert manifest_folders(storage) == sorted(FOLDERS)


def test_rows_read_share_their_repeated_values_and_stay_plain_frozen_rows(written):
    storage, rows = written
    read = read_manifest(storage)
    rgb = [r for r in read if r.folder == "rgb"]
    assert all(r.folder is rgb[0].folder and r.modality is rgb[0].modality for r in rgb)
    by_shard = {}
    for r in read:  # the folders of one shard hold one tuple of its source units
        assert by_shard.setdefault(r.shard, r.source_units) is r.source_units
    first = read[0]
    assert not hasattr(first, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.samples = 5
    assert ManifestRow.from_dict(first.as_dict()) == first and hash(first) == hash(rows[0])


def test_a_manifest_written_before_longest_row_still_reads(written, tmp_path):
    storage, rows = written
    path = tmp_path / MANIFEST_FILE
    older = pq.read_table(path).drop_columns(["longest_row"])  # as the writer wrote it before the column existed
    pq.write_table(older, path, row_group_size=16)
    expected = [dataclasses.replace(r, longest_row=None) for r in rows]
    assert read_manifest(storage) == expected
    assert read_manifest(storage, ["tok_rgb"]) == [r for r in expected if r.folder == "tok_rgb"]


def test_a_manifest_of_another_format_version_is_refused(tmp_path):
    storage = Storage(str(tmp_path), StorageConfig())
    write_manifest(storage, [row("rgb", 0), row("rgb", 1, format_version=2)])
    for read in (lambda: read_manifest(storage), lambda: read_manifest(storage, ["rgb"]),
                 lambda: manifest_folders(storage)):
        with pytest.raises(OutputCorruptError, match=r"format versions \{1, 2\}"):
            read()


def test_a_root_without_a_manifest_is_named(tmp_path):
    storage = Storage(str(tmp_path), StorageConfig())
    for read in (lambda: read_manifest(storage, ["rgb"]), lambda: manifest_folders(storage)):
        with pytest.raises(MissingManifestError, match="is not a Tessera output"):
            read()

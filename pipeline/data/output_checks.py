"""What a reader checks before it trusts an output's manifest: that the manifest names exactly the shards the output
holds (`verify_shard_listing`), and which one tokenizer wrote each token folder (`folder_tokenizer`,
`require_tokenizer`).

The manifest is what readers trust, so an edited or stale manifest must not go unnoticed: rows removed from it
would otherwise quietly shrink the data a run trains on, and a folder written by two tokenizers would train on two
vocabularies at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from pipeline.data.manifest import OutputCorruptError, folder_rows
from pipeline.data.shard_writer import UNITS_DIR
from pipeline.data.storage import Storage
from schemas.shards import SHARD_PATTERN, ManifestRow, shard_index, token_folder

STATE_FILE = f"{UNITS_DIR}/state.json"  # the preprocess job's plan of an output (pipeline/data/preprocess.py)


class TokenizerMismatchError(ValueError):
    """Token ids made by one tokenizer would be read with another's meaning."""


def recorded_units(storage: Storage) -> int | None:
    """How many work units (= shards per folder) the preprocess job planned for this output; None for an output
    that has no plan (one imported from elsewhere)."""
    return json.loads(storage.read_bytes(STATE_FILE))["units"] if storage.exists(STATE_FILE) else None


def verify_shard_listing(storage: Storage, manifest: Sequence[ManifestRow], folders: Sequence[str], *,
                         sizes: bool = True) -> None:
    """Raise `OutputCorruptError` unless, in each folder, the manifest has one row per shard the output holds, each
    (with `sizes`) there at the size its row says. The training loader leaves sizes to its checksums, which decide
    how many lost shards a run survives (`LoaderConfig.max_lost_shard_fraction`). Rows naming shards outside the root
    (an imported output) are not listed here."""
    units = recorded_units(storage)
    for folder in folders:
        rows = {row.shard: (row.uri, row.bytes) for row in folder_rows(manifest, folder)
                if "://" not in row.uri and not row.uri.startswith("/")}
        verify_folder_listing(storage, folder, rows, units, sizes=sizes)


def verify_folder_listing(storage: Storage, folder: str, rows: Mapping[int, tuple[str, int]], units: int | None, *,
                          sizes: bool = True) -> None:
    """`verify_shard_listing` for one folder, given its rows as shard -> (uri, bytes) and the planned unit count.
    Which shards the output holds: shards 0..N-1 for the N units preprocess planned (shard files numbered higher are
    leftovers of a larger run that `--overwrite` replaced), else every shard file listed."""
    if not rows:  # a folder the output lacks: the readers' own message says so
        return
    listed = {}
    for relpath, signature in storage.signature(folder).items():
        name = relpath.rsplit("/", 1)[-1]
        if SHARD_PATTERN.match(name) and (units is None or shard_index(name) < units):
            listed[shard_index(name)] = int(signature.split(":", 1)[0])
    expected = set(range(units)) if units is not None else set(listed)
    unlisted = sorted(expected - set(rows))
    if unlisted:
        raise OutputCorruptError(
            f"{storage.uri(folder)}: shards {unlisted[:5]} exist but manifest.parquet has no row for them (it "
            f"lists {len(rows)} of {len(expected)}); the manifest was edited or is stale: rerun the preprocess "
            f"command to rebuild it")
    for number, (uri, size) in sorted(rows.items()):
        if sizes and listed.get(number) != size:
            found = "is missing" if number not in listed else f"has {listed[number]} bytes"
            raise OutputCorruptError(f"{storage.uri(uri)} {found}; manifest.parquet says {size} bytes: "
                                     f"the output was altered after it was written")


def folder_tokenizer(manifest: Sequence[ManifestRow], folder: str) -> str | None:
    """The content hash of the one tokenizer whose rows fill `folder` (None when the rows record none); raises
    `TokenizerMismatchError` for a folder written by several."""
    made_by = {(row.tokenizer_id, row.tokenizer_hash) for row in folder_rows(manifest, folder)}
    if len(made_by) > 1:
        counts = {f"{tid} ({digest[:12] if digest else None})": sum(
            1 for row in folder_rows(manifest, folder) if (row.tokenizer_id, row.tokenizer_hash) == (tid, digest))
            for tid, digest in sorted(made_by, key=str)}
        raise TokenizerMismatchError(f"{folder} was written by {len(made_by)} tokenizers (shards per tokenizer: "
                                     f"{counts}); rerun preprocess with --overwrite to retokenize it")
    return next(iter(made_by))[1] if made_by else None


def require_tokenizer(manifest: Sequence[ManifestRow], modality: str, tokenizer_hash: str, where: str) -> None:
    """Raise `TokenizerMismatchError` unless the tokenizer of content hash `tokenizer_hash` is the one that wrote
    `modality`'s token folder of the output at `where`."""
    folder = token_folder(modality)
    expected = folder_tokenizer(manifest, folder)
    if expected is not None and expected != tokenizer_hash:
        raise TokenizerMismatchError(f"the {modality} tokenizer given (content hash {tokenizer_hash[:12]}) is not the "
                                     f"one that wrote {where}/{folder} ({expected[:12]}): its ids would be read "
                                     f"with another vocabulary")

"""An ml-4m-style folder made a Tessera output by writing its manifest, without copying or rewriting a tar.

The import is the one place that lists a directory: it finds each folder's `shard-<n>.tar` files (any zero padding),
maps ml-4m's folder names onto Tessera's (`tok_rgb@224` -> `tok_rgb`, `tok_clip@224` -> `tok_clip_feature`, see
`schemas/ml4m.py`), then reads every shard once, so that what the manifest promises holds: its sha256 (ml-4m keeps
none, so the checksums start here and every later read is checked against them), its sample count, one member per
sample, valid keys, integer token rows inside the modality's vocabulary, and shard N of every folder holding the
same keys in the same order. Whatever fails is refused with the folder, shard and key that broke it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pipeline.data.manifest import write_manifest
from pipeline.data.storage import Storage
from pipeline.data.tar_io import ShardReadError, iterate_shard, read_shard_bytes
from pipeline.data.token_shards import decode_npy
from schemas.keys import InvalidKeyError, validate_key
from schemas.ml4m import SHARD_FILE, ImportMl4mConfig, Ml4mFolder, parse_folder
from schemas.modalities import get_modality
from schemas.shards import CROP_SETTINGS_FOLDER, MANIFEST_FILE, ManifestRow, token_folder

CROP_COLUMNS = 5  # top, left, height, width, hflip: the rows ml-4m's save_vq_tokens.py writes


class Ml4mImportError(ValueError):
    """The folder cannot be listed as a Tessera output as it is; the message names what and where."""


def tessera_folder(folder: Ml4mFolder) -> str:
    """The folder name Tessera's readers look the ml-4m folder up by (its manifest rows' `folder`)."""
    if folder.modality is None:
        return CROP_SETTINGS_FOLDER
    return token_folder(folder.modality) if folder.tokens else folder.modality


def list_source(source: Storage) -> dict[str, dict[int, str]]:
    """Folder -> shard number -> path of every `<folder>/shard-<n>.tar` directly under the root."""
    found: dict[str, dict[int, str]] = defaultdict(dict)
    for path in source.list():
        parts = path.split("/")
        match = SHARD_FILE.match(parts[-1]) if len(parts) == 2 else None
        if not match:
            continue
        number = int(match.group("number"))
        if number in found[parts[0]]:
            raise Ml4mImportError(f"{source.uri(parts[0])}: {found[parts[0]][number]} and {path} are both shard "
                                  f"{number}")
        found[parts[0]][number] = path
    return dict(found)


def select_folders(listed: dict[str, dict[int, str]], config: ImportMl4mConfig
                   ) -> tuple[list[Ml4mFolder], dict[str, str]]:
    """The folders to import and, for each one left out, why."""
    chosen, skipped = [], {}
    for source in sorted(listed):
        folder = parse_folder(source, config.folder_names.get(source))
        if folder is None:
            skipped[source] = "no modality of Tessera's registry"
        elif config.folders and folder.name not in config.folders and source not in config.folders:
            skipped[source] = "not among the folders asked for"
        elif config.resolution and folder.resolution not in (None, config.resolution):
            skipped[source] = f"resolution {folder.resolution}, not {config.resolution}"
        else:
            chosen.append(folder)
    missing = sorted(set(config.folders) - {f.name for f in chosen} - {f.source for f in chosen})
    if missing:
        raise Ml4mImportError(f"folders asked for but not importable: {missing} (skipped: {skipped})")
    by_target: dict[str, list[str]] = defaultdict(list)
    for folder in chosen:
        by_target[tessera_folder(folder)].append(folder.source)
    clashes = {target: sources for target, sources in by_target.items() if len(sources) > 1}
    if clashes:
        raise Ml4mImportError(f"several folders would be the same Tessera folder: {clashes}; pick one per modality "
                              f"with resolution=<res> or folders=[...]")
    if not chosen:
        raise Ml4mImportError(f"no folder to import (skipped: {skipped or 'none found'})")
    return chosen, skipped


def _check_members(folder: Ml4mFolder, path: str, members: list[tuple[str, dict[str, bytes]]]
                   ) -> tuple[int, set[int]]:
    """Refuse what Tessera's readers cannot take; returns the shard's token count and token row lengths (0 and
    none for other folders)."""
    modality = get_modality(folder.modality) if folder.modality else None
    tokens, lengths = 0, set()
    for key, fields in members:
        if len(fields) != 1:
            raise Ml4mImportError(f"{path}: sample {key!r} has members {sorted(fields)}; a folder holds one member "
                                  f"per sample")
        if not (folder.tokens or modality is None):
            continue  # label folders are listed as they are: Tessera trains on token folders only
        payload = fields.get("npy")
        try:
            array = decode_npy(payload) if payload is not None else None
        except Exception as exc:  # whatever numpy says about a bad header or a pickled object array
            raise Ml4mImportError(f"{path}: {key}.npy: {type(exc).__name__}: {exc}") from None
        if array is None or array.dtype.kind not in "iu" or array.ndim not in (1, 2) or array.size == 0:
            what = "no .npy member" if array is None else f"a {array.dtype} array of shape {array.shape}"
            raise Ml4mImportError(f"{path}: sample {key!r} holds {what}; expected integer rows (n_crops, n)")
        rows = array.reshape(1, -1) if array.ndim == 1 else array
        if modality is None:
            if rows.shape[1] != CROP_COLUMNS:
                raise Ml4mImportError(f"{path}: {key}.npy has shape {rows.shape}; crop settings are rows of "
                                      f"(top, left, height, width, hflip)")
            continue
        low, high = int(rows.min()), int(rows.max())
        if low < 0 or high >= modality.vocab_size:
            raise Ml4mImportError(f"{path}: {key}.npy holds token ids {low}..{high}, outside {modality.name}'s "
                                  f"vocabulary of {modality.vocab_size}")
        lengths.add(rows.shape[1])
        tokens += rows.size
    return tokens, lengths


def _check_folder_shard(source: Storage, folder: Ml4mFolder, number: int, path: str, uri: str
                        ) -> tuple[list[str], ManifestRow, set[int]]:
    """Shard `number` of one folder read whole and checked: its keys in order, its manifest row and its token
    row lengths."""
    try:
        payload = read_shard_bytes(source, path)
        members = list(iterate_shard(payload))
    except Exception as exc:  # an unreadable file or a tar that does not parse
        detail = str(exc) if isinstance(exc, ShardReadError) else f"{path}: {type(exc).__name__}: {exc}"
        raise Ml4mImportError(f"cannot read {detail}") from None
    keys = [key for key, _ in members]
    try:
        for key in keys:
            validate_key(key)
    except InvalidKeyError as exc:
        raise Ml4mImportError(f"{path}: {exc}") from None
    if len(set(keys)) != len(keys):
        raise Ml4mImportError(f"{path}: a key appears twice")
    tokens, lengths = _check_members(folder, path, members)
    row = ManifestRow(folder=tessera_folder(folder), modality=folder.modality, shard=number, uri=uri,
                      samples=len(keys), bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                      source_units=(source.uri(path),))
    if folder.tokens:  # the identity of ml-4m's tokenizer is its folder name: it stores no tokenizer id
        row = dataclasses.replace(row, token_count=tokens, tokenizer_id=f"ml4m:{folder.name}",
                                  longest_row=max(lengths, default=0))
    return keys, row, lengths


def check_shard(source: Storage, folders: Sequence[Ml4mFolder], listed: dict[str, dict[int, str]], number: int,
                in_place: bool) -> list[tuple[ManifestRow, set[int]]]:
    """Shard `number` of every folder, read one folder at a time (one payload in memory), keys checked equal
    across folders; each folder's manifest row and token row lengths, in the order of `folders`."""
    rows, reference = [], None
    for folder in folders:
        path = listed[folder.source][number]
        uri = path if in_place else source.uri(path)
        keys, row, lengths = _check_folder_shard(source, folder, number, path, uri)
        rows.append((row, lengths))
        if reference is None:
            reference = (folder.source, keys)
        elif keys != reference[1]:
            first = next((i for i, (a, b) in enumerate(zip(keys, reference[1])) if a != b),
                         min(len(keys), len(reference[1])))
            raise Ml4mImportError(
                f"shard {number} is not aligned: {folder.source} holds {len(keys)} samples, {reference[0]} "
                f"{len(reference[1])}; first difference at position {first} "
                f"({keys[first] if first < len(keys) else None!r} vs "
                f"{reference[1][first] if first < len(reference[1]) else None!r})")
    return rows


def import_ml4m(config: ImportMl4mConfig, log=print) -> dict:
    """Write the manifest that lists `config.source` as a Tessera output; returns a summary for the job's line."""
    source = Storage(config.source, config.storage)
    output = Storage(config.output or config.source, config.storage)
    in_place = output.root == source.root
    if output.exists(MANIFEST_FILE) and not config.overwrite:
        raise Ml4mImportError(f"{output.uri(MANIFEST_FILE)} exists: {output.uri()} is a Tessera output already; "
                              f"set overwrite=true to replace its manifest")
    listed = list_source(source)
    if not listed:
        raise Ml4mImportError(f"{source.uri()} holds no <folder>/shard-<n>.tar files")
    folders, skipped = select_folders(listed, config)
    numbers = sorted(set().union(*(listed[f.source] for f in folders)))
    for folder in folders:
        lacking = [n for n in numbers if n not in listed[folder.source]]
        if lacking:
            raise Ml4mImportError(f"{source.uri(folder.source)} has no shard {lacking[:5]} that other folders have; "
                                  f"leave it out with folders=[...] or complete it")
    log(f"checking {len(numbers)} shards x {len(folders)} folders of {source.uri()}")
    with ThreadPoolExecutor(config.threads) as pool:
        futures = [pool.submit(check_shard, source, folders, listed, n, in_place) for n in numbers]
        try:
            per_shard = [future.result() for future in futures]
        except BaseException:
            for future in futures:  # the first refusal ends the import: shards not yet started are not read
                future.cancel()
            raise
    summary = {}
    for position, folder in enumerate(folders):
        rows = [shard[position][0] for shard in per_shard]
        lengths = sorted(set().union(*(shard[position][1] for shard in per_shard)))
        summary[tessera_folder(folder)] = {"source": folder.source, "samples": sum(r.samples for r in rows),
                                           "bytes": sum(r.bytes for r in rows), "row_lengths": lengths}
        modality = get_modality(folder.modality) if folder.tokens else None
        if modality is not None and modality.num_tokens is not None and len(lengths) > 1:
            raise Ml4mImportError(f"{folder.source}: token rows of lengths {lengths}; {modality.name} has one "
                                  f"length per output")
        if modality is not None and modality.num_tokens is None and lengths and lengths[-1] > modality.token_budget:
            raise Ml4mImportError(f"{folder.source}: rows of up to {lengths[-1]} tokens, the registry bounds "
                                  f"{modality.name} at {modality.token_budget}")
    write_manifest(output, [row for shard in per_shard for row, _ in shard])
    return {"output": output.uri(), "in_place": in_place, "shards": len(numbers),
            "samples": next(iter(summary.values()))["samples"], "folders": summary, "skipped": skipped}

"""Token shards as the manifest lists them: which shard numbers hold every requested `tok_<modality>` folder
(`list_token_shards`), how to read one shard number's tars side by side (`read_token_shard`), and the run's
ModalityTable they imply (`modality_table_from_output`). The training loader and evaluation both read through here.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.manifest import folder_rows, read_manifest, shard_location
from pipeline.data.storage import Storage
from pipeline.data.tar_io import ShardReadError, iterate_shard, read_shard_bytes
from schemas.batch import ModalitySpec, ModalityTable
from schemas.modalities import get_modality
from schemas.common import StorageConfig
from schemas.shards import ManifestRow, token_folder

Sample = tuple[str, dict[str, np.ndarray]]  # key, modality -> token array (n_crops, n)


class ShardAlignmentError(RuntimeError):
    """The modality tars of one shard number hold different keys: the output itself is broken."""


@dataclass(frozen=True)
class TokenShard:
    """Shard N of every token folder a run reads, as the manifest lists it."""

    shard: int
    samples: int
    uris: tuple[tuple[str, str], ...]  # (modality, uri relative to the root)
    sha256: tuple[str, ...]


def list_token_shards(storage: Storage, modalities: Sequence[str],
                      manifest: Sequence[ManifestRow] | None = None) -> list[TokenShard]:
    """Shards that hold every requested token folder, from the manifest (never a directory listing)."""
    folders = [token_folder(m) for m in modalities]
    manifest = read_manifest(storage, folders) if manifest is None else manifest
    rows: dict[int, dict[str, ManifestRow]] = {}
    for folder in folders:
        for row in folder_rows(manifest, folder):
            rows.setdefault(row.shard, {})[folder] = row
    shards = []
    for number, found in sorted(rows.items()):
        missing = sorted(set(folders) - set(found))
        if missing:
            raise ShardAlignmentError(f"{storage.uri()}: shard {number} has no manifest row for {missing}; "
                                      f"tokenize those modalities first")
        counts = {row.samples for row in found.values()}
        if len(counts) != 1:
            raise ShardAlignmentError(f"{storage.uri()}: shard {number} has different sample counts per token "
                                      f"folder: { {f: r.samples for f, r in found.items()} }")
        if counts.pop():
            ordered = [found[folder] for folder in folders]
            shards.append(TokenShard(number, ordered[0].samples, tuple((m, r.uri) for m, r in zip(modalities, ordered)),
                                     tuple(r.sha256 for r in ordered)))
    if not shards:
        raise ValueError(f"{storage.uri()}: the manifest lists no non-empty shards of {sorted(folders)}")
    return shards


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}  # header bytes -> shape, fortran, dtype


def decode_npy(payload: bytes) -> np.ndarray:
    """`np.load` of one .npy member, with its header's parse cached.

    numpy parses every header with `ast.literal_eval`, which costs ~10x the array copy for rows of a few hundred
    tokens; token members of one modality share a handful of headers, so each is parsed once. The array is a
    read-only view of `payload`.
    """
    if payload[:6] != _NPY_MAGIC or payload[6] not in (1, 2):
        return np.load(io.BytesIO(payload), allow_pickle=False)  # anything unusual: numpy decides (or raises)
    length, start = (struct.unpack_from("<H", payload, 8)[0], 10) if payload[6] == 1 else \
        (struct.unpack_from("<I", payload, 8)[0], 12)
    header = payload[start:start + length]
    if header not in _NPY_HEADERS:
        handle = io.BytesIO(payload)
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
        if dtype.hasobject:
            raise ValueError("object arrays are not token rows")
        if len(_NPY_HEADERS) > 4096:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[header] = (shape, fortran, dtype)
    shape, fortran, dtype = _NPY_HEADERS[header]
    data = np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=start + length)
    return data.reshape(shape, order="F" if fortran else "C")


def read_token_shard(storage: Storage, shard: TokenShard, verify_checksums: bool = True) -> list[Sample]:
    """All samples of one shard number: its modality tars read side by side, keys checked equal."""
    columns: list[list[tuple[str, dict]]] = []
    for (modality, uri), digest in zip(shard.uris, shard.sha256):
        payload = read_shard_bytes(*shard_location(storage, uri), digest if verify_checksums else None)
        try:
            members = list(iterate_shard(payload))
        except Exception as exc:  # any failure to parse the tar: truncation, bad headers
            raise ShardReadError(f"{uri}: {type(exc).__name__}: {exc}") from exc
        if len(members) != shard.samples:
            raise ShardReadError(f"{uri}: {len(members)} samples, the manifest says {shard.samples}")
        columns.append(members)
    reference = [key for key, _ in columns[0]]
    for (modality, uri), members in zip(shard.uris[1:], columns[1:]):
        keys = [key for key, _ in members]
        if keys != reference:
            first = next(i for i, (a, b) in enumerate(zip(keys, reference)) if a != b)
            raise ShardAlignmentError(f"shard {shard.shard}: {uri} holds key {keys[first]!r} at position {first} "
                                      f"where {shard.uris[0][1]} holds {reference[first]!r}")
    samples = []
    for position, key in enumerate(reference):
        rows = {}
        for (modality, uri), members in zip(shard.uris, columns):
            try:
                array = decode_npy(members[position][1]["npy"])
            except Exception as exc:
                raise ShardReadError(f"{uri}: member {key}.npy: {type(exc).__name__}: {exc}") from exc
            rows[modality] = array.reshape(1, -1) if array.ndim == 1 else array
        samples.append((key, rows))
    return samples


def modality_table_from_output(root: str, modalities: Sequence[str], storage_config: StorageConfig | None = None,
                               vocab_sizes: Mapping[str, int] | None = None) -> ModalityTable:
    """The run's ModalityTable from a preprocess output's manifest; vocabularies are the registry's unless
    `vocab_sizes` sizes a modality's tables to its tokenizer.

    Fixed-length modalities (grids, global embeddings) take the row length the output actually has (e.g. 8x8 = 64
    tokens for 64 px images): the manifest's longest row of the token folder, or, in a manifest written before that
    column existed, the first row of the folder's first shard. Variable-length ones (sequences) take the registry's
    bound, so a model trained on one output accepts another output's longer captions; a row longer than the bound
    is an error.
    """
    storage = Storage(root, storage_config or StorageConfig())
    manifest = read_manifest(storage, [token_folder(get_modality(name).name) for name in modalities])
    specs = []
    for name in modalities:
        modality = get_modality(name)
        folder = token_folder(modality.name)
        longest = [row.longest_row for row in folder_rows(manifest, folder)]
        if longest and None not in longest:
            length = max(longest)
        else:
            first = list_token_shards(storage, [modality.name], manifest)[0]
            length = read_token_shard(storage, first)[0][1][modality.name].shape[1]
        if modality.num_tokens is None:
            if length > modality.token_budget:
                raise ValueError(f"{folder}: rows of up to {length} tokens, the registry bounds {name} at "
                                 f"{modality.token_budget}")
            length = modality.token_budget
        specs.append(ModalitySpec.from_registry(modality.name, length, (vocab_sizes or {}).get(modality.name)))
    return ModalityTable.of(specs)

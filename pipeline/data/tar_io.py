"""Shard tars: the one way to write them (`commit_shard`) and the one way to read them (`iterate_shard`, retried by
`read_with_retries`).

Tar headers carry a modification time, owner and mode; left to defaults they make two runs over the same data
differ byte for byte. Every tar Tessera writes goes through `tar_bytes`, which fixes all of them, so equal input and
config give byte-identical shards (and equal sha256 in the manifest). The label writer, the tokenize stage, the tests
and the benchmarks all commit shards through `commit_shard`, so the shard format is written in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

from pipeline.data.encoding import encode_npy
from pipeline.data.storage import Storage
from schemas.shards import ManifestRow, member_name, shard_relpath, token_folder

# A fixed, recent-enough timestamp (2020-01-01): zero would make some tools warn about dates before 1980.
FIXED_MTIME = 1_577_836_800
T = TypeVar("T")


class ShardReadError(RuntimeError):
    """One shard could not be read whole (I/O, truncation, a checksum that is not the manifest's)."""


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """Build a tar archive in memory from (member name, payload) pairs, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def commit_shard(storage: Storage, folder: str, index: int, members: Sequence[tuple[str, bytes]], *,
                 modality: str | None = None, source_units: tuple[str, ...] = ()) -> ManifestRow:
    """Write shard `index` of `folder` atomically from (member name, payload) pairs, one member per sample, and
    return its manifest row. The caller records the row (in its unit record) only after this returns."""
    payload = tar_bytes(members)
    relpath = shard_relpath(folder, index)
    storage.write_atomic(relpath, payload)
    return ManifestRow(folder=folder, modality=modality, shard=index, uri=relpath, samples=len(members),
                       bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(), source_units=source_units)


def commit_token_shard(storage: Storage, modality: str, index: int, keys: Sequence[str],
                       rows: Sequence[np.ndarray], *, tokenizer_id: str, tokenizer_hash: str | None = None,
                       source_units: tuple[str, ...] = ()) -> ManifestRow:
    """Shard `index` of `tok_<modality>`: each sample's token rows as `<key>.npy` of shape (n_crops, n) (a 1-D row
    is one crop), with the token counts and tokenizer identity the manifest row carries."""
    arrays = [row if row.ndim == 2 else row[None, :] for row in rows]
    members = [(member_name(key, "npy"), encode_npy(array)) for key, array in zip(keys, arrays, strict=True)]
    row = commit_shard(storage, token_folder(modality), index, members, modality=modality, source_units=source_units)
    return dataclasses.replace(row, token_count=int(sum(a.size for a in arrays)), tokenizer_id=tokenizer_id,
                               tokenizer_hash=tokenizer_hash, longest_row=max((a.shape[1] for a in arrays), default=0))


def iterate_shard(payload: bytes) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) pairs of one tar, through the webdataset library's own tar grouping."""
    # Imported here: webdataset imports torch (~1 s), and only this function needs it.
    import webdataset as wds

    sources = [{"url": "shard", "stream": io.BytesIO(payload)}]
    for sample in wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(sources)):
        key = sample.pop("__key__")
        sample.pop("__url__", None)
        yield key, sample


def read_shard_bytes(storage: Storage, uri: str, sha256: str | None = None) -> bytes:
    """One shard's bytes, checked against the manifest's sha256 when given; any failure is a ShardReadError."""
    try:
        payload = storage.read_bytes(uri)
    except Exception as exc:  # whatever the storage raises (OSError, S3 client errors): worth another attempt
        raise ShardReadError(f"{uri}: {type(exc).__name__}: {exc}") from exc
    if sha256 is not None and hashlib.sha256(payload).hexdigest() != sha256:
        raise ShardReadError(f"{uri}: sha256 differs from the manifest")
    return payload


def read_with_retries(read: Callable[[], T], *, retries: int, backoff_s: float, what: str,
                      log: logging.Logger) -> T:
    """`read()`, tried again up to `retries` times while it raises ShardReadError (waiting `backoff_s * 2**k` before
    retry k, each logged at INFO on the caller's logger); the last attempt's error propagates."""
    for attempt in range(retries):
        try:
            return read()
        except ShardReadError as exc:
            log.info("%s failed (attempt %d of %d), retrying: %s", what, attempt + 1, retries + 1, exc)
            time.sleep(backoff_s * 2**attempt)
    return read()

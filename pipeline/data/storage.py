"""Local and s3:// paths behind one small interface, with atomic commits.

Every reader and writer goes through `Storage`, so a job runs the same on a laptop directory and on a bucket.
A commit is atomic on both: locally a rename of a temporary file in the same directory, on S3 one PUT (an object
becomes visible only when its upload completes), so a reader never sees a half-written shard.
"""

from __future__ import annotations

import collections
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

from schemas.common import StorageConfig

# Files `read_many` reads at once: enough to hide an object store's latency, few enough not to be throttled.
READS_IN_FLIGHT = 32


def storage_options(config: StorageConfig) -> dict:
    """fsspec options for s3fs from the typed config; empty values fall through to the AWS environment chain."""
    # Listing caches would hide what another worker just committed; every lookup must see the bucket as it is.
    options: dict = {"anon": config.anon, "use_listings_cache": False, "skip_instance_cache": True}
    client_kwargs = {}
    if config.endpoint_url:
        client_kwargs["endpoint_url"] = config.endpoint_url
    if config.region:
        client_kwargs["region_name"] = config.region
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    if config.profile:
        options["profile"] = config.profile
    if config.access_key_id and config.secret_access_key:
        options["key"] = config.access_key_id.get_secret_value()
        options["secret"] = config.secret_access_key.get_secret_value()
    return options


def arrow_filesystem(config: StorageConfig):
    """The same S3 client as `Storage` (s3fs, with the same settings) as a pyarrow filesystem, which is what Ray
    Train's and Tune's `storage_filesystem` take; or None when the config sets nothing and pyarrow's own resolution
    from the URI and the AWS environment will do."""
    if not (config.endpoint_url or config.region or config.anon or config.access_key_id):
        return None
    from pyarrow import fs

    # Not pyarrow's own S3FileSystem: behind a proxy that drops 10% of requests or answers them 503/500, its AWS SDK
    # client lost 4 of 100 small write+read pairs (a 503 SlowDown on CompleteMultipartUpload, a dropped GetObject),
    # and half of them at 30% even with a retry strategy of 10 attempts; s3fs (botocore's retries, then its own)
    # lost none at 30% (RELIABILITY.md, scenario 4). So checkpoints travel on the client, and under the one retry
    # policy, that every other byte Tessera moves to and from S3 uses (`storage_options`).
    return fs.PyFileSystem(fs.FSSpecHandler(fsspec.filesystem("s3", **storage_options(config))))


class UnsafeInputError(ValueError):
    """An input path the readers refuse to follow: a symbolic link on its way under the root, or a FIFO, device or
    socket (a FIFO named x.jpg would block a reader forever, /dev/zero would never end)."""


class TooLargeError(ValueError):
    """An input file larger than the limit it is read under; refused from its size, before any byte is read."""


@dataclass
class Storage:
    """A root URI (local directory or s3://bucket/prefix) and the filesystem that serves it."""

    root: str
    config: StorageConfig

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/") or "/"
        self.is_remote = "://" in self.root and not self.root.startswith("file://")
        if self.is_remote:
            self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **storage_options(self.config))
        else:
            self.root = os.path.abspath(self.root.removeprefix("file://"))
            self.fs, self._root_path = fsspec.core.url_to_fs(self.root)

    def __reduce__(self):
        # Ship the root and config to Ray workers, never a live filesystem object (its sessions don't pickle well).
        return (Storage, (self.root, self.config))

    def path(self, relpath: str = "") -> str:
        """Filesystem path of a '/'-separated path relative to the root; refuses to leave the root."""
        normalized = posixpath.normpath(relpath) if relpath else "."
        if normalized.startswith("..") or posixpath.isabs(normalized):
            raise ValueError(f"refusing path {relpath!r}: outside the root {self.root}")
        return self._root_path if normalized == "." else posixpath.join(self._root_path, normalized)

    def uri(self, relpath: str = "") -> str:
        """Full URI for reports and quarantine records."""
        return self.root if not relpath else f"{self.root}/{relpath}"

    def exists(self, relpath: str = "") -> bool:
        return self.fs.exists(self.path(relpath))

    def is_dir(self, relpath: str = "") -> bool:
        return self.fs.isdir(self.path(relpath))

    def list(self, relpath: str = "") -> list[str]:
        """Relative paths of the files under relpath, sorted (recursive)."""
        base = self.path(relpath)
        if not self.fs.isdir(base):
            return []
        # Keys ending in "/" are empty directory markers (pyarrow, so Ray Train's checkpoint uploads, makes them).
        found = [p for p in self.fs.find(base) if not p.endswith("/")]
        prefix = self._root_path.rstrip("/") + "/"
        return sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in found)

    def signature(self, relpath: str = "") -> dict[str, str]:
        """Relative path -> size and version (S3 ETag, else modification time) of each file under relpath: one
        listing call that changes whenever any file's content is replaced."""
        base = self.path(relpath)
        if not self.fs.isdir(base):
            return {}
        prefix = self._root_path.rstrip("/") + "/"
        entries = self.fs.find(base, detail=True)
        return {
            (p[len(prefix) :] if p.startswith(prefix) else p):
                f"{info.get('size')}:{info.get('ETag') or info.get('mtime') or info.get('LastModified')}"
            for p, info in sorted(entries.items()) if not p.endswith("/")  # directory markers, as in `list`
        }

    def open(self, relpath: str, mode: str = "rb"):
        return self.fs.open(self.path(relpath), mode)

    def read_bytes(self, relpath: str) -> bytes:
        return self.fs.cat_file(self.path(relpath))

    def read_many(self, relpaths: Iterable[str], in_flight: int = READS_IN_FLIGHT) -> Iterator[bytes]:
        """The bytes of each file in `relpaths`, in that order, read `in_flight` at a time on threads: on an object
        store a GET costs ~20 ms of waiting, so a million small files read one by one would take hours."""
        with ThreadPoolExecutor(in_flight) as pool:
            pending: collections.deque = collections.deque()
            for relpath in relpaths:
                pending.append(pool.submit(self.read_bytes, relpath))
                if len(pending) >= in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def open_input(self, relpath: str):
        """Open an input file for reading, refusing links and non-regular files (see `UnsafeInputError`). Object
        stores have neither, so remote paths open as they are."""
        if self.is_remote:
            return self.fs.open(self.path(relpath), "rb")
        return os.fdopen(self._open_regular(relpath)[0], "rb")

    def read_input(self, relpath: str, max_bytes: int) -> bytes:
        """The bytes of an input file, refused (`UnsafeInputError`, `TooLargeError`) before they are read when it
        is a link, not a regular file, or over max_bytes; the read itself is bounded too, should the file grow."""
        if self.is_remote:  # one ranged GET: never more than max_bytes + 1 bytes cross the wire
            payload = self.fs.cat_file(self.path(relpath), start=0, end=max_bytes + 1)
        else:
            descriptor, size = self._open_regular(relpath, max_bytes)
            with os.fdopen(descriptor, "rb") as handle:  # read(n) allocates n up front: ask for what fstat saw
                payload = handle.read(size + 1)
            if len(payload) != size:
                raise OSError(f"{relpath}: changed size while it was read")
        if len(payload) > max_bytes:
            raise TooLargeError(f"{relpath}: more than {max_bytes} bytes")
        return payload

    def _open_regular(self, relpath: str, max_bytes: int | None = None) -> tuple[int, int]:
        """A read-only descriptor of the regular file at relpath, and its size. A link anywhere between the root and
        the file is refused by comparing resolved paths; the file itself is opened with O_NOFOLLOW and checked with
        fstat on the open descriptor, so swapping it for a link or a FIFO after the check gains nothing."""
        target = self.path(relpath)
        inside = os.path.join(os.path.realpath(self._root_path), os.path.relpath(target, self._root_path))
        if os.path.realpath(os.path.dirname(target)) != os.path.dirname(inside):
            raise UnsafeInputError(f"{relpath}: lies under a symbolic link; links are not followed")
        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
            descriptor = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if os.path.islink(target):  # ELOOP from O_NOFOLLOW
                raise UnsafeInputError(f"{relpath}: is a symbolic link; links are not followed") from None
            raise
        info = os.fstat(descriptor)
        if stat.S_ISREG(info.st_mode) and (max_bytes is None or info.st_size <= max_bytes):
            return descriptor, info.st_size
        os.close(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeInputError(f"{relpath}: not a regular file")
        raise TooLargeError(f"{relpath}: {info.st_size} bytes > {max_bytes}")

    def write_atomic(self, relpath: str, payload: bytes) -> None:
        """Make `payload` visible at relpath all at once, replacing what was there."""
        if self.is_remote:
            self.fs.pipe_file(self.path(relpath), payload)
        else:
            self._replace_local(relpath, lambda handle: handle.write(payload))

    def publish_file(self, relpath: str, local_path: str) -> None:
        """Make the local file at `local_path` visible at relpath all at once, replacing what was there: what
        `write_atomic` does for bytes, for a file too large to hold in memory (a manifest of millions of rows)."""
        if self.is_remote:  # an S3 object, one PUT or a multipart upload, appears only once it is complete
            self.fs.put_file(local_path, self.path(relpath))
            return

        def copy(handle) -> None:  # a copy, not a rename: local_path may be on another filesystem
            with open(local_path, "rb") as source:
                shutil.copyfileobj(source, handle, 2**24)

        self._replace_local(relpath, copy)

    def _replace_local(self, relpath: str, write: Callable[[BinaryIO], object]) -> None:
        """Write a temporary file beside the target, flush it to disk, rename it over the target."""
        target = self.path(relpath)
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(target)}")
        try:
            with open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def remove(self, relpath: str) -> None:
        path = self.path(relpath)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

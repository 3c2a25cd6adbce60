"""Local and s3:// paths behind one small interface, with atomic commits.

Every reader and writer goes through `Storage`, so a job runs the same on a laptop directory and on a bucket.
A commit is atomic on both: locally a rename of a temporary file in the same directory, on S3 one PUT (an object
becomes visible only when its upload completes), so a reader never sees a half-written shard.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

import fsspec

from schemas.common import StorageConfig


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
    """The same S3 settings as a pyarrow filesystem (what Ray Train's `storage_filesystem` takes), or None when the
    config sets nothing and pyarrow's own resolution from the URI and the AWS environment will do."""
    if not (config.endpoint_url or config.region or config.anon or config.access_key_id):
        return None
    from urllib.parse import urlparse

    from pyarrow import fs

    options: dict = {"region": config.region, "anonymous": config.anon}
    if config.endpoint_url:
        endpoint = urlparse(config.endpoint_url)
        options.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
    if config.access_key_id and config.secret_access_key:
        options.update(access_key=config.access_key_id.get_secret_value(),
                       secret_key=config.secret_access_key.get_secret_value())
    return fs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})


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

    def write_atomic(self, relpath: str, payload: bytes) -> None:
        """Make `payload` visible at relpath all at once, replacing what was there."""
        target = self.path(relpath)
        if self.is_remote:
            self.fs.pipe_file(target, payload)
            return
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        temporary = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(target)}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(payload)
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

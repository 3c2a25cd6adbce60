"""Corpus readers: list an input root into deterministic work units, and read a unit into raw samples.

Three raw formats: img2dataset-style WebDataset tars, Parquet with image bytes (or paths) and captions, and folders
of image files with sidecar `.txt`/`.json`. The listing is sorted, so unit N is the same unit on every run and
output shard N is made from it (which is what makes resume and byte-identical reruns possible).

Tars are read as a stream and never extracted: member names are only used to group samples, and a member that
is absolute, climbs with `..`, is sparse or not a regular file is quarantined, never followed. Nothing is read
before its size is known and checked: a member's from its tar header, a file's from fstat (or a bounded ranged GET
on S3). Compressed tars are refused outright, since their headers say nothing about what a few bytes expand to;
and no reader follows a symbolic link (see `Storage.read_input`).
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipeline.data.storage import Storage, TooLargeError, UnsafeInputError
from schemas.keys import InvalidKeyError, sanitize_key, validate_key
from schemas.preprocess import ReaderConfig
from schemas.shards import QuarantineRecord, Reason, Stage

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TAR_EXTS = (".tar",)
# The magic numbers of the compressions tarfile would otherwise undo on the fly ("r|*").
COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                     b"\x5d\x00\x00": "lzma"}


class InputError(RuntimeError):
    """The job cannot go on: the input root is missing, unreadable or holds nothing we can read."""


@dataclass(frozen=True)
class WorkUnit:
    index: int
    format: str  # webdataset | parquet | folder
    path: str  # relative to the input root: the tar or parquet file; for folders the first file
    rows: tuple[int, int] = (0, 0)  # parquet row range
    files: tuple[str, ...] = ()  # folder units: the image files, relative to the input root

    @property
    def label(self) -> str:
        """Human- and manifest-readable name of the unit."""
        if self.format == "parquet":
            return f"{self.path}#rows={self.rows[0]}-{self.rows[1]}"
        if self.format == "folder":
            return f"{self.path}..+{len(self.files)}"
        return self.path


@dataclass
class RawSample:
    key: str
    source_uri: str
    image: bytes | None = None
    caption: bytes | None = None
    meta: bytes | None = None
    extras: dict[str, bytes] = field(default_factory=dict)


ReadItem = RawSample | QuarantineRecord


# --- listing -------------------------------------------------------------------------------------------------------
def detect_format(files: list[str]) -> str:
    if any(f.endswith(TAR_EXTS) for f in files):
        return "webdataset"
    if any(f.endswith(".parquet") for f in files):
        return "parquet"
    if any(file_ext(f) in IMAGE_EXTS for f in files):
        return "folder"
    raise InputError("found no .tar, .parquet or image files to read")


def input_files(storage: Storage) -> list[str]:
    """Every file under the input root but hidden ones, sorted; a clear InputError when there is nothing to read."""
    if not storage.exists():
        raise InputError(f"input {storage.root} does not exist")
    if not storage.is_dir():
        raise InputError(f"input {storage.root} is a file, not a folder; give the folder (or prefix) that holds it")
    try:
        files = [f for f in storage.list() if not posixpath.basename(f).startswith(".")]
    except OSError as exc:
        raise InputError(f"cannot list input {storage.root}: {exc}") from exc
    if not files:
        raise InputError(f"input {storage.root} is empty")
    return files


def list_units(storage: Storage, config: ReaderConfig) -> list[WorkUnit]:
    """Sorted, deterministic work units of the input root."""
    files = input_files(storage)
    fmt = detect_format(files) if config.format == "auto" else config.format
    if fmt == "webdataset":
        paths = [f for f in files if f.endswith(TAR_EXTS)]
        return [WorkUnit(i, fmt, p) for i, p in enumerate(paths)]
    if fmt == "parquet":
        units: list[WorkUnit] = []
        for path in (f for f in files if f.endswith(".parquet")):
            try:
                with storage.open_input(path) as handle:
                    num_rows = pq.ParquetFile(handle).metadata.num_rows
            except UnsafeInputError:  # an empty unit: reading it yields the refusal as a quarantine record
                units.append(WorkUnit(len(units), fmt, path, rows=(0, 0)))
                continue
            for start in range(0, num_rows, config.samples_per_unit):
                stop = min(start + config.samples_per_unit, num_rows)
                units.append(WorkUnit(len(units), fmt, path, rows=(start, stop)))
        return units
    images = [f for f in files if file_ext(f) in IMAGE_EXTS]
    step = config.samples_per_unit
    return [
        WorkUnit(i, fmt, images[start], files=tuple(images[start : start + step]))
        for i, start in enumerate(range(0, len(images), step))
    ]


def file_ext(path: str) -> str:
    name = posixpath.basename(path)
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


# --- reading -------------------------------------------------------------------------------------------------------
def read_unit(storage: Storage, unit: WorkUnit, config: ReaderConfig) -> Iterator[ReadItem]:
    """Yield the unit's samples in source order, and a QuarantineRecord for everything that cannot be a sample."""
    reader = {"webdataset": _read_tar, "parquet": _read_parquet, "folder": _read_folder}[unit.format]
    try:
        yield from reader(storage, unit, config)
    except (OSError, tarfile.TarError, ValueError) as exc:  # the source itself is refused or unreadable
        yield refusal(storage.uri(unit.path), "*", exc)


def refusal(uri: str, key: str, exc: Exception) -> QuarantineRecord:
    """The quarantine record of a file the storage refused or could not read."""
    if isinstance(exc, UnsafeInputError):
        return QuarantineRecord(uri, key, Stage.READ, Reason.UNSAFE_MEMBER, str(exc))
    if isinstance(exc, TooLargeError):
        return QuarantineRecord(uri, key, Stage.READ, Reason.DECOMPRESSION_BOMB, f"{exc}; not read")
    return QuarantineRecord(uri, key, Stage.READ, Reason.UNREADABLE, f"{type(exc).__name__}: {exc}")


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith("/") or posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return "absolute member name"
    if ".." in name.replace("\\", "/").split("/"):
        return "member name climbs out with '..'"
    if member.issym() or member.islnk():
        return f"link member (-> {member.linkname!r})"
    if member.issparse():  # a few KB of map that reading would expand to member.size bytes of zeros
        return f"sparse member ({member.size} bytes once its holes are filled)"
    if not member.isfile():
        return "not a regular file" if not member.isdir() else None
    return None


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is everything up to the first dot of the basename, the extension the rest."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (posixpath.join(directory, stem) if directory else stem), ext.lower()


def _read_tar(storage: Storage, unit: WorkUnit, config: ReaderConfig) -> Iterator[ReadItem]:
    uri = storage.uri(unit.path)
    seen: set[str] = set()
    current: RawSample | None = None
    current_bad: str | None = None  # key of a group that already met an unsafe member
    with storage.open_input(unit.path) as handle:
        magic = handle.read(6)
        handle.seek(0)
        compression = next((name for prefix, name in COMPRESSION_MAGIC.items() if magic.startswith(prefix)), None)
        if compression:
            yield QuarantineRecord(uri, "*", Stage.READ, Reason.UNSAFE_MEMBER,
                                   f"{compression}-compressed tar refused: its member sizes say nothing about what "
                                   "it expands to; give uncompressed tars (as img2dataset writes)")
            return
        tar = tarfile.open(fileobj=handle, mode="r|")
        try:
            for member in tar:
                if member.isdir():
                    continue
                key, ext = _split_member(member.name)
                unsafe = _unsafe_reason(member)
                if current is not None and key != current.key:
                    yield current
                    current = None
                if unsafe:
                    yield QuarantineRecord(uri, member.name, Stage.READ, Reason.UNSAFE_MEMBER, unsafe)
                    continue
                if current is None:
                    try:
                        validate_key(key)
                    except InvalidKeyError as exc:
                        if key != current_bad:
                            yield QuarantineRecord(uri, key, Stage.READ, Reason.INVALID_KEY, str(exc))
                        current_bad = key
                        continue
                    if key in seen:
                        if key != current_bad:
                            yield QuarantineRecord(uri, key, Stage.READ, Reason.DUPLICATE_KEY,
                                                   "key appears again after other keys in the same unit")
                        current_bad = key
                        continue
                    seen.add(key)
                    current = RawSample(key=key, source_uri=uri)
                if member.size > config.max_member_bytes:  # the sample goes whole: no partial sample is written
                    yield QuarantineRecord(uri, key, Stage.READ, Reason.DECOMPRESSION_BOMB,
                                           f"{member.name}: {member.size} bytes by its tar header > "
                                           f"reader.max_member_bytes {config.max_member_bytes}; not read")
                    current, current_bad = None, key
                    continue
                payload = tar.extractfile(member).read()  # regular file, size checked above
                _attach(current, ext, payload)
        except (tarfile.ReadError, EOFError, OSError) as exc:
            where = f"after {current.key!r}" if current else "at the start"
            key = current.key if current else "*"
            yield QuarantineRecord(uri, key, Stage.READ, Reason.TRUNCATED,
                                   f"archive ends mid-member {where}; nothing after it could be read ({exc})")
            return
    if current is not None:
        yield current


def _attach(sample: RawSample, ext: str, payload: bytes) -> None:
    if ext in IMAGE_EXTS and sample.image is None:
        sample.image = payload
    elif ext == "txt" and sample.caption is None:
        sample.caption = payload
    elif ext == "json" and sample.meta is None:
        sample.meta = payload
    else:
        sample.extras[ext] = payload


def _read_parquet(storage: Storage, unit: WorkUnit, config: ReaderConfig) -> Iterator[ReadItem]:
    uri = storage.uri(unit.path)
    start, stop = unit.rows
    with storage.open_input(unit.path) as handle:
        table = pq.read_table(handle)
    missing = [c for c in (config.image_column,) if c not in table.column_names]
    if missing:
        raise ValueError(f"parquet file lacks column(s) {missing}; has {table.column_names}")
    rows = table.slice(start, stop - start).to_pylist()
    stem = posixpath.splitext(posixpath.basename(unit.path))[0]
    for offset, row in enumerate(rows):
        raw_key = row.get(config.key_column) if config.key_column else None
        key = sanitize_key(str(raw_key)) if raw_key is not None else sanitize_key(f"{stem}_{start + offset:09d}")
        sample = RawSample(key=key, source_uri=f"{uri}#row={start + offset}")
        image = row.get(config.image_column)
        if isinstance(image, str):  # a path relative to the parquet file's folder
            relative = posixpath.normpath(posixpath.join(posixpath.dirname(unit.path), image))
            try:
                image = storage.read_input(relative, config.max_member_bytes)
            except (UnsafeInputError, TooLargeError) as exc:
                yield refusal(sample.source_uri, key, exc)
                continue
            except (OSError, ValueError) as exc:
                yield QuarantineRecord(sample.source_uri, key, Stage.READ, Reason.MISSING_IMAGE, str(exc))
                continue
        sample.image = image
        caption = row.get(config.caption_column)
        sample.caption = caption.encode("utf-8") if isinstance(caption, str) else caption
        yield sample


def _read_folder(storage: Storage, unit: WorkUnit, config: ReaderConfig) -> Iterator[ReadItem]:
    seen: set[str] = set()
    for path in unit.files:
        stem = posixpath.splitext(path)[0]
        key = sanitize_key(stem.replace("/", "_"))
        sample = RawSample(key=key, source_uri=storage.uri(path))
        if key in seen:  # x.jpg and x.png, or a/b.jpg and a_b.jpg: one key, and only the first is the sample
            yield QuarantineRecord(sample.source_uri, key, Stage.READ, Reason.DUPLICATE_KEY,
                                   "another file of this unit has the same key")
            continue
        seen.add(key)
        try:
            sample.image = storage.read_input(path, config.max_member_bytes)
            for ext in ("txt", "json"):
                sidecar = f"{stem}.{ext}"
                if storage.exists(sidecar):
                    _attach(sample, ext, storage.read_input(sidecar, config.max_member_bytes))
        except (OSError, ValueError) as exc:
            yield refusal(sample.source_uri, key, exc)
            continue
        yield sample

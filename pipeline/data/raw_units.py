"""Corpora built around a raw (non-image) primary modality: list its files into work units, and read a unit's files
through the modality's plug-in (pipeline/data/raw) into raw samples.

Folder format only: the input root's files with one of the plug-in's extensions, sorted, cut into units of
`reader.samples_per_unit` files (a file may hold many samples: windows, rows, graphs). A sidecar `<stem>.txt`
beside a file is the caption of every sample it yields; otherwise the plug-in's own caption (a transcript the
format carries) is used. Parquet and WebDataset inputs of raw modalities are not read yet (a parquet file is a
time series' own format and goes through its plug-in as a file).

A file is read whole (bounded by `reader.max_member_bytes`, like every input) and parsed fully before any of its
samples is emitted, so a file that fails half way is quarantined whole with its reason: never half-emitted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import pydantic

from pipeline.data.decode import DecodeError
from pipeline.data.raw import RAW_READERS, RawReader
from pipeline.data.ground_truth import member_ext
from pipeline.data.readers import (InputError, RawSample, ReadItem, WorkUnit, file_ext, input_files, list_units,
                                   refusal)
from pipeline.data.storage import Storage
from schemas.config import format_validation_error
from schemas.keys import InvalidKeyError, sanitize_key, validate_key
from schemas.modalities import Values, get_modality
from schemas.preprocess import PreprocessConfig, ReaderConfig
from schemas.shards import QuarantineRecord, Reason, Stage

RAW_FORMAT = "raw"


def raw_reader(config: PreprocessConfig) -> RawReader | None:
    """The plug-in of the config's primary modality, built with its settings; None for an image corpus."""
    unknown = sorted(set(config.raw) - set(RAW_READERS))
    if unknown:
        raise ValueError(f"raw: no raw reader for {unknown}; raw readers: {sorted(RAW_READERS)}")
    if config.primary not in RAW_READERS:
        if get_modality(config.primary).values is not Values.COLOR:
            raise ValueError(f"primary {config.primary!r} has no raw reader; primaries are an RGB image or one of "
                             f"{sorted(RAW_READERS)}")
        return None
    reader = RAW_READERS.get(config.primary)
    settings = config.raw.get(config.primary)
    try:
        return reader(settings)
    except pydantic.ValidationError as exc:
        raise ValueError(format_validation_error(reader.settings_model, exc, f"raw.{config.primary}", set(),
                                                 settings)) from None


def list_input_units(source: Storage, config: PreprocessConfig) -> list[WorkUnit]:
    """The input's work units: image corpora by their format, raw corpora by their primary plug-in's files."""
    raw = raw_reader(config)
    return list_units(source, config.reader) if raw is None else list_raw_units(source, config.reader, raw)


def list_raw_units(storage: Storage, config: ReaderConfig, reader: RawReader) -> list[WorkUnit]:
    """Sorted, deterministic units of the primary's files under the input root."""
    files = input_files(storage)
    if config.format not in ("auto", "folder"):
        raise InputError(f"{reader.modality} corpora are read as folders of files; reader.format "
                         f"{config.format!r} is not supported for them")
    found = [f for f in files if file_ext(f) in reader.exts]
    if not found:
        raise InputError(f"input {storage.root} holds no {reader.modality} files ({', '.join(reader.exts)})")
    step = config.samples_per_unit
    return [WorkUnit(i, RAW_FORMAT, found[start], files=tuple(found[start : start + step]))
            for i, start in enumerate(range(0, len(found), step))]


def read_raw_unit(storage: Storage, unit: WorkUnit, config: ReaderConfig, reader: RawReader) -> Iterator[ReadItem]:
    """Every sample of every file of the unit in file order, or one quarantine record per file that fails."""
    seen: set[str] = set()
    for path in unit.files:
        stem = posixpath.splitext(path)[0]
        file_key = sanitize_key(stem.replace("/", "_"))
        uri = storage.uri(path)
        try:
            data = storage.read_input(path, config.max_member_bytes)
            sidecar = f"{stem}.txt"
            caption = storage.read_input(sidecar, config.max_member_bytes) if storage.exists(sidecar) else None
        except (OSError, ValueError) as exc:
            yield refusal(uri, file_key, exc)
            continue
        try:
            items = list(reader.read(path, data))  # whole file first: a late failure must not half-emit it
        except DecodeError as exc:
            yield QuarantineRecord(uri, file_key, Stage.READ, exc.reason, exc.detail[:1000])
            continue
        except Exception as exc:  # a parser library's own error on a hostile file: that file, not the job
            yield QuarantineRecord(uri, file_key, Stage.READ, Reason.BAD_RAW, f"{type(exc).__name__}: {exc}"[:1000])
            continue
        for item in items:
            key = file_key + item.suffix
            sample_uri = f"{uri}#{item.suffix.lstrip('_')}" if item.suffix else uri
            try:
                validate_key(key)
            except InvalidKeyError as exc:
                yield QuarantineRecord(sample_uri, key, Stage.READ, Reason.INVALID_KEY, str(exc))
                continue
            if key in seen:  # a.wav and a.flac: one key, and only the first is the sample
                yield QuarantineRecord(sample_uri, key, Stage.READ, Reason.DUPLICATE_KEY,
                                       "another file of this unit has the same key")
                continue
            seen.add(key)
            text = caption if caption is not None else (item.caption.encode("utf-8") if item.caption else None)
            # The member rides as the sample's own value of its modality, as a ground-truth member would.
            yield RawSample(key=key, source_uri=sample_uri, caption=text,
                            extras={member_ext(reader.modality): item.member})

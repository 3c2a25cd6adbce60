"""Raw readers of the Data2Seq modalities (Meta-Transformer's audio, time series, IMU, tables, graphs): one plug-in
per modality turns one raw file into label-stage samples.

An image corpus is built around its image files; a signal, table or graph corpus is built around the files of its
primary modality (`PreprocessConfig.primary`). A plug-in names the file extensions it reads and turns one file's
bytes into one or more samples, each carried as the bytes of its label member `<key>.<ext>` (ext from the modality
registry). One file may hold many samples: a long series cut into windows, a table's rows, a list of graphs. Their
keys are the file's key plus the item's suffix, so they are deterministic and unique within the file.

A malformed file raises `DecodeError` (reason and a detail a person can act on); the read stage quarantines the
whole file with it. Limits (sizes, lengths, node counts) are settings of the plug-in, checked before anything big
is allocated.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.data.decode import DecodeError
from schemas.config import ConfigModel
from schemas.registry import Registry
from schemas.shards import Reason

if TYPE_CHECKING:
    import pyarrow.parquet as pq


class RawSettings(ConfigModel):
    """A plug-in's settings (sample rate, window, limits...); each plug-in subclasses this with its own fields and
    defaults. The preprocess config carries them per modality (`raw: {audio: {sample_rate: 16000}}`)."""


@dataclass(frozen=True)
class RawItem:
    suffix: str  # appended to the file's key: "" for a one-sample file, e.g. "_w000012" for the 12th window
    member: bytes  # the label member's bytes, as `decode_member` reads them back
    caption: str | None = None  # text the format itself carries with the sample (a transcript, a class), if any


class RawReader(abc.ABC):
    """Base of every raw plug-in: subclasses set `modality`, `exts` and `settings_model` and implement both methods."""

    modality: ClassVar[str]
    exts: ClassVar[tuple[str, ...]]  # lower-case file extensions without the dot, e.g. ("wav", "flac", "ogg")
    settings_model: ClassVar[type[RawSettings]] = RawSettings

    def __init__(self, settings: RawSettings | dict | None = None):
        if not isinstance(settings, RawSettings):
            settings = self.settings_model.model_validate(settings or {})
        self.settings = settings

    @abc.abstractmethod
    def read(self, name: str, data: bytes) -> Iterator[RawItem]:
        """One file's bytes (`name` is its path, for its extension and messages) -> its samples, in file order.
        Raises pipeline.data.decode.DecodeError for a file that cannot be read as this modality."""

    @abc.abstractmethod
    def decode_member(self, member: bytes) -> Any:
        """A label member's bytes -> the value tokenizers, eval tasks and previews use (an array, a dict)."""


def bad_raw(detail: str) -> DecodeError:
    """The error of a file this plug-in cannot read: the read stage quarantines the file with this detail."""
    return DecodeError(Reason.BAD_RAW, detail)


def open_parquet(data: bytes, max_rows: int, max_columns: int, rows_setting: str = "max_rows",
                 columns_setting: str = "max_columns") -> pq.ParquetFile:
    """A Parquet file opened by its footer alone, refused when its row or column count is over the plug-in's limits
    (named `rows_setting`, `columns_setting` in the message). The counts come from the metadata before any column
    is decompressed: a small, highly compressed file can expand a thousandfold in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise bad_raw(f"not a readable Parquet file: {exc}") from None
    rows, columns = file.metadata.num_rows, file.metadata.num_columns
    if rows > max_rows:
        raise bad_raw(f"{rows:,} rows, over {rows_setting} {max_rows:,}")
    if columns > max_columns:
        raise bad_raw(f"{columns} columns, over {columns_setting} {max_columns}")
    return file


# Keyed by modality name. Plug-in modules register on import; importing `pipeline.data.raw` imports them all.
RAW_READERS: Registry[type[RawReader]] = Registry("raw reader")


def register_raw_reader(cls: type[RawReader]) -> type[RawReader]:
    """Class decorator: the raw reader of `cls.modality` (one per modality)."""
    return RAW_READERS.register(cls.modality, cls)

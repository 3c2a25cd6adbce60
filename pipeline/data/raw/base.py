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
from typing import Any, ClassVar

from schemas.config import ConfigModel
from schemas.registry import Registry


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


# Keyed by modality name. Plug-in modules register on import; importing `pipeline.data.raw` imports them all.
RAW_READERS: Registry[type[RawReader]] = Registry("raw reader")


def register_raw_reader(cls: type[RawReader]) -> type[RawReader]:
    """Class decorator: the raw reader of `cls.modality` (one per modality)."""
    return RAW_READERS.register(cls.modality, cls)

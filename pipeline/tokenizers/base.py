"""The interface every tokenizer family shares: text WordPiece now, image VQ/FSQ and MLP tokenizers later.

A tokenizer is its files: `tessera.json` (the typed `TokenizerConfig`) plus whatever the family needs beside it
(`tokenizer.json` for WordPiece, safetensors for neural families). `content_hash` is a sha256 over exactly those
bytes, so it is the same before saving, after saving and after loading anywhere; the manifest records it with
`tokenizer_id`. `files()` / `tokenizer_from_files()` work on bytes, so callers can keep tokenizers on any storage;
`save` / `load_tokenizer` are the local-directory convenience.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pydantic
from pydantic import Field

from schemas.config import ConfigModel
from schemas.modalities import TokenizerFamily
from schemas.registry import Registry

CONFIG_FILE = "tessera.json"
TOKENIZER_FORMAT = "tessera-tokenizer"
TOKENIZER_FORMAT_VERSION = 1


class TokenizerConfig(ConfigModel):
    """Contents of `tessera.json`. `settings` is family-specific and validated by the family's own model."""

    format: Literal["tessera-tokenizer"] = TOKENIZER_FORMAT
    format_version: Literal[1] = TOKENIZER_FORMAT_VERSION
    family: TokenizerFamily
    tokenizer_id: str = Field(min_length=1)
    vocab_size: int = Field(gt=0)
    files: tuple[str, ...]  # the family's files beside tessera.json
    settings: dict[str, Any]

    @pydantic.field_validator("files")
    @classmethod
    def _plain_names(cls, files: tuple[str, ...]) -> tuple[str, ...]:
        for name in files:
            if not name or name == CONFIG_FILE or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"tokenizer file name {name!r} must be a plain file name other than {CONFIG_FILE}")
        return files

    def to_bytes(self) -> bytes:
        """Sorted keys and fixed indentation: equal configs are equal bytes, so the content hash is stable."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2) + "\n").encode("utf-8")


def content_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over (name, sha256 of bytes) of every file, in name order: independent of where the files live."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


T = TypeVar("T", bound="Tokenizer")


class Tokenizer(abc.ABC):
    """One trained tokenizer. Subclasses set `family`, implement encode/decode and provide their payload files."""

    family: ClassVar[TokenizerFamily]

    def __init__(self, config: TokenizerConfig):
        if config.family is not self.family:
            raise ValueError(f"{type(self).__name__} is a {self.family.value} tokenizer, "
                             f"the config says {config.family.value}")
        self.config = config

    @property
    def tokenizer_id(self) -> str:
        return self.config.tokenizer_id

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids; every id is in [0, vocab_size)."""
        return self.config.vocab_size

    @property
    @abc.abstractmethod
    def tokens_per_sample(self) -> int | None:
        """Fixed token count per sample, or None for variable-length families (bounded by `Modality.max_tokens`)."""

    @abc.abstractmethod
    def encode(self, batch: Sequence[Any], max_len: int | None = None) -> np.ndarray:
        """A batch of inputs -> int32 ids of shape (len(batch), tokens); `max_len` bounds variable-length families."""

    @abc.abstractmethod
    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[Any]:
        """Rows of ids -> one decoded value per row (the inverse of `encode`, up to what tokenization loses)."""

    @abc.abstractmethod
    def payload_files(self) -> dict[str, bytes]:
        """The family's files beside tessera.json, by name, exactly as `save` writes them."""

    @classmethod
    @abc.abstractmethod
    def from_payload(cls: type[T], config: TokenizerConfig, files: Mapping[str, bytes]) -> T:
        """Rebuild the tokenizer from its config and payload files."""

    def member_rows(self, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
        """Label-shard member bytes of `modality` -> one 1-D id row per member, no padding: what the preprocess
        tokenize stage stores (see pipeline/tokenizers/members.py). A family with no tokenize stage yet keeps this."""
        raise NotImplementedError(f"no tokenize stage for the {self.family.value} family yet")

    def files(self) -> dict[str, bytes]:
        payload = self.payload_files()
        if sorted(payload) != sorted(self.config.files):
            raise RuntimeError(f"{self.tokenizer_id}: payload files {sorted(payload)} differ from the config's "
                               f"{sorted(self.config.files)}")
        return {CONFIG_FILE: self.config.to_bytes(), **payload}

    @functools.cached_property
    def content_hash(self) -> str:
        return content_hash(self.files())

    def save(self, directory: str | Path) -> Path:
        """Write every file into `directory` (created if needed), each one atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            temporary = directory / f".{name}.tmp-{os.getpid()}"
            temporary.write_bytes(data)
            os.replace(temporary, directory / name)
        return directory


# Keyed by TokenizerFamily value. The family modules register themselves on import; importing the package
# `pipeline.tokenizers` imports them all.
FAMILIES: Registry[type[Tokenizer]] = Registry("tokenizer family", "tokenizer families")


def register_family(cls: type[T]) -> type[T]:
    """Class decorator: the tokenizer class of `cls.family` (one per family)."""
    return FAMILIES.register(cls.family.value, cls)


def tokenizer_from_files(files: Mapping[str, bytes]) -> Tokenizer:
    """Rebuild any tokenizer from its files (tessera.json names the family and the other files)."""
    if CONFIG_FILE not in files:
        raise ValueError(f"tokenizer files lack {CONFIG_FILE}: got {sorted(files)}")
    config = TokenizerConfig.model_validate_json(files[CONFIG_FILE])
    missing = [name for name in config.files if name not in files]
    if missing:
        raise ValueError(f"tokenizer {config.tokenizer_id!r} lacks files {missing}")
    if config.family.value not in FAMILIES:
        raise ValueError(f"no tokenizer class for family {config.family.value!r}; known: {sorted(FAMILIES)}")
    return FAMILIES.get(config.family.value).from_payload(config, {name: files[name] for name in config.files})


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokenizer saved by `Tokenizer.save`; reads tessera.json and the files it names, nothing else."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} holds no tokenizer: {CONFIG_FILE} is missing")
    config_bytes = config_path.read_bytes()
    config = TokenizerConfig.model_validate_json(config_bytes)
    return tokenizer_from_files({CONFIG_FILE: config_bytes, **{n: (directory / n).read_bytes() for n in config.files}})

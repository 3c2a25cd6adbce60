"""Base of the fitted tokenizer families (table rows, graphs): fitted in one pass over training samples, no SGD.

Such a family turns one value (a row, a graph) into a variable-length id row and back, with id 0 as padding. Its
fitted state (bin edges, categories) is its payload; `fit` builds it from training values and `scores` measures
reconstruction on held-out ones, which `pipeline/train/fitted_tokenizers.py` writes to metrics.json.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from pipeline.tokenizers.base import Tokenizer
from schemas.config import ConfigModel
from schemas.modalities import get_modality

PAD_ID = 0
F = TypeVar("F", bound="FittedTokenizer")


class FittedTokenizer(Tokenizer):
    settings_model: ClassVar[type[ConfigModel]]

    @property
    def tokens_per_sample(self) -> None:
        return None  # variable length; the modality's `max_tokens` bounds it

    @staticmethod
    @abc.abstractmethod
    def read_member(member: bytes) -> Any:
        """A label member's bytes -> the value `encode` takes (schemas/raw_members.py reads it)."""

    @abc.abstractmethod
    def encode_one(self, value: Any) -> list[int]:
        """One value -> its ids, none of them PAD, untruncated."""

    @classmethod
    @abc.abstractmethod
    def fit(cls: type[F], values: Sequence[Any], tokenizer_id: str, settings: dict, vocab_limit: int) -> F:
        """Fit on training values with the family's settings (validated by `settings_model`); the vocabulary may
        not exceed `vocab_limit` (the modality registry's)."""

    @abc.abstractmethod
    def scores(self, values: Sequence[Any], max_len: int) -> dict[str, float]:
        """Reconstruction scores of encode -> decode on `values` (held out), rows cut at `max_len` tokens."""

    def encode(self, batch: Sequence[Any], max_len: int | None = None) -> np.ndarray:
        """Values -> int32 ids (len(batch), max_len), PAD after each row; a longer row keeps its first max_len ids."""
        rows = [self.encode_one(value) for value in batch]
        width = max_len if max_len is not None else max((len(r) for r in rows), default=0)
        out = np.full((len(rows), width), PAD_ID, dtype=np.int32)
        for out_row, ids in zip(out, rows):
            ids = ids[:width]
            out_row[: len(ids)] = ids
        return out

    def member_rows(self, modality: str, payloads: Sequence[bytes]) -> list[np.ndarray]:
        limit = get_modality(modality).token_budget
        return [np.asarray(self.encode_one(self.read_member(p))[:limit], np.int32) for p in payloads]

    @staticmethod
    def unpadded(row: Any) -> list[int]:
        return [int(i) for i in row if int(i) != PAD_ID]

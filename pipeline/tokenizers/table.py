"""Table rows -> one token per column (Meta-Transformer's tables as a sequence of column tokens), fitted, not trained.

Every column the training rows hold gets a block of ids in one vocabulary: a numeric column `1 + bins` ids (null,
then its quantile bins: equal-count bins of the training values, so skewed columns keep resolution where the data
is), a categorical column `2 + categories` ids (null, unknown, then its most frequent values). A row becomes the
ids of the columns it has, in column-name order; the block says which column an id belongs to, so rows of tables
with different columns share the vocabulary. Decoding gives a numeric bin the mean of its training values, so a
column with few distinct values (a 0/1 flag, a small count) round-trips exactly. Id 0 is padding.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.tokenizers.base import TokenizerConfig, register_family
from pipeline.tokenizers.fitted import FittedTokenizer
from schemas.config import ConfigModel
from schemas.modalities import TokenizerFamily
from schemas.raw_members import Cell, canonical_json, read_row

COLUMNS_FILE = "columns.json"


class TableBinsSettings(ConfigModel):
    bins: int = Field(default=48, ge=2, le=1024)  # per numeric column, at most (fewer for few distinct values)
    max_categories: int = Field(default=256, ge=1)  # per categorical column; rarer values share its unknown id


class TableColumn(ConfigModel):
    name: str
    kind: Literal["numeric", "categorical"]
    offset: int = Field(ge=1)  # the column's null id; its other ids follow
    edges: tuple[float, ...] = ()  # numeric: inner bin edges, ascending (a value equal to an edge goes above it)
    centers: tuple[float, ...] = ()  # numeric: mean training value of each bin, len(edges) + 1
    std: float = 0.0  # numeric: of the training values; the unit of the reconstruction error
    categories: tuple[str, ...] = ()  # categorical: canonical JSON of each value, id offset + 2 + i

    @property
    def size(self) -> int:
        return 1 + len(self.centers) if self.kind == "numeric" else 2 + len(self.categories)


def _numeric(value: Cell) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fit_numeric(name: str, values: np.ndarray, bins: int, offset: int) -> TableColumn:
    if values.size == 0:
        return TableColumn(name=name, kind="numeric", offset=offset, centers=(0.0,))
    quantiles = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles)
    which = np.searchsorted(edges, values, side="right")
    bounds = np.concatenate([[values.min()], edges, [values.max()]])
    centers = [float(values[which == b].mean()) if (which == b).any() else float((bounds[b] + bounds[b + 1]) / 2)
               for b in range(len(edges) + 1)]
    return TableColumn(name=name, kind="numeric", offset=offset, edges=tuple(float(e) for e in edges),
                       centers=tuple(centers), std=float(values.std()))


@register_family
class TableTokenizer(FittedTokenizer):
    family = TokenizerFamily.TABLE_BINS
    settings_model = TableBinsSettings

    def __init__(self, config: TokenizerConfig, columns: Sequence[TableColumn]):
        super().__init__(config)
        self.settings = TableBinsSettings.model_validate(config.settings)
        self.columns = tuple(columns)
        self.by_name = {c.name: c for c in self.columns}
        self.offsets = [c.offset for c in self.columns]
        expected = 1 + sum(c.size for c in self.columns)
        if config.vocab_size != expected or self.offsets != sorted(self.offsets):
            raise ValueError(f"{config.tokenizer_id}: {COLUMNS_FILE} needs {expected} ids in column order, the "
                             f"config says {config.vocab_size}")

    @staticmethod
    def read_member(member: bytes) -> dict[str, Cell]:
        return read_row(member)

    @classmethod
    def fit(cls, values: Sequence[dict[str, Cell]], tokenizer_id: str, settings: dict,
            vocab_limit: int) -> TableTokenizer:
        """Column kinds from the training rows: numeric where every filled cell is a number, else categorical."""
        s = TableBinsSettings.model_validate(settings)
        cells: dict[str, list[Cell]] = {}
        for row in values:
            for name, value in row.items():
                cells.setdefault(name, []).append(value)
        if not cells:
            raise ValueError("no training rows to fit a table tokenizer on")
        columns, offset = [], 1  # id 0 is PAD
        for name in sorted(cells):
            filled = [v for v in cells[name] if v is not None]
            if all(_numeric(v) for v in filled):
                column = _fit_numeric(name, np.asarray(filled, np.float64), s.bins, offset)
            else:
                counts = Counter(canonical_json(v).decode() for v in filled)
                ranked = sorted(counts, key=lambda k: (-counts[k], k))[: s.max_categories]
                column = TableColumn(name=name, kind="categorical", offset=offset, categories=tuple(ranked))
            columns.append(column)
            offset += column.size
        if offset > vocab_limit:
            raise ValueError(f"{len(columns)} columns need {offset:,} ids, over the modality's {vocab_limit:,}: "
                             "lower model.bins")
        config = TokenizerConfig(family=cls.family, tokenizer_id=tokenizer_id, vocab_size=offset,
                                 files=(COLUMNS_FILE,), settings=s.model_dump(mode="json"))
        return cls(config, columns)

    def encode_one(self, row: dict[str, Cell]) -> list[int]:
        unknown = sorted(set(row) - set(self.by_name))
        if unknown:
            raise ValueError(f"{self.tokenizer_id} was fitted without column(s) {unknown[:5]}")
        ids = []
        for column in self.columns:
            if column.name not in row:
                continue
            value = row[column.name]
            if value is None:
                ids.append(column.offset)
            elif column.kind == "numeric":
                if not _numeric(value):
                    raise ValueError(f"column {column.name!r} is numeric, the row holds {value!r}")
                ids.append(column.offset + 1 + bisect.bisect_right(column.edges, float(value)))
            else:
                key = canonical_json(value).decode()
                index = column.categories.index(key) if key in column.categories else -1
                ids.append(column.offset + 2 + index)  # -1: the unknown id
        return ids

    def decode(self, ids) -> list[dict[str, Cell]]:
        """Rows of ids -> {column: value}: bin means for numbers, the category for categories, None for null and
        unknown values. An id outside every block is an error."""
        rows = []
        for row in ids:
            decoded: dict[str, Cell] = {}
            for i in self.unpadded(row):
                if not 1 <= i < self.vocab_size:
                    raise ValueError(f"id {i} is outside {self.tokenizer_id}'s vocabulary of {self.vocab_size}")
                column = self.columns[bisect.bisect_right(self.offsets, i) - 1]
                local = i - column.offset
                if column.kind == "numeric":
                    decoded[column.name] = None if local == 0 else column.centers[local - 1]
                else:
                    decoded[column.name] = json.loads(column.categories[local - 2]) if local >= 2 else None
            rows.append(decoded)
        return rows

    def column_of(self, token: int) -> str:
        """The name of the column a (non-pad) id belongs to."""
        return self.columns[bisect.bisect_right(self.offsets, int(token)) - 1].name

    def scores(self, values: Sequence[dict[str, Cell]], max_len: int) -> dict[str, float]:
        """Numeric cells: MAE in units of each column's training std, averaged over columns; categorical cells:
        accuracy. Nulls are not scored."""
        decoded = self.decode(self.encode(values, max_len))
        errors: dict[str, list[float]] = {}
        hits = []
        for row, back in zip(values, decoded):
            for name, value in row.items():
                column = self.by_name.get(name)
                if value is None or column is None:
                    continue
                got = back.get(name)
                if column.kind == "numeric" and _numeric(value):
                    error = abs(float(value) - got) if got is not None else abs(float(value))
                    errors.setdefault(name, []).append(error / max(column.std, 1e-12))
                else:
                    hits.append(got == value)
        per_column = [float(np.mean(e)) for e in errors.values()]
        return {"samples": float(len(values)),
                "numeric_mae_over_std": float(np.mean(per_column)) if per_column else 0.0,
                "numeric_mae_over_std_worst": float(np.max(per_column)) if per_column else 0.0,
                "categorical_accuracy": float(np.mean(hits)) if hits else 1.0}

    def payload_files(self) -> dict[str, bytes]:
        columns = [c.model_dump(mode="json") for c in self.columns]
        return {COLUMNS_FILE: (json.dumps(columns, sort_keys=True, indent=1) + "\n").encode()}

    @classmethod
    def from_payload(cls, config: TokenizerConfig, files: Mapping[str, bytes]) -> TableTokenizer:
        columns = [TableColumn.model_validate(c) for c in json.loads(files[COLUMNS_FILE])]
        return cls(config, columns)


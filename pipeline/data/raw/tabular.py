"""Tables (CSV, Parquet): one sample per row, the row as canonical JSON {column: value} (schemas/raw_members.py).

Numbers stay numbers (integers stay integers), text stays text, an empty CSV cell or a Parquet null is null. A
column is numeric when it is declared so, when Parquet stores it as a number, or (undeclared) when every filled
text cell reads as a number; declared categorical columns stay text even when they look numeric (class ids).
NaN and infinities are not JSON: `non_finite: refuse` (the default) quarantines the file that holds one, `null`
stores the cell as null, i.e. missing. Any ragged row, undecodable byte, text in a declared numeric column or broken
limit quarantines the whole file (Reason.BAD_RAW), so a table is either read whole or not at all.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field

from pipeline.data.raw.base import RawItem, RawReader, RawSettings, bad_raw, open_parquet, register_raw_reader
from schemas.keys import sanitize_key
from schemas.raw_members import Cell, read_row, row_member


class TabularSettings(RawSettings):
    columns: tuple[str, ...] | None = None  # keep only these columns (each must exist); None: every column
    numeric: tuple[str, ...] = ()  # declared numeric: a cell that is not a number quarantines the file
    categorical: tuple[str, ...] = ()  # declared categorical: kept as text even where it reads as a number
    # The columns tasks predict, one per table (a corpus of several tables names each one's): a table must hold
    # exactly one of them, whose value becomes each row's caption. Empty: no target, no caption.
    target: tuple[str, ...] = ()
    key: str | None = None  # a column of unique row ids: the sample suffix (instead of the row number), not a feature
    non_finite: Literal["refuse", "null"] = "refuse"
    max_rows: int = Field(default=100_000, ge=1)
    max_columns: int = Field(default=256, ge=1)
    max_cell_chars: int = Field(default=256, ge=1)
    max_bytes: int = Field(default=64 << 20, ge=1)


@register_raw_reader
class TabularReader(RawReader):
    modality = "tabular"
    exts = ("csv", "parquet")
    settings_model = TabularSettings
    settings: TabularSettings

    def read(self, name: str, data: bytes) -> Iterator[RawItem]:
        s = self.settings
        if len(data) > s.max_bytes:
            raise bad_raw(f"{len(data):,} bytes, over max_bytes {s.max_bytes:,}")
        ext = PurePosixPath(name).suffix.lower().lstrip(".")
        columns = self._parquet(data) if ext == "parquet" else self._csv(data)
        wanted = list(columns) if s.columns is None else list(s.columns)
        declared = [c for c in (*wanted, s.key) if c is not None]
        missing = sorted({c for c in declared if c not in columns})
        if missing:
            raise bad_raw(f"no column(s) {missing}; the table has {sorted(columns)[:20]}")
        targets = [c for c in s.target if c in wanted]
        if s.target and len(targets) != 1:
            raise bad_raw(f"the table holds {len(targets)} of the target columns {list(s.target)}, not exactly one")
        rows = len(next(iter(columns.values())))
        if rows == 0:
            raise bad_raw("the table has no rows")
        features = [c for c in wanted if c != s.key]
        values = {c: self._column(c, columns[c]) for c in dict.fromkeys([*features, *([s.key] if s.key else [])])}
        suffixes = self._suffixes(values[s.key] if s.key else None, rows)
        for i, suffix in enumerate(suffixes):
            row = {c: values[c][i] for c in features}
            caption = None if not targets or row[targets[0]] is None else str(row[targets[0]])
            yield RawItem(suffix, row_member(row), caption)

    def decode_member(self, member: bytes) -> dict[str, Cell]:
        return read_row(member)

    def _csv(self, data: bytes) -> dict[str, list[Any]]:
        """Column name -> text cells (None for empty cells)."""
        s = self.settings
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise bad_raw(f"not UTF-8 text: {exc}") from None
        if "\0" in text:
            raise bad_raw("binary data: the file holds NUL bytes")
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader, None)
            if not header or any(not h.strip() for h in header):
                raise bad_raw("no header row, or a column without a name")
            self._check_header([h.strip() for h in header])
            cells: list[list[str | None]] = [[] for _ in header]
            for number, line in enumerate(reader, start=2):
                if not line:
                    continue
                if len(line) != len(header):
                    raise bad_raw(f"line {number}: {len(line)} cells, the header has {len(header)}")
                if len(cells[0]) >= s.max_rows:
                    raise bad_raw(f"more than max_rows {s.max_rows:,} rows")
                for column, cell in zip(cells, line):
                    column.append(cell if cell != "" else None)
        except csv.Error as exc:
            raise bad_raw(f"malformed CSV: {exc}") from None
        return dict(zip((h.strip() for h in header), cells))

    def _parquet(self, data: bytes) -> dict[str, list[Any]]:
        import pyarrow as pa

        file = open_parquet(data, self.settings.max_rows, self.settings.max_columns)
        self._check_header(file.schema_arrow.names)
        try:
            table = file.read()
        except (pa.ArrowException, OSError) as exc:
            raise bad_raw(f"not a readable Parquet file: {exc}") from None
        columns = {}
        for name, column in zip(table.column_names, table.columns):
            kind = column.type
            if pa.types.is_dictionary(kind):
                column, kind = column.cast(kind.value_type), kind.value_type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                    or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise bad_raw(f"column {name!r} has type {kind}; tables hold numbers, booleans and text")
            columns[name] = column.to_pylist()
        return columns

    def _check_header(self, names: list[str]) -> None:
        if len(names) > self.settings.max_columns:
            raise bad_raw(f"{len(names)} columns, over max_columns {self.settings.max_columns}")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise bad_raw(f"duplicated column names {duplicated}")

    def _column(self, name: str, cells: list[Any]) -> list[Cell]:
        """One column's cells as JSON values: numbers, text or booleans, None for missing."""
        s = self.settings
        for cell in cells:
            if isinstance(cell, str) and len(cell) > s.max_cell_chars:
                raise bad_raw(f"column {name!r}: a cell of {len(cell):,} characters, over max_cell_chars "
                           f"{s.max_cell_chars}")
        if name in s.categorical:
            return [None if c is None else c if isinstance(c, str) else _number_text(c) for c in cells]
        filled = [c for c in cells if c is not None]
        if name not in s.numeric and any(isinstance(c, bool) for c in filled):
            return cells
        text = [c for c in filled if isinstance(c, str)]
        if name not in s.numeric and text and any(_number(c) is None for c in text):
            return cells  # an undeclared text column
        return [self._finite(name, c if not isinstance(c, str) else _number(c), c) for c in cells]

    def _finite(self, name: str, value: int | float | None, cell: Any) -> int | float | None:
        if cell is None:
            return None
        if value is None or isinstance(value, bool):
            raise bad_raw(f"column {name!r} is numeric but holds {str(cell)[:40]!r}")
        if isinstance(value, float) and not math.isfinite(value):
            if self.settings.non_finite == "refuse":
                raise bad_raw(f"column {name!r} holds {value}, which JSON cannot store (set non_finite: null to store "
                           "it as a missing value)")
            return None
        return value

    def _suffixes(self, keys: list[Cell] | None, rows: int) -> list[str]:
        if keys is None:
            return [f"_r{i:06d}" for i in range(rows)]
        if any(k is None for k in keys):
            raise bad_raw(f"key column {self.settings.key!r} has empty cells")
        suffixes = ["_" + sanitize_key(_number_text(k) if not isinstance(k, str) else k) for k in keys]
        if len(set(suffixes)) != len(suffixes):
            raise bad_raw(f"key column {self.settings.key!r} repeats a key")
        return suffixes


def _number(text: str) -> int | float | None:
    """A CSV cell as a number (an integer where it is one), or None where it is not a number."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _number_text(value: Any) -> str:
    """A numeric id written as text: 3.0 -> "3", as a class id read from a float column should be."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

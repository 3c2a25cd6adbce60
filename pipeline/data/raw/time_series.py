"""Time series plug-in: CSV and Parquet tables of numeric columns (one row per time step) -> windows (T, C).

Every column is a channel except those named in `ignore_columns` (a time or index column). A column holding text
is refused with the value that broke it, never coerced. Missing values (empty cells, NaN) are interpolated
linearly in time, the ends held at the nearest value (`missing: interpolate`), unless more than
`max_missing_fraction` of a channel is missing or `missing: quarantine` is set: then the file is quarantined.
A series shorter than one window is refused; one longer than `max_frames` too, before it is cut.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.data.raw.base import RawItem, RawReader, bad_raw, open_parquet, register_raw_reader
from pipeline.data.raw.frames import WindowSettings, check_frames, read_frames, windows


class TimeSeriesSettings(WindowSettings):
    ignore_columns: tuple[str, ...] = ("time", "date", "year", "index")  # never channels
    channels: int | None = Field(default=None, ge=1)  # refuse files with another count (None: any)
    max_columns: int = Field(default=256, ge=1)  # of a Parquet file, checked in its footer before it is read
    missing: Literal["interpolate", "quarantine"] = "interpolate"
    max_missing_fraction: float = Field(default=0.2, ge=0, le=1)


@register_raw_reader
class TimeSeriesReader(RawReader):
    modality = "time_series"
    exts = ("csv", "parquet")
    settings_model = TimeSeriesSettings

    def read(self, name: str, data: bytes) -> Iterator[RawItem]:
        settings: TimeSeriesSettings = self.settings
        table = _table(name, data, settings)
        columns = [c for c in table.columns if str(c).lower() not in {i.lower() for i in settings.ignore_columns}]
        if not columns:
            raise bad_raw("no value columns (every column is ignored)")
        values = np.stack([_numeric(table[c], str(c)) for c in columns], axis=1)
        if len(values) > settings.max_frames:
            raise bad_raw(f"{len(values)} rows > max_frames {settings.max_frames}")
        values = _fill_missing(values, columns, settings)
        frames = check_frames(values.astype(np.float32), settings, settings.channels)
        return iter(windows(frames, settings))

    def decode_member(self, member: bytes) -> np.ndarray:
        return read_frames(member)


def _table(name: str, data: bytes, settings: TimeSeriesSettings):
    import pandas as pd

    # Parquet's footer gives its size before anything is decompressed (a CSV holds no more cells than its bytes).
    parquet = posixpath.splitext(name)[1].lower() == ".parquet"
    file = open_parquet(data, settings.max_frames, settings.max_columns, "max_frames") if parquet else None
    try:
        if file is not None:
            return file.read().to_pandas()
        # Every cell as text first: a number column with a stray word must be refused, not half-parsed.
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas and pyarrow raise many types for malformed tables
        raise bad_raw(f"not a readable table: {type(exc).__name__}: {exc}") from None


def _numeric(column, name: str) -> np.ndarray:
    """One column as float64 with NaN for missing cells; a cell that is neither a number nor empty is refused."""
    if column.dtype.kind in "biuf":
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.empty(len(column), dtype=np.float64)
    for row, cell in enumerate(column.tolist()):
        text = "" if cell is None else str(cell).strip()
        if text.lower() in ("", "nan", "na"):
            values[row] = np.nan
            continue
        try:
            values[row] = float(text)
        except ValueError:
            raise bad_raw(f"column {name!r} holds text {text[:40]!r} at row {row}, not a number") from None
    return values


def _fill_missing(values: np.ndarray, columns: list, settings: TimeSeriesSettings) -> np.ndarray:
    missing = ~np.isfinite(values)
    if not missing.any():
        return values
    if settings.missing == "quarantine":
        raise bad_raw(f"{int(missing.sum())} missing values (missing: quarantine)")
    fractions = missing.mean(axis=0)
    worst = int(np.argmax(fractions))
    if fractions[worst] > settings.max_missing_fraction:
        raise bad_raw(f"column {columns[worst]!r} is {fractions[worst]:.0%} missing > max_missing_fraction "
                  f"{settings.max_missing_fraction:.0%}")
    steps = np.arange(len(values))
    filled = values.copy()
    for channel in np.flatnonzero(missing.any(axis=0)):
        known = ~missing[:, channel]
        filled[:, channel] = np.interp(steps, steps[known], values[known, channel])  # ends held at nearest value
    return filled

"""Real time series for the time-series modality, offline: datasets statsmodels ships, one series per file.

Each file is one univariate series (`time, value`; the time column is ignored by the reader) with a sidecar
caption naming what it measures, so a corpus of them shares one single-channel tokenizer. CO2 keeps its real gaps
(59 missing weeks, interpolated by the reader). Sunspots is written as Parquet, the rest as CSV. `SEASONS` gives
each series' seasonal period in steps, for the seasonal-naive forecasting baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Series:
    name: str
    caption: str
    season: int  # steps per seasonal cycle (1: none)
    ext: str = "csv"


SERIES = (
    Series("co2", "weekly atmospheric CO2 at Mauna Loa in ppm", 52),
    Series("sunspots", "yearly mean sunspot number", 11, "parquet"),
    Series("nile", "yearly flow of the Nile at Aswan", 1),
    Series("elnino", "monthly sea surface temperature of the El Nino region in degrees C", 12),
    *(Series(f"macro_{c}", f"quarterly US {what}", 4) for c, what in (
        ("realgdp", "real GDP"), ("realcons", "real consumption"), ("realinv", "real investment"),
        ("cpi", "consumer price index"), ("unemp", "unemployment rate"), ("infl", "inflation rate"),
        ("tbilrate", "treasury bill rate"), ("m1", "M1 money stock"))),
    Series("interest_rate", "quarterly German interest rate", 4),
    Series("inflation_rate", "quarterly German inflation rate", 4),
)
SEASONS = {s.name: s.season for s in SERIES}


def load_series(name: str) -> np.ndarray:
    """The series' values as float64 (NaN where the dataset has a gap)."""
    import statsmodels.datasets as datasets

    if name.startswith("macro_"):
        return datasets.macrodata.load_pandas().data[name.removeprefix("macro_")].to_numpy(np.float64)
    if name in ("interest_rate", "inflation_rate"):
        column = {"interest_rate": "R", "inflation_rate": "Dp"}[name]
        return datasets.interest_inflation.load_pandas().data[column].to_numpy(np.float64)
    if name == "elnino":  # one row per year, one column per month -> one monthly series
        return datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy(np.float64).ravel()
    frame = getattr(datasets, name).load_pandas().data
    column = {"co2": "co2", "sunspots": "SUNACTIVITY", "nile": "volume"}[name]
    return frame[column].to_numpy(np.float64)


def write_time_series_corpus(out: Path, seed: int = 0) -> list[Path]:
    """Write every series into `out` (created), each with its caption; returns the series' paths. The data are
    real and fixed: `seed` is taken for the same signature as the other corpus writers and changes nothing."""
    import pandas as pd

    del seed
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for series in SERIES:
        values = load_series(series.name)
        frame = pd.DataFrame({"time": np.arange(len(values)), "value": values})
        path = out / f"{series.name}.{series.ext}"
        if series.ext == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        (out / f"{series.name}.txt").write_text(series.caption + "\n")
        paths.append(path)
    return paths

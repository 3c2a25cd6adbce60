"""Real tables for the tabular modality, offline: the four datasets scikit-learn ships, each with its target.

Each table keeps its real column names and units (diabetes unscaled) plus a target column named for what it is, so
the tables can share one tokenizer without two meaning one column: wine and iris as Parquet, breast cancer and
diabetes as CSV. Rows are shuffled by `seed`. `TABLES` says which column each task predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Table:
    name: str
    loader: str  # sklearn.datasets function
    target: str  # the target column's name in the written table
    kind: str  # "classification" (class names as text) or "regression" (a number)
    ext: str


TABLES = (
    Table("wine", "load_wine", "cultivar", "classification", "parquet"),
    Table("breast_cancer", "load_breast_cancer", "diagnosis", "classification", "csv"),
    Table("iris", "load_iris", "species", "classification", "parquet"),
    Table("diabetes", "load_diabetes", "disease_progression", "regression", "csv"),
)
TARGETS = tuple(table.target for table in TABLES)


def load_table(table: Table, seed: int = 0):
    """The table as a pandas DataFrame, features then target, rows shuffled by `seed`."""
    import sklearn.datasets

    kwargs = {"scaled": False} if table.name == "diabetes" else {}
    data = getattr(sklearn.datasets, table.loader)(as_frame=True, **kwargs)
    frame = data.data.copy()
    if table.kind == "classification":
        frame[table.target] = np.asarray(data.target_names)[data.target.to_numpy()]
    else:
        frame[table.target] = data.target.to_numpy(np.float64)
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)


def write_tabular_corpus(out: Path, seed: int = 0) -> list[Path]:
    """Write the four tables into `out` (created); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in TABLES:
        frame = load_table(table, seed)
        path = out / f"{table.name}.{table.ext}"
        if table.ext == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        paths.append(path)
    return paths

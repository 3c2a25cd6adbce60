"""`status`: where a study stands, read from its folder alone (no Ray connection, works while it runs)."""

from __future__ import annotations

import pandas as pd

from pipeline.data.storage import Storage
from pipeline.study.results import results_table
from schemas.study import StudySpec

STATUS_ORDER = ("done", "running", "error", "failed", "pending")


def status_table(spec: StudySpec, study: Storage) -> pd.DataFrame:
    """One row per run: status, step reached of its steps, latest loss (validation, else training), attempts and
    the last error."""
    table = results_table(spec, study)
    if "step" not in table:
        table["step"] = pd.NA
    if "val_loss" not in table:
        table["val_loss"] = float("nan")
    return table[["run", "status", "step", "steps", "val_loss", "attempts", "error"]].rename(
        columns={"val_loss": "latest_loss"})


def status_counts(table: pd.DataFrame) -> str:
    """'12 runs: 5 done, 2 running, 0 error, 1 failed, 4 pending'."""
    counts = table["status"].value_counts()
    return f"{len(table)} runs: " + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUS_ORDER)


def format_status(table: pd.DataFrame) -> str:
    text = table.to_string(index=False, na_rep="-", formatters={
        "latest_loss": lambda v: "-" if pd.isna(v) else f"{v:.4f}",
        "step": lambda v: "-" if pd.isna(v) else str(int(v)),
        "error": lambda v: (v[:80] + "...") if isinstance(v, str) and len(v) > 80 else (v or "")})
    return f"{text}\n{status_counts(table)}"

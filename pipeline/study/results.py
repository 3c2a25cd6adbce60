"""The study's tidy results table: one row per planned run, from its plan, its record and its metrics.jsonl.

Losses are the held-out validation losses (`val_loss`, `val_loss_<modality>` of the metrics rows at validation
steps). A run whose metrics carry none (a pretrain job from before validation existed) falls back to its training
loss, and says so in `loss_source`, so that a table never mixes the two silently.
"""

from __future__ import annotations

import io

import pandas as pd

from pipeline.data.storage import Storage
from pipeline.study.plan import PlannedRun, plan_study
from pipeline.study.records import RESULTS, RUNS, error_line, read_record
from pipeline.train.metrics import METRICS, read_metrics
from schemas.study import StudySpec

# Columns that differ between two runs of the same study by the clock alone (or by how often it was interrupted).
TIMING_COLUMNS = ("wall_s", "attempts", "est_seconds")


def run_metrics(study: Storage, run: str) -> list[dict]:
    """The run's metrics rows, one per logged step: a resumed run logs again the steps after its checkpoint, and
    the later row of a step is the one that counts."""
    rows = read_metrics(study.uri(f"{RUNS}/{run}/{METRICS}"), study.config)
    by_step = {row["step"]: row for row in rows}
    return [by_step[step] for step in sorted(by_step)]


def loss_columns(rows: list[dict], modalities: tuple[str, ...]) -> dict:
    """Final and best loss, total and per modality, plus the last step's cumulative tokens and FLOPs."""
    validated = [row for row in rows if "val_loss" in row]
    source, key, scored = ("validation", "val_loss", validated) if validated else ("train", "loss", rows)
    if not scored:
        return {}
    final = scored[-1]
    columns = {"loss_source": source, "step": rows[-1]["step"], "val_loss": final[key],
               "best_val_loss": min(row[key] for row in scored)}
    for modality in modalities:
        name = f"{key}_{modality}"
        values = [row[name] for row in scored if name in row]
        if values:
            columns[f"val_loss_{modality}"] = final.get(name, values[-1])
            columns[f"best_val_loss_{modality}"] = min(values)
    for counter in ("tokens_seen", "flops_seen"):
        if counter in rows[-1]:
            columns[counter] = rows[-1][counter]
    return columns


def latest_loss(rows: list[dict]) -> tuple[int | None, float | None]:
    """(step, loss) of the latest validation row, else of the latest row's training loss."""
    validated = [row for row in rows if "val_loss" in row]
    if validated:
        return validated[-1]["step"], validated[-1]["val_loss"]
    return (rows[-1]["step"], rows[-1]["loss"]) if rows else (None, None)


def result_row(spec: StudySpec, study: Storage, run: PlannedRun) -> dict:
    record = read_record(study, run.run_id)
    row = {**run.row(), "status": record.status if record else "pending",
           "attempts": record.attempts if record else 0,
           "wall_s": record.seconds if record else 0.0,
           "error": error_line(record.errors[-1]) if record and record.errors and record.status != "done" else ""}
    row.update(loss_columns(run_metrics(study, run.run_id), spec.modalities))
    if record:
        row.update(record.evaluation)
    return row


def results_table(spec: StudySpec, study: Storage) -> pd.DataFrame:
    """Every planned run, finished or not, in plan order."""
    return pd.DataFrame([result_row(spec, study, run) for run in plan_study(spec)])


def write_results(study: Storage, table: pd.DataFrame) -> list[str]:
    """results.parquet and results.csv in the study folder; returns their URIs."""
    parquet = io.BytesIO()
    table.to_parquet(parquet, index=False)
    study.write_atomic(f"{RESULTS}.parquet", parquet.getvalue())
    study.write_atomic(f"{RESULTS}.csv", table.to_csv(index=False).encode())
    return [study.uri(f"{RESULTS}.parquet"), study.uri(f"{RESULTS}.csv")]


def fit_table(results: pd.DataFrame, n_count: str = "non_embedding") -> pd.DataFrame:
    """The finished runs as the fit reads them: N (the chosen count), D, C, loss = final validation loss and
    loss_<modality> per modality."""
    done = results[results["status"] == "done"] if "status" in results else results
    table = pd.DataFrame({"run": done["run"], "N": done[f"N_{n_count}"], "D": done["D"], "C": done["C"],
                          "loss": done["val_loss"]})
    for column in done.columns:
        if column.startswith("val_loss_"):
            table[f"loss_{column[len('val_loss_'):]}"] = done[column]
    return table.reset_index(drop=True)

"""Results of an evaluate run: `results.parquet` (every row), `results.md` (the table people read), a bar chart of
model vs baseline per task, and, when several checkpoints of a run were evaluated, one curve per task over steps."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: jobs run headless on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.data.storage import Storage  # noqa: E402

RESULTS_PARQUET, RESULTS_MD, BARS_PNG, CURVES_PNG = "results.parquet", "results.md", "results.png", "curves.png"

RESULTS_SCHEMA = pa.schema([
    ("checkpoint", pa.string()), ("step", pa.int64()), ("task", pa.string()), ("metric", pa.string()),
    ("value", pa.float64()), ("baseline", pa.float64()), ("higher_is_better", pa.bool_()), ("head", pa.string()),
    ("baseline_kind", pa.string()), ("status", pa.string()), ("seconds", pa.float64()),
    ("started_at", pa.float64()), ("finished_at", pa.float64()), ("node", pa.string()),
    ("error", pa.string()), ("traceback", pa.string()),
])


def results_table(rows: Sequence[dict]) -> pa.Table:
    ordered = sorted(rows, key=lambda r: (r["step"] if r["step"] is not None else -1, r["checkpoint"], r["task"],
                                          r["metric"]))
    return pa.Table.from_pylist([{name: row.get(name) for name in RESULTS_SCHEMA.names} for row in ordered],
                                schema=RESULTS_SCHEMA)


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per (checkpoint, task, metric), then the failures with their tracebacks."""
    lines = ["| checkpoint | task | metric | value | baseline | better | head | time (s) | status |",
             "| --- | --- | --- | ---: | ---: | --- | --- | ---: | --- |"]
    for row in results_table(rows).to_pylist():
        better = "higher" if row["higher_is_better"] else "lower"
        lines.append(f"| {row['checkpoint'] or '-'} | {row['task']} | {row['metric']} | {_fmt(row['value'])} | "
                     f"{_fmt(row['baseline'])} ({row['baseline_kind']}) | {better} | {row['head']} | "
                     f"{row['seconds']:.1f} | {row['status']} |")
    failed = [r for r in rows if r["status"] == "failed"]
    for row in [r for r in rows if r["status"] == "skipped"]:
        lines.append(f"\nskipped {row['task']}: {row['error']}")
    for row in failed:
        lines += ["", f"### {row['task']} failed ({row['checkpoint'] or 'no checkpoint'})", "",
                  f"{row['error']}", "", "```", (row["traceback"] or "").rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _panels(count: int) -> tuple[plt.Figure, list]:
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    flat = list(axes.ravel())
    for unused in flat[count:]:
        unused.axis("off")
    return figure, flat[:count]


def _png(figure: plt.Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def bar_chart(rows: Sequence[dict]) -> bytes:
    """Model vs baseline, one panel per (task, metric), for the latest checkpoint evaluated."""
    ok = [r for r in rows if r["status"] == "ok"]
    latest = max(ok, key=lambda r: (r["step"] if r["step"] is not None else -1), default=None)
    shown = [r for r in ok if latest is not None and r["checkpoint"] == latest["checkpoint"]]
    shown.sort(key=lambda r: (r["task"], r["metric"]))
    figure, axes = _panels(max(len(shown), 1))
    if not shown:
        axes[0].text(0.5, 0.5, "no task succeeded", ha="center", va="center")
        axes[0].axis("off")
    for axis, row in zip(axes, shown):
        axis.bar(["model", "baseline"], [row["value"], row["baseline"]], color=["tab:blue", "tab:gray"])
        arrow = "higher" if row["higher_is_better"] else "lower"
        axis.set_title(f"{row['task']}\n{row['metric']} ({arrow} is better)", fontsize=8)
        axis.tick_params(labelsize=7)
    if latest is not None:
        figure.suptitle(f"{latest['checkpoint'] or 'no checkpoint'}: model vs trivial baseline", fontsize=9)
    return _png(figure)


def curve_chart(rows: Sequence[dict]) -> bytes | None:
    """Metric vs training step, one panel per (task, metric); None unless several checkpoints were evaluated."""
    ok = [r for r in rows if r["status"] == "ok"]
    if len({r["checkpoint"] for r in ok}) < 2:
        return None
    order = sorted({(r["step"] if r["step"] is not None else -1, r["checkpoint"]) for r in ok})
    position = {checkpoint: (step if step >= 0 else index) for index, (step, checkpoint) in enumerate(order)}
    series: dict[tuple[str, str], list[dict]] = {}
    for row in ok:
        series.setdefault((row["task"], row["metric"]), []).append(row)
    figure, axes = _panels(len(series))
    for axis, ((task, metric), points) in zip(axes, sorted(series.items())):
        points.sort(key=lambda r: position[r["checkpoint"]])
        xs = [position[r["checkpoint"]] for r in points]
        axis.plot(xs, [r["value"] for r in points], marker="o", label="model")
        axis.plot(xs, [r["baseline"] for r in points], linestyle="--", color="tab:gray", label="baseline")
        axis.set_title(f"{task}\n{metric}", fontsize=8)
        axis.set_xlabel("step", fontsize=7)
        axis.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    return _png(figure)


def write_results(rows: Sequence[dict], out: Storage) -> list[str]:
    """Write every results file under `out`; returns their URIs."""
    buffer = io.BytesIO()
    pq.write_table(results_table(rows), buffer)
    files = {RESULTS_PARQUET: buffer.getvalue(), RESULTS_MD: markdown_table(rows).encode("utf-8"),
             BARS_PNG: bar_chart(rows)}
    curves = curve_chart(rows)
    if curves is not None:
        files[CURVES_PNG] = curves
    for name, payload in files.items():
        out.write_atomic(name, payload)
    return [out.uri(name) for name in files]

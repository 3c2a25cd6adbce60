"""Results of an evaluate run: `results.parquet` (every row), `results.md` (the table people read), a bar chart of
model vs baseline per task, and, when several checkpoints were evaluated, curves per task against the tokens seen
(`curves.png`) and the training FLOPs (`curves_flops.png`), one line per run."""

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

RESULTS_PARQUET, RESULTS_MD, BARS_PNG = "results.parquet", "results.md", "results.png"
CURVES_PNG, CURVES_FLOPS_PNG = "curves.png", "curves_flops.png"  # metric vs tokens seen, vs training FLOPs

RESULTS_SCHEMA = pa.schema([
    ("checkpoint", pa.string()), ("step", pa.int64()), ("run", pa.string()), ("tokens_seen", pa.float64()),
    ("flops_seen", pa.float64()), ("task", pa.string()), ("metric", pa.string()),
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


X_AXES = {"tokens_seen": "tokens seen", "flops_seen": "training FLOPs"}


def curve_series(rows: Sequence[dict], x: str = "tokens_seen") -> tuple[str, dict]:
    """The points of the curve charts: (x-axis label, {(task, metric): {run: [(x, value, baseline), ...]}}), each
    run's points in x order. x is the checkpoints' cumulative `tokens_seen` or `flops_seen`, so that runs of
    different sizes compare at equal data or compute; when some checkpoint's run does not record it, every point
    falls back to the training step (runs then share an axis only if they share a batch size)."""
    ok = [r for r in rows if r["status"] == "ok"]
    if all(r.get(x) is not None for r in ok):
        label, position = X_AXES[x], {id(r): r[x] for r in ok}
    else:  # checkpoints with no step are placed after each other, in checkpoint order
        order = sorted({(r["step"] if r["step"] is not None else -1, r["checkpoint"]) for r in ok})
        step_of = {checkpoint: (step if step >= 0 else index) for index, (step, checkpoint) in enumerate(order)}
        label, position = "step", {id(r): step_of[r["checkpoint"]] for r in ok}
    series: dict[tuple[str, str], dict[str, list]] = {}
    for row in ok:
        runs = series.setdefault((row["task"], row["metric"]), {})
        runs.setdefault(row.get("run") or "", []).append((position[id(row)], row["value"], row["baseline"]))
    for runs in series.values():
        for points in runs.values():
            points.sort()
    return label, series


def curve_chart(rows: Sequence[dict], x: str = "tokens_seen") -> bytes | None:
    """Metric vs tokens (or FLOPs) seen, one panel per (task, metric), one line per run; None unless several
    checkpoints were evaluated."""
    if len({r["checkpoint"] for r in rows if r["status"] == "ok"}) < 2:
        return None
    label, series = curve_series(rows, x)
    # runs of several sizes span decades of tokens and compute
    logarithmic = label != "step" and all(p[0] > 0 for runs in series.values() for ps in runs.values() for p in ps)
    figure, axes = _panels(len(series))
    for axis, ((task, metric), runs) in zip(axes, sorted(series.items())):
        for index, (run, points) in enumerate(sorted(runs.items())):
            xs, values, baselines = zip(*points)
            colour = f"C{index % 10}"
            axis.plot(xs, values, marker="o", color=colour, label=run or "model")
            axis.plot(xs, baselines, linestyle="--", color=colour, alpha=0.5)
        axis.set_title(f"{task}\n{metric} (dashed: baseline)", fontsize=8)
        axis.set_xlabel(label, fontsize=7)
        if logarithmic:
            axis.set_xscale("log")
        axis.tick_params(which="both", labelsize=6)
    axes[0].legend(fontsize=7)
    return _png(figure)


def write_results(rows: Sequence[dict], out: Storage) -> list[str]:
    """Write every results file under `out`; returns their URIs."""
    buffer = io.BytesIO()
    pq.write_table(results_table(rows), buffer)
    files = {RESULTS_PARQUET: buffer.getvalue(), RESULTS_MD: markdown_table(rows).encode("utf-8"),
             BARS_PNG: bar_chart(rows)}
    curves = curve_chart(rows, "tokens_seen")
    if curves is not None:
        files[CURVES_PNG] = curves
        if curve_series(rows, "flops_seen")[0] != "step":  # else it would repeat curves.png's step fallback
            files[CURVES_FLOPS_PNG] = curve_chart(rows, "flops_seen")
    for name, payload in files.items():
        out.write_atomic(name, payload)
    return [out.uri(name) for name in files]

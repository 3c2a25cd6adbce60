"""Fit scaling laws to a table of runs and write the report: `fit_and_report` is the entry point.

The table is any CSV, Parquet or DataFrame with a parameter count, a token count (or the training compute, from which
D = C / (6 N)) and a final loss per run; columns `<loss>_<modality>` are fitted the same way, one law per modality.
For each loss: approach 3 (pipeline.study.fit_parametric) with bootstrap intervals, approach 2 where the design has
IsoFLOP budgets, compute-optimal N*(C) and D*(C), the loss predicted at a target compute, and a backtest that refits
without the largest budget and predicts it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.study.fit_bootstrap import BootstrapDraws, Interval, bootstrap, law_quantities
from pipeline.study.fit_isoflop import IsoFlopFit, fit_isoflop, group_budgets
from pipeline.study.fit_parametric import HUBER_DELTA, MIN_RUNS, PARAM_NAMES, ParametricFit, Runs, fit_law
from pipeline.study.fit_plots import write_plots
from pipeline.study.fit_report import write_report

_BACKTEST_FRACTION = 0.1  # without IsoFLOP budgets, the backtest holds out this top fraction of runs by compute
_MIN_BACKTEST_RUNS = 8  # runs left to fit after holding out the largest budget


@dataclass(frozen=True)
class FitOptions:
    bootstrap: int = 400
    level: float = 0.8  # of the percentile intervals
    seed: int = 0
    drop_highest: int = 0  # leave out this many highest-loss runs (Epoch left out 5 of Chinchilla's)
    delta: float = HUBER_DELTA
    target_compute: float | None = None  # None: 10x the largest run's compute


@dataclass
class LossAnalysis:
    """Everything fitted for one loss column: the objects the plots need and the JSON-ready summary."""

    name: str
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    point: ParametricFit
    draws: BootstrapDraws
    isoflop: IsoFlopFit | None
    summary: dict = field(default_factory=dict)

    @property
    def compute(self) -> np.ndarray:
        return 6.0 * self.n * self.d


def load_table(source, *, n_col: str = "N", d_col: str = "D", loss_col: str = "loss",
               c_col: str | None = None, budget_col: str | None = None) -> pd.DataFrame:
    """Read the runs into columns N, D, loss, one `loss_<modality>` per `<loss_col>_<modality>` column found, and
    `budget` (each run's planned compute budget) when `budget_col` names one."""
    if isinstance(source, pd.DataFrame):
        frame = source
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such results table: {path}")
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    needed = [n_col, c_col if c_col is not None else d_col, loss_col] + ([budget_col] if budget_col else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}; it has {list(frame.columns)} "
                         "(set the column names with n_col / d_col / c_col / loss_col)")
    n = frame[n_col].astype(float)
    table = pd.DataFrame({"N": n, "D": frame[c_col].astype(float) / (6.0 * n) if c_col else frame[d_col].astype(float),
                          "loss": frame[loss_col].astype(float)})
    if budget_col:
        table["budget"] = frame[budget_col].to_numpy()
    prefix = f"{loss_col}_"
    for col in frame.columns:
        if col.startswith(prefix) and pd.api.types.is_numeric_dtype(frame[col]):
            table[f"loss_{col[len(prefix):]}"] = frame[col].astype(float)
    return table


def select_runs(table: pd.DataFrame, col: str, drop_highest: int = 0) -> pd.DataFrame:
    """The runs with finite, positive N, D and `col`, less the `drop_highest` highest-loss ones."""
    values = table[["N", "D", col]]
    keep = np.isfinite(values).all(axis=1) & (values > 0).all(axis=1)
    runs = table.loc[keep, ["N", "D", col] + (["budget"] if "budget" in table else [])]
    return runs.sort_values(col).iloc[:len(runs) - drop_highest] if drop_highest else runs


def _backtest(n, d, loss, groups, options: FitOptions) -> dict:
    """Refit without the largest budget (or, without budgets, the top tenth of runs by compute) and predict it."""
    compute = 6 * n * d
    if groups:
        held = groups[-1]
        what = f"largest IsoFLOP budget (C = {np.exp(np.log(compute[held]).mean()):.3g})"
    else:
        held = np.argsort(compute)[-max(3, int(round(_BACKTEST_FRACTION * len(n)))):]
        what = f"top {len(held)} runs by compute (no IsoFLOP budgets)"
    train = np.setdiff1d(np.arange(len(n)), held)
    if len(train) < _MIN_BACKTEST_RUNS:
        return {"applicable": False, "reason": f"only {len(train)} runs would remain to fit"}
    fit = fit_law(Runs.from_arrays(n[train], d[train], loss[train]), delta=options.delta)
    rel = fit.law.loss(n[held], d[held]) / loss[held] - 1.0
    result = {"applicable": True, "held_out": what, "held_out_runs": int(len(held)), "train_runs": int(len(train)),
              "max_train_compute": float(compute[train].max()),
              "mean_abs_rel_error": float(np.abs(rel).mean()), "max_abs_rel_error": float(np.abs(rel).max()),
              "converged": fit.convergence.converged, "parameters": fit.law.as_dict()}
    if groups:
        best = float(loss[held].min())
        predicted = float(fit.law.frontier_loss(np.exp(np.log(compute[held]).mean())))
        result.update(best_loss=best, frontier_loss_predicted=predicted, frontier_rel_error=predicted / best - 1.0)
    return result


def _isoflop_summary(iso: IsoFlopFit | None, draws: BootstrapDraws, level: float) -> dict:
    if iso is None:
        return {"applicable": False,
                "reason": "fewer than two IsoFLOP budgets (>= 4 runs within +-6% compute, 3+ sizes) with an "
                          "interior minimum"}
    return {
        "applicable": True,
        "n_exponent": Interval.of(iso.n_exponent, draws.isoflop_exponents[:, 0], level).as_dict(),
        "d_exponent": Interval.of(iso.d_exponent, draws.isoflop_exponents[:, 1], level).as_dict(),
        "n_coef": iso.n_coef, "d_coef": iso.d_coef,
        "budgets": [{"compute": b.compute, "runs": int(len(b.runs)), "N_opt": b.n_opt, "D_opt": b.d_opt,
                     "loss_opt": b.loss_opt, "interior": b.interior} for b in iso.budgets],
    }


def analyse_loss(name: str, runs_table: pd.DataFrame, options: FitOptions) -> LossAnalysis:
    """All fits of one loss column (columns N, D, `name` and optionally `budget`)."""
    n, d, loss = (runs_table[c].to_numpy(float) for c in ("N", "D", name))
    labels = runs_table["budget"].to_numpy() if "budget" in runs_table else None
    runs = Runs.from_arrays(n, d, loss)
    started = time.perf_counter()
    point = fit_law(runs, delta=options.delta)
    fit_seconds = time.perf_counter() - started
    groups = group_budgets(6 * n * d, n, labels)
    iso = fit_isoflop(n, loss, 6 * n * d, groups)
    draws = bootstrap(runs, point, count=options.bootstrap, seed=options.seed, delta=options.delta,
                      isoflop=iso is not None, budget_labels=labels)
    c_max = float((6 * n * d).max())
    target = options.target_compute or 10.0 * c_max
    at_target = law_quantities(draws.thetas, target)
    point_target = law_quantities(point.theta, target)
    # Gain from scale: the fraction of the frontier loss that 10x more compute removes, at the largest run's compute.
    gain = 1.0 - law_quantities(draws.thetas, 10 * c_max)["loss_opt"] / law_quantities(draws.thetas, c_max)["loss_opt"]
    point_gain = 1.0 - float(point.law.frontier_loss(10 * c_max) / point.law.frontier_loss(c_max))

    def iv(key, samples=at_target, value=point_target):
        return Interval.of(float(np.ravel(value[key])[0]), samples[key], options.level).as_dict()

    summary = {
        "runs": int(len(n)), "compute_range": [float((6 * n * d).min()), c_max],
        "parameters": {k: iv(k) for k in PARAM_NAMES},
        "convergence": point.convergence.as_dict(), "fit_seconds": fit_seconds,
        "bootstrap": {"count": options.bootstrap, "converged_fraction": float(draws.converged.mean())
                      if options.bootstrap else None},
        "compute_optimal": {k: iv(k) for k in ("G", "n_exponent", "d_exponent", "frontier_exponent")},
        "target": {"compute": float(target), "N_opt": iv("N_opt"), "D_opt": iv("D_opt"), "loss": iv("loss_opt")},
        "gain_per_10x_compute": Interval.of(point_gain, gain, options.level).as_dict(),
        "approach2": _isoflop_summary(iso, draws, options.level),
        "backtest": _backtest(n, d, loss, groups, options),
    }
    return LossAnalysis(name, n, d, loss, point, draws, iso, summary)


def analyse(table: pd.DataFrame, options: FitOptions) -> tuple[LossAnalysis, dict[str, LossAnalysis]]:
    """The total loss's analysis and one per `loss_<modality>` column."""
    total = analyse_loss("loss", select_runs(table, "loss", options.drop_highest), options)
    modalities = {}
    for col in table.columns:
        if col.startswith("loss_"):
            runs = select_runs(table, col, options.drop_highest)
            if len(runs) >= MIN_RUNS:
                modalities[col[len("loss_"):]] = analyse_loss(col, runs, options)
    return total, modalities


def _strict_json(value):
    """NaN and infinity become null (JSON has neither); numpy scalars become Python's."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def fit_and_report(source, out_dir, *, n_col: str = "N", d_col: str = "D", loss_col: str = "loss",
                   c_col: str | None = None, budget_col: str | None = None, bootstrap: int = 400,
                   target_compute: float | None = None, level: float = 0.8, seed: int = 0,
                   drop_highest: int = 0) -> dict:
    """Fit the runs in `source` (CSV/Parquet path or DataFrame); write fit.json, report.md and PNG plots into
    `out_dir` and return fit.json's content.

    `c_col` names a training-compute column to derive D = C / (6 N) from, in place of `d_col`; `budget_col` names
    each run's planned IsoFLOP budget, for approach 2 (without it, runs are grouped by C = 6ND). `target_compute`
    defaults to 10x the largest run's; intervals are bootstrap percentiles at `level`."""
    options = FitOptions(bootstrap=bootstrap, level=level, seed=seed, drop_highest=drop_highest,
                         target_compute=target_compute)
    table = load_table(source, n_col=n_col, d_col=d_col, loss_col=loss_col, c_col=c_col, budget_col=budget_col)
    # A degenerate fit (an exponent driven to the edge of its range, as on a grid whose smallest size wins every
    # budget) overflows in the derived quantities; fit.json's convergence fields and nulls say so, so numpy's
    # warnings would only bury the one line a job prints.
    with np.errstate(all="ignore"):
        total, modalities = analyse(table, options)
    result = {
        "source": str(source) if not isinstance(source, pd.DataFrame) else "DataFrame",
        "columns": {"N": n_col, "D": None if c_col else d_col, "C": c_col, "loss": loss_col, "budget": budget_col},
        "method": {"law": "L = E + A / N^alpha + B / D^beta", "objective": "sum of Huber(log L_pred - log L)",
                   "huber_delta": options.delta, "solver": "variable projection + trust-region Newton",
                   "interval": f"{level:.0%} bootstrap percentile over runs", "bootstrap": bootstrap, "seed": seed,
                   "dropped_highest_loss_runs": drop_highest, "runs_in_table": int(len(table))},
        **total.summary,
        "modalities": {name: analysis.summary for name, analysis in modalities.items()},
    }
    if modalities:
        gains = {m: a.summary["gain_per_10x_compute"]["value"] for m, a in modalities.items()}
        known = [m for m, g in gains.items() if g is not None and np.isfinite(g)]
        result["largest_gain_modality"] = max(known, key=gains.get) if known else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with np.errstate(all="ignore"):
        result["plots"] = write_plots(total, modalities, out, options)
    result = _strict_json(result)
    (out / "fit.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    write_report(result, out / "report.md")
    return result

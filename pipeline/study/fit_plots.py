"""PNG plots of a scaling-law fit: IsoFLOP curves with their minima, loss against compute with the fitted frontier
and its extrapolation band, N* and D* against compute, residuals, and one frontier panel per modality.

Figures are built with matplotlib's object API (`Figure`, Agg canvas) so nothing touches pyplot's global state or
needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from pipeline.study.fit_bootstrap import frontier_band, law_quantities
from pipeline.study.fit_parametric import Runs, residuals

if TYPE_CHECKING:
    from pipeline.study.fit import FitOptions, LossAnalysis

_BAND_POINTS = 60


def _compute_axis(analysis: LossAnalysis, options: FitOptions) -> np.ndarray:
    c = analysis.compute
    top = max(c.max() * 10.0, options.target_compute or 0.0)
    return np.geomspace(c.min(), top, _BAND_POINTS)


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return path.name


def _frontier_axes(ax, analysis: LossAnalysis, options: FitOptions, *, colorbar: bool) -> None:
    """Runs coloured by size, the fitted frontier L*(C) and its bootstrap band, shaded past the largest run."""
    grid = _compute_axis(analysis, options)
    sc = ax.scatter(analysis.compute, analysis.loss, c=analysis.n, norm=LogNorm(), cmap="viridis", s=14)
    if len(analysis.draws.thetas):
        lo, hi = frontier_band(analysis.draws.thetas, grid, options.level)
        ax.fill_between(grid, lo, hi, color="tab:red", alpha=0.25, lw=0,
                        label=f"{options.level:.0%} bootstrap band")
    ax.plot(grid, analysis.point.law.frontier_loss(grid), color="tab:red", label="fitted frontier L*(C)")
    ax.axvspan(analysis.compute.max(), grid[-1], color="0.9", zorder=-1, label="extrapolation")
    ax.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel=analysis.name)
    ax.legend(fontsize=7)
    if colorbar:
        ax.figure.colorbar(sc, ax=ax, label="parameters N")


def plot_isoflop(analysis: LossAnalysis, path: Path) -> str:
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if analysis.isoflop is None:
        sc = ax.scatter(analysis.n, analysis.loss, c=analysis.compute, norm=LogNorm(), cmap="plasma", s=14)
        fig.colorbar(sc, ax=ax, label="compute C")
        ax.set_title("no IsoFLOP budgets in this design (approach 2 not applicable)", fontsize=9)
    else:
        budgets = analysis.isoflop.budgets
        colors = colormaps["plasma"](np.linspace(0.0, 0.85, len(budgets)))
        for budget, color in zip(budgets, colors):
            n = analysis.n[budget.runs]
            x = np.linspace(np.log(n.min()), np.log(n.max()), 50)
            ax.scatter(n, analysis.loss[budget.runs], color=color, s=14)
            ax.plot(np.exp(x), np.polyval(budget.parabola, x), color=color, label=f"C = {budget.compute:.2g}")
            ax.plot(budget.n_opt, budget.loss_opt, marker="*" if budget.interior else "x", ms=11, color=color,
                    mec="black")
        ax.set_title("IsoFLOP curves: parabola in log N per budget, minima starred", fontsize=9)
        ax.legend(fontsize=7)
    ax.set(xscale="log", xlabel="parameters N", ylabel=analysis.name)
    return _save(fig, path)


def plot_frontier(analysis: LossAnalysis, options: FitOptions, path: Path) -> str:
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    _frontier_axes(ax, analysis, options, colorbar=True)
    if analysis.isoflop is not None:
        b = [b for b in analysis.isoflop.budgets if b.interior]
        ax.scatter([x.compute for x in b], [x.loss_opt for x in b], marker="*", s=90, color="black",
                   label="IsoFLOP minima", zorder=3)
        ax.legend(fontsize=7)
    ax.set_title("loss against compute with the compute-optimal frontier", fontsize=9)
    return _save(fig, path)


def plot_allocation(analysis: LossAnalysis, options: FitOptions, path: Path) -> str:
    fig = Figure(figsize=(10, 4), layout="constrained")
    grid = _compute_axis(analysis, options)
    draws = [law_quantities(analysis.draws.thetas, c) for c in grid] if len(analysis.draws.thetas) else []
    tail = 50.0 * (1.0 - options.level)
    for i, (key, label) in enumerate((("N_opt", "N*(C) parameters"), ("D_opt", "D*(C) tokens"))):
        ax = fig.add_subplot(1, 2, i + 1)
        point = np.array([law_quantities(analysis.point.theta, c)[key][0] for c in grid])
        if not np.any(np.isfinite(point) & (point > 0)):
            # A degenerate fit (an exponent at the edge of its range) has no finite optimum to draw on a log axis.
            ax.text(0.5, 0.5, "no compute-optimal allocation:\nthe fit is degenerate (see fit.json)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set(xscale="log", xlabel="compute C (FLOPs)", ylabel=label)
            continue
        ax.plot(grid, point, color="tab:blue", label="approach 3")
        if draws:
            samples = np.stack([q[key] for q in draws], axis=1)
            ax.fill_between(grid, np.nanpercentile(samples, tail, axis=0),
                            np.nanpercentile(samples, 100 - tail, axis=0), color="tab:blue", alpha=0.25, lw=0,
                            label=f"{options.level:.0%} band")
        if analysis.isoflop is not None:
            iso = analysis.isoflop
            b = [x for x in iso.budgets if x.interior]
            ax.scatter([x.compute for x in b], [x.n_opt if key == "N_opt" else x.d_opt for x in b],
                       marker="*", s=80, color="black", label="IsoFLOP minima", zorder=3)
            ax.plot(grid, iso.n_opt(grid) if key == "N_opt" else iso.d_opt(grid), ls="--", color="black",
                    label="approach 2")
        ax.axvline(analysis.compute.max(), color="0.6", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=label)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_residuals(analysis: LossAnalysis, path: Path) -> str:
    fig = Figure(figsize=(10, 4), layout="constrained")
    r = residuals(analysis.point.theta, Runs.from_arrays(analysis.n, analysis.d, analysis.loss))
    for i, (x, label) in enumerate(((analysis.compute, "compute C"), (analysis.n, "parameters N"))):
        ax = fig.add_subplot(1, 2, i + 1)
        sc = ax.scatter(x, r, c=analysis.d, norm=LogNorm(), cmap="viridis", s=12)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set(xscale="log", xlabel=label, ylabel="log L_pred - log L")
    fig.colorbar(sc, ax=fig.axes, label="tokens D")
    fig.suptitle("approach 3 residuals", fontsize=9)
    return _save(fig, path)


def plot_modalities(modalities: dict[str, LossAnalysis], options: FitOptions, path: Path) -> str:
    cols = min(3, len(modalities))
    rows = -(-len(modalities) // cols)
    fig = Figure(figsize=(4.5 * cols, 3.6 * rows), layout="constrained")
    for i, (name, analysis) in enumerate(modalities.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        _frontier_axes(ax, analysis, options, colorbar=False)
        gain = analysis.summary["gain_per_10x_compute"]["value"]
        ax.set_title(f"{name}: alpha {analysis.point.law.alpha:.2f}, beta {analysis.point.law.beta:.2f}, "
                     f"-{gain:.1%} per 10x C", fontsize=8)
    return _save(fig, path)


def write_plots(total: LossAnalysis, modalities: dict[str, LossAnalysis], out: Path, options: FitOptions) -> list:
    """Write every plot into `out`; returns their file names."""
    names = [plot_isoflop(total, out / "isoflop.png"), plot_frontier(total, options, out / "frontier.png"),
             plot_allocation(total, options, out / "allocation.png"), plot_residuals(total, out / "residuals.png")]
    if modalities:
        names.append(plot_modalities(modalities, options, out / "modalities.png"))
    return names

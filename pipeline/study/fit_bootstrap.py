"""Bootstrap over runs: refit approach 3 (and approach 2 where the design allows) on resampled sets of runs, and
turn the refits into percentile intervals for the parameters and everything derived from them.

Resampling whole runs is the unit Epoch AI used for the Chinchilla refit; it captures both the noise of each run and
how much the estimate leans on particular runs. Each refit starts from the point estimate and from the best cell of
a coarse (alpha, beta) profile grid, so a resample whose optimum moved to another basin is still found, and the two
starts agreeing is that refit's convergence check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.study.fit_isoflop import fit_isoflop, group_budgets
from pipeline.study.fit_parametric import HUBER_DELTA, REFIT_GRID, ParametricFit, Runs, fit_law


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap standard error and percentile interval."""

    value: float
    lo: float
    hi: float
    se: float

    @classmethod
    def of(cls, value: float, samples: np.ndarray, level: float) -> Interval:
        samples = np.asarray(samples, float)
        samples = samples[np.isfinite(samples)]
        if len(samples) < 2:
            return cls(float(value), float("nan"), float("nan"), float("nan"))
        tail = 50.0 * (1.0 - level)
        lo, hi = np.percentile(samples, [tail, 100.0 - tail])
        return cls(float(value), float(lo), float(hi), float(samples.std(ddof=1)))

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "se": self.se}


@dataclass(frozen=True)
class BootstrapDraws:
    """One row per resample: approach 3's (log E, log A, log B, alpha, beta), whether that refit converged, and
    approach 2's (a, b) exponents (NaN where the resample has too few budgets)."""

    thetas: np.ndarray
    converged: np.ndarray
    isoflop_exponents: np.ndarray


def bootstrap(runs: Runs, point: ParametricFit, *, count: int, seed: int, delta: float = HUBER_DELTA,
              isoflop: bool = False, budget_labels: np.ndarray | None = None) -> BootstrapDraws:
    """Refit `count` resamples of the runs (drawn with replacement, same size as the data); with `isoflop`, approach 2
    too, its budgets grouped as the point fit's were (by `budget_labels` when given)."""
    rng = np.random.default_rng(seed)
    thetas = np.empty((count, 5))
    converged = np.empty(count, bool)
    iso = np.full((count, 2), np.nan)
    n, d, loss = np.exp(runs.log_n), np.exp(runs.log_d), np.exp(runs.log_loss)
    for i in range(count):
        index = rng.integers(0, len(runs), len(runs))
        refit = fit_law(runs.take(index), delta=delta, grid=REFIT_GRID, warm_start=point.theta, starts=1)
        thetas[i], converged[i] = refit.theta, refit.convergence.converged
        if isoflop:
            c = 6 * n[index] * d[index]
            labels = None if budget_labels is None else budget_labels[index]
            fit2 = fit_isoflop(n[index], loss[index], c, group_budgets(c, n[index], labels))
            if fit2 is not None:
                iso[i] = fit2.n_exponent, fit2.d_exponent
    return BootstrapDraws(thetas, converged, iso)


def law_quantities(thetas: np.ndarray, compute: float) -> dict[str, np.ndarray]:
    """Parameters and compute-optimal quantities of each law (rows of `thetas`), vectorised over the rows."""
    thetas = np.atleast_2d(thetas)
    e, a, b, alpha, beta = thetas.T
    big_a, big_b = np.exp(a), np.exp(b)
    g = (alpha * big_a / (beta * big_b)) ** (1.0 / (alpha + beta))
    c6 = compute / 6.0
    n_opt = g * c6 ** (beta / (alpha + beta))
    d_opt = c6 ** (alpha / (alpha + beta)) / g
    return {
        "E": np.exp(e), "A": big_a, "B": big_b, "alpha": alpha, "beta": beta,
        "G": g,
        "n_exponent": beta / (alpha + beta),
        "d_exponent": alpha / (alpha + beta),
        "frontier_exponent": alpha * beta / (alpha + beta),
        "N_opt": n_opt, "D_opt": d_opt,
        "loss_opt": np.exp(e) + big_a * n_opt ** -alpha + big_b * d_opt ** -beta,
    }


def frontier_band(thetas: np.ndarray, compute: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of the frontier loss L*(C) over the laws in `thetas`, at each compute."""
    losses = np.stack([law_quantities(thetas, c)["loss_opt"] for c in compute], axis=1)
    tail = 50.0 * (1.0 - level)
    return np.nanpercentile(losses, tail, axis=0), np.nanpercentile(losses, 100.0 - tail, axis=0)

"""Approach 2 of Hoffmann et al. (2022): per compute budget, a parabola of loss in log N through that budget's runs;
its minimum gives N_opt(C) and D_opt(C) = C / (6 N_opt), and power laws in C are fitted through the minima.

Only designs with IsoFLOP budgets allow it: runs are grouped by their planned budget or else by compute, and a group
counts as a budget when it has MIN_RUNS_PER_BUDGET runs over at least 3 model sizes (and, grouped by compute, a
spread within BUDGET_TOLERANCE). A budget's compute is the mean of its runs' 6ND, the C of approach 3. Minima
outside a budget's range of N are extrapolations of the parabola and are left out of the power laws (the grid's
bias that Besiroglu et al. warn of is largest there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUDGET_TOLERANCE = 0.05  # decades of compute (about +-6%) within which runs share a budget
MIN_RUNS_PER_BUDGET = 4


@dataclass(frozen=True)
class Budget:
    compute: float  # geometric mean of the group's C
    runs: np.ndarray  # indices of the runs in this budget
    parabola: np.ndarray  # loss = p[0] x^2 + p[1] x + p[2], x = ln N
    n_opt: float
    d_opt: float
    loss_opt: float
    interior: bool  # the minimum lies within the budget's sizes


@dataclass(frozen=True)
class IsoFlopFit:
    budgets: list[Budget]
    n_exponent: float  # a in N_opt = k_n C^a
    n_coef: float
    d_exponent: float  # b in D_opt = k_d C^b
    d_coef: float

    def n_opt(self, c):
        return self.n_coef * np.asarray(c, float) ** self.n_exponent

    def d_opt(self, c):
        return self.d_coef * np.asarray(c, float) ** self.d_exponent


def group_budgets(compute: np.ndarray, n: np.ndarray, labels: np.ndarray | None = None) -> list[np.ndarray]:
    """Index arrays of the runs that form IsoFLOP budgets, smallest compute first.

    With `labels` (each run's planned budget, as a study records it) runs group by label; otherwise by C = 6ND,
    runs within BUDGET_TOLERANCE of their neighbours sharing a budget."""
    log_c = np.log10(compute)
    if labels is not None:
        groups = [np.nonzero(labels == value)[0] for value in np.unique(labels)]
        candidates = sorted(groups, key=lambda g: log_c[g].mean())
    else:
        order = np.argsort(log_c)
        candidates = [g for g in np.split(order, np.nonzero(np.diff(log_c[order]) > BUDGET_TOLERANCE)[0] + 1)
                      if np.ptp(log_c[g]) <= BUDGET_TOLERANCE]
    return [g for g in candidates
            if len(g) >= MIN_RUNS_PER_BUDGET and len(np.unique(np.round(np.log(n[g]), 6))) >= 3]


def _budget(index: np.ndarray, n, loss, compute) -> Budget | None:
    x = np.log(n[index])
    p = np.polyfit(x, loss[index], 2)
    if p[0] <= 0:  # no minimum: the budget's sizes do not bracket the optimum
        return None
    x_opt = -p[1] / (2 * p[0])
    c = float(np.exp(np.log(compute[index]).mean()))
    n_opt = float(np.exp(x_opt))
    return Budget(compute=c, runs=index, parabola=p, n_opt=n_opt, d_opt=c / (6 * n_opt),
                  loss_opt=float(np.polyval(p, x_opt)), interior=bool(x.min() <= x_opt <= x.max()))


def fit_isoflop(n: np.ndarray, loss: np.ndarray, compute: np.ndarray,
                groups: list[np.ndarray] | None = None) -> IsoFlopFit | None:
    """Approach 2, or None when fewer than two budgets have an interior minimum."""
    n, loss, compute = (np.asarray(v, float) for v in (n, loss, compute))
    if groups is None:
        groups = group_budgets(compute, n)
    budgets = [b for b in (_budget(g, n, loss, compute) for g in groups) if b is not None]
    used = [b for b in budgets if b.interior]
    if len(used) < 2:
        return None
    log_c = np.log([b.compute for b in used])
    a, log_kn = np.polyfit(log_c, np.log([b.n_opt for b in used]), 1)
    b_exp, log_kd = np.polyfit(log_c, np.log([b.d_opt for b in used]), 1)
    return IsoFlopFit(budgets, float(a), float(np.exp(log_kn)), float(b_exp), float(np.exp(log_kd)))

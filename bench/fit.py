"""Scaling-law fit speed: Tessera's approach-3 point fit against the two public ways of fitting the same law.

    python bench/fit.py [--repeats 5] [--grid-starts 4500] [--skip-toolkit]

All three fit Epoch AI's Chinchilla data (tests/data/chinchilla_epoch_svg_extracted.csv, five highest-loss runs left
out) with the same objective, Huber (delta 1e-3) on log residuals, in the same process:
- Tessera: `pipeline.study.fit_parametric.fit_law` (variable projection + trust-region Newton), the code that ships;
- the L-BFGS grid of Hoffmann et al. and Epoch: scipy L-BFGS-B with numerical gradients from every point of the
  4,500-point grid alpha, beta in {0, 0.5, .., 2}, log E in {-1, -.5, .., 1}, log A, log B in {0, 5, .., 25}, keeping
  the best; its objective is the sum of Huber losses, as Epoch's;
- the `chinchilla` PyPI toolkit (`Chinchilla.fit`: BFGS from its README's 5^5 grid, 128-bit floats, a process pool
  over all cores), given the same log-Huber loss; it is a dev extra, and this section says so if it is missing.
Wall-clock and CPU seconds (the toolkit's CPU includes its worker processes'); ours is the median of --repeats fits.
On a machine shared with other work, CPU seconds are the steadier comparison. Estimates are printed side by side with
Epoch's, with each one's Huber objective on the data (lower is better; equal means the same optimum).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import optimize
from scipy.special import huber

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.study.fit import load_table, select_runs  # noqa: E402
from pipeline.study.fit_parametric import HUBER_DELTA, LossLaw, Runs, fit_law, objective  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "chinchilla_epoch_svg_extracted.csv"
EPOCH = LossLaw(E=1.817, A=482.0, B=2085.0, alpha=0.348, beta=0.366)


def chinchilla_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = select_runs(load_table(DATA, n_col="Model Size", c_col="Training FLOP"), "loss", drop_highest=5)
    return table["N"].to_numpy(), table["D"].to_numpy(), table["loss"].to_numpy()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def tessera(runs: Runs, repeats: int) -> tuple[float, float, LossLaw, dict]:
    times = []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), _cpu()
        fit = fit_law(runs)
        times.append((time.perf_counter() - started, _cpu() - cpu))
    wall, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
    return wall, cpu, fit.law, fit.convergence.as_dict()


def _grid_objective(x, log_n, log_d, log_loss):
    e, a, b, alpha, beta = x
    pred = np.logaddexp(np.logaddexp(e, a - alpha * log_n), b - beta * log_d)
    return huber(HUBER_DELTA, pred - log_loss).sum()


def lbfgs_grid(runs: Runs, starts: int) -> tuple[float, float, LossLaw, int]:
    grid = list(itertools.product(np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5), np.arange(-1, 1.01, 0.5),
                                  np.arange(0, 25.1, 5), np.arange(0, 25.1, 5)))[:starts]
    args = (runs.log_n, runs.log_d, runs.log_loss)
    started, cpu = time.perf_counter(), _cpu()
    best = None
    for alpha, beta, e, a, b in grid:
        res = optimize.minimize(_grid_objective, [e, a, b, alpha, beta], args=args, method="L-BFGS-B")
        if best is None or res.fun < best.fun:
            best = res
    return time.perf_counter() - started, _cpu() - cpu, LossLaw.from_theta(best.x), len(grid)


def toolkit(n, d, loss) -> tuple[float, float, LossLaw] | str:
    try:
        from chinchilla import Chinchilla
        from chinchilla._metrics import log_huber
    except ImportError:
        return "not installed (pip install chinchilla==0.2.0, the dev extra)"
    with tempfile.TemporaryDirectory() as project:
        # The toolkit reads its runs from <project>/df.csv (columns C, N, D, loss).
        rows = np.column_stack([6 * n * d, n, d, loss])
        np.savetxt(Path(project) / "df.csv", rows, delimiter=",", header="C,N,D,loss", comments="")
        grid = dict(E=np.linspace(1, 2, 5), a=np.linspace(1, 10, 5), b=np.linspace(1, 10, 5),
                    alpha=np.linspace(0.1, 0.7, 5), beta=np.linspace(0.1, 0.7, 5))  # its README's grid
        cc = Chinchilla(project, param_grid=grid, loss_fn=functools.partial(log_huber, delta=HUBER_DELTA),
                        log_level=logging.ERROR)
        started, cpu = time.perf_counter(), _cpu()
        cc.fit()  # its pool's workers are joined on return, so their CPU time is in os.times()' children
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    p = cc.params
    return seconds, cpu, LossLaw(p["E"], p["A"], p["B"], p["alpha"], p["beta"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid-starts", type=int, default=4500)
    parser.add_argument("--skip-toolkit", action="store_true")
    args = parser.parse_args()
    n, d, loss = chinchilla_runs()
    runs = Runs.from_arrays(n, d, loss)

    ours_s, ours_cpu, ours, convergence = tessera(runs, args.repeats)
    grid_s, grid_cpu, grid, grid_starts = lbfgs_grid(runs, args.grid_starts)
    rows = [("Epoch AI (published)", None, None, EPOCH), ("Tessera fit_law", ours_s, ours_cpu, ours),
            (f"L-BFGS grid, {grid_starts} starts", grid_s, grid_cpu, grid)]
    kit = "skipped" if args.skip_toolkit else toolkit(n, d, loss)
    if isinstance(kit, tuple):
        rows.append((f"chinchilla toolkit, 3125 BFGS starts, {os.cpu_count()} processes", *kit))
    else:
        print(f"chinchilla toolkit: {kit}")

    print(f"{len(loss)} runs; Tessera converged: {convergence['converged']} (gradient {convergence['grad_norm']:.1e},"
          f" {convergence['starts_agreeing']}/{convergence['starts']} starts agree)")
    print("| fit | wall s | x Tessera | CPU s | x Tessera | E | A | B | alpha | beta | Huber objective |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, wall, cpu, law in rows:
        theta = np.array([np.log(law.E), np.log(law.A), np.log(law.B), law.alpha, law.beta])
        timing = ("- | - | - | -" if wall is None else
                  f"{wall:.2f} | {wall / ours_s:.0f}x | {cpu:.2f} | {cpu / ours_cpu:.0f}x")
        print(f"| {name} | {timing} | {law.E:.4f} | {law.A:.1f} | {law.B:.1f} | {law.alpha:.4f} | {law.beta:.4f} | "
              f"{objective(theta, runs):.9f} |")
    print(json.dumps({name: {"wall_s": w, "cpu_s": c, **law.as_dict()} for name, w, c, law in rows}))


if __name__ == "__main__":
    main()

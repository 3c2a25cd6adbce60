"""report.md of a scaling-law fit, rendered from fit.json's content (so the report never says more than the JSON)."""

from __future__ import annotations

from pathlib import Path


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.4g}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _iv(entry: dict, fmt=_num) -> str:
    return f"{fmt(entry['value'])} [{fmt(entry['lo'])}, {fmt(entry['hi'])}] (se {fmt(entry['se'])})"


def _parameters(fit: dict) -> list[str]:
    lines = ["| parameter | estimate [interval] (bootstrap se) |", "|---|---|"]
    lines += [f"| {name} | {_iv(entry)} |" for name, entry in fit["parameters"].items()]
    return lines


def _convergence(fit: dict) -> list[str]:
    c = fit["convergence"]
    boot = fit["bootstrap"]
    verdict = "converged" if c["converged"] else "**NOT converged**"
    return [f"Optimiser: {verdict}. Objective {_num(c['objective'])}; gradient max-norm {_num(c['grad_norm'])} "
            f"(tolerance {_num(c['grad_tol'])}); smallest Hessian eigenvalue {_num(c['hessian_min_eig'])}; "
            f"{c['starts_agreeing']} of {c['starts']} starts reached the same optimum (parameters within "
            f"{_num(c['max_param_spread'])} relative); best (alpha, beta) profile cell on the grid's edge: "
            f"{_num(c['on_grid_edge'])}. Point fit took {fit['fit_seconds']:.2f} s. Bootstrap refits converged: "
            f"{_pct(boot['converged_fraction'])} of {boot['count']}."]


def _allocation(fit: dict) -> list[str]:
    co, t = fit["compute_optimal"], fit["target"]
    lines = ["| quantity | approach 3 | approach 2 |", "|---|---|---|"]
    a2 = fit["approach2"]
    lines.append(f"| a in N*(C) ~ C^a | {_iv(co['n_exponent'])} | "
                 f"{_iv(a2['n_exponent']) if a2['applicable'] else '-'} |")
    lines.append(f"| b in D*(C) ~ C^b | {_iv(co['d_exponent'])} | "
                 f"{_iv(a2['d_exponent']) if a2['applicable'] else '-'} |")
    lines.append(f"| G = (alpha A / (beta B))^(1/(alpha+beta)) | {_iv(co['G'])} | - |")
    lines.append(f"| gamma in L*(C) - E ~ C^-gamma | {_iv(co['frontier_exponent'])} | - |")
    lines += ["", f"At the target compute C = {_num(t['compute'])} FLOPs (the largest run has "
              f"{_num(fit['compute_range'][1])}):", "",
              f"- N* = {_iv(t['N_opt'])}", f"- D* = {_iv(t['D_opt'])}", f"- predicted loss = {_iv(t['loss'])}",
              f"- 10x the largest run's compute lowers the frontier loss by {_iv(fit['gain_per_10x_compute'], _pct)}"]
    if not a2["applicable"]:
        lines += ["", f"Approach 2 not applicable: {a2['reason']}."]
    else:
        lines += ["", "| IsoFLOP budget C | runs | N_opt | D_opt | loss at minimum | minimum inside the sizes |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {_num(b['compute'])} | {b['runs']} | {_num(b['N_opt'])} | {_num(b['D_opt'])} | "
                  f"{_num(b['loss_opt'])} | {_num(b['interior'])} |" for b in a2["budgets"]]
    return lines


def _backtest(fit: dict) -> list[str]:
    b = fit["backtest"]
    if not b["applicable"]:
        return [f"Backtest not run: {b['reason']}."]
    lines = [f"Refit without the {b['held_out']} ({b['held_out_runs']} runs; {b['train_runs']} runs left, largest "
             f"compute {_num(b['max_train_compute'])}), then predicted the held-out runs: mean |relative error| "
             f"{b['mean_abs_rel_error']:.2%}, max {b['max_abs_rel_error']:.2%}. Refit converged: "
             f"{_num(b['converged'])}."]
    if "frontier_rel_error" in b:
        lines.append(f"Best held-out loss {_num(b['best_loss'])} against the refit's frontier "
                     f"{_num(b['frontier_loss_predicted'])}: {b['frontier_rel_error']:+.2%}.")
    return lines


def _modalities(result: dict) -> list[str]:
    mods = result["modalities"]
    lines = [f"Per-modality laws (same method). Largest gain from scale: **{result['largest_gain_modality']}**.",
             "", "| modality | E | alpha | beta | gamma (frontier exponent) | loss drop per 10x compute | converged |",
             "|---|---|---|---|---|---|---|"]
    # Largest gain first; a modality whose gain could not be estimated (degenerate fit: null in fit.json) last.
    ranked = sorted(mods, key=lambda m: (mods[m]["gain_per_10x_compute"]["value"] is None,
                                         -(mods[m]["gain_per_10x_compute"]["value"] or 0.0)))
    for name in ranked:
        m = mods[name]
        p = m["parameters"]
        lines.append(f"| {name} | {_num(p['E']['value'])} | {_iv(p['alpha'])} | {_iv(p['beta'])} | "
                     f"{_iv(m['compute_optimal']['frontier_exponent'])} | {_iv(m['gain_per_10x_compute'], _pct)} | "
                     f"{_num(m['convergence']['converged'])} |")
    return lines


def render(result: dict) -> str:
    method = result["method"]
    lines = ["# Scaling-law fit", "",
             f"Source: `{result['source']}`; {result['runs']} runs fitted of {method['runs_in_table']} "
             f"({method['dropped_highest_loss_runs']} highest-loss runs left out). Law {method['law']}, "
             f"{method['objective']} with delta {method['huber_delta']}, {method['solver']}. Intervals: "
             f"{method['interval']}, {method['bootstrap']} resamples.", "",
             "## Approach 3 parameters", "", *_parameters(result), "", *_convergence(result), "",
             "## Compute-optimal allocation", "", *_allocation(result), "",
             "## Backtest: leave the largest budget out", "", *_backtest(result), ""]
    if result["modalities"]:
        lines += ["## Modalities", "", *_modalities(result), ""]
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in result["plots"]] + [""]
    return "\n".join(lines)


def write_report(result: dict, path: Path) -> None:
    path.write_text(render(result))

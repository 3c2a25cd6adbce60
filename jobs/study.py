"""python -m jobs.study plan|run|status|report SPEC ... and fit RESULTS_OR_CSV: scaling-law studies.

    plan SPEC                          the runs (N, D, C, steps, lr, memory per worker, estimated time), nothing run
    run SPEC --storage URI [--address] every run as a pretrain on Ray (Tune schedules them); a rerun resumes
    status SPEC --storage URI          runs done / running / failed with their latest loss (reads the folder only)
    report SPEC --storage URI [--out]  the results table, the fit and its report (plots) of the study
    fit RESULTS_OR_CSV [--out DIR]     fit any table with N, D and loss columns (or a study's results table)
    sample-data OUT [--samples N]      token shards from the embedded sample corpus for a CPU study

N is the count without embeddings and heads unless the spec's `n_count` (or fit's --n) says total: at the widths a
CPU study reaches, the embedding tables and heads are most of the parameters and do not scale with depth.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from jobs.cli import run_job
from jobs.sizes import zero_bytes
from pipeline.data.storage import Storage
from pipeline.study.plan import PlannedRun, makespan, plan_study, trial_seconds
from pipeline.study.records import RESULTS, StudyMismatchError, error_line, study_storage
from pipeline.study.results import fit_table, results_table, write_results
from pipeline.study.status import format_status, status_table
from schemas.config import ConfigError, load_config
from schemas.study import StudySpec


def load_spec(args: argparse.Namespace) -> StudySpec:
    overrides = list(args.overrides)
    if args.data:  # local paths made absolute: Tune trials run in their own working directories
        overrides.append(f"data={args.data if '://' in args.data else os.path.abspath(args.data)}")
    spec = load_config(StudySpec, args.spec, overrides)
    if spec.data and "://" not in spec.data and not os.path.isabs(spec.data):
        spec = spec.model_copy(update={"data": os.path.abspath(spec.data)})
    return spec


def plan(spec: StudySpec) -> list[PlannedRun]:
    try:
        return plan_study(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _si(value: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def plan_text(spec: StudySpec, runs: list[PlannedRun], slots: int) -> str:
    stage = spec.pretrain.zero.stage
    table = pd.DataFrame([{
        "run": r.run_id, "width": r.dims.dim, "depth": f"{r.dims.encoder_depth}+{r.dims.decoder_depth}",
        "N": _si(r.params_non_embedding), "N_total": _si(r.params_total), "D": _si(r.D), "C=6ND": f"{r.C:.3g}",
        "model_FLOPs": f"{r.model_flops:.3g}", "steps": r.steps, "batch": r.global_batch, "lr": f"{r.lr:.3g}",
        # ZeRO model states (python -m jobs.sizes's formulas), at the run's stage and worker count
        f"mem/worker(Z{stage})": f"{zero_bytes(r.params_total, spec.resources.workers)[f'zero{stage}'] / 1e9:.3f}GB",
        "est_s": round(r.est_seconds),
        # a WSD cooldown trains only from its trunk's branch step
        **({"from": f"{r.trunk}@{r.branch_step}" if r.trunk else "-"} if any(x.trunk for x in runs) else {}),
    } for r in runs])
    seconds = list(trial_seconds(runs).values())
    return (f"study {spec.name}: {len(runs)} runs ({len(spec.sizes)} sizes, {spec.budgets.kind} budgets, "
            f"{len(spec.seeds)} seed(s)); N counts parameters {spec.n_count.replace('_', '-')}\n"
            f"{table.to_string(index=False)}\n"
            f"estimated: {sum(seconds) / 60:.1f} min of runs, {makespan(seconds, slots) / 60:.1f} min wall at "
            f"{slots} at a time (start-up {spec.resources.startup_s:g} s + {spec.resources.step_s:g} s per step + "
            f"model FLOPs at {spec.resources.flops_per_worker:.3g} FLOP/s per worker)")


def local_slots(spec: StudySpec) -> int:
    """Runs at once for the plan's estimate: the spec's, else what this machine's CPUs hold."""
    from pipeline.study.plan import concurrency

    return concurrency(spec, {"CPU": os.cpu_count() or 1, "GPU": 0})


def cmd_plan(args) -> int:
    spec = load_spec(args)
    print(plan_text(spec, plan(spec), local_slots(spec)))
    return 0


def cmd_run(args) -> int:
    from cluster.connect import connect
    from pipeline.study.runner import run_study

    spec = load_spec(args)
    if not spec.data:
        raise ConfigError("data: a study trains on token shards; set data in the spec or pass --data URI")
    print(plan_text(spec, plan(spec), spec.resources.concurrency or local_slots(spec)))
    cluster = connect(args.address)
    study = study_storage(spec, args.storage)
    try:
        table = run_study(spec, study, cluster_resources=cluster["resources"])
    except StudyMismatchError as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001  the scheduler itself stopped (e.g. Ray's OOM killer took a trial)
        print(f"error: the study stopped ({error_line(str(exc))}); rerun the same command to resume it",
              file=sys.stderr)
        return 1
    print(format_status(status_table(spec, study)))
    print(f"results: {study.uri(RESULTS + '.parquet')} (and .csv)")
    return 1 if (table["status"] != "done").any() else 0


def existing_study(args) -> tuple[StudySpec, Storage]:
    spec = load_spec(args)
    plan(spec)
    study = study_storage(spec, args.storage)
    if not study.exists():
        raise ConfigError(f"no study at {study.uri()}: start it with `python -m jobs.study run`")
    return spec, study


def cmd_status(args) -> int:
    spec, study = existing_study(args)
    print(format_status(status_table(spec, study)))
    print("'running' is a run in flight, or one whose driver was killed: rerun `run` to resume it")
    return 0


def exponents_text(fit: dict) -> str:
    """The fitted law in one line per quantity, with its intervals."""
    params = fit.get("parameters", {})
    parts = [f"{name} {p['value']:.3g} [{p['lo']:.3g}, {p['hi']:.3g}]" for name, p in params.items()
             if isinstance(p, dict) and p.get("value") is not None and p.get("lo") is not None]
    optimal = fit.get("compute_optimal", {})
    for name in ("n_exponent", "d_exponent"):
        if optimal.get(name, {}).get("value") is not None:
            parts.append(f"N*~C^{optimal[name]['value']:.3f}" if name == "n_exponent" else
                         f"D*~C^{optimal[name]['value']:.3f}")
    line = "fit: L = E + A/N^alpha + B/D^beta: " + ", ".join(parts)
    convergence = fit.get("convergence", {})
    if convergence.get("on_grid_edge") or not convergence.get("converged", True):
        # Printed, not buried in fit.json: exponents from such a fit are not a scaling law.
        line += ("\nwarning: the fit is degenerate (the optimum lies at the edge of the exponent range, or the "
                 "solver did not converge): the design does not constrain both exponents; see report.md")
    return line


def fit_source(source: pd.DataFrame | str, out: Path, args) -> dict:
    from pipeline.study.fit import fit_and_report

    try:
        return fit_and_report(source, out, n_col=args.n_col, d_col=args.d_col, loss_col=args.loss_col,
                              bootstrap=args.bootstrap, target_compute=args.target_compute)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"fit: {exc}") from None


def cmd_fit(args) -> int:
    path = Path(args.source)
    if not path.is_file():
        raise ConfigError(f"no such results table: {path}")
    frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    if {"status", "val_loss", "N_non_embedding"} <= set(frame.columns):  # a study's results table
        frame = fit_table(frame, args.n)
        args.n_col, args.d_col, args.loss_col = "N", "D", "loss"
    fit = fit_source(frame, Path(args.out or path.parent / "fit"), args)
    print(exponents_text(fit))
    print(f"report: {Path(args.out or path.parent / 'fit') / 'report.md'}")
    return 0


def cmd_report(args) -> int:
    spec, study = existing_study(args)
    table = results_table(spec, study)
    written = write_results(study, table)
    out = Path(args.out or (study.path("report") if not study.is_remote else "study_report"))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{RESULTS}.csv", index=False)
    print(format_status(status_table(spec, study)))
    args.n_col, args.d_col, args.loss_col = "N", "D", "loss"
    fit = fit_source(fit_table(table, args.n or spec.n_count), out, args)
    print(exponents_text(fit))
    print(f"results: {written[0]}; report: {out / 'report.md'}")
    return 0


def cmd_sample_data(args) -> int:
    from cluster.connect import connect
    from pipeline.study.sample_data import write_study_data

    connect(args.address)
    made = write_study_data(args.out, args.samples, args.vocab)
    vocab = made["vocab_size"]
    print(f"token shards: {made['data']} (study --data); vocabulary {vocab} ids: set pretrain.vocab_sizes "
          f"{{caption: {vocab}, color_palette: {vocab}, metadata: {vocab}}}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m jobs.study", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    for name, help_text in (("plan", "print the runs, start nothing"), ("run", "run or resume the study on Ray"),
                            ("status", "runs done / running / failed"), ("report", "results table, fit, report")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("spec", help="study spec YAML (configs/study/*.yaml)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a spec value, e.g. --set seeds=[0,1] (repeatable)")
        sub.add_argument("--data", help="token shards (a preprocess output), overriding the spec's data")
        if name != "plan":
            sub.add_argument("--storage", required=True, help="root of study folders (local or s3://)")
        if name == "run":
            sub.add_argument("--address", help="Ray cluster address (default: a local instance)")
        if name == "report":
            sub.add_argument("--out", help="report directory (default: <storage>/<study>/report)")
    data = commands.add_parser("sample-data", help="token shards from the embedded sample corpus, for CPU studies")
    data.add_argument("out", help="local folder for the corpus, shards and vocabulary")
    data.add_argument("--samples", type=int, default=4096)
    data.add_argument("--vocab", type=int, default=4400, help="WordPiece vocabulary size (at least 4,349)")
    data.add_argument("--address", help="Ray cluster address (default: a local instance)")
    fit = commands.add_parser("fit", help="fit a results table (CSV or Parquet)")
    fit.add_argument("source", help="a study's results.parquet/.csv, or any table with N, D and loss columns")
    fit.add_argument("--out", help="report directory (default: fit/ beside the table)")
    fit.add_argument("--n-col", default="N")
    fit.add_argument("--d-col", default="D")
    fit.add_argument("--loss-col", default="loss")
    for sub in (fit, commands.choices["report"]):
        sub.add_argument("--n", choices=("non_embedding", "total"), default=None if sub is not fit else
                         "non_embedding", help="which parameter count of a study's table is N")
        sub.add_argument("--bootstrap", type=int, default=400, help="bootstrap resamples for the intervals")
        sub.add_argument("--target-compute", type=float, default=None,
                         help="compute at which to predict N*, D* and the loss (default 10x the largest run)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return {"plan": cmd_plan, "run": cmd_run, "status": cmd_status, "fit": cmd_fit,
            "report": cmd_report, "sample-data": cmd_sample_data}[args.command](args)


if __name__ == "__main__":
    run_job(main)

"""python -m jobs.evaluate --checkpoint URI[,URI...] --tasks all|a,b,c [--data URI] [--out DIR] [--set k=v ...]
[--address ADDR]

Every (checkpoint, task) pair runs as its own Ray task; the table, charts and parquet go to --out. The exit code
is 0 only if every task succeeded (1 if any failed), so a pipeline can gate on it. `--tasks all` means every task
the run can be scored on: a task whose modalities, token folders or tokenizers the run lacks is listed as
`skipped`, with the reason, and is not a failure; a task named explicitly is run and fails instead.
"""

from __future__ import annotations

import pipeline.eval.tasks  # noqa: F401  (the built-in tasks register themselves on import)
from jobs.cli import connect_ray, job_parser, load_job_config, run_job
from pipeline.data.storage import Storage
from pipeline.eval.registry import select_tasks
from pipeline.eval.report import markdown_table, write_results
from pipeline.eval.runner import any_failed, drop_unmet, missing_inputs, run_evaluation, with_progress
from pipeline.train.metrics import METRICS, read_metrics
from schemas.config import ConfigError
from schemas.evaluate import EvaluateConfig


def _listing(text: str | None) -> str | None:
    """'a,b' -> '[a, b]' for --set (YAML list)."""
    return None if text is None else "[" + ", ".join(p.strip() for p in text.split(",") if p.strip()) + "]"


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Evaluate checkpoints on registered tasks, one Ray task per task.",
                        "configs/evaluate/default.yaml")
    parser.add_argument("--checkpoint", help="exported model dir(s), comma-separated for several steps of a run")
    parser.add_argument("--tasks", help="'all' or comma-separated task names")
    parser.add_argument("--data", help="preprocess output with token shards (for token-shard tasks)")
    parser.add_argument("--out", help="results directory or s3:// prefix")
    args = parser.parse_args(argv)
    config = load_job_config(EvaluateConfig, args, {
        "checkpoints": _listing(args.checkpoint), "tasks": _listing(args.tasks), "data": args.data,
        "out": args.out, "ray.address": args.address,
    })
    try:
        tasks = select_tasks(config.tasks)
    except KeyError as exc:
        raise ConfigError(f"tasks: {exc.args[0]}") from None
    problems = missing_inputs(config, tasks)
    if problems:
        raise ConfigError("; ".join(problems))
    skipped = []
    if config.tasks == ("all",):  # every task the run can be scored on; a named task that cannot is a failure
        tasks, skipped = drop_unmet(config, tasks)
    connect_ray(config.ray)
    rows = run_evaluation(config, tasks, list(config.checkpoints)) + skipped
    # Charts put each checkpoint at the tokens and FLOPs its run had seen (RUN_DIR/metrics.jsonl), not its step.
    rows = with_progress(rows, lambda run: read_metrics(f"{run}/{METRICS}", config.storage), config.storage)
    written = write_results(rows, Storage(config.out, config.storage))
    print(markdown_table(rows))
    print("results: " + ", ".join(written))
    return 1 if any_failed(rows) else 0


if __name__ == "__main__":
    run_job(main)

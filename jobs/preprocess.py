"""python -m jobs.preprocess --input URI --output URI [--config FILE] [--set key=value ...] [--address ADDR]"""

from __future__ import annotations

from cluster.prestart import prestart_workers
from jobs.cli import connect_ray, job_parser, load_job_config, run_job
from schemas.preprocess import PreprocessConfig

# What the pipeline's tasks import, per stage: the workers prestarted below load it while the driver starts up.
WORKER_MODULES = {"label": ("pipeline.data.stages", "pipeline.data.shard_writer"),
                  "tokenize": ("pipeline.data.tokenize",)}


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Read, pseudo-label and shard a raw multimodal corpus.", "configs/preprocess/default.yaml")
    parser.add_argument("--input", help="raw corpus: a directory or s3://bucket/prefix")
    parser.add_argument("--output", help="where shards, manifest and report go: a directory or s3://bucket/prefix")
    parser.add_argument("--modalities", help="comma-separated modalities to produce; on an existing output, "
                        "the ones it lacks are added as new folders aligned to its keys (e.g. --modalities depth)")
    parser.add_argument("--stages", help="comma-separated: label (raw -> label shards), tokenize (label shards -> "
                        "token shards, with tokenizers: {modality: dir} in the config)")
    parser.add_argument("--overwrite", action="store_true", help="redo every unit instead of resuming")
    args = parser.parse_args(argv)
    config = load_job_config(PreprocessConfig, args, {
        "input": args.input, "output": args.output, "overwrite": "true" if args.overwrite else None,
        "modalities": f"[{args.modalities}]" if args.modalities else None,
        "stages": f"[{args.stages}]" if args.stages else None,
        "ray.address": args.address,
    })
    connect_ray(config.ray)
    prestart_workers(tuple(m for stage in config.stages for m in WORKER_MODULES[stage]))
    # Imported only now, so that the workers start while the driver imports Ray Data (cluster/prestart.py).
    from pipeline.data.preprocess import run_preprocess

    print(summary(run_preprocess(config)))
    return 0


def summary(report: dict) -> str:
    reasons = ", ".join(f"{k}: {v}" for k, v in report["quarantine_reasons"].items()) or "none"
    rate = report["samples_per_second_this_run"]
    return (
        f"preprocess done: {report['samples_written']}/{report['samples_in']} samples written to {report['output']} "
        f"in {report['units']} shards x {len(report['folders'])} folders ({', '.join(report['folders'])}); "
        f"quarantined {report['samples_quarantined']} ({reasons}); "
        + (f"{rate} samples/s" if rate is not None else "nothing left to do")
    )


if __name__ == "__main__":
    run_job(main)

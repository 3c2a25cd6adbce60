"""python -m jobs.pretrain --config configs/pretrain/tiny.yaml --data TOKEN_SHARDS [--storage URI] [--workers N]"""

from __future__ import annotations

from jobs.cli import connect_ray, job_parser, load_job_config, run_job
from pipeline.train.trainer import require_data, run_pretrain
from schemas.pretrain import PretrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Pretrain the any-to-any model on token shards (Ray Train + DeepSpeed ZeRO).",
                        "configs/pretrain/tiny.yaml")
    parser.add_argument("--data", help="preprocess output with tok_* folders (local or s3://)")
    parser.add_argument("--storage", help="Ray Train storage path for runs and checkpoints (local or s3://)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--name", help="run name; rerunning a name resumes its latest checkpoint")
    args = parser.parse_args(argv)
    config = load_job_config(PretrainConfig, args, {
        "data": args.data, "storage_path": args.storage, "workers": args.workers, "name": args.name,
        "ray.address": args.address,
    })
    require_data(config)  # before a Ray instance starts
    connect_ray(config.ray)
    summary = run_pretrain(config)
    print(f"pretrain {summary['run']} done: final {summary['metrics']}")
    print(f"checkpoint: {summary['checkpoint']}")
    if "plot" in summary:
        print(f"metrics: {summary['metrics_file']}  loss curve: {summary['plot']}  summary: {summary['summary_file']}")
    return 0


if __name__ == "__main__":
    run_job(main)

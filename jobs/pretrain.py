"""python -m jobs.pretrain --config configs/pretrain/tiny.yaml --data TOKEN_SHARDS [--storage URI] [--workers N]"""

from __future__ import annotations

import argparse

from cluster.connect import connect
from jobs.cli import REPO_ROOT
from pipeline.train.trainer import run_pretrain
from schemas.config import load_config
from schemas.pretrain import PretrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pretrain the any-to-any model on token shards (Ray Train + "
                                                 "DeepSpeed ZeRO).")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs/pretrain/tiny.yaml"))
    parser.add_argument("--data", help="preprocess output with tok_* folders (local or s3://)")
    parser.add_argument("--storage", help="Ray Train storage path for runs and checkpoints (local or s3://)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--name", help="run name; rerunning a name resumes its latest checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", help="Ray cluster address (default: a local instance)")
    args = parser.parse_args(argv)
    overrides = [*(f"{k}={v}" for k, v in (("data", args.data), ("storage_path", args.storage),
                                            ("workers", args.workers), ("name", args.name)) if v is not None),
                 *args.set]
    config = load_config(PretrainConfig, args.config, overrides)
    connect(args.address or config.address)
    summary = run_pretrain(config)
    print(f"pretrain {summary['run']} done: final {summary['metrics']}")
    print(f"checkpoint: {summary['checkpoint']}")
    if "plot" in summary:
        print(f"metrics: {summary['metrics_file']}  loss curve: {summary['plot']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""python -m jobs.export --checkpoint URI --out model.safetensors: a pretrain checkpoint as one plain model file."""

from __future__ import annotations

import argparse

from jobs.cli import run_job
from pipeline.train.export import export_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a pretrain checkpoint's consolidated weights.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (local or s3://)")
    parser.add_argument("--out", required=True, help="output .safetensors path; model.json goes beside it")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error("--out must end with .safetensors")
    meta = export_checkpoint(args.checkpoint, args.out)
    print(f"exported step {meta['step']} ({meta['model']['size']}) to {args.out}")
    return 0


if __name__ == "__main__":
    run_job(main)

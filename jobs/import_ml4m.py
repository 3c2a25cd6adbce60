"""python -m jobs.import_ml4m SRC [--output DST] [--resolution 224] [--folder-name FOLDER=NAME ...] [--set KEY=VALUE]

Makes an ml-4m-style folder (`tok_rgb@224/shard-00000.tar`, ..., no manifest) a Tessera output by writing its
manifest; the tars stay where they are. `python -m jobs.pretrain --data DST` then trains on it (docs/ml4m.md).
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli import run_job
from pipeline.data.ml4m_import import Ml4mImportError, import_ml4m
from schemas.config import load_config
from schemas.ml4m import ImportMl4mConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List an ml-4m-style folder in a Tessera manifest, checking "
                                     "alignment and recording checksums, without copying its tars.")
    parser.add_argument("source", help="ml-4m root with one folder per modality (local or s3://)")
    parser.add_argument("--output", help="where manifest.parquet goes (default: into SOURCE itself)")
    parser.add_argument("--resolution", type=int, help="take tok_<modality>@RES folders of this resolution")
    parser.add_argument("--folder-name", action="append", default=[], metavar="FOLDER=NAME",
                        help="ml-4m's modality_name_map: the folder FOLDER holds modality NAME, e.g. "
                        "rgb_dvae_BUa_224=tok_rgb@224 (repeatable)")
    parser.add_argument("--folders", help="comma-separated folders to import (default: every one Tessera knows)")
    parser.add_argument("--overwrite", action="store_true", help="replace a manifest the output already has")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key, e.g. --set storage.endpoint_url=http://... (repeatable)")
    args = parser.parse_args(argv)
    names = dict(item.split("=", 1) for item in args.folder_name if "=" in item)
    if len(names) != len(args.folder_name):
        parser.error("--folder-name takes FOLDER=NAME")
    flags = {"source": args.source, "output": args.output, "resolution": args.resolution,
             "overwrite": "true" if args.overwrite else None,
             "folders": f"[{args.folders}]" if args.folders else None}
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    overrides += [f"folder_names.{folder}={name}" for folder, name in names.items()] + args.overrides
    config = load_config(ImportMl4mConfig, None, overrides)
    try:
        summary = import_ml4m(config)
    except Ml4mImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    folders = ", ".join(f"{s['source']} -> {name}" for name, s in summary["folders"].items())
    skipped = "; ".join(f"{name} ({why})" for name, why in summary["skipped"].items()) or "none"
    print(f"import_ml4m done: {summary['samples']} samples in {summary['shards']} shards, manifest at "
          f"{summary['output']}; folders: {folders}; skipped: {skipped}")
    return 0


if __name__ == "__main__":
    run_job(main)

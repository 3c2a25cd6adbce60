"""python -m jobs.sample_corpus --out DIR --samples N [--seed S] [--image-size PX] [--samples-per-shard K]
[--real-fraction F] [--workers W] [--mixture]

Writes the embedded sample corpus (procedural scenes plus skimage photos) as WebDataset tars
DIR/corpus-000000.tar, ... and DIR/corpus.json. Same arguments, same bytes, whatever --workers is. Corpus shards
in DIR beyond this run's last one (from an earlier, larger run) are removed.

With --mixture, DIR holds a mixture instead: that image-text corpus in DIR/image_text and one corpus per raw
modality in DIR/<modality> (time_series, imu, audio, tabular, graph; pipeline/data/sample_corpus/mixture.py),
each preprocessed on its own with `--set primary=<modality>`.
"""

from __future__ import annotations

import argparse
import time

import pydantic

from jobs.cli import run_job
from pipeline.data.sample_corpus import ShardSummary, write_corpus
from pipeline.data.sample_corpus.mixture import write_mixture
from schemas.config import ConfigError, format_validation_error
from schemas.corpus import SampleCorpusConfig


def parse_config(argv: list[str] | None = None) -> tuple[SampleCorpusConfig, bool]:
    parser = argparse.ArgumentParser(description="Generate the embedded sample corpus as WebDataset tars.")
    parser.add_argument("--out", required=True, help="output directory (or s3://bucket/prefix)")
    parser.add_argument("--samples", type=int, required=True, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--samples-per-shard", type=int, default=64, help="samples per tar (default 64)")
    parser.add_argument("--real-fraction", type=float, default=0.1,
                        help="fraction of samples that are real photos, spread evenly (default 0.1)")
    parser.add_argument("--workers", type=int, default=1, help="processes building shards (default 1)")
    parser.add_argument("--mixture", action="store_true",
                        help="also write one corpus per raw modality; the image-text corpus goes to OUT/image_text")
    args = parser.parse_args(argv)
    try:
        return SampleCorpusConfig(**{k: v for k, v in vars(args).items() if k != "mixture"}), args.mixture
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(SampleCorpusConfig, exc, "command line", set())) from None


def main(argv: list[str] | None = None) -> int:
    config, mixture = parse_config(argv)
    start = time.perf_counter()
    if mixture:
        written = write_mixture(config)
        print(f"sample mixture done: {len(written)} corpora ({', '.join(written)}) under {config.out} in "
              f"{time.perf_counter() - start:.1f} s")
        return 0

    def report_shard(shard: ShardSummary) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] wrote {shard.name}: {shard.samples} samples "
              f"({shard.counts['scene']} scene, {shard.counts['photo']} photo), {shard.bytes / 1e6:.1f} MB", flush=True)

    description = write_corpus(config, on_shard=report_shard)
    elapsed = time.perf_counter() - start
    counts = description["counts"]
    print(f"sample corpus done: {config.samples} samples ({counts['scene']} scene, {counts['photo']} photo) in "
          f"{len(description['shards'])} shards at {config.image_size} px to {config.out} in {elapsed:.1f} s "
          f"({config.samples / elapsed:.1f} samples/s, {config.workers} workers)")
    return 0


if __name__ == "__main__":
    run_job(main)

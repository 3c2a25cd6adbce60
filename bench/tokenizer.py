"""Tokenizer quality at CPU scale: train the RGB (or another image-like) tokenizer on the sample corpus for a fixed
time budget on 2 Ray Train workers, then score it on the held-out split.

    python bench/tokenizer.py [--samples 4096] [--resolution 64] [--minutes 10] [--modality rgb] \
        [--set model.quantizer.levels=[8,5,5,5] ...]

Everything goes through the real job (`run_train_tokenizer`): label shards made by the preprocess pipeline, the
LabelStream, DDP workers, checkpoints, the held-out evaluation. Prints one table (held-out scores, codebook usage
and perplexity, steps and samples/s reached in the budget) and leaves metrics.json, reconstructions.png and
loss.png in --out; copy the table into BENCHMARKS.md with the command line.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cluster.connect import connect
from jobs.cli import REPO_ROOT
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.train.tokenizer import run_train_tokenizer
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import PreprocessConfig
from schemas.train_tokenizer import TrainTokenizerConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--modality", default="rgb")
    parser.add_argument("--out", default="bench_out/tokenizer")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="train_tokenizer config overrides")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    corpus, shards = out / "corpus", out / "shards"
    connect(None)
    if not (shards / "manifest.parquet").exists():
        write_corpus(SampleCorpusConfig(out=str(corpus), samples=args.samples, image_size=2 * args.resolution,
                                        samples_per_shard=512))
        labelers = {} if args.modality in ("rgb", "canny_edge") else {args.modality: {"source": "ground_truth"}}
        config = load_config(PreprocessConfig, REPO_ROOT / "configs/preprocess/default.yaml", [
            f"input={corpus}", f"output={shards}", f"image.resolution={args.resolution}",
            "reader.samples_per_unit=512", f"modalities=[{args.modality}]", f"labelers={json.dumps(labelers)}"])
        run_preprocess(config, log=lambda _: None)
    shutil.rmtree(out / "runs", ignore_errors=True)
    config = load_config(TrainTokenizerConfig, REPO_ROOT / "configs/train_tokenizer/default.yaml", [
        f"modality={args.modality}", f"input={shards}", f"output={out / 'tokenizer'}", f"storage_path={out / 'runs'}",
        f"time_limit_minutes={args.minutes}", "steps=100000", "checkpoint_every=500", "log_every=100",
        "holdout_fraction=0.1", "eval_samples=1024", *args.set])
    # The LR schedule is laid out over the steps the budget allows, measured by a short calibration run below.
    steps = calibrate_steps(config, args.minutes)
    config = config.model_copy(update={"steps": steps})
    summary = run_train_tokenizer(config)
    metrics = summary["metrics"]
    history = metrics["history"]
    rate = sum(h["samples_per_s"] for h in history[1:]) / max(len(history) - 1, 1)
    print(f"\n| modality | resolution | tokens | vocab | workers | minutes | steps | samples/s | held-out scores |")
    print("|---|---|---|---|---|---|---|---|---|")
    scores = ", ".join(f"{k} {v:.4g}" for k, v in metrics["held_out"].items())
    print(f"| {args.modality} | {args.resolution} | {metrics['tokens_per_sample']} | {metrics['vocab_size']} | "
          f"{config.workers} | {metrics['train_seconds'] / 60:.1f} | {metrics['steps']} | {rate:.0f} | {scores} |")
    print(f"outputs: {out / 'tokenizer'}")


def calibrate_steps(config: TrainTokenizerConfig, minutes: float) -> int:
    """Steps that fit the budget at the rate a 40-step run of the same job reaches (its first steps excluded)."""
    probe = config.model_copy(update={"steps": 40, "time_limit_minutes": None, "log_every": 20,
                                      "checkpoint_every": 40, "name": "calibration", "eval_samples": 8,
                                      "output": str(Path(config.output).parent / "calibration")})
    history = run_train_tokenizer(probe)["metrics"]["history"]
    seconds_per_step = (history[-1]["train_seconds"] - history[0]["train_seconds"]) / (history[-1]["step"]
                                                                                      - history[0]["step"])
    return max(100, int(minutes * 60 / seconds_per_step))


if __name__ == "__main__":
    main()

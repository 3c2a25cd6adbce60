"""Loader throughput versus the training step it feeds, on this machine's CPU.

    python bench/loader.py [--samples 2048] [--tiny-batch 64] [--b-batch 4] [--steps 3] [--skip-mixture]

Writes a synthetic token output at 224 px shapes (rgb, depth, semseg, canny_edge: 14x14 = 196 tokens;
dinov2_global: 16; caption, metadata, color_palette: WordPiece runs ending in EOS) with the project's own shard
commit, then times
  - the loader (`TokenShardLoader`, one rank, prefetch off so it is the loader's own cost): batches/s from local
    shards, and how much of it is masking + packing alone;
  - a training step (forward + backward + AdamW) of the `tiny` and `B` models on batches of the same shape;
  - a dataset mixture (`MixtureLoader`) at the tiny batch: that output at weight 3 beside a text-only output
    (caption, metadata, color_palette; half as many samples) at weight 1, and the tiny step on its batches.
The verdict is loader batches/s over step batches/s at each model's batch size (target >= 3x). Prints tables; copy
them into BENCHMARKS.md with the command line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.loader import TokenShardLoader, to_torch
from pipeline.data.manifest import write_manifest
from pipeline.data.masking import EOS_ID, Masker
from pipeline.data.mixture import open_loader, run_table
from pipeline.data.storage import Storage
from pipeline.data.tar_io import commit_token_shard
from pipeline.data.token_shards import read_token_shard
from schemas.batch import ModalityTable
from schemas.loading import DatasetEntry, LoaderConfig, MaskingConfig
from schemas.modalities import get_modality
from schemas.common import StorageConfig

MODALITIES = ("rgb", "depth", "semseg", "canny_edge", "dinov2_global", "caption", "metadata", "color_palette")
TEXT_ONLY = ("caption", "metadata", "color_palette")
GRID_TOKENS = 196  # 224 px, patch 16
SEQUENCE_LENGTHS = {"caption": (8, 60), "metadata": (30, 40), "color_palette": (10, 23)}
MASKING = MaskingConfig(input_tokens=256, target_tokens=256)  # the 4M recipe's budgets


def token_row(modality: str, rng: np.random.Generator) -> np.ndarray:
    spec = get_modality(modality)
    if modality in SEQUENCE_LENGTHS:
        row = np.append(rng.integers(204, 4700, int(rng.integers(*SEQUENCE_LENGTHS[modality]))), EOS_ID)
    else:
        row = rng.integers(0, spec.vocab_size, spec.num_tokens if spec.num_tokens <= 16 else GRID_TOKENS)
    return row.astype(spec.token_dtype)[None, :]


def write_synthetic_output(root: Path, samples: int, samples_per_shard: int,
                           modalities: tuple[str, ...] = MODALITIES) -> None:
    """tok_<modality> shards and manifest.parquet, committed as the tokenize stage commits them."""
    storage = Storage(str(root), StorageConfig())
    rng = np.random.default_rng(0)
    rows = []
    for shard, start in enumerate(range(0, samples, samples_per_shard)):
        keys = [f"b{i:08d}" for i in range(start, min(start + samples_per_shard, samples))]
        for modality in modalities:
            arrays = [token_row(modality, rng) for _ in keys]
            rows.append(commit_token_shard(storage, modality, shard, keys, arrays, tokenizer_id="bench"))
    write_manifest(storage, rows)


def time_loader(data: str | list[DatasetEntry], table: ModalityTable, batch_size: int) -> dict:
    """Seconds per batch over one whole epoch (every shard read, decoded, shuffled, masked and packed), and of
    masking + packing alone."""
    config = LoaderConfig(batch_size=batch_size, shuffle_buffer=1024, prefetch_batches=0)
    loader = open_loader(data, table, MASKING, config)
    started = time.perf_counter()
    count = sum(1 for _ in loader)
    seconds = (time.perf_counter() - started) / count
    first = loader if isinstance(loader, TokenShardLoader) else loader.loaders[0]
    samples = [{name: array[0] for name, array in rows.items()}
               for _, rows in read_token_shard(first.storage, first.shards[0])[:batch_size]]
    masker, rng = Masker(table, MASKING), np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(10):
        masker.batch(samples, rng)
    return {"loader_s": seconds, "mask_s": (time.perf_counter() - started) / 10, "batches": count}


def time_step(size: str, table: ModalityTable, batch: dict, steps: int) -> dict:
    """Seconds per forward + backward + AdamW step of the model of `size` on `batch` (median of `steps`)."""
    import torch

    torch.manual_seed(0)
    from pipeline.model import build_model
    from schemas.model import ModelConfig

    model, which = build_model(ModelConfig(size=size), table).train(), "pipeline.model"
    # foreach=False: no per-step copies of the whole parameter set, which B cannot afford on this machine
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, foreach=False)
    tensors = to_torch(batch)
    times = []
    for _ in range(steps + 1):  # the first step allocates the optimizer state: not counted
        started = time.perf_counter()
        loss = model(tensors).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return {"step_s": float(np.median(times[1:])), "params": sum(p.numel() for p in model.parameters()),
            "model": which}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--tiny-batch", type=int, default=64)
    parser.add_argument("--b-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-b", action="store_true", help="time only the tiny model's step")
    parser.add_argument("--skip-mixture", action="store_true", help="leave out the dataset-mixture row")
    # B's per-modality embeddings and heads over all eight vocabularies would put AdamW's state above 6 GB; the B
    # row reads and trains on these three (both loader and step), which keeps the process near 4 GB.
    parser.add_argument("--b-modalities", default="rgb,depth,caption")
    args = parser.parse_args(argv)

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; I = T = {MASKING.input_tokens}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root, text = Path(tmp, "all"), Path(tmp, "text")
        started = time.perf_counter()
        write_synthetic_output(root, args.samples, args.samples_per_shard)
        size_mb = sum(p.stat().st_size for p in root.rglob("*.tar")) / 1e6
        print(f"wrote {args.samples} samples x {len(MODALITIES)} modalities ({size_mb:.1f} MB) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        cases: list[tuple[str, str | list[DatasetEntry], int, tuple[str, ...]]] = [
            ("tiny", str(root), args.tiny_batch, MODALITIES)]
        if not args.skip_b:
            cases.append(("B", str(root), args.b_batch, tuple(args.b_modalities.split(","))))
        if not args.skip_mixture:
            write_synthetic_output(text, args.samples // 2, args.samples_per_shard, TEXT_ONLY)
            mixture = [DatasetEntry(path=str(root), weight=3), DatasetEntry(path=str(text), weight=1)]
            cases.append(("tiny (mixture 3:1 with text-only)", mixture, args.tiny_batch, MODALITIES))
        rows = []
        for label, data, batch_size, modalities in cases:
            size = label.split()[0]
            table = run_table(data, modalities)
            loader = time_loader(data, table, batch_size)
            print(f"{label} loader at batch {batch_size}: {loader['loader_s'] * 1e3:.1f} ms/batch over "
                  f"{loader['batches']} batches (masking + packing {loader['mask_s'] * 1e3:.1f} ms)", flush=True)
            batch = next(iter(open_loader(data, table, MASKING, LoaderConfig(batch_size=batch_size))))
            step = time_step(size, table, batch, args.steps)
            print(f"{label} step at batch {batch_size}: {step['step_s']:.3f} s ({step['params'] / 1e6:.1f} M "
                  f"params)", flush=True)
            rows.append((label, batch_size, loader, step, len(modalities)))

    print("\n| model | implementation | params | modalities | batch | loader ms/batch | of which masking | loader batches/s | step s | "
          "step batches/s | loader / step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, batch_size, loader, step, modalities in rows:
        ratio = step["step_s"] / loader["loader_s"]
        print(f"| {size} | {step['model']} | {step['params'] / 1e6:.1f} M | {modalities} | {batch_size} | {loader['loader_s'] * 1e3:.1f} | "
              f"{loader['mask_s'] * 1e3:.1f} | {1 / loader['loader_s']:.1f} | {step['step_s']:.3f} | "
              f"{1 / step['step_s']:.2f} | **{ratio:.1f}x** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

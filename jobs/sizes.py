"""python -m jobs.sizes [--workers N] [--json]: every model size with its parameters, FLOPs and ZeRO memory.

Parameters come from the closed form in pipeline/model/sizes.py (tests check it against built models), FLOPs from
pipeline/model/flops.py (checked against torch's FlopCounterMode), model-state memory from the ZeRO paper's mixed
precision Adam formulas: 16P (stage 0), 4P + 12P/N (1), 2P + 14P/N (2), 16P/N (3) bytes.
"""

from __future__ import annotations

import argparse
import json

from jobs.cli import run_job
from pipeline.model.flops import training_flops
from pipeline.model.sizes import SIZES, param_counts
from schemas.batch import ModalitySpec
from schemas.modalities import implemented_names


def zero_bytes(params: int, workers: int) -> dict[str, float]:
    """Model-state bytes per worker (fp16/bf16 weights and gradients, fp32 master weights and Adam moments)."""
    p, n = params, workers
    return {"zero0": 16 * p, "zero1": 4 * p + 12 * p / n, "zero2": 2 * p + 14 * p / n, "zero3": 16 * p / n}


def size_rows(modalities: list[str], input_tokens: int, target_tokens: int, workers: int) -> list[dict]:
    """One row per registered size. The head FLOPs use the mean vocabulary of the modalities (targets spread
    evenly over them); token counts only size the fixed position tables, which hold no parameters."""
    specs = [ModalitySpec.from_registry(m) for m in modalities]
    vocab = [s.vocab_size for s in specs]
    rows = []
    for name, dims in SIZES.items():
        counts = param_counts(dims, vocab)
        rows.append({
            "name": name, "dim": dims.dim, "encoder_depth": dims.encoder_depth, "decoder_depth": dims.decoder_depth,
            "heads": dims.heads, **counts,
            "flops_per_sample": training_flops(dims, input_tokens, target_tokens, sum(vocab) / len(vocab)),
            **{f"{k}_bytes_per_worker": v for k, v in zero_bytes(counts["params_total"], workers).items()},
        })
    return rows


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.sizes",
        description="Every model size: parameters (encoder blocks + final norm, decoder blocks + final norm, "
                    "embeddings + heads), training FLOPs per sample and ZeRO model-state memory per worker.")
    parser.add_argument("--workers", type=_positive, default=8, help="data-parallel workers N for the ZeRO columns "
                                                                     "(default 8)")
    parser.add_argument("--input-tokens", type=_positive, default=256, help="encoder slots per sample (default 256, "
                                                                             "as 4M)")
    parser.add_argument("--target-tokens", type=_positive, default=256, help="decoder slots per sample (default "
                                                                              "256, as 4M)")
    parser.add_argument("--modalities", nargs="+", default=implemented_names(), metavar="NAME",
                        help="the run's modalities, which set the embedding tables and heads (default: every "
                             "modality the registry marks implemented, at its 224 px token count: "
                             f"{' '.join(implemented_names())})")
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of the table")
    args = parser.parse_args(argv)
    rows = size_rows(args.modalities, args.input_tokens, args.target_tokens, args.workers)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{len(args.modalities)} modalities, {args.input_tokens} input + {args.target_tokens} target tokens, "
          f"ZeRO model states per worker for N={args.workers} (GB)")
    print(f"{'size':<5}{'width':>6}{'enc+dec':>9}{'encoder':>10}{'decoder':>10}{'emb+heads':>11}{'total':>10}"
          f"{'TFLOP/sample':>14}{'Z0':>8}{'Z1':>8}{'Z2':>8}{'Z3':>8}")
    for r in rows:
        gb = [r[f"zero{s}_bytes_per_worker"] / 1e9 for s in range(4)]
        print(f"{r['name']:<5}{r['dim']:>6}{r['encoder_depth']:>5}+{r['decoder_depth']:<3}"
              f"{r['params_encoder'] / 1e6:>9.1f}M{r['params_decoder'] / 1e6:>9.1f}M"
              f"{r['params_embeddings_heads'] / 1e6:>10.1f}M{r['params_total'] / 1e6:>9.1f}M"
              f"{r['flops_per_sample'] / 1e12:>14.3f}" + "".join(f"{g:>8.1f}" for g in gb))
    return 0


if __name__ == "__main__":
    run_job(main)

"""python -m jobs.train_tokenizer --modality NAME --input LABEL_SHARDS --output DIR [--config FILE] [--set k=v ...]

Trains the modality's neural tokenizer (image-like maps, feature maps, global embeddings, 1-D signals) on Ray
Train and writes it with its held-out metrics, a reconstruction grid and its loss curve; rerunning the same command
resumes. For a text-like modality (`--modality caption`) it trains the shared WordPiece vocabulary on its texts
instead, on the driver (`--set model.vocab_size=N`, default the registry's 30,000). A table or graph modality's
tokenizer is fitted on the driver in one pass (`--set model.bins=N`, `model.max_nodes=N`).
"""

from __future__ import annotations

from jobs.cli import connect_ray, job_parser, load_job_config, run_job
from pipeline.train.fitted_tokenizers import is_fitted_family, run_fit_tokenizer
from pipeline.train.tokenizer import run_train_tokenizer
from pipeline.train.wordpiece import run_train_wordpiece
from schemas.modalities import TokenizerFamily, get_modality
from schemas.train_tokenizer import TrainTokenizerConfig


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Train a discrete tokenizer for one modality on label shards (Ray Train).",
                        "configs/train_tokenizer/default.yaml")
    parser.add_argument("--modality", help="e.g. rgb, depth, semseg, canny_edge, normal, caption_embedding; caption for WordPiece")
    parser.add_argument("--input", help="label shards: a preprocess output (directory or s3://)")
    parser.add_argument("--output", help="directory (or s3://) for the tokenizer, metrics.json and plots")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--name", help="run name (default tokenizer-<modality>); rerunning a name resumes it")
    parser.add_argument("--storage", help="Ray Train storage path for checkpoints (default runs)")
    args = parser.parse_args(argv)
    config = load_job_config(TrainTokenizerConfig, args, {
        "modality": args.modality, "input": args.input, "output": args.output, "workers": args.workers,
        "name": args.name, "storage_path": args.storage, "ray.address": args.address,
    })
    if config.modality and get_modality(config.modality).tokenizer is TokenizerFamily.WORDPIECE:
        run_train_wordpiece(config)
        return 0
    if config.modality and is_fitted_family(config.modality):  # tables, graphs: fitted on the driver, no Ray
        run_fit_tokenizer(config)
        return 0
    connect_ray(config.ray)
    summary = run_train_tokenizer(config)
    print(f"tokenizer: {summary['output']} (metrics.json, reconstructions.png, loss.png)")
    return 0


if __name__ == "__main__":
    run_job(main)

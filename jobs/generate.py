"""python -m jobs.generate --checkpoint M --input SHARDS_OR_FILES --from rgb --to caption,depth,semseg
[--steps N --temperature T --top-k K --samples N --out DIR --seed S --set tokenizers.<m>=DIR ...]
python -m jobs.generate --checkpoint M --prompt "a red circle on a blue square" [--prompt ... --prompt-file F]
--to rgb,depth --set tokenizers.caption=DIR ...

Conditions on the --from modalities of a few samples (token shards of a preprocess output, image files that the
--from modality's tokenizer encodes, or text prompts that the caption tokenizer encodes), generates the --to
modalities in the order given, each joining the inputs of the next, and decodes everything through its tokenizer:
DIR/<sample>/<modality>.{png,txt,json,npy} (and prompt.txt), DIR/contact_sheet.png and DIR/generation.json. Runs on
one device, without Ray; inputs are read and encoded before the weights, so a bad input fails at once.
"""

from __future__ import annotations

import json

from jobs.cli import job_parser, load_job_config, run_job
from pipeline.eval.checkpoint import load_exported, read_modalities
from pipeline.generate.run import load_tokenizers, read_inputs, request_problems, run_generation
from schemas.config import ConfigError
from schemas.generate import GenerateConfig


def _listing(text: str | None) -> str | None:
    """'a,b' -> '[a, b]' for --set (YAML list)."""
    return None if text is None else "[" + ", ".join(p.strip() for p in text.split(",") if p.strip()) + "]"


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("Generate modalities from others with a trained model, decoded to files.",
                        "configs/generate/default.yaml")
    parser.add_argument("--checkpoint", help="exported model (x.safetensors with x.json) or checkpoint directory")
    parser.add_argument("--input", help="preprocess output (token shards), or image files / a folder of images")
    parser.add_argument("--prompt", action="append", dest="prompts",
                        help="a caption to generate from (repeatable; instead of --input; --from defaults to caption)")
    parser.add_argument("--prompt-file", help="a text file of prompts, one a line")
    parser.add_argument("--from", dest="from_modalities", help="given modalities, comma-separated")
    parser.add_argument("--to", dest="to_modalities", help="modalities to generate, in order, comma-separated")
    parser.add_argument("--steps", type=int, help="MaskGIT rounds per parallel target")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0: argmax)")
    parser.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--samples", type=int, help="how many input samples")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="output directory or s3:// prefix")
    args = parser.parse_args(argv)
    if args.address:  # the shared parser offers it; generation runs in this process, on one device
        raise ConfigError("--address: generate runs on one device in this process, without Ray")
    config = load_job_config(GenerateConfig, args, {
        "checkpoint": args.checkpoint, "input": args.input,
        "prompts": None if args.prompts is None else json.dumps(args.prompts),  # JSON is YAML: any text survives
        "prompt_file": args.prompt_file, "from_modalities": _listing(args.from_modalities),
        "to_modalities": _listing(args.to_modalities), "sampling.steps": args.steps,
        "sampling.temperature": args.temperature, "sampling.top_k": args.top_k, "samples": args.samples,
        "seed": args.seed, "out": args.out,
    })
    if config.missing():
        raise ConfigError(f"generate needs {', '.join(config.missing())}")
    try:
        modalities = read_modalities(config.checkpoint, config.storage)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"checkpoint {config.checkpoint}: not an exported model ({exc})") from None
    problems = request_problems(config, modalities)
    if problems:
        raise ConfigError("; ".join(problems))
    tokenizers = load_tokenizers(config)
    samples = read_inputs(config, tokenizers)
    model, table, _ = load_exported(config.checkpoint, config.storage, config.device)
    summary = run_generation(config, model, table, tokenizers, samples)
    print(f"wrote {len(summary['samples'])} samples under {config.out}; contact sheet {summary['contact_sheet']}")
    return 0


if __name__ == "__main__":
    run_job(main)

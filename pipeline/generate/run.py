"""The generate job's work once its model is loaded: read the samples, generate, decode, write.

Output (DIR = config.out, local or s3://):

    DIR/<sample>/<modality>.{png,txt,json,npy}   every given and generated modality, decoded by its tokenizer
    DIR/contact_sheet.png                         one row per sample: inputs beside outputs
    DIR/generation.json                           the settings and, per sample, the files written
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from pipeline.data.manifest import read_manifest
from pipeline.data.output_checks import require_tokenizer
from pipeline.data.storage import Storage
from pipeline.data.tokenize import load_tokenizer_from
from pipeline.generate.chain import generate
from pipeline.generate.inputs import InputSample, is_token_output, read_image_files, read_token_samples
from pipeline.generate.render import Rendered, render
from pipeline.generate.sheet import contact_sheet
from pipeline.model.fourm import FourM
from pipeline.tokenizers.base import Tokenizer
from schemas.batch import ModalityTable
from schemas.generate import GenerateConfig

SHEET, SUMMARY = "contact_sheet.png", "generation.json"


def request_problems(config: GenerateConfig, model_modalities: Sequence[str]) -> list[str]:
    """What makes the request impossible before any weights are read: modalities outside the checkpoint's run,
    tokenizers not given."""
    problems = []
    for flag, names in (("--from", config.from_modalities), ("--to", config.to_modalities)):
        unknown = [m for m in names if m not in model_modalities]
        if unknown:
            problems.append(f"{flag} {','.join(unknown)}: the checkpoint was trained on {list(model_modalities)}")
    missing = [m for m in (*config.from_modalities, *config.to_modalities) if m not in config.tokenizers]
    if missing:
        problems.append(f"no tokenizer for {missing}: generation decodes every modality through its tokenizer; "
                        f"give --set tokenizers.<modality>=DIR")
    return problems


def load_tokenizers(config: GenerateConfig) -> dict[str, Tokenizer]:
    """Every --from and --to modality's tokenizer; against a token-shard input, each must be the one that wrote
    the modality's folder (another would read the ids with another vocabulary)."""
    tokenizers = {m: load_tokenizer_from(config.tokenizers[m], config.storage)
                  for m in (*config.from_modalities, *config.to_modalities)}
    if is_token_output(config.input, config.storage):
        store = Storage(config.input, config.storage)
        manifest = read_manifest(store)
        for modality in config.from_modalities:
            require_tokenizer(manifest, modality, tokenizers[modality].content_hash, store.uri())
    return tokenizers


def read_inputs(config: GenerateConfig, tokenizers: dict[str, Tokenizer]) -> list[InputSample]:
    if is_token_output(config.input, config.storage):
        return read_token_samples(config.input, config.from_modalities, config.samples, config.holdout_fraction,
                                  config.storage)
    if len(config.from_modalities) != 1:
        raise ValueError(f"image files give one modality; --from names {list(config.from_modalities)}")
    (modality,) = config.from_modalities
    return read_image_files(config.input, modality, tokenizers[modality], config.samples)


def run_generation(config: GenerateConfig, model: FourM, table: ModalityTable, tokenizers: dict[str, Tokenizer],
                   log: Callable[[str], None] = print) -> dict:
    """Generate for the configured samples and write every file; returns the summary written to generation.json."""
    samples = read_inputs(config, tokenizers)
    log(f"{len(samples)} samples: {', '.join(config.from_modalities)} -> {', '.join(config.to_modalities)}")
    vocab = {m: tokenizers[m].vocab_size for m in config.to_modalities}
    rows = generate(model, table, [s.rows for s in samples], config.to_modalities, config.sampling, vocab,
                    config.seed, config.batch_size)
    out = Storage(config.out, config.storage)
    columns = [*config.from_modalities, *config.to_modalities]
    cells: list[list[Rendered]] = []
    written: dict[str, dict] = {}
    for sample, row in zip(samples, rows):
        rendered = [render(m, tokenizers[m], row[m]) for m in columns]
        cells.append(rendered)
        entry: dict = {"files": {}, "text": {}}
        for modality, result in zip(columns, rendered):
            for ext, payload in result.files.items():
                out.write_atomic(f"{sample.key}/{modality}.{ext}", payload)
            entry["files"][modality] = [f"{sample.key}/{modality}.{ext}" for ext in result.files]
            if result.text is not None:
                entry["text"][modality] = result.text
        written[sample.key] = entry
    out.write_atomic(SHEET, contact_sheet([s.key for s in samples], columns, cells,
                                          [m in config.to_modalities for m in columns]))
    summary = {"checkpoint": config.checkpoint, "input": config.input, "from": list(config.from_modalities),
               "to": list(config.to_modalities), "sampling": config.sampling.model_dump(), "seed": config.seed,
               "contact_sheet": out.uri(SHEET), "samples": written}
    out.write_atomic(SUMMARY, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary

"""The generate job's work once its model is loaded: read the samples, generate, decode, write.

Output (DIR = config.out, local or s3://):

    DIR/<sample>/<modality>.{png,txt,json,npy}   every given and generated modality, decoded by its tokenizer
    DIR/<sample>/prompt.txt                       a prompt sample's text as given (its caption row is the text
                                                  as the tokenizer reads it: lowercased, unknown pieces [UNK])
    DIR/contact_sheet.png                         one row per sample (labelled by its prompt or key): inputs
                                                  beside outputs
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
from pipeline.generate.inputs import (
    InputSample,
    is_token_output,
    read_image_files,
    read_prompt_file,
    read_prompts,
    read_token_samples,
)
from pipeline.generate.render import Rendered, render
from pipeline.generate.sheet import contact_sheet
from pipeline.model.fourm import FourM
from pipeline.tokenizers.base import Tokenizer
from schemas.batch import ModalityTable
from schemas.generate import GenerateConfig
from schemas.shards import token_folder

SHEET, SUMMARY, PROMPT = "contact_sheet.png", "generation.json", "prompt.txt"


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
    if config.input and is_token_output(config.input, config.storage):
        store = Storage(config.input, config.storage)
        manifest = read_manifest(store, [token_folder(m) for m in config.from_modalities])
        for modality in config.from_modalities:
            require_tokenizer(manifest, modality, tokenizers[modality].content_hash, store.uri())
    return tokenizers


def read_inputs(config: GenerateConfig, tokenizers: dict[str, Tokenizer]) -> list[InputSample]:
    """The samples to generate for, encoded: read before any weights, so that a bad input fails at once."""
    if config.prompted:  # the config admits prompts with --from caption alone
        prompts = [*config.prompts, *(read_prompt_file(config.prompt_file) if config.prompt_file else ())]
        (modality,) = config.from_modalities
        return read_prompts(prompts, modality, tokenizers[modality])
    if is_token_output(config.input, config.storage):
        return read_token_samples(config.input, config.from_modalities, config.samples, config.holdout_fraction,
                                  config.storage)
    if len(config.from_modalities) != 1:
        raise ValueError(f"image files give one modality; --from names {list(config.from_modalities)}")
    (modality,) = config.from_modalities
    return read_image_files(config.input, modality, tokenizers[modality], config.samples)


def run_generation(config: GenerateConfig, model: FourM, table: ModalityTable, tokenizers: dict[str, Tokenizer],
                   samples: Sequence[InputSample], log: Callable[[str], None] = print) -> dict:
    """Generate for `samples` (read_inputs) and write every file; returns the summary written to generation.json."""
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
        if sample.prompt is not None:
            out.write_atomic(f"{sample.key}/{PROMPT}", (sample.prompt + "\n").encode("utf-8"))
            entry["prompt"] = sample.prompt
        for modality, result in zip(columns, rendered):
            for ext, payload in result.files.items():
                out.write_atomic(f"{sample.key}/{modality}.{ext}", payload)
            entry["files"][modality] = [f"{sample.key}/{modality}.{ext}" for ext in result.files]
            if result.text is not None:
                entry["text"][modality] = result.text
        written[sample.key] = entry
    labels = [s.key if s.prompt is None else f'"{s.prompt}"' for s in samples]
    out.write_atomic(SHEET, contact_sheet(labels, columns, cells, [m in config.to_modalities for m in columns]))
    summary = {"checkpoint": config.checkpoint, "input": config.input, "from": list(config.from_modalities),
               "to": list(config.to_modalities), "sampling": config.sampling.model_dump(), "seed": config.seed,
               "contact_sheet": out.uri(SHEET), "samples": written}
    out.write_atomic(SUMMARY, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary

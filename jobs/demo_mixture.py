"""The Meta-Transformer half of `jobs.demo`: one small corpus per raw modality (audio, time series, IMU, tables,
graphs), each preprocessed around its own files (`primary`), its tokenizer trained on Ray Train (signals) or
fitted on the driver (tables, graphs), its token shards written; the demo's pretrain then mixes them with the
image-text shards (a `data` list, pipeline/data/mixture.py) and evaluation finds each task's dataset by name.
"""

from __future__ import annotations

from pathlib import Path

from jobs.cli import REPO_ROOT
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus.mixture import IMAGE_TEXT, RAW_CORPORA
from pipeline.data.sample_corpus.tabular import TARGETS
from pipeline.train.fitted_tokenizers import is_fitted_family, run_fit_tokenizer
from pipeline.train.metrics import read_metrics
from pipeline.train.tokenizer import run_train_tokenizer
from schemas.config import load_config
from schemas.preprocess import PreprocessConfig
from schemas.train_tokenizer import TrainTokenizerConfig

# What differs per corpus from the plug-ins' defaults: the sample tables name the column each row's caption is.
RAW_SETTINGS = {"tabular": {"target": list(TARGETS)}}
# The corpora are small (4 tables, 14 series...): about 8 units each, so both training workers get shards of each.
UNITS_PER_CORPUS = 8


def tokenizer_recipe(modality: str) -> Path:
    own = REPO_ROOT / f"configs/train_tokenizer/{modality}.yaml"
    return own if own.exists() else REPO_ROOT / "configs/train_tokenizer/default.yaml"


def train_tokenizer(modality: str, shards: str, out: str, steps: int) -> str:
    """The modality's tokenizer under out/tokenizers/<modality>: fitted in one pass, or trained for `steps`."""
    output = f"{out}/tokenizers/{modality}"
    overrides = [f"modality={modality}", f"input={shards}", f"output={output}", f"storage_path={out}/runs",
                 f"name=demo-{modality.replace('_', '-')}-tokenizer"]
    if is_fitted_family(modality):
        run_fit_tokenizer(load_config(TrainTokenizerConfig, REPO_ROOT / "configs/train_tokenizer/default.yaml",
                                      overrides))
    else:
        run_train_tokenizer(load_config(TrainTokenizerConfig, tokenizer_recipe(modality), [
            *overrides, f"steps={steps}", f"log_every={max(steps // 4, 1)}", f"checkpoint_every={steps}",
            "optim.warmup_steps=20"]))
    return output


def prepare_raw_datasets(out: str, text_tokenizer: str, steps: int, corpus_sizes: dict[str, dict] | None = None
                         ) -> tuple[list[dict], dict[str, str]]:
    """Write, label, tokenize every raw corpus; returns (the mixture's dataset entries, modality -> tokenizer).
    `corpus_sizes`: per modality, the size arguments of its sample writer (tests write smaller corpora)."""
    entries, tokenizers = [], {}
    for modality, write in RAW_CORPORA.items():
        corpus = f"{out}/corpora/{modality}"
        files = write(Path(corpus), seed=0, **(corpus_sizes or {}).get(modality, {}))
        shards = f"{out}/shards_{modality}"
        config = PreprocessConfig(input=corpus, output=shards, primary=modality, modalities=(modality, "caption"),
                                  raw={m: s for m, s in RAW_SETTINGS.items() if m == modality},
                                  reader={"samples_per_unit": max(1, len(files) // UNITS_PER_CORPUS)})
        labelled = run_preprocess(config, log=lambda line: None)
        tokenizers[modality] = train_tokenizer(modality, shards, out, steps)
        run_preprocess(config.model_copy(update={
            "stages": ("tokenize",), "tokenizers": {modality: tokenizers[modality], "caption": text_tokenizer}}),
            log=lambda line: None)
        print(f"  {modality:<12} {len(files):>4} files -> {labelled['samples_written']:>5} samples "
              f"({labelled['samples_quarantined']} quarantined); tokenizer {tokenizers[modality]}")
        entries.append({"name": modality, "path": shards, "weight": 1.0})
    return entries, tokenizers


def mixture_data(image_text: str, raw_entries: list[dict]) -> str:
    """The pretrain `data` list as a --set value: the image-text shards weighted as much as all others together."""
    entries = [{"name": IMAGE_TEXT, "path": image_text, "weight": float(len(raw_entries))}, *raw_entries]
    return "[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in e.items()) + "}" for e in entries) + "]"


def modality_losses(metrics_file: str, modalities: list[str]) -> str:
    """Each modality's loss at its first and last logged row (a modality absent from a window has no value)."""
    rows = read_metrics(metrics_file)
    lines = []
    for modality in modalities:
        values = [row[f"loss_{modality}"] for row in rows if f"loss_{modality}" in row]
        if values:
            lines.append(f"  {modality:<14} {values[0]:7.3f} -> {values[-1]:7.3f}"
                         f"{'  (falls)' if values[-1] < values[0] else '  (does not fall)'}")
        else:
            lines.append(f"  {modality:<14} no targets logged")
    return "\n".join(lines)

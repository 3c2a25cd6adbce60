"""Fit a table or graph tokenizer on label shards (no Ray, no SGD: one pass over the training split, on the driver).

The same command as the neural families (`python -m jobs.train_tokenizer --modality tabular --input LABELS`):
the training split (every sample not held out by key hash, all of them: bins and categories need every table's
rows) fits the tokenizer, the held-out split scores its reconstruction, and the output holds the tokenizer and
metrics.json with the neural families' keys (steps 0, history empty).
"""

from __future__ import annotations

import json
import time

import pydantic

from pipeline.data.label_stream import iter_split
from pipeline.data.storage import Storage
from pipeline.tokenizers.base import FAMILIES
from pipeline.tokenizers.fitted import FittedTokenizer
from schemas.config import ConfigError, format_validation_error
from schemas.modalities import get_modality
from schemas.train_tokenizer import TrainTokenizerConfig


def is_fitted_family(modality: str) -> bool:
    family = get_modality(modality).tokenizer.value
    return family in FAMILIES and issubclass(FAMILIES.get(family), FittedTokenizer)


def run_fit_tokenizer(config: TrainTokenizerConfig) -> dict:
    if not (config.modality and config.input):
        raise ConfigError("train_tokenizer needs --modality and --input (label shards)")
    modality = get_modality(config.modality)
    family: type[FittedTokenizer] = FAMILIES.get(modality.tokenizer.value)
    try:  # before any data is read: a key this family does not take (model.bins for graphs) fails here
        settings = family.settings_model.model_validate(config.model.settings()).model_dump(exclude_none=True)
    except pydantic.ValidationError as exc:
        raise ConfigError(format_validation_error(family.settings_model, exc, f"model ({modality.name})", set(),
                                                  config.model.settings())) from None
    labels = Storage(config.input, config.storage)
    started = time.perf_counter()
    train = [v for _, v in iter_split(labels, modality.name, family.read_member, holdout=config.holdout_fraction,
                                      held_out=False)]
    if not train:
        raise ValueError(f"{labels.uri()} holds no training {modality.name} samples to fit a tokenizer on")
    tokenizer_id = config.tokenizer_id or f"{modality.name}-{modality.tokenizer.value}"
    tokenizer = family.fit(train, tokenizer_id, settings, modality.vocab_size)
    seconds = time.perf_counter() - started
    held_out = [v for _, v in iter_split(labels, modality.name, family.read_member,
                                         holdout=config.holdout_fraction, held_out=True, limit=config.eval_samples)]
    scores = tokenizer.scores(held_out, modality.token_budget) if held_out else {}
    metrics = {
        "tokenizer_id": tokenizer.tokenizer_id, "content_hash": tokenizer.content_hash, "modality": modality.name,
        "family": tokenizer.family.value, "vocab_size": tokenizer.vocab_size, "tokens_per_sample": None,
        "steps": 0, "train_seconds": seconds, "workers": 0, "fit_samples": len(train), "held_out": scores,
        "history": [],
    }
    # Without --output the tokenizer goes where preprocess looks names up (`tokenizers={tabular: tabular-table_bins}`).
    out = Storage(config.output or f"tokenizers/{tokenizer_id}", config.storage)
    for name, data in tokenizer.files().items():
        out.write_atomic(name, data)
    out.write_atomic("metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    print(f"fitted {tokenizer_id} ({tokenizer.vocab_size:,} ids, hash {tokenizer.content_hash[:12]}) on {len(train)} "
          f"{modality.name} samples; held out: {shown or 'none'} -> {out.uri()}", flush=True)
    return {"output": out.uri(), "metrics": metrics, "tokenizer": tokenizer}

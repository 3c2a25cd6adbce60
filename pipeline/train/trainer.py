"""Builds and runs the TorchTrainer of a pretrain config; a rerun with the same name resumes its latest checkpoint.

After the run the driver plots the losses (against steps, tokens and FLOPs) and writes the run's `summary.json`:
the parameter counts a scaling-law fit takes as N (all parameters, and without embeddings and heads), the steps, and
the last metrics row (tokens, FLOPs, losses)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from pipeline.data.manifest import MissingManifestError, manifest_folders
from pipeline.data.storage import Storage
from pipeline.train.callbacks import StepCallback
from pipeline.train.loop import train_loop
from pipeline.train.metrics import METRICS, X_AXES, plot_loss, read_metrics
from pipeline.train.ray_trainer import build_trainer, checkpoint_uri, storage_root
from schemas.batch import ModalityTable
from schemas.config import ConfigError
from schemas.pretrain import PretrainConfig

SUMMARY = "summary.json"


def run_dir(config: PretrainConfig) -> Storage:
    """`<storage_path>/<name>`: where Ray Train keeps the run's checkpoints and rank 0 its metrics."""
    return Storage(f"{storage_root(config.storage_path)}/{config.name}", config.storage)


def require_data(config: PretrainConfig) -> None:
    if not config.data:
        raise ConfigError("data: pretrain needs token shards, --data URI (a preprocess output with tok_* folders)")
    paths = [config.data] if isinstance(config.data, str) else [entry.path for entry in config.data]
    try:  # before a Ray instance starts: a folder that is no Tessera output fails in one line
        for path in paths:
            manifest_folders(Storage(path, config.storage))
    except MissingManifestError as exc:
        raise ConfigError(f"data: {exc}") from None


def param_summary(config: PretrainConfig, table: ModalityTable) -> dict[str, int]:
    """The model's parameters counted two ways (closed form, `pipeline/model/sizes.py`)."""
    from pipeline.model.sizes import param_counts, resolve

    counts = param_counts(resolve(config.model), [spec.vocab_size for spec in table.specs])
    return {"params_total": counts["params_total"],
            "params_non_embedding": counts["params_total"] - counts["params_embeddings_heads"]}


def run_pretrain(config: PretrainConfig, callbacks: Sequence[StepCallback] = ()) -> dict:
    """Train (or resume) the run `config.name`; returns its summary. `callbacks` run on every worker after every
    optimizer step (`pipeline/train/callbacks.py`)."""
    from pipeline.data.mixture import run_table

    require_data(config)
    try:  # a mixture whose datasets disagree on a modality's tokenizer fails here, in one line
        table = run_table(config.data, config.modalities, config.storage, config.vocab_sizes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    run = run_dir(config)
    trainer = build_trainer(
        train_loop,
        # The typed config itself, not a JSON dump: a dump masks the storage credentials rank 0 writes with.
        {"config": config, "table": table.to_json(), "run_dir": run.uri(), "callbacks": list(callbacks)},
        config.name, config)
    result = trainer.fit()
    summary = {"run": config.name, "checkpoint": checkpoint_uri(result, config.storage_path),
               "metrics": result.metrics, "table": table.to_json()}
    metrics = read_metrics(run.uri(METRICS), config.storage)
    if metrics:
        plots = {x: plot_loss(metrics, run, x) for x in X_AXES}
        # Local paths stay plain paths (what tests and the demo open); remote ones are URIs.
        summary.update(metrics_file=run.uri(METRICS), plot=run.uri(plots["step"]),
                       plots={x: run.uri(name) for x, name in plots.items()})
    run_summary = {**param_summary(config, table), "steps": metrics[-1]["step"] if metrics else 0,
                   "final": metrics[-1] if metrics else {}, "checkpoint": summary["checkpoint"]}
    run.write_atomic(SUMMARY, (json.dumps(run_summary, indent=2) + "\n").encode())
    return {**summary, **run_summary, "summary_file": run.uri(SUMMARY)}


def checkpoint_at_step(config: PretrainConfig, step: int) -> str:
    """The URI of run `config.name`'s checkpoint taken at `step` (each says its step in model.json), e.g. the point a
    WSD cooldown branches from. Raises FileNotFoundError when num_to_keep has dropped it or it was never taken."""
    from pipeline.train.checkpoint import MODEL_JSON

    run = run_dir(config)
    for relpath in run.list():
        folder, _, name = relpath.rpartition("/")
        if name == MODEL_JSON and folder.startswith("checkpoint_") and "/" not in folder:
            if json.loads(run.read_bytes(relpath)).get("step") == step:
                return run.uri(folder)
    raise FileNotFoundError(f"run {config.name} has no checkpoint at step {step} in {run.uri()}")

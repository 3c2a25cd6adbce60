"""Builds and runs the TorchTrainer of a pretrain config; a rerun with the same name resumes its latest checkpoint."""

from __future__ import annotations

from pipeline.data.storage import Storage
from pipeline.train.loop import train_loop
from pipeline.train.metrics import METRICS, PLOT, plot_loss, read_metrics
from pipeline.train.ray_trainer import build_trainer, checkpoint_uri, storage_root
from schemas.pretrain import PretrainConfig


def run_pretrain(config: PretrainConfig, test_hooks: dict | None = None) -> dict:
    from pipeline.data.loader import modality_table_from_output

    if not config.data:
        raise ValueError("pretrain needs token shards: --data URI (a preprocess output with tok_* folders)")
    table = modality_table_from_output(config.data, config.modalities, config.storage)
    run = Storage(f"{storage_root(config.storage_path)}/{config.name}", config.storage)
    trainer = build_trainer(
        train_loop,
        # The typed config itself, not a JSON dump: a dump masks the storage credentials rank 0 writes with.
        {"config": config, "table": table.to_json(), "run_dir": run.uri(), **(test_hooks or {})},
        config.name, config)
    result = trainer.fit()
    summary = {"run": config.name, "checkpoint": checkpoint_uri(result, config.storage_path),
               "metrics": result.metrics, "table": table.to_json()}
    metrics = read_metrics(run.uri(METRICS), config.storage)
    if metrics:
        plot_loss(metrics, run)
        # Local paths stay plain paths (what tests and the demo open); remote ones are URIs.
        summary.update(metrics_file=run.uri(METRICS), plot=run.uri(PLOT))
    return summary

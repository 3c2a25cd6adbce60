"""Builds and runs the TorchTrainer of a pretrain config; a rerun with the same name resumes its latest checkpoint."""

from __future__ import annotations

from pathlib import Path

from pipeline.train.loop import plot_loss, read_metrics, train_loop
from schemas.pretrain import PretrainConfig


def run_pretrain(config: PretrainConfig, test_hooks: dict | None = None) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.data.loader import modality_table_from_output

    if not config.data:
        raise ValueError("pretrain needs token shards: --data URI (a preprocess output with tok_* folders)")
    table = modality_table_from_output(config.data, config.modalities, config.storage)
    local = "://" not in config.storage_path
    run_dir = Path(config.storage_path).resolve() / config.name if local else None
    metrics_path = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = str(run_dir / "metrics.jsonl")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "table": table.to_json(),
                           "metrics_path": metrics_path, **(test_hooks or {})},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name=config.name,
            storage_path=str(Path(config.storage_path).resolve()) if local else config.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=config.num_to_keep),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    result = trainer.fit()
    summary = {"run": config.name, "checkpoint": result.checkpoint.path if result.checkpoint else None,
               "metrics": result.metrics, "table": table.to_json()}
    if metrics_path and read_metrics(metrics_path):
        plot_loss(read_metrics(metrics_path), run_dir / "loss.png")
        summary.update(metrics_file=metrics_path, plot=str(run_dir / "loss.png"))
    return summary


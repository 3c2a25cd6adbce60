"""The TorchTrainer every Tessera training job runs on: workers, storage (local or s3://) and failure handling.

Pretraining and tokenizer training differ only in their loop; where checkpoints go, how Ray Train reaches S3 and how
many failures a run survives are the same, so they are built here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from pipeline.data.storage import arrow_filesystem
from schemas.common import StorageConfig


class TrainerSettings(Protocol):
    """What a job config provides for its trainer (PretrainConfig and TrainTokenizerConfig both do)."""

    workers: int
    cpus_per_worker: int
    use_gpu: bool
    storage_path: str
    storage: StorageConfig
    num_to_keep: int
    max_failures: int


def storage_root(storage_path: str) -> str:
    """The runs' root as a URI: local paths made absolute (Ray Train requires it), remote ones without a trailing /."""
    return str(Path(storage_path).resolve()) if "://" not in storage_path else storage_path.rstrip("/")


def build_trainer(loop: Callable[[dict], None], loop_config: dict[str, Any], name: str,
                  settings: TrainerSettings):
    """A TorchTrainer whose run `name` lives under `settings.storage_path`; a rerun with the same name resumes."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    root = storage_root(settings.storage_path)
    # Ray Train reaches s3:// through pyarrow: give it the config's endpoint and credentials, and then a path on
    # that filesystem (no scheme), as it expects.
    filesystem = arrow_filesystem(settings.storage) if "://" in root else None
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if settings.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=root.partition("://")[2] if filesystem is not None else root,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=settings.num_to_keep),
            failure_config=FailureConfig(max_failures=settings.max_failures),
        ),
    )


def checkpoint_uri(result, storage_path: str) -> str | None:
    """The result's latest checkpoint as a URI (Ray gives a path on its own filesystem, without the scheme)."""
    if result.checkpoint is None:
        return None
    scheme, separator, _ = storage_root(storage_path).partition("://")
    return f"{scheme}://{result.checkpoint.path}" if separator else result.checkpoint.path

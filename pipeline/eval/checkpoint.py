"""Checkpoints as the evaluate job sees them: an exported model (`jobs/export.py`: `model.safetensors` plus a JSON
sidecar with the ModelConfig and the run's ModalityTable), wrapped in the few calls eval tasks make."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.eval.batches import Row, pack
from schemas.batch import ModalityTable
from schemas.preprocess import StorageConfig

_STEP = re.compile(r"(\d+)(?!.*\d)")


def read_step(uri: str) -> int | None:
    """The last number in the checkpoint's final path component (`run/step-000200` -> 200), or None."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    match = _STEP.search(name)
    return int(match.group(1)) if match else None


@dataclass
class EvalModel:
    """A model in eval mode with its run's modality table; every call takes numpy and returns numpy."""

    module: Any  # the plain pipeline.model module: encode(batch) -> (features (B, I, D), pad (B, I))
    table: ModalityTable
    device: str = "cpu"

    def _torch(self, batch: dict[str, np.ndarray]) -> dict:
        import torch

        return {name: torch.from_numpy(array).to(self.device) for name, array in batch.items()}

    def pooled_features(self, rows: Sequence[Row], inputs: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(N, D) mean over each sample's non-padding encoder outputs, `inputs` fully visible."""
        import torch

        pooled = []
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = self._torch(pack(self.table, rows[start:start + batch_size], inputs))
                features, pad = self.module.encode(batch)
                keep = (~pad).unsqueeze(-1).to(features.dtype)
                pooled.append(((features * keep).sum(1) / keep.sum(1).clamp(min=1)).float().cpu().numpy())
        return np.concatenate(pooled)


def load_model(uri: str, storage: StorageConfig, device: str = "cpu") -> EvalModel:
    """The exported model at `uri` (a .safetensors export or a pretrain checkpoint directory), in eval mode."""
    from pipeline.train.export import load_exported

    module, table, _ = load_exported(uri, storage, device)
    return EvalModel(module, table, device)

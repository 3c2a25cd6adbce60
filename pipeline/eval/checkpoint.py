"""Checkpoints as the evaluate job sees them: an exported model (`jobs/export.py`: `model.safetensors` plus a JSON
sidecar with the ModelConfig, the run's ModalityTable and its step), wrapped in the few calls eval tasks make."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.storage import Storage
from pipeline.eval.batches import Row, pack
from schemas.batch import ModalityTable
from schemas.export import MODEL_JSON, WEIGHTS, sidecar_name
from schemas.model import ModelConfig
from schemas.common import StorageConfig

_STEP = re.compile(r"(\d+)(?!.*\d)")


def _files(uri: str, storage: StorageConfig) -> tuple[Storage, str, str]:
    """Where an export's weights and JSON live: `x.safetensors` with `x.json` beside it, or a checkpoint directory
    holding both under their fixed names."""
    if uri.endswith(".safetensors"):
        directory, _, name = uri.rpartition("/")
        return Storage(directory or ".", storage), name, sidecar_name(name)
    return Storage(uri, storage), WEIGHTS, MODEL_JSON


def load_exported(uri: str, storage: StorageConfig | None = None, device: str = "cpu"):
    """The plain model (no DeepSpeed) of an export or a checkpoint directory, in eval mode, with its ModalityTable
    and the JSON description."""
    import torch
    from safetensors.torch import load

    from pipeline.model import build_model

    files, weights, description = _files(uri, storage or StorageConfig())
    meta = json.loads(files.read_bytes(description))
    table = ModalityTable.from_json(meta["table"])
    model = build_model(ModelConfig.model_validate(meta["model"]), table)
    model.load_state_dict(load(files.read_bytes(weights)))
    return model.to(torch.device(device)).eval(), table, meta


def read_step(uri: str, storage: StorageConfig | None = None) -> int | None:
    """The training step the checkpoint records (its sidecar's `step`); when it records none (or is not there),
    the last number in its final path component (`run/step-000200` -> 200); else None."""
    try:
        files, _, name = _files(uri, storage or StorageConfig())
        step = json.loads(files.read_bytes(name)).get("step")
        if step is not None:
            return int(step)
    except (OSError, ValueError, AttributeError):  # no sidecar there, or not an export's JSON
        pass
    match = _STEP.search(uri.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def read_modalities(uri: str, storage: StorageConfig | None = None) -> tuple[str, ...]:
    """The modalities of the checkpoint's run (its sidecar's table), without loading any weights."""
    files, _, name = _files(uri, storage or StorageConfig())
    return ModalityTable.from_json(json.loads(files.read_bytes(name))["table"]).names


@dataclass
class EvalModel:
    """A model in eval mode with its run's modality table; every call takes numpy and returns numpy."""

    module: Any  # the plain pipeline.model module: encode(batch) -> (features, pad); forward(batch) -> ModelOutput
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

    def target_logits(self, rows: Sequence[Row], inputs: Sequence[str], target: str,
                      batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per sample, in order: (logits (n, V) of every target slot, the n target ids), `inputs` fully visible
        and the whole target asked for (teacher-forced for sequences). Yielded batch by batch, so a caller that
        reduces as it goes never holds every sample's logits (V is the registry's vocabulary: 16k for RGB)."""
        import torch

        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = pack(self.table, rows[start:start + batch_size], inputs, target)
                # The training forward, asked for its logits: (live target slots, V) in row-major batch order.
                logits = self.module(self._torch(batch), return_logits=True).logits[self.table[target].name]
                logits = logits.float().cpu().numpy()
                live = ~batch["dec_pad"]
                ends = np.cumsum(live.sum(axis=1))
                for b, end in enumerate(ends):
                    n = int(live[b].sum())
                    yield logits[end - n:end], batch["dec_target"][b][live[b]]


def load_model(uri: str, storage: StorageConfig, device: str = "cpu") -> EvalModel:
    """The exported model at `uri` (a .safetensors export or a pretrain checkpoint directory), in eval mode."""
    module, table, _ = load_exported(uri, storage, device)
    return EvalModel(module, table, device)

"""Checkpoint -> one `model.safetensors` + `model.json` that load into the plain model, no DeepSpeed needed."""

from __future__ import annotations

import json

from pipeline.data.storage import Storage
from schemas.export import MODEL_JSON, WEIGHTS, sidecar_name
from schemas.common import StorageConfig


def export_checkpoint(checkpoint: str, out: str, storage: StorageConfig | None = None) -> dict:
    """Copy a checkpoint's consolidated weights and model description to `out` (a .safetensors path, local or s3://;
    the description goes beside it with a .json suffix)."""
    source = Storage(checkpoint, storage or StorageConfig())
    if not source.exists(WEIGHTS):
        raise FileNotFoundError(f"{checkpoint} holds no {WEIGHTS}: not a Tessera pretrain checkpoint")
    directory, _, name = out.rstrip("/").rpartition("/")
    target = Storage(directory or ".", storage or StorageConfig())
    target.write_atomic(name, source.read_bytes(WEIGHTS))
    description = source.read_bytes(MODEL_JSON)
    target.write_atomic(sidecar_name(name), description)
    return json.loads(description)

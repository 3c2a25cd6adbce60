"""Checkpoint -> one `model.safetensors` + `model.json` that load into the plain model, no DeepSpeed needed."""

from __future__ import annotations

import json

from pipeline.data.storage import Storage
from pipeline.train.loop import MODEL_JSON, WEIGHTS
from schemas.batch import ModalityTable
from schemas.model import ModelConfig
from schemas.preprocess import StorageConfig


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
    target.write_atomic(name.removesuffix(".safetensors") + ".json", description)
    return json.loads(description)


def load_exported(path: str, storage: StorageConfig | None = None, device: str = "cpu"):
    """The plain model from an export (or a checkpoint directory), in eval mode, with its ModalityTable."""
    import torch
    from safetensors.torch import load

    from pipeline.model import build_model

    storage = storage or StorageConfig()
    if path.endswith(".safetensors"):
        directory, _, name = path.rpartition("/")
        files = Storage(directory or ".", storage)
        weights, description = name, name.removesuffix(".safetensors") + ".json"
    else:
        files, weights, description = Storage(path, storage), WEIGHTS, MODEL_JSON
    meta = json.loads(files.read_bytes(description))
    table = ModalityTable.from_json(meta["table"])
    model = build_model(ModelConfig.model_validate(meta["model"]), table)
    model.load_state_dict(load(files.read_bytes(weights)))
    return model.to(torch.device(device)).eval(), table, meta

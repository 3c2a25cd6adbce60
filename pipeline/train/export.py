"""Checkpoint -> one `model.safetensors` + `model.json` that load into the plain model, no DeepSpeed needed.

What is copied is checked first: the weights must parse as safetensors and hold exactly the tensors, with exactly
the shapes, of the model that `model.json` describes. A truncated or swapped file fails the export, instead of
failing (or quietly loading something else) later in evaluation.
"""

from __future__ import annotations

import json

from pipeline.data.storage import Storage
from schemas.batch import ModalityTable
from schemas.common import StorageConfig
from schemas.export import MODEL_JSON, WEIGHTS, sidecar_name
from schemas.model import ModelConfig


class InvalidCheckpointError(ValueError):
    """The checkpoint's weights do not match the model its description names."""


def export_checkpoint(checkpoint: str, out: str, storage: StorageConfig | None = None) -> dict:
    """Copy a checkpoint's consolidated weights and model description to `out` (a .safetensors path, local or s3://;
    the description goes beside it with a .json suffix), after `validate_weights`."""
    source = Storage(checkpoint, storage or StorageConfig())
    if not source.exists(WEIGHTS):
        raise FileNotFoundError(f"{checkpoint} holds no {WEIGHTS}: not a Tessera pretrain checkpoint")
    weights, description = source.read_bytes(WEIGHTS), source.read_bytes(MODEL_JSON)
    validate_weights(weights, description, source.uri(WEIGHTS))
    directory, _, name = out.rstrip("/").rpartition("/")
    target = Storage(directory or ".", storage or StorageConfig())
    target.write_atomic(name, weights)
    target.write_atomic(sidecar_name(name), description)
    return json.loads(description)


def validate_weights(weights: bytes, description: bytes, where: str) -> None:
    """Raise `InvalidCheckpointError` unless `weights` parse as safetensors and hold the state dict (names and
    shapes) of the model `description` (model.json) names. The model is built on the meta device: shapes only, no
    memory, whatever its size."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    from pipeline.model import build_model

    try:
        meta = json.loads(description)
        config, table = ModelConfig.model_validate(meta["model"]), ModalityTable.from_json(meta["table"])
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidCheckpointError(f"{where}: its {MODEL_JSON} is not a model description ({error})") from None
    try:
        tensors = load(weights)
    except SafetensorError as error:
        raise InvalidCheckpointError(f"{where} is not a readable safetensors file ({error}); "
                                     f"the checkpoint is truncated or corrupt") from None
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in build_model(config, table).state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        reshaped = sorted(n for n in set(found) & set(expected) if found[n] != expected[n])
        raise InvalidCheckpointError(
            f"{where} does not hold the {config.size} model its {MODEL_JSON} describes: "
            f"{len(missing)} tensors missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}, "
            f"{len(reshaped)} of another shape {[(n, found[n], expected[n]) for n in reshaped[:3]]}")

"""The file names of an exported model: what pretrain checkpoints hold beside DeepSpeed's shards and what
`jobs.export` writes, read by evaluation and anything else that loads weights without DeepSpeed.

A checkpoint directory holds `model.safetensors` (the fp32 master weights, whole) and `model.json` (the
ModelConfig, the run's ModalityTable and the step). An export is `NAME.safetensors` with `NAME.json` beside it.
"""

from __future__ import annotations

WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"


def sidecar_name(weights_name: str) -> str:
    """`x.safetensors` -> `x.json`: the description written beside an exported weights file."""
    return weights_name.removesuffix(".safetensors") + ".json"

"""Checkpoints as the evaluate job sees them: an exported model directory (`jobs/export.py`), loaded for inference."""

from __future__ import annotations

import re
from typing import Any

from schemas.preprocess import StorageConfig

_STEP = re.compile(r"(\d+)(?!.*\d)")


def read_step(uri: str) -> int | None:
    """The last number in the checkpoint's final path component (`run/step-000200` -> 200), or None."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    match = _STEP.search(name)
    return int(match.group(1)) if match else None


def load_model(uri: str, storage: StorageConfig) -> Any:
    """The exported model at `uri`, in eval mode."""
    try:
        import pipeline.model  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"cannot load {uri}: pipeline.model is not available ({exc})") from exc
    raise RuntimeError(f"cannot load {uri}: no exported-model loader is available yet (jobs/export.py)")

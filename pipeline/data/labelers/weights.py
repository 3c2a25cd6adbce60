"""Where a model-based labeler's weights come from: a local directory, or an s3:// prefix copied once to a local
cache. Nothing is ever fetched from a model hub: loaders are called with local_files_only and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.data.storage import Storage
from schemas.common import StorageConfig
from schemas.preprocess import LabelerConfig

CACHE_ROOT = Path(tempfile.gettempdir()) / "tessera-weights"


class MissingWeightsError(ValueError):
    """A labeler that loads a model was given no weights."""


def required_weights(modality: str, config: LabelerConfig) -> str:
    """The configured weights URI of a labeler that cannot run without one."""
    if not config.weights:
        raise MissingWeightsError(
            f"labeler {modality} needs weights: set labelers.{modality}.weights to a local path or s3:// URI"
        )
    return config.weights


def resolve_weights(uri: str, storage: StorageConfig | None = None) -> Path:
    """A local directory holding the weights at `uri`, copying an s3:// prefix into the cache on first use."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise FileNotFoundError(f"weights directory {path} does not exist")
        return path
    remote = Storage(uri, storage or StorageConfig())
    listing = remote.signature()
    if not listing:
        raise FileNotFoundError(f"no weights under {uri}")
    # Keyed by the URI and every file's size and version: weights replaced at the same URI are fetched again.
    target = CACHE_ROOT / hashlib.sha256(json.dumps([uri, listing]).encode()).hexdigest()[:16]
    if target.is_dir():
        return target
    files = list(listing)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE_ROOT, prefix=".partial-"))
    try:
        for relpath in files:
            destination = staging / relpath
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(remote.read_bytes(relpath))
        os.replace(staging, target)  # whole or not at all; a concurrent actor that won the race is fine too
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

"""The labeler interface and registry (the plug-ins, one module per family, register on import; the package
`pipeline.data.labelers` imports them all).

A labeler turns a batch of decoded samples into one payload per sample for its modality: the bytes of the tar
member `<key>.<ext>` (ext from the modality registry). Cheap labelers run inside the decode tasks; model-based ones
get their own Ray Data actor pool (see schemas.preprocess.LabelerConfig). Either way the class is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from schemas.common import StorageConfig
from schemas.preprocess import LabelerConfig
from schemas.registry import Registry


@dataclass
class DecodedBatch:
    """Decoded samples of one batch, aligned by index."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB at the configured resolution
    captions: list[str]
    original_sizes: list[tuple[int, int]]  # (width, height) before crop and resize

    def __len__(self) -> int:
        return len(self.captions)


class Labeler:
    """Base of every labeler: subclasses set `modality` and implement `label`."""

    modality: ClassVar[str]
    needs_weights: ClassVar[bool] = False
    # Loads a model: built once per actor in its own pool, never per unit inside the decode tasks.
    needs_pool: ClassVar[bool] = False
    # Labels from the image's pixels; False for labelers of the caption alone, the only ones a corpus without
    # images (a raw primary modality: audio, time series, ...) can run.
    reads_pixels: ClassVar[bool] = True

    def __init__(self, config: LabelerConfig | None = None, storage: StorageConfig | None = None):
        self.config = config or LabelerConfig()
        self.storage = storage or StorageConfig()  # how to reach s3:// weights (endpoint, region, credentials)

    def label(self, batch: DecodedBatch) -> list[bytes]:
        raise NotImplementedError

    def __call__(self, batch: DecodedBatch) -> list[bytes]:
        payloads = self.label(batch)
        if len(payloads) != len(batch):
            raise RuntimeError(f"{type(self).__name__} returned {len(payloads)} payloads for {len(batch)} samples")
        return payloads


LABELERS: Registry[type[Labeler]] = Registry("labeler")


def torch_device(config: LabelerConfig):
    """Where a model labeler runs: the GPU its actor reserved (`num_gpus`) when one is visible, else the CPU."""
    import torch  # heavy imports stay out of the decode workers that never build a model labeler

    return torch.device("cuda" if torch.cuda.is_available() and (config.num_gpus or 0) > 0 else "cpu")


def torch_dtype(config: LabelerConfig):
    """The dtype a model labeler's weights run in. bf16/fp16 halve memory and run on tensor cores on a GPU;
    outputs are stored at their own precision anyway."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]


def register_labeler(cls: type[Labeler]) -> type[Labeler]:
    """Class decorator: the labeler of `cls.modality` (one per modality)."""
    return LABELERS.register(cls.modality, cls)


def get_labeler(modality: str) -> type[Labeler]:
    """The labeler class of a modality; import `pipeline.data.labelers` first so that every built-in one is known."""
    return LABELERS.get(modality)

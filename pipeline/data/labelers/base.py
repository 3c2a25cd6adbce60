"""The labeler interface and registry.

A labeler turns a batch of decoded samples into one payload per sample for its modality: the bytes of the tar
member `<key>.<ext>` (ext from the modality registry). Cheap labelers run inside the decode tasks; model-based ones
get their own Ray Data actor pool (see schemas.preprocess.LabelerConfig). Either way the class is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from schemas.preprocess import LabelerConfig, StorageConfig


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


LABELERS: dict[str, type[Labeler]] = {}


def register_labeler(cls: type[Labeler]) -> type[Labeler]:
    if cls.modality in LABELERS:
        raise ValueError(f"two labelers for modality {cls.modality!r}")
    LABELERS[cls.modality] = cls
    return cls


def get_labeler(modality: str) -> type[Labeler]:
    if modality not in LABELERS:
        raise KeyError(f"no labeler produces modality {modality!r}; labelers exist for {sorted(LABELERS)}")
    return LABELERS[modality]

"""Pseudo-labelers, one module per family; importing the package registers them all."""

from pipeline.data.labelers import (  # noqa: F401 (registers)
    caption_embedding,
    dense,
    detection,
    edges,
    features,
    metadata,
    palette,
    passthrough,
    poses,
    sam,
    t5,
)
from pipeline.data.labelers.base import LABELERS, DecodedBatch, Labeler, get_labeler

__all__ = ["LABELERS", "DecodedBatch", "Labeler", "get_labeler"]

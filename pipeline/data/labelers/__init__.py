"""Pseudo-labelers, one module per family; importing the package registers them all."""

from pipeline.data.labelers import (  # noqa: F401 (registers)
    caption_embedding,
    dense,
    edges,
    features,
    metadata,
    palette,
    passthrough,
)
from pipeline.data.labelers.base import LABELERS, DecodedBatch, Labeler, get_labeler

__all__ = ["LABELERS", "DecodedBatch", "Labeler", "get_labeler"]

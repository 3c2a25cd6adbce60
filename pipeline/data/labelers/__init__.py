"""Pseudo-labelers, one module per family; importing the package registers them all."""

from pipeline.data.labelers import caption_embedding, edges, metadata, palette, passthrough  # noqa: F401 (registers)
from pipeline.data.labelers.base import LABELERS, DecodedBatch, Labeler, get_labeler

__all__ = ["LABELERS", "DecodedBatch", "Labeler", "get_labeler"]

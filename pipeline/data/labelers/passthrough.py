"""The sample's own modalities, written in their normalised form: RGB at the configured resolution, the caption."""

from __future__ import annotations

from pipeline.data.encoding import encode_jpeg
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler


@register_labeler
class RGB(Labeler):
    modality = "rgb"
    jpeg_quality = 95

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [encode_jpeg(image, self.jpeg_quality) for image in batch.images]


@register_labeler
class Caption(Labeler):
    modality = "caption"
    reads_pixels = False

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [caption.encode("utf-8") for caption in batch.captions]

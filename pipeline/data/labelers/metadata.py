"""The 4M-21 metadata that pixels and captions alone determine, on the value scales ml-4m bins them on
(schemas/labels.py METADATA_SCALES): 8-bit levels, raw colourfulness, bits. Tessera's serializer bins the same values,
so no second (0-1) copy is kept; nor could one be: ml-4m's transform fails on a key it does not know.

Keys that need models (humans, SAM instances, walkability, objectness, aesthetics, ...) come from model labelers.
Colourfulness follows Hasler & Suesstrunk (2003), the measure 4M-21 uses.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.encoding import encode_json
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler


@register_labeler
class ImageMetadata(Labeler):
    modality = "metadata"

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [
            encode_json(image_metadata(image, caption, size))
            for image, caption, size in zip(batch.images, batch.captions, batch.original_sizes)
        ]


def image_metadata(image: np.ndarray, caption: str, original_size: tuple[int, int]) -> dict:
    rgb = image.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    gray = 0.299 * r + 0.587 * g + 0.114 * b
    rg, yb = r - g, 0.5 * (r + g) - b
    colorfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-9), 0.0)
    histogram = np.bincount(gray.astype(np.uint8).ravel(), minlength=256) / gray.size
    nonzero = histogram[histogram > 0]
    return {
        "original_width": int(original_size[0]),
        "original_height": int(original_size[1]),
        "caption_n_chars": len(caption),
        "caption_n_words": len(caption.split()),
        "brightness": round(float(gray.mean()), 4),
        "contrast": round(float(gray.std()), 4),
        "saturation": round(float(saturation.mean() * 255.0), 4),
        "colorfulness": round(float(colorfulness), 4),
        "entropy": round(float(-(nonzero * np.log2(nonzero)).sum()), 4),
    }

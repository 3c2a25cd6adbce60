"""Dominant colour palette (4M-21's `color_palette`): up to 7 colours, most frequent first."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.data.encoding import encode_json
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler

MAX_COLORS = 7  # 4M-21 palettes hold 1 to 7 colours (23 tokens at most as text)
MIN_FRACTION = 0.01  # colours covering less of the image are noise, not palette


@register_labeler
class ColorPalette(Labeler):
    modality = "color_palette"

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [encode_json(palette(image)) for image in batch.images]


def palette(image: np.ndarray) -> dict:
    # Max-coverage quantisation spreads the palette over the colours present (median cut spends it on shades of a
    # large background); like median cut it is deterministic, which k-means would not be without a seed.
    small = Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR)
    quantized = small.quantize(colors=MAX_COLORS, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    counts = np.bincount(np.asarray(quantized).ravel(), minlength=MAX_COLORS)
    colors = np.asarray(quantized.getpalette()[: 3 * MAX_COLORS], dtype=np.int64).reshape(-1, 3)
    total = counts.sum()
    order = sorted(range(len(colors)), key=lambda i: (-counts[i], tuple(colors[i])))
    kept = [i for i in order if i < len(counts) and counts[i] / total >= MIN_FRACTION]
    return {
        "colors": [colors[i].tolist() for i in kept],
        "fractions": [round(float(counts[i] / total), 4) for i in kept],
    }

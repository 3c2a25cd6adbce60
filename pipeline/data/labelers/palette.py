"""Dominant colour palettes (4M-21's `color_palette`), in the record ml-4m reads (schemas/labels.py): for every
palette size 1 to 7 that many colours, most frequent first; beside them Tessera's 7-colour palette with each
colour's share of the image and colours under 1% dropped."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.data.encoding import encode_json
from pipeline.data.labelers.base import DecodedBatch, Labeler, register_labeler
from schemas.labels import PALETTE_SIZES, Palette, palette_record

MAX_COLORS = max(PALETTE_SIZES)  # 4M-21 palettes hold 1 to 7 colours (23 tokens at most as text)
MIN_FRACTION = 0.01  # colours covering less of the image are noise, not palette


@register_labeler
class ColorPalette(Labeler):
    modality = "color_palette"

    def label(self, batch: DecodedBatch) -> list[bytes]:
        return [encode_json(palette(image)) for image in batch.images]


def palette(image: np.ndarray) -> list[dict]:
    small = Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR)
    by_size = {size: quantized_colors(small, size) for size in PALETTE_SIZES}
    colors, counts = by_size[MAX_COLORS]
    total = counts.sum()
    kept = [i for i in range(len(colors)) if counts[i] / total >= MIN_FRACTION]
    tessera = Palette([colors[i] for i in kept], [round(float(counts[i] / total), 4) for i in kept])
    return palette_record({size: fill(found, size) for size, (found, _) in by_size.items()}, tessera)


def quantized_colors(image: Image.Image, size: int) -> tuple[list[list[int]], np.ndarray]:
    """The colours of a `size`-colour quantisation that some pixel uses, most frequent first (ties by colour),
    with their pixel counts."""
    # Max-coverage quantisation spreads the palette over the colours present (median cut spends it on shades of a
    # large background); like median cut it is deterministic, which k-means would not be without a seed.
    quantized = image.quantize(colors=size, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    counts = np.bincount(np.asarray(quantized).ravel(), minlength=size)[:size]
    table = np.asarray(quantized.getpalette()[: 3 * size], dtype=np.int64).reshape(-1, 3)
    order = sorted((i for i in range(len(table)) if counts[i] > 0), key=lambda i: (-counts[i], tuple(table[i])))
    return [table[i].tolist() for i in order], counts[order]


def fill(colors: list[list[int]], size: int) -> list[list[int]]:
    """Exactly `size` colours: ml-4m reads size k as k colours, so an image with fewer distinct colours repeats
    them in order (as k-means with more centres than colours would return duplicates)."""
    return [colors[i % len(colors)] for i in range(size)]

"""A picture of an output: a few samples with their labels side by side, to look at rather than read logs."""

from __future__ import annotations

import io
import json
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes or CI
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from pipeline.data.manifest import read_manifest
from pipeline.data.tar_io import iterate_shard
from pipeline.data.storage import Storage
from schemas.labels import read_palette


def _image(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


def _palette_strip(payload: bytes, height: int = 16, width: int = 112) -> np.ndarray:
    palette = read_palette(json.loads(payload))
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    start = 0
    for color, fraction in zip(palette.colors, palette.fractions):
        stop = start + max(1, round(fraction * width))
        strip[:, start:stop] = color
        start = stop
    return strip


def write_preview(storage: Storage, path: str, samples: int = 6) -> None:
    """PNG grid of the first samples of shard 0: RGB, Canny edges, palette, caption (what the output holds)."""
    rows = {r.folder: r for r in read_manifest(storage, ("rgb", "canny_edge", "color_palette", "caption"))
            if r.shard == 0}
    columns = [f for f in ("rgb", "canny_edge", "color_palette") if f in rows]
    shards = {folder: list(iterate_shard(storage.read_bytes(rows[folder].uri)))[:samples] for folder in columns}
    captions = list(iterate_shard(storage.read_bytes(rows["caption"].uri)))[:samples] if "caption" in rows else []
    count = len(shards[columns[0]]) if columns else 0
    if count == 0:
        return
    figure, axes = plt.subplots(count, len(columns), figsize=(2.4 * len(columns) + 2.6, 2.2 * count), squeeze=False)
    for row in range(count):
        for col, folder in enumerate(columns):
            key, members = shards[folder][row]
            payload = next(iter(members.values()))
            axis = axes[row][col]
            axis.imshow(_palette_strip(payload) if folder == "color_palette" else _image(payload))
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(folder, fontsize=9)
            if col == 0:
                axis.set_ylabel(key, fontsize=7)
        if captions:
            text = next(iter(captions[row][1].values())).decode("utf-8")
            axes[row][-1].text(1.05, 0.5, "\n".join(textwrap.wrap(text, 30)[:6]), transform=axes[row][-1].transAxes,
                               fontsize=7, va="center")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    storage.write_atomic(path, buffer.getvalue())

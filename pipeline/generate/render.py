"""Token rows -> files a person opens, through the modality's own tokenizer.

What a row becomes depends on its tokenizer family and, for neural tokenizers, on the kind of values its codec
decodes (never on the modality's name):

    color, unit vectors     the decoded pixels as a PNG
    depth                   a colour-mapped PNG (near = bright) and the metric map as .npy
    classes                 a palette-coloured PNG and the class ids as .npy
    binary (edges)          a grey PNG
    features, vectors, 1-D  .npy (the sheet shows the codec's preview, colour-mapped)
    WordPiece sequences     .txt, and .json of the serializer's parse where it gives a record (palette, boxes...);
                            a record with a picture (RECORD_PICTURES: a palette's colour swatches) also as a PNG
    fitted families         .json of the decoded record (table rows, graphs)
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from PIL import Image

from pipeline.tokenizers.base import Tokenizer
from pipeline.tokenizers.neural import NeuralTokenizer
from pipeline.tokenizers.sequence import SERIALIZERS
from pipeline.tokenizers.text import TextTokenizer
from schemas.labels import read_palette
from schemas.modalities import Values, get_modality

IGNORE_CLASS = 255
# A fixed palette: class c gets the same colour in every file and every run; the ignore label stays black.
_PALETTE = np.random.default_rng(0).integers(40, 256, size=(256, 3), dtype=np.uint8)
_PALETTE[IGNORE_CLASS] = 0
SWATCH = 32  # pixels a side of one colour stripe of a palette's picture


@dataclass
class Rendered:
    """One modality of one sample, decoded: files by extension, and what the contact sheet shows."""

    files: dict[str, bytes]
    picture: np.ndarray | None = None  # (H, W, 3) uint8
    text: str | None = None


def png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def colour_map(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """A 2-D float array as (H, W, 3) uint8 through a matplotlib colour map, scaled to its own range."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    scaled = np.clip((values - low) / (high - low if high > low else 1.0), 0, 1)
    return (matplotlib.colormaps[name](scaled)[..., :3] * 255).round().astype(np.uint8)


def classes_picture(ids: np.ndarray) -> np.ndarray:
    return _PALETTE[np.asarray(ids, np.int64) % 256]


def map_files(values: Values | None, array: np.ndarray, preview: np.ndarray) -> Rendered:
    """A decoded map or vector of a neural tokenizer, by the kind of its values."""
    if values in (Values.COLOR, Values.UNIT_VECTOR):
        picture = np.asarray(array, np.uint8)
        return Rendered({"png": png(picture)}, picture)
    if values is Values.DEPTH:
        picture = colour_map(-np.log(np.maximum(array, 1e-6)), "magma")  # inverse depth: near is bright
        return Rendered({"png": png(picture), "npy": npy(array)}, picture)
    if values is Values.CLASSES:
        picture = classes_picture(array)
        return Rendered({"png": png(picture), "npy": npy(array)}, picture)
    if values is Values.BINARY:
        picture = np.repeat(np.asarray(array, np.uint8)[..., None], 3, axis=-1)
        return Rendered({"png": png(picture)}, picture)
    preview = np.asarray(preview, np.float32)
    return Rendered({"npy": npy(array)}, colour_map(preview if preview.ndim == 2 else preview.reshape(1, -1)))


def palette_swatches(record: Any) -> np.ndarray | None:
    """A palette record as a square of vertical stripes, one per colour in the record's order (most frequent
    first); None when it holds no colour."""
    colors = np.clip(np.asarray(read_palette(record).colors, np.int64).reshape(-1, 3), 0, 255).astype(np.uint8)
    if not len(colors):
        return None
    return np.repeat(np.repeat(colors[None], SWATCH * len(colors), axis=0), SWATCH, axis=1)


# Serializer records that are also drawn (files get a PNG; the contact sheet shows the picture, not the text).
RECORD_PICTURES: dict[str, Callable[[Any], np.ndarray | None]] = {"color_palette": palette_swatches}


def _json_ready(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def to_json(value: Any) -> bytes:
    return (json.dumps(_json_ready(value), indent=2, default=str) + "\n").encode("utf-8")


def render(modality: str, tokenizer: Tokenizer, row: np.ndarray) -> Rendered:
    """One sample's token row of `modality` decoded into its files."""
    name = get_modality(modality).name
    row = np.asarray(row, np.int64).reshape(1, -1)
    if isinstance(tokenizer, TextTokenizer):
        text = tokenizer.decode(row)[0]
        files, picture = {"txt": (text + "\n").encode("utf-8")}, None
        if name in SERIALIZERS:
            try:
                record = SERIALIZERS.get(name).parse(text)
            except ValueError:  # a value token out of its key's range: a model's text need not parse; .txt stays
                record = text
            if not isinstance(record, str):
                files["json"] = to_json(record)
                picture = RECORD_PICTURES[name](record) if name in RECORD_PICTURES else None
                if picture is not None:
                    files["png"] = png(picture)
        return Rendered(files, picture, text=text)
    if isinstance(tokenizer, NeuralTokenizer):
        (array,) = tokenizer.decode(row)
        return map_files(get_modality(name).values, array, tokenizer.codec.preview(array))
    decoded = tokenizer.decode(row)[0]
    text = json.dumps(_json_ready(decoded), default=str)
    return Rendered({"json": to_json(decoded)}, text=text)

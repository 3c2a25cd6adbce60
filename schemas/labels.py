"""The JSON label records that apple/ml-4m's loader reads as well as Tessera: one writer (the labeler), every reader
here. Facts from ml-4m's `fourm/data/modality_transforms.py`, which is the reference for the shapes and scales.

`color_palette` is a list with one entry per crop (Tessera writes one crop: the stored image); each entry maps
every palette size "1" ... "7" to that many [r, g, b] colours of 0-255 integers, most frequent first. ml-4m's
`ColorPaletteTransform` draws a size in 1..7 per sample and reads `record[0][str(size)]`. Tessera's own form, the
7-colour palette without noise colours and with each colour's share of the image, sits beside in the same entry as
"colors" and "fractions" (ml-4m reads only the size keys).

`det` is {"instances": [{"boxes": [xmin, ymin, xmax, ymax] as fractions of the image side, "class_name": str,
"score": float}, ...]}; ml-4m keeps instances scoring at least 0.6 and orders them by their corner's distance to the
image origin. Tessera's det labeler writes this form (`detection_record`, highest score first); the serializer reads it
(`read_detections`) as well as Tessera's own pixel boxes.

`human_poses` (HMR2.0 output: bbox_xyxy, pred_smpl_params, pose_tokenized, pred_cam) is neither written nor read.

`metadata` is a flat object whose keys must all be ones ml-4m knows (its transform fails on any other key), with
the value scales ml-4m bins on (METADATA_SCALES): 8-bit levels for brightness, contrast and saturation, raw
Hasler-Suesstrunk units for colourfulness, bits for entropy, pixels for sizes, counts for the caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

PALETTE_SIZES = tuple(range(1, 8))  # ml-4m's transform draws one of these per sample
RGB = list[int]


class Palette(NamedTuple):
    """Tessera's palette: colours most frequent first, each with its share of the image."""

    colors: list[RGB]
    fractions: list[float]


def palette_record(palettes: dict[int, Sequence[RGB]], tessera: Palette) -> list[dict[str, Any]]:
    """The `color_palette` member: one crop's entry holding every size ml-4m draws, and Tessera's form beside."""
    if sorted(palettes) != list(PALETTE_SIZES):
        raise ValueError(f"color_palette needs palettes of sizes {list(PALETTE_SIZES)}, got {sorted(palettes)}")
    entry: dict[str, Any] = {}
    for size, colors in palettes.items():
        if len(colors) != size or any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in colors):
            raise ValueError(f"color_palette size {size}: expected {size} [r, g, b] colours of 0-255, got {colors}")
        entry[str(size)] = [[int(v) for v in c] for c in colors]
    entry["colors"] = [[int(v) for v in c] for c in tessera.colors]
    entry["fractions"] = [float(f) for f in tessera.fractions]
    return [entry]


def read_palette(record: Any) -> Palette:
    """Tessera's palette from a `color_palette` record: the per-crop list (crop 0), or the bare {"colors",
    "fractions"} object that outputs written before the ml-4m layout hold."""
    entry = record[0] if isinstance(record, list) and record else record
    if not isinstance(entry, dict) or "colors" not in entry:
        raise ValueError("color_palette record holds no Tessera palette ('colors')")
    colors = [[int(v) for v in c] for c in entry["colors"]]
    return Palette(colors, [float(f) for f in entry.get("fractions", [0.0] * len(colors))])


class Scale(NamedTuple):
    """The value range ml-4m bins a metadata key on (its transform clips to it)."""

    low: float
    high: float


# ml-4m's MetadataTransform: image sizes go in bins of 32 px, counts are written as they are (up to 999), the rest
# in 50 equal bins over these ranges. Keys Tessera's metadata labeler writes, and the scale each is written on.
METADATA_SCALES: dict[str, Scale] = {
    "original_width": Scale(0, 999 * 32),
    "original_height": Scale(0, 999 * 32),
    "caption_n_chars": Scale(0, 999),
    "caption_n_words": Scale(0, 999),
    "brightness": Scale(0, 255),  # mean grey level (ITU-R 601 luma), 8-bit
    "contrast": Scale(0, 127),  # standard deviation of the grey levels; at most 127.5 for 8-bit
    "saturation": Scale(0, 255),  # mean HSV saturation, 8-bit
    "colorfulness": Scale(0, 150),  # Hasler & Suesstrunk (2003) on 8-bit RGB
    "entropy": Scale(0, 10),  # bits of the 256-level grey histogram (at most 8)
}


ML4M_DET_THRESHOLD = 0.6  # ml-4m's DetectionTransform default: lower-scoring instances are not written


class Detection(NamedTuple):
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as fractions of the image width / height
    name: str
    score: float = 1.0


def detection_record(detections: Sequence[Detection]) -> dict[str, Any]:
    """The `det` member: ml-4m's record of `detections`, highest score first (ties keep their order)."""
    instances = []
    for d in sorted(detections, key=lambda d: -d.score):
        x0, y0, x1, y1 = (float(v) for v in d.box)
        if not (0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0):
            raise ValueError(f"det box {list(d.box)} is not xmin <= xmax, ymin <= ymax within [0, 1]")
        if not 0.0 <= d.score <= 1.0 or not " ".join(d.name.split()):
            raise ValueError(f"det instance needs a score in [0, 1] and a class name, got {d.score!r}, {d.name!r}")
        instances.append({"boxes": [x0, y0, x1, y1], "class_name": " ".join(d.name.split()),
                          "score": float(d.score)})
    return {"instances": instances}


def read_detections(record: dict[str, Any], threshold: float = ML4M_DET_THRESHOLD) -> list[Detection]:
    """ml-4m's `det` record -> the detections its transform keeps (score >= threshold), in the order it writes
    them: by the distance of (xmin, ymin) to the image origin."""
    kept = [Detection(tuple(float(v) for v in inst["boxes"]), str(inst["class_name"]),  # type: ignore[arg-type]
                      float(inst["score"]))
            for inst in record["instances"] if float(inst["score"]) >= threshold]
    return sorted(kept, key=lambda d: d.box[0] ** 2 + d.box[1] ** 2)

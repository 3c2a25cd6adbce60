"""Decode and validate one raw sample: image to RGB at the configured resolution, caption, metadata.

Every failure is a `DecodeError` carrying a quarantine reason, so the caller records it and moves on; nothing here
raises for bad input in any other way.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.preprocess import CaptionConfig, ImageConfig
from schemas.shards import Reason


class DecodeError(Exception):
    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Crop:
    """The crop taken from the original image, in its pixel coordinates (kept in the sample's `source` record;
    ground-truth maps are cut with it). The `crop_settings` member is `stored_crop_settings`, not this."""

    top: int
    left: int
    height: int
    width: int
    hflip: int = 0

    def as_array(self) -> np.ndarray:
        return np.array([[self.top, self.left, self.height, self.width, self.hflip]], dtype=np.int32)


def stored_crop_settings(side: int) -> np.ndarray:
    """ml-4m's `crop_settings` of a stored image: int32 (n_crops, 5) rows of top, left, height, width, hflip in the
    stored image's pixels. ml-4m crops the stored RGB with a row, then resizes; Tessera stores the crop already
    (and tokenizes exactly it, unflipped), so its one row is the whole stored image: an identity crop."""
    return np.array([[0, 0, side, side, 0]], dtype=np.int32)


def decode_image(payload: bytes | None, config: ImageConfig) -> tuple[np.ndarray, Crop, tuple[int, int]]:
    """Bytes -> (uint8 RGB array of resolution x resolution, crop taken, original (width, height))."""
    if payload is None:
        raise DecodeError(Reason.MISSING_IMAGE, "sample has no image member")
    if len(payload) > config.max_bytes:
        raise DecodeError(Reason.DECOMPRESSION_BOMB, f"{len(payload)} bytes > max_bytes {config.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only the allowed formats' plugins look at the bytes, whatever the sample's file name says.
            image = Image.open(io.BytesIO(payload), formats=list(config.formats))
            # The header is read, the pixels are not: refuse oversized images before they are decompressed.
            width, height = image.size
            if width * height > config.max_pixels:
                raise DecodeError(Reason.DECOMPRESSION_BOMB, f"{width}x{height} > max_pixels {config.max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(Reason.DECOMPRESSION_BOMB, str(exc)) from None
    except UnidentifiedImageError:
        allowed = ", ".join(config.formats)
        raise DecodeError(Reason.BAD_IMAGE, f"not an image in an allowed format ({allowed})") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DecodeError(Reason.BAD_IMAGE, f"{type(exc).__name__}: {exc}") from None
    width, height = image.size
    if min(width, height) < config.min_side:
        raise DecodeError(Reason.IMAGE_TOO_SMALL, f"{width}x{height} < min_side {config.min_side}")
    rgb = to_rgb(image)
    resized, crop = resize_center_crop(rgb, config.resolution)
    return np.asarray(resized, dtype=np.uint8), crop, (width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited on white; 16-bit and float are rescaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            values = (values - low) / (high - low or 1.0) * 255.0
        elif values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, resolution: int) -> tuple[Image.Image, Crop]:
    """Center square crop of the original, then resize to resolution (crop first: fewer pixels to resample)."""
    width, height = image.size
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    cropped = image.crop((left, top, left + side, top + side))
    if side != resolution:
        cropped = cropped.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return cropped, Crop(top, left, side, side)


def decode_caption(payload: bytes | None, config: CaptionConfig) -> str:
    if payload is None:
        if config.required:
            raise DecodeError(Reason.BAD_CAPTION, "sample has no caption")
        return ""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(Reason.BAD_CAPTION, f"caption is not UTF-8: {exc}") from None
    text = text.strip()
    if "\x00" in text:
        raise DecodeError(Reason.BAD_CAPTION, "caption holds NUL characters")
    if len(text) > config.max_chars:
        raise DecodeError(Reason.BAD_CAPTION, f"caption has {len(text)} characters > max_chars {config.max_chars}")
    if not text and config.required:
        raise DecodeError(Reason.BAD_CAPTION, "caption is empty")
    return text


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def decode_metadata(payload: bytes | None) -> dict:
    """Strict JSON: UTF-8, an object at the top, no NaN/Infinity, no duplicate keys."""
    if payload is None:
        return {}
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant,
                           object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(Reason.BAD_METADATA, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError(Reason.BAD_METADATA, f"top level is {type(value).__name__}, expected an object")
    return value

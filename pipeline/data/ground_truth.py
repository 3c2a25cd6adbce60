"""Modalities taken from the corpus itself instead of a pseudo-labeler (`labelers.<m>.source: ground_truth`).

A raw sample may carry its own maps beside the image, named `<key>.<modality>.<ext>` (the sample corpus writes
`depth.npy` and `semseg.png`; a dataset with real annotations can do the same). Such a map is cropped with the
image's crop and resized to the configured resolution, so pixel (i, j) of the label is pixel (i, j) of the RGB
shard. Class maps are resampled with nearest neighbour (a class id is never averaged), continuous maps bilinearly.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.data.decode import Crop, DecodeError
from pipeline.data.encoding import encode_npy, encode_png
from schemas.modalities import get_modality
from schemas.shards import Reason


def member_ext(modality: str) -> str:
    """The raw member suffix holding the modality's ground truth, e.g. `depth.npy`."""
    return f"{modality}.{get_modality(modality).ext}"


def ground_truth_payload(modality: str, payload: bytes | None, crop: Crop, original_size: tuple[int, int],
                         resolution: int) -> bytes:
    """Raw ground-truth member -> the label member, aligned with the RGB shard. Raises DecodeError."""
    if payload is None:
        raise DecodeError(Reason.MISSING_GROUND_TRUTH, f"{modality}: the sample has no {member_ext(modality)} member")
    spec = get_modality(modality)
    try:
        array = _load(payload, spec.ext)
    except Exception as exc:  # numpy and PIL raise many types for corrupt data
        raise DecodeError(Reason.BAD_GROUND_TRUTH, f"{modality}: {type(exc).__name__}: {exc}") from None
    width, height = original_size
    if array.shape[:2] != (height, width):
        raise DecodeError(Reason.BAD_GROUND_TRUTH,
                          f"{modality}: map is {array.shape[1]}x{array.shape[0]}, the image {width}x{height}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DecodeError(Reason.BAD_GROUND_TRUTH, f"{modality}: map holds NaN or infinite values")
    window = array[crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    resized = _resize(window, resolution, nearest=spec.categorical)
    return encode_npy(resized.astype(np.float32)) if spec.ext == "npy" else encode_png(resized)


def _load(payload: bytes, ext: str) -> np.ndarray:
    if ext == "npy":
        array = np.load(io.BytesIO(payload), allow_pickle=False)
        if array.ndim != 2 or array.dtype.kind not in "fiu":
            raise ValueError(f"expected a 2-D numeric array, got {array.dtype} {array.shape}")
        return array.astype(np.float32)
    with Image.open(io.BytesIO(payload)) as image:
        image.load()
        if image.mode not in ("L", "P", "RGB"):
            raise ValueError(f"expected an L, P or RGB image, got mode {image.mode}")
        return np.asarray(image)


def _resize(array: np.ndarray, resolution: int, *, nearest: bool) -> np.ndarray:
    if array.shape[0] == resolution and array.shape[1] == resolution:
        return array
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if array.dtype == np.float32:
        image = Image.fromarray(array, mode="F")
    else:
        image = Image.fromarray(array)
    return np.asarray(image.resize((resolution, resolution), resample))

"""Modalities taken from the corpus itself instead of a pseudo-labeler (`labelers.<m>.source: ground_truth`).

A raw sample may carry its own maps beside the image, named `<key>.<modality>.<ext>` (the sample corpus writes
`depth.npy` and `semseg.png`; a dataset with real annotations can do the same). Such a map is cropped with the
image's crop and resized to the configured resolution, so pixel (i, j) of the label is pixel (i, j) of the RGB
shard. Class maps are resampled with nearest neighbour (a class id is never averaged), continuous maps bilinearly.
An instance modality (sam_instance) comes as one instance-id map, `<key>.instance.png` (0 background, 1..n, as the
sample corpus writes it), resampled with nearest neighbour and written as that modality's masks (schemas/instances.py).
A map's size is checked from its header before it is decoded: it must be the image's, which the image config
already bounds, so a few bytes claiming a huge array are refused without allocating it. Boxes (`det.json`, ml-4m's
record in fractions of the image) are cut the same way: clipped to the crop, re-expressed as fractions of it.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from pipeline.data.decode import Crop, DecodeError
from pipeline.data.encoding import encode_json, encode_npy, encode_png
from schemas.labels import Detection, detection_record, read_detections
from schemas.instances import masks_from_id_map, write_instances
from schemas.modalities import Family, get_modality
from schemas.shards import Reason


INSTANCE_ID_MAP = "instance.png"  # the raw member of every instance modality's ground truth


def member_ext(modality: str) -> str:
    """The raw member suffix holding the modality's ground truth, e.g. `depth.npy`."""
    spec = get_modality(modality)
    return INSTANCE_ID_MAP if spec.family is Family.INSTANCES else f"{modality}.{spec.ext}"


def ground_truth_payload(modality: str, payload: bytes | None, crop: Crop, original_size: tuple[int, int],
                         resolution: int) -> bytes:
    """Raw ground-truth member -> the label member, aligned with the RGB shard. Raises DecodeError."""
    if payload is None:
        raise DecodeError(Reason.MISSING_GROUND_TRUTH, f"{modality}: the sample has no {member_ext(modality)} member")
    spec = get_modality(modality)
    if modality in RECORD_CROPS:
        try:
            return RECORD_CROPS[modality](payload, crop, original_size)
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not the record's shape
            raise DecodeError(Reason.BAD_GROUND_TRUTH, f"{modality}: {type(exc).__name__}: {exc}") from None
    instances = spec.family is Family.INSTANCES
    try:
        array = _load(payload, "png" if instances else spec.ext, original_size)
    except MapSizeError as exc:
        raise DecodeError(Reason.BAD_GROUND_TRUTH, f"{modality}: {exc}") from None
    except Exception as exc:  # numpy and PIL raise many types for corrupt data
        raise DecodeError(Reason.BAD_GROUND_TRUTH, f"{modality}: {type(exc).__name__}: {exc}") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DecodeError(Reason.BAD_GROUND_TRUTH, f"{modality}: map holds NaN or infinite values")
    window = array[crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    resized = _resize(window, resolution, nearest=spec.categorical or instances)
    if instances:
        return write_instances(masks_from_id_map(resized))
    return encode_npy(resized.astype(np.float32)) if spec.ext == "npy" else encode_png(resized)


def crop_detections(payload: bytes, crop: Crop, original_size: tuple[int, int]) -> bytes:
    """ml-4m's det record of the original image -> the record of the crop: every box clipped to the crop window
    and re-expressed as fractions of it; a box left without area is dropped (ml-4m's DetectionTransform, with its
    default min_visibility 0). Scores are kept, all of them: the reader applies its own threshold."""
    width, height = original_size
    left, top = crop.left / width, crop.top / height
    side_x, side_y = crop.width / width, crop.height / height
    kept = []
    for found in read_detections(json.loads(payload), threshold=0.0):
        x0, y0, x1, y1 = found.box
        x0, x1 = (min(max((x - left) / side_x, 0.0), 1.0) for x in (x0, x1))
        y0, y1 = (min(max((y - top) / side_y, 0.0), 1.0) for y in (y0, y1))
        if x1 > x0 and y1 > y0:
            kept.append(Detection((x0, y0, x1, y1), found.name, found.score))
    return encode_json(detection_record(kept))


# Ground truth given as a JSON record rather than a map: modality -> how the record is cut to the crop.
RECORD_CROPS = {"det": crop_detections}


class MapSizeError(ValueError):
    """The map's header gives another size than the image's."""


def _check_size(map_width: int, map_height: int, original_size: tuple[int, int]) -> None:
    width, height = original_size
    if (map_width, map_height) != (width, height):
        raise MapSizeError(f"map is {map_width}x{map_height}, the image {width}x{height}")


def _load(payload: bytes, ext: str, original_size: tuple[int, int]) -> np.ndarray:
    """Decode the map once its header has been checked against the image's size (never before)."""
    buffer = io.BytesIO(payload)
    if ext == "npy":
        version = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buffer)
        if len(shape) != 2 or dtype.kind not in "fiu":
            raise ValueError(f"expected a 2-D numeric array, got {dtype} {shape}")
        _check_size(shape[1], shape[0], original_size)
        if len(payload) - buffer.tell() != shape[0] * shape[1] * dtype.itemsize:
            raise ValueError(f"{len(payload) - buffer.tell()} data bytes for a {dtype} {shape} array")
        buffer.seek(0)
        return np.load(buffer, allow_pickle=False).astype(np.float32)
    if ext != "png":
        raise ValueError(f"no ground-truth reader for .{ext} maps (npy and png are read)")
    with Image.open(buffer, formats=["PNG"]) as image:  # header only: nothing is decompressed yet
        _check_size(*image.size, original_size)
        if image.mode not in ("L", "P", "RGB"):
            raise ValueError(f"expected an L, P or RGB image, got mode {image.mode}")
        image.load()
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

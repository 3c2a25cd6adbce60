"""The label-shard format of instance masks (`sam_instance`): one writer, one reader.

A member is an `.npy` uint8 array of shape (N, S, ceil(S / 8)): N instance masks over the sample's S x S pixels
(every Tessera label map is square, the sample's crop at `image.resolution`), each row bit-packed with
`np.packbits(axis=-1)` (most significant bit first). Masks may overlap, which is why this is not one id map. N may
be 0. The instances are ordered by area, largest first, which is the order the instance tokenizer keeps when it
cuts a row at its token budget. Packing keeps a sample with 32 instances at 224 px near 200 KB instead of 1.6 MB.
"""

from __future__ import annotations

import io

import numpy as np

MAX_INSTANCES = 4096  # a member claiming more is refused before its masks are unpacked


class InstanceFormatError(ValueError):
    """A member that is not a packed instance-mask array."""


def sort_by_area(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> the same masks, largest first (stable for equal areas)."""
    areas = masks.sum(axis=(1, 2))
    return masks[np.argsort(-areas, kind="stable")]


def write_instances(masks: np.ndarray) -> bytes:
    """(N, S, S) boolean masks -> member bytes."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise InstanceFormatError(f"instance masks must be (N, S, S), got shape {masks.shape}")
    buffer = io.BytesIO()
    np.save(buffer, np.packbits(masks.astype(bool), axis=-1), allow_pickle=False)
    return buffer.getvalue()


def unpack(packed: np.ndarray) -> np.ndarray:
    """A packed (N, S, ceil(S / 8)) array, as stored or as any numeric copy of it -> (N, S, S) bool masks."""
    packed = np.asarray(packed)
    if packed.ndim != 3 or packed.shape[2] != -(-packed.shape[1] // 8) or len(packed) > MAX_INSTANCES:
        raise InstanceFormatError(f"packed instance masks must be (N <= {MAX_INSTANCES}, S, ceil(S/8)), got "
                                  f"shape {packed.shape}")
    if packed.dtype != np.uint8:
        if packed.size and (packed.min() < 0 or packed.max() > 255 or not np.all(packed == np.round(packed))):
            raise InstanceFormatError("packed instance masks hold values outside uint8")
        packed = packed.astype(np.uint8)
    return np.unpackbits(packed, axis=-1, count=packed.shape[1]).astype(bool)


def read_instances(payload: bytes) -> np.ndarray:
    """Member bytes -> (N, S, S) bool masks; anything else is an InstanceFormatError."""
    buffer = io.BytesIO(payload)
    try:  # the header first: a few bytes claiming a huge array are refused before anything is allocated
        version = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buffer)
    except Exception as exc:  # numpy raises several types for bytes that are not an npy file
        raise InstanceFormatError(f"not an npy array: {type(exc).__name__}: {exc}") from None
    if dtype != np.uint8 or len(shape) != 3 or len(payload) - buffer.tell() != int(np.prod(shape)):
        raise InstanceFormatError(f"expected packed uint8 (N, S, ceil(S/8)) masks, got {dtype} {shape} with "
                                  f"{len(payload) - buffer.tell()} data bytes")
    if shape[0] > MAX_INSTANCES or shape[2] != -(-shape[1] // 8):
        raise InstanceFormatError(f"packed instance masks must be (N <= {MAX_INSTANCES}, S, ceil(S/8)), got {shape}")
    buffer.seek(0)
    return unpack(np.load(buffer, allow_pickle=False))


def masks_from_id_map(ids: np.ndarray) -> np.ndarray:
    """An instance-id map (H, W), 0 for background and 1..n for instances (the sample corpus's
    `<key>.instance.png`) -> (n, H, W) bool masks, largest first."""
    ids = np.asarray(ids)
    present = [int(i) for i in np.unique(ids) if i != 0]
    masks = np.stack([ids == i for i in present]) if present else np.zeros((0, *ids.shape), bool)
    return sort_by_area(masks)

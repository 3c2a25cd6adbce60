"""Hand-made source images with known pixels, and the helpers that compare shard pixels to what they should be.

Expectations are computed here with numpy from the painted rectangles (crops as index slices, EXIF orientations
as rotations and flips), never by running the pipeline's own decode code.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
YELLOW, WHITE, BLACK = (255, 255, 0), (255, 255, 255), (0, 0, 0)
# JPEG at quality 95 (the rgb shard's encoding) moves a flat colour by a few levels; colours are compared only
# where the neighbourhood is flat (see `flat_interior`), since chroma is subsampled 2x2 at colour boundaries.
JPEG_TOLERANCE = 8
# Luma is stored at full resolution, so it is compared at every pixel, boundaries included: there JPEG ringing and
# a bicubic downscale move it by up to ~22 levels, while the neighbouring colours used here differ by 29 to 255
# (black/blue is the only pair under 70), so a crop off by one pixel fails.
LUMA_TOLERANCE = 30

Rect = tuple[int, int, int, int, tuple[int, int, int]]  # top, left, bottom (excl.), right (excl.), colour


def paint(height: int, width: int, rects: list[Rect], background=BLACK) -> np.ndarray:
    """(height, width, 3) uint8: the background, then each rectangle painted in order."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    for top, left, bottom, right, colour in rects:
        image[top:bottom, left:right] = colour
    return image


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_orientation(array: np.ndarray, orientation: int, fmt: str = "PNG", **options) -> bytes:
    """The pixels stored as they are, with an EXIF Orientation tag (0x0112) saying how to display them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(array, fmt, exif=exif.tobytes(), **options)


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for EXIF orientation 1-8 (the tag says where stored row 0 / column 0 belong)."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # row 0 top, column 0 right
        3: lambda a: a[::-1, ::-1],  # row 0 bottom, column 0 right
        4: lambda a: a[::-1, :],  # row 0 bottom, column 0 left
        5: lambda a: a.transpose(1, 0, 2),  # row 0 left, column 0 top
        6: lambda a: np.rot90(a, -1),  # row 0 right, column 0 top: turn clockwise
        7: lambda a: np.rot90(a, -1)[::-1],  # row 0 right, column 0 bottom
        8: lambda a: np.rot90(a, 1),  # row 0 left, column 0 bottom: turn anticlockwise
    }[orientation](stored)


def center_square(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The centred square of the short side (odd leftovers: the extra pixel goes after the crop), with
    (top, left, side)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side], (top, left, side)


def flat_interior(expected: np.ndarray, margin: int = 3) -> np.ndarray:
    """(H, W) bool: pixels whose (2 * margin + 1)^2 neighbourhood in `expected` holds a single colour (the image
    border counts as more of the same, so a wrong crop shows up in the outermost pixels)."""
    height, width = expected.shape[:2]
    padded = np.pad(expected, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
    flat = np.ones((height, width), bool)
    for dy in range(2 * margin + 1):
        for dx in range(2 * margin + 1):
            flat &= (padded[dy:dy + height, dx:dx + width] == expected).all(axis=-1)
    return flat


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def assert_pixels(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Same shape; every flat-interior pixel within JPEG_TOLERANCE of the expected colour, per channel; every
    pixel's luma within LUMA_TOLERANCE."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    flat = flat_interior(expected)
    assert flat.mean() > 0.5, f"{what}: the expectation has too few flat pixels to say anything"
    error = np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max(axis=-1)
    worst = np.unravel_index(np.argmax(np.where(flat, error, -1)), error.shape)
    assert error[flat].max() <= JPEG_TOLERANCE, (
        f"{what}: pixel {worst} is {actual[worst].tolist()}, expected {expected[worst].tolist()}")
    luma_error = np.abs(luma(actual) - luma(expected))
    worst = np.unravel_index(np.argmax(luma_error), luma_error.shape)
    assert luma_error.max() <= LUMA_TOLERANCE, (
        f"{what}: pixel {worst} has luma {luma(actual)[worst]:.0f}, expected {luma(expected)[worst]:.0f}")


def decode_jpeg(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))

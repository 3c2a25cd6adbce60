"""Label shards against values worked out by hand for hand-made images, not against another run of the same code.

The preprocess job runs once on a folder of six images whose pixels are painted rectangles; the rgb shard is read
back with the webdataset library and compared with the source cut by hand (crop offsets, EXIF rotation, alpha on
white, a downscale); canny edges, the palette and the metadata of a two-colour image are compared with values
derived on paper. The decode and labeler entry points are also checked directly, without Ray, where one job run
would not cover enough cases (all eight EXIF orientations, edges in both directions).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from expected_images import (
    BLACK,
    BLUE,
    GREEN,
    RED,
    WHITE,
    YELLOW,
    assert_pixels,
    center_square,
    decode_jpeg,
    displayed,
    encode,
    paint,
    with_orientation,
)
from pipeline.data.decode import decode_image
from pipeline.data.labelers import DecodedBatch, get_labeler
from pipeline.data.preprocess import run_preprocess
from schemas.preprocess import ImageConfig, PreprocessConfig

RES = 64
GREY = (127, 127, 127)  # black at alpha 128/255 over white: 255 * (1 - 128/255) = 127

# 96 x 64: a green band on either side that the centre crop must cut off, yellow (40 columns) and blue
# (24 columns) between them. After the crop (left = (96 - 64) // 2 = 16): yellow columns 0-39, blue 40-63.
TWO_COLOUR = paint(64, 96, [(0, 16, 64, 56, YELLOW), (0, 56, 64, 80, BLUE)], background=GREEN)
# 64 x 101: quadrants between green bands; top = (101 - 64) // 2 = 18, the odd row left over goes below.
TALL = paint(101, 64, [(18, 0, 50, 32, RED), (18, 32, 50, 64, WHITE), (50, 0, 82, 32, BLUE),
                       (50, 32, 82, 64, YELLOW)], background=GREEN)
# Stored 96 wide x 64 high, six blocks; EXIF orientation 6 displays it turned clockwise, 64 wide x 96 high.
SIX_BLOCKS = paint(64, 96, [(0, 0, 32, 32, RED), (0, 32, 32, 64, GREEN), (0, 64, 32, 96, BLUE),
                            (32, 0, 64, 32, WHITE), (32, 32, 64, 64, BLACK), (32, 64, 64, 96, YELLOW)])
# 128 x 192: horizontal bands of 32 rows; the crop keeps rows 32-159 (red, white, black, blue), then halves them.
BANDS = paint(192, 128, [(32, 0, 64, 128, RED), (64, 0, 96, 128, WHITE), (96, 0, 128, 128, BLACK),
                         (128, 0, 160, 128, BLUE)], background=GREEN)


def alpha_image() -> bytes:
    """Left half opaque red; top right fully transparent *blue* (must come out white, not blue); bottom right
    black at alpha 128."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (*RED, 255)
    rgba[:32, 32:] = (*BLUE, 0)
    rgba[32:, 32:] = (*BLACK, 128)
    return encode(rgba)


def palette_image() -> bytes:
    """A palette PNG: top half index 0 (green, declared transparent), bottom half index 1 (red, opaque)."""
    image = Image.fromarray(np.repeat(np.array([0, 1], np.uint8), 32)[:, None].repeat(64, axis=1), mode="P")
    image.putpalette([*GREEN, *RED] + [0] * (256 - 2) * 3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


# key -> (file, bytes, expected rgb at RES, crop_settings row, original (width, height) as displayed)
CASES = {
    "alpha": ("alpha.png", alpha_image(), paint(64, 64, [(0, 0, 64, 32, RED), (0, 32, 32, 64, WHITE),
                                                          (32, 32, 64, 64, GREY)]), (0, 0, 64, 64, 0), (64, 64)),
    "crop_tall": ("crop_tall.png", encode(TALL), TALL[18:82], (18, 0, 64, 64, 0), (64, 101)),
    "crop_wide": ("crop_wide.png", encode(TWO_COLOUR), TWO_COLOUR[:, 16:80], (0, 16, 64, 64, 0), (96, 64)),
    "downscaled": ("downscaled.png", encode(BANDS), paint(64, 64, [(0, 0, 16, 64, RED), (16, 0, 32, 64, WHITE),
                                                                   (32, 0, 48, 64, BLACK), (48, 0, 64, 64, BLUE)]),
                   (32, 0, 128, 128, 0), (128, 192)),
    # A camera JPEG: stored sideways, with the tag; the crop is in displayed coordinates (top = (96 - 64) // 2).
    "exif_rotated": ("exif_rotated.jpg", with_orientation(SIX_BLOCKS, 6, "JPEG", quality=100, subsampling=0),
                     np.rot90(SIX_BLOCKS, -1)[16:80], (16, 0, 64, 64, 0), (64, 96)),
    "palette_mode": ("palette_mode.png", palette_image(), paint(64, 64, [(0, 0, 32, 64, WHITE),
                                                                         (32, 0, 64, 64, RED)]),
                     (0, 0, 64, 64, 0), (64, 64)),
}
CAPTION = "two colour halves"  # the sidecar of crop_wide: 17 characters, 3 words


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session) -> dict[str, dict[str, dict]]:
    """The job run on the folder; returns folder -> key -> the sample's members, as webdataset reads them."""
    root = tmp_path_factory.mktemp("expect-labels")
    for file, payload, *_ in CASES.values():
        (root / "in" / file).parent.mkdir(parents=True, exist_ok=True)
        (root / "in" / file).write_bytes(payload)
    (root / "in" / "crop_wide.txt").write_text(CAPTION)
    config = PreprocessConfig(input=str(root / "in"), output=str(root / "out"), image=ImageConfig(resolution=RES),
                              modalities=("rgb", "caption", "canny_edge", "color_palette", "metadata"))
    report = run_preprocess(config, log=lambda _: None)
    assert report["samples_written"] == len(CASES) and report["samples_quarantined"] == 0
    folders = ("rgb", "caption", "canny_edge", "color_palette", "metadata", "crop_settings", "source")
    return {folder: {s["__key__"]: s for s in wds.WebDataset(str(root / "out" / folder / "shard-000000.tar"),
                                                             shardshuffle=False)} for folder in folders}


def test_rgb_pixels_are_the_source_cut_by_hand(shards):
    assert sorted(shards["rgb"]) == sorted(CASES)
    for key, (_, _, expected, crop, _) in CASES.items():
        assert_pixels(decode_jpeg(shards["rgb"][key]["jpg"]), expected, what=key)
        # crop_settings describe the stored image for ml-4m (an identity crop); the source's crop is in `source`
        assert np.load(io.BytesIO(shards["crop_settings"][key]["npy"])).tolist() == [[0, 0, RES, RES, 0]], key
        assert json.loads(shards["source"][key]["json"])["crop"] == list(crop[:4]), key


def test_two_colour_image_edges_palette_and_metadata_by_hand(shards):
    edges = np.asarray(Image.open(io.BytesIO(shards["canny_edge"]["crop_wide"]["png"])))
    assert edges.shape == (RES, RES) and set(np.unique(edges)) == {0, 255}
    rows, cols = np.nonzero(edges)
    # One vertical edge where yellow (columns 0-39) meets blue (40-63), one pixel wide on either side of the step;
    # nothing else (the cut-off green bands must leave no trace). Canny never marks the outermost ring.
    assert set(cols.tolist()) <= {39, 40}, sorted(set(cols.tolist()))
    assert set(rows.tolist()) == set(range(1, RES - 1))
    assert np.bincount(rows, minlength=RES)[4:RES - 4].tolist() == [1] * (RES - 8)

    (palette,) = json.loads(shards["color_palette"]["crop_wide"]["json"])  # one crop (schemas/labels.py)
    assert (palette["colors"], palette["fractions"]) == ([list(YELLOW), list(BLUE)], [0.625, 0.375])  # 40/64, 24/64

    # Grey levels Y = 0.299 R + 0.587 G + 0.114 B: yellow 225.93, blue 29.07, in shares p = 0.625, q = 0.375.
    # brightness = p 225.93 + q 29.07 = 152.1075; contrast = sqrt(pq) (225.93 - 29.07) = 95.3044;
    # saturation 255 (max - min) / max = 255 for both; Hasler-Suesstrunk: rg = R - G = 0 everywhere,
    # yb = (R + G) / 2 - B = +255 / -255, so std(yb) = 510 sqrt(pq), mean(yb) = 255 (p - q), colourfulness =
    # 510 sqrt(pq) + 0.3 * 255 (p - q) = 266.0277; entropy of two grey levels = -(p log2 p + q log2 q) = 0.9544.
    metadata = json.loads(shards["metadata"]["crop_wide"]["json"])
    assert metadata == pytest.approx({
        "original_width": 96, "original_height": 64, "caption_n_chars": 17, "caption_n_words": 3,
        "brightness": 152.1075, "contrast": 95.3044, "saturation": 255.0, "colorfulness": 266.0277,
        "entropy": 0.9544,
    }, abs=1e-3)
    assert shards["caption"]["crop_wide"]["txt"].decode() == CAPTION


def test_original_size_is_the_displayed_size(shards):
    for key, (*_, size) in CASES.items():
        metadata = json.loads(shards["metadata"][key]["json"])
        assert (metadata["original_width"], metadata["original_height"]) == size, key


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_undone(orientation):
    """Lossless PNG, no resize: the decoded pixels equal the hand-rotated source exactly."""
    view = displayed(SIX_BLOCKS, orientation)
    expected, (top, left, side) = center_square(view)
    pixels, crop, size = decode_image(with_orientation(SIX_BLOCKS, orientation), ImageConfig(resolution=RES))
    assert size == (view.shape[1], view.shape[0])
    assert (crop.top, crop.left, crop.height, crop.width) == (top, left, side, side)
    np.testing.assert_array_equal(pixels, expected)


def test_alpha_is_composited_on_white_for_every_alpha_mode():
    """RGBA, LA and a palette with a transparent index: transparent pixels are white whatever colour they hide,
    half-transparent ones are halfway to white."""
    grey_alpha = np.zeros((64, 64, 2), np.uint8)
    grey_alpha[:, :32] = (0, 255)  # opaque black
    grey_alpha[:, 32:] = (200, 0)  # transparent mid-grey: white
    cases = {
        "rgba": (alpha_image(), CASES["alpha"][2]),
        "la": (encode(grey_alpha), paint(64, 64, [(0, 32, 64, 64, WHITE)])),
        "p": (palette_image(), CASES["palette_mode"][2]),
    }
    for name, (payload, expected) in cases.items():
        pixels, _, _ = decode_image(payload, ImageConfig(resolution=RES))
        np.testing.assert_allclose(pixels, expected, atol=1, err_msg=name)  # PIL rounds the 127.5-ish blend


def label(modality: str, *images: np.ndarray) -> list[bytes]:
    batch = DecodedBatch(images=np.stack(images), captions=[""] * len(images),
                         original_sizes=[(i.shape[1], i.shape[0]) for i in images])
    return get_labeler(modality)()(batch)


def test_canny_traces_a_square_in_both_directions():
    """A black 24 x 24 square (rows and columns 20-43) on white: edges only along its outline, every side found."""
    square = paint(64, 64, [(20, 20, 44, 44, BLACK)], background=WHITE)
    (payload,) = label("canny_edge", square)
    edges = np.asarray(Image.open(io.BytesIO(payload))) > 0
    # Distance of each edge pixel to the outline: one of the two pixels straddling it (19|20 and 43|44).
    rows, cols = np.nonzero(edges)
    near_outline = ((np.minimum(abs(rows - 19.5), abs(rows - 43.5)) <= 0.5) & (cols >= 18) & (cols <= 45)) | (
        (np.minimum(abs(cols - 19.5), abs(cols - 43.5)) <= 0.5) & (rows >= 18) & (rows <= 45))
    assert near_outline.all(), list(zip(rows[~near_outline], cols[~near_outline]))
    for line in range(22, 42):  # away from the rounded corners every side is found (a symmetric step may mark
        # both pixels that straddle it; `near_outline` above already keeps it to those two)
        assert edges[line, 19:21].any() and edges[line, 43:45].any(), line
        assert edges[19:21, line].any() and edges[43:45, line].any(), line


def test_palette_fractions_and_flat_metadata_by_hand():
    """Three colours in shares 1/2, 1/4, 1/4 (ties ordered by colour); a flat grey image has no contrast, colour or
    entropy and brightness v (8-bit levels, ml-4m's scale)."""
    three = paint(64, 64, [(0, 0, 64, 32, RED), (0, 32, 32, 64, WHITE), (32, 32, 64, 64, BLUE)])
    (payload,) = label("color_palette", three)
    (palette,) = json.loads(payload)
    assert (palette["colors"], palette["fractions"]) == ([list(RED), list(BLUE), list(WHITE)], [0.5, 0.25, 0.25])
    grey = np.full((64, 64, 3), 51, np.uint8)
    (payload,) = label("metadata", grey)
    metadata = json.loads(payload)
    assert {k: metadata[k] for k in ("brightness", "contrast", "saturation", "colorfulness", "entropy")} == {
        "brightness": 51.0, "contrast": 0.0, "saturation": 0.0, "colorfulness": 0.0, "entropy": 0.0}
    # Red on one half, green on the other: rg = +255 / -255 (std 255, mean 0), yb = 127.5 both (std 0):
    # colourfulness = 255 + 0.3 * 127.5 = 293.25.
    (payload,) = label("metadata", paint(64, 64, [(0, 0, 64, 32, RED), (0, 32, 64, 64, GREEN)]))
    assert json.loads(payload)["colorfulness"] == pytest.approx(293.25, abs=1e-3)
    assert math.isclose(json.loads(payload)["saturation"], 255.0)

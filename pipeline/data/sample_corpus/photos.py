"""Real photographs from `skimage.data`, so the sample corpus holds natural image statistics beside the scenes.

Only images that ship inside scikit-image's wheel are used (nothing is downloaded). Each photo sample is a
deterministic random square crop resized to the corpus resolution, so repeated draws of the same photo differ, with
one of a few hand-written captions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import skimage.data
from PIL import Image

# Smallest crop side as a fraction of the photo's shorter side: small enough to vary, large enough to keep the subject.
MIN_CROP_FRACTION = 0.55


@dataclass(frozen=True)
class PhotoSource:
    name: str  # function name in skimage.data
    captions: tuple[str, ...]


PHOTOS: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", (
        "Official NASA portrait of astronaut Eileen Collins in an orange spacesuit, with an American flag behind her.",
        "A smiling astronaut in an orange flight suit poses beside her helmet and a space shuttle model.",
        "Portrait of a woman in an orange spacesuit in front of a US flag.",
    )),
    PhotoSource("camera", (
        "A black and white photo of a man in a coat operating a camera on a tripod.",
        "Grayscale picture of a cameraman standing on a lawn with buildings in the distance.",
        "A photographer looks through a vintage camera mounted on a tripod, in monochrome.",
    )),
    PhotoSource("chelsea", (
        "Close-up of a tabby cat's face with large green eyes.",
        "A brown tabby cat with long white whiskers stares at the camera.",
        "The face of a striped cat with a pink nose, seen up close.",
    )),
    PhotoSource("coffee", (
        "A red cup of coffee on a red saucer with a spoon, on a wooden table.",
        "View from above of an espresso in a red cup with a white inside.",
        "A cup of coffee with a silver spoon on a wooden counter.",
    )),
    PhotoSource("coins", (
        "Grayscale photo of two dozen old coins arranged in rows on a dark background.",
        "Several worn ancient coins of different sizes lying on a dark surface.",
        "A black and white image of rows of silver coins with embossed figures.",
    )),
    PhotoSource("hubble_deep_field", (
        "The Hubble deep field: hundreds of distant galaxies against black space.",
        "A telescope image full of tiny colourful galaxies and bright stars.",
        "Deep space photograph showing spiral and elliptical galaxies scattered across the dark sky.",
    )),
    PhotoSource("immunohistochemistry", (
        "A microscope image of tissue stained brown and blue.",
        "Immunohistochemistry slide showing stained cell nuclei under a microscope.",
        "Close-up of a stained tissue sample with dark brown and pale blue cells.",
    )),
    PhotoSource("rocket", (
        "A Falcon 9 rocket on its launch pad at dusk, between tall lightning towers.",
        "A tall white rocket lit up on the launch pad under a dark blue evening sky.",
        "A SpaceX rocket waits for lift-off at Cape Canaveral, floodlights shining at its base.",
    )),
    PhotoSource("moon", (
        "A grayscale image of the cratered surface of the moon.",
        "Black and white view of lunar plains dotted with small craters.",
        "The gray surface of the moon with a few dark patches and craters.",
    )),
    PhotoSource("retina", (
        "A fundus photograph of a human retina with branching blood vessels.",
        "Medical image of the back of an eye, showing the optic disc and red vessels.",
        "A retinal scan in orange and red with dark blood vessels spreading from the optic nerve.",
    )),
    PhotoSource("brick", (
        "A grayscale texture of a brick wall.",
        "Close-up of rows of bricks held together by mortar, in black and white.",
        "A rough brick wall texture with uneven joints.",
    )),
    PhotoSource("logo", (
        "The scikit-image logo: a circle split into green and orange by a white curve, with a snake drawn inside.",
        "A round logo in green and orange with a snake sketched across it.",
        "A colourful circular logo on a white background, showing an S-shaped snake.",
    )),
    PhotoSource("horse", (
        "A black silhouette of a horse on a white background.",
        "The shape of a standing horse in solid black against white.",
        "A simple black and white silhouette of a horse seen from the side.",
    )),
)


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """The named skimage.data image as (H, W, 3) uint8 RGB, read-only; cached so each process decodes it once."""
    image = getattr(skimage.data, name)()
    if image.dtype == bool:
        image = np.where(image, 255, 0).astype(np.uint8)  # horse: True is the white background
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        # RGBA (logo): composite over white so transparent parts don't turn into whatever the RGB channels hold.
        alpha = image[:, :, 3:].astype(np.float64) / 255.0
        image = np.rint(image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    image.setflags(write=False)
    return image


@dataclass(frozen=True)
class Photo:
    rgb: np.ndarray  # (image_size, image_size, 3) uint8
    source: PhotoSource
    caption: str
    crop: tuple[int, int, int]  # top, left, side in the source photo
    source_size: tuple[int, int]  # height, width of the source photo


def sample_photo(rng: np.random.Generator, image_size: int) -> Photo:
    """Pick a photo, a caption and a square crop from `rng`, and resize the crop to image_size."""
    source = PHOTOS[rng.integers(len(PHOTOS))]
    caption = source.captions[rng.integers(len(source.captions))]
    full = load_photo(source.name)
    height, width = full.shape[:2]
    shorter = min(height, width)
    side = int(round(shorter * rng.uniform(MIN_CROP_FRACTION, 1.0)))
    top = int(rng.integers(height - side + 1))
    left = int(rng.integers(width - side + 1))
    crop = Image.fromarray(full[top : top + side, left : left + side])
    rgb = np.asarray(crop.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return Photo(rgb, source, caption, (top, left, side), (height, width))

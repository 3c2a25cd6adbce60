"""Procedural scenes: a few flat shapes on a plain or gradient background, with exact ground truth.

A scene is sampled (`sample_scene`) and then rendered (`render_scene`) into RGB plus the labels a real corpus
would only get from pseudo-labelers: depth, semantic classes, instance ids and boxes. Because the labels come from
the same masks as the pixels, a labeler or tokenizer run on the sample corpus can be checked against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Semantic class id of a shape is its position here + 1; 0 is the background.
SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 210, 45),
    "green": (45, 155, 70),
    "blue": (40, 90, 210),
    "purple": (125, 60, 175),
    "pink": (240, 125, 185),
    "brown": (120, 75, 35),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (248, 248, 248),
    "light gray": (200, 200, 200),
    "dark gray": (72, 72, 72),
    "beige": (232, 220, 192),
    "pale blue": (196, 220, 240),
    "black": (16, 16, 16),
}
# Half-extent (circumradius) of an object as a fraction of the image side.
SIZES: dict[str, tuple[float, float]] = {"small": (0.07, 0.10), "medium": (0.12, 0.16), "large": (0.19, 0.25)}

MAX_OBJECTS = 4
COLOR_JITTER = 12  # per channel, so colour names cover a range of shades instead of 8 exact values
OBJECT_DEPTH = (1.5, 4.5)  # every object stands in front of the nearest background point
GROUND_DEPTH = (20.0, 5.0)  # background depth at the top and bottom row


@dataclass(frozen=True)
class Background:
    """A vertical gradient from `top` to `bottom` (named BACKGROUNDS colours); plain when they are equal."""

    top: str
    bottom: str

    @property
    def is_plain(self) -> bool:
        return self.top == self.bottom

    def rows(self, size: int) -> np.ndarray:
        """(size, 3) uint8 colour of each image row."""
        top = np.array(BACKGROUNDS[self.top], dtype=np.float64)
        bottom = np.array(BACKGROUNDS[self.bottom], dtype=np.float64)
        t = np.linspace(0.0, 1.0, size)[:, None]
        return np.rint(top + (bottom - top) * t).astype(np.uint8)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    rgb: tuple[int, int, int]
    center: tuple[float, float]  # (x, y) in pixels
    radius: float
    depth: float


@dataclass(frozen=True)
class Scene:
    image_size: int
    background: Background
    objects: tuple[SceneObject, ...]  # back to front: later objects are nearer and occlude earlier ones


@dataclass(frozen=True)
class VisibleObject:
    """An object with at least one visible pixel; `box` is [xmin, ymin, xmax, ymax) of those pixels."""

    object: SceneObject
    instance: int
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class RenderedScene:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float16
    semseg: np.ndarray  # (H, W) uint8, 0 background, 1 + SHAPES.index(shape)
    instance: np.ndarray  # (H, W) uint8, 0 background, VisibleObject.instance
    visible: tuple[VisibleObject, ...]  # back to front
    hidden: int  # objects drawn but fully occluded, left out of the labels


def class_id(shape: str) -> int:
    return SHAPES.index(shape) + 1


def sample_scene(rng: np.random.Generator, image_size: int) -> Scene:
    """Draw a scene of 1..MAX_OBJECTS objects; all randomness comes from `rng`, in a fixed order."""
    names = list(BACKGROUNDS)
    top = names[rng.integers(len(names))]
    bottom = top if rng.random() < 0.5 else names[rng.integers(len(names))]
    objects = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
        rgb = tuple(int(c) for c in np.clip(np.array(COLORS[color]) + jitter, 0, 255))
        radius = float(rng.uniform(*SIZES[size])) * image_size
        # Centres keep the whole object in frame, so a box is only ever cut by occlusion, never by the border.
        cx, cy = (float(rng.uniform(radius, image_size - radius)) for _ in range(2))
        # Rounded so the depth written to JSON is exactly the one the ordering and the depth map used.
        depth = round(float(rng.uniform(*OBJECT_DEPTH)), 3)
        objects.append(SceneObject(shape, color, size, rgb, (round(cx, 2), round(cy, 2)), round(radius, 2), depth))
    objects.sort(key=lambda o: -o.depth)  # stable, so equal depths keep their sampling order
    return Scene(image_size, Background(top, bottom), tuple(objects))


def _outline(obj: SceneObject) -> list[tuple[float, float]]:
    """Polygon of a non-circle shape around its centre."""
    cx, cy = obj.center
    r = obj.radius
    if obj.shape == "square":
        s = r / np.sqrt(2.0)  # circumradius r: the square's corners touch the circle of that radius
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if obj.shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if obj.shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    if obj.shape == "star":
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)]
    raise ValueError(f"unknown shape {obj.shape!r}")


def object_mask(obj: SceneObject, image_size: int) -> np.ndarray:
    """(H, W) bool pixels covered by the object, without antialiasing so labels are exact."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    if obj.shape == "circle":
        cx, cy = obj.center
        draw.ellipse([cx - obj.radius, cy - obj.radius, cx + obj.radius, cy + obj.radius], fill=255)
    else:
        draw.polygon(_outline(obj), fill=255)
    return np.asarray(canvas) > 0


def ground_depth(image_size: int) -> np.ndarray:
    """(H,) depth of a ground plane seen from above the horizon: inverse depth grows linearly down the image."""
    far, near = GROUND_DEPTH
    inverse = np.linspace(1.0 / far, 1.0 / near, image_size)
    return 1.0 / inverse


def render_scene(scene: Scene) -> RenderedScene:
    """Paint objects back to front; pixels, classes, instances and depth all come from the same masks."""
    size = scene.image_size
    rgb = np.repeat(scene.background.rows(size)[:, None, :], size, axis=1)
    depth = np.repeat(ground_depth(size)[:, None], size, axis=1)
    semseg = np.zeros((size, size), dtype=np.uint8)
    drawn = np.zeros((size, size), dtype=np.uint8)  # 1 + index into scene.objects
    for index, obj in enumerate(scene.objects):
        mask = object_mask(obj, size)
        rgb[mask] = obj.rgb
        depth[mask] = obj.depth
        semseg[mask] = class_id(obj.shape)
        drawn[mask] = index + 1

    # Renumber the objects that kept a pixel 1..n so instance ids in the PNG and the JSON list agree with no gaps.
    pixel_counts = np.bincount(drawn.ravel(), minlength=len(scene.objects) + 1)
    renumber = np.zeros(len(scene.objects) + 1, dtype=np.uint8)
    visible = []
    for index, obj in enumerate(scene.objects):
        if pixel_counts[index + 1] == 0:
            continue
        instance = len(visible) + 1
        renumber[index + 1] = instance
        ys, xs = np.nonzero(drawn == index + 1)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        visible.append(VisibleObject(obj, instance, box))
    return RenderedScene(
        rgb=rgb,
        depth=depth.astype(np.float16),
        semseg=semseg,
        instance=renumber[drawn],
        visible=tuple(visible),
        hidden=len(scene.objects) - len(visible),
    )

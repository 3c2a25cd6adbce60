"""One raw sample of the sample corpus: which kind it is, its randomness, and its tar members.

Everything about sample `index` is a function of (seed, index) alone, so any shard can be built without the
others, in any process, in any order, and come out byte-identical.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import numpy as np

from pipeline.data.encoding import encode_jpeg, encode_json, encode_npy, encode_png
from pipeline.data.sample_corpus.captions import describe_scene
from pipeline.data.sample_corpus.photos import sample_photo
from pipeline.data.sample_corpus.scenes import BACKGROUNDS, RenderedScene, Scene, class_id, render_scene, sample_scene
from schemas.corpus import SampleCorpusConfig
from schemas.keys import make_key
from schemas.labels import Detection, detection_record

Kind = Literal["scene", "photo"]
Member = tuple[str, bytes]

JPEG_QUALITY = 90
# One image in PNG_EVERY is PNG instead of JPEG so readers meet both, as in scraped corpora. 7 shares no factor with
# 10, so with round real fractions (0.1, 0.2, 0.5) photos and scenes both land on each format.
PNG_EVERY = 7
PNG_OFFSET = 3


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index`: independent streams per sample, no state shared between samples."""
    return np.random.default_rng([seed, index])


def photos_before(count: int, real_fraction: float) -> int:
    """How many of the first `count` samples are photos: round(count * real_fraction), exactly.

    The fraction is made rational first so 0.1 * 30 is 3, not 2.9999999999999996 rounded the wrong way.
    """
    fraction = Fraction(real_fraction).limit_denominator(1_000_000)
    return int(count * fraction + Fraction(1, 2))


def sample_kind(index: int, real_fraction: float) -> Kind:
    """Photos are spread evenly: sample `index` is one when it raises the running photo count."""
    is_photo = photos_before(index + 1, real_fraction) > photos_before(index, real_fraction)
    return "photo" if is_photo else "scene"


def image_ext(index: int) -> str:
    return "png" if index % PNG_EVERY == PNG_OFFSET else "jpg"


def encode_image(array: np.ndarray, ext: str) -> bytes:
    """RGB as JPEG (quality JPEG_QUALITY) or lossless PNG; label maps (2-D uint8) always go through PNG."""
    return encode_jpeg(array, JPEG_QUALITY) if ext == "jpg" else encode_png(array)


def _scene_meta(scene: Scene, rendered: RenderedScene) -> dict:
    background = scene.background
    return {
        "background": {
            "top": background.top,
            "bottom": background.bottom,
            "top_rgb": list(BACKGROUNDS[background.top]),
            "bottom_rgb": list(BACKGROUNDS[background.bottom]),
        },
        "objects": [
            {
                "instance": item.instance,
                "class": item.object.shape,
                "class_id": class_id(item.object.shape),
                "color": item.object.color,
                "rgb": list(item.object.rgb),
                "size": item.object.size,
                "box": list(item.box),
                "depth": item.object.depth,
                "center": list(item.object.center),
                "radius": item.object.radius,
            }
            for item in rendered.visible
        ],
        "hidden_objects": rendered.hidden,
    }


def scene_detections(rendered: RenderedScene) -> dict:
    """The scene's `det` ground truth, ml-4m's record: each visible object's box (its visible pixels) as fractions
    of the image, its shape as the class, score 1."""
    size = rendered.rgb.shape[0]
    return detection_record([Detection(tuple(v / size for v in item.box), item.object.shape)  # type: ignore[arg-type]
                             for item in rendered.visible])


def build_sample(config: SampleCorpusConfig, index: int) -> tuple[Kind, list[Member]]:
    """The kind of sample `index` and its tar members: image, caption, metadata (and ground truth for scenes)."""
    kind = sample_kind(index, config.real_fraction)
    rng = sample_rng(config.seed, index)
    key = make_key(kind, index)
    ext = image_ext(index)
    size = config.image_size
    meta = {"key": key, "kind": kind, "seed": config.seed, "index": index, "width": size, "height": size}

    if kind == "photo":
        photo = sample_photo(rng, size)
        top, left, side = photo.crop
        meta |= {
            "source": f"skimage.data.{photo.source.name}",
            "source_size": list(photo.source_size),
            "crop": {"top": top, "left": left, "side": side},
        }
        return kind, [
            (f"{key}.{ext}", encode_image(photo.rgb, ext)),
            (f"{key}.txt", photo.caption.encode("utf-8")),
            (f"{key}.json", encode_json(meta)),
        ]

    scene = sample_scene(rng, size)
    rendered = render_scene(scene)
    caption = describe_scene(rendered, scene.background, rng)
    meta |= _scene_meta(scene, rendered)
    return kind, [
        (f"{key}.{ext}", encode_image(rendered.rgb, ext)),
        (f"{key}.txt", caption.encode("utf-8")),
        (f"{key}.json", encode_json(meta)),
        (f"{key}.depth.npy", encode_npy(rendered.depth)),
        (f"{key}.semseg.png", encode_image(rendered.semseg, "png")),
        (f"{key}.instance.png", encode_image(rendered.instance, "png")),
        (f"{key}.det.json", encode_json(scene_detections(rendered))),
    ]

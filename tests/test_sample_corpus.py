"""The sample corpus generator: determinism, WebDataset readability, and ground truth that agrees with the pixels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from jobs.sample_corpus import main
from pipeline.data.sample_corpus.photos import PHOTOS, load_photo, sample_photo
from pipeline.data.sample_corpus.samples import photos_before, sample_kind
from pipeline.data.sample_corpus.scenes import SHAPES, Background, Scene, SceneObject, render_scene
from schemas.config import ConfigError
from schemas.keys import make_key, validate_key

SIZE = 64
SAMPLES = 20
ARGS = ["--samples", str(SAMPLES), "--image-size", str(SIZE), "--samples-per-shard", "8"]
LABELS = ("depth.npy", "semseg.png", "instance.png")


def generate(out: Path, *extra: str) -> Path:
    assert main(["--out", str(out), *ARGS, *extra]) == 0
    return out


def tree(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("corpus"))


def _label_png(data: bytes) -> np.ndarray:
    # Label maps are read as stored; webdataset's image decoders would turn a class-id PNG into RGB.
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def samples(corpus) -> list[dict]:
    urls = [str(p) for p in sorted(corpus.glob("corpus-*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode(
        wds.handle_extension("semseg.png instance.png", _label_png), "rgb8"
    )
    return list(dataset)


def test_layout_and_description(corpus, samples):
    names = sorted(p.name for p in corpus.iterdir())
    assert names == ["corpus-000000.tar", "corpus-000001.tar", "corpus-000002.tar", "corpus.json"]
    description = json.loads((corpus / "corpus.json").read_text())
    assert description["samples"] == SAMPLES and description["seed"] == 0
    assert description["classes"] == ["background", *SHAPES]
    assert [s["samples"] for s in description["shards"]] == [8, 8, 4]
    kinds = [s["json"]["kind"] for s in samples]
    assert description["counts"] == {"scene": kinds.count("scene"), "photo": kinds.count("photo")}


def test_same_arguments_give_identical_bytes_whatever_the_workers(corpus, tmp_path):
    again = generate(tmp_path / "workers2", "--workers", "2")
    assert tree(again) == tree(corpus)


def test_another_seed_gives_other_bytes(corpus, tmp_path):
    other = tree(generate(tmp_path / "seed1", "--seed", "1"))
    first = tree(corpus)
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first)


def test_every_sample_reads_back_with_webdataset(samples):
    assert [s["__key__"] for s in samples] == [make_key(sample_kind(i, 0.1), i) for i in range(SAMPLES)]
    formats = set()
    for sample in samples:
        validate_key(sample["__key__"])
        image_ext = "jpg" if "jpg" in sample else "png"
        formats.add((sample["json"]["kind"], image_ext))
        image = sample[image_ext]
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert isinstance(sample["txt"], str) and sample["txt"]
        meta = sample["json"]
        assert meta["key"] == sample["__key__"] and (meta["width"], meta["height"]) == (SIZE, SIZE)
        if meta["kind"] == "photo":
            assert not any(label in sample for label in LABELS)
            continue
        depth, semseg, instance = (sample[label] for label in LABELS)
        assert depth.shape == (SIZE, SIZE) and depth.dtype == np.float16
        assert semseg.shape == instance.shape == (SIZE, SIZE)
        assert semseg.dtype == instance.dtype == np.uint8
    assert {("scene", "jpg"), ("scene", "png"), ("photo", "jpg")} <= formats


def _scenes(samples) -> list[dict]:
    scenes = [s for s in samples if s["json"]["kind"] == "scene"]
    assert scenes
    return scenes


def test_ground_truth_agrees_with_the_image(samples):
    for sample in _scenes(samples):
        meta, depth, semseg, instance = sample["json"], *(sample[label] for label in LABELS)
        objects = meta["objects"]
        assert [o["instance"] for o in objects] == list(range(1, len(objects) + 1))
        assert set(np.unique(instance)) - {0} == {o["instance"] for o in objects}
        assert np.array_equal(semseg == 0, instance == 0)

        # Repaint the image from the labels alone: background rows, then each instance's colour.
        expected = np.repeat(Background(meta["background"]["top"], meta["background"]["bottom"]).rows(SIZE)[:, None],
                             SIZE, axis=1)
        for obj in objects:
            pixels = instance == obj["instance"]
            assert obj["class_id"] == SHAPES.index(obj["class"]) + 1
            assert np.all(semseg[pixels] == obj["class_id"])
            ys, xs = np.nonzero(pixels)
            assert obj["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight, xmax/ymax exclusive
            assert np.allclose(depth[pixels].astype(np.float32), obj["depth"], atol=5e-3)
            expected[pixels] = obj["rgb"]
        max_object_depth = max(o["depth"] for o in objects)
        assert np.all(depth[instance == 0] > max_object_depth)

        image = sample["png"] if "png" in sample else sample["jpg"]
        error = np.abs(image.astype(np.int16) - expected.astype(np.int16))
        if "png" in sample:
            assert error.max() == 0, sample["__key__"]  # lossless: every pixel is exactly what the labels say
        else:
            # JPEG rings at edges and subsamples chroma (small objects suffer most), so only bounds on the whole.
            assert error.mean() < 8 and np.median(error[instance == 0]) <= 3, sample["__key__"]


def test_nearer_objects_occlude_farther_ones(samples):
    for sample in _scenes(samples):
        depths = [o["depth"] for o in sample["json"]["objects"]]
        assert depths == sorted(depths, reverse=True)  # back to front, the drawing order


def test_a_fully_occluded_object_is_dropped_and_ids_stay_dense():
    far = SceneObject("circle", "red", "small", (215, 40, 40), (32.0, 32.0), 5.0, 4.0)
    near = SceneObject("square", "blue", "large", (40, 90, 210), (32.0, 32.0), 30.0, 2.0)
    rendered = render_scene(Scene(64, Background("white", "white"), (far, near)))
    assert rendered.hidden == 1
    assert [(v.object.shape, v.instance) for v in rendered.visible] == [("square", 1)]
    assert set(np.unique(rendered.instance)) == {0, 1}
    assert set(np.unique(rendered.semseg)) == {0, SHAPES.index("square") + 1}


def test_caption_names_every_visible_object(samples):
    for sample in _scenes(samples):
        caption = sample["txt"].lower()
        for obj in sample["json"]["objects"]:
            assert f"{obj['color']} {obj['class']}" in caption, (caption, obj)


def test_photos_have_their_source_and_no_labels(samples):
    photos = [s for s in samples if s["json"]["kind"] == "photo"]
    assert len(photos) == 2
    for sample in photos:
        assert sample["json"]["source"].startswith("skimage.data.")
        source = next(p for p in PHOTOS if f"skimage.data.{p.name}" == sample["json"]["source"])
        assert sample["txt"] in source.captions


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1 / 3, 0.5, 1.0])
def test_real_fraction_is_respected(fraction):
    for count in (1, 7, 20, 100):
        kinds = [sample_kind(i, fraction) for i in range(count)]
        assert kinds.count("photo") == photos_before(count, fraction) == int(count * fraction + 0.5 + 1e-9)


def test_photo_samples_are_rgb_and_vary():
    for source in PHOTOS:
        photo = load_photo(source.name)
        assert photo.ndim == 3 and photo.shape[2] == 3 and photo.dtype == np.uint8
    first, second = (sample_photo(np.random.default_rng([0, i]), 32) for i in (1, 2))
    assert first.rgb.shape == (32, 32, 3)
    assert (first.source.name, first.crop) != (second.source.name, second.crop)


def test_a_smaller_rerun_removes_stale_shards(tmp_path):
    out = generate(tmp_path / "corpus")
    assert main(["--out", str(out), "--samples", "5", "--image-size", "32", "--samples-per-shard", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["corpus-000000.tar", "corpus.json"]


@pytest.mark.parametrize("bad", [["--samples", "0"], ["--image-size", "8"], ["--real-fraction", "1.5"],
                                 ["--workers", "0"], ["--seed", "-1"]])
def test_bad_arguments_fail_with_a_config_error(tmp_path, bad):
    args = {"--out": str(tmp_path), "--samples": "4"}
    args.update(zip(bad[::2], bad[1::2]))
    with pytest.raises(ConfigError):
        main([item for pair in args.items() for item in pair])
    assert not any(tmp_path.iterdir())

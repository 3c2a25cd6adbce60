"""Tessera's output read the way apple/ml-4m's pretraining loader reads it (issue 19), modality by modality.

The checks restate, in our own words, what ml-4m's `fourm/data/modality_transforms.py`, `image_augmenter.py`,
`unified_datasets.py` and `masking.py` do with each member (facts listed in /work/notes/ml4m_labels.md): ml-4m
itself is not installed here. The shards are the session's `tokens` output (sample corpus at 32 px: rgb, caption,
canny_edge, color_palette, metadata, tok_* text), copied, plus image tokens made by the real tokenize stage.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer as HFTokenizer

from jobs.demo import TEXT_VOCAB
from pipeline.data.inspect import iter_members
from pipeline.data.preprocess import run_preprocess
from pipeline.data.storage import Storage
from pipeline.data.tar_io import iterate_shard
from pipeline.tokenizers import TextTokenizer, train_wordpiece
from pipeline.tokenizers.codecs import read_member
from pipeline.tokenizers.fit import new_tokenizer
from pipeline.tokenizers.sequence import encode_records
from pipeline.tokenizers.text import EOS, ML4M_TOKENIZER_FILE, PAD, TOKENIZER_FILE, sentinel_token
from schemas.common import StorageConfig
from schemas.labels import METADATA_SCALES, PALETTE_SIZES
from schemas.modalities import get_modality
from schemas.preprocess import PreprocessConfig
from schemas.token_grids import ml4m_modality_info

MAPS = ("rgb", "canny_edge")
QUICK = {"blocks": 0, "quantizer": {"levels": (4, 4, 3)}}  # untrained: only shapes and ids matter here

# ml-4m's MetadataTransform: the keys it knows (any other key is a KeyError there) and the (low, high) ranges of the
# keys it puts in 50 equal bins; image sizes go in 32 px bins and counts are written as they are.
ML4M_METADATA_KEYS = {
    "original_width", "original_height", "caption_n_chars", "caption_n_words", "caption_n_sentences", "n_humans",
    "n_sam_instances", "n_coco_instances", "coco_instance_diversity", "colorfulness", "brightness", "contrast",
    "saturation", "entropy", "walkability", "objectness", "semantic_diversity", "geometric_complexity",
    "occlusion_score", "watermark_score", "aesthetic_score",
}
ML4M_FLOAT_BINS = {"colorfulness": (0, 150), "brightness": (0, 255), "contrast": (0, 127), "saturation": (0, 255),
                   "entropy": (0, 10)}
ML4M_BINS = 50


def ml4m_bin(value: float, low: float, high: float) -> int:
    """The bin ml-4m writes for a float metadata value: clipped, scaled to [0, 1], times bins - 1, truncated."""
    return int((min(max(value, low), high) - low) / (high - low) * (ML4M_BINS - 1))


@pytest.fixture(scope="module")
def output(tokens: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's output with tok_rgb and tok_canny_edge added by the tokenize stage."""
    root = tmp_path_factory.mktemp("ml4m-compat")
    out = root / "shards"
    shutil.copytree(tokens, out)
    labels = Storage(str(out), StorageConfig())
    directories = {}
    for modality in MAPS:
        samples = [read_member(modality, payload) for _, payload in iter_members(labels, modality)]
        tokenizer = new_tokenizer(modality, f"test/{modality}", samples, QUICK)
        directories[modality] = str(tokenizer.save(root / modality))
    run_preprocess(PreprocessConfig(output=str(out), stages=("tokenize",), tokenizers=directories),
                   log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def wordpiece(output: Path) -> TextTokenizer:
    """The shared vocabulary trained on the output's captions, as `jobs.train_tokenizer` would."""
    captions = [p.decode("utf-8") for _, p in iter_members(Storage(str(output), StorageConfig()), "caption")]
    return train_wordpiece(captions, TEXT_VOCAB)


@pytest.fixture(scope="module")
def ml4m_text(wordpiece: TextTokenizer) -> HFTokenizer:
    """The file ml-4m's `--text_tokenizer_path` takes."""
    return HFTokenizer.from_str(wordpiece.files()[ML4M_TOKENIZER_FILE].decode())


def read_folder(root: Path, folder: str) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} over every shard of a folder, in shard order."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted((root / folder).glob("shard-*.tar")):
        samples.update(iterate_shard(path.read_bytes()))
    return samples


def test_every_folder_holds_one_member_per_key_in_the_same_order(output):
    """ml-4m zips the folders' tars and names a member by its folder only when its tar holds one member per key."""
    folders = ("rgb", "caption", "color_palette", "metadata", "crop_settings", "tok_rgb", "tok_canny_edge")
    for shard in sorted(p.name for p in (output / "rgb").glob("shard-*.tar")):
        keys = None
        for folder in folders:
            members = list(iterate_shard((output / folder / shard).read_bytes()))
            assert all(len(fields) == 1 for _, fields in members), (folder, shard)
            assert keys is None or [k for k, _ in members] == keys, (folder, shard)
            keys = [k for k, _ in members]


def test_crop_settings_are_an_identity_crop_of_the_stored_image_and_match_the_token_rows(output):
    """ml-4m crops the stored RGB with (top, left, h, w) of the drawn row, resizes, flips if hflip, and takes the
    same row of every tok_*: the stored image is the crop, so the row must select all of it, unflipped."""
    rgb, crops, source = read_folder(output, "rgb"), read_folder(output, "crop_settings"), read_folder(output, "source")
    tokens = {m: read_folder(output, f"tok_{m}") for m in MAPS}
    assert rgb and rgb.keys() == crops.keys()
    for key, fields in rgb.items():
        image = Image.open(io.BytesIO(fields["jpg"])).convert("RGB")
        settings = np.load(io.BytesIO(crops[key]["npy"]), allow_pickle=False)
        assert settings.dtype.kind == "i" and settings.ndim == 2 and settings.shape[1] == 5, key
        for top, left, height, width, hflip in settings.tolist():
            assert (top, left, height, width, hflip) == (0, 0, image.height, image.width, 0), key
            cut = image.crop((left, top, left + width, top + height)).resize(image.size)
            np.testing.assert_array_equal(np.asarray(cut), np.asarray(image))
        for modality, rows in tokens.items():
            ids = np.load(io.BytesIO(rows[key]["npy"]), allow_pickle=False)
            assert ids.shape[0] == settings.shape[0], (modality, key)  # one token row per crop row
        # the crop in the source image's pixels is kept beside, in the source record
        top, left, height, width = json.loads(source[key]["json"])["crop"]
        assert height == width and height >= image.height and min(top, left) >= 0, key


def test_crop_settings_of_a_downscaled_off_centre_crop(tmp_path, ray_session):
    """A 96 x 64 source at 32 px: the stored JPEG is its centre 64 px square halved, so crop_settings must still be
    the whole stored image (ml-4m would otherwise cut a quarter of it and pad), the source crop sits beside."""
    source = np.zeros((64, 96, 3), np.uint8)
    source[:, 16:80] = (200, 30, 30)
    (tmp_path / "in").mkdir()
    Image.fromarray(source).save(tmp_path / "in" / "wide.png")
    run_preprocess(PreprocessConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                    image={"resolution": 32}, modalities=("rgb",)), log=lambda _: None)
    (settings,) = [np.load(io.BytesIO(f["npy"])) for f in read_folder(tmp_path / "out", "crop_settings").values()]
    (record,) = [json.loads(f["json"]) for f in read_folder(tmp_path / "out", "source").values()]
    assert settings.tolist() == [[0, 0, 32, 32, 0]] and record["crop"] == [0, 16, 64, 64]


def test_image_tokens_have_the_shape_ml4m_derives_from_input_and_patch_size(output):
    side = Image.open(io.BytesIO(next(iter(read_folder(output, "rgb").values()))["jpg"])).width
    for modality in MAPS:
        rows = read_folder(output, f"tok_{modality}")
        name, entry = ml4m_modality_info(modality, side, get_modality(modality).vocab_size)
        assert name == f"tok_{modality}@{side}" and entry["pretokenized"] and entry["type"] == "img"
        expected = (entry["input_size"] // entry["patch_size"]) ** 2  # run_training_4m's setup_modality_info
        for key, fields in rows.items():
            ids = np.load(io.BytesIO(fields["npy"]), allow_pickle=False)
            assert ids.dtype.kind == "i" and ids.shape == (1, expected), (modality, key, ids.shape)
            assert 0 <= ids.min() and ids.max() < entry["vocab_size"], (modality, key)


@pytest.mark.parametrize("modality, shape, tokens", [
    ("rgb", (224, 224, 3), 196), ("canny_edge", (224, 224), 196), ("depth", (224, 224), 196),
    ("rgb", (448, 448, 3), 784), ("clip_feature", (14, 14, 8), 196), ("dinov2_feature", (16, 16, 8), 256),
    ("dinov2_global", (8,), 16),
])
def test_tokens_at_4m_standard_shapes(modality, shape, tokens):
    """4M-21's counts: 16 px patches at 224 (14x14) and 448 (28x28), CLIP-B/16 14x14, DINOv2-B/14 16x16, 16
    tokens per global embedding; and the MODALITY_INFO entry for the same folder agrees."""
    rng = np.random.default_rng(0)
    dtype = np.uint8 if get_modality(modality).ext in ("jpg", "png") else np.float32
    samples = [(rng.random(shape) * 255).astype(dtype) for _ in range(2)]
    model = {"quantizer": {"levels": (4, 4, 3)}, **({"blocks": 0} if len(shape) > 1 else {"hidden": 16})}
    tokenizer = new_tokenizer(modality, f"test/{modality}", samples, model)
    assert tokenizer.tokens_per_sample == tokens
    assert tokenizer.encode(samples[:1]).shape == (1, tokens)
    _, entry = ml4m_modality_info(modality, shape[0], tokenizer.vocab_size)
    grid = entry.get("input_size", 224) // entry["patch_size"]  # global: ml-4m's run input size, 224
    assert grid * grid == tokens


def test_color_palette_is_the_per_crop_list_ml4m_draws_sizes_from(output, ml4m_text):
    """ml-4m reads record[0][str(k)] for k drawn from 1..7, flattens it and writes `v1=k v0=c ...`: every size must
    be there with k colours of 0-255 integers, and the text must be whole tokens of the vocabulary."""
    text = ml4m_text
    for key, fields in read_folder(output, "color_palette").items():
        record = json.loads(fields["json"])
        assert isinstance(record, list) and len(record) == 1, key  # one crop, the stored image
        for size in PALETTE_SIZES:
            colors = record[0][str(size)]
            assert len(colors) == size and all(len(c) == 3 for c in colors), (key, size)
            flat = [v for color in colors for v in color]
            assert all(isinstance(v, int) and 0 <= v <= 255 for v in flat), (key, size)
            words = [f"v1={round(len(flat) / 3)}", *(f"v0={v}" for v in flat)]
            ids = text.encode(" ".join(words)).ids
            assert len(ids) == len(words) and text.token_to_id("[UNK]") not in ids, (key, size)
            assert len(ids) + 1 <= get_modality("color_palette").max_tokens  # + ml-4m's EOS
        # Tessera's own palette beside: at most 7 colours, shares that add up to about 1
        assert 1 <= len(record[0]["colors"]) <= max(PALETTE_SIZES)
        assert sum(record[0]["fractions"]) == pytest.approx(1.0, abs=0.1), key


def test_metadata_keys_and_scales_are_ml4m_s_and_spread_over_its_bins(output, ml4m_text):
    records = {k: json.loads(f["json"]) for k, f in read_folder(output, "metadata").items()}
    text = ml4m_text
    bins: dict[str, set[int]] = {key: set() for key in ML4M_FLOAT_BINS}
    for key, record in records.items():
        assert set(record) <= ML4M_METADATA_KEYS and set(record) <= set(METADATA_SCALES), key
        for name, value in record.items():
            low, high = METADATA_SCALES[name]
            assert low <= value <= high or name == "colorfulness", (key, name, value)  # ml-4m clips colourfulness
            if name in ML4M_FLOAT_BINS:
                bins[name].add(ml4m_bin(value, *ML4M_FLOAT_BINS[name]))
            else:
                assert isinstance(value, int) and value >= 0, (key, name, value)
        chunks = [f"v1={i} v0={min(int(v), 999)}" for i, v in enumerate(record.values())]  # ml-4m's shape of text
        assert all(len(text.encode(chunk).ids) == 2 for chunk in chunks), key
    # The symptom: on 0-1 scales every sample fell into the first bin or two of ml-4m's 50.
    for name, seen in bins.items():
        assert len(seen) >= 5, (name, sorted(seen))


def test_caption_is_plain_text(output):
    for key, fields in read_folder(output, "caption").items():
        assert set(fields) == {"txt"}, key
        assert fields["txt"].decode("utf-8") == fields["txt"].decode("utf-8").strip(), key


def test_det_in_ml4m_s_schema_tokenizes_and_det_and_poses_are_never_written(wordpiece):
    """ml-4m's det record (which Tessera's det labeler writes too) serializes with ml-4m's threshold and order."""
    tokenizer = wordpiece
    record = {"instances": [
        {"boxes": [0.5, 0.5, 0.9, 0.9], "class_name": "dog", "score": 0.9},
        {"boxes": [0.1, 0.2, 0.3, 0.4], "class_name": "cat", "score": 0.8},
        {"boxes": [0.0, 0.0, 1.0, 1.0], "class_name": "car", "score": 0.5},  # under ml-4m's 0.6: dropped
    ]}
    (ids,) = encode_records("det", [record], tokenizer)
    (text,) = tokenizer.decode([ids])
    assert text.split() == ["v0=100", "v1=200", "v2=300", "v3=400", "cat", "v0=500", "v1=500", "v2=900", "v3=900",
                            "dog"]


def test_ml4m_tokenizer_file_has_ml4m_s_reserved_ids_and_no_eos(wordpiece):
    """ml-4m appends [EOS] after encode: its file must not add one; PAD, EOS, sentinels and value bins keep the ids
    of ml-4m's own vocabulary, which its masking looks up by name."""
    tokenizer = wordpiece
    files = tokenizer.files()
    ml4m, tessera = (HFTokenizer.from_str(files[name].decode()) for name in (ML4M_TOKENIZER_FILE, TOKENIZER_FILE))
    assert tessera.encode("a red circle").ids == [*ml4m.encode("a red circle").ids, tokenizer.eos_id]
    assert ml4m.get_vocab() == tessera.get_vocab()
    reserved = {PAD: 0, EOS: 3, sentinel_token(0): 4, sentinel_token(199): 203, "v0=0": 204, "v3=999": 4203}
    assert {token: ml4m.token_to_id(token) for token in reserved} == reserved



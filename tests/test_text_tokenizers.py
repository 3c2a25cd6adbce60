"""The text-like tokenizer family: the shared WordPiece vocabulary and the structured-label serializers.

Everything runs on the sample corpus: captions train the vocabulary, scene ground truth gives boxes, and the real
palette and metadata labelers give their records.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pipeline.data.labelers.metadata import image_metadata
from pipeline.data.labelers.palette import MAX_COLORS, palette
from pipeline.data.sample_corpus import write_corpus
from pipeline.tokenizers import base, load_tokenizer, tokenizer_from_files, train_wordpiece
from pipeline.tokenizers.sequence import (
    CHANNEL_RANGE,
    METADATA_KEYS,
    SERIALIZERS,
    ValueRange,
    decode_records,
    dequantize,
    encode_records,
    fit_texts,
    get_serializer,
    kept_elements,
    parse_value_token,
    quantize,
    value_token,
)
from pipeline.tokenizers.text import EOS, NUM_SENTINELS, PAD, SOS, UNK, TextTokenizer, sentinel_token
from schemas.corpus import SampleCorpusConfig
from schemas.labels import read_palette
from schemas.modalities import TokenizerFamily, all_modalities, get_modality

VOCAB_SIZE = 6000  # the sample corpus saturates below this: every caption word gets its own piece


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(SampleCorpusConfig(out=str(out), samples=200, image_size=32, samples_per_shard=100))
    shards = [str(p) for p in sorted(out.glob("corpus-*.tar"))]
    samples = []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("rgb8"):
        image = sample["jpg"] if "jpg" in sample else sample["png"]
        samples.append({"caption": sample["txt"], "image": image, "meta": sample["json"]})
    assert len(samples) == 200
    return samples


@pytest.fixture(scope="module")
def captions(corpus: list[dict]) -> list[str]:
    return [s["caption"] for s in corpus]


@pytest.fixture(scope="module")
def tokenizer(captions: list[str]) -> TextTokenizer:
    return train_wordpiece(captions, VOCAB_SIZE)


# --- the vocabulary -----------------------------------------------------------------------------------------------
def test_captions_round_trip(tokenizer: TextTokenizer, captions: list[str]) -> None:
    ids = tokenizer.encode(captions, max_len=256)
    assert ids.dtype == np.int32 and ids.shape == (len(captions), 256)
    assert 0 <= ids.min() and ids.max() < tokenizer.vocab_size <= get_modality("caption").vocab_size
    assert tokenizer.unk_id not in ids
    lengths = (ids != tokenizer.pad_id).sum(axis=1)
    assert all(row[n - 1] == tokenizer.eos_id for row, n in zip(ids, lengths))
    assert tokenizer.decode(ids) == [c.lower() for c in captions]


def test_unicode_captions_round_trip() -> None:
    captions = ["Ein grüner Ball im Schnee.", "東京の夜景 at night", "Ελληνικά γράμματα", "a façade — and 🙂 too"]
    tokenizer = train_wordpiece(captions * 3, 4_400)
    ids = tokenizer.encode(captions, max_len=64)
    assert tokenizer.unk_id not in ids  # the corpus's own characters joined the alphabet
    # Lowercased with accents stripped (the BERT normalisation), every other character kept.
    assert tokenizer.decode(ids) == ["ein gruner ball im schnee.", "東京の夜景 at night", "ελληνικα γραμματα",
                                     "a facade — and 🙂 too"]


def test_reserved_tokens_are_single_fixed_ids(tokenizer: TextTokenizer) -> None:
    assert [tokenizer.token_id(t) for t in (PAD, UNK, SOS, EOS)] == [0, 1, 2, 3]
    assert [tokenizer.sentinel_id(i) for i in (0, 199)] == [4, 4 + NUM_SENTINELS - 1]
    assert tokenizer.token_id(value_token(0, 0)) == 204 and tokenizer.token_id(value_token(3, 999)) == 4203
    reserved = ["v0=0", "v1=500", "v2=7", "v3=999", "[S_0]", "[S_199]", *METADATA_KEYS]
    # single_word tokens stay whole next to punctuation and are never lowercased or split by the pre-tokenizer
    ids = tokenizer.encode([" ".join(reserved) + ", v2=42."], max_len=64)[0]
    expected = [tokenizer.token_id(t) for t in reserved] + [tokenizer.token_id(t) for t in (",", "v2=42", ".")]
    assert ids[: len(expected) + 1].tolist() == [*expected, tokenizer.eos_id]
    assert tokenizer.decode([ids]) == [" ".join(reserved) + ", v2=42."]
    # a value-like word out of range is ordinary text, not a value token
    assert len(tokenizer.token_counts(["v0=1000"])) == 1 and tokenizer.token_counts(["v0=1000"])[0] > 1


def test_truncation_keeps_eos(tokenizer: TextTokenizer, captions: list[str]) -> None:
    full = tokenizer.encode(captions[:8], max_len=256)
    short = tokenizer.encode(captions[:8], max_len=6)
    assert (short[:, :5] == full[:, :5]).all() and (short[:, 5] == tokenizer.eos_id).all()
    with pytest.raises(ValueError, match="max_len"):
        tokenizer.encode(captions[:1], max_len=0)


def test_training_is_deterministic_and_loads_in_a_fresh_process(tokenizer: TextTokenizer, captions: list[str],
                                                                 tmp_path: Path) -> None:
    assert train_wordpiece(captions, VOCAB_SIZE).content_hash == tokenizer.content_hash
    saved = tokenizer.save(tmp_path / "tok")
    assert sorted(p.name for p in saved.iterdir()) == ["tessera.json", "tokenizer.json", "tokenizer_ml4m.json"]
    loaded = load_tokenizer(saved)
    assert loaded.content_hash == tokenizer.content_hash == base.content_hash(
        {p.name: p.read_bytes() for p in saved.iterdir()})
    assert loaded.tokenizer_id == tokenizer.tokenizer_id == "wordpiece/shared_text"
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    # Another process has other hash-map seeds: it retrains (the HF trainer's order-dependence shows up only
    # across processes) and encodes with the saved tokenizer.
    script = textwrap.dedent(f"""
        import json
        from pipeline.tokenizers import load_tokenizer, train_wordpiece
        captions = json.load(open({str(tmp_path / "captions.json")!r}))
        loaded = load_tokenizer({str(saved)!r})
        print(json.dumps({{"trained": train_wordpiece(captions, {VOCAB_SIZE}).content_hash,
                          "loaded": loaded.content_hash,
                          "ids": loaded.encode(captions[:20], max_len=64).tolist()}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    other = json.loads(result.stdout)
    assert other["trained"] == other["loaded"] == tokenizer.content_hash
    assert other["ids"] == tokenizer.encode(captions[:20], max_len=64).tolist()


def test_tokenizer_files_are_validated(tokenizer: TextTokenizer) -> None:
    files = tokenizer.files()
    assert tokenizer_from_files(files).content_hash == tokenizer.content_hash
    with pytest.raises(ValueError, match="lacks files"):
        tokenizer_from_files({"tessera.json": files["tessera.json"]})
    config = json.loads(files["tessera.json"])
    with pytest.raises(ValueError, match="Extra inputs"):
        tokenizer_from_files({**files, "tessera.json": json.dumps({**config, "vocab": 3}).encode()})
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(["a b c"], 1000)


# --- quantisation ---------------------------------------------------------------------------------------------------
def test_quantize_edges() -> None:
    assert quantize(0.0, 0.0, 1.0) == 0 and quantize(1.0, 0.0, 1.0) == 999
    assert quantize(-5.0, 0.0, 1.0) == 0 and quantize(7.0, 0.0, 1.0) == 999
    assert quantize(math.nextafter(1.0, 0.0), 0.0, 1.0) == 999 and quantize(0.0015, 0.0, 1.0) == 1
    assert quantize(10.0, 10.0, 20.0, bins=4) == 0 and quantize(12.5, 10.0, 20.0, bins=4) == 1
    for value in np.linspace(-3.0, 5.0, 101):
        assert abs(dequantize(quantize(value, -3.0, 5.0), -3.0, 5.0) - value) <= 0.5 * 8.0 / 1000 + 1e-12
    assert dequantize(0, 0.0, 1.0, bins=4) == 0.125 and dequantize(3, 0.0, 1.0, bins=4) == 0.875
    for bad in (lambda: quantize(float("nan"), 0, 1), lambda: quantize(0.5, 1, 1), lambda: dequantize(4, 0, 1, 4)):
        with pytest.raises(ValueError):
            bad()
    assert [CHANNEL_RANGE.dequantize(CHANNEL_RANGE.quantize(c)) for c in range(256)] == list(range(256))
    assert ValueRange(0, 5000, integer=True).dequantize(ValueRange(0, 5000, integer=True).quantize(1234)) == 1232
    assert parse_value_token("v3=999") == (3, 999)
    assert parse_value_token("v4=1") is None and parse_value_token("v0=1000") is None
    assert parse_value_token("circle") is None


# --- structured sequences -------------------------------------------------------------------------------------------
def test_registry_covers_the_implemented_sequence_modalities() -> None:
    sequences = [m.name for m in all_modalities() if m.tokenizer is TokenizerFamily.WORDPIECE and m.implemented]
    assert sequences and all(get_serializer(name).modality == name for name in sequences)
    assert get_serializer("text") is get_serializer("caption")
    with pytest.raises(KeyError, match="rgb"):  # not a sequence
        get_serializer("rgb")
    assert set(SERIALIZERS) == {"caption", "det", "color_palette", "metadata", "human_poses"}


def _row_length(ids: np.ndarray, tokenizer: TextTokenizer) -> np.ndarray:
    return (ids != tokenizer.pad_id).sum(axis=1)


def test_boxes_round_trip(tokenizer: TextTokenizer, corpus: list[dict]) -> None:
    records = [s["meta"] for s in corpus if s["meta"]["kind"] == "scene"]
    ids = encode_records("det", records, tokenizer)
    assert ids.shape == (len(records), get_modality("det").max_tokens)
    sizes = [(r["width"], r["height"]) for r in records]
    for record, parsed in zip(records, decode_records("det", ids, tokenizer, sizes)):
        assert [o["class"] for o in parsed["objects"]] == [o["class"] for o in record["objects"]]
        for obj, got in zip(record["objects"], parsed["objects"]):
            bin_width = np.array([record["width"], record["height"]] * 2) / 1000
            assert (np.abs(np.array(got["box"]) - np.array(obj["box"])) <= bin_width).all()
    text = get_serializer("det").to_text({"width": 100, "height": 50,
                                          "objects": [{"box": [0, 0, 100, 50], "class": "Traffic  light"}]})
    assert text == "v0=0 v1=0 v2=999 v3=999 Traffic light"
    with pytest.raises(ValueError, match="image size"):
        get_serializer("det").parse(text)


def test_boxes_truncate_whole_objects(tokenizer: TextTokenizer) -> None:
    max_tokens = get_modality("det").max_tokens
    objects = [{"box": [i % 30, 1, i % 30 + 2, 3], "class": "circle" if i % 2 else "star"} for i in range(100)]
    record = {"width": 32, "height": 32, "objects": objects}
    per_object = tokenizer.token_counts(get_serializer("det").elements(record))
    kept = kept_elements(per_object, 0, max_tokens - 1)
    assert 0 < kept < len(objects)
    ids = encode_records("det", [record], tokenizer)
    assert _row_length(ids, tokenizer)[0] == per_object[:kept].sum() + 1 <= max_tokens
    parsed = decode_records("det", ids, tokenizer, [(32, 32)])[0]
    assert [o["class"] for o in parsed["objects"]] == [o["class"] for o in objects[:kept]]


def test_palette_round_trip_and_budget(tokenizer: TextTokenizer, corpus: list[dict]) -> None:
    records = [palette(s["image"]) for s in corpus]
    ids = encode_records("color_palette", records, tokenizer)
    assert ids.shape[1] == get_modality("color_palette").max_tokens
    lengths = _row_length(ids, tokenizer)
    colors = [read_palette(r).colors for r in records]  # Tessera's palette beside ml-4m's (schemas/labels.py)
    assert (lengths == [1 + 3 * len(c) + 1 for c in colors]).all()  # v0=n, 3 per colour, EOS
    assert [p["colors"] for p in decode_records("color_palette", ids, tokenizer)] == colors
    # A full 4M-21 palette fills the 23-token budget exactly; more colours than that are dropped, last first.
    many = {"colors": [[i * 20, 255 - i * 20, i] for i in range(MAX_COLORS + 2)], "fractions": [0.1] * 9}
    (text,) = fit_texts("color_palette", [many], tokenizer)
    assert text.split()[0] == value_token(0, MAX_COLORS) and len(text.split()) == 1 + 3 * MAX_COLORS
    ids = encode_records("color_palette", [many], tokenizer)
    assert _row_length(ids, tokenizer)[0] == get_modality("color_palette").max_tokens
    assert decode_records("color_palette", ids, tokenizer)[0]["colors"] == many["colors"][:MAX_COLORS]


def test_metadata_round_trip(tokenizer: TextTokenizer, corpus: list[dict]) -> None:
    records = [image_metadata(s["image"], s["caption"], (s["meta"]["width"], s["meta"]["height"])) for s in corpus]
    ids = encode_records("metadata", records, tokenizer)
    assert ids.shape[1] == get_modality("metadata").max_tokens
    assert (_row_length(ids, tokenizer) == [2 * len(r) + 1 for r in records]).all()  # `key v0=bin` + EOS
    for record, parsed in zip(records, decode_records("metadata", ids, tokenizer)):
        assert parsed.keys() == record.keys()
        for key, value in record.items():
            assert abs(parsed[key] - value) <= METADATA_KEYS[key].bin_width
    assert decode_records("metadata", tokenizer.encode(["brightness v0=500 v1=3 contrast"], 40), tokenizer) == [
        {"brightness": 127.6275}]  # bin 500 of 1000 over 8-bit levels (ml-4m's scale)
    with pytest.raises(ValueError, match="no value range"):
        encode_records("metadata", [{"brightness": 0.5, "walkability": 0.1}], tokenizer)


def test_captions_truncate_at_word_boundaries(tokenizer: TextTokenizer) -> None:
    caption = " ".join(["a small red circle on a white background."] * 60)
    ids = encode_records("caption", [caption], tokenizer)
    assert _row_length(ids, tokenizer)[0] <= get_modality("caption").max_tokens and ids[0, -1] in (
        tokenizer.pad_id, tokenizer.eos_id)
    (decoded,) = decode_records("caption", ids, tokenizer)
    assert caption.startswith(decoded) and caption[len(decoded)] == " "


def test_sentinels_survive_decoding(tokenizer: TextTokenizer) -> None:
    text = f"a {sentinel_token(0)} circle on {sentinel_token(1)} background."
    assert tokenizer.decode(tokenizer.encode([text], 32)) == [text]
    assert tokenizer.token_id(SOS) == 2


def test_train_tokenizer_job_trains_the_shared_wordpiece_on_label_shards(tokens, tmp_path):
    """`jobs.train_tokenizer --modality caption` is the WordPiece path: no Ray Train, same bytes as the library call."""
    from jobs.demo import TEXT_VOCAB
    from jobs.train_tokenizer import main
    from pipeline.data.inspect import iter_members
    from pipeline.data.storage import Storage
    from schemas.common import StorageConfig

    out = tmp_path / "wordpiece"
    assert main(["--modality", "caption", "--input", tokens, "--output", str(out),
                 "--set", f"model.vocab_size={TEXT_VOCAB}"]) == 0
    captions = [p.decode() for _, p in iter_members(Storage(tokens, StorageConfig()), "caption")]
    assert load_tokenizer(out).content_hash == train_wordpiece(captions, vocab_size=TEXT_VOCAB).content_hash
    with pytest.raises(ValueError, match="model.vocab_size and model.min_frequency; unknown: \\['widths'\\]"):
        main(["--modality", "caption", "--input", tokens, "--output", str(out), "--set", "model.widths=[8]"])


def test_palette_parse_skips_colours_with_bins_past_a_channel() -> None:
    # Generated runs may hold any value bin; a colour with a bin past 255 is malformed and skipped, not an error.
    parsed = get_serializer("color_palette").parse("v0=2 v1=10 v2=20 v3=30 v1=900 v2=5 v3=7")
    assert parsed == {"colors": [[10, 20, 30]]}

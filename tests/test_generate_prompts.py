"""Generation from text prompts (jobs/generate.py --prompt / --prompt-file) on the session's trained tiny model:
prompts are encoded exactly as preprocess encodes captions, the job runs caption -> rgb -> depth from a prompt and
labels its files and sheet with it, bad prompt requests fail in one line; palettes are drawn as swatches."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cluster.command import run_command
from jobs import generate as generate_job
from pipeline.data.inspect import iter_members
from pipeline.data.storage import Storage
from pipeline.data.tokenize import load_tokenizer_from
from pipeline.generate.inputs import read_prompts, read_token_samples
from pipeline.generate.render import SWATCH, render
from pipeline.generate.sheet import METADATA_KEY, sheet_size
from schemas.common import StorageConfig
from schemas.keys import validate_key
from schemas.labels import read_palette

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def text(trained_tiny: SimpleNamespace) -> SimpleNamespace:
    """The trained model's WordPiece tokenizer (caption and color_palette share it)."""
    return SimpleNamespace(trained=trained_tiny,
                           tokenizer=load_tokenizer_from(trained_tiny.tokenizers["caption"], StorageConfig()))


def _tokenizers(trained: SimpleNamespace, modalities) -> list[str]:
    return [arg for m in modalities for arg in ("--set", f"tokenizers.{m}={trained.tokenizers[m]}")]


def test_a_prompt_is_encoded_as_preprocess_encodes_that_caption(text):
    trained, tokenizer = text.trained, text.tokenizer
    stored = {s.key: s.rows["caption"] for s in read_token_samples(trained.data, ("caption",), 3, 0.0,
                                                                    StorageConfig())}
    captions = dict(iter_members(Storage(trained.data, StorageConfig()), "caption"))
    prompts = [captions[key].decode("utf-8") for key in stored]
    samples = read_prompts(prompts, "caption", tokenizer)
    for sample, (key, ids) in zip(samples, stored.items()):
        assert np.array_equal(sample.rows["caption"], ids), key
    # Text the corpus never had: the tokenizer's own encoding (EOS-terminated, unpadded), unknown pieces included.
    typed = ["A red circle on a blue square", "Ünïcode, punctuation: ok!", "A red circle on a blue square"]
    samples = read_prompts(typed, "caption", tokenizer)
    for sample, prompt in zip(samples, typed):
        (row,) = tokenizer.encode([prompt], max_len=256)
        assert np.array_equal(sample.rows["caption"], row[row != tokenizer.pad_id]) and sample.prompt == prompt
    keys = [s.key for s in samples]
    assert len(set(keys)) == 3 and all(validate_key(k) for k in keys)  # a repeated prompt is another sample
    assert keys == [s.key for s in read_prompts(typed, "caption", tokenizer)]  # stable


def test_the_job_generates_from_prompts_and_labels_its_outputs_with_them(text, tmp_path):
    trained = text.trained
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("a small green shape\n\n")
    out = tmp_path / "gen"
    argv = ["--checkpoint", trained.model, "--prompt", "a red circle on a blue square", "--prompt", 'a "quoted", #1',
            "--prompt-file", str(prompt_file), "--to", "rgb,depth", "--steps", "2", "--out", str(out),
            *_tokenizers(trained, ("caption", "rgb", "depth"))]
    assert generate_job.main(argv) == 0
    summary = json.loads((out / "generation.json").read_text())
    prompts = ["a red circle on a blue square", 'a "quoted", #1', "a small green shape"]
    assert summary["from"] == ["caption"] and [e["prompt"] for e in summary["samples"].values()] == prompts
    for key, prompt in zip(summary["samples"], prompts):
        assert (out / key / "prompt.txt").read_text() == prompt + "\n"
        for name in ("caption.txt", "rgb.png", "depth.png", "depth.npy"):
            assert (out / key / name).is_file(), name
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == sheet_size(3, 3)
        labels = json.loads(sheet.text[METADATA_KEY])
    assert labels == {"columns": ["caption", "rgb", "depth"], "rows": [f'"{p}"' for p in prompts]}


@pytest.mark.parametrize("flags, code, message", [
    (["--prompt", "  "], 2, "prompt 1 of 1 is empty"),
    (["--prompt", "a cat", "--input", "shards"], 2, "and prompts both given"),
    (["--prompt", "a cat", "--from", "depth"], 2, "a prompt gives the caption alone"),
    (["--prompt", "a cat", "--samples", "2"], 2, "each prompt is one sample"),
    (["--prompt", "a cat", "--set", "tokenizers={rgb: RGB_TOKENIZER}"], 2, "no tokenizer for ['caption']"),
    (["--prompt", "cat " * 300], 1, "tokens; a caption holds 255: shorten it"),
    (["--prompt-file", "missing.txt"], 1, "prompt file missing.txt: no such file"),
    (["--prompt", "a cat", "--set", "tokenizers.caption=RGB_TOKENIZER"], 1, "not WordPiece"),
])
def test_bad_prompt_requests_fail_in_one_line(text, tmp_path, capsys, monkeypatch, flags, code, message):
    trained = text.trained
    monkeypatch.chdir(tmp_path)  # relative paths in the cases name nothing that exists
    flags = [flag.replace("RGB_TOKENIZER", trained.tokenizers["rgb"]) for flag in flags]
    argv = ["--checkpoint", trained.model, "--to", "rgb", "--out", str(tmp_path / "out"),
            *_tokenizers(trained, ("caption", "rgb")), *flags]
    with pytest.raises(SystemExit) as exit_:
        run_command(lambda: generate_job.main(argv))
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == code and "\n" not in error and message in error, error
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_palette_is_drawn_as_colour_swatches(text):
    (sample,) = read_token_samples(text.trained.data, ("color_palette",), 1, 0.0, StorageConfig())
    rendered = render("color_palette", text.tokenizer, sample.rows["color_palette"])
    colors = read_palette(json.loads(rendered.files["json"])).colors
    assert colors and rendered.picture.shape == (SWATCH * len(colors), SWATCH * len(colors), 3)
    assert np.array_equal(rendered.picture[0, ::SWATCH], np.asarray(colors, np.uint8))  # one stripe per colour
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rendered.files["png"]))), rendered.picture)

"""Generation (pipeline/generate, jobs/generate.py) on the session's trained tiny model: decoding paths, MaskGIT
and autoregressive decoding, the generation eval tasks against random tokens, the job end to end and its one-line
failures."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.command import run_command
from jobs import generate as generate_job
from pipeline.data.masking import EOS_ID
from pipeline.data.tokenize import load_tokenizer_from
from pipeline.eval.checkpoint import EvalModel, load_exported
from pipeline.generate.autoregressive import generate_scored_sequence, generate_sequence
from pipeline.generate.inputs import read_token_samples
from pipeline.generate.parallel import generate_parallel
from pipeline.generate.render import render
from pipeline.generate.sampling import Sampler
from pipeline.generate.sheet import sheet_size
from schemas.common import StorageConfig

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def tiny(trained_tiny: SimpleNamespace) -> SimpleNamespace:
    """The trained model loaded once, its tokenizers, and a few held-out-ish samples of every modality."""
    model, table, _ = load_exported(trained_tiny.model)
    tokenizers = {m: load_tokenizer_from(d, StorageConfig()) for m, d in trained_tiny.tokenizers.items()}
    samples = read_token_samples(trained_tiny.data, ("rgb", "caption", "depth", "semseg"), 6, 0.0, StorageConfig())
    return SimpleNamespace(model=model, table=table, tokenizers=tokenizers, samples=samples, trained=trained_tiny)


def test_decoding_ground_truth_tokens_is_the_tokenizers_reconstruction(tiny):
    for sample in tiny.samples[:2]:
        for modality in ("rgb", "depth", "semseg"):
            tokenizer, ids = tiny.tokenizers[modality], sample.rows[modality]
            (expected,) = tokenizer.decode(ids[None])
            files = render(modality, tokenizer, ids).files
            if "npy" in files:  # depth and class maps keep their values, bit for bit
                assert np.array_equal(np.load(io.BytesIO(files["npy"])), expected)
            else:
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(files["png"]))), expected)
        text = render("caption", tiny.tokenizers["caption"], sample.rows["caption"]).files["txt"].decode().strip()
        assert text == tiny.tokenizers["caption"].decode(sample.rows["caption"][None])[0]


def test_maskgit_in_one_step_is_one_pass_argmax(tiny):
    rows = [{"rgb": s.rows["rgb"]} for s in tiny.samples]
    vocab = tiny.tokenizers["depth"].vocab_size
    made = generate_parallel(tiny.model, tiny.table, rows, "depth", 1, Sampler.seeded(0.0, 0, 0), vocab)
    with_truth = [{"rgb": s.rows["rgb"], "depth": s.rows["depth"]} for s in tiny.samples]  # eval reads its target
    one_pass = EvalModel(tiny.model, tiny.table).target_logits(with_truth, ("rgb",), "depth")
    expected = [logits[:, :vocab].argmax(-1) for logits, _ in one_pass]
    assert np.array_equal(np.stack(made), np.stack(expected))
    several = generate_parallel(tiny.model, tiny.table, rows, "depth", 4, Sampler.seeded(1.0, 5, 0), vocab)
    assert all(len(r) == tiny.table["depth"].max_tokens and r.max() < vocab for r in several)


def test_autoregressive_at_temperature_zero_is_deterministic_and_ends_at_eos(tiny):
    rows = [{"rgb": s.rows["rgb"]} for s in tiny.samples[:3]]
    vocab = tiny.tokenizers["caption"].vocab_size
    first, again = (generate_sequence(tiny.model, tiny.table, rows, "caption", Sampler.seeded(0.0, 0, seed), vocab,
                                      max_tokens=10) for seed in (0, 1))
    for a, b in zip(first, again):
        assert np.array_equal(a, b) and len(a) <= 10 - 1  # the run's bound holds S_0 too
        assert a[-1] == EOS_ID and EOS_ID not in a[:-1] and a.max() < vocab
    scored = generate_scored_sequence(tiny.model, tiny.table, rows, "caption", Sampler.seeded(0.0, 0, 0), vocab,
                                      max_tokens=10)
    for row, (ids, logps) in zip(first, scored):  # the same loop, keeping each chosen id's log-probability
        assert np.array_equal(row, ids) and logps.shape == ids.shape and np.all(logps <= 0)
    # A caption head that always prefers EOS: decoding stops at once.
    index = tiny.table.index("caption")
    head = tiny.model.heads[index]
    eos_first = torch.nn.Linear(head.in_features, head.out_features)
    torch.nn.init.zeros_(eos_first.weight)
    with torch.no_grad():
        eos_first.bias.fill_(0).index_fill_(0, torch.tensor([EOS_ID]), 10.0)
    tiny.model.heads[index] = eos_first
    try:
        stopped = generate_sequence(tiny.model, tiny.table, rows, "caption", Sampler.seeded(0.0, 0, 0), vocab)
    finally:
        tiny.model.heads[index] = head
    assert all(list(row) == [EOS_ID] for row in stopped)


def test_generated_tokens_beat_random_tokens_on_the_generation_tasks(tiny):
    from pipeline.eval.context import TaskContext
    from pipeline.eval.registry import get_task
    import pipeline.eval.tasks  # noqa: F401
    from schemas.evaluate import EvaluateConfig

    trained = tiny.trained
    config = EvaluateConfig(data=trained.data, checkpoints=(trained.model,), tokenizers=trained.tokenizers,
                            probe={"max_samples": 60})
    scores = {}
    for name in ("generate_rgb_to_depth", "generate_rgb_to_caption", "generate_caption_to_rgb"):
        (score,) = get_task(name).evaluate(TaskContext(get_task(name), trained.model, config))
        scores[name] = score
    assert scores["generate_rgb_to_depth"].value < scores["generate_rgb_to_depth"].baseline, scores
    assert scores["generate_rgb_to_caption"].value > scores["generate_rgb_to_caption"].baseline, scores
    assert scores["generate_caption_to_rgb"].value > scores["generate_caption_to_rgb"].baseline, scores


def _tokenizer_overrides(trained: SimpleNamespace, modalities) -> list[str]:
    return [arg for m in modalities for arg in ("--set", f"tokenizers.{m}={trained.tokenizers[m]}")]


def test_the_job_writes_files_and_a_contact_sheet(tiny, tmp_path):
    trained = tiny.trained
    out = tmp_path / "gen"
    argv = ["--checkpoint", trained.model, "--input", trained.data, "--from", "rgb", "--to",
            "caption,depth,semseg", "--samples", "2", "--steps", "2", "--out", str(out), "--seed", "3",
            "--set", "sampling.max_tokens=12",
            *_tokenizer_overrides(trained, ("rgb", "caption", "depth", "semseg"))]
    assert generate_job.main(argv) == 0
    summary = json.loads((out / "generation.json").read_text())
    assert len(summary["samples"]) == 2 and summary["to"] == ["caption", "depth", "semseg"]
    for key, entry in summary["samples"].items():
        for name in ("rgb.png", "caption.txt", "depth.png", "depth.npy", "semseg.png", "semseg.npy"):
            assert (out / key / name).is_file(), name
        assert entry["text"]["caption"] == (out / key / "caption.txt").read_text().strip()
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == sheet_size(2, 4)
    # Image files: the rgb tokenizer encodes them (here the decoded ground truth, saved as PNGs at another size).
    images = tmp_path / "images"
    images.mkdir()
    for sample in tiny.samples[:2]:
        (picture,) = tiny.tokenizers["rgb"].decode(sample.rows["rgb"][None])
        Image.fromarray(picture).resize((48, 40)).save(images / f"{sample.key}.png")
    argv = ["--checkpoint", trained.model, "--input", str(images), "--from", "rgb", "--to", "depth",
            "--out", str(tmp_path / "files"), *_tokenizer_overrides(trained, ("rgb", "depth"))]
    assert generate_job.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "files").iterdir() if p.is_dir()) == sorted(
        s.key for s in tiny.samples[:2])


@pytest.mark.parametrize("flags, message", [
    (["--from", "rgb", "--to", "nonsense"], "nonsense"),
    (["--from", "rgb", "--to", "rgb"], "both given (--from) and generated (--to)"),
    (["--from", "rgb", "--to", "depth"], "no tokenizer for ['depth']"),
    (["--from", "rgb", "--to", "normal"], "--to normal: the checkpoint was trained on"),
    (["--from", "rgb", "--to", "depth", "--checkpoint", "missing.safetensors"], "not an exported model"),
])
def test_bad_requests_fail_in_one_line(tiny, tmp_path, capsys, flags, message):
    trained = tiny.trained
    argv = ["--checkpoint", trained.model, "--input", trained.data, "--out", str(tmp_path), *flags,
            *_tokenizer_overrides(trained, ("rgb",))]
    with pytest.raises(SystemExit) as exit_:
        run_command(lambda: generate_job.main(argv))
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in error and message in error, error

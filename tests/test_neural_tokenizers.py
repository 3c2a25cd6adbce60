"""Neural tokenizer families (image-like, feature maps, global embeddings): bottlenecks, codecs, round trips,
training, and save/load across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.tokenizers import load_tokenizer
from pipeline.tokenizers.codecs import CODECS, codec_class
from pipeline.tokenizers.fit import Objective, evaluate, new_tokenizer, reconstruction_grid
from pipeline.tokenizers.quantizers import FSQ, VectorQuantizer, codebook_stats
from schemas.modalities import Values, all_modalities

TINY_IMAGE = {"widths": (8, 16), "blocks": 1, "quantizer": {"levels": (4, 4, 3)}}
TINY_FEATURE = {"widths": (8,), "quantizer": {"levels": (4, 4, 3)}}
TINY_GLOBAL = {"tokens": 4, "hidden": 32, "quantizer": {"levels": (4, 4, 3)}}
TINY_SIGNAL = {"hidden": 16, "patch": 8, "quantizer": {"levels": (4, 4, 3)}}  # 32 frames -> 4 patches x 2 codes


def sample_arrays(values: Values, n: int, rng: np.random.Generator, side: int = 16) -> list[np.ndarray]:
    """Label arrays in exactly the format each labeler writes."""
    if values is Values.COLOR:
        return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]
    if values is Values.DEPTH:
        return [rng.uniform(1.0, 20.0, (side, side)).astype(np.float32) for _ in range(n)]
    if values is Values.CLASSES:
        return [rng.integers(0, 5, (side, side), dtype=np.uint8) for _ in range(n)]
    if values is Values.BINARY:
        return [(rng.random((side, side)) < 0.1).astype(np.uint8) * 255 for _ in range(n)]
    if values is Values.UNIT_VECTOR:
        v = rng.normal(size=(n, side, side, 3))
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        return list(((v + 1) * 127.5).round().astype(np.uint8))
    if values is Values.FEATURES:
        return [rng.normal(size=(7, 7, 12)).astype(np.float32) for _ in range(n)]
    if values is Values.SIGNAL:
        return [rng.normal(size=(32, 3)).astype(np.float32) for _ in range(n)]
    return [rng.normal(size=(24,)).astype(np.float32) for _ in range(n)]


def tiny_model(values: Values) -> dict:
    return {Values.FEATURES: TINY_FEATURE, Values.VECTOR: TINY_GLOBAL, Values.SIGNAL: TINY_SIGNAL}.get(values, TINY_IMAGE)


# Fixed-size maps and vectors; instance masks (variable-length rows) are tested in test_sam_labelers.py.
NEURAL = [m for m in all_modalities() if m.implemented and m.values not in (None, Values.INSTANCE_MASKS)]


def test_every_implemented_dense_or_vector_modality_has_a_codec():
    assert {m.name for m in NEURAL} >= {"rgb", "depth", "semseg", "normal", "canny_edge", "clip_feature",
                                         "dinov2_feature", "dinov2_global", "caption_embedding"}
    assert set(CODECS) == set(Values)


@pytest.mark.parametrize("modality", [m.name for m in NEURAL])
def test_round_trip_shapes_and_dtypes(modality):
    values = codec_class(modality).values
    rng = np.random.default_rng(0)
    samples = sample_arrays(values, 6, rng)
    tokenizer = new_tokenizer(modality, f"test/{modality}", samples, tiny_model(values))
    ids = tokenizer.encode(samples)
    assert ids.dtype == np.int32 and ids.shape == (6, tokenizer.tokens_per_sample)
    assert ids.min() >= 0 and ids.max() < tokenizer.vocab_size == 48
    decoded = tokenizer.decode(ids)
    assert len(decoded) == 6
    for original, back in zip(samples, decoded):
        assert back.shape == original.shape
        assert back.dtype.kind == original.dtype.kind  # uint8 stays uint8, floats stay floats
    expected_tokens = {Values.FEATURES: 49, Values.VECTOR: 4, Values.SIGNAL: 8}.get(values, 64)  # 16 px / 2 -> 8x8
    assert tokenizer.tokens_per_sample == expected_tokens


def test_fsq_ids_and_lookup_agree_and_cover_the_grid():
    torch.manual_seed(0)
    fsq = FSQ((8, 5, 3))
    z = torch.randn(20_000, 3) * 3
    out = fsq(z)
    assert out.ids.min() >= 0 and out.ids.max() < 120
    assert torch.allclose(fsq.lookup(out.ids), out.codes)
    assert len(torch.unique(out.ids)) == 120  # every code reachable
    # Straight-through: the gradient reaches the input.
    z.requires_grad_(True)
    fsq(z).codes.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_vq_restarts_dead_codes_and_syncs_its_statistics():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 16, restart_after=2)
    synced = []
    vq.sync = lambda t: synced.append(t.shape) or t
    z = torch.randn(64, 4) + torch.tensor([5.0, 0, 0, 0])  # all latents in one direction: most codes unused
    vq.train()
    for _ in range(4):
        vq(z)
    assert synced, "EMA statistics must go through the sync hook"
    used_before = codebook_stats(vq(z).ids, 16)["usage"]
    assert used_before > 3 / 16  # restarted codes sit on latents, so more than a couple are in use
    vq.eval()
    out = vq(z)
    assert torch.allclose(vq.lookup(out.ids), out.codes, atol=1e-6)


@pytest.mark.parametrize("kind", ["fsq", "vq"])
def test_fsq_and_vq_training_lowers_the_loss(kind):
    torch.manual_seed(0)
    yy, xx = np.mgrid[:16, :16]
    samples = [np.stack([(xx * 16 * (i % 3 + 1)) % 256, yy * 16, np.full_like(xx, 40 * i)], -1).astype(np.uint8)
               for i in range(8)]
    quantizer = {"kind": kind, "levels": (4, 4, 3), "codebook_size": 48, "code_dim": 8}
    tokenizer = new_tokenizer("rgb", f"test/{kind}", samples, {**TINY_IMAGE, "quantizer": quantizer})
    objective = Objective(tokenizer.network, tokenizer.codec).train()
    optimizer = torch.optim.Adam(objective.parameters(), lr=3e-3)
    x, target = tokenizer.codec.to_input(samples), tokenizer.codec.target(samples)
    losses = []
    for _ in range(40):
        loss, *_ = objective(x, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_saved_tokenizer_reencodes_identically_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(1)
    samples = sample_arrays(Values.DEPTH, 4, rng)
    tokenizer = new_tokenizer("depth", "test/depth", samples, TINY_IMAGE)
    for p in tokenizer.network.parameters():  # not the init: make sure trained weights are what travels
        torch.nn.init.normal_(p, std=0.2)
    directory = tokenizer.save(tmp_path / "tok")
    np.save(tmp_path / "batch.npy", np.stack(samples))
    expected = tokenizer.encode(samples)
    script = (
        "import json, sys, numpy as np\n"
        "from pipeline.tokenizers import load_tokenizer\n"
        f"t = load_tokenizer({str(directory)!r})\n"
        f"ids = t.encode(list(np.load({str(tmp_path / 'batch.npy')!r})))\n"
        "print(json.dumps({'ids': ids.tolist(), 'hash': t.content_hash}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    other = json.loads(result.stdout.strip().splitlines()[-1])
    assert np.array_equal(np.array(other["ids"]), expected)
    assert other["hash"] == load_tokenizer(directory).content_hash == tokenizer.content_hash
    config = json.loads((directory / "tessera.json").read_text())
    assert config["family"] == "image_vq" and config["settings"]["stats"]["log_mean"]


def test_a_map_of_the_wrong_resolution_is_refused():
    rng = np.random.default_rng(2)
    tokenizer = new_tokenizer("rgb", "test/rgb", sample_arrays(Values.COLOR, 2, rng), TINY_IMAGE)
    with pytest.raises(ValueError, match="16x16"):
        tokenizer.encode(sample_arrays(Values.COLOR, 1, rng, side=32))
    with pytest.raises(ValueError, match="unknown|Extra|extra"):
        new_tokenizer("rgb", "test/rgb", sample_arrays(Values.COLOR, 2, rng), {"widht": (8,)})


def test_codec_scores_against_hand_computed_values():
    color = codec_class("rgb")()
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 12  # MSE = 144 / 12 = 12
    assert color.scores([b], [a])["psnr"] == pytest.approx(10 * np.log10(255**2 / 12))
    depth = codec_class("depth")({"log_mean": [0.0], "log_std": [1.0]})
    scores = depth.scores([np.array([1.0, 2.0, 4.0])], [np.array([1.0, 4.0, 4.0])])
    assert scores["abs_rel"] == pytest.approx((0 + 0.5 + 0) / 3)
    assert scores["delta1"] == pytest.approx(2 / 3)
    classes = codec_class("semseg")(num_classes=3)
    got = classes.scores([np.array([0, 0, 1, 2])], [np.array([0, 1, 1, 2])])
    assert got["miou"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    edges = codec_class("canny_edge")()
    assert edges.scores([np.array([255, 0, 255])], [np.array([255, 255, 0])])["f1"] == pytest.approx(0.5)


def test_depth_decodes_back_to_metric_depth():
    depth = codec_class("depth")({"log_mean": [1.5], "log_std": [0.7]})
    maps = [np.full((4, 4), 7.0, np.float32), np.full((4, 4), 0.5, np.float32)]
    back = depth.to_arrays(depth.to_input(maps))
    assert np.allclose(back[0], 7.0, rtol=1e-5) and np.allclose(back[1], 0.5, rtol=1e-5)


def test_evaluate_and_reconstruction_grid(tmp_path):
    rng = np.random.default_rng(3)
    samples = sample_arrays(Values.CLASSES, 5, rng)
    tokenizer = new_tokenizer("semseg", "test/semseg", samples, TINY_IMAGE)
    scores = evaluate(tokenizer, samples, batch_size=2)
    assert 0 <= scores["miou"] <= 1 and 0 < scores["usage"] <= 1 and scores["perplexity"] >= 1
    assert scores["samples"] == 5
    path = reconstruction_grid(tokenizer, samples, str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.endswith("grid.png")

"""The size registry, its closed-form parameter counts, the analytic FLOP counter and `python -m jobs.sizes`."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pipeline.model import SIZES, build_model, resolve
from pipeline.model.flops import forward_flops, training_flops
from pipeline.model.sizes import param_counts
from schemas.batch import ModalitySpec, ModalityTable
from schemas.modalities import Family, implemented_names
from schemas.model import ModelConfig, SizeName

REGISTRY_TABLE = ModalityTable.of(ModalitySpec.from_registry(name) for name in implemented_names())


@pytest.mark.parametrize("size", list(SIZES))
def test_parameter_formula_matches_the_built_model(size):
    config = ModelConfig(size=size)
    # Every size on the meta device (shapes without memory); tiny also for real.
    devices = ["meta", "cpu"] if size == "tiny" else ["meta"]
    counts = param_counts(resolve(config), [s.vocab_size for s in REGISTRY_TABLE.specs])
    for device in devices:
        with torch.device(device):
            model = build_model(config, REGISTRY_TABLE)

        def numel(*modules):
            return sum(p.numel() for m in modules for p in m.parameters())

        assert counts["params_encoder"] == numel(model.encoder, model.encoder_norm)
        assert counts["params_decoder"] == numel(model.decoder, model.decoder_norm)
        assert counts["params_embeddings_heads"] == numel(model.embed, model.heads)
        assert counts["params_total"] == numel(model)


def test_sizes_follow_4m():
    blocks = {name: (lambda c: c["params_encoder"] + c["params_decoder"])(param_counts(dims, []))
              for name, dims in SIZES.items()}
    # 4M's transformer-block counts (CONTEXT.md): B 198M, L 705M, XL 2.8B; our SwiGLU width is rounded up to 64.
    assert blocks["B"] == pytest.approx(198e6, rel=0.01)
    assert blocks["L"] == pytest.approx(705e6, rel=0.01)
    assert blocks["XL"] == pytest.approx(2.8e9, rel=0.02)
    for name, (dim, depth, heads) in {"B": (768, 12, 12), "L": (1024, 24, 16), "XL": (2048, 24, 32)}.items():
        dims = SIZES[name]
        assert (dims.dim, dims.encoder_depth, dims.decoder_depth, dims.heads) == (dim, depth, depth, heads)


def test_the_config_names_exactly_the_registered_sizes():
    # schemas/ cannot import the model package, so ModelConfig spells the names out; this keeps the two in step.
    assert set(typing.get_args(SizeName)) == {*SIZES, "custom"}


def test_model_config_validation():
    assert resolve(ModelConfig(size="custom", dim=96, encoder_depth=1, decoder_depth=3, heads=3)).decoder_depth == 3
    assert resolve(ModelConfig(size="B", encoder_depth=2)).dim == 768  # one override keeps the size's others
    for bad in ({"size": "custom", "dim": 64}, {"dim": 96, "heads": 5}, {"dim": 66, "heads": 3}, {"size": "M"},
                {"size": "tiny", "width": 64}):
        with pytest.raises(ValueError):
            ModelConfig(**bad)
    with pytest.raises(ValueError, match="not divisible"):
        resolve(ModelConfig(size="B", dim=1000))  # B's 12 heads do not divide 1000


# Two modalities with unequal vocabularies, so the heads' term is checked with its mean-vocabulary weighting.
FLOP_TABLE = ModalityTable.of([ModalitySpec("rgb", Family.IMAGE_LIKE, 1000, 64, (8, 8)),
                               ModalitySpec("caption", Family.SEQUENCE, 600, 32)])


def _full_batch(batch_size: int, input_tokens: int, target_tokens: int) -> dict[str, torch.Tensor]:
    """Every slot live (no padding), rgb then caption, so the counted work is exactly I and T slots per sample."""
    rng = np.random.default_rng(0)
    half_in, half_out = input_tokens // 2, target_tokens // 2
    modality_in = np.repeat([0, 1], [half_in, input_tokens - half_in])
    modality_out = np.repeat([0, 1], [half_out, target_tokens - half_out])
    position_in = np.concatenate([np.arange(half_in), np.arange(input_tokens - half_in)])
    position_out = np.concatenate([np.arange(half_in, half_in + half_out), np.arange(target_tokens - half_out)])
    rows = lambda a: torch.from_numpy(np.tile(a, (batch_size, 1)))  # noqa: E731
    tokens = lambda n: torch.from_numpy(rng.integers(0, 600, (batch_size, n)))  # noqa: E731
    return {"enc_tokens": tokens(input_tokens), "enc_modality": rows(modality_in), "enc_position": rows(position_in),
            "enc_pad": torch.zeros(batch_size, input_tokens, dtype=torch.bool),
            "dec_input": tokens(target_tokens), "dec_target": tokens(target_tokens),
            "dec_modality": rows(modality_out), "dec_position": rows(position_out),
            "dec_causal": rows(modality_out == 1).bool(), "dec_pad": torch.zeros(batch_size, target_tokens, dtype=torch.bool)}


@pytest.mark.parametrize("size", ["tiny", "S"])
def test_flop_formula_matches_torchs_counter(size):
    batch_size, input_tokens, target_tokens = 2, 24, 32
    config = ModelConfig(size=size)
    torch.manual_seed(0)
    model = build_model(config, FLOP_TABLE).train()
    data = _full_batch(batch_size, input_tokens, target_tokens)
    # SDPA's fused CPU kernel is invisible to FlopCounterMode; the math backend runs the same attention as bmm's,
    # which the counter sees, so the attention terms are checked too.
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward_counter:
            loss = model(data).loss
        with FlopCounterMode(display=False) as backward_counter:
            loss.backward()
    head_vocab = np.mean([FLOP_TABLE.specs[int(m)].vocab_size for m in data["dec_modality"][0]])
    dims = resolve(config)
    counted_forward = forward_counter.get_total_flops() / batch_size
    counted_training = (forward_counter.get_total_flops() + backward_counter.get_total_flops()) / batch_size
    assert forward_flops(dims, input_tokens, target_tokens, head_vocab) == pytest.approx(counted_forward, rel=0.02)
    assert training_flops(dims, input_tokens, target_tokens, head_vocab) == pytest.approx(counted_training, rel=0.02)


def test_sizes_job_json_and_table():
    run = subprocess.run([sys.executable, "-m", "jobs.sizes", "--json", "--workers", "4"], capture_output=True,
                         text=True, check=True)
    rows = {row["name"]: row for row in json.loads(run.stdout)}
    assert list(rows) == list(SIZES)
    vocab = [s.vocab_size for s in REGISTRY_TABLE.specs]  # the default: every implemented modality
    for name, row in rows.items():
        dims = SIZES[name]
        assert {k: row[k] for k in ("params_encoder", "params_decoder", "params_embeddings_heads",
                                    "params_total")} == param_counts(dims, vocab)
        assert row["flops_per_sample"] == training_flops(dims, 256, 256, sum(vocab) / len(vocab))
        p = row["params_total"]
        assert [row[f"zero{s}_bytes_per_worker"] for s in range(4)] == [16 * p, 4 * p + 3 * p, 2 * p + 3.5 * p,
                                                                        4 * p]
    assert 0.6e9 < rows["L"]["params_encoder"] + rows["L"]["params_decoder"] < 0.8e9
    flops = [rows[name]["flops_per_sample"] for name in SIZES]
    assert flops == sorted(flops)
    table = subprocess.run([sys.executable, "-m", "jobs.sizes", "--modalities", "rgb", "caption",
                            "--input-tokens", "128"], capture_output=True, text=True, check=True).stdout
    lines = table.strip().splitlines()
    assert "2 modalities, 128 input + 256 target tokens" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == list(SIZES)

"""The decoder's key/value cache (pipeline/model/kv_cache.py) against the whole-run decoder on a tiny random model:
logits at every step of a run whose rows end at different lengths, several slots per step, greedy generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.masking import EOS_ID, PAD_ID, SENTINEL_IDS, SOS_ID
from pipeline.generate.autoregressive import BANNED, generate_sequence
from pipeline.generate.sampling import Sampler, next_logits, restrict, target_logits, to_torch
from pipeline.generate.slots import Run, given_runs, pack_runs, sentinel_run
from pipeline.model import build_model
from schemas.batch import ModalitySpec, ModalityTable
from schemas.modalities import Family
from schemas.model import ModelConfig

# The caption vocabulary must hold the reserved ids and the 200 sentinels (ids 0..203).
TABLE = ModalityTable.of([
    ModalitySpec("rgb", Family.IMAGE_LIKE, 64, 16, (4, 4)),
    ModalitySpec("depth", Family.IMAGE_LIKE, 48, 16, (4, 4)),
    ModalitySpec("caption", Family.SEQUENCE, 256, 12),
])
CAPTION = TABLE.index("caption")
BOUND = TABLE["caption"].max_tokens
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs on one torch thread (conftest.py says why)."""


@pytest.fixture(scope="module")
def model():
    """The tiny model with weights of std 0.2: at the training init (0.02) its outputs hardly depend on its inputs,
    and every row would decode the same tokens."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny"), TABLE).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, std=0.2)
    return model


def _rows(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Samples with different encoder lengths: rgb alone, rgb and depth, nothing (the caption's sentinel alone)."""
    rng = np.random.default_rng(seed)
    rgb = [rng.integers(0, 64, 16) for _ in range(2)]
    return [{"rgb": rgb[0]}, {"rgb": rgb[1], "depth": rng.integers(0, 48, 16)}, {}]


def _encoder(rows) -> list[list[Run]]:
    """The encoder side as generation builds it: the given modalities and the caption's sentinel, in table order."""
    return [sorted([*given_runs(TABLE, row), sentinel_run(TABLE, "caption")], key=lambda r: r.modality)
            for row in rows]


def _whole_run_logits(model, encoder, run: np.ndarray, length: int, memory, cut: bool) -> torch.Tensor:
    """(B, V) caption logits at slot `length` from the decoder over slots 0..length of `run`, fed shifted behind
    SOS. `cut`: each row's run stops at its EOS (the rest is decoder padding), else it goes on fed PAD ids."""
    fed = np.concatenate([np.full((len(run), 1), SOS_ID), run[:, :length]], axis=1)
    decoder = []
    for b in range(len(run)):
        end = length + 1
        if cut and EOS_ID in run[b, :length]:
            end = list(run[b]).index(EOS_ID) + 1
        decoder.append([Run(CAPTION, run[b, :end], np.arange(end), fed[b, :end], causal=True)])
    return target_logits(model, to_torch(pack_runs(encoder, decoder), "cpu"), CAPTION, memory, slot=length)


def test_cached_logits_equal_the_whole_run_decoders_at_every_step(model):
    rows, encoder = _rows(), _encoder(_rows())
    # A teacher-forced run `S_0 tokens... EOS PAD...` whose rows end at slots 3, 7 and not at all.
    rng = np.random.default_rng(1)
    run = rng.integers(SENTINEL_IDS[-1] + 1, 256, (len(rows), BOUND))
    run[:, 0] = SENTINEL_IDS[0]
    for b, end in ((0, 3), (1, 7)):
        run[b, end], run[b, end + 1:] = EOS_ID, PAD_ID
    memory = model.encode(to_torch(pack_runs(encoder, [[] for _ in rows]), "cpu"))
    cache = model.start_decoding(*memory, capacity=BOUND)
    for length in range(1, BOUND):
        fed = np.concatenate([np.full((len(rows), 1), SOS_ID), run[:, :length]], axis=1)[:, cache.length:]
        cached = next_logits(model, cache, torch.from_numpy(fed), CAPTION)
        assert cache.length == length + 1
        # As generation feeds it: finished rows go on with PAD ids, and match the whole-run decoder too.
        torch.testing.assert_close(cached, _whole_run_logits(model, encoder, run, length, memory, cut=False),
                                   **TOLERANCE)
        # Rows still running do not depend on how the finished ones are padded.
        live = [b for b in range(len(rows)) if EOS_ID not in run[b, :length]]
        padded = _whole_run_logits(model, encoder, run, length, memory, cut=True)
        torch.testing.assert_close(cached[live], padded[live], **TOLERANCE)


def test_several_slots_per_step_see_only_earlier_slots(model):
    """Chunks of 3, 1, 4 and 4 new slots: each slot's features are the whole-run decoder's (a causal mask over the
    cached slots and the chunk's earlier ones)."""
    rows = _rows(2)
    run = np.random.default_rng(3).integers(SENTINEL_IDS[-1] + 1, 256, (len(rows), BOUND))
    fed = np.concatenate([np.full((len(rows), 1), SOS_ID), run[:, :-1]], axis=1)
    decoder = [[Run(CAPTION, run[b], np.arange(BOUND), fed[b], causal=True)] for b in range(len(rows))]
    batch = to_torch(pack_runs(_encoder(rows), decoder), "cpu")
    with torch.no_grad():
        memory = model.encode(batch)
        whole = model.decode(batch, *memory)
    cache = model.start_decoding(*memory, capacity=BOUND)
    start = 0
    for size in (3, 1, 4, 4):
        new = slice(start, start + size)
        step = model.decode_step(batch["dec_input"][:, new], batch["dec_modality"][:, new],
                                 batch["dec_position"][:, new], cache)
        torch.testing.assert_close(step, whole[:, new], **TOLERANCE)
        start += size
    with pytest.raises(ValueError, match="holds 12 slots"):
        model.decode_step(*(batch[f][:, :1] for f in ("dec_input", "dec_modality", "dec_position")), cache)


def _uncached_greedy(model, rows) -> list[np.ndarray]:
    """Greedy decoding as it ran before the cache: the whole decoder over the run so far at every step."""
    encoder = _encoder(rows)
    run = np.full((len(rows), BOUND), PAD_ID)
    run[:, 0] = SENTINEL_IDS[0]
    memory = model.encode(to_torch(pack_runs(encoder, [[] for _ in rows]), "cpu"))
    done = np.zeros(len(rows), bool)
    for length in range(1, BOUND - 1):
        logits = restrict(_whole_run_logits(model, encoder, run, length, memory, cut=False), None, BANNED)
        run[:, length] = np.where(done, PAD_ID, logits.argmax(-1).numpy())
        done |= run[:, length] == EOS_ID
    run[~done, BOUND - 1] = EOS_ID  # the bound's last slot is EOS
    return [np.array([*r[1:list(r).index(EOS_ID)], EOS_ID]) for r in run]


def test_greedy_generation_gives_the_same_ids_with_and_without_the_cache(model):
    rows = _rows(0) + _rows(1)
    # The caption head with an EOS bias, so that greedy rows stop at different steps (one runs to the bound).
    head = model.heads[CAPTION]
    biased = torch.nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()[EOS_ID] = 2.7
    model.heads[CAPTION] = biased
    try:
        cached = generate_sequence(model, TABLE, rows, "caption", Sampler.seeded(0.0, 0, 0))
        uncached = _uncached_greedy(model, rows)
    finally:
        model.heads[CAPTION] = head
    lengths = [len(r) for r in cached]  # [7, 9, 1, 11, 1, 1] today
    assert len(set(lengths)) > 2 and BOUND - 1 in lengths, lengths  # BOUND - 1: the run holds `S_0` too
    for a, b in zip(cached, uncached, strict=True):
        assert np.array_equal(a, b)

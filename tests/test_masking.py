"""4M masking: exact budgets, Dirichlet proportions, absent modalities, span masking that round-trips, seeds."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from pipeline.data.masking import EOS_ID, SOS_ID, Masker, fill_spans, span_mask, split_budget
from schemas.batch import BATCH_FIELDS, ModalitySpec, ModalityTable
from schemas.loading import MaskingConfig

WORDS = (300, 4000)  # ordinary WordPiece ids, clear of PAD/SOS/EOS and the sentinels


def table_of(**tokens: int | None) -> ModalityTable:
    return ModalityTable.of(ModalitySpec.from_registry(name, n) for name, n in tokens.items())


def sequence(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.append(rng.integers(*WORDS, n), EOS_ID)


def sample_of(table: ModalityTable, rng: np.random.Generator, caption_tokens: int = 20) -> dict[str, np.ndarray]:
    return {s.name: sequence(rng, caption_tokens) if s.autoregressive else rng.integers(0, s.vocab_size, s.max_tokens)
            for s in table.specs}


def slots(batch: dict[str, np.ndarray], row: int, side: str, modality: int) -> dict[str, np.ndarray]:
    """The non-padding slots of one modality in one row, e.g. slots(b, 0, "dec", 1)["target"]."""
    keep = ~batch[f"{side}_pad"][row] & (batch[f"{side}_modality"][row] == modality)
    return {name[4:]: batch[name][row][keep] for name in BATCH_FIELDS if name.startswith(side)}


def test_split_budget_respects_caps_and_hands_the_excess_on():
    assert split_budget(10, [0.5, 0.5], [100, 100]) == [5, 5]
    assert split_budget(10, [0.9, 0.1], [3, 100]) == [3, 7]  # rgb is full at 3, the rest goes to the other
    assert split_budget(10, [1.0, 0.0], [4, 3]) == [4, 3]  # too few tokens: everything, sum 7 < 10
    assert split_budget(7, [0.0, 1.0, 0.0], [5, 0, 5]) in ([4, 0, 3], [3, 0, 4])  # weight on an empty modality
    rng = np.random.default_rng(0)
    for _ in range(500):
        caps = rng.integers(0, 20, 4)
        budget = int(rng.integers(1, 60))
        alloc = split_budget(budget, rng.dirichlet(np.full(4, 0.3)), caps)
        assert sum(alloc) == min(budget, caps.sum()) and all(0 <= a <= c for a, c in zip(alloc, caps))


def test_budgets_are_exact_and_input_and_target_are_disjoint():
    table = table_of(rgb=64, caption=None, depth=64, metadata=None)
    config = MaskingConfig(input_tokens=48, target_tokens=40, alpha=0.5)
    rng = np.random.default_rng(1)
    batch = Masker(table, config).batch([sample_of(table, rng) for _ in range(200)], rng)
    assert {name: batch[name].shape for name in BATCH_FIELDS} == {
        name: (200, 48 if name.startswith("enc") else 40) for name in BATCH_FIELDS}
    assert (~batch["enc_pad"]).sum(1).tolist() == [48] * 200
    assert (~batch["dec_pad"]).sum(1).tolist() == [40] * 200
    for row in range(200):
        for index in (table.index("rgb"), table.index("depth")):
            seen = np.concatenate([slots(batch, row, "enc", index)["position"],
                                   slots(batch, row, "dec", index)["position"]])
            assert len(set(seen.tolist())) == len(seen) and (seen < 64).all()  # a token is input or target, once
    assert not batch["dec_causal"][batch["dec_pad"]].any() and (batch["enc_tokens"][batch["enc_pad"]] == 0).all()


def test_a_sample_with_too_few_tokens_shares_them_in_the_budgets_ratio_and_pads_the_rest():
    # 16 tokens against budgets of 12 + 12: the full input budget would leave 4 targets; a 10-token sample none.
    table = table_of(rgb=16, caption=None)
    rng = np.random.default_rng(2)
    masker = Masker(table, MaskingConfig(input_tokens=12, target_tokens=12))
    batch = masker.batch([{"rgb": rng.integers(0, 99, 16)}], rng)
    assert (~batch["enc_pad"][0]).sum() == 8 and (~batch["dec_pad"][0]).sum() == 8
    masker = Masker(table, MaskingConfig(input_tokens=24, target_tokens=8))
    batch = masker.batch([{"rgb": rng.integers(0, 99, 16)}], rng)
    assert (~batch["enc_pad"][0]).sum() == 12 and (~batch["dec_pad"][0]).sum() == 4
    assert set(batch["enc_modality"][0][~batch["enc_pad"][0]]) == {table.index("rgb")}


def test_modality_shares_follow_the_dirichlet_means():
    table = table_of(rgb=1024, depth=1024, normal=1024)  # large enough that no cap binds
    rng = np.random.default_rng(3)
    draws = 2000
    for overrides, expected in (({}, [1 / 3] * 3), ({"rgb": 2.0}, [0.5, 0.25, 0.25])):
        masker = Masker(table, MaskingConfig(input_tokens=60, target_tokens=30, alpha=1.0, alpha_overrides=overrides))
        batch = masker.batch([sample_of(table, rng) for _ in range(draws)], rng)
        for side, budget in (("enc", 60), ("dec", 30)):
            counts = np.stack([(batch[f"{side}_modality"] == i).sum(1) for i in range(3)], axis=1)
            counts[:, 0] -= (batch[f"{side}_pad"] & (batch[f"{side}_modality"] == 0)).sum(1)  # padding is index 0
            shares = counts.sum(0) / (draws * budget)
            assert np.allclose(shares, expected, atol=0.03), (side, overrides, shares)
            assert (counts > 0).any(0).all()  # every modality is drawn


def test_missing_modalities_are_absent():
    table = table_of(rgb=16, caption=None, depth=16)
    rng = np.random.default_rng(4)
    samples = [{"rgb": rng.integers(0, 99, 16), "caption": sequence(rng, 10)} for _ in range(50)]
    samples.append({"caption": np.array([EOS_ID])})  # an empty caption is no caption
    batch = Masker(table, MaskingConfig(input_tokens=24, target_tokens=24)).batch(samples, rng)
    depth = table.index("depth")
    assert not ((batch["enc_modality"] == depth) & ~batch["enc_pad"]).any()
    assert not ((batch["dec_modality"] == depth) & ~batch["dec_pad"]).any()
    assert batch["enc_pad"][-1].all() and batch["dec_pad"][-1].all()
    with pytest.raises(KeyError, match="not in this run's table"):
        Masker(table, MaskingConfig()).batch([{"metadata": sequence(rng, 3)}], rng)


def test_span_masking_round_trips():
    rng = np.random.default_rng(5)
    for n in [1, 2, 3, 10, 57, 255]:
        for ratio in (0.0, 0.15, 0.5, 1.0, rng.uniform()):
            content = rng.integers(*WORDS, n)
            input_run, target_run = span_mask(content, ratio, 3.0, rng)
            np.testing.assert_array_equal(fill_spans(input_run, target_run), content)
            sentinels = input_run[(input_run >= 4) & (input_run < 204)]
            if len(target_run):
                assert target_run[-1] == EOS_ID and target_run[0] == sentinels[0]
                assert len(target_run) == round(ratio * n) + len(sentinels) + 1
            assert list(sentinels) == list(range(4, 4 + len(sentinels)))  # one sentinel per span, in order


def test_sequences_are_packed_as_runs_and_the_batch_reconstructs_them():
    table = table_of(rgb=16, caption=None)
    rng = np.random.default_rng(6)
    samples = [{"rgb": rng.integers(0, 99, 16), "caption": sequence(rng, int(rng.integers(5, 60)))}
               for _ in range(40)]
    # Budgets large enough that no run is cut: input + target then give back the whole caption.
    batch = Masker(table, MaskingConfig(input_tokens=256, target_tokens=256)).batch(samples, rng)
    caption = table.index("caption")
    for row, sample in enumerate(samples):
        enc, dec = slots(batch, row, "enc", caption), slots(batch, row, "dec", caption)
        assert list(enc["position"]) == list(range(len(enc["tokens"])))
        np.testing.assert_array_equal(fill_spans(enc["tokens"], dec["target"]), sample["caption"][:-1])
        if len(dec["target"]):
            assert dec["causal"].all() and dec["input"][0] == SOS_ID
            np.testing.assert_array_equal(dec["input"][1:], dec["target"][:-1])
        assert not slots(batch, row, "dec", table.index("rgb"))["causal"].any()


def test_same_seed_same_batch():
    table = table_of(rgb=64, caption=None, metadata=None)
    samples = [sample_of(table, np.random.default_rng(i)) for i in range(16)]
    masker = Masker(table, MaskingConfig(input_tokens=32, target_tokens=32, alpha=0.2))
    first, again, other = (masker.batch(samples, np.random.default_rng(seed)) for seed in (7, 7, 8))
    assert all(np.array_equal(first[n], again[n]) for n in BATCH_FIELDS)
    assert not np.array_equal(first["enc_position"], other["enc_position"])


def test_config_is_validated():
    with pytest.raises(pydantic.ValidationError):
        MaskingConfig(input_tokenz=3)
    with pytest.raises(pydantic.ValidationError, match="unknown modality"):
        MaskingConfig(alpha_overrides={"colour": 2.0})
    with pytest.raises(pydantic.ValidationError):
        MaskingConfig(span_mask_ratio=(0.8, 0.2))
    assert MaskingConfig(alpha_overrides={"text": 2.0}).alpha_of("caption") == 2.0  # aliases resolve

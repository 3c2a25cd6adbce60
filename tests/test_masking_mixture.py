"""4M-21's masking mixture: strategy shares follow their weights, modality-to-all strategies keep each side to what
they say, concentrations concentrate or spread, configs without a mixture mask exactly as before, bad mixtures fail
with one clear line, and the training metrics report the share of samples each strategy masked. Pure numpy, but for
one short pretrain on the session's Ray cluster."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydantic
import pytest
from scipy import stats

from pipeline.data.masking import EOS_ID, SENTINEL_IDS, Masker
from schemas.batch import BATCH_FIELDS, LOADER_FIELDS, PRESENT, STRATEGY, ModalitySpec, ModalityTable
from schemas.config import ConfigError, load_config
from schemas.loading import MASKING_PRESETS, PLAIN_STRATEGY, MaskingConfig, MaskingStrategy
from schemas.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
WORDS = (300, 4000)  # ordinary WordPiece ids, clear of PAD/SOS/EOS and the sentinels


def table_of(**tokens: int | None) -> ModalityTable:
    return ModalityTable.of(ModalitySpec.from_registry(name, n) for name, n in tokens.items())


def samples_of(table: ModalityTable, count: int, seed: int, absent: float = 0.0, min_words: int = 1
               ) -> list[dict[str, np.ndarray]]:
    """`count` samples with every modality of `table` (each left out with probability `absent`); sequences of
    min_words..49 words and EOS."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = {}
        for s in table.specs:
            if rng.random() < absent:
                continue
            sample[s.name] = (np.append(rng.integers(*WORDS, int(rng.integers(min_words, 50))), EOS_ID)
                              if s.autoregressive else rng.integers(0, s.vocab_size, s.max_tokens))
        samples.append(sample)
    return samples


def masked(masker: Masker, samples: list[dict[str, np.ndarray]], rng: np.random.Generator
           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The batch and the strategy each sample was drawn (the batch's `mask_strategy` field)."""
    batch = masker.batch(samples, rng)
    return batch, batch[STRATEGY]


def live(batch: dict[str, np.ndarray], side: str, row: int) -> np.ndarray:
    """The modality index of each non-padding slot of one row on one side ("enc" or "dec")."""
    return batch[f"{side}_modality"][row][~batch[f"{side}_pad"][row]]


def tokens_of(batch: dict[str, np.ndarray], field: str, row: int, modality: int) -> np.ndarray:
    side = field[:3]
    keep = ~batch[f"{side}_pad"][row] & (batch[f"{side}_modality"][row] == modality)
    return batch[field][row][keep]


def assert_shares_follow(drawn: np.ndarray, weights: dict[int, float]) -> None:
    """A chi-square test of the strategy counts against their weights (a fixed seed: the same verdict every run)."""
    counts = np.array([(drawn == k).sum() for k in weights])
    assert counts.sum() == len(drawn), "a strategy outside the expected ones was drawn"
    expected = np.array(list(weights.values())) / sum(weights.values()) * len(drawn)
    assert stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected)


def test_strategy_shares_follow_their_weights():
    table = table_of(rgb=16, depth=16, caption=None)
    strategies = [MaskingStrategy(name="a", weight=1.0), MaskingStrategy(name="b", weight=3.0, input_alpha=0.1),
                  MaskingStrategy(name="c", weight=0.5, target_alpha=5.0), MaskingStrategy(name="d", weight=2.0)]
    masker = Masker(table, MaskingConfig(input_tokens=16, target_tokens=16, strategies=strategies))
    assert masker.strategy_names == ("a", "b", "c", "d", PLAIN_STRATEGY)
    _, drawn = masked(masker, samples_of(table, 2000, 0), np.random.default_rng(1))
    assert_shares_follow(drawn, {0: 1.0, 1: 3.0, 2: 0.5, 3: 2.0})


def test_the_4m21_preset_draws_its_six_strategies_evenly_and_skips_rgb_to_all_without_rgb():
    table = table_of(rgb=16, depth=16, caption=None, metadata=None)
    masker = Masker(table, MaskingConfig(input_tokens=24, target_tokens=24, preset="4m21"))
    names = masker.strategy_names
    assert names[:-1] == tuple(s.name for s in MASKING_PRESETS.get("4m21")) and len(names) == 7
    samples = samples_of(table, 1200, 2)
    _, drawn = masked(masker, samples, np.random.default_rng(3))
    assert_shares_follow(drawn, dict.fromkeys(range(6), 1.0))
    # Without rgb, rgb -> all cannot fit: its share goes to the other five in proportion to their weights.
    without_rgb = [{k: v for k, v in s.items() if k != "rgb"} for s in samples]
    _, drawn = masked(masker, without_rgb, np.random.default_rng(3))
    assert_shares_follow(drawn, dict.fromkeys([0, 1, 2, 3, 5], 1.0))


def test_rgb_to_all_inputs_only_rgb_and_never_predicts_it():
    table = table_of(rgb=16, depth=16, caption=None, metadata=None)
    rgb, caption = table.index("rgb"), table.index("caption")
    masker = Masker(table, MaskingConfig(input_tokens=32, target_tokens=64, preset="4m21"))
    samples = samples_of(table, 300, 4)
    batch, drawn = masked(masker, samples, np.random.default_rng(5))
    rows = np.flatnonzero(drawn == masker.strategy_names.index("rgb_to_all"))
    assert len(rows) > 20
    for row in rows:
        assert set(live(batch, "enc", row).tolist()) == {rgb} and len(live(batch, "enc", row)) == 16  # all of rgb
        assert rgb not in live(batch, "dec", row) and len(live(batch, "dec", row)) > 0
        # The caption is target-only here, so it is predicted whole, as one span: S_0, the words, EOS (maybe cut).
        target = tokens_of(batch, "dec_target", row, caption)
        whole = np.concatenate([[SENTINEL_IDS[0]], samples[row]["caption"]])
        np.testing.assert_array_equal(target, whole[:len(target)])


def test_caption_bias_feeds_the_caption_whole_and_never_predicts_it():
    table = table_of(rgb=16, depth=16, caption=None, metadata=None)
    caption = table.index("caption")
    masker = Masker(table, MaskingConfig(input_tokens=96, target_tokens=32, preset="4m21"))
    samples = samples_of(table, 300, 6)
    batch, drawn = masked(masker, samples, np.random.default_rng(7))
    rows = np.flatnonzero(drawn == masker.strategy_names.index("caption_bias"))
    assert len(rows) > 20
    whole = 0
    for row in rows:
        assert caption not in live(batch, "dec", row)
        fed = tokens_of(batch, "enc_tokens", row, caption)
        content = samples[row]["caption"][:-1]
        np.testing.assert_array_equal(fed, content[:len(fed)])  # no span masking: a prefix of the words
        whole += len(fed) == len(content)
    assert whole > len(rows) * 0.8  # at concentration 5 against 0.05 the caption takes most of the input budget


def test_low_concentration_concentrates_the_budgets_and_high_spreads_them():
    table = table_of(rgb=1024, depth=1024, normal=1024, semseg=1024)  # large enough that no cap binds
    strategies = [MaskingStrategy(name="peaked", input_alpha=0.01, target_alpha=0.01),
                  MaskingStrategy(name="even", input_alpha=10.0, target_alpha=10.0)]
    masker = Masker(table, MaskingConfig(input_tokens=64, target_tokens=64, strategies=strategies))
    batch, drawn = masked(masker, samples_of(table, 600, 8), np.random.default_rng(9))
    for side in ("enc", "dec"):
        counts = np.stack([(batch[f"{side}_modality"] == i).sum(1) for i in range(4)], axis=1)
        max_share = counts.max(1) / 64
        peaked, even = max_share[drawn == 0].mean(), max_share[drawn == 1].mean()
        # Dirichlet(0.01 x 4) puts nearly all weight on one modality (E max share ~0.99); Dirichlet(10 x 4) keeps
        # the largest near a quarter (~0.32).
        assert peaked > 0.9 and even < 0.4, (side, peaked, even)


def _digest(batch: dict[str, np.ndarray]) -> str:
    """Over the fields the recorded digests were taken of (`mask_strategy` came later; its test is below)."""
    h = hashlib.sha256()
    for name in (*BATCH_FIELDS, PRESENT):
        h.update(name.encode())
        h.update(batch[name].tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("config, digest", [
    (MaskingConfig(input_tokens=40, target_tokens=32, alpha=0.5, alpha_overrides={"caption": 2.0}), "afed6b3d0edecbdf"),
    (MaskingConfig(input_tokens=256, target_tokens=256), "471972695a9bd6a6"),
])
def test_configs_without_a_mixture_give_the_batches_they_gave_before(config, digest):
    """Digests recorded with the masker as it was before mixtures (git 4b9ca10, numpy 2.4): resumed runs and old
    recipes depend on the same seed giving the same arrays. (A numpy release that changed its Generator streams
    would move them too.)"""
    table = table_of(rgb=64, caption=None, depth=64, metadata=None)
    samples = samples_of(table, 64, 11, absent=0.2, min_words=0)  # some captions empty (EOS alone): no caption
    batch, drawn = masked(Masker(table, config), samples, np.random.default_rng(12))
    assert _digest(batch) == digest
    assert set(drawn.tolist()) == {0}  # everything masked by the plain Dirichlet, index 0 of ("plain",)


def test_one_strategy_with_the_plain_alphas_is_the_plain_masking():
    table = table_of(rgb=64, caption=None, depth=64, metadata=None)
    samples = samples_of(table, 64, 13, absent=0.3)
    plain = MaskingConfig(input_tokens=40, target_tokens=32, alpha=0.3, alpha_overrides={"depth": 2.0})
    single = MaskingConfig(input_tokens=40, target_tokens=32, strategies=[MaskingStrategy(
        name="same", input_alpha=0.3, target_alpha=0.3, input_overrides={"depth": 2.0},
        target_overrides={"depth": 2.0})])
    want = Masker(table, plain).batch(samples, np.random.default_rng(14))
    got = Masker(table, single).batch(samples, np.random.default_rng(14))
    assert all(np.array_equal(want[name], got[name]) for name in (*BATCH_FIELDS, PRESENT))
    # Only the names differ: "plain" is index 0 of ("plain",), "same" index 0 of ("same", "plain").
    assert set(want[STRATEGY].tolist()) == {0} and set(got[STRATEGY][got[PRESENT].any(1)].tolist()) == {0}


def test_same_seed_same_mixture_batch_and_a_sample_no_strategy_fits_takes_the_plain_dirichlet():
    table = table_of(rgb=16, depth=16, caption=None, metadata=None)
    masker = Masker(table, MaskingConfig(input_tokens=24, target_tokens=24, preset="4m21"))
    samples = samples_of(table, 48, 15, absent=0.4)
    (first, drawn), (again, redrawn) = (masked(masker, samples, np.random.default_rng(16)) for _ in range(2))
    assert all(np.array_equal(first[n], again[n]) for n in LOADER_FIELDS) and np.array_equal(drawn, redrawn)
    # rgb -> all needs rgb, and caption-biased a target other than the caption: a caption-only sample fits neither.
    narrow = Masker(table, MaskingConfig(input_tokens=24, target_tokens=24, strategies=[
        s for s in MASKING_PRESETS.get("4m21") if s.name in ("rgb_to_all", "caption_bias")]))
    batch, drawn = masked(narrow, [{"caption": samples_of(table, 1, 17)[0]["caption"]}], np.random.default_rng(18))
    assert narrow.strategy_names[drawn[0]] == PLAIN_STRATEGY
    assert (~batch["enc_pad"][0]).any() and (~batch["dec_pad"][0]).any()


@pytest.mark.parametrize("masking, message", [
    ({"strategies": [{"name": "a", "weight": 0}]}, "greater than 0"),
    ({"strategies": [{"name": "a"}, {"name": "a", "input_alpha": 2}]}, "strategies named ['a'] more than once"),
    ({"strategies": [{"name": "a", "input_overrides": {"colour": 1.0}}]}, "unknown modality 'colour'"),
    ({"strategies": [{"name": "a", "target_overrides": {"rgb": -1.0}}]}, "must be finite and >= 0"),
    ({"strategies": [{"name": "a", "input_alpha": 0, "input_overrides": {"rgb": 0}}]},
     "strategy 'a': no modality can ever be an input"),
    ({"strategies": [{"name": "a", "target_alpha": 0}]}, "strategy 'a': no modality can ever be a target"),
    ({"strategies": [{"name": PLAIN_STRATEGY}]}, "reserved for the plain alpha Dirichlet"),
    ({"preset": "4m22"}, "unknown masking preset '4m22'; known masking presets: 4m21"),
    ({"preset": "4m21", "strategies": [{"name": "a"}]}, "give either preset ('4m21') or strategies, not both"),
])
def test_bad_mixtures_fail_with_one_clear_line(masking, message, tmp_path):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"modalities": ["rgb", "caption"], "masking": masking}))
    with pytest.raises(ConfigError) as error:
        load_config(PretrainConfig, path)
    problems = str(error.value).splitlines()[1:]
    assert len(problems) == 1 and message in problems[0] and problems[0].lstrip().startswith("masking"), problems
    with pytest.raises(pydantic.ValidationError):
        MaskingConfig(**masking)


def test_a_strategy_naming_a_modality_outside_the_run_is_refused():
    table = table_of(caption=None, metadata=None)  # the tiny recipe's kind of run: no rgb
    with pytest.raises(ValueError, match=r"masking strategy 'rgb_to_all' names \['rgb'\], which are not among"):
        Masker(table, MaskingConfig(preset="4m21"))
    with pytest.raises(ValueError, match=r"masking.alpha_overrides names \['rgb'\]"):
        Masker(table, MaskingConfig(alpha_overrides={"rgb": 2.0}))


@pytest.mark.parametrize("recipe", ["B", "L", "XL"])
def test_the_large_recipes_train_on_the_4m21_mixture(recipe):
    config = load_config(PretrainConfig, REPO / "configs" / "pretrain" / f"{recipe}.yaml")
    assert config.masking.preset == "4m21" and len(config.masking.mixture) == 6
    table = table_of(**dict.fromkeys(config.modalities))
    masker = Masker(table, config.masking)  # every strategy fits the recipe's modalities
    batch, drawn = masked(masker, samples_of(table, 8, 19), np.random.default_rng(20))
    assert (~batch["enc_pad"]).any(1).all() and (drawn < masker.strategies.plain).all()


def test_strategy_shares_count_the_drawn_strategies_over_ranks_and_only_for_a_mixture():
    from pipeline.train.metrics_window import StrategyShares

    table = table_of(rgb=16, depth=16, caption=None)
    strategies = [MaskingStrategy(name="a"), MaskingStrategy(name="b", weight=3.0)]
    masker = Masker(table, MaskingConfig(input_tokens=16, target_tokens=16, strategies=strategies))
    ranks = [StrategyShares(masker.strategy_names) for _ in range(2)]
    drawn = []
    for seed, rank in enumerate([0, 0, 1]):  # rank 0 steps twice in the window, rank 1 once
        batch = masker.batch(samples_of(table, 40, seed), np.random.default_rng(seed))
        ranks[rank].add(batch)
        drawn.append(batch[STRATEGY])
    shares = ranks[0].shares(np.add(ranks[0].values(), ranks[1].values()))
    counts = np.bincount(np.concatenate(drawn), minlength=3)
    assert shares == {"mask_share_a": counts[0] / 120, "mask_share_b": counts[1] / 120, "mask_share_plain": 0.0}
    assert 0 < shares["mask_share_a"] < shares["mask_share_b"]
    ranks[0].reset()
    assert ranks[0].values() == [0.0, 0.0, 0.0]
    plain = StrategyShares(Masker(table, MaskingConfig()).strategy_names)
    plain.add(batch)
    assert plain.shares(np.array(plain.values())) == {}  # no mixture: every sample plain, nothing to report


@pytest.mark.usefixtures("ray_session")
def test_a_pretrain_run_with_a_two_strategy_mixture_logs_both_shares(tokens, tmp_path):
    from pipeline.train.metrics import read_metrics
    from pipeline.train.trainer import run_pretrain

    mixture = ("masking.strategies=[{name: caption_in, input_alpha: 0, input_overrides: {caption: 1}}, "
               "{name: all_to_all, weight: 2}]")
    config = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data={tokens}", f"storage_path={tmp_path / 'runs'}", "steps=4", "log_every=2", "checkpoint_every=4",
        "workers=2", "loader.batch_size=8", "masking.input_tokens=32", "masking.target_tokens=32", mixture])
    rows = read_metrics(run_pretrain(config)["metrics_file"])
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:  # 2 steps x 2 ranks x 8 samples per window; every sample has a caption, so both fit
        shares = {key: value for key, value in row.items() if key.startswith("mask_share_")}
        assert set(shares) == {"mask_share_caption_in", "mask_share_all_to_all", "mask_share_plain"}, row
        assert shares["mask_share_plain"] == 0 and 0 < shares["mask_share_caption_in"] < 1, shares
        assert sum(shares.values()) == pytest.approx(1.0) and all(v * 32 == round(v * 32) for v in shares.values())

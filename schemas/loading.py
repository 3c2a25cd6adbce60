"""Typed configs of the training side of the data: 4M masking (`MaskingConfig`, with its mixtures of
`MaskingStrategy` and their presets), the token-shard loader (`LoaderConfig`) and the entries of a dataset mixture
(`DatasetEntry`). They are sections of the train job's config (the evaluate job's `data` takes mixture entries too);
the loader and masking code take them as they are."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pydantic
from pydantic import Field

from schemas.config import ConfigModel
from schemas.modalities import get_modality
from schemas.registry import Registry


def _canonical_modalities(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    try:
        canonical = tuple(get_modality(n).name for n in names)
    except KeyError as exc:
        raise ValueError(str(exc)) from None
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"modality listed twice: {list(names)}")
    return canonical


def _concentrations(overrides: dict[str, float], what: str) -> dict[str, float]:
    """Per-modality Dirichlet concentrations keyed by canonical name; 0 is allowed and means 'never'."""
    canonical = _canonical_modalities(list(overrides))
    bad = {name: v for name, v in overrides.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"{what}: concentrations must be finite and >= 0 (0: never), got {bad}")
    return dict(zip(canonical, overrides.values()))


class MaskingStrategy(ConfigModel):
    """One strategy of a masking mixture (4M-21's `alphas_mixture`): its own Dirichlet concentrations for the input
    and for the target budget, per modality, drawn for a sample with probability `weight / sum(weights)`.

    A concentration of 0 takes the modality out of that side: `input_alpha: 0, input_overrides: {rgb: 1}` makes rgb
    the only input ("rgb -> all"); `target_overrides: {caption: 0}` never predicts the caption. A sequence that is
    input-only in a strategy goes in whole (no span masking, ml-4m's `keep: all`), one that is target-only is
    predicted whole (one span), as ml-4m does when a sequence's input budget is 0.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)  # relative to the other strategies'
    input_alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    input_overrides: dict[str, float] = Field(default_factory=dict)
    target_alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    target_overrides: dict[str, float] = Field(default_factory=dict)

    @pydantic.field_validator("input_overrides", "target_overrides")
    @classmethod
    def _overrides(cls, overrides: dict[str, float], info: pydantic.ValidationInfo) -> dict[str, float]:
        return _concentrations(overrides, info.field_name)

    @pydantic.model_validator(mode="after")
    def _has_both_sides(self) -> "MaskingStrategy":
        for side in ("input", "target"):
            if getattr(self, f"{side}_alpha") == 0 and not any(getattr(self, f"{side}_overrides").values()):
                role = "an input" if side == "input" else "a target"
                raise ValueError(f"strategy {self.name!r}: no modality can ever be {role} ({side}_alpha is 0 and no "
                                 f"{side}_overrides entry is positive)")
        return self

    def input_alpha_of(self, modality: str) -> float:
        return self.input_overrides.get(modality, self.input_alpha)

    def target_alpha_of(self, modality: str) -> float:
        return self.target_overrides.get(modality, self.target_alpha)


MASKING_PRESETS: Registry[tuple[MaskingStrategy, ...]] = Registry("masking preset")

# 4M-21's mixture, after ml-4m's cfgs/default/4m/alphas_mixture/main/mix_mod21_all2allmix_rgb2all_capT5bias.yaml:
# all-to-all at four concentrations (weight 1 each), rgb -> all with targets at 0.5 (weight 1), and the caption bias
# (caption input 5.0, every other input 0.05, targets 0.5 but never the caption) in two halves of weight 0.5, one on
# the caption and one on its T5 embedding. Our runs have no T5-caption input path, so the halves are one
# caption-biased strategy of weight 1: the same 1/6 of samples biased toward the caption. In ml-4m rgb -> all feeds
# the pixel image and keeps the rgb tokens as a target; here the input is the rgb tokens themselves (all of them fit
# a 256-slot input budget at 196 tokens), so the targets are the other modalities.
MASKING_PRESETS.register("4m21", (
    *(MaskingStrategy(name=f"all_to_all_a{alpha:g}", input_alpha=alpha, target_alpha=alpha)
      for alpha in (0.01, 0.1, 1.0, 10.0)),
    MaskingStrategy(name="rgb_to_all", input_alpha=0.0, input_overrides={"rgb": 1.0},
                    target_alpha=0.5, target_overrides={"rgb": 0.0}),
    MaskingStrategy(name="caption_bias", input_alpha=0.05, input_overrides={"caption": 5.0},
                    target_alpha=0.5, target_overrides={"caption": 0.0}),
))

# The name under which a batch's samples masked by the plain `alpha` Dirichlet are reported (pipeline/data/masking.py).
PLAIN_STRATEGY = "plain"


class MaskingConfig(ConfigModel):
    """4M's multimodal masking: fixed input and target budgets split over a sample's modalities.

    Per sample, two Dirichlet draws (one for the input budget, one for the target budget) weight the modalities the
    sample has; `alpha` is the symmetric concentration (small: one modality takes most of a budget; large: even
    splits), `alpha_overrides` raises or lowers single modalities (e.g. caption-biased mixes).
    A mixture (`strategies`, or a named `preset` such as 4M-21's `4m21`) first draws one strategy per sample by
    weight, then splits the budgets with that strategy's input and target concentrations; the plain `alpha`
    Dirichlet then masks only the samples no strategy fits (see pipeline/data/masking_strategies.py). Without a
    mixture every sample takes the plain Dirichlet, with no extra random draw: old configs give the same batches.
    Sequence (autoregressive) modalities are span-masked T5-style: a fraction of their tokens, drawn uniformly in
    `span_mask_ratio`, is cut into spans of mean length `span_mean_length`; each span becomes one sentinel in the
    input and `sentinel tokens...` in the target run.
    """

    input_tokens: int = Field(default=256, ge=1, le=65_536)  # I: encoder slots per sample
    target_tokens: int = Field(default=256, ge=1, le=65_536)  # T: decoder slots per sample
    alpha: float = Field(default=1.0, gt=0)
    alpha_overrides: dict[str, float] = Field(default_factory=dict)
    preset: str | None = None  # a mixture of MASKING_PRESETS by name
    strategies: tuple[MaskingStrategy, ...] = ()  # a mixture written out
    span_mean_length: float = Field(default=3.0, ge=1.0)
    span_mask_ratio: tuple[float, float] = (0.0, 1.0)

    @pydantic.field_validator("alpha_overrides")
    @classmethod
    def _overrides(cls, overrides: dict[str, float]) -> dict[str, float]:
        canonical = _canonical_modalities(list(overrides))
        if any(v <= 0 for v in overrides.values()):
            raise ValueError(f"Dirichlet concentrations must be positive, got {overrides}")
        return dict(zip(canonical, overrides.values()))

    @pydantic.field_validator("preset")
    @classmethod
    def _preset(cls, name: str | None) -> str | None:
        try:
            return None if name is None else MASKING_PRESETS.canonical(name)
        except KeyError as exc:
            raise ValueError(str(exc)) from None

    @pydantic.field_validator("strategies")
    @classmethod
    def _strategies(cls, strategies: tuple[MaskingStrategy, ...]) -> tuple[MaskingStrategy, ...]:
        names = [s.name for s in strategies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"strategies named {repeated} more than once; give each a distinct name")
        if PLAIN_STRATEGY in names:
            raise ValueError(f"the strategy name {PLAIN_STRATEGY!r} is reserved for the plain alpha Dirichlet")
        return strategies

    @pydantic.model_validator(mode="after")
    def _one_mixture(self) -> "MaskingConfig":
        if self.preset is not None and self.strategies:
            raise ValueError(f"give either preset ({self.preset!r}) or strategies, not both")
        return self

    @pydantic.field_validator("span_mask_ratio")
    @classmethod
    def _ratio(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= ratio[0] <= ratio[1] <= 1.0:
            raise ValueError(f"span_mask_ratio must be (low, high) with 0 <= low <= high <= 1, got {ratio}")
        return ratio

    def alpha_of(self, modality: str) -> float:
        return self.alpha_overrides.get(modality, self.alpha)

    def check_modalities(self, run: Sequence[str]) -> None:
        """Refuse concentrations set for modalities outside the run's (canonical) modality names: a typo'd or stale
        override would otherwise be a silent no-op. The masker checks this; a job config can too, before launch."""
        unknown = sorted(set(self.alpha_overrides) - set(run))
        if unknown:
            raise ValueError(f"masking.alpha_overrides names {unknown}, which are not among the run's modalities "
                             f"{list(run)}")
        for strategy in self.mixture:
            outside = sorted((set(strategy.input_overrides) | set(strategy.target_overrides)) - set(run))
            if outside:
                raise ValueError(f"masking strategy {strategy.name!r} names {outside}, which are not among the run's "
                                 f"modalities {list(run)}")

    @property
    def mixture(self) -> tuple[MaskingStrategy, ...]:
        """The strategies drawn from per sample: the preset's, those written out, or none (the plain Dirichlet)."""
        return MASKING_PRESETS.get(self.preset) if self.preset is not None else self.strategies


class LoaderConfig(ConfigModel):
    """How one training worker streams its token shards (see pipeline/data/loader.py)."""

    batch_size: int = Field(default=64, ge=1)
    # Samples are shuffled within blocks of this many consecutive samples of the (per-epoch shuffled) shard stream.
    shuffle_buffer: int = Field(default=1_024, ge=1)
    seed: int = Field(default=0, ge=0)
    # Modalities read (their tok_<modality> folders); empty = every modality of the run's ModalityTable.
    modalities: tuple[str, ...] = ()
    read_retries: int = Field(default=2, ge=0)  # extra attempts after a failed shard read
    retry_backoff_s: float = Field(default=0.5, ge=0)  # wait before retry k: backoff * 2**k
    # Compare each shard's sha256 with the manifest: a truncated or corrupted shard then fails loudly instead of
    # feeding garbage. Costs one hash pass over the bytes read.
    verify_checksums: bool = True
    # Share of a rank's shards that may be lost to read errors (after retries) before the run fails; a lost shard
    # is skipped for the rest of its epoch. 0: any lost shard fails the run, naming it.
    max_lost_shard_fraction: float = Field(default=0.0, ge=0, lt=1)
    # Share of sample keys held out of training (schemas.keys.in_holdout, no salt): the loader's "train" part skips
    # them, its "holdout" part yields only them (validation).
    holdout_fraction: float = Field(default=0.0, ge=0, lt=1)
    # Batches prepared ahead in a background thread, so shard reads (S3 latency above all) overlap the step.
    prefetch_batches: int = Field(default=2, ge=0)

    @pydantic.field_validator("modalities")
    @classmethod
    def _modalities(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _canonical_modalities(names)


class DatasetEntry(ConfigModel):
    """One preprocess output of a dataset mixture: 4M trains on several datasets, each with its own modality set
    (image-text corpora beside text-only ones); a batch draws each sample from a dataset by `weight`."""

    path: str = Field(min_length=1)  # a preprocess output with token folders (local or s3://)
    weight: float = Field(default=1.0, gt=0)  # relative: the mixture's weights are normalised to sum to 1
    # The modalities read from it; None: its token folders that are among the run's modalities.
    modalities: tuple[str, ...] | None = None
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")  # default: the output's folder name

    @pydantic.field_validator("modalities")
    @classmethod
    def _modalities(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if names is not None and not names:
            raise ValueError("an empty modality list reads nothing: leave modalities out to take the output's own")
        return None if names is None else _canonical_modalities(names)

    @property
    def label(self) -> str:
        return self.name or self.path.rstrip("/").rsplit("/", 1)[-1]


def check_mixture(entries: Sequence[DatasetEntry]) -> tuple[DatasetEntry, ...]:
    """A mixture's entries, refused when empty or when two share a name (a checkpoint keys positions by name)."""
    if not entries:
        raise ValueError("data: a mixture needs at least one dataset")
    labels = [entry.label for entry in entries]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"data: datasets named {repeated} more than once; give each entry a distinct name")
    return tuple(entries)


def mixture_weights(entries: Sequence[DatasetEntry]) -> list[float]:
    """The entries' sampling weights, normalised to sum to 1."""
    total = sum(entry.weight for entry in entries)
    return [entry.weight / total for entry in entries]

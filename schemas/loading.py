"""Typed configs of the training side of the data: 4M masking (`MaskingConfig`), the token-shard loader
(`LoaderConfig`) and the entries of a dataset mixture (`DatasetEntry`). They are sections of the train job's config
(the evaluate job's `data` takes mixture entries too); the loader and masking code take them as they are."""

from __future__ import annotations

from collections.abc import Sequence

import pydantic
from pydantic import Field

from schemas.config import ConfigModel
from schemas.modalities import get_modality


def _canonical_modalities(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    try:
        canonical = tuple(get_modality(n).name for n in names)
    except KeyError as exc:
        raise ValueError(str(exc)) from None
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"modality listed twice: {list(names)}")
    return canonical


class MaskingConfig(ConfigModel):
    """4M's multimodal masking: fixed input and target budgets split over a sample's modalities.

    Per sample, two Dirichlet draws (one for the input budget, one for the target budget) weight the modalities the
    sample has; `alpha` is the symmetric concentration (small: one modality takes most of a budget; large: even
    splits), `alpha_overrides` raises or lowers single modalities (e.g. caption-biased mixes).
    Sequence (autoregressive) modalities are span-masked T5-style: a fraction of their tokens, drawn uniformly in
    `span_mask_ratio`, is cut into spans of mean length `span_mean_length`; each span becomes one sentinel in the
    input and `sentinel tokens...` in the target run.
    """

    input_tokens: int = Field(default=256, ge=1, le=65_536)  # I: encoder slots per sample
    target_tokens: int = Field(default=256, ge=1, le=65_536)  # T: decoder slots per sample
    alpha: float = Field(default=1.0, gt=0)
    alpha_overrides: dict[str, float] = Field(default_factory=dict)
    span_mean_length: float = Field(default=3.0, ge=1.0)
    span_mask_ratio: tuple[float, float] = (0.0, 1.0)

    @pydantic.field_validator("alpha_overrides")
    @classmethod
    def _overrides(cls, overrides: dict[str, float]) -> dict[str, float]:
        canonical = _canonical_modalities(list(overrides))
        if any(v <= 0 for v in overrides.values()):
            raise ValueError(f"Dirichlet concentrations must be positive, got {overrides}")
        return dict(zip(canonical, overrides.values()))

    @pydantic.field_validator("span_mask_ratio")
    @classmethod
    def _ratio(cls, ratio: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= ratio[0] <= ratio[1] <= 1.0:
            raise ValueError(f"span_mask_ratio must be (low, high) with 0 <= low <= high <= 1, got {ratio}")
        return ratio

    def alpha_of(self, modality: str) -> float:
        return self.alpha_overrides.get(modality, self.alpha)


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

"""Typed config of the sample corpus generator (`python -m jobs.sample_corpus`)."""

from __future__ import annotations

import math

import pydantic
from pydantic import Field

from schemas.config import ConfigModel

CORPUS_SHARD_DIGITS = 6  # corpus-000042.tar, as img2dataset names its shards


class SampleCorpusConfig(ConfigModel):
    """What to generate: `samples` raw samples in WebDataset tars of `samples_per_shard` under `out`.

    Everything but `out` and `workers` enters the bytes written; `workers` only changes how fast.
    """

    out: str = Field(min_length=1)
    samples: int = Field(ge=1, le=100_000_000)
    # numpy's SeedSequence refuses negative entropy, so a negative seed is caught here rather than in a worker.
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    # Below 32 px the smallest objects shrink to a couple of pixels and their shapes stop being recognisable.
    image_size: int = Field(default=256, ge=32, le=4096)
    samples_per_shard: int = Field(default=64, ge=1, le=1_000_000)
    real_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    workers: int = Field(default=1, ge=1, le=512)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.samples / self.samples_per_shard)

    @pydantic.model_validator(mode="after")
    def _shard_names_fit(self) -> SampleCorpusConfig:
        if self.num_shards > 10**CORPUS_SHARD_DIGITS:
            raise ValueError(
                f"{self.samples} samples at {self.samples_per_shard} per shard need {self.num_shards} shards, "
                f"more than {CORPUS_SHARD_DIGITS}-digit shard names allow; raise samples_per_shard"
            )
        return self

"""Typed config of the generate job: which checkpoint, which samples, which modalities are given and which are
generated (in order: each generated modality joins the inputs of the next, 4M's chained generation), and how tokens
are sampled."""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import Field

from schemas.common import StorageConfig
from schemas.config import ConfigModel
from schemas.modalities import get_modality


class SamplingConfig(ConfigModel):
    """How target tokens are drawn. Parallel modalities (grids, vectors, signals) are decoded MaskGIT-style in
    `steps` rounds; sequences token by token until EOS or `max_tokens`."""

    steps: int = Field(default=8, ge=1)  # MaskGIT rounds per parallel target (1: one-pass prediction)
    temperature: float = Field(default=1.0, ge=0)  # 0: argmax
    top_k: int = Field(default=0, ge=0)  # sample among the k likeliest tokens; 0: the whole vocabulary
    max_tokens: int | None = Field(default=None, ge=3)  # bound of a generated sequence's run; None: the model's


class GenerateConfig(ConfigModel):
    """python -m jobs.generate: condition on `from_modalities` of each sample, generate `to_modalities` in order,
    decode everything through its tokenizer into files a person opens, plus a contact sheet."""

    checkpoint: str = ""  # an export (x.safetensors with x.json beside it) or a checkpoint directory, local or s3://
    # A preprocess output (token shards + manifest), or image files: one path, a folder of images or a
    # comma-separated list (then the single input modality's tokenizer encodes them).
    input: str = ""
    from_modalities: tuple[str, ...] = ()  # every field has a default, so that a recipe file states only its own
    to_modalities: tuple[str, ...] = ()  # choices; the job refuses to run without checkpoint, input, from and to
    sampling: SamplingConfig = SamplingConfig()
    samples: int = Field(default=4, ge=1)  # how many samples of the input to generate for
    # Token shards: take samples whose key falls in this hash holdout (schemas.keys.in_holdout, the split
    # pretraining validates on at a smaller fraction); 0 takes the first samples in manifest order.
    holdout_fraction: float = Field(default=0.0, ge=0, lt=1)
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=8, ge=1)  # samples per model call
    device: Literal["cpu", "cuda"] = "cpu"
    out: str = "generate_out"
    tokenizers: dict[str, str] = Field(default_factory=dict)  # modality -> tokenizer dir, local or s3://
    storage: StorageConfig = StorageConfig()

    @pydantic.field_validator("from_modalities", "to_modalities")
    @classmethod
    def _modalities(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        try:
            canonical = tuple(get_modality(name).name for name in names)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"a modality is named twice: {list(names)}")
        return canonical

    @pydantic.field_validator("tokenizers")
    @classmethod
    def _tokenizer_keys(cls, tokenizers: dict[str, str]) -> dict[str, str]:
        try:
            return {get_modality(name).name: path for name, path in tokenizers.items()}
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None

    def missing(self) -> list[str]:
        """The settings a run needs that are not given (flags named as the job spells them)."""
        given = {"--checkpoint": self.checkpoint, "--input": self.input, "--from": self.from_modalities,
                 "--to": self.to_modalities}
        return [flag for flag, value in given.items() if not value]

    @pydantic.model_validator(mode="after")
    def _disjoint(self) -> GenerateConfig:
        shared = sorted(set(self.from_modalities) & set(self.to_modalities))
        if shared:
            raise ValueError(f"{shared} both given (--from) and generated (--to): a modality is one or the other")
        return self

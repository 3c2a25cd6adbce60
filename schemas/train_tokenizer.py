"""Typed config of the tokenizer training job (`configs/train_tokenizer/*.yaml`)."""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import Field

from schemas.config import ConfigModel
from schemas.modalities import require_implemented
from schemas.common import RUN_NAME_PATTERN, RayConfig, StorageConfig
from schemas.pretrain import OptimConfig


class QuantizerChoice(ConfigModel):
    """The bottleneck keys a config may set; unset keys take the family's defaults (`pipeline/tokenizers/
    quantizers.py`, `QuantizerSettings`, which validates the values)."""

    kind: Literal["fsq", "vq"] | None = None
    levels: tuple[int, ...] | None = None  # FSQ
    codebook_size: int | None = None  # VQ
    code_dim: int | None = None
    ema_decay: float | None = None
    commitment: float | None = None
    restart_after: int | None = None
    l2_normalize: bool | None = None


class TokenizerModelConfig(ConfigModel):
    """The architecture keys of every tokenizer family, each None unless set: a typo fails here, with its key path,
    before anything runs; the family's own settings model then fills its defaults and refuses another family's
    keys (image-like maps: `pipeline/tokenizers/image.py`, global embeddings: `global_mlp.py`, WordPiece: the two
    vocabulary keys)."""

    # image-like maps and feature maps
    widths: tuple[int, ...] | None = None  # one per stage; every stage after the first halves the resolution
    blocks: int | None = None
    resolution: int | None = None  # default: the training samples' own
    # global embeddings
    tokens: int | None = None
    hidden: int | None = None  # also signals
    depth: int | None = None
    # signals (audio, IMU, time series; `pipeline/tokenizers/signal.py`)
    frames: int | None = None  # frames per sample; default: the training samples' own
    patch: int | None = None
    codes_per_patch: int | None = None
    normalize: Literal["dataset", "sample"] | None = None
    values_in_db: bool | None = None
    # every neural family
    quantizer: QuantizerChoice | None = None
    num_classes: int | None = None  # class maps; default: from the training samples
    # the fitted families (`pipeline/tokenizers/table.py`, `graph.py`)
    bins: int | None = Field(default=None, ge=2)  # table rows: quantile bins per numeric column
    max_nodes: int | None = Field(default=None, ge=1)  # graphs: node ids; default the largest training graph's
    # the shared WordPiece vocabulary (text-like modalities)
    vocab_size: int | None = Field(default=None, ge=1)
    min_frequency: int | None = Field(default=None, ge=0)

    def settings(self) -> dict[str, Any]:
        """The keys set, as the family's settings model takes them."""
        return self.model_dump(exclude_none=True)


class TrainTokenizerConfig(ConfigModel):
    modality: str | None = None
    input: str | None = None  # label shards (a preprocess output; local or s3://)
    output: str | None = None  # the tokenizer's directory (local or s3://); default tokenizers/<tokenizer_id>
    name: str | None = Field(default=None, pattern=RUN_NAME_PATTERN)  # run name; default tokenizer-<modality>
    tokenizer_id: str | None = None  # default <modality>-<quantizer kind>
    storage_path: str = "runs"  # Ray Train run directories and checkpoints (local or s3://)
    workers: int = Field(default=2, ge=1)
    cpus_per_worker: int = Field(default=1, ge=1)
    use_gpu: bool = False
    steps: int = Field(default=2000, ge=1)
    # Stop early, at the same step on every rank, once this much training time has passed (None: run all steps).
    time_limit_minutes: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=32, ge=1)  # per worker
    optim: OptimConfig = OptimConfig(lr=2e-3, weight_decay=0.0, warmup_steps=100)
    # The family's architecture, e.g. {widths: [16, 32, 64, 128], quantizer: {kind: vq, codebook_size: 1024}}.
    model: TokenizerModelConfig = TokenizerModelConfig()
    fit_samples: int = Field(default=512, ge=1)  # training samples the input normalisation is fitted on
    holdout_fraction: float = Field(default=0.05, gt=0, lt=1)  # of keys, by hash; never trained on
    eval_samples: int = Field(default=512, ge=1)
    checkpoint_every: int = Field(default=200, ge=1)
    num_to_keep: int = Field(default=2, ge=1)
    max_failures: int = Field(default=0, ge=-1)
    log_every: int = Field(default=50, ge=1)
    seed: int = 0
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @pydantic.field_validator("modality")
    @classmethod
    def _modality(cls, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            return require_implemented(name).name
        except (KeyError, NotImplementedError) as exc:
            raise ValueError(str(exc)) from None

    @pydantic.field_validator("optim")
    @classmethod
    def _no_accumulation(cls, optim: OptimConfig) -> OptimConfig:
        if optim.grad_accumulation != 1:
            raise ValueError("tokenizer training steps every batch; raise batch_size or workers instead of "
                             "grad_accumulation")
        return optim

    @property
    def run_name(self) -> str:
        return self.name or f"tokenizer-{self.modality}"

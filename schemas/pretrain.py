"""Typed config of the pretrain job (`configs/pretrain/<size>.yaml`)."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from schemas.config import ConfigModel
from schemas.loading import DatasetEntry, LoaderConfig, MaskingConfig, check_mixture
from schemas.model import ModelConfig
from schemas.modalities import get_modality
from schemas.common import RUN_NAME_PATTERN, RayConfig, StorageConfig


class OptimConfig(ConfigModel):
    lr: float = Field(default=1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    # cosine: warmup then cosine to min_lr_ratio * lr; wsd: warmup, stable, then linear decay over decay_fraction
    schedule: Literal["cosine", "wsd"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    decay_fraction: float = Field(default=0.2, gt=0, le=1)
    grad_clip: float = Field(default=1.0, gt=0)
    grad_accumulation: int = Field(default=1, ge=1)
    # torch's fused AdamW: one pass over each flat ZeRO partition instead of a dozen elementwise ops. On S (CPU,
    # ZeRO-2) it took the optimizer step from 1.15 s to ~0.2 s of a 6-8 s step (BENCHMARKS.md, "Training").
    fused: bool = True


class ZeroConfig(ConfigModel):
    stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False  # stage 3 only
    # Bucket sizes in elements. DeepSpeed's 5e8 defaults cost ~2 GB of buffers per rank on CPU (BENCHMARKS.md).
    bucket_elements: int = Field(default=20_000_000, ge=1_000)

    @pydantic.model_validator(mode="after")
    def _offload_needs_stage(self) -> "ZeroConfig":
        if self.offload_params and self.stage != 3:
            raise ValueError("offload_params needs ZeRO stage 3")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("offload_optimizer needs ZeRO stage 1 or higher")
        return self


class ValidationConfig(ConfigModel):
    """Loss on a fixed held-out split of the token shards (keys chosen by hash, never trained on), so that runs of
    a study, whatever their size or length, are scored on the same samples with the same masks."""

    # Of every rank's samples, by key hash: the training loader skips them, the validation loader reads only them.
    fraction: float = Field(default=0.05, ge=0, lt=1)
    # Validate every this many steps and at the last one. None: at log steps that are also checkpoint steps.
    every: int | None = Field(default=None, ge=1)
    # Held-out batches per rank, read once at start and kept in memory. None: the whole held-out part, which a large
    # output makes a long read and a large cache.
    max_batches: int | None = Field(default=50, ge=1)
    seed: int = Field(default=1234, ge=0)  # masking seed of the held-out batches: the same masks in every run


class PretrainConfig(ConfigModel):
    name: str = Field(default="pretrain", pattern=RUN_NAME_PATTERN)
    # A preprocess output with token folders (local or s3://), or a mixture: a list of DatasetEntry (path, weight,
    # modalities, name), each sample drawn from one dataset by weight and carrying only that dataset's modalities.
    data: str | tuple[DatasetEntry, ...] | None = None
    storage_path: str = "runs"  # where Ray Train keeps run directories and checkpoints (local or s3://)
    modalities: tuple[str, ...] = ("caption", "color_palette", "metadata")
    # Token table and head size per modality where it should be the tokenizer's rather than the registry's bound
    # (e.g. {caption: 4700} for a 4,700-piece WordPiece): a 30,000-row head over 4,700 live ids spends most of a
    # small model's compute, and its first steps, on logits no token ever takes.
    vocab_sizes: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    workers: int = Field(default=2, ge=1)
    cpus_per_worker: int = Field(default=1, ge=1)
    use_gpu: bool = False
    steps: int = Field(default=100, ge=1)  # optimizer steps, each of optim.grad_accumulation micro-batches
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig(input_tokens=64, target_tokens=64)
    loader: LoaderConfig = LoaderConfig(batch_size=16)
    optim: OptimConfig = OptimConfig()
    zero: ZeroConfig = ZeroConfig()
    checkpoint_every: int = Field(default=50, ge=1)
    # Further steps that end with a checkpoint, e.g. where a study's WSD cooldowns branch off this run. They count
    # towards num_to_keep, which keeps the latest ones.
    checkpoint_steps: tuple[Annotated[int, Field(ge=1)], ...] = ()
    num_to_keep: int = Field(default=2, ge=1)
    # A checkpoint directory (local or s3://) a fresh run starts from: weights, optimizer, loader position, counts
    # and step, as a WSD cooldown starts from its trunk's stable phase. A run with a checkpoint of its own resumes
    # that one instead.
    init_from: str | None = None
    max_failures: int = Field(default=0, ge=-1)
    log_every: int = Field(default=10, ge=1)
    # Peak FLOP/s of one worker, the denominator of MFU. None: a GPU's datasheet bf16 peak (bf16 runs on GPUs the
    # table knows), else a ~1 s matmul timing in the run's precision on each worker at start-up.
    peak_flops: float | None = Field(default=None, gt=0)
    validation: ValidationConfig = ValidationConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @pydantic.model_validator(mode="after")
    def _mixture_fits(self) -> "PretrainConfig":
        if isinstance(self.data, tuple):
            check_mixture(self.data)
            run = {get_modality(name).name for name in self.modalities}
            for entry in self.data:
                outside = sorted(set(entry.modalities or ()) - run)
                if outside:
                    raise ValueError(f"data: dataset {entry.label!r} lists {outside}, which are not among the run's "
                                     f"modalities {list(self.modalities)}")
        return self

    @pydantic.model_validator(mode="after")
    def _masking_fits(self) -> "PretrainConfig":
        # At launch, not when the workers build their maskers: a preset or override naming a modality the run does
        # not train (the 4m21 preset on a run without rgb) would otherwise fail only on the cluster.
        self.masking.check_modalities(tuple(get_modality(name).name for name in self.modalities))
        return self

    @pydantic.model_validator(mode="after")
    def _vocab_sizes_fit(self) -> "PretrainConfig":
        for name, size in self.vocab_sizes.items():
            try:
                bound = get_modality(name).vocab_size
            except KeyError:
                raise ValueError(f"vocab_sizes: unknown modality {name!r}") from None
            if size > bound:
                raise ValueError(f"vocab_sizes.{name}: {size} is above the registry's {bound}")
        return self

    @pydantic.model_validator(mode="after")
    def _one_holdout_fraction(self) -> "PretrainConfig":
        # The split is set once, under validation; a second, different value under loader would train on the
        # held-out samples or validate on training ones.
        loader_fraction = getattr(self.loader, "holdout_fraction", 0.0)
        if loader_fraction not in (0.0, self.validation.fraction):
            raise ValueError(f"loader.holdout_fraction {loader_fraction} differs from validation.fraction "
                             f"{self.validation.fraction}; set validation.fraction only")
        return self

    def validates_at(self, step: int) -> bool:
        """Whether `step` ends with a held-out validation (always at the last step)."""
        if step == self.steps:
            return True
        if self.validation.every is not None:
            return step % self.validation.every == 0
        return step % self.log_every == 0 and step % self.checkpoint_every == 0

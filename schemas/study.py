"""Typed spec of a scaling-law study (`configs/study/*.yaml`): which sizes, which budgets, which seeds, and the rules
that turn each (size, budget, seed) into one pretrain run.

Every run is a `PretrainConfig`: the spec's `pretrain:` section (validated as one, with its defaults) with the fields
the study decides per run filled in. Those fields may not also be set in `pretrain:`, so that no value is defined in
two places and silently lost in one.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

import pydantic
from pydantic import Field

from schemas.common import RUN_NAME_PATTERN
from schemas.config import ConfigModel
from schemas.evaluate import ProbeConfig
from schemas.modalities import get_modality
from schemas.model import ModelConfig
from schemas.pretrain import PretrainConfig

NAME_PATTERN = RUN_NAME_PATTERN  # run ids and study names become directory and Ray Train run names

# PretrainConfig fields each run gets from the study (size, budget, seed and the rules below), by dotted path.
STUDY_OWNED = (
    "name", "data", "storage_path", "modalities", "workers", "cpus_per_worker", "use_gpu", "steps", "seed", "model",
    "log_every", "checkpoint_every", "checkpoint_steps", "num_to_keep", "init_from", "optim.lr", "optim.warmup_steps",
    "optim.schedule", "optim.min_lr_ratio", "optim.decay_fraction", "loader.batch_size", "loader.seed",
)


class IsoFlopBudgets(ConfigModel):
    """IsoFLOP design: for each compute budget C, every size that fits it trains on D = C / (6 N) tokens.

    C counts 6 N D with the study's `n_count` (Chinchilla's approximation), the same quantity the fit derives
    compute from, so that the runs of one budget land on one IsoFLOP curve. What a run really computes (embeddings
    and heads included, `pipeline/model/flops.py`) is planned and measured beside it.
    """

    kind: Literal["isoflop"] = "isoflop"
    compute: tuple[Annotated[float, Field(gt=0)], ...] = Field(min_length=1)
    # A size fits a budget when its step count lands here: too few steps is all warmup, too many is too long.
    min_steps: int = Field(default=20, ge=1)
    max_steps: int | None = Field(default=None, ge=1)

    @pydantic.model_validator(mode="after")
    def _bounds(self) -> "IsoFlopBudgets":
        if self.max_steps is not None and self.max_steps < self.min_steps:
            raise ValueError(f"max_steps {self.max_steps} is below min_steps {self.min_steps}")
        return self


class TokenBudgets(ConfigModel):
    """Size x tokens design: every size trains on each token count D (input + target slots over all samples)."""

    kind: Literal["tokens"] = "tokens"
    tokens: tuple[Annotated[int, Field(gt=0)], ...] = Field(min_length=1)


class LearningRateRule(ConfigModel):
    """Peak learning rate per size: base * (base_width / width) ** exponent, unless `by_size` names the size.

    Exponent 1 is muP's rule for Adam on hidden matrices (the update of a width-w layer shrinks as 1/w); 0 keeps one
    rate for every size."""

    base: float = Field(default=1e-3, gt=0)
    base_width: int = Field(default=64, ge=1)
    exponent: float = Field(default=1.0, ge=0)
    by_size: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)


class BatchRule(ConfigModel):
    """Micro-batch per worker for every size, unless `by_size` names the size."""

    batch_size: int = Field(default=16, ge=1)
    by_size: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)


class ScheduleSpec(ConfigModel):
    """The learning-rate schedule of every run, with warmup as a fraction: a fixed step count would be most of the
    shortest run and a sliver of the longest."""

    kind: Literal["cosine", "wsd"] = "cosine"
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    decay_fraction: float = Field(default=0.2, gt=0, le=1)  # wsd: the final linear decay's share of the run
    # wsd: a size's shorter budgets branch off the stable phase of its longest run (one run plus short cooldowns,
    # Hägele et al. 2024) instead of each training from scratch; every run of a size then warms up alike.
    cooldowns: bool = True


class StudyResources(ConfigModel):
    """What each run takes from the cluster, how many run at once, and the figures the plan's time estimate uses."""

    workers: int = Field(default=1, ge=1)
    cpus_per_worker: int = Field(default=1, ge=1)
    use_gpu: bool = False
    # Runs at once. None: as many as the cluster's CPUs (GPUs with use_gpu) hold at workers x cpus_per_worker each.
    concurrency: int | None = Field(default=None, ge=1)
    retries: int = Field(default=1, ge=0)  # a failed run is retried this many times, then recorded as failed
    # For the plan's time estimate, start-up + steps x step_s + model FLOPs / (workers x flops_per_worker): the
    # model FLOP/s one worker achieves (an earlier run's `flops_per_s`), the fixed cost of a step (loader, optimizer,
    # logging: what small models are made of) and of a run (workers, DeepSpeed engine, checkpoints).
    flops_per_worker: float = Field(default=1e10, gt=0)
    step_s: float = Field(default=0.0, ge=0)
    startup_s: float = Field(default=20.0, ge=0)


class EvaluationSpec(ConfigModel):
    """Evaluation tasks (`pipeline/eval` registry names) run on each run's final checkpoint; none by default."""

    tasks: tuple[str, ...] = ()
    tokenizers: dict[str, str] = Field(default_factory=dict)  # modality -> tokenizer dir, for tasks that decode
    probe: ProbeConfig = ProbeConfig()


def _size_table(value):
    """`sizes: [tiny, S]` is shorthand for `{tiny: {size: tiny}, S: {size: S}}`."""
    if isinstance(value, (list, tuple)):
        return {name: {"size": name} for name in value}
    return value


class StudySpec(ConfigModel):
    """python -m jobs.study plan|run|status SPEC: one run per (size, budget, seed)."""

    name: str = Field(pattern=NAME_PATTERN)  # the study's folder under --storage
    data: str | None = None  # token shards (a preprocess output); --data overrides
    modalities: tuple[str, ...] = ("caption", "color_palette", "metadata")
    # Named model shapes: registry sizes (`{size: tiny}`) or explicit ones (`{size: custom, dim: 16, ...}`).
    sizes: Annotated[dict[str, ModelConfig], pydantic.BeforeValidator(_size_table)] = Field(min_length=1)
    budgets: IsoFlopBudgets | TokenBudgets = Field(discriminator="kind")
    seeds: tuple[int, ...] = Field(default=(0,), min_length=1)
    # The parameter count N that IsoFLOP budgets divide by and the fit uses: without embeddings and heads (Kaplan
    # et al.: the count that gives clean power laws; at small widths the embedding tables are most parameters).
    n_count: Literal["non_embedding", "total"] = "non_embedding"
    lr: LearningRateRule = LearningRateRule()
    batch: BatchRule = BatchRule()
    schedule: ScheduleSpec = ScheduleSpec()
    logs_per_run: int = Field(default=10, ge=1)  # metrics rows per run (log_every = steps / this)
    checkpoints_per_run: int = Field(default=2, ge=1)  # resume points per run, the last at the final step
    resources: StudyResources = StudyResources()
    evaluation: EvaluationSpec = EvaluationSpec()
    pretrain: PretrainConfig = PretrainConfig()  # every other setting of each run

    @pydantic.field_validator("modalities")
    @classmethod
    def _modalities(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        try:
            canonical = tuple(get_modality(n).name for n in names)
        except KeyError as exc:
            raise ValueError(str(exc)) from None
        if not canonical or len(set(canonical)) != len(canonical):
            raise ValueError(f"modalities must be distinct and not empty, got {list(names)}")
        return canonical

    @pydantic.field_validator("sizes")
    @classmethod
    def _size_names(cls, sizes: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        bad = [name for name in sizes if not re.fullmatch(r"[A-Za-z0-9.-]+", name)]
        if bad:
            raise ValueError(f"size names may hold letters, digits, '.' and '-' only (they go into run ids): {bad}")
        return sizes

    @pydantic.field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {list(seeds)}")
        return seeds

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        for rule, by_size in (("lr", self.lr.by_size), ("batch", self.batch.by_size)):
            unknown = sorted(set(by_size) - set(self.sizes))
            if unknown:
                raise ValueError(f"{rule}.by_size names unknown sizes {unknown}; sizes are {list(self.sizes)}")
        if isinstance(self.budgets, TokenBudgets) and len(set(self.budgets.tokens)) != len(self.budgets.tokens):
            raise ValueError(f"budgets.tokens repeat: {list(self.budgets.tokens)}")
        if isinstance(self.budgets, IsoFlopBudgets) and len(set(self.budgets.compute)) != len(self.budgets.compute):
            raise ValueError(f"budgets.compute repeat: {list(self.budgets.compute)}")
        clashes = [key for key in STUDY_OWNED if _is_set(self.pretrain, key)]
        if clashes:
            raise ValueError(f"pretrain.{', pretrain.'.join(clashes)}: set by the study for each run (sizes, "
                             "budgets, seeds, lr, batch, schedule, resources, data, modalities); remove from pretrain")
        return self


def _is_set(model: pydantic.BaseModel, dotted: str) -> bool:
    """Whether the YAML (or --set) gave `dotted` explicitly, as opposed to it keeping its default."""
    head, _, rest = dotted.partition(".")
    if head not in model.model_fields_set:
        return False
    return not rest or _is_set(getattr(model, head), rest)


def budget_label(value: float) -> str:
    """A budget as it appears in run ids: 3e12, 2.5e6, 400 (no '+', which run names may not hold)."""
    exponent = math.floor(math.log10(value))
    if exponent < 4:
        return f"{value:g}"
    return f"{round(value / 10**exponent, 2):g}e{exponent}"


class RunRecord(ConfigModel):
    """`<study>/records/<run>.json`: a run's bookkeeping, written by the Tune trial that runs it (and by the study's
    driver, which marks a run whose retries are spent as failed). Metrics stay in the run's own metrics.jsonl."""

    run: str
    # running: an attempt started (or its driver was killed: a rerun resumes it); error: an attempt failed and a
    # retry may follow; failed: retries spent; done: trained (and evaluated).
    status: Literal["running", "done", "error", "failed"]
    attempts: int = Field(ge=0)
    errors: tuple[str, ...] = ()  # one per failed attempt, oldest first
    started_at: float  # unix time the latest attempt started
    finished_at: float | None = None
    seconds: float = Field(default=0.0, ge=0)  # wall time of every finished attempt together
    evaluation: dict[str, float] = Field(default_factory=dict)  # eval_<task>_<metric> -> value

"""Typed config of the evaluate job: which checkpoints, which tasks, where the data and results live, and what
each task may use of the cluster."""

from __future__ import annotations

import pydantic
from pydantic import Field

from schemas.config import ConfigModel
from schemas.common import RayConfig, StorageConfig
from schemas.loading import DatasetEntry, check_mixture


class TaskResources(ConfigModel):
    """Ray resources one evaluation task reserves (its `ray.remote` options)."""

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)


class ProbeConfig(ConfigModel):
    """How probe heads are fitted on frozen features and how samples are split into fit and score sets."""

    # Samples whose key hashes into this fraction are scored; the rest fit the probe (deterministic per key).
    test_fraction: float = Field(default=0.3, gt=0, lt=1)
    l2: float = Field(default=1e-3, ge=0)  # weight decay of the probe (features are standardised first)
    steps: int = Field(default=300, ge=1)  # full-batch optimisation steps
    lr: float = Field(default=0.05, gt=0)
    mlp_hidden: int = Field(default=64, ge=1)
    max_samples: int = Field(default=2_000, ge=2)  # per task, read in manifest order
    batch_size: int = Field(default=32, ge=1)  # samples per model call
    seed: int = Field(default=0, ge=0)


class EvaluateConfig(ConfigModel):
    """python -m jobs.evaluate: every (checkpoint, task) pair is one Ray task; results gathered into one table."""

    checkpoints: tuple[str, ...] = ()  # exported model dirs (model.safetensors + sidecar), local or s3://
    tasks: tuple[str, ...] = ("all",)  # registered task names, or "all"
    # Preprocess output(s) (token shards + manifest) the token-shard tasks read: one, or several as mixture entries
    # (path, name; weights unused) or a name -> path mapping. Each task reads the dataset task_data names for it,
    # else the first that holds every folder it needs.
    data: str | tuple[DatasetEntry, ...] | dict[str, str] | None = None
    task_data: dict[str, str] = Field(default_factory=dict)  # task name -> dataset name
    out: str = "eval_results"
    tokenizers: dict[str, str] = Field(default_factory=dict)  # modality -> tokenizer dir, local or s3://
    default_resources: TaskResources = TaskResources()
    resources: dict[str, TaskResources] = Field(default_factory=dict)  # per task name, overrides the default
    probe: ProbeConfig = ProbeConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @pydantic.field_validator("tasks")
    @classmethod
    def _tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        if not tasks or ("all" in tasks and len(tasks) > 1):
            raise ValueError(f"tasks is 'all' or a list of task names, got {list(tasks)}")
        return tasks

    @pydantic.model_validator(mode="after")
    def _task_data_named(self) -> "EvaluateConfig":
        names = set(self.datasets())
        unknown = {task: name for task, name in self.task_data.items() if name not in names}
        if unknown:
            raise ValueError(f"task_data names datasets that data does not: {unknown} (data has {sorted(names)})")
        return self

    def datasets(self) -> dict[str, str]:
        """Dataset name -> path, in the order given; empty when no data was given."""
        if self.data is None:
            return {}
        if isinstance(self.data, str):
            return {DatasetEntry(path=self.data).label: self.data}
        if isinstance(self.data, dict):
            return dict(self.data)
        return {entry.label: entry.path for entry in check_mixture(self.data)}

    def resources_of(self, task: str, declared: TaskResources | None = None) -> TaskResources:
        """The config's entry for the task, else what the task declared, else the default."""
        return self.resources.get(task) or declared or self.default_resources

"""The eval task registry: one `register_task(...)` call declares a task; the runner and the job read only this.

The built-in tasks live in `pipeline.eval.tasks` and register themselves when imported; this module imports none
of them, and the code that needs the full set (`jobs/evaluate.py`) imports that package.

A task declares what it reads (input modalities, target, its data: a split of the run's token shards or an external
dataset loader), how it predicts (head kind), what it reports (metrics, each scored against a trivial baseline so
a number means something) and what it reserves on the cluster. Its `evaluate` function receives a `TaskContext`
(model handle, tokenizers, data) and returns one `Score` per metric; it is the only place that knows the task's
modalities, so nothing else branches on a modality's name.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from schemas.evaluate import TaskResources
from schemas.registry import Registry

if TYPE_CHECKING:
    from pipeline.eval.context import TaskContext


class HeadKind(str, enum.Enum):
    LINEAR_PROBE = "linear_probe"  # linear classifier fitted on frozen, pooled encoder features
    MLP_PROBE = "mlp_probe"  # small MLP fitted on the same frozen features
    DECODER = "decoder"  # the model's own decoder predicts the target modality's tokens
    NONE = "none"  # no head: similarity of frozen features (retrieval), or a test task


class DataUnmet(Exception):
    """Raised by a task's `evaluate` when the data holds nothing it can score, found only once the samples are read
    (tables or graphs that are not the sample corpus's): under `--tasks all` the task is reported `skipped` with
    this reason, as one whose folders are absent is; a task named explicitly fails with it."""


@dataclass(frozen=True)
class TokenSplit:
    """Samples of the run's token shards: the `tok_<modality>` folders read together with aux folders (e.g. the
    annotations that hold ground truth), split into fit/score sets by key (see ProbeConfig.test_fraction)."""

    modalities: tuple[str, ...]
    aux: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExternalDataset:
    """Data from outside the run (e.g. scikit-learn's digits): `load()` returns whatever the task's evaluate
    expects. Loaders must work offline."""

    description: str
    load: Callable[[], Any]


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class Score:
    """One metric's value for the model and for the task's trivial baseline."""

    metric: str
    value: float
    baseline: float


@dataclass(frozen=True)
class Task:
    name: str
    inputs: tuple[str, ...]
    target: str
    head: HeadKind
    data: TokenSplit | ExternalDataset | None
    metrics: tuple[Metric, ...]
    baseline: str  # what the trivial baseline is: "majority class", "mean depth", "chance", ...
    evaluate: Callable[[TaskContext], list[Score]]
    resources: TaskResources | None = None  # None: the job config's default_resources
    description: str = ""
    needs_model: bool = True  # False only for tasks that score no checkpoint (tests of the runner)
    tokenizers: tuple[str, ...] = ()  # modalities whose tokenizer the task loads (config `tokenizers.<m>`)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Every modality the model must know for this task: its inputs and the token folders it reads."""
        split = self.data.modalities if isinstance(self.data, TokenSplit) else ()
        return tuple(dict.fromkeys((*self.inputs, *split)))

    def __post_init__(self) -> None:
        if not self.name or "," in self.name or self.name == "all":
            raise ValueError(f"task name {self.name!r}: non-empty, no commas, not 'all'")
        if not self.metrics:
            raise ValueError(f"task {self.name!r} declares no metric")

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"task {self.name!r} has no metric {name!r}; it has {[m.name for m in self.metrics]}")


TASKS: Registry[Task] = Registry("eval task")


def register_task(task: Task | None = None, /, *, replace: bool = False, **fields: Any) -> Task:
    """Add a task (a `Task`, or its fields as keywords). A name registered twice is an error unless `replace`."""
    task = task if task is not None else Task(**fields)
    return TASKS.register(task.name, task, replace=replace)


def unregister_task(name: str) -> None:
    TASKS.unregister(name)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def all_tasks() -> list[Task]:
    return [TASKS.get(name) for name in sorted(TASKS)]


def select_tasks(names: Iterable[str]) -> list[Task]:
    """('all',) -> every registered task; otherwise the named tasks, in the order given."""
    names = list(names)
    if names == ["all"]:
        return all_tasks()
    return [get_task(name) for name in names]

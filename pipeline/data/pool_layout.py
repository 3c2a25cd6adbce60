"""Who gets the cluster's CPUs and GPUs in a label run: the decode tasks or the model labelers' actor pools.

A recipe may pin a labeler's pool by hand (`concurrency`, `num_cpus`, `num_gpus` in its `LabelerConfig`). A pooled
labeler whose `concurrency` is left unset is laid out by the job, here, from the cluster's resources (fields the
recipe did set are kept):

- **GPUs in the cluster**: every model runs on the accelerator. The models of one run share each GPU (4M-21's
  labelers are 0.1-0.6 B parameters, a small part of one GPU's memory): with n models each actor asks for 1/n of a
  GPU and one CPU to feed it, and each pool autoscales from one actor up to one per GPU. The decode tasks, one CPU
  each, take every CPU the actors leave, so decode scales with the cluster's CPUs.
- **CPUs only**: the models and the decode tasks compete for the same cores, so the split follows each stage's
  cost. A short calibration runs the job's own read and decode stages on the first unit and each model on a few of
  its decoded samples, one thread each (what a Ray worker with a fractional CPU gets: Ray sets OMP_NUM_THREADS=1),
  and every stage gets processes in proportion to its cost per sample (`processes_per_stage`), each 1/k of a CPU so
  that they pack whole into nodes. On the 2-core box this matched the best hand-tuned split within the box's noise
  (BENCHMARKS.md, "Labeling throughput").

The calibration loads each model once in the driver: a second or two for small models, paid once per run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

from pipeline.data.labelers import get_labeler
from pipeline.data.stages import Batch, apply_labeler
from schemas.preprocess import LabelerConfig

DECODE = "decode"
CALIBRATION_SAMPLES = 16  # per model: enough to average out one batch's noise, ~0.1 s of a tiny model
CPU_GRAIN = 1e-4  # Ray's resolution for fractional resources; shares are rounded down to it so that they fit
# Tokenize actors that share one GPU: a tokenizer is a few M parameters, and each task spends much of its time on the
# CPU (reading the shard, decoding members), so a GPU to itself would mostly idle.
TOKENIZE_TASKS_PER_GPU = 4


@dataclasses.dataclass(frozen=True)
class PoolLayout:
    """The resources of a label run's operators: each decode task's CPUs, and every pool's full config."""

    decode_cpus: float
    pools: dict[str, LabelerConfig]
    decode_tasks: int | None = None  # the most decode tasks at once (CPU layout); None: as many as CPUs allow
    costs: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per sample, when calibrated


def processes_per_stage(costs: dict[str, float], slots: int) -> dict[str, int]:
    """Hand out `slots` processes (at least one per stage): each next one goes to the stage that is the slowest at
    that point (highest cost per process), which minimises the pipeline's bottleneck for this many processes."""
    counts = {stage: 1 for stage in costs}
    for _ in range(slots - len(costs)):
        slowest = max(costs, key=lambda stage: costs[stage] / counts[stage])
        counts[slowest] += 1
    return counts


def share(total: float, parts: int) -> float:
    return math.floor(total / parts / CPU_GRAIN) / round(1 / CPU_GRAIN)  # exact in decimal: 0.6666, not ...01


def gpu_layout(auto: dict[str, LabelerConfig], gpus: float) -> dict[str, LabelerConfig]:
    """Every automatic model on the GPUs: 1/n of a GPU per actor for n models, 1 to one actor per GPU each."""
    fraction = share(1.0, len(auto))
    return {modality: config.model_copy(update={
        "concurrency": (1, max(1, int(gpus))),
        "num_gpus": fraction if config.num_gpus is None else config.num_gpus,
        "num_cpus": 1.0 if config.num_cpus is None else config.num_cpus,
    }) for modality, config in auto.items()}


def cpu_layout(auto: dict[str, LabelerConfig], costs: dict[str, float], cpus: float) -> tuple[float, int, dict]:
    """(each decode task's CPUs, how many run at once, the automatic pools) from the stages' costs: processes in
    proportion to cost, as many as CPUs (at least one per stage), each an equal share of a CPU."""
    counts = processes_per_stage(costs, max(round(cpus), len(costs)))
    total = sum(counts.values())
    # Shares of the form 1/k pack whole into nodes of whole CPUs; another share can leave every node a remainder too
    # small for one more process (two 1-CPU nodes hold two 0.6666-CPU processes, not three: the run would hang).
    per_process = 1.0 if total <= cpus else share(1.0, math.ceil(total / cpus))
    pools = {modality: config.model_copy(update={
        "concurrency": counts[modality],
        "num_cpus": per_process if config.num_cpus is None else config.num_cpus,
        "num_gpus": 0.0 if config.num_gpus is None else config.num_gpus,
    }) for modality, config in auto.items()}
    return per_process, counts[DECODE], pools


def calibrate(read: Callable[[Batch], Batch], decode: Callable[[Batch], Batch], unit: Batch,
              models: dict[str, LabelerConfig], storage) -> dict[str, float]:
    """Seconds per sample of the decode tasks (read + decode + fused labelers) and of each model, on one thread,
    measured on the first unit with the job's own stage functions. Loads each model once, in the driver."""
    import torch  # only a run with model labelers gets here; they import torch anyway

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        raw = read(unit)
        read_s = (time.perf_counter() - started) / max(1, len(raw["key"]))
        head = {column: values[:CALIBRATION_SAMPLES + 4] for column, values in raw.items()}
        decode({column: values[:4] for column, values in head.items()})  # first calls into the image libraries
        started = time.perf_counter()
        decoded = decode({column: values[4:] for column, values in head.items()})
        samples = max(1, len(decoded["key"]))
        costs = {DECODE: read_s + (time.perf_counter() - started) / samples}
        for modality, config in models.items():
            labeler = get_labeler(modality)(config.model_copy(update={"num_gpus": 0.0}), storage)
            apply_labeler(dict(decoded), labeler, config.batch_size)  # warm-up: allocator, kernels
            started = time.perf_counter()
            apply_labeler(dict(decoded), labeler, config.batch_size)
            costs[modality] = (time.perf_counter() - started) / samples
    finally:
        torch.set_num_threads(threads)
    return costs


def layout_pools(recipe: dict[str, LabelerConfig], pooled: dict[str, LabelerConfig], resources: dict[str, float],
                 calibration: Callable[[dict[str, LabelerConfig]], dict[str, float]]) -> PoolLayout:
    """The layout of a label run's pools. `recipe` holds the labelers as configured (a modality absent from it is
    all defaults), `pooled` the pools `split_labelers` made, `resources` the cluster's (`ray.cluster_resources()`),
    and `calibration(models)` measures the stages' costs; it is called only on a cluster without GPUs."""
    auto = {m: c for m, c in pooled.items() if recipe.get(m, LabelerConfig()).concurrency is None}
    pinned = {m: c.model_copy(update={"num_cpus": 1.0 if c.num_cpus is None else c.num_cpus,
                                      "num_gpus": c.num_gpus or 0.0})
              for m, c in pooled.items() if m not in auto}
    if not auto:
        return PoolLayout(decode_cpus=1.0, pools=pinned)
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    if gpus > 0:
        return PoolLayout(decode_cpus=1.0, pools={**pinned, **gpu_layout(auto, gpus)})
    # What pinned pools hold is not the automatic stages' to share.
    held = sum(c.num_cpus * (c.concurrency if isinstance(c.concurrency, int) else c.concurrency[0])
               for c in pinned.values())
    costs = calibration(auto)
    decode_cpus, decode_tasks, pools = cpu_layout(auto, costs, max(cpus - held, CPU_GRAIN * len(costs)))
    return PoolLayout(decode_cpus=decode_cpus, pools={**pinned, **pools}, decode_tasks=decode_tasks, costs=costs)


def layout_for_run(config, pooled: dict[str, LabelerConfig], read: Callable[[Batch], Batch],
                   decode: Callable[[Batch], Batch], first_unit: dict) -> PoolLayout:
    """The layout of a label run on the connected cluster, calibrated (without GPUs) on the run's first unit with
    its own read and decode stages. `config` is the run's PreprocessConfig."""
    import numpy as np
    import ray

    unit = {"unit": np.array([first_unit["unit"]], dtype=object)}
    return layout_pools(config.labelers, pooled, ray.cluster_resources(),
                        lambda models: calibrate(read, decode, unit, models, config.storage))


def tokenize_pool(modalities: tuple[str, ...], resources: dict[str, float], shards: int) -> tuple[int, float | None]:
    """(most actors, GPU share per actor) of a tokenize run's actor pool. With GPUs and a neural tokenizer in the
    run, each actor asks for 1/TOKENIZE_TASKS_PER_GPU of a GPU (its encoder runs there, see
    tokenize.on_assigned_gpu) and the pool grows to fill the GPUs; otherwise one CPU per actor, up to every CPU.
    Never more actors than shards: each one pays a tokenizer load."""
    from schemas.modalities import TokenizerFamily, get_modality

    neural = any(get_modality(m).tokenizer is not TokenizerFamily.WORDPIECE for m in modalities)
    gpus = resources.get("GPU", 0)
    if neural and gpus > 0:
        return max(1, min(shards, int(gpus * TOKENIZE_TASKS_PER_GPU))), 1 / TOKENIZE_TASKS_PER_GPU
    return max(1, min(shards, int(resources.get("CPU", 1)))), None

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

Both layouts are checked against each node's CPUs and GPUs, not the cluster's totals (`first_misfit`). Ray Data
starts a pool's actors with the SPREAD strategy and waits for its minimum actors for ever, and a task waits for a
node with room for its whole ask: two half-CPU actors spread over two 1-CPU nodes leave 1 CPU in the cluster but
no node with room for a 1-CPU decode task, and the run hung without a word. So every ask must find a node wherever
Ray has put the actors before it: the decode tasks (and the writer, which asks the same) take the largest share 1/k
of a CPU that does; the automatic pools take the same share; a recipe whose pinned pools leave no room at any share
fails at once, naming them and the nodes.

The calibration loads each model once in the driver: a second or two for small models, paid once per run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable

from pipeline.data.labelers import get_labeler
from pipeline.data.stages import Batch, apply_labeler
from schemas.preprocess import LabelerConfig

DECODE = "decode"
CALIBRATION_SAMPLES = 16  # per model: enough to average out one batch's noise, ~0.1 s of a tiny model
CPU_GRAIN = 1e-4  # Ray's resolution for fractional resources; shares are rounded down to it so that they fit
# The finest CPU share a process is given: 64 processes per core is already far past any speed-up.
MAX_PROCESSES_PER_CPU = 64
# Tokenize actors that share one GPU: a tokenizer is a few M parameters, and each task spends much of its time on the
# CPU (reading the shard, decoding members), so a GPU to itself would mostly idle.
TOKENIZE_TASKS_PER_GPU = 4

Ask = tuple[float, float]  # (CPUs, GPUs) of one process, or of one node


class PoolLayoutError(ValueError):
    """The run's actor pools cannot all be placed on the cluster's nodes with room left for a decode task."""


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


def grains(amount: float) -> int:
    """`amount` of a resource in Ray's units (CPU_GRAIN), so that slots are counted exactly."""
    return round(amount / CPU_GRAIN)


def guaranteed_slots(ask: Ask, held: list[Ask], nodes: list[Ask]) -> int:
    """How many more processes of `ask` the nodes take wherever Ray has put the `held` actors: a lower bound over
    every placement. An actor takes at most ceil(its ask / `ask`) slots from its node (per resource, the most of
    them); with one resource, actors sharing a node take at most ceil(their total / `ask`) + their number - 1."""
    dims = [d for d in (0, 1) if ask[d] > 0]
    if not dims:
        return 1 << 30  # asks for nothing: never waits
    slots = [min(grains(node[d]) // grains(ask[d]) for d in dims) for node in nodes]
    lost = sum(max(-(-grains(actor[d]) // grains(ask[d])) for d in dims) for actor in held)
    if len(dims) == 1 and (sizes := [grains(actor[dims[0]]) for actor in held if actor[dims[0]] > 0]):
        hosts = sum(1 for slot in slots if slot > 0)
        lost = min(lost, -(-sum(sizes) // grains(ask[dims[0]])) + min(len(sizes), hosts) - 1)
    return max(0, sum(slots) - lost)


def first_misfit(actors: list[Ask], task: Ask, nodes: list[Ask]) -> Ask | None:
    """The first ask that some placement Ray may choose leaves with no node, or None: an actor's, every other actor
    placed before it, or the decode task's (`task`; the writer asks the same) once every actor is placed."""
    for ask in dict.fromkeys(actors):
        others = list(actors)
        others.remove(ask)
        if guaranteed_slots(ask, others, nodes) < 1:
            return ask
    return None if guaranteed_slots(task, actors, nodes) >= 1 else task


def min_actors(config: LabelerConfig) -> int:
    """The actors Ray Data starts for a pool before its first block, and waits for (without a time limit)."""
    return config.concurrency if isinstance(config.concurrency, int) else config.concurrency[0]


def actor_asks(pools: dict[str, LabelerConfig]) -> list[Ask]:
    return [(c.num_cpus, c.num_gpus or 0.0) for c in pools.values() for _ in range(min_actors(c))]


def largest_fitting_share(fits: Callable[[float], bool]) -> float | None:
    """The largest share 1/k of a CPU (k = 1 ... MAX_PROCESSES_PER_CPU) for which `fits(share)`, or None."""
    return next((cpus for k in range(1, MAX_PROCESSES_PER_CPU + 1) if fits(cpus := share(1.0, k))), None)


def gpu_layout(auto: dict[str, LabelerConfig], nodes: list[Ask], cpus: float) -> dict[str, LabelerConfig]:
    """Every automatic model on the GPUs: 1/n of a GPU per actor for n models, 1 to one actor per GPU each, and
    `cpus` (one CPU, unless the nodes are short of them) to feed it."""
    fraction, gpus = share(1.0, len(auto)), sum(node[1] for node in nodes)
    return {modality: config.model_copy(update={
        "concurrency": (1, max(1, int(gpus))),
        "num_gpus": fraction if config.num_gpus is None else config.num_gpus,
        "num_cpus": cpus if config.num_cpus is None else config.num_cpus,
    }) for modality, config in auto.items()}


def cpu_layout(auto: dict[str, LabelerConfig], counts: dict[str, int], cpus: float) -> dict[str, LabelerConfig]:
    """The automatic pools of the CPU layout: `counts[modality]` actors of `cpus` each."""
    return {modality: config.model_copy(update={
        "concurrency": counts[modality],
        "num_cpus": cpus if config.num_cpus is None else config.num_cpus,
        "num_gpus": 0.0 if config.num_gpus is None else config.num_gpus,
    }) for modality, config in auto.items()}


def describe_misfit(pinned: dict[str, LabelerConfig], auto: dict[str, LabelerConfig], nodes: list[Ask]) -> str:
    """One line: the pools (pinned ones as the recipe sized them), the nodes, and what to change."""
    def ask(c: LabelerConfig) -> str:
        gpus = f" + {c.num_gpus:g} GPU" if c.num_gpus else ""
        return f"{min_actors(c)} x {c.num_cpus:g} CPU{gpus}"

    named = ", ".join([*(f"{m} ({ask(c)})" for m, c in pinned.items()), *(f"{m} (automatic)" for m in auto)])
    shapes = Counter(f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "") for cpus, gpus in nodes)
    where = ", ".join(f"{count} x {shape}" for shape, count in shapes.items()) or "none with CPUs"
    return (f"labelers {named} cannot all be placed on this cluster's nodes ({where}) with room left for a decode "
            f"task wherever Ray puts their actors: lower their concurrency, num_cpus or num_gpus in "
            f"labelers.<modality>, or use bigger nodes")


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


def layout_pools(recipe: dict[str, LabelerConfig], pooled: dict[str, LabelerConfig], nodes: list[Ask],
                 calibration: Callable[[dict[str, LabelerConfig]], dict[str, float]]) -> PoolLayout:
    """The layout of a label run's pools. `recipe` holds the labelers as configured (a modality absent from it is
    all defaults), `pooled` the pools `split_labelers` made, `nodes` each live node's (CPUs, GPUs)
    (`cluster_nodes`), and `calibration(models)` measures the stages' costs; it is called only on a cluster
    without GPUs. Raises PoolLayoutError, before any calibration, when the pinned pools leave no room."""
    auto = {m: c for m, c in pooled.items() if recipe.get(m, LabelerConfig()).concurrency is None}
    pinned = {m: c.model_copy(update={"num_cpus": 1.0 if c.num_cpus is None else c.num_cpus,
                                      "num_gpus": c.num_gpus or 0.0})
              for m, c in pooled.items() if m not in auto}
    held = actor_asks(pinned)
    # The decode tasks' share with the pinned pools alone: the largest there is, and the first check of the recipe.
    decode_cpus = largest_fitting_share(lambda cpus: first_misfit(held, (cpus, 0.0), nodes) is None)
    if decode_cpus is None:
        raise PoolLayoutError(describe_misfit(pinned, auto, nodes))
    if not auto:
        return PoolLayout(decode_cpus=decode_cpus, pools=pinned)

    def fitting(pools_at: Callable[[float], dict[str, LabelerConfig]], processes: int = 1) -> float:
        """The largest share at which the automatic pools `pools_at(share)` fit around the pinned ones, with room
        for a decode task of that share, and `processes` of that share fit there all at once."""
        cpus = largest_fitting_share(lambda cpus: guaranteed_slots((cpus, 0.0), held, nodes) >= processes and
                                     first_misfit(held + actor_asks(pools_at(cpus)), (cpus, 0.0), nodes) is None)
        if cpus is None:
            raise PoolLayoutError(describe_misfit(pinned, auto, nodes))
        return cpus

    if any(gpus > 0 for _, gpus in nodes):  # one CPU per process unless a node is short of them
        cpus = fitting(lambda cpus: gpu_layout(auto, nodes, cpus))
        return PoolLayout(decode_cpus=cpus, pools={**pinned, **gpu_layout(auto, nodes, cpus)})
    # As many processes as the CPUs the pinned pools leave (at least one per stage), in proportion to cost, at the
    # largest equal share that holds them all on the nodes: shares 1/k pack whole into nodes of whole CPUs.
    costs = calibration(auto)
    free = sum(cpus for cpus, _ in nodes) - sum(cpus for cpus, _ in held)
    counts = processes_per_stage(costs, max(round(free), len(costs)))
    cpus = fitting(lambda cpus: cpu_layout(auto, counts, cpus), sum(counts.values()))
    return PoolLayout(decode_cpus=cpus, pools={**pinned, **cpu_layout(auto, counts, cpus)},
                      decode_tasks=counts[DECODE], costs=costs)


def cluster_nodes() -> list[Ask]:
    """(CPUs, GPUs) of every live node of the connected cluster that has either."""
    import ray

    nodes = [(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
             for node in ray.nodes() if node["Alive"]]
    return [node for node in nodes if node != (0.0, 0.0)]


def layout_for_run(config, pooled: dict[str, LabelerConfig], read: Callable[[Batch], Batch],
                   decode: Callable[[Batch], Batch], first_unit: dict) -> PoolLayout:
    """The layout of a label run on the connected cluster, calibrated (without GPUs) on the run's first unit with
    its own read and decode stages. `config` is the run's PreprocessConfig."""
    import numpy as np

    unit = {"unit": np.array([first_unit["unit"]], dtype=object)}
    return layout_pools(config.labelers, pooled, cluster_nodes(),
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

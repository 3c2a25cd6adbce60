"""A study spec turned into its runs: one `PlannedRun` per (size, budget, seed) with N, D, C and steps, and the
`PretrainConfig` each run trains with. Pure arithmetic, before anything starts: `plan` prints it, `run` runs it,
`status` and the results table read it back, so all four agree on the run ids and numbers."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace

from pipeline.model.flops import training_flops
from pipeline.model.sizes import Dims, param_counts, resolve
from schemas.batch import ModalitySpec
from schemas.model import ModelConfig
from schemas.pretrain import PretrainConfig
from schemas.study import IsoFlopBudgets, StudySpec, budget_label


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    size: str
    budget: str  # the budget's label: C for IsoFLOP designs, D for size x tokens ones
    seed: int
    model: ModelConfig
    dims: Dims
    params_total: int
    params_non_embedding: int
    N: int  # the spec's n_count of the two above
    lr: float
    batch_size: int  # per worker
    global_batch: int  # samples per optimizer step over all workers
    steps: int
    D: int  # input + target token slots over the run's samples
    C: float  # 6 N D
    model_flops: float  # what the run computes (pipeline/model/flops.py: heads and attention included)
    est_seconds: float  # of the steps this run trains itself (a cooldown's only, not its trunk's)
    warmup_steps: int
    # WSD cooldowns: the run whose stable phase this one branches off, at which step; and, on that trunk, the
    # steps its branches start from (extra checkpoints).
    trunk: str | None = None
    branch_step: int = 0
    checkpoint_steps: tuple[int, ...] = ()

    def row(self) -> dict:
        """The run as a flat table row (no model object)."""
        return {"run": self.run_id, "size": self.size, "budget": self.budget, "seed": self.seed,
                "width": self.dims.dim, "depth": f"{self.dims.encoder_depth}+{self.dims.decoder_depth}",
                "N": self.N, "N_total": self.params_total, "N_non_embedding": self.params_non_embedding,
                "D": self.D, "C": self.C, "model_flops": self.model_flops, "steps": self.steps, "lr": self.lr,
                "batch_size": self.batch_size, "global_batch": self.global_batch, "est_seconds": self.est_seconds,
                "trunk": self.trunk, "branch_step": self.branch_step}


def _size_numbers(spec: StudySpec, name: str, model: ModelConfig) -> tuple[Dims, dict[str, int], float]:
    try:
        dims = resolve(model)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"sizes.{name}: {exc}") from None
    sized = spec.pretrain.vocab_sizes
    vocab = [ModalitySpec.from_registry(m, vocab=sized.get(m)).vocab_size for m in spec.modalities]
    counts = param_counts(dims, vocab)
    masking = spec.pretrain.masking
    # Head FLOPs at the modalities' mean vocabulary, as `python -m jobs.sizes` counts them.
    flops = training_flops(dims, masking.input_tokens, masking.target_tokens, sum(vocab) / len(vocab))
    return dims, counts, flops


def learning_rate(spec: StudySpec, size: str, width: int) -> float:
    rule = spec.lr
    return rule.by_size.get(size, rule.base * (rule.base_width / width) ** rule.exponent)


def plan_study(spec: StudySpec) -> list[PlannedRun]:
    """Every run of the study, sizes in spec order, then budgets, then seeds."""
    tokens_per_sample = spec.pretrain.masking.input_tokens + spec.pretrain.masking.target_tokens
    resources = spec.resources
    runs = []
    for size, model in spec.sizes.items():
        dims, counts, flops_per_sample = _size_numbers(spec, size, model)
        non_embedding = counts["params_total"] - counts["params_embeddings_heads"]
        n = non_embedding if spec.n_count == "non_embedding" else counts["params_total"]
        batch = spec.batch.by_size.get(size, spec.batch.batch_size)
        global_batch = batch * resources.workers * spec.pretrain.optim.grad_accumulation
        tokens_per_step = global_batch * tokens_per_sample
        if isinstance(spec.budgets, IsoFlopBudgets):
            budgets = [(budget_label(c), c / (6 * n)) for c in spec.budgets.compute]
        else:
            budgets = [(budget_label(d), float(d)) for d in spec.budgets.tokens]
        for label, tokens in budgets:
            steps = max(1, round(tokens / tokens_per_step))
            if isinstance(spec.budgets, IsoFlopBudgets) and not (
                    spec.budgets.min_steps <= steps <= (spec.budgets.max_steps or steps)):
                continue  # this size does not fit this compute budget
            model_flops = float(steps * global_batch * flops_per_sample)
            for seed in spec.seeds:
                d = steps * tokens_per_step
                runs.append(PlannedRun(
                    run_id=f"{size}_{'C' if isinstance(spec.budgets, IsoFlopBudgets) else 'D'}{label}_s{seed}",
                    size=size, budget=label, seed=seed, model=model, dims=dims,
                    params_total=counts["params_total"], params_non_embedding=non_embedding, N=n,
                    lr=learning_rate(spec, size, dims.dim), batch_size=batch, global_batch=global_batch,
                    steps=steps, D=d, C=6.0 * n * d, model_flops=model_flops,
                    est_seconds=resources.startup_s + steps * resources.step_s
                    + model_flops / (resources.flops_per_worker * resources.workers),
                    warmup_steps=math.ceil(spec.schedule.warmup_fraction * steps)))
    if not runs:
        raise ValueError("no size fits any budget: widen budgets.min_steps/max_steps or change budgets.compute "
                         "(python -m jobs.study plan shows the steps each size would take)")
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two budgets share a label in run ids {sorted(ids)}: make the budgets further apart")
    if spec.schedule.kind == "wsd" and spec.schedule.cooldowns:
        runs = _branch_cooldowns(spec, runs)
    return runs


def _branch_cooldowns(spec: StudySpec, runs: list[PlannedRun]) -> list[PlannedRun]:
    """WSD families: per (size, seed), the longest run is the trunk and every shorter one trains only its cooldown,
    from the trunk's checkpoint where its own decay starts (the stable phase before it is the trunk's, step for step:
    same warmup, same peak rate, same data order). The trunk keeps a checkpoint at each such step."""
    families: dict[tuple[str, int], list[PlannedRun]] = {}
    for run in runs:
        families.setdefault((run.size, run.seed), []).append(run)
    planned = {}
    for members in families.values():
        members = sorted(members, key=lambda r: r.steps)
        trunk = members[-1]
        # Every member warms up as the shortest must, so that their schedules agree up to each branch point.
        warmup = math.ceil(spec.schedule.warmup_fraction * members[0].steps)
        branches = []
        for run in members[:-1]:
            start = run.steps - int(spec.schedule.decay_fraction * run.steps)  # where lr_factor's decay starts
            if start <= warmup:
                raise ValueError(f"{run.run_id}: its cooldown would start at step {start}, inside the warmup "
                                 f"({warmup} steps); lower schedule.warmup_fraction or set schedule.cooldowns false")
            share = (run.steps - start) / run.steps
            cost = run.est_seconds - spec.resources.startup_s
            branches.append(replace(run, warmup_steps=warmup, trunk=trunk.run_id, branch_step=start,
                                    est_seconds=spec.resources.startup_s + share * cost))
        steps = tuple(sorted({b.branch_step for b in branches}))
        for run in [*branches, replace(trunk, warmup_steps=warmup, checkpoint_steps=steps)]:
            planned[run.run_id] = run
    return [planned[r.run_id] for r in runs]


def family(runs: list[PlannedRun], trunk: str) -> list[PlannedRun]:
    """The runs one study trial trains, in order: `trunk`, then the cooldowns branching off it, shortest first."""
    return [r for r in runs if r.run_id == trunk] + sorted((r for r in runs if r.trunk == trunk),
                                                           key=lambda r: r.steps)


def trial_seconds(runs: list[PlannedRun]) -> dict[str, float]:
    """Estimated seconds of each study trial, by the run it is named after: a run alone, or a WSD trunk and the
    cooldowns it trains in turn."""
    seconds: dict[str, float] = {}
    for run in runs:
        seconds[run.trunk or run.run_id] = seconds.get(run.trunk or run.run_id, 0.0) + run.est_seconds
    return seconds


def run_config(spec: StudySpec, run: PlannedRun, *, storage_path: str,
               init_from: str | None = None) -> PretrainConfig:
    """The run's pretrain config: the spec's `pretrain:` section with the study's per-run fields filled in;
    `init_from`: the trunk checkpoint a cooldown starts from."""
    log_every = max(1, run.steps // spec.logs_per_run)
    # Checkpoints on log steps, so that the validation that rides on checkpoint steps has a metrics row to go into.
    checkpoint_every = log_every * max(1, math.ceil(run.steps / spec.checkpoints_per_run / log_every))
    base = spec.pretrain
    schedule = spec.schedule
    update = {
        "name": run.run_id, "data": spec.data, "storage_path": storage_path, "modalities": spec.modalities,
        "workers": spec.resources.workers, "cpus_per_worker": spec.resources.cpus_per_worker,
        "use_gpu": spec.resources.use_gpu, "steps": run.steps, "seed": run.seed, "model": run.model,
        "log_every": log_every, "checkpoint_every": checkpoint_every, "checkpoint_steps": run.checkpoint_steps,
        # a trunk keeps every branch point until its cooldowns have started from them
        "num_to_keep": max(base.num_to_keep, len(run.checkpoint_steps) + spec.checkpoints_per_run),
        "init_from": init_from,
        "optim": base.optim.model_copy(update={
            "lr": run.lr, "warmup_steps": run.warmup_steps,
            "schedule": schedule.kind, "min_lr_ratio": schedule.min_lr_ratio,
            "decay_fraction": schedule.decay_fraction}),
        "loader": base.loader.model_copy(update={"batch_size": run.batch_size, "seed": run.seed}),
    }
    # Through validation, so that the result is checked as a config from a file would be.
    return PretrainConfig.model_validate({**base.model_dump(), **{k: _dumped(v) for k, v in update.items()}})


def _dumped(value):
    return value.model_dump() if hasattr(value, "model_dump") else value


def concurrency(spec: StudySpec, cluster_resources: dict[str, float]) -> int:
    """Runs at once: the spec's, else as many as the cluster holds (each run's workers all at once)."""
    if spec.resources.concurrency is not None:
        return spec.resources.concurrency
    r = spec.resources
    if r.use_gpu:
        return max(1, int(cluster_resources.get("GPU", 0) // r.workers))
    return max(1, int(cluster_resources.get("CPU", 1) // (r.workers * r.cpus_per_worker)))


def makespan(seconds: list[float], slots: int) -> float:
    """Wall time of running jobs of these durations `slots` at a time, longest first (what Tune's FIFO order
    approximates when the plan lists runs in order)."""
    ends = [0.0] * max(1, slots)
    for duration in sorted(seconds, reverse=True):
        heapq.heapreplace(ends, ends[0] + duration)
    return max(ends)

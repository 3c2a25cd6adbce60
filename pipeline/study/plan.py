"""A study spec turned into its runs: one `PlannedRun` per (size, budget, seed) with N, D, C and steps, and the
`PretrainConfig` each run trains with. Pure arithmetic, before anything starts: `plan` prints it, `run` runs it,
`status` and the results table read it back, so all four agree on the run ids and numbers."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

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
    est_seconds: float

    def row(self) -> dict:
        """The run as a flat table row (no model object)."""
        return {"run": self.run_id, "size": self.size, "budget": self.budget, "seed": self.seed,
                "width": self.dims.dim, "depth": f"{self.dims.encoder_depth}+{self.dims.decoder_depth}",
                "N": self.N, "N_total": self.params_total, "N_non_embedding": self.params_non_embedding,
                "D": self.D, "C": self.C, "model_flops": self.model_flops, "steps": self.steps, "lr": self.lr,
                "batch_size": self.batch_size, "global_batch": self.global_batch, "est_seconds": self.est_seconds}


def _size_numbers(spec: StudySpec, name: str, model: ModelConfig) -> tuple[Dims, dict[str, int], float]:
    try:
        dims = resolve(model)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"sizes.{name}: {exc}") from None
    vocab = [ModalitySpec.from_registry(m).vocab_size for m in spec.modalities]
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
                    + model_flops / (resources.flops_per_worker * resources.workers)))
    if not runs:
        raise ValueError("no size fits any budget: widen budgets.min_steps/max_steps or change budgets.compute "
                         "(python -m jobs.study plan shows the steps each size would take)")
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two budgets share a label in run ids {sorted(ids)}: make the budgets further apart")
    return runs


def run_config(spec: StudySpec, run: PlannedRun, *, storage_path: str) -> PretrainConfig:
    """The run's pretrain config: the spec's `pretrain:` section with the study's per-run fields filled in."""
    log_every = max(1, run.steps // spec.logs_per_run)
    # Checkpoints on log steps, so that the validation that rides on checkpoint steps has a metrics row to go into.
    checkpoint_every = log_every * max(1, math.ceil(run.steps / spec.checkpoints_per_run / log_every))
    base = spec.pretrain
    schedule = spec.schedule
    update = {
        "name": run.run_id, "data": spec.data, "storage_path": storage_path, "modalities": spec.modalities,
        "workers": spec.resources.workers, "cpus_per_worker": spec.resources.cpus_per_worker,
        "use_gpu": spec.resources.use_gpu, "steps": run.steps, "seed": run.seed, "model": run.model,
        "log_every": log_every, "checkpoint_every": checkpoint_every,
        "optim": base.optim.model_copy(update={
            "lr": run.lr, "warmup_steps": math.ceil(schedule.warmup_fraction * run.steps),
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

"""What a pretraining worker counts between log rows, and since the run began, reduced over ranks into a metrics row.

`LossSums` keeps loss sums on the device, so that no micro-batch waits for a host sync: the total first, then each
modality's in table order; with their counts the logged total is a mean over all ranks' micro-batches and each
modality's a mean over all ranks' target tokens of it, not one micro-batch of rank 0 (the held-out validation sums
its batches the same way). `MetricsWindow` adds the window's
tokens, samples and model FLOPs (for throughput and MFU) and the run's cumulative counts, which a scaling-law study
plots against: each rank keeps its own totals (saved in its checkpoint), and a row reports their sum over ranks.
With a masking mixture, `StrategyShares` adds the share of the window's samples each strategy masked.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.model.sizes import Dims
from pipeline.train.throughput import batch_flops, mfu
from schemas.batch import STRATEGY, ModalityTable


def gather_rows(values: list[float], device) -> np.ndarray:
    """(world, len(values)): every rank's values, one row per rank in rank order (a collective)."""
    import torch
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    return torch.stack(rows).cpu().numpy()


class LossSums:
    """Sums and counts of the total loss and of each modality's, over the model outputs added since the reset.

    The total is a mean over micro-batches. A modality's loss is a mean over its target tokens: each micro-batch's
    mean is weighted by how many targets of the modality it had, so a modality that a dataset mixture leaves out of
    most of a batch is scored on the tokens that exist, not pulled towards a micro-batch holding three of them. A
    modality with no target in a window has no mean: its key is left out of the row (never a 0)."""

    def __init__(self, table: ModalityTable, device):
        import torch

        self.names = table.names
        self._slot = {name: 1 + i for i, name in enumerate(table.names)}
        self._sums = torch.zeros(len(table) + 1, dtype=torch.float64, device=device)
        self._counts = np.zeros(len(table) + 1)

    def add(self, out, batch: dict[str, np.ndarray]) -> None:
        """One model output (`loss`, `losses` by modality) on `batch` (whose live target slots weight them)."""
        self._sums[0] += out.loss.detach()
        self._counts[0] += 1
        targets = target_counts(batch, len(self.names))
        for name, value in out.losses.items():
            slot = self._slot[name]
            self._sums[slot] += value.detach() * float(targets[slot - 1])
            self._counts[slot] += targets[slot - 1]

    def values(self) -> list[float]:
        """Sums then counts: what ranks gather and add up before `means`."""
        return [*self._sums.tolist(), *self._counts]

    def means(self, summed: np.ndarray, prefix: str) -> dict[str, float]:
        """`values()` added over ranks -> {prefix: total mean, prefix_<modality>: mean} for the modalities with a
        target on some rank (a rank without one adds 0 to both its sum and its count)."""
        sums, counts = np.split(np.asarray(summed, dtype=np.float64), 2)
        keys = (prefix, *(f"{prefix}_{name}" for name in self.names))
        return {key: float(total / count) for key, total, count in zip(keys, sums, counts) if count}

    def reset(self) -> None:
        self._sums.zero_()
        self._counts[:] = 0


class StrategyShares:
    """How many samples each masking strategy masked since the reset, from the strategy index every loader batch
    carries (`mask_strategy`, numpy on the host: counting costs no device sync). Reported only for a run with a
    mixture: without one every sample takes the plain Dirichlet and a share of 1 says nothing."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names if len(names) > 1 else ()
        self._counts = np.zeros(len(self.names))

    def add(self, batch: dict) -> None:
        if self.names:
            self._counts += np.bincount(np.asarray(batch[STRATEGY]), minlength=len(self.names))

    def values(self) -> list[float]:
        return self._counts.tolist()

    def shares(self, summed: np.ndarray) -> dict[str, float]:
        """`values()` added over ranks -> {mask_share_<strategy>: share of the samples}, every strategy, 0 included
        (a plain share above 0 counts the samples no strategy of the mixture fitted)."""
        total = float(np.sum(summed))
        return {f"mask_share_{name}": float(n) / total for name, n in zip(self.names, summed)} if total else {}

    def reset(self) -> None:
        self._counts[:] = 0


def target_counts(batch: dict, modalities: int) -> np.ndarray:
    """Live target slots per modality index of one batch (numpy or CPU tensors: no device sync)."""
    live = ~np.asarray(batch["dec_pad"])
    return np.bincount(np.asarray(batch["dec_modality"])[live], minlength=modalities)


@dataclass
class RunCounts:
    """One rank's cumulative counts since step 0 (restored from its checkpoint on resume). Tokens are live (non-pad)
    slots, as the model's FLOP counter counts them."""

    input_tokens_seen: int = 0
    target_tokens_seen: int = 0
    samples_seen: int = 0
    flops_seen: int = 0

    def add(self, other: RunCounts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_list(self) -> list[float]:
        return [float(v) for v in asdict(self).values()]


def batch_counts(batch: dict[str, np.ndarray], dims: Dims, vocab_sizes: np.ndarray) -> RunCounts:
    """The counts one packed training batch adds."""
    return RunCounts(input_tokens_seen=int((~batch["enc_pad"]).sum()), target_tokens_seen=int((~batch["dec_pad"]).sum()),
                     samples_seen=len(batch["enc_pad"]), flops_seen=batch_flops(dims, batch, vocab_sizes))


class MetricsWindow:
    """One rank's counts since the last row, and since the run began; `row` reduces them over every rank."""

    def __init__(self, table: ModalityTable, dims: Dims, device, total_peak_flops: float,
                 run_counts: RunCounts | None = None, strategies: tuple[str, ...] = ()):
        """`strategies`: the masker's `strategy_names`, whose shares the rows report (none: no shares)."""
        self.dims, self.device, self.total_peak = dims, device, total_peak_flops
        self.vocab_sizes = np.array([s.vocab_size for s in table.specs])
        self.losses = LossSums(table, device)
        self.strategies = StrategyShares(strategies)
        self.run = run_counts or RunCounts()
        self.window = RunCounts()
        self.restart_clock()

    def restart_clock(self) -> None:
        """Time the window from now (after a checkpoint, whose time is not training throughput)."""
        self.started = time.perf_counter()

    def add(self, batch: dict[str, np.ndarray], out) -> None:
        """One micro-batch and the model's output on it."""
        counts = batch_counts(batch, self.dims, self.vocab_sizes)
        self.window.add(counts)
        self.run.add(counts)
        self.losses.add(out, batch)
        self.strategies.add(batch)

    def row(self) -> dict:
        """The metrics row of this window over every rank (a collective: every rank calls it), then a new window.
        Throughput is the window's; `*_seen` are the run's totals."""
        seconds = time.perf_counter() - self.started
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        n, k = len(self.window.as_list()), len(self.strategies.values())
        per_rank = gather_rows([memory, *self.window.as_list(), *self.run.as_list(), *self.strategies.values(),
                                *self.losses.values()], self.device)
        summed = per_rank.sum(axis=0)
        window = dict(zip(self.run.__dataclass_fields__, summed[1:1 + n]))
        run = dict(zip(self.run.__dataclass_fields__, summed[1 + n:1 + 2 * n]))
        tokens = window["input_tokens_seen"] + window["target_tokens_seen"]
        means = self.losses.means(summed[1 + 2 * n + k:], "loss")
        row = {
            "loss": means.pop("loss"), **means, **self.strategies.shares(summed[1 + 2 * n:1 + 2 * n + k]),
            "tokens_per_s": tokens / seconds, "samples_per_s": window["samples_seen"] / seconds,
            "flops_per_s": window["flops_seen"] / seconds, "mfu": mfu(window["flops_seen"], seconds, self.total_peak),
            "peak_flops": self.total_peak,
            "peak_rss_gib": float(per_rank[:, 0].max()), "peak_rss_gib_by_rank": per_rank[:, 0].tolist(),
            "tokens_seen": int(run["input_tokens_seen"] + run["target_tokens_seen"]),
            **{name: int(value) for name, value in run.items()},
        }
        self.losses.reset()
        self.strategies.reset()
        self.window = RunCounts()
        self.restart_clock()
        return row

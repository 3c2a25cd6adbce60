"""One pretraining step and the step cadence every training loop shares."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.train.metrics_window import MetricsWindow


@dataclass(frozen=True)
class Cadence:
    """Which steps end with a log row and which with a checkpoint: every `log_every` and `checkpoint_every` steps,
    and the last one (the configured last step, or an earlier one where a loop stops early)."""

    steps: int
    log_every: int
    checkpoint_every: int
    checkpoint_steps: frozenset[int] = frozenset()  # further checkpoints (a WSD trunk's branch points)

    def logs_at(self, step: int, last: bool = False) -> bool:
        return step % self.log_every == 0 or last or step == self.steps

    def checkpoints_at(self, step: int, last: bool = False) -> bool:
        return step % self.checkpoint_every == 0 or step in self.checkpoint_steps or last or step == self.steps


def endless(loader) -> Iterator[dict]:
    """The loader's batches epoch after epoch: every rank has the same number of batches per epoch, so all roll
    over together."""
    while True:
        produced = False
        for batch in loader:
            produced = True
            yield batch
        if not produced:
            raise RuntimeError("the loader made no batch in a whole epoch: this rank's shards hold fewer samples "
                               "than loader.batch_size")


def train_step(engine, batches: Iterator[dict], micro_batches: int, device, window: MetricsWindow) -> None:
    """One optimizer step: `micro_batches` forward/backward passes, DeepSpeed applying the update after the last.

    Counting steps this way keeps every checkpoint on an update boundary, where no partial gradient exists that the
    checkpoint would lose (DeepSpeed saves none, and a restored engine restarts its micro-step count at 0)."""
    from pipeline.data.loader import to_torch

    for _ in range(micro_batches):
        batch = next(batches)
        out = engine({k: v.to(device) for k, v in to_torch(batch).items()})
        engine.backward(out.loss)
        engine.step()
        window.add(batch, out)

"""Losses of the engine outside training: on the held-out split (`Validator`, what studies compare) and on one
batch anyone can rebuild (`fixed_batch_eval`, what exports are checked against).

Every rank forwards (ZeRO-3 gathers parameters collectively, so no rank may sit out) with the engine in eval mode
and no gradients; neither touches the training loader, the global RNGs or the optimizer, so a run with validation
trains exactly as one without.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from pipeline.train.engine import Worker
from pipeline.train.metrics import print_progress
from pipeline.train.metrics_window import LossSums, gather_rows
from schemas.batch import ModalityTable
from schemas.pretrain import PretrainConfig


def token_loader(config: PretrainConfig, table: ModalityTable, worker: Worker, part: str, **settings):
    """This rank's loader over the `train` or `holdout` part of the token shards (split by key hash at
    `validation.fraction`; in a mixture, of every dataset's), with `settings` overriding the run's loader settings."""
    from pipeline.data.mixture import open_loader

    loader = config.loader.model_copy(update={"holdout_fraction": config.validation.fraction, **settings})
    return open_loader(config.data, table, config.masking, loader, worker.rank, worker.world, config.storage,
                       part=part)


def evaluated(engine, batches: Iterable[dict], device) -> Iterator:
    """The engine's outputs on `batches` in eval mode, without gradients; training mode again afterwards."""
    import torch

    from pipeline.data.loader import to_torch

    engine.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                yield engine({k: v.to(device) for k, v in to_torch(batch).items()})
    finally:
        engine.train()


class Validator:
    """Loss on the held-out samples of this rank's shards, total and per modality, summed over every rank's
    batches. The masks come from `validation.seed`: the same samples with the same masks at every validation and in
    every run of the same data and world size.

    Those batches are fixed, so they are read once, at set-up, and kept: a rank's held-out samples are spread over
    all its shards, and reading them again at every validation would read the rank's whole data each time
    (`validation.max_batches` bounds both the read and the memory)."""

    def __init__(self, config: PretrainConfig, table: ModalityTable, worker: Worker):
        self.config, self.table, self.worker, self.zero_stage = config, table, worker, config.zero.stage
        self.filler: dict | None = None
        # No prefetch thread: the read stops at max_batches and must not leave one reading ahead.
        loader = token_loader(config, table, worker, "holdout", seed=config.validation.seed, prefetch_batches=0)
        count = len(loader) if config.validation.max_batches is None else \
            min(len(loader), config.validation.max_batches)
        try:
            self.batches = list(islice(loader, count))
        except ValueError as exc:  # a small output: this rank's shards hold no held-out sample
            print_progress(f"rank {worker.rank}: no held-out batch to validate on ({exc})")
            self.batches = []
        self.losses = LossSums(table, worker.device)

    def forwards(self) -> int:
        """Forward passes per rank: its own batches, except under ZeRO-3, where every forward is a collective and
        every rank makes as many as the rank with the most."""
        if self.zero_stage < 3:
            return len(self.batches)
        return int(gather_rows([len(self.batches)], self.worker.device).max())

    def __call__(self, engine) -> dict[str, float]:
        """{"val_loss": ..., "val_loss_<modality>": ...}, the same on every rank; empty when no rank had a
        held-out batch."""
        forwards = self.forwards()
        if forwards > len(self.batches) and self.filler is None:
            self.filler = first_batch(self.config, self.table, self.worker)
        # A rank with fewer held-out batches joins the others' forwards on a filler batch, whose loss is not counted.
        batches = self.batches + [self.filler] * (forwards - len(self.batches))
        for index, out in enumerate(evaluated(engine, batches, self.worker.device)):
            if index < len(self.batches):
                self.losses.add(out, batches[index])
        summed = gather_rows(self.losses.values(), self.worker.device).sum(axis=0)
        self.losses.reset()
        return self.losses.means(summed, "val_loss")


def first_batch(config: PretrainConfig, table: ModalityTable, worker: Worker) -> dict:
    """The first batch of this rank's stream from a fresh loader with the run's own loader settings over all its
    samples (no held-out split): a batch anyone can rebuild from the config."""
    from pipeline.data.mixture import open_loader

    settings = config.loader.model_copy(update={"prefetch_batches": 0})
    loader = open_loader(config.data, table, config.masking, settings, worker.rank, worker.world, config.storage)
    return next(iter(loader))


def fixed_batch_eval(engine, config: PretrainConfig, table: ModalityTable, worker: Worker) -> dict[str, float]:
    """The engine's loss on `first_batch`, so that an export can be checked against the engine itself. Rank 0's
    numbers are the ones logged."""
    (out,) = evaluated(engine, [first_batch(config, table, worker)], worker.device)
    return {"eval_loss": float(out.loss), **{f"eval_loss_{name}": float(v) for name, v in out.losses.items()}}

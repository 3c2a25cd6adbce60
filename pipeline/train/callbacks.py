"""Per-step callbacks: code outside the training loop (a study's progress, a test's fault injection) that runs on
every rank at the end of every optimizer step, without the loop knowing what it does.

A callback travels to the workers inside the trainer's loop config, so it must pickle: a module-level function or an
instance of a module-level class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepEnd:
    """Where a worker is: optimizer step `step` (1-based) is done on `rank` of `world`, its metrics row logged and
    its checkpoint reported where the job's cadence has them."""

    step: int
    rank: int
    world: int


StepCallback = Callable[[StepEnd], None]


def notify(callbacks: Sequence[StepCallback], event: StepEnd) -> None:
    for callback in callbacks:
        callback(event)

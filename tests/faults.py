"""Faults the tests inject into training jobs from outside, through the jobs' per-step callbacks
(`pipeline/train/callbacks.py`): production code only calls its callbacks and knows nothing of failures."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import ray.cloudpickle

from pipeline.train.callbacks import StepEnd


@dataclass(frozen=True)
class KillWorkerOnce:
    """The last rank's process dies at the end of `step`, once per `marker` (a file every node of the local test
    cluster sees): a worker lost mid-run, which the job's FailureConfig must recover from."""

    step: int
    marker: str

    def __call__(self, event: StepEnd) -> None:
        if event.step == self.step and event.rank == event.world - 1 and not Path(self.marker).exists():
            Path(self.marker).write_text("failed once")
            os._exit(1)


# Ray's workers cannot import this tests-only module: ship its callbacks to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

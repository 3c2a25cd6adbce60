"""The reference pretrain runs that several test modules read: one fp32 run per ZeRO stage on the session's token
shards, and stage 3's run resumed once in place. Made on first use by the `reference_runs` fixture in conftest.py and
kept for the session: tests/test_pretrain.py compares stages, a killed run and exports against them, and
tests/test_trust_storage.py plants pickles into a copy of the resumed ZeRO-3 run (each run costs ~20-40 s on 2 cores,
so no module trains its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.train.metrics import read_metrics
from pipeline.train.trainer import run_pretrain
from schemas.config import load_config
from schemas.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parent.parent
# fp32, so that ZeRO stages and a resumed run can be compared number for number; two micro-batches of 4 per optimizer
# step (8 samples per rank, as one batch of 8 would be), so that every reference run, and every kill and resume
# compared with one, also checks that checkpoints land between optimizer updates.
REFERENCE = ("optim.warmup_steps=4", "precision=fp32", "optim.grad_accumulation=2", "loader.batch_size=4")
STEPS = [4, 8, 12, 16, 20, 24]  # logged steps; checkpoints at 12 and 24
RESUMED_STEPS = 32  # stage 3's run, rerun under the same name with more steps


def config(tokens: str, root: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data={tokens}", f"storage_path={root / 'runs'}", "steps=24", "log_every=4", "checkpoint_every=12",
        "workers=2", "loader.batch_size=8", "masking.input_tokens=32", "masking.target_tokens=32", *overrides])


class ReferenceRuns:
    """`runs(stage)`: the reference recipe's run under that ZeRO stage, with its root and its metrics as they were
    when it finished (`resumed()` later extends stage 3's run in place). `runs.resumed()`: stage 3's run rerun with
    the same name to `RESUMED_STEPS`, so it resumes from its step-24 checkpoint through the tensors-only loader."""

    def __init__(self, tokens: str, tmp_path_factory: pytest.TempPathFactory):
        self.tokens, self.tmp_path_factory = tokens, tmp_path_factory
        self.runs: dict[int, dict] = {}
        self.rerun: dict | None = None

    def __call__(self, stage: int) -> dict:
        if stage not in self.runs:
            root = self.tmp_path_factory.mktemp(f"stage{stage}")
            summary = run_pretrain(config(self.tokens, root, *REFERENCE, f"zero.stage={stage}"))
            self.runs[stage] = {**summary, "root": root, "log": read_metrics(summary["metrics_file"])}
        return self.runs[stage]

    def resumed(self) -> dict:
        if self.rerun is None:
            first = self(3)
            self.rerun = run_pretrain(config(self.tokens, first["root"], *REFERENCE, "zero.stage=3",
                                             f"steps={RESUMED_STEPS}"))
        return self.rerun

"""The learning-rate schedules (pipeline/train/schedule.py) against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from pipeline.train.schedule import apply_lr, lr_factor
from schemas.pretrain import OptimConfig

# 20 steps, 4 of warmup, floor 0.1 of the peak.
COSINE = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
WSD = OptimConfig(lr=1.0, warmup_steps=4, schedule="wsd", min_lr_ratio=0.1, decay_fraction=0.25)


@pytest.mark.parametrize("step, expected", [
    (0, 0.25), (1, 0.5), (3, 1.0),  # linear warmup to the peak: (step + 1) / 4
    (4, 1.0),  # cosine progress 0
    (8, 0.8681980515339464),  # progress 4/16: 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.1 + 0.45 * 1.7071067811865475
    (12, 0.55),  # progress 1/2: 0.1 + 0.9 * (1 + 0) / 2
    (16, 0.23180194846605362),  # progress 3/4: 0.1 + 0.45 * (1 - 0.7071067811865475)
    (20, 0.1), (25, 0.1),  # the floor, held past the end
])
def test_cosine_warms_up_then_falls_to_its_floor(step, expected):
    assert lr_factor(step, 20, COSINE) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [
    (0, 0.25), (3, 1.0),  # the same warmup
    (4, 1.0), (10, 1.0), (14, 1.0),  # stable until the decay starts at 20 - int(0.25 * 20) = 15
    (15, 1.0), (17, 0.64), (19, 0.28),  # linear over 5 steps: 1 - 0.9 * (step - 15) / 5
    (20, 0.1),
])
def test_wsd_holds_the_peak_then_decays_linearly(step, expected):
    assert lr_factor(step, 20, WSD) == pytest.approx(expected, abs=1e-12)


def test_no_warmup_starts_at_the_peak():
    assert lr_factor(0, 10, OptimConfig(lr=1.0, warmup_steps=0)) == 1.0


def test_apply_lr_sets_every_parameter_group():
    first, second = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([{"params": [first]}, {"params": [second], "weight_decay": 0.0}], lr=123.0)
    optim = OptimConfig(lr=2e-3, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert apply_lr(optimizer, 12, 20, optim) == pytest.approx(2e-3 * 0.55)
    assert [group["lr"] for group in optimizer.param_groups] == [pytest.approx(1.1e-3)] * 2

"""The pretrain-job benchmark runs end to end on the tiny size and reads the job's own metrics: the script that a GPU
node runs for MFU (bench/pretrain_job.py `run`) must work before anyone gets a GPU to run it on. No timing is
asserted here (benchmarks hold targets, not tests)."""

from __future__ import annotations

import math

import pytest

from bench import pretrain_job

pytestmark = pytest.mark.usefixtures("ray_session")


def test_run_prints_throughput_and_mfu_from_the_job_metrics(capsys):
    # 32 + 32 token slots per sample, not the benchmark's 256 + 256: the same script path, with an eighth of the
    # tokens to mask, pack and train (the script alone, back to back on 2 cores: 49 s against 61 s)
    pretrain_job.main(["run", "--size", "tiny", "--workers", "2", "--steps", "4", "--log-every", "2",
                       "--batches", "4", "--samples", "256", "--stage", "3", "--tokens", "32"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    size, precision, device, workers, setting, batch, step_s, tokens_per_s, mfu, rss, _gpu = cells
    assert (size, precision, device, workers, setting, batch) == ("tiny", "fp32", "CPU", "2", "ZeRO-3", "4")
    assert float(step_s) > 0 and float(tokens_per_s) > 0 and float(rss) > 0
    assert 0 < float(mfu.rstrip("%")) < 100 and math.isfinite(float(mfu.rstrip("%")))

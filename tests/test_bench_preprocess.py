"""The preprocess benchmark runs end to end on a small corpus: its three paths (loop, plain processes, Ray Data)
write byte-identical shards, and it prints its table and the profile of where the pipeline's time went. No timing
is asserted (benchmarks hold targets, not tests)."""

from __future__ import annotations

import pytest

from bench import preprocess

pytestmark = pytest.mark.usefixtures("ray_session")


def test_benchmark_paths_agree_and_the_profile_accounts_for_the_run(capsys):
    preprocess.main(["--samples", "96", "--samples-per-unit", "32", "--resolution", "32", "--cpus", "2"])
    out = capsys.readouterr().out
    assert "shards identical=True" in out
    assert "| Ray Data pipeline |" in out and "| 2 plain processes (no Ray) |" in out
    assert "start-up: first unit done after" in out
    roles = {}
    for line in out.split("| process role |")[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        role, seconds, _share = (cell.strip() for cell in line.strip("|").split("|"))
        roles[role] = float(seconds)
    total = roles.pop("all processes")
    assert total > 0 and abs(sum(roles.values()) - total) < 0.1 * len(roles) + 0.1

"""Pretraining on a real local Ray cluster with real DeepSpeed engines, on token shards made by the real pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from faults import KillWorkerOnce
from reference_runs import REFERENCE, RESUMED_STEPS, STEPS, config

from pipeline.train.checkpoint import META, MODEL_JSON, TAG, WEIGHTS
from pipeline.train.metrics import read_metrics
from pipeline.train.trainer import run_pretrain

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def stage_run(reference_runs):
    """One reference run per ZeRO stage (tests/reference_runs.py: 2 micro-batches of 4 per step), made on first use
    and shared by every test that reads it, in this module and others. Its metrics are those read when it
    finished, since a later test resumes stage 3's run in place."""
    return reference_runs


def weights(checkpoint: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(checkpoint, WEIGHTS)))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_loss_falls_under_each_zero_stage_with_every_metric(stage_run, stage):
    run = stage_run(stage)  # one run per test, so that each stays well inside the per-test timeout
    log = run["log"]
    assert run["metrics"]["step"] == 24 and [m["step"] for m in log] == STEPS
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert Path(run["plot"]).stat().st_size > 0 and run["checkpoint"] is not None
    for m in log:  # the metrics, on every logged step
        assert {"loss_caption", "loss_color_palette", "loss_metadata", "lr"} <= set(m)
        assert m["tokens_per_s"] > m["samples_per_s"] > 0 and len(m["peak_rss_gib_by_rank"]) == 2
        assert 0 < m["mfu"] < 1 and m["mfu"] == pytest.approx(m["flops_per_s"] / m["peak_flops"])
    events = list((Path(run["metrics_file"]).parent / "tb").glob("events.out.tfevents.*"))
    assert events and b"mfu" in events[0].read_bytes()
    assert b"by_tokens/loss" in events[0].read_bytes() and b"by_gflops/val_loss" in events[0].read_bytes()


def test_rows_count_what_was_trained_and_validate_on_the_held_out_split(stage_run):
    """The study measurements (issue 18): cumulative counts in every row, held-out losses at the validation steps,
    the run's summary.json, and loss plots against steps, tokens and FLOPs."""
    run = stage_run(2)
    log = run["log"]
    for m in log:
        # 2 workers x 8 samples per step: counted from the batches, not computed from the config
        assert m["samples_seen"] == m["step"] * 2 * 8
        assert m["tokens_seen"] == m["input_tokens_seen"] + m["target_tokens_seen"]
        assert 0 < m["input_tokens_seen"] <= m["samples_seen"] * 32  # masking.input_tokens=32 slots per sample
        assert 0 < m["target_tokens_seen"] <= m["samples_seen"] * 32
    for before, after in zip(log, log[1:]):
        window = after["step"] - before["step"]
        # each window's FLOPs and tokens are what its throughput says it trained
        assert after["flops_seen"] - before["flops_seen"] == pytest.approx(
            after["flops_per_s"] * window * 16 / after["samples_per_s"], rel=1e-6)
        assert after["tokens_seen"] - before["tokens_seen"] == pytest.approx(
            after["tokens_per_s"] * window * 16 / after["samples_per_s"], rel=1e-6)
    # validation at log steps that are checkpoint steps (12) and at the end (24), by default
    assert [m["step"] for m in log if "val_loss" in m] == [12, 24]
    assert log[-1]["val_loss"] < log[2]["val_loss"]  # the held-out loss falls too
    assert {"val_loss_caption", "val_loss_color_palette", "val_loss_metadata"} & set(log[-1])
    summary = json.loads(Path(run["summary_file"]).read_text())
    assert summary["steps"] == 24 and summary["final"] == log[-1]
    assert summary["params_total"] > summary["params_non_embedding"] > 0
    assert {k: run[k] for k in ("params_total", "params_non_embedding")} == {
        k: summary[k] for k in ("params_total", "params_non_embedding")}
    for x in ("step", "tokens", "flops"):
        assert Path(run["plots"][x]).read_bytes().startswith(b"\x89PNG")


def test_zero_stages_follow_the_same_trajectory(stage_run):
    curves = {stage: [m["loss"] for m in stage_run(stage)["log"]] for stage in (0, 1, 2, 3)}
    # Same seed, same data, fp32: partitioning changes only the order of floating-point reductions.
    for stage in (1, 2, 3):
        assert curves[stage] == pytest.approx(curves[0], rel=1e-3), f"stage {stage}"


def test_zero_3_with_cpu_offload_follows_stage_3(stage_run, tokens, tmp_path):
    """Optimizer and parameter offload to CPU (the setting for sizes that do not fit a GPU) with the job's own torch
    AdamW: same recipe, same trajectory as plain stage 3."""
    run = run_pretrain(config(tokens, tmp_path, *REFERENCE, "zero.stage=3", "zero.offload_optimizer=true",
                              "zero.offload_params=true"))
    log = read_metrics(run["metrics_file"])
    assert [m["step"] for m in log] == STEPS
    assert [m["loss"] for m in log] == pytest.approx([m["loss"] for m in stage_run(3)["log"]], rel=1e-3)


def test_killed_worker_resumes_and_ends_where_an_uninterrupted_run_does(stage_run, tokens, tmp_path):
    """With 2 micro-batches per step (the reference recipe), a checkpoint still lands between optimizer updates: a
    worker killed after one resumes and ends bitwise where the uninterrupted run ends (a checkpoint taken
    mid-accumulation would drop the half-accumulated gradient, and the restored engine would also count its
    micro-steps from 0)."""
    kill = KillWorkerOnce(step=18, marker=str(tmp_path / "failed-once"))
    summary = run_pretrain(config(tokens, tmp_path, *REFERENCE, "zero.stage=2", "max_failures=1"), callbacks=[kill])
    assert (tmp_path / "failed-once").exists()  # the worker did die
    assert summary["metrics"]["step"] == 24
    log = read_metrics(summary["metrics_file"])
    # 4, 8, 12 (checkpoint), 16, then the crash at 18 and a restart from 12: 16 is logged twice, then 20, 24
    assert [m["step"] for m in log] == [4, 8, 12, 16, 16, 20, 24]
    # Step 16 before and after the restart: same batch on the same weights, so the loader position, the RNG states
    # and the optimizer came back as they were at step 12.
    assert log[4]["loss"] == pytest.approx(log[3]["loss"], rel=1e-6)
    reference = stage_run(2)  # the same recipe, never interrupted
    assert [m["loss"] for m in log[4:]] == pytest.approx([m["loss"] for m in reference["log"][3:]], rel=1e-6)
    # the cumulative counts came back with the checkpoint, and the held-out loss is the uninterrupted run's
    assert [m["tokens_seen"] for m in log[4:]] == [m["tokens_seen"] for m in reference["log"][3:]]
    assert [m["flops_seen"] for m in log[4:]] == [m["flops_seen"] for m in reference["log"][3:]]
    assert log[-1]["val_loss"] == pytest.approx(reference["log"][-1]["val_loss"], rel=1e-6)
    ours, theirs = weights(summary["checkpoint"]), weights(reference["checkpoint"])
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # 24 steps of 2 micro-batches: 48 batches of 4 per rank, six whole epochs of the rank's 32 samples, both runs
    for run in (summary, reference):
        meta = json.loads(Path(run["checkpoint"], META).read_text())
        assert [(meta["loaders"][r]["epoch"], meta["loaders"][r]["batches"]) for r in "01"] == [(6, 0), (6, 0)]


def test_rerun_with_the_same_name_resumes_from_its_latest_checkpoint(stage_run):
    """Stage 3's run rerun with more steps (its ZeRO-3 states, one file per rank, are read back by the tensors-only
    loader: tests/test_trust_storage.py plants pickles into a copy of this run)."""
    first, rerun = stage_run(3), stage_run.resumed()
    assert rerun["metrics_file"] == first["metrics_file"]  # the same run directory
    log = read_metrics(rerun["metrics_file"])
    assert log[:len(first["log"])] == first["log"]
    resumed = log[len(first["log"]):]
    assert [m["step"] for m in resumed] == [28, 32]  # from step 24's checkpoint, not from step 0
    assert resumed[0]["loss"] < 0.8 * first["log"][0]["loss"]  # trained weights, not a fresh model
    assert rerun["metrics"]["step"] == RESUMED_STEPS
    assert json.loads(Path(rerun["checkpoint"], MODEL_JSON).read_text())["step"] == RESUMED_STEPS


def test_export_after_stage_3_matches_deepspeed_and_the_engine(stage_run, tokens, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from jobs.export import main as export_main
    from pipeline.data.loader import TokenShardLoader, to_torch
    from pipeline.eval.checkpoint import load_exported

    run = stage_run(3)
    out = tmp_path / "export" / "tiny.safetensors"
    assert export_main(["--checkpoint", run["checkpoint"], "--out", str(out)]) == 0
    model, table, meta = load_exported(str(out))
    assert meta["step"] == 24 and table.names == ("caption", "color_palette", "metadata")
    # DeepSpeed's own zero_to_fp32 over the ZeRO-3 shards we just wrote gives the same weights
    theirs = get_fp32_state_dict_from_zero_checkpoint(run["checkpoint"], tag=TAG)
    ours = model.state_dict()
    assert set(theirs) == set(ours)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor.float())
    # The engine's loss at the end of training on rank 0's first batch (logged with the last step); the plain model
    # gives the same on that batch, rebuilt here.
    recipe = config(tokens, tmp_path, *REFERENCE, "zero.stage=3")
    batch = next(iter(TokenShardLoader(tokens, table, recipe.masking, recipe.loader, rank=0, world_size=2)))
    with torch.no_grad():
        out = model(to_torch(batch))
    final = run["log"][-1]
    assert float(out.loss) == pytest.approx(final["eval_loss"], rel=1e-5)
    for name, loss in out.losses.items():
        assert float(loss) == pytest.approx(final[f"eval_loss_{name}"], rel=1e-5)



@pytest.fixture(scope="module")
def bf16_s3_run(tokens, s3_endpoint, tmp_path_factory):
    """One short bf16 ZeRO-2 run whose storage_path is a bucket, shared by the bf16-export and the S3 tests."""
    from conftest import new_bucket

    bucket, storage_overrides = new_bucket(s3_endpoint)
    recipe = config(tokens, tmp_path_factory.mktemp("bf16"), "precision=bf16", "zero.stage=2", "steps=8",
                    "checkpoint_every=8", *storage_overrides)
    recipe = recipe.model_copy(update={"storage_path": f"s3://{bucket}/runs"})
    return {"summary": run_pretrain(recipe), "config": recipe, "run": f"s3://{bucket}/runs/{recipe.name}"}


def test_bf16_export_is_the_fp32_master_copy_deepspeed_recovers(bf16_s3_run, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from pipeline.data.storage import Storage

    remote = Storage(bf16_s3_run["summary"]["checkpoint"], bf16_s3_run["config"].storage)
    for relpath in remote.list():  # zero_to_fp32 reads a local directory
        Path(tmp_path, relpath).parent.mkdir(parents=True, exist_ok=True)
        Path(tmp_path, relpath).write_bytes(remote.read_bytes(relpath))
    ours = weights(str(tmp_path))
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path), tag=TAG)
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype == torch.float32 and torch.equal(ours[name], tensor), name
    # Trained master weights carry more bits than bf16: an export of the 16-bit copy could not match.
    assert any(not torch.equal(t, t.bfloat16().float()) for t in ours.values())


def test_metrics_and_checkpoints_go_to_s3_storage(bf16_s3_run):
    from pipeline.data.storage import Storage

    summary, storage = bf16_s3_run["summary"], bf16_s3_run["config"].storage
    run = Storage(bf16_s3_run["run"], storage)
    assert summary["metrics_file"] == run.uri("metrics.jsonl") and summary["plot"] == run.uri("loss.png")
    assert [m["step"] for m in read_metrics(summary["metrics_file"], storage)] == [4, 8]
    assert run.read_bytes("loss.png").startswith(b"\x89PNG")
    assert any(p.startswith("tb/events.out.tfevents.") and b"mfu" in run.read_bytes(p) for p in run.list("tb"))
    assert summary["checkpoint"].startswith(f"{bf16_s3_run['run']}/checkpoint_")
    checkpoint = Storage(summary["checkpoint"], storage)
    assert checkpoint.exists(WEIGHTS) and json.loads(checkpoint.read_bytes(MODEL_JSON))["step"] == 8

"""Scaling-law studies: the spec, the plan's numbers, and real studies on the local Ray cluster (Ray Tune trials, each
a real pretrain run at micro size): a study whose driver is killed mid-way resumes to the table an uninterrupted
study makes, and a run that fails is retried, then recorded as failed with its error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from jobs.sizes import zero_bytes
from jobs.study import main as study_main
from jobs.study import plan_text
from pipeline.data.storage import Storage
from pipeline.model.flops import training_flops
from pipeline.model.sizes import param_counts, resolve
from pipeline.study.plan import family, plan_study, run_config
from pipeline.study.records import RUNS, read_record, study_storage
from pipeline.study.results import TIMING_COLUMNS, fit_table, run_metrics
from pipeline.study.runner import run_study
from pipeline.train.metrics import METRICS, read_metrics
from schemas.batch import ModalitySpec
from schemas.config import ConfigError, load_config
from schemas.study import StudySpec

REPO = Path(__file__).resolve().parent.parent
TEXT = ("caption", "color_palette", "metadata")
# The micro study: widths 16-32 at one block each, 1 worker per run, one at a time, 64-token samples (32 in, 32 out),
# 16 steps of 8 samples (8192 tokens), metrics every 4 steps, checkpoints at 8 and 16.
MICRO_YAML = """
name: micro
sizes:
  d16: {size: custom, dim: 16, encoder_depth: 1, decoder_depth: 1, heads: 2}
  d24: {size: custom, dim: 24, encoder_depth: 1, decoder_depth: 1, heads: 2}
  d32: {size: custom, dim: 32, encoder_depth: 1, decoder_depth: 1, heads: 2}
budgets: {kind: tokens, tokens: [8192]}
batch: {batch_size: 8}
logs_per_run: 4
checkpoints_per_run: 2
resources: {workers: 1, concurrency: 1, retries: 0}
pretrain:
  masking: {input_tokens: 32, target_tokens: 32}
  zero: {stage: 1}
  peak_flops: 1.0e+11
"""
MICRO = yaml.safe_load(MICRO_YAML)


def spec(**fields) -> StudySpec:
    """The micro study with some sections replaced or (for mappings) updated."""
    merged = dict(MICRO)
    for key, value in fields.items():
        updates_section = isinstance(value, dict) and key in ("resources", "pretrain")
        merged[key] = {**merged[key], **value} if updates_section else value
    return StudySpec.model_validate(merged)


# ---- the spec ----------------------------------------------------------------------------------------------------

def write_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, message", [
    ("sizes: [tiny]\nbudgets: {kind: tokens, tokens: [1000]}\nseedz: [1]",
     "seedz: unknown key (did you mean 'seeds'?)"),
    ("sizes: [tiny]\nbudgets: {kind: flops, compute: [1e12]}", "budgets"),
    ("sizes: [tiny]\nbudgets: {kind: tokens, tokens: [1000]}\npretrain: {steps: 5, optim: {lr: 0.1}}",
     "pretrain.steps, pretrain.optim.lr: set by the study"),
    ("sizes: [tiny]\nbudgets: {kind: tokens, tokens: [1000]}\nlr: {by_size: {S: 0.1}}", "unknown sizes ['S']"),
    ("sizes: [tiny]\nbudgets: {kind: tokens, tokens: [1000]}\nseeds: [1, 1]", "seeds repeat"),
    ("sizes: {a_b: {size: tiny}}\nbudgets: {kind: tokens, tokens: [1000]}", "size names may hold"),
    ("sizes: {x: {size: custom, dim: 16}}\nbudgets: {kind: tokens, tokens: [1000]}", "size custom needs"),
    ("sizes: [tiny]\nbudgets: {kind: isoflop, compute: [1e12], min_steps: 10, max_steps: 5}", "below min_steps"),
    ("sizes: [tiny]\nbudgets: {kind: tokens, tokens: [1000]}\nmodalities: [smell]", "smell"),
])
def test_spec_errors_name_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError) as error:
        load_config(StudySpec, write_spec(tmp_path, f"name: s\n{body}\n"))
    assert message in str(error.value)


def test_the_job_fails_with_one_line(tmp_path):
    path = write_spec(tmp_path, "name: s\nsizes: [tiny]\nbudgets: {kind: isoflop, compute: [1e3]}\n")
    done = subprocess.run([sys.executable, "-m", "jobs.study", "plan", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: no size fits any budget") and done.stderr.count("\n") == 1


def test_the_shipped_specs_plan(capsys):
    for path in sorted((REPO / "configs/study").glob("*.yaml")):
        assert study_main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "estimated:" in out


# ---- the plan ----------------------------------------------------------------------------------------------------

def test_plan_numbers_follow_the_size_formulas():
    sizes = {**MICRO["sizes"], "tiny": {"size": "tiny"}}
    study = spec(sizes=sizes, seeds=[0, 3],
                 budgets={"kind": "isoflop", "compute": [2e9, 2e10], "min_steps": 4, "max_steps": 200},
                 lr={"base": 2e-3, "base_width": 32, "exponent": 1.0, "by_size": {"tiny": 5e-4}},
                 batch={"batch_size": 8, "by_size": {"d16": 4}}, resources={"workers": 2})
    runs = plan_study(study)
    vocab = [ModalitySpec.from_registry(m).vocab_size for m in TEXT]
    expected = set()
    for size, model in study.sizes.items():
        dims = resolve(model)
        counts = param_counts(dims, vocab)
        n = counts["params_encoder"] + counts["params_decoder"]  # without embeddings and heads
        batch = 4 if size == "d16" else 8
        for label, compute in (("2e9", 2e9), ("2e10", 2e10)):
            # IsoFLOP: D = C / (6 N) tokens, in whole steps of 2 workers x batch x 64 tokens
            steps = round(compute / (6 * n) / (2 * batch * 64))
            if not 4 <= steps <= 200:
                continue
            expected.add((size, label))
            for run in (r for r in runs if (r.size, r.budget) == (size, label)):
                assert (run.params_total, run.params_non_embedding, run.N) == (counts["params_total"], n, n)
                assert (run.batch_size, run.global_batch, run.steps) == (batch, 2 * batch, steps)
                assert run.D == steps * 2 * batch * 64 and run.C == 6 * n * run.D
                assert run.C == pytest.approx(compute, rel=0.5 / steps)
                flops = training_flops(dims, 32, 32, sum(vocab) / len(vocab))  # jobs.sizes' head vocabulary
                assert run.model_flops == steps * 2 * batch * flops
                assert run.lr == (5e-4 if size == "tiny" else 2e-3 * 32 / dims.dim)
                assert run.run_id == f"{size}_C{label}_s{run.seed}"
    assert {(r.size, r.budget) for r in runs} == expected and len(runs) == 2 * len(expected)  # both seeds
    assert 0 < len(expected) < 8  # the step bounds left some (size, budget) pairs out
    tiny = next(r for r in runs if r.size == "tiny")
    assert f"{zero_bytes(tiny.params_total, 2)['zero1'] / 1e9:.3f}GB" in plan_text(study, runs, slots=2)


def test_each_run_is_the_pretrain_section_plus_the_studys_fields():
    study = spec(data="/data", schedule={"kind": "wsd", "warmup_fraction": 0.25, "decay_fraction": 0.5},
                 pretrain={**MICRO["pretrain"], "optim": {"weight_decay": 0.2}})
    run = plan_study(study)[0]
    config = run_config(study, run, storage_path="/study/runs")
    assert (config.name, config.data, config.storage_path, config.steps, config.seed) == (
        run.run_id, "/data", "/study/runs", 16, 0)
    assert config.model == study.sizes[run.size] and config.loader.batch_size == 8 and config.workers == 1
    assert (config.optim.schedule, config.optim.warmup_steps, config.optim.decay_fraction) == ("wsd", 4, 0.5)
    assert config.optim.weight_decay == 0.2 and config.masking.input_tokens == 32  # from the pretrain section
    assert (config.log_every, config.checkpoint_every) == (4, 8)


def test_wsd_cooldowns_branch_off_the_longest_run_of_each_size():
    """One run per size trains through; each shorter budget trains only its cooldown, from the trunk's checkpoint
    where its own decay starts, so three budgets cost 64 + 4 + 8 steps instead of 16 + 32 + 64."""
    study = spec(budgets={"kind": "tokens", "tokens": [8192, 16384, 32768]},
                 schedule={"kind": "wsd", "warmup_fraction": 0.1, "decay_fraction": 0.25})
    runs = {r.run_id: r for r in plan_study(study)}
    trunk = runs["d16_D3.28e4_s0"]
    assert trunk.trunk is None and trunk.checkpoint_steps == (12, 24) and trunk.steps == 64
    assert [(runs[r].trunk, runs[r].branch_step) for r in ("d16_D8192_s0", "d16_D1.64e4_s0")] == [
        (trunk.run_id, 12), (trunk.run_id, 24)]
    assert {r.warmup_steps for r in runs.values() if r.size == "d16"} == {2}  # the shortest run's warmup, for all
    assert [r.run_id for r in family(list(runs.values()), trunk.run_id)] == [
        trunk.run_id, "d16_D8192_s0", "d16_D1.64e4_s0"]
    config = run_config(study, trunk, storage_path="/runs")
    assert config.checkpoint_steps == (12, 24) and config.num_to_keep >= 4
    branch = run_config(study, runs["d16_D8192_s0"], storage_path="/runs", init_from="/runs/x/checkpoint_1")
    assert branch.init_from == "/runs/x/checkpoint_1" and branch.optim.warmup_steps == 2 and branch.steps == 16
    plain = {r.run_id: r for r in plan_study(spec(budgets={"kind": "tokens", "tokens": [8192, 16384, 32768]},
                                                  schedule={"kind": "wsd", "cooldowns": False}))}
    assert all(r.trunk is None for r in plain.values()) and plain["d16_D8192_s0"].warmup_steps == 1
    # a cooldown is planned at its share of the steps (start-up aside)
    assert runs["d16_D1.64e4_s0"].est_seconds - 20 == pytest.approx(0.25 * (plain["d16_D1.64e4_s0"].est_seconds - 20))


def test_a_cooldown_trains_on_from_its_trunk_beside_a_failing_run(ray_session, tokens, tmp_path):
    """Two WSD families on the cluster, 2 runs at a time. d16's runs: the cooldown's first step is its trunk's next
    one (same data order, same counts: its tokens_seen at step 16 is the trunk's), at a decaying rate where the trunk
    holds its peak; an evaluation task runs on each run's final checkpoint and lands in the table. d24's trunk cannot
    start: it is retried, then recorded as failed with its error (its cooldown with it), while d16's family, beside
    it, finishes untouched. One study for both, since each run costs a Ray Train start-up (~20 s on 2 cores)."""
    study = spec(data=tokens, sizes={k: MICRO["sizes"][k] for k in ("d16", "d24")},
                 budgets={"kind": "tokens", "tokens": [8192, 16384]},
                 schedule={"kind": "wsd", "warmup_fraction": 0.1, "decay_fraction": 0.25}, logs_per_run=4,
                 evaluation={"tasks": ["largest_shape_from_caption"]},
                 resources={"workers": 1, "concurrency": 2, "retries": 1})
    folder = study_storage(study, str(tmp_path))
    # d24's trunk's run directory is taken by a file (as a broken copy might leave it): that run cannot start, ever.
    failed = "d24_D1.64e4_s0"
    (tmp_path / "micro" / RUNS).mkdir(parents=True)
    (tmp_path / "micro" / RUNS / failed).write_text("not a directory")
    lines = []
    table = run_study(study, folder, cluster_resources=ray_session["resources"], progress=lines.append).set_index("run")
    d16 = table[table["size"] == "d16"]
    assert len(d16) == 2 and (d16["status"] == "done").all() and (d16["attempts"] == 1).all(), d16[["status", "error"]]
    trunk, cooldown = run_metrics(folder, "d16_D1.64e4_s0"), run_metrics(folder, "d16_D8192_s0")
    assert [row["step"] for row in cooldown] == [16]  # steps 13-16 only: 1-12 are the trunk's
    at_16 = next(row for row in trunk if row["step"] == 16)
    assert cooldown[0]["tokens_seen"] == at_16["tokens_seen"] and cooldown[0]["samples_seen"] == at_16["samples_seen"]
    assert cooldown[0]["lr"] < 0.5 * at_16["lr"] and cooldown[0]["loss"] != at_16["loss"]
    assert math.isfinite(table.loc["d16_D8192_s0", "val_loss"])
    accuracy = [c for c in table.columns if c.startswith("eval_largest_shape_from_caption")]
    assert accuracy and d16[accuracy].notna().all().all(), list(table.columns)
    assert "4 runs in 2 trials" in lines[0]
    assert any("started d16_D1.64e4_s0" in line for line in lines)  # the trunk's trial, which trains its cooldown
    # the failing family
    assert table.loc[failed, "status"] == "failed" and table.loc[failed, "attempts"] == 2
    record = read_record(folder, failed)
    assert len(record.errors) == 2 and all(failed in error for error in record.errors)
    assert table.loc[failed, "error"] and table.loc[failed, "error"] in record.errors[-1]
    assert table.loc["d24_D8192_s0", "status"] == "failed"  # the cooldown of a trunk that never trained
    written = pd.read_parquet(tmp_path / "micro" / "results.parquet").set_index("run")
    assert written.loc[failed, "status"] == "failed" and written.loc[failed, "error"] == table.loc[failed, "error"]


def test_a_study_results_table_maps_onto_the_fit_columns(tmp_path):
    """`fit` on a study's table: N = the chosen count, loss = final validation loss, loss_<modality> per modality;
    unfinished runs are left out. The runs follow a known law, so the fit must find its exponent."""
    rng = np.random.default_rng(0)
    n, d = np.repeat([1e4, 3e4, 1e5, 3e5], 4), np.tile([1e5, 3e5, 1e6, 3e6], 4)

    def law(alpha: float) -> np.ndarray:
        return 1.5 + 400 / n**alpha + 900 / d**0.3

    table = pd.DataFrame({"run": [f"r{i}" for i in range(16)], "status": ["done"] * 15 + ["failed"],
                          "N_non_embedding": n, "N_total": n * 30, "D": d, "C": 6 * n * d,
                          "val_loss": law(0.35) * np.exp(rng.normal(0, 0.002, 16)), "val_loss_caption": law(0.4),
                          "best_val_loss": 0.0})
    mapped = fit_table(table)
    assert list(mapped.columns) == ["run", "N", "D", "C", "loss", "loss_caption"] and len(mapped) == 15
    assert (mapped["N"] == n[:15]).all() and (fit_table(table, "total")["N"] == n[:15] * 30).all()
    table.to_csv(tmp_path / "results.csv", index=False)
    assert study_main(["fit", str(tmp_path / "results.csv"), "--bootstrap", "20"]) == 0
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert fit["parameters"]["alpha"]["value"] == pytest.approx(0.35, abs=0.05)
    assert (tmp_path / "fit" / "report.md").exists()


# ---- real studies ------------------------------------------------------------------------------------------------

def comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in TIMING_COLUMNS if c in table]).sort_values("run").reset_index(drop=True)


def raw_steps(folder: Storage, run: str) -> list[int]:
    """Every logged step of a run's metrics.jsonl, repeats included (a resumed run logs again after its checkpoint)."""
    return [row["step"] for row in read_metrics(folder.uri(f"{RUNS}/{run}/{METRICS}"), folder.config)]


def has_checkpoint(folder: Storage, run: str) -> bool:
    """Whether Ray Train has registered a checkpoint of the run (its snapshot lists it), so a restart resumes it."""
    snapshot = f"{RUNS}/{run}/checkpoint_manager_snapshot.json"
    return folder.exists(snapshot) and b"checkpoint_dir_name" in folder.read_bytes(snapshot)


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tokens, tmp_path_factory):
    """The micro study run start to end by this process: (spec, study folder, results table)."""
    study = spec(data=tokens)
    folder = study_storage(study, str(tmp_path_factory.mktemp("uninterrupted")))
    table = run_study(study, folder, cluster_resources=ray_session["resources"], progress=lambda _: None)
    return study, folder, table


def losses(folder: Storage, run: str) -> list[tuple]:
    return [(row["step"], row["loss"], row.get("val_loss")) for row in run_metrics(folder, run)]


def test_a_killed_study_resumes_without_repeating_finished_runs(uninterrupted, ray_cluster, tokens, tmp_path):
    study, reference_folder, reference = uninterrupted
    assert (reference["status"] == "done").all() and (reference["attempts"] == 1).all()
    folder = study_storage(study, str(tmp_path))
    log = tmp_path / "driver.log"
    with log.open("w") as output:  # the driver keeps its own copy of the file
        driver = subprocess.Popen(
            [sys.executable, "-m", "jobs.study", "run", str(write_spec(tmp_path, MICRO_YAML)), "--storage",
             str(tmp_path), "--data", tokens, "--address", ray_cluster.address], cwd=REPO, stdout=output,
            stderr=subprocess.STDOUT)
    try:  # kill the driver once a run is done and the next one is past its first checkpoint
        deadline = time.monotonic() + 300
        while True:
            assert driver.poll() is None, f"the study ended before it could be interrupted: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no run reached a checkpoint in 300 s"
            records = {r.run_id: read_record(folder, r.run_id) for r in plan_study(study)}
            done = [run for run, record in records.items() if record and record.status == "done"]
            running = [run for run, record in records.items()
                       if record and record.status == "running" and has_checkpoint(folder, run)]
            if done and running:
                break
            time.sleep(0.1)
        assert driver.poll() is None  # still running when killed
        driver.kill()
        driver.wait(timeout=30)
    finally:
        driver.kill()
    interrupted = running[0]
    before = {run: raw_steps(folder, run) for run in done}
    assert read_record(folder, interrupted).status == "running" and max(raw_steps(folder, interrupted)) < 16
    # The premise of comparing a resumed study with an uninterrupted one: a run trained twice (once by each study,
    # from scratch both times) gives the same losses, exactly.
    for run in done:
        assert losses(folder, run) == losses(reference_folder, run), run

    table = run_study(study, folder, cluster_resources={"CPU": 3}, progress=lambda _: None)
    attempts = dict(zip(table["run"], table["attempts"]))
    assert all(attempts[run] == 1 and raw_steps(folder, run) == before[run] for run in done)  # not repeated
    assert attempts[interrupted] == 2  # started again, from its checkpoint at step 8, not from scratch:
    steps = raw_steps(folder, interrupted)
    assert steps.count(4) == steps.count(8) == 1 and sorted(set(steps)) == [4, 8, 12, 16]
    assert (table["status"] == "done").all()
    pd.testing.assert_frame_equal(comparable(table), comparable(reference), check_exact=False, rtol=1e-5)
    assert all(table.set_index("run").loc[run, "val_loss"] == reference.set_index("run").loc[run, "val_loss"]
               for run in done)


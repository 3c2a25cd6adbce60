"""The evaluate job on a model the real pipeline trained (tests/trained_model.py): the sample corpus preprocessed
with its ground-truth depth and semseg and Canny edges, tokenized (WordPiece for text, tiny random-weight conv
tokenizers for the maps), a tiny model pretrained briefly with Ray Train + DeepSpeed and exported; then every
built-in task it can be scored on runs end to end, and `--tasks all` skips the others saying why."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import ray

from jobs import evaluate as evaluate_job
from trained_model import MAPS

pytestmark = pytest.mark.cluster

PROBES = ("object_count_from_palette", "largest_shape_from_caption")
DECODING = ("rgb_to_depth", "rgb_to_semseg", "rgb_to_canny_edge", "rgb_to_caption", "rgb_to_metadata",
            "caption_to_rgb", "digits_probe")
# Decoded targets the trained model has no data, tokens or tokenizer for.
UNTRAINED = {"rgb_to_normal": "normal", "rgb_to_clip_feature": "clip_feature",
             "rgb_to_dinov2_feature": "dinov2_feature", "rgb_to_dinov2_global": "dinov2_global",
             "caption_to_caption_embedding": "caption_embedding"}


@pytest.fixture
def trained(trained_tiny: SimpleNamespace) -> SimpleNamespace:
    return trained_tiny


def evaluate(trained: SimpleNamespace, tasks: tuple[str, ...], out: Path, *overrides: str) -> tuple[int, dict]:
    image_tokenizers = ", ".join(f"{m}: {trained.tokenizers[m]}" for m in MAPS)
    argv = ["--checkpoint", trained.model, "--tasks", ",".join(tasks), "--data", trained.data, "--out", str(out),
            "--address", ray.get_runtime_context().gcs_address, "--set", f"tokenizers={{{image_tokenizers}}}"]
    code = evaluate_job.main(argv + [arg for override in overrides for arg in ("--set", override)])
    rows = pq.read_table(out / "results.parquet").to_pylist()
    return code, {(row["task"], row["metric"]): row for row in rows}


def test_trained_tiny_model_beats_the_trivial_baseline_on_the_probes(trained, tmp_path):
    code, rows = evaluate(trained, PROBES, tmp_path)
    assert code == 0
    for task in PROBES:
        row = rows[(task, "accuracy")]
        assert row["status"] == "ok" and row["step"] == 40  # the step the export records
        assert row["value"] > row["baseline"] + 0.05, (task, row["value"], row["baseline"])


def test_decoding_and_digits_tasks_run_end_to_end(trained, tmp_path):
    code, rows = evaluate(trained, DECODING, tmp_path, "probe.max_samples=300")
    assert code == 0, [row["error"] for row in rows.values() if row["status"] != "ok"]
    perplexities = {("rgb_to_caption", "perplexity"), ("rgb_to_metadata", "perplexity")}
    expected = {("rgb_to_depth", "abs_rel"), ("rgb_to_depth", "delta1"), ("rgb_to_semseg", "miou"),
                ("rgb_to_canny_edge", "f1"), ("rgb_to_caption", "token_accuracy"),
                ("rgb_to_metadata", "token_accuracy"), ("caption_to_rgb", "token_accuracy"),
                ("digits_probe", "accuracy"), *perplexities}
    assert set(rows) == expected
    for row in rows.values():
        assert math.isfinite(row["value"]) and math.isfinite(row["baseline"]), row
    for task, metric in expected - {("rgb_to_depth", "abs_rel"), *perplexities}:
        assert 0 <= rows[(task, metric)]["value"] <= 1 and 0 <= rows[(task, metric)]["baseline"] <= 1
    for key in perplexities:
        assert rows[key]["value"] >= 1 and rows[key]["baseline"] >= 1
    # The sample scenes have edges, so the edge baseline is all-edge: F1 2r / (1 + r) > 0 at edge rate r.
    edges = rows[("rgb_to_canny_edge", "f1")]
    assert edges["baseline_kind"] == "better of all-positive and all-negative" and 0 < edges["baseline"] < 1


def test_all_skips_what_the_run_lacks_and_says_why(trained):
    from pipeline.eval.registry import HeadKind, Metric, TokenSplit, Task, get_task
    from pipeline.eval.report import markdown_table
    from pipeline.eval.runner import RunInventory, any_failed, drop_unmet, skipped_row, unmet_requirements
    from schemas.evaluate import EvaluateConfig

    config = EvaluateConfig(data=trained.data, checkpoints=(trained.model,),
                            tokenizers={"rgb": trained.tokenizers["rgb"]})
    run = RunInventory.of(config, trained.model)
    assert unmet_requirements(get_task("rgb_to_caption"), run) == []
    assert unmet_requirements(get_task("rgb_to_depth"), run) == [
        "no tokenizer given for ['depth'] (tokenizers.<modality>)"]
    normals = Task(name="normals_probe", inputs=("normal",), target="x", head=HeadKind.LINEAR_PROBE,
                   data=TokenSplit(("normal",), ("annotations",)), metrics=(Metric("accuracy", True),),
                   baseline="majority class", evaluate=lambda ctx: [])
    assert unmet_requirements(normals, run) == [
        "the model was not trained on ['normal']", "the data has no ['tok_normal'] folders"]
    rows = [skipped_row(normals, trained.model, unmet_requirements(normals, run))]
    assert not any_failed(rows) and rows[0]["status"] == "skipped"
    assert "skipped normals_probe: the model was not trained on ['normal']" in markdown_table(rows)
    runnable, skipped = drop_unmet(config, [get_task("rgb_to_caption"), get_task("rgb_to_depth")], lambda _: None)
    assert [t.name for t in runnable] == ["rgb_to_caption"]
    assert [(r["task"], r["status"]) for r in skipped] == [("rgb_to_depth", "skipped")]


def test_all_runs_the_new_decoding_tasks_and_skips_the_untrained_targets(trained):
    """What `--tasks all` selects on the trained model, given every tokenizer it has: edges and metadata run;
    normals, CLIP/DINOv2 features and globals, and caption embeddings are skipped, each naming all it lacks."""
    from pipeline.eval.registry import select_tasks
    from pipeline.eval.runner import drop_unmet
    from schemas.evaluate import EvaluateConfig

    config = EvaluateConfig(data=trained.data, checkpoints=(trained.model,), tasks=("all",),
                            tokenizers={m: trained.tokenizers[m] for m in MAPS})
    runnable, skipped = drop_unmet(config, select_tasks(["all"]), lambda _: None)
    assert set(DECODING) - {"digits_probe"} <= {t.name for t in runnable}
    reasons = {row["task"]: row["error"] for row in skipped}
    for task, target in UNTRAINED.items():
        assert reasons[task] == (f"the model was not trained on ['{target}']; the data has no ['tok_{target}', "
                                 f"'{target}'] folders; no tokenizer given for ['{target}'] (tokenizers.<modality>)")

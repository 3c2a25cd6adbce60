"""The evaluate job on a model the real pipeline trained: the sample corpus preprocessed with its ground-truth depth
and semseg, tokenized (WordPiece for text, tiny random-weight conv tokenizers for the maps), a tiny model
pretrained briefly with Ray Train + DeepSpeed and exported; then every built-in task runs on it end to end."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import ray
import torch

from jobs import evaluate as evaluate_job
from jobs.demo import TEXT_VOCAB
from pipeline.data.inspect import iter_members
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from pipeline.tokenizers import train_wordpiece
from pipeline.tokenizers.codecs import read_member
from pipeline.tokenizers.fit import new_tokenizer
from pipeline.train.export import export_checkpoint
from pipeline.train.trainer import run_pretrain
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig
from schemas.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.cluster

TEXT = ("caption", "color_palette", "metadata")
MAPS = ("rgb", "depth", "semseg")
# 32 px -> 8x8 tokens
TINY_IMAGE = {"widths": (8, 8, 8), "blocks": 0, "quantizer": {"levels": (4, 4, 3)}}
PROBES = ("object_count_from_palette", "largest_shape_from_caption")
DECODING = ("rgb_to_depth", "rgb_to_semseg", "rgb_to_caption", "caption_to_rgb", "digits_probe")


def random_image_tokenizer(storage: Storage, modality: str, directory: Path) -> str:
    """Untrained: its codes are still a fixed function of the map, which is all the eval tasks need of it. Fitted
    on every sample so that a class map's tokenizer knows every class."""
    samples = [read_member(modality, payload) for _, payload in iter_members(storage, modality)]
    torch.manual_seed(0)  # the same tokens every run, so the model trained on them is the same too
    return str(new_tokenizer(modality, f"test/{modality}", samples, TINY_IMAGE).save(directory / modality))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("eval-trained")
    write_corpus(SampleCorpusConfig(out=str(root / "corpus"), samples=160, image_size=32, samples_per_shard=40))
    label = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml", [
        f"input={root / 'corpus'}", f"output={root / 'shards'}", "image.resolution=32",
        f"modalities=[{', '.join(MAPS + TEXT)}]", "labelers.depth.source=ground_truth",
        "labelers.semseg.source=ground_truth"])
    run_preprocess(label, log=lambda _: None)
    storage = Storage(label.output, StorageConfig())
    captions = [p.decode() for _, p in iter_members(storage, "caption")]
    wordpiece = str(train_wordpiece(captions, vocab_size=TEXT_VOCAB).save(root / "wordpiece"))
    tokenizers = {**{m: wordpiece for m in TEXT}, **{m: random_image_tokenizer(storage, m, root) for m in MAPS}}
    run_preprocess(label.model_copy(update={"stages": ("tokenize",), "tokenizers": tokenizers}), log=lambda _: None)
    pretrain = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data={label.output}", f"storage_path={root / 'runs'}", f"modalities=[{', '.join(TEXT + MAPS)}]",
        "steps=40", "checkpoint_every=40", "log_every=20", "optim.warmup_steps=6"])
    summary = run_pretrain(pretrain)
    model = str(root / "models" / "tiny.safetensors")
    export_checkpoint(summary["checkpoint"], model)
    return SimpleNamespace(data=label.output, model=model, tokenizers=tokenizers, root=root)


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
    expected = {("rgb_to_depth", "abs_rel"), ("rgb_to_depth", "delta1"), ("rgb_to_semseg", "miou"),
                ("rgb_to_caption", "token_accuracy"), ("rgb_to_caption", "perplexity"),
                ("caption_to_rgb", "token_accuracy"), ("digits_probe", "accuracy")}
    assert set(rows) == expected
    for row in rows.values():
        assert math.isfinite(row["value"]) and math.isfinite(row["baseline"]), row
    for task, metric in expected - {("rgb_to_depth", "abs_rel"), ("rgb_to_caption", "perplexity")}:
        assert 0 <= rows[(task, metric)]["value"] <= 1 and 0 <= rows[(task, metric)]["baseline"] <= 1
    assert rows[("rgb_to_caption", "perplexity")]["value"] >= 1


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
    edges = Task(name="edges_probe", inputs=("canny_edge",), target="x", head=HeadKind.LINEAR_PROBE,
                 data=TokenSplit(("canny_edge",), ("annotations",)), metrics=(Metric("accuracy", True),),
                 baseline="majority class", evaluate=lambda ctx: [])
    assert unmet_requirements(edges, run) == [
        "the model was not trained on ['canny_edge']", "the data has no ['tok_canny_edge'] folders"]
    rows = [skipped_row(edges, trained.model, unmet_requirements(edges, run))]
    assert not any_failed(rows) and rows[0]["status"] == "skipped"
    assert "skipped edges_probe: the model was not trained on ['canny_edge']" in markdown_table(rows)
    runnable, skipped = drop_unmet(config, [get_task("rgb_to_caption"), get_task("rgb_to_depth")], lambda _: None)
    assert [t.name for t in runnable] == ["rgb_to_caption"]
    assert [(r["task"], r["status"]) for r in skipped] == [("rgb_to_depth", "skipped")]

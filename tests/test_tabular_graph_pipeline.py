"""Tables and graphs the whole way on a local Ray cluster: the offline corpus plus malformed files through the real
preprocess job (`primary: tabular` / `graph`), the tokenizer fitted by `jobs.train_tokenizer`, the tokenize stage,
and the modality's eval tasks on a tiny (untrained) model. Nothing is lost; malformed files are quarantined with
their reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.train_tokenizer import main as train_tokenizer
from pipeline.data.inspect import iter_members
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus.graph import write_graph_corpus
from pipeline.data.sample_corpus.tabular import TARGETS, write_tabular_corpus
from pipeline.data.storage import Storage
from pipeline.eval.checkpoint import EvalModel
from pipeline.eval.context import TaskContext
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, get_task, register_task, unregister_task
from pipeline.eval.runner import any_failed, evaluate_task
from pipeline.eval.tasks import graphs, tables  # noqa: F401  (registers the tasks)
from pipeline.model import build_model
from schemas.batch import ModalitySpec, ModalityTable
from schemas.common import StorageConfig
from schemas.evaluate import EvaluateConfig, ProbeConfig
from schemas.model import ModelConfig
from schemas.preprocess import PreprocessConfig

pytestmark = pytest.mark.usefixtures("ray_session")


def run_modality(tmp_path: Path, primary: str, raw: dict, bad: dict[str, bytes]) -> tuple[dict, PreprocessConfig, str]:
    """Label the corpus in tmp_path/in (plus the `bad` files), fit the tokenizer, tokenize; (label report, config,
    tokenizer dir)."""
    for name, data in bad.items():
        (tmp_path / "in" / name).write_bytes(data)
    label = PreprocessConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), primary=primary,
                             modalities=(primary, "caption"), raw={primary: raw})
    report = run_preprocess(label, log=lambda _: None)
    tokenizer = str(tmp_path / "tokenizer")
    assert train_tokenizer(["--modality", primary, "--input", label.output, "--output", tokenizer]) == 0
    tokenize = label.model_copy(update={"stages": ("tokenize",), "tokenizers": {primary: tokenizer}})
    run_preprocess(tokenize, log=lambda _: None)
    return report, label, tokenizer


def check_quarantine(out: str, report: dict, bad: dict[str, bytes], samples: int) -> None:
    quarantined = pq.read_table(Path(out) / "quarantine" / "quarantine.parquet").to_pylist()
    assert sorted(q["source_key"] for q in quarantined) == sorted(Path(name).stem for name in bad)
    assert {q["reason"] for q in quarantined} == {"bad_raw"} and all(q["detail"] for q in quarantined)
    assert report["samples_written"] == samples and report["samples_quarantined"] == len(bad)


def scores_of(task: str, out: str, tokenizer: str, modality: str, tokens: int) -> dict[str, tuple[float, float]]:
    """The task's scores on a tiny untrained model: the task runs end to end on real token shards."""
    import torch

    torch.manual_seed(0)
    config = EvaluateConfig(data=out, tokenizers={modality: tokenizer}, probe=ProbeConfig(steps=50))
    context = TaskContext(get_task(task), None, config)
    table = ModalityTable.of([ModalitySpec.from_registry(modality, tokens)])
    context.model = EvalModel(build_model(ModelConfig(size="tiny"), table).eval(), table)
    return {s.metric: (s.value, s.baseline) for s in get_task(task).evaluate(context)}


def test_tables_through_preprocess_tokenizer_and_tasks(tmp_path):
    for path in write_tabular_corpus(tmp_path / "in"):
        if path.stem not in ("iris", "diabetes"):  # two tables keep the test cheap: one of each task kind
            path.unlink()
    bad = {"ragged.csv": b"a,b\n1,2\n3\n", "junk.parquet": b"PAR1\x00\x01 junk", "text.csv": b"bmi,species\ntall,x\n"}
    report, label, tokenizer = run_modality(tmp_path, "tabular", {"target": list(TARGETS), "numeric": ["bmi"]}, bad)
    check_quarantine(label.output, report, bad, 150 + 442)
    captions = {key: text.decode() for key, text in iter_members(Storage(label.output, StorageConfig()), "caption")}
    assert captions["iris_r000000"] in ("setosa", "versicolor", "virginica")
    metrics = json.loads(Path(tokenizer, "metrics.json").read_text())
    assert metrics["family"] == "table_bins" and metrics["fit_samples"] + metrics["held_out"]["samples"] == 592
    assert metrics["held_out"]["numeric_mae_over_std"] < 0.1 and metrics["held_out"]["categorical_accuracy"] == 1.0
    iris = scores_of("tabular_iris", label.output, tokenizer, "tabular", 16)
    accuracy, majority = iris["accuracy"]
    assert 0 <= accuracy <= 1 and 0.2 < majority < 0.6  # three balanced classes
    diabetes = scores_of("tabular_diabetes", label.output, tokenizer, "tabular", 16)
    mae, mean_mae = diabetes["mae"]
    assert math.isfinite(mae) and 40 < mean_mae < 90  # the target's spread: 25..346
    with pytest.raises(DataUnmet, match="sample corpus's wine table"):  # the data holds no wine rows
        scores_of("tabular_wine", label.output, tokenizer, "tabular", 16)


def _not_the_sample_corpus(ctx):
    raise DataUnmet("too few rows of the sample corpus's wine table")


def test_a_task_whose_data_is_unmet_is_skipped_under_all_and_fails_when_named():
    register_task(name="test_unmet", inputs=(), target="none", head=HeadKind.NONE, data=None,
                  metrics=(Metric("accuracy", True),), baseline="none", evaluate=_not_the_sample_corpus,
                  needs_model=False, replace=True)
    try:
        (skipped,) = evaluate_task(get_task("test_unmet"), None, EvaluateConfig())  # tasks: all
        (failed,) = evaluate_task(get_task("test_unmet"), None, EvaluateConfig(tasks=("test_unmet",)))
    finally:
        unregister_task("test_unmet")
    assert skipped["status"] == "skipped" and not any_failed([skipped])
    assert skipped["error"] == "too few rows of the sample corpus's wine table"
    assert failed["status"] == "failed" and "DataUnmet" in failed["error"]


def test_graphs_through_preprocess_tokenizer_and_task(tmp_path):
    write_graph_corpus(tmp_path / "in", samples=36)
    pair = [nx.node_link_data(nx.path_graph(4), edges="edges"), nx.node_link_data(nx.cycle_graph(5), edges="edges")]
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><graphml><graph><node id="&a;"/></graph></graphml>'
    bad = {"bomb.graphml": bomb, "words.edgelist": b"a b heavy\n", "nan.json": b'{"nodes": [{"id": NaN}]}'}
    (tmp_path / "in" / "pair.json").write_text(json.dumps(pair))
    report, label, tokenizer = run_modality(tmp_path, "graph", {}, bad)
    check_quarantine(label.output, report, bad, 36 + 4 + 2)
    keys = [key for key, _ in iter_members(Storage(label.output, StorageConfig()), "graph")]
    assert {"pair_g000000", "pair_g000001", "karate_club"} <= set(keys)
    metrics = json.loads(Path(tokenizer, "metrics.json").read_text())
    assert metrics["family"] == "graph_seq" and metrics["held_out"]["exact_recovery"] == 1.0
    accuracy, majority = scores_of("graph_family", label.output, tokenizer, "graph", 256)["accuracy"]
    assert 0 <= accuracy <= 1 and 0 < majority < 0.5  # six families in turn
    assert np.isfinite(accuracy)

"""The label run's CPU/GPU split between decode tasks and model actor pools (pipeline/data/pool_layout.py), and the
4M-21 GPU recipe that relies on it."""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from model_weights import save_tiny_model

from pipeline.data.labelers import LABELERS
from pipeline.data.output_checks import STATE_FILE
from pipeline.data.pool_layout import (
    DECODE,
    PoolLayoutError,
    calibrate,
    grains,
    guaranteed_slots,
    layout_pools,
    processes_per_stage,
    tokenize_pool,
)
from pipeline.data.preprocess import run_preprocess, split_labelers
from pipeline.data.readers import list_units
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.stages import decode_stage, read_stage
from pipeline.data.storage import Storage
from schemas.common import StorageConfig
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import PreprocessConfig

REPO = Path(__file__).resolve().parent.parent
MODELS = ("depth", "dinov2_feature")
ONE_CPU_NODES = [(1.0, 0.0)] * 2  # the session cluster's workers (tests/conftest.py), as (CPUs, GPUs)


def never_calibrate(models):
    raise AssertionError("a GPU cluster or a pinned recipe needs no calibration")


def recipe(tmp_path, *overrides: str) -> PreprocessConfig:
    weights = [f"labelers.{m}.weights={tmp_path / m}" for m in MODELS]
    return load_config(PreprocessConfig, None, [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
                                                f"modalities=[rgb, caption, {', '.join(MODELS)}]",
                                                *weights, *overrides])


def test_processes_go_to_the_slowest_stage_first():
    costs = {DECODE: 3.0, "depth": 9.0, "dinov2_feature": 11.0}
    assert processes_per_stage(costs, 3) == {DECODE: 1, "depth": 1, "dinov2_feature": 1}
    assert processes_per_stage(costs, 6) == {DECODE: 1, "depth": 2, "dinov2_feature": 3}
    assert processes_per_stage({DECODE: 10.0, "depth": 1.0}, 8) == {DECODE: 7, "depth": 1}


def test_cpu_only_split_follows_the_calibrated_costs_and_fits_the_cpus(tmp_path):
    config = recipe(tmp_path)
    pooled = split_labelers(config, config.modalities).pooled
    costs = {DECODE: 2.0, "depth": 6.0, "dinov2_feature": 2.0}
    layout = layout_pools(config.labelers, pooled, [(8.0, 0.0)], lambda models: {**costs})
    assert {m: c.concurrency for m, c in layout.pools.items()} == {"depth": 4, "dinov2_feature": 2}
    assert all(c.num_gpus == 0 and c.num_cpus == layout.decode_cpus for c in layout.pools.values())
    decode_processes = 2  # 8 processes in all, one per CPU
    held = sum(c.concurrency * c.num_cpus for c in layout.pools.values()) + decode_processes * layout.decode_cpus
    assert held <= 8.0 and layout.costs == costs
    assert layout.decode_tasks == decode_processes
    # Fewer CPUs than stages: one process each, at half a CPU, so that they also fit on two 1-CPU nodes.
    small = layout_pools(config.labelers, pooled, ONE_CPU_NODES, lambda models: {**costs})
    assert all(c.concurrency == 1 and c.num_cpus == 0.5 for c in small.pools.values())
    assert small.decode_cpus == 0.5 and small.decode_tasks == 1


def test_gpu_cluster_puts_every_model_on_the_gpus_without_calibrating(tmp_path):
    config = recipe(tmp_path)
    pooled = split_labelers(config, config.modalities).pooled
    layout = layout_pools(config.labelers, pooled, [(8.0, 1.0)] * 8, never_calibrate)
    assert layout.decode_cpus == 1.0
    for pool in layout.pools.values():
        assert pool.num_gpus == 0.5 and pool.num_cpus == 1.0 and pool.concurrency == (1, 8)


def test_what_the_recipe_pins_is_kept(tmp_path):
    config = recipe(tmp_path, "labelers.depth.concurrency=2", "labelers.depth.num_cpus=0.5",
                    "labelers.dinov2_feature.num_cpus=0.25")
    pooled = split_labelers(config, config.modalities).pooled
    layout = layout_pools(config.labelers, pooled, [(4.0, 0.0)],
                          lambda models: {DECODE: 1.0, **dict.fromkeys(models, 1.0)})
    assert (layout.pools["depth"].concurrency, layout.pools["depth"].num_cpus) == (2, 0.5)
    # dinov2 is automatic (no concurrency) but keeps the CPU share it was given; the 3 CPUs left are split in 3.
    assert layout.pools["dinov2_feature"].num_cpus == 0.25 and layout.pools["dinov2_feature"].concurrency == 1
    assert layout.decode_cpus == pytest.approx(1.0, abs=1e-3)
    pinned = recipe(tmp_path, *(f"labelers.{m}.concurrency=1" for m in MODELS))
    layout = layout_pools(pinned.labelers, split_labelers(pinned, pinned.modalities).pooled, [(4.0, 0.0)],
                          never_calibrate)
    assert layout.decode_cpus == 1.0 and all(c.num_cpus == 1.0 and c.num_gpus == 0 for c in layout.pools.values())


def test_guaranteed_slots_never_exceed_the_worst_placement():
    """Against every placement of a few actors on a few nodes (the exhaustive reference): the bound is never more
    than what the worst one leaves, and on these cases it is exactly that."""
    def worst(ask, held, nodes):
        left = []
        for placement in itertools.product(range(len(nodes)), repeat=len(held)):
            free = [[grains(x) for x in node] for node in nodes]
            for actor, n in zip(held, placement):
                free[n] = [f - grains(a) for f, a in zip(free[n], actor)]
            if all(f >= 0 for node in free for f in node):
                left.append(sum(min(f // grains(a) for f, a in zip(node, ask) if a) for node in free))
        return min(left)

    cases = [((1.0, 0), [(0.5, 0)] * 2, [(1.0, 0)] * 2, 0),  # the hang: half-CPU actors spread, no whole CPU left
             ((0.5, 0), [(0.5, 0)] * 2, [(1.0, 0)] * 2, 2),
             ((1.0, 0), [(0.75, 0)] * 4, [(4.0, 0)], 1),  # one node: only the total matters
             ((0.5, 0), [(0.6, 0)] * 3, [(1.0, 0)] * 4, 2),
             ((1.0, 0.5), [(1.0, 0.5), (0.5, 0.25)], [(2.0, 1.0), (4.0, 0.0)], 0)]
    for ask, held, nodes, expected in cases:
        assert guaranteed_slots(ask, held, nodes) == worst(ask, held, nodes) == expected


def test_pinned_half_cpu_pools_leave_the_decode_tasks_half_a_cpu(tmp_path):
    """Two pools pinned at 1 actor x 0.5 CPU on two 1-CPU nodes: Ray spreads the actors, so a 1-CPU decode task
    (the old fixed size) found no node and the run hung; the decode tasks now take the half CPU each node has."""
    config = recipe(tmp_path, *(f"labelers.{m}.{k}={v}" for m in MODELS for k, v in (("concurrency", 1),
                                                                                    ("num_cpus", 0.5))))
    layout = layout_pools(config.labelers, split_labelers(config, config.modalities).pooled, ONE_CPU_NODES,
                          never_calibrate)
    assert layout.decode_cpus == 0.5 and all(c.num_cpus == 0.5 for c in layout.pools.values())


def test_pinned_pools_that_cannot_fit_fail_at_once_naming_them(tmp_path):
    config = recipe(tmp_path, *(f"labelers.{m}.concurrency=1" for m in MODELS))  # 1 CPU each, by default
    with pytest.raises(PoolLayoutError) as refused:
        layout_pools(config.labelers, split_labelers(config, config.modalities).pooled, ONE_CPU_NODES,
                     never_calibrate)
    assert str(refused.value).startswith("labelers depth (1 x 1 CPU), dinov2_feature (1 x 1 CPU) cannot all be "
                                         "placed on this cluster's nodes (2 x 1 CPU)")
    mixed = recipe(tmp_path, "labelers.depth.concurrency=2")  # dinov2 automatic: refused before calibrating
    with pytest.raises(PoolLayoutError, match=r"depth \(2 x 1 CPU\), dinov2_feature \(automatic\)"):
        layout_pools(mixed.labelers, split_labelers(mixed, mixed.modalities).pooled, ONE_CPU_NODES, never_calibrate)
    on_gpu = recipe(tmp_path, "labelers.depth.concurrency=1", "labelers.depth.num_gpus=0.5")
    with pytest.raises(PoolLayoutError, match=r"depth \(1 x 1 CPU \+ 0.5 GPU\)"):  # a cluster without GPUs
        layout_pools(on_gpu.labelers, split_labelers(on_gpu, on_gpu.modalities).pooled, [(4.0, 0.0)],
                     never_calibrate)


def test_automatic_pools_fit_node_by_node_not_by_the_total(tmp_path):
    """Depth pinned at 3 x 0.6 CPU on four 1-CPU nodes leaves 2.2 CPUs, which the old layout filled with whole-CPU
    processes (one DINOv2 actor, one decode task); spread, the actors leave one whole CPU, so decode never ran."""
    config = recipe(tmp_path, "labelers.depth.concurrency=3", "labelers.depth.num_cpus=0.6")
    pooled = split_labelers(config, config.modalities).pooled
    layout = layout_pools(config.labelers, pooled, [(1.0, 0.0)] * 4,
                          lambda models: {DECODE: 1.0, "dinov2_feature": 1.0})
    assert (layout.decode_cpus, layout.decode_tasks) == (0.5, 1)
    assert (layout.pools["dinov2_feature"].num_cpus, layout.pools["dinov2_feature"].concurrency) == (0.5, 1)
    # A GPU node short of CPUs: one CPU per model actor would leave none for the decode tasks.
    auto = recipe(tmp_path)
    layout = layout_pools(auto.labelers, split_labelers(auto, auto.modalities).pooled, [(2.0, 1.0)], never_calibrate)
    assert layout.decode_cpus == 0.5
    assert all((c.num_cpus, c.num_gpus, c.concurrency) == (0.5, 0.5, (1, 1)) for c in layout.pools.values())


def test_calibration_times_the_jobs_own_stages(tmp_path):
    write_corpus(SampleCorpusConfig(out=str(tmp_path / "in"), samples=24, image_size=64, samples_per_shard=24))
    for modality in MODELS:
        save_tiny_model(modality, tmp_path / modality)
    config = recipe(tmp_path, "image.resolution=32")
    labels = split_labelers(config, config.modalities)
    source = Storage(config.input, StorageConfig())
    read = partial(read_stage, storage=source, config=config.reader)
    decode = partial(decode_stage, image=config.image, caption=config.caption, fused=labels.fused)
    unit = {"unit": np.array([dataclasses.asdict(list_units(source, config.reader)[0])], dtype=object)}
    costs = calibrate(read, decode, unit, labels.pooled, config.storage)
    assert set(costs) == {DECODE, *MODELS} and all(0 < seconds < 1 for seconds in costs.values())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The sample corpus (2 units of 8) in `in/` and the tiny models in `<modality>/`, for `recipe`."""
    root = tmp_path_factory.mktemp("pool-layout")
    write_corpus(SampleCorpusConfig(out=str(root / "in"), samples=16, image_size=64, samples_per_shard=8))
    for modality in MODELS:
        save_tiny_model(modality, root / modality)
    return root


def test_a_label_run_lays_out_its_own_pools(inputs, tmp_path, ray_session):
    """No concurrency, num_cpus or num_gpus anywhere in the recipe: the run sizes its pools and completes."""
    config = recipe(inputs, "image.resolution=32", f"output={tmp_path / 'out'}")
    assert run_preprocess(config, log=lambda _: None)["samples_written"] == 16


@pytest.mark.timeout(300)  # it hung before the decode tasks' share followed the nodes: fail, never stall the suite
def test_half_cpu_pools_pinned_by_hand_finish_on_one_cpu_nodes(inputs, tmp_path, ray_session):
    """Each model pinned at 1 actor x 0.5 CPU on the session cluster's two 1-CPU nodes (Ray's state during the old
    hang: one actor per node, 0.5 CPU free on each, the 1-CPU decode task PENDING_NODE_ASSIGNMENT for ever)."""
    config = recipe(inputs, "image.resolution=32", f"output={tmp_path / 'out'}",
                    *(f"labelers.{m}.{k}={v}" for m in MODELS for k, v in (("concurrency", 1), ("num_cpus", 0.5))))
    assert run_preprocess(config, log=lambda _: None)["samples_written"] == 16


@pytest.mark.timeout(120)
def test_pinned_pools_too_big_for_the_nodes_fail_before_any_output(inputs, tmp_path, ray_session):
    output = tmp_path / "out"
    config = recipe(inputs, f"output={output}", *(f"labelers.{m}.concurrency=1" for m in MODELS))
    with pytest.raises(PoolLayoutError, match=r"^labelers depth \(1 x 1 CPU\), dinov2_feature \(1 x 1 CPU\) "
                                              r"cannot all be placed on this cluster's nodes \(2 x 1 CPU\)[^\n]*$"):
        run_preprocess(config, log=lambda _: None)
    # Only the run's plan (written before any unit starts) is there: no shard, no unit record, no manifest.
    assert [p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()] == [STATE_FILE]


def test_4m21_recipe_labels_every_implemented_image_labeler_on_gpus():
    config = load_config(PreprocessConfig, REPO / "configs/preprocess/4m21.yaml")
    models = {name for name in LABELERS.names() if LABELERS.get(name).needs_pool}
    assert models <= set(config.modalities)  # every model labeler there is
    labels = split_labelers(config, config.modalities)
    assert set(labels.pooled) == models
    assert all(config.labelers[m].weights.startswith("s3://YOUR-BUCKET/weights/") for m in models)
    assert set(config.tokenizers) == set(config.modalities)
    layout = layout_pools(config.labelers, labels.pooled, [(12.0, 1.0)] * 8, never_calibrate)
    assert all(0 < pool.num_gpus < 1 and pool.concurrency == (1, 8) for pool in layout.pools.values())
    assert sum(pool.num_gpus for pool in layout.pools.values()) <= 1.0  # one actor of each model fits on one GPU


def test_tokenize_actors_take_a_gpu_share_only_for_neural_tokenizers_on_a_gpu_cluster():
    assert tokenize_pool(("rgb", "caption"), {"CPU": 96.0, "GPU": 8.0}, 1000) == (32, 0.25)  # 4 per GPU
    assert tokenize_pool(("caption", "metadata"), {"CPU": 96.0, "GPU": 8.0}, 1000) == (96, None)  # no network
    assert tokenize_pool(("rgb",), {"CPU": 2.0}, 1000) == (2, None)
    assert tokenize_pool(("rgb",), {"CPU": 96.0}, 3) == (3, None)  # never more actors than shards

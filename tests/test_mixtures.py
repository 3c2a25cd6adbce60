"""Dataset mixtures: several preprocess outputs with different modality sets, sampled by weight into the same
batches (pipeline/data/mixture.py), trained on a real Ray cluster, resumed exactly, and read by evaluation tasks."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from faults import KillWorkerOnce
from test_loader import write_token_output

from pipeline.data.manifest import read_manifest, write_manifest
from pipeline.data.mixture import open_loader, run_table
from pipeline.data.storage import Storage
from pipeline.eval.context import dataset_for
from pipeline.eval.registry import Metric, Task, TokenSplit
from pipeline.train.metrics import read_metrics
from pipeline.train.metrics_window import LossSums
from schemas.batch import LOADER_FIELDS, PRESENT, ModalitySpec, ModalityTable
from schemas.common import StorageConfig
from schemas.config import ConfigError, load_config
from schemas.evaluate import EvaluateConfig
from schemas.loading import DatasetEntry, LoaderConfig, MaskingConfig
from schemas.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parent.parent
RUN_MODALITIES = ("rgb", "depth", "caption")
MASKING = MaskingConfig(input_tokens=24, target_tokens=16)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """Two token outputs with different modality sets (caption in both, one tokenizer): 30 and 12 samples."""
    root = tmp_path_factory.mktemp("mixture")
    write_token_output(root / "images", modalities=("rgb", "caption"))
    write_token_output(root / "depths", shard_sizes=(4, 4, 4), modalities=("depth", "caption"))
    return {"images": root / "images", "depths": root / "depths"}


def entries(outputs, images: float = 3.0, depths: float = 1.0) -> list[DatasetEntry]:
    return [DatasetEntry(path=str(outputs["images"]), weight=images),
            DatasetEntry(path=str(outputs["depths"]), weight=depths)]


def mixture_loader(outputs, **overrides):
    data = entries(outputs)
    table = run_table(data, RUN_MODALITIES)
    config = LoaderConfig(**{"batch_size": 8, "shuffle_buffer": 8, "seed": 3, **overrides})
    return open_loader(data, table, MASKING, config), table


def test_a_single_output_stays_a_string_and_a_mixture_is_typed():
    assert PretrainConfig(data="/data/out").data == "/data/out"
    config = PretrainConfig(modalities=RUN_MODALITIES, data=[
        {"path": "/d/images", "weight": 3}, {"path": "/d/depths", "modalities": ["depth"], "name": "deep"}])
    assert [(e.label, e.weight, e.modalities) for e in config.data] == [("images", 3.0, None),
                                                                       ("deep", 1.0, ("depth",))]
    refused = {"at least one dataset": [], "more than once": [{"path": "/a/x"}, {"path": "/b/x"}],
               "greater than 0": [{"path": "/a", "weight": 0}],
               "not among the run's modalities": [{"path": "/a", "modalities": ["semseg"]}]}
    for message, data in refused.items():
        with pytest.raises(ValueError, match=message):
            PretrainConfig(modalities=RUN_MODALITIES, data=data)


def test_the_table_is_the_union_and_a_tokenizer_mismatch_is_refused(outputs, tmp_path):
    table = run_table(entries(outputs), RUN_MODALITIES)
    assert table.names == RUN_MODALITIES
    with pytest.raises(ValueError, match=r"no dataset of the mixture holds \['semseg'\]"):
        run_table(entries(outputs), (*RUN_MODALITIES, "semseg"))
    # the same modality written by another tokenizer in the second output
    retokenized = tmp_path / "retokenized"
    shutil.copytree(outputs["depths"], retokenized)
    storage = Storage(str(retokenized), StorageConfig())
    write_manifest(storage, [dataclasses.replace(row, tokenizer_hash="1") if row.folder == "tok_caption" else row
                             for row in read_manifest(storage)])
    mismatched = [DatasetEntry(path=str(outputs["images"])), DatasetEntry(path=str(retokenized))]
    with pytest.raises(ValueError, match="caption was tokenized by 0 in 'images' and by 1 in 'retokenized'"):
        run_table(mismatched, RUN_MODALITIES)


def test_batches_mix_datasets_by_weight_and_mask_only_present_modalities(outputs):
    loader, table = mixture_loader(outputs)
    batches = [(keys, batch) for _ in range(8) for keys, batch in loader.iter_keyed()]
    keys = [key for batch_keys, _ in batches for key in batch_keys]
    share = sum(key.startswith("images/") for key in keys) / len(keys)
    assert len(keys) >= 300 and abs(share - 0.75) < 0.06  # weights 3:1
    assert set(loader.dataset_epochs()) == {"images", "depths"} and min(loader.dataset_epochs().values()) >= 2
    rgb, depth = table.index("rgb"), table.index("depth")
    for batch_keys, batch in batches:
        assert set(batch) == set(LOADER_FIELDS)
        from_images = np.array([key.startswith("images/") for key in batch_keys])
        assert np.array_equal(batch[PRESENT][:, rgb], from_images)
        assert np.array_equal(batch[PRESENT][:, depth], ~from_images)
        for row in range(len(batch_keys)):
            # budgets went only to the modalities the sample has
            used = set(batch["enc_modality"][row][~batch["enc_pad"][row]]) | \
                set(batch["dec_modality"][row][~batch["dec_pad"][row]])
            assert used <= set(np.flatnonzero(batch[PRESENT][row]))


def test_resume_mid_epoch_gives_the_same_batches(outputs):
    reference, _ = mixture_loader(outputs)
    expected = [(keys, batch) for _ in range(3) for keys, batch in reference.iter_keyed()]
    interrupted, _ = mixture_loader(outputs)
    done = list(interrupted.iter_keyed())
    stream = interrupted.iter_keyed()
    done += [next(stream) for _ in range(2)]  # into the second epoch, mid-block
    state = json.loads(json.dumps(interrupted.state_dict()))  # as a checkpoint stores it
    stream.close()
    resumed, _ = mixture_loader(outputs, prefetch_batches=0)
    resumed.load_state_dict(state)
    rest = [*resumed.iter_keyed(), *resumed.iter_keyed()]
    assert len(done) + len(rest) == len(expected)
    for (keys, batch), (want_keys, want) in zip(rest, expected[len(done):]):
        assert keys == want_keys
        assert all(np.array_equal(batch[name], want[name]) for name in LOADER_FIELDS)
    other, _ = mixture_loader(outputs, seed=4)
    with pytest.raises(ValueError, match="other settings"):
        other.load_state_dict(state)


def test_a_modality_missing_from_a_window_has_no_loss_and_the_others_weigh_by_tokens():
    table = ModalityTable.of(ModalitySpec.from_registry(name) for name in ("rgb", "depth"))
    sums = LossSums(table, "cpu")

    def step(rgb_targets: int, rgb_loss: float, depth_targets: int = 0) -> None:
        dec_modality = np.array([[0] * rgb_targets + [1] * depth_targets + [0]])
        dec_pad = np.array([[False] * (rgb_targets + depth_targets) + [True]])
        losses = {"rgb": torch.tensor(rgb_loss)} | ({"depth": torch.tensor(1.0)} if depth_targets else {})
        sums.add(SimpleNamespace(loss=torch.tensor(rgb_loss), losses=losses),
                 {"dec_modality": dec_modality, "dec_pad": dec_pad})

    step(3, 1.0)
    step(1, 5.0)
    means = sums.means(np.array(sums.values()), "loss")
    assert means == {"loss": 3.0, "loss_rgb": 2.0}  # (3*1 + 1*5) / 4 tokens; no loss_depth at all
    other_rank = LossSums(table, "cpu")
    other_rank_values = np.array(other_rank.values())  # a rank that had nothing of either adds zeros
    sums.reset()
    step(2, 2.0, depth_targets=2)
    means = sums.means(np.array(sums.values()) + other_rank_values, "loss")
    assert means["loss_depth"] == 1.0 and np.isfinite(list(means.values())).all()


def test_each_evaluation_task_reads_the_dataset_that_holds_its_folders(outputs):
    def task(*modalities: str) -> Task:
        return Task(name="t", inputs=modalities[:1], target=modalities[-1], head="decoder",
                    data=TokenSplit(modalities), metrics=(Metric("m", True),), baseline="-", evaluate=lambda ctx: [])

    config = EvaluateConfig(data={"images": str(outputs["images"]), "depths": str(outputs["depths"])})
    assert dataset_for(config, task("rgb", "caption")) == str(outputs["images"])
    assert dataset_for(config, task("depth")) == str(outputs["depths"])
    with pytest.raises(ValueError, match="no dataset of data holds whole"):
        dataset_for(config, task("rgb", "depth"))
    named = EvaluateConfig(data=[DatasetEntry(path=str(p), name=n) for n, p in outputs.items()],
                           task_data={"t": "depths"})
    assert dataset_for(named, task("caption")) == str(outputs["depths"])


# --- a pretrain on a mixture, on the real Ray cluster -------------------------------------------------------------
@pytest.fixture(scope="module")
def palettes(tokens, tmp_path_factory) -> str:
    """A second output cut from the session's token shards: their color_palette and metadata folders only."""
    root = tmp_path_factory.mktemp("palettes")
    rows = [row for row in read_manifest(Storage(tokens, StorageConfig()))
            if row.folder in ("tok_color_palette", "tok_metadata")]
    for folder in {row.folder for row in rows}:
        shutil.copytree(Path(tokens, folder), root / folder)
    write_manifest(Storage(str(root), StorageConfig()), rows)
    return str(root)


def mixture_config(tokens: str, palettes: str, root: Path, *overrides: str) -> PretrainConfig:
    data = (f"data=[{{path: {tokens}, weight: 3, modalities: [caption, color_palette], name: captions}}, "
            f"{{path: {palettes}, weight: 1, name: palettes}}]")
    return load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        data, f"storage_path={root / 'runs'}", "steps=12", "log_every=2", "checkpoint_every=4", "workers=2",
        "loader.batch_size=8", "masking.input_tokens=32", "masking.target_tokens=32", "optim.warmup_steps=2",
        "precision=fp32", *overrides])


@pytest.mark.usefixtures("ray_session")
def test_pretrain_on_a_mixture_reports_every_modality_and_resumes_to_the_same_numbers(tokens, palettes, tmp_path):
    from pipeline.train.trainer import run_pretrain

    whole = run_pretrain(mixture_config(tokens, palettes, tmp_path / "whole"))
    log = read_metrics(whole["metrics_file"])
    assert [m["step"] for m in log] == [2, 4, 6, 8, 10, 12]
    for modality in ("caption", "color_palette", "metadata"):  # metadata: only in the 1-in-4 palettes samples
        losses = [m[f"loss_{modality}"] for m in log if f"loss_{modality}" in m]
        assert len(losses) >= 5 and np.isfinite(losses).all(), modality
        assert min(losses[-2:]) < losses[0], modality
    # a worker killed after step 10: the run resumes from the checkpoint at 8 (both datasets' positions, the
    # mixture's counters) and repeats the uninterrupted run's numbers
    kill = KillWorkerOnce(step=10, marker=str(tmp_path / "failed-once"))
    killed = run_pretrain(mixture_config(tokens, palettes, tmp_path / "killed", "max_failures=1"), callbacks=[kill])
    assert (tmp_path / "failed-once").exists()
    resumed = read_metrics(killed["metrics_file"])
    steps = [m["step"] for m in resumed]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    by_step = {m["step"]: m for m in log}
    for row in resumed[restart:]:
        for key in ("loss", "loss_caption", "loss_color_palette", "loss_metadata"):
            if key in by_step[row["step"]]:
                assert row[key] == pytest.approx(by_step[row["step"]][key], rel=1e-6), (row["step"], key)


def test_a_mixture_with_a_missing_output_fails_in_one_line(tmp_path):
    from pipeline.train.trainer import require_data

    config = PretrainConfig(data=[{"path": str(tmp_path / "absent")}])
    with pytest.raises(ConfigError, match="data: "):
        require_data(config)

"""Hostile or damaged storage: each test plants what an attacker or a fault leaves in the run storage or a
preprocess output, and checks that Tessera refuses it with one clear line (docs/security.md's storage threats)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_runs import REFERENCE, RESUMED_STEPS
from reference_runs import config as reference_config

from pipeline.data.loader import LostShardsError, TokenShardLoader
from pipeline.data.manifest import OutputCorruptError, read_manifest, write_manifest
from pipeline.data.output_checks import TokenizerMismatchError
from pipeline.data.preprocess import OutputConflictError, run_preprocess
from pipeline.data.storage import Storage
from pipeline.data.tar_io import commit_token_shard
from pipeline.data.token_shards import modality_table_from_output
from pipeline.train.checkpoint import TAG, WEIGHTS, UnsafeCheckpointError, load_tensors_only
from pipeline.train.export import InvalidCheckpointError, export_checkpoint
from pipeline.train.metrics import read_metrics
from pipeline.train.trainer import run_pretrain
from schemas.common import StorageConfig
from schemas.config import load_config
from schemas.loading import LoaderConfig, MaskingConfig
from schemas.preprocess import PreprocessConfig
from schemas.shards import shard_relpath

REPO = Path(__file__).resolve().parent.parent
TEXT_MODALITIES = ("caption", "color_palette", "metadata")


class PlantedPayload:
    """Unpickling this runs `touch marker`: what an attacker with write access to the run storage would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_pickle(path: Path, marker: Path) -> None:
    torch.save({"module": PlantedPayload(marker), "optimizer_state_dict": None}, path)


# --- 1. no code runs on resume ---------------------------------------------------------------------------------------
def test_a_planted_pickle_is_refused_before_anything_is_rebuilt(tmp_path):
    marker = tmp_path / "ran"
    plant_pickle(tmp_path / "model_states.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to resume from .*model_states.pt.*posix.system"):
        load_tensors_only(str(tmp_path / "model_states.pt"))
    assert not marker.exists()


@pytest.fixture(scope="module")
def stage3_run(reference_runs):
    """The session's reference ZeRO-3 run (tests/reference_runs.py; its checkpoints hold one model-states file per
    rank), trained to step 24 and then resumed to step 32 through the tensors-only loader: the honest resume works.
    Shared with tests/test_pretrain.py, so left as it is: tests that damage it work on a copy."""
    return {"first": reference_runs(3), "resumed": reference_runs.resumed()}


@pytest.mark.usefixtures("ray_session")
def test_resume_loads_zero_3_states_without_unpickling(stage3_run):
    log = read_metrics(stage3_run["resumed"]["metrics_file"])
    # 28 and 32 came after a resume from 24's checkpoint, not a fresh start
    assert [m["step"] for m in log] == [4, 8, 12, 16, 20, 24, 28, 32]


@pytest.mark.usefixtures("ray_session")
def test_resume_refuses_a_planted_pickle_and_runs_none_of_it(stage3_run, tokens, tmp_path):
    root = tmp_path / "copy"  # the run as an attacker with write access to its storage would leave it
    shutil.copytree(stage3_run["first"]["root"], root)
    marker = tmp_path / "planted-code-ran"
    latest = Path(stage3_run["resumed"]["checkpoint"])
    state = root / latest.relative_to(stage3_run["first"]["root"]) / TAG
    planted = sorted(state.glob("*.pt"))
    assert any("model_states" in p.name for p in planted)
    for path in planted:  # every rank's files: whichever a rank opens first is a planted one
        plant_pickle(path, marker)
    with pytest.raises(Exception, match="refusing to resume from .*posix.system") as failure:
        run_pretrain(reference_config(tokens, root, *REFERENCE, "zero.stage=3", f"steps={RESUMED_STEPS + 4}",
                                      "max_failures=0"))
    assert "refusing to resume" in str(failure.value)
    assert not marker.exists()


# --- 6. export validates what it copies ------------------------------------------------------------------------------
@pytest.mark.usefixtures("ray_session")
def test_export_refuses_truncated_or_reshaped_weights(stage3_run, tmp_path):
    from safetensors.torch import load, save_file

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(stage3_run["first"]["checkpoint"], checkpoint)
    assert export_checkpoint(str(checkpoint), str(tmp_path / "ok.safetensors"))["step"] == 24
    weights = checkpoint / WEIGHTS
    whole = weights.read_bytes()
    tensors = load(whole)  # in memory: the file is about to be cut short
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidCheckpointError, match="not a readable safetensors file") as truncated:
        export_checkpoint(str(checkpoint), str(tmp_path / "bad.safetensors"))
    assert "\n" not in str(truncated.value)
    name = next(iter(tensors))
    save_file({**tensors, name: tensors[name].flatten()[:-1].clone()}, str(weights))
    with pytest.raises(InvalidCheckpointError, match=f"1 of another shape.*{name}"):
        export_checkpoint(str(checkpoint), str(tmp_path / "bad.safetensors"))
    assert not (tmp_path / "bad.safetensors").exists()


# --- 2. tokenizer identity -------------------------------------------------------------------------------------------
@pytest.fixture
def output_copy(tokens, tmp_path) -> Path:
    """A private copy of the session's token output (tests/token_shards.py), free to damage."""
    copy = tmp_path / "shards"
    shutil.copytree(tokens, copy)
    return copy


def other_tokenizer(tokens: str, tmp_path: Path) -> Path:
    """The session's WordPiece tokenizer under another id: same vocabulary, another identity (content hash)."""
    other = tmp_path / "other-wordpiece"
    shutil.copytree(Path(tokens).parent / "wordpiece", other)
    config = json.loads((other / "tessera.json").read_text())
    (other / "tessera.json").write_text(json.dumps({**config, "tokenizer_id": config["tokenizer_id"] + "-other"}))
    return other


def tokenize_config(tokens: str, output: Path, tokenizer: Path) -> PreprocessConfig:
    """The tokenize command of tests/token_shards.py, on `output`, with `tokenizer` for every text modality."""
    config = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml",
                         [f"input={Path(tokens).parent / 'corpus'}", f"output={output}", "image.resolution=32"])
    tokenizers = {m: str(tokenizer) for m in TEXT_MODALITIES}
    return config.model_copy(update={"stages": ("tokenize",), "tokenizers": tokenizers})


@pytest.mark.usefixtures("ray_session")
def test_tokenize_refuses_a_folder_begun_with_another_tokenizer(tokens, output_copy, tmp_path):
    # A tokenize run killed after its first shard: the other shards' records are gone.
    records = sorted(output_copy.glob("_units/tokenize-*/unit-*.json"))
    assert len(records) == 4
    for record in records[1:]:
        record.unlink()
    before = {p: p.read_bytes() for p in output_copy.glob("tok_*/*.tar")}
    with pytest.raises(OutputConflictError, match="tok_caption was begun with another tokenizer.*--overwrite"):
        run_preprocess(tokenize_config(tokens, output_copy, other_tokenizer(tokens, tmp_path)), log=lambda _: None)
    assert {p: p.read_bytes() for p in output_copy.glob("tok_*/*.tar")} == before  # nothing rewritten
    # the tokenizer it began with finishes the run
    report = run_preprocess(tokenize_config(tokens, output_copy, Path(tokens).parent / "wordpiece"), log=lambda _: None)
    assert report["tokens"]["tok_caption"]["samples"] == 64


def write_hashed_output(root: Path, hashes: list[str]) -> None:
    """tok_caption shards of 4 samples, shard N recorded as written by the tokenizer of hash `hashes[N]`."""
    storage = Storage(str(root), StorageConfig())
    rows = []
    for shard, digest in enumerate(hashes):
        keys = [f"s{shard}_{i}" for i in range(4)]
        arrays = [np.array([[5 + i, 6, 2]], dtype=np.int32) for i in range(4)]
        rows.append(commit_token_shard(storage, "caption", shard, keys, arrays, tokenizer_id="wp",
                                       tokenizer_hash=digest, source_units=(shard_relpath("caption", shard),)))
    write_manifest(storage, rows)


def caption_loader(root: Path, **overrides) -> TokenShardLoader:
    table = modality_table_from_output(str(root), ("caption",))
    config = LoaderConfig(batch_size=2, shuffle_buffer=4, retry_backoff_s=0.0, prefetch_batches=0, **overrides)
    return TokenShardLoader(str(root), table, MaskingConfig(input_tokens=4, target_tokens=4), config)


def test_loader_refuses_a_folder_of_two_tokenizers(tmp_path):
    write_hashed_output(tmp_path, ["a" * 64, "a" * 64, "b" * 64])
    with pytest.raises(TokenizerMismatchError, match=r"tok_caption was written by 2 tokenizers"):
        caption_loader(tmp_path)


def test_loader_refuses_to_resume_onto_retokenized_data(tmp_path):
    write_hashed_output(tmp_path / "then", ["a" * 64] * 2)
    write_hashed_output(tmp_path / "now", ["b" * 64] * 2)
    loader = caption_loader(tmp_path / "then")
    next(iter(loader))
    with pytest.raises(ValueError, match="retokenized since"):
        caption_loader(tmp_path / "now").load_state_dict(loader.state_dict())


@pytest.mark.usefixtures("ray_session")
def test_evaluation_refuses_a_tokenizer_that_did_not_write_the_data(tokens, tmp_path):
    from pipeline.eval.context import TaskContext
    from pipeline.eval.registry import get_task
    from schemas.evaluate import EvaluateConfig

    import pipeline.eval.tasks  # noqa: F401  (registers the built-in tasks)

    def context(tokenizer: Path) -> TaskContext:
        config = EvaluateConfig(data=tokens, tokenizers={"caption": str(tokenizer)})
        return TaskContext(get_task("rgb_to_caption"), None, config)

    assert context(Path(tokens).parent / "wordpiece").tokenizer("caption").vocab_size > 0
    with pytest.raises(TokenizerMismatchError, match="is not the one that wrote .*tok_caption"):
        context(other_tokenizer(tokens, tmp_path)).tokenizer("caption")


# --- 5. manifests verified against the shards ------------------------------------------------------------------------
@pytest.mark.usefixtures("ray_session")
def test_a_deleted_or_edited_manifest_is_rebuilt_on_rerun(tokens, output_copy):
    original = read_manifest(Storage(str(output_copy), StorageConfig()))
    config = tokenize_config(tokens, output_copy, Path(tokens).parent / "wordpiece")
    (output_copy / "manifest.parquet").unlink()
    run_preprocess(config, log=lambda _: None)
    assert read_manifest(Storage(str(output_copy), StorageConfig())) == original
    storage = Storage(str(output_copy), StorageConfig())
    write_manifest(storage, [row for row in original if row.shard != 2])
    run_preprocess(config, log=lambda _: None)
    assert read_manifest(storage) == original
    # a shard the records name, gone: refused, not listed
    (output_copy / shard_relpath("tok_caption", 1)).unlink()
    with pytest.raises(OutputCorruptError, match=r"tok_caption/shard-000001.tar is missing"):
        run_preprocess(config, log=lambda _: None)


@pytest.mark.usefixtures("ray_session")
def test_training_refuses_a_manifest_with_a_shards_rows_removed(output_copy):
    storage = Storage(str(output_copy), StorageConfig())
    write_manifest(storage, [row for row in read_manifest(storage) if row.shard != 3])
    with pytest.raises(OutputCorruptError, match=r"tok_caption: shards \[3\] exist but manifest.parquet has no row"):
        caption_loader(output_copy)


def test_a_lost_shard_fails_the_run_unless_a_fraction_is_allowed(tmp_path):
    write_hashed_output(tmp_path, ["a" * 64] * 4)
    shard = tmp_path / shard_relpath("tok_caption", 2)
    damaged = bytearray(shard.read_bytes())
    damaged[600] ^= 0xFF  # same size, one byte flipped: only the checksum notices
    shard.write_bytes(bytes(damaged))
    with pytest.raises(LostShardsError, match=r"shard 2 .*sha256.*1 of the rank's 4 shards lost.*=0.0 allows"):
        list(caption_loader(tmp_path, read_retries=0))
    allowed = caption_loader(tmp_path, read_retries=0, max_lost_shard_fraction=0.25)
    seen = {key for keys, _ in allowed.iter_keyed() for key in keys}
    assert seen == {f"s{shard}_{i}" for shard in (0, 1, 3) for i in range(4)}  # shard 2 skipped, the epoch whole


def test_the_lost_shard_fraction_is_a_validated_field():
    assert LoaderConfig().max_lost_shard_fraction == 0.0
    with pytest.raises(ValueError):
        LoaderConfig(max_lost_shard_fraction=1.0)

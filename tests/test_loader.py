"""The token-shard loader on real tar shards written with the project's own writers and manifest schema."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.encoding import encode_npy
from pipeline.data.loader import TokenShardLoader, assign_shards, to_torch
from pipeline.data.manifest import read_manifest, write_manifest
from pipeline.data.masking import EOS_ID
from pipeline.data.storage import Storage
from pipeline.data.tar_io import commit_token_shard
from pipeline.data.token_shards import (
    ShardAlignmentError,
    decode_npy,
    list_token_shards,
    modality_table_from_output,
)
from schemas.batch import BATCH_FIELDS, LOADER_FIELDS
from schemas.config import parse_override
from schemas.keys import in_holdout
from schemas.loading import LoaderConfig, MaskingConfig
from schemas.modalities import get_modality
from schemas.common import StorageConfig
from schemas.shards import shard_relpath

SHARD_SIZES = (7, 5, 9, 3, 6)  # uneven on purpose: 30 samples
GRID = 16  # 4x4 token grids
MODALITIES = ("rgb", "depth", "caption")
MASKING = MaskingConfig(input_tokens=24, target_tokens=16)


def token_row(modality: str, rng: np.random.Generator) -> np.ndarray:
    spec = get_modality(modality)
    if spec.num_tokens is None:  # a sequence: words then EOS, as the WordPiece tokenize stage writes them
        row = np.append(rng.integers(300, 4000, int(rng.integers(2, 20))), EOS_ID)
    else:
        row = rng.integers(0, spec.vocab_size, GRID)
    return row.astype(spec.token_dtype)[None, :]


def write_token_output(root: Path, shard_sizes=SHARD_SIZES, modalities=MODALITIES) -> list[str]:
    """tok_<modality>/shard-N.tar for each modality and manifest.parquet, committed as the tokenize stage commits
    them; returns all keys."""
    storage = Storage(str(root), StorageConfig())
    rng = np.random.default_rng(0)
    rows, keys = [], []
    for shard, size in enumerate(shard_sizes):
        shard_keys = [f"s{shard:03d}_{i:04d}" for i in range(size)]
        keys += shard_keys
        for modality in modalities:
            arrays = [token_row(modality, rng) for _ in shard_keys]
            rows.append(commit_token_shard(storage, modality, shard, shard_keys, arrays, tokenizer_id="test",
                                           tokenizer_hash="0", source_units=(shard_relpath(modality, shard),)))
    write_manifest(storage, rows)
    return keys


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("tokens")
    return root, write_token_output(root)


def make_loader(root, rank=0, world_size=1, storage_config=None, part="train", **overrides) -> TokenShardLoader:
    table = modality_table_from_output(str(root), MODALITIES, storage_config)
    config = LoaderConfig(**{"batch_size": 4, "shuffle_buffer": 8, "seed": 3, "retry_backoff_s": 0.0, **overrides})
    return TokenShardLoader(str(root), table, MASKING, config, rank, world_size, storage_config, part=part)


def epoch_keys(loader: TokenShardLoader) -> list[list[str]]:
    return [keys for keys, _ in loader.iter_keyed()]


def test_modality_table_from_the_output(output):
    root, _ = output
    table = modality_table_from_output(str(root), MODALITIES)
    assert table.names == MODALITIES
    assert table["rgb"].grid == (4, 4) and table["depth"].max_tokens == GRID
    assert table["caption"].max_tokens == get_modality("caption").token_budget  # sequences: the registry's bound


def test_modality_table_of_a_manifest_from_before_longest_rows(output, tmp_path):
    root, _ = output
    old = Storage(str(shutil.copytree(root, tmp_path / "old")), StorageConfig())
    write_manifest(old, [dataclasses.replace(row, longest_row=None) for row in read_manifest(old)])
    assert modality_table_from_output(old.root, MODALITIES) == modality_table_from_output(str(root), MODALITIES)


def test_batches_have_the_contract_shapes(output):
    root, keys = output
    loader = make_loader(root, prefetch_batches=0)
    batch = next(iter(loader))
    assert set(batch) == set(LOADER_FIELDS)
    for name in BATCH_FIELDS:
        assert batch[name].shape == (4, 24 if name.startswith("enc") else 16)
    assert batch["present"].shape == (4, len(MODALITIES)) and batch["present"].all()
    tensors = to_torch(batch)
    assert str(tensors["enc_tokens"].dtype) == "torch.int64" and str(tensors["dec_pad"].dtype) == "torch.bool"


def test_two_ranks_see_disjoint_samples_that_cover_the_epoch(output):
    root, keys = output
    ranks = [make_loader(root, rank, 2) for rank in range(2)]
    seen = [epoch_keys(loader) for loader in ranks]
    assert len(seen[0]) == len(seen[1]) == ranks[0].batches_per_epoch == len(ranks[1])  # equal batch counts
    flat = [{k for batch in batches for k in batch} for batches in seen]
    assert not flat[0] & flat[1]
    assert flat[0] | flat[1] == set(keys)
    assert all(len(batch) == 4 for batches in seen for batch in batches)
    # 30 samples in shards of 7, 5, 9, 3, 6 split 15/15 at best; the loader counts batches from the larger rank
    assert ranks[0].batches_per_epoch == -(-max(sum(s.samples for s in r.shards) for r in ranks) // 4)
    assert ranks[0].epoch == ranks[1].epoch == 1


def test_shards_split_by_samples_not_by_count(output):
    root, _ = output
    shards = list_token_shards(Storage(str(root), StorageConfig()), MODALITIES)
    split = assign_shards(shards, 3)
    assert sorted(s.shard for ranked in split for s in ranked) == list(range(len(SHARD_SIZES)))
    assert sorted(sum(s.samples for s in ranked) for ranked in split) == [9, 10, 11]
    with pytest.raises(ValueError, match="at least one shard"):
        assign_shards(shards, 6)


def test_epochs_reshuffle_and_seeds_decide(output):
    root, keys = output
    loader = make_loader(root)
    first, second = epoch_keys(loader), epoch_keys(loader)
    assert first != second and set(sum(first, [])) == set(sum(second, [])) == set(keys)
    assert len(sum(first, [])) == 32  # 30 samples in batches of 4: two are seen twice
    assert epoch_keys(make_loader(root)) == first
    assert epoch_keys(make_loader(root, seed=4)) != first


def test_resume_mid_epoch_reproduces_the_remaining_batches(output):
    root, _ = output
    reference = make_loader(root, world_size=2, rank=1)
    expected = [(keys, batch) for _ in range(2) for keys, batch in reference.iter_keyed()]  # two epochs

    interrupted = make_loader(root, world_size=2, rank=1)
    stream = interrupted.iter_keyed()
    done = [next(stream) for _ in range(3)]  # mid-block: 12 samples into blocks of 8
    state = json.loads(json.dumps(interrupted.state_dict()))  # as a checkpoint stores it
    stream.close()
    assert [k for k, _ in done] == [k for k, _ in expected[:3]]

    resumed = make_loader(root, world_size=2, rank=1, prefetch_batches=0)
    resumed.load_state_dict(state)
    rest = [*resumed.iter_keyed(), *resumed.iter_keyed()]
    assert len(rest) == len(expected) - 3
    for (keys, batch), (want_keys, want) in zip(rest, expected[3:]):
        assert keys == want_keys
        assert all(np.array_equal(batch[name], want[name]) for name in BATCH_FIELDS)
    with pytest.raises(ValueError, match="other settings"):
        make_loader(root, world_size=2, rank=0).load_state_dict(state)


def test_held_out_keys_never_reach_training_and_are_the_holdout_part(output):
    root, keys = output
    held_out = {k for k in keys if in_holdout(k, 0.3)}
    assert 0 < len(held_out) < len(keys)
    for world in (1, 2):
        train = [make_loader(root, rank, world, holdout_fraction=0.3) for rank in range(world)]
        seen = [epoch_keys(loader) for loader in train]
        assert len({len(batches) for batches in seen}) == 1  # equal batch counts on every rank
        trained = {k for batches in seen for batch in batches for k in batch}
        assert trained == set(keys) - held_out  # every training key, not one held-out key
        holdout = [make_loader(root, rank, world, holdout_fraction=0.3, part="holdout") for rank in range(world)]
        validated = [epoch_keys(loader) for loader in holdout]
        assert len({len(batches) for batches in validated}) == 1
        assert {k for batches in validated for batch in batches for k in batch} == held_out
    with pytest.raises(ValueError, match="other settings"):  # a position in one part is not one in the other
        holdout[1].load_state_dict(train[1].state_dict())
    with pytest.raises(ValueError, match="holdout part is empty"):
        make_loader(root, part="holdout")


def test_a_corrupt_shard_is_retried_skipped_and_logged(output, tmp_path, caplog):
    root, keys = output
    copy = tmp_path / "out"
    write_token_output(copy)
    bad = copy / shard_relpath("tok_depth", 2)
    bad.write_bytes(bad.read_bytes()[:1000])  # a truncated tar
    loader = make_loader(copy, read_retries=1, max_lost_shard_fraction=0.2)  # 1 of 5 shards may be lost
    with caplog.at_level(logging.INFO, logger="pipeline.data.loader"):
        batches = epoch_keys(loader)
    assert len(batches) == loader.batches_per_epoch  # the epoch still completes, with its full count
    seen = {k for batch in batches for k in batch}
    lost = {k for k in keys if k.startswith("s002_")}
    assert seen == set(keys) - lost
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipping shard 2" in warnings[0].getMessage()
    assert str(bad) in warnings[0].getMessage() and "sha256" in warnings[0].getMessage()
    assert any("retrying" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert loader.epoch == 1 and loader.skipped_shards == []  # the next epoch tries it again


def test_keys_that_differ_between_modalities_are_an_error(tmp_path):
    write_token_output(tmp_path, shard_sizes=(3,), modalities=("rgb",))
    storage = Storage(str(tmp_path), StorageConfig())
    # tok_depth holds the same members in another order
    depth = commit_token_shard(storage, "depth", 0, [f"s000_{i:04d}" for i in (1, 0, 2)],
                               [np.zeros((1, GRID), np.int16)] * 3, tokenizer_id="test")
    write_manifest(storage, [*read_manifest(storage), depth])
    table = modality_table_from_output(str(tmp_path), ("rgb", "depth"))
    loader = TokenShardLoader(str(tmp_path), table, MASKING, LoaderConfig(batch_size=2, prefetch_batches=0))
    with pytest.raises(ShardAlignmentError, match="s000_0001"):
        next(iter(loader))


def test_reads_from_s3(output, s3_bucket):
    root, keys = output
    bucket, overrides = s3_bucket
    storage_config = StorageConfig(**{k[-1]: v for k, v in map(parse_override, overrides)})
    remote = Storage(f"s3://{bucket}/tokens", storage_config)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        remote.write_atomic(str(path.relative_to(root)), path.read_bytes())
    loader = make_loader(remote.root, storage_config=storage_config, shuffle_buffer=4)
    local = make_loader(root, shuffle_buffer=4)
    assert [*loader.iter_keyed()][-1][0] == [*local.iter_keyed()][-1][0]  # same samples, same order


def test_reads_what_the_real_tokenize_stage_writes(tmp_path, ray_session):
    """Label + tokenize the sample corpus with the preprocess job itself, then load it: the loader's idea of the
    output (manifest, row dtype and EOS) is the writer's."""
    from pipeline.data.inspect import iter_members
    from pipeline.data.masking import fill_spans
    from pipeline.data.preprocess import run_preprocess
    from pipeline.data.sample_corpus import write_corpus
    from pipeline.tokenizers import train_wordpiece
    from schemas.config import load_config
    from schemas.corpus import SampleCorpusConfig
    from schemas.preprocess import PreprocessConfig

    write_corpus(SampleCorpusConfig(out=str(tmp_path / "corpus"), samples=24, image_size=48, samples_per_shard=8))
    text = ("caption", "color_palette", "metadata")
    config = load_config(PreprocessConfig, None, [f"input={tmp_path / 'corpus'}", f"output={tmp_path / 'out'}",
                                                  "image.resolution=32", f"modalities=[rgb, {', '.join(text)}]"])
    run_preprocess(config, log=lambda _: None)
    storage = Storage(config.output, config.storage)
    captions = [payload.decode() for _, payload in iter_members(storage, "caption")]
    tokenizer_dir = train_wordpiece(captions, vocab_size=4700).save(tmp_path / "wordpiece")
    run_preprocess(config.model_copy(update={"stages": ("tokenize",), "tokenizers": dict.fromkeys(text, str(
        tokenizer_dir))}), log=lambda _: None)

    table = modality_table_from_output(config.output, text)
    masking = MaskingConfig(input_tokens=400, target_tokens=400)  # room for every run whole
    loaders = [TokenShardLoader(config.output, table, masking, LoaderConfig(batch_size=4), rank, 2) for rank in (0, 1)]
    seen = [[(keys, batch) for keys, batch in loader.iter_keyed()] for loader in loaders]
    rows = {key: np.load(io.BytesIO(payload))[0] for key, payload in iter_members(storage, "tok_caption")}
    assert {k for batches in seen for keys, _ in batches for k in keys} == set(rows)
    caption = table.index("caption")
    for keys, batch in seen[0]:
        for row, key in enumerate(keys):
            enc = batch["enc_tokens"][row][~batch["enc_pad"][row] & (batch["enc_modality"][row] == caption)]
            dec = batch["dec_target"][row][~batch["dec_pad"][row] & (batch["dec_modality"][row] == caption)]
            np.testing.assert_array_equal(fill_spans(enc, dec), rows[key][:-1])  # the stored row ends with EOS


def test_npy_decoding_matches_numpy():
    arrays = [np.arange(197, dtype=np.int16)[None], np.arange(12, dtype=np.int32).reshape(3, 4),
              np.asfortranarray(np.arange(12).reshape(3, 4)), np.zeros((1, 0), np.int16)]
    for array in arrays * 2:  # the second round decodes from the cached headers
        decoded = decode_npy(encode_npy(array))
        assert decoded.dtype == array.dtype and np.array_equal(decoded, array)
    with pytest.raises(ValueError):
        decode_npy(encode_npy(arrays[0])[:-8])  # a truncated member

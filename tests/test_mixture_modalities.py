"""Issue 21's mixture test: one tiny pretrain on the image-text token shards plus the token outputs of all five raw
modalities (audio, time series, IMU, tables, graphs), built by the demo's own chain (jobs/demo_mixture.py: sample
corpus -> label with `primary` -> tokenizer trained on Ray Train or fitted -> tokenize) at toy sizes. Every modality
of the run logs its own loss and that loss falls; the six-dataset loader resumes mid-epoch to the same batches (the
worker-kill resume of a whole run is tests/test_mixtures.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jobs.demo_mixture import mixture_data, prepare_raw_datasets
from pipeline.data.mixture import open_loader, run_table
from pipeline.data.sample_corpus.mixture import IMAGE_TEXT, RAW_CORPORA
from pipeline.train.metrics import read_metrics
from schemas.batch import LOADER_FIELDS
from schemas.config import load_config
from schemas.loading import DatasetEntry, LoaderConfig, MaskingConfig
from schemas.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parent.parent
RAW = tuple(RAW_CORPORA)
# caption is in every dataset; color_palette only in the image-text one; each raw modality only in its own.
MODALITIES = ("caption", "color_palette", *RAW)
# Toy corpora (the writers' size arguments; time series and tables are the few real series and tables there are).
CORPUS_SIZES = {"audio": {"variants": 1}, "imu": {"recordings_per_activity": 2}, "graph": {"samples": 12}}
# Signal tokenizers trained for a few dozen steps: their codes are coarse, but fixed, which is all a pretrain needs.
TOKENIZER_STEPS = 24
# Sampling weights relative to the others: a table row is 14 tokens against the 64 a masked sample of any other
# dataset holds, and its tokens spread over a large vocabulary (a bin range per column of every table), so at weight 1
# its loss barely moves in 20 steps (measured: 9.04 -> 8.97, flat after step 8). At three times the rows it falls in
# every window of this test's 16 steps (measured 8.99 -> 8.96 -> 8.87 -> 8.84; the other raw modalities fall ~1.0).
WEIGHTS = {"tabular": 3.0}


@pytest.fixture(scope="module")
def datasets(tokens, tmp_path_factory) -> list[dict]:
    """The six datasets as pretrain `data` entries (weight 1 each), made by the demo's functions."""
    root = tmp_path_factory.mktemp("raw-modalities")
    text_tokenizer = Path(tokens).parent / "wordpiece"  # where tests/token_shards.py trains the shared WordPiece
    raw, _ = prepare_raw_datasets(str(root), str(text_tokenizer), TOKENIZER_STEPS, corpus_sizes=CORPUS_SIZES)
    return [{"name": IMAGE_TEXT, "path": tokens, "weight": 1.0}, *raw]


@pytest.mark.usefixtures("ray_session")
def test_pretrain_on_six_datasets_logs_a_falling_loss_per_modality(datasets, tmp_path):
    from pipeline.train.trainer import run_pretrain

    image_text, raw = datasets[0], datasets[1:]
    # mixture_data weighs the image-text shards as all the others together; the raw ones are scaled to match it,
    # so each dataset other than the tables is a ninth of every batch (~7 samples of each per 64-sample log window).
    data = mixture_data(image_text["path"], [{**entry, "weight": len(raw) * WEIGHTS.get(entry["name"], 1.0)}
                                             for entry in raw])
    config = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data={data}", f"modalities=[{', '.join(MODALITIES)}]", f"storage_path={tmp_path / 'runs'}",
        "steps=16", "log_every=4", "checkpoint_every=16", "workers=2", "loader.batch_size=8",
        "loader.shuffle_buffer=16", "masking.input_tokens=32", "masking.target_tokens=32", "optim.warmup_steps=2",
        "precision=fp32"])
    log = read_metrics(run_pretrain(config)["metrics_file"])
    assert [row["step"] for row in log] == [4, 8, 12, 16]
    falls = {}
    for modality in MODALITIES:
        losses = [row[f"loss_{modality}"] for row in log if f"loss_{modality}" in row]
        assert len(losses) == len(log) and np.isfinite(losses).all(), (modality, losses)
        falls[modality] = (losses[0], losses[-1])
    assert all(last < first for first, last in falls.values()), falls


def test_the_six_dataset_loader_resumes_mid_epoch_to_the_same_batches(datasets):
    data = [DatasetEntry(**entry) for entry in datasets]
    table = run_table(data, MODALITIES)
    masking = MaskingConfig(input_tokens=32, target_tokens=32)

    def loader(**overrides):
        return open_loader(data, table, masking, LoaderConfig(batch_size=8, shuffle_buffer=16, seed=5, **overrides))

    uninterrupted = loader()
    whole = [item for _ in range(2) for item in uninterrupted.iter_keyed()]
    assert {key.split("/")[0] for keys, _ in whole for key in keys} == {entry["name"] for entry in datasets}
    interrupted = loader()
    stream = interrupted.iter_keyed()
    done = [next(stream) for _ in range(len(interrupted) * 2 // 3)]
    state = json.loads(json.dumps(interrupted.state_dict()))  # as a checkpoint stores it
    # mid-epoch of the mixture, and past the end of some dataset's own epoch (the small ones have wrapped)
    assert state["epoch"] == 0 and state["batches"] == len(done) and max(interrupted.dataset_epochs().values()) >= 1
    stream.close()
    resumed = loader(prefetch_batches=0)
    resumed.load_state_dict(state)
    rest = [*resumed.iter_keyed(), *resumed.iter_keyed()]
    assert len(done) + len(rest) == len(whole)
    for (keys, batch), (want_keys, want) in zip(done + rest, whole):
        assert keys == want_keys
        assert all(np.array_equal(batch[name], want[name]) for name in LOADER_FIELDS)

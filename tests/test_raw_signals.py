"""The signal modalities (time series, IMU, audio) end to end on the session's Ray cluster: the sample corpora plus
malformed files through the real preprocess job (good files read, bad ones quarantined with their reason, nothing
lost), a tiny tokenizer trained by the real tokenizer job and scored on held-out windows, the tokenize stage, and
the eval tasks on the token shards with a tiny untrained model (they must run and report their baselines)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from pipeline.data.inspect import iter_members
from pipeline.data.preprocess import run_preprocess
from pipeline.data.raw import RAW_READERS
from pipeline.data.sample_corpus.audio import write_audio_corpus
from pipeline.data.sample_corpus.imu import HEADER, write_imu_corpus
from pipeline.data.sample_corpus.time_series import write_time_series_corpus
from pipeline.data.storage import Storage
from pipeline.tokenizers import load_tokenizer
from pipeline.train.tokenizer import run_train_tokenizer
from schemas.common import StorageConfig
from schemas.config import load_config
from schemas.preprocess import PreprocessConfig
from schemas.train_tokenizer import TrainTokenizerConfig

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("ray_session")
SIGNALS = ("time_series", "imu", "audio")
# Settings per modality: a short IMU limit and audio duration, so the malformed files below break them.
RAW = {"time_series": {"channels": 1, "window": 32, "stride": 16},
       "imu": {"max_frames": 5000, "window": 64, "stride": 64},
       "audio": {"max_seconds": 5.0, "duration": 0.64, "n_mels": 32}}
# What each malformed file is refused for (its key -> words of the quarantine detail).
MALFORMED = {
    "time_series": {"text_in_numbers": "holds text", "too_short": "shorter than one window",
                    "three_channels": "3 channels, expected 1", "mostly_missing": "missing"},
    "imu": {"five_channels": "columns", "four_channels": "4 channels", "text_cell": "not a number",
            "too_long": "max_frames"},
    "audio": {"truncated": "truncated", "garbage": "not a readable", "too_long": "max_seconds"},
}
# The held-out score each tokenizer must reach after this test's 150 steps, with what it measured on a 2-core
# machine and what reconstructing every sample by the trivial value scores: the window's own mean for time series
# (relative MSE 1), the training channel means for IMU and audio.
BOUNDS = {"time_series": ("median_relative_mse", 0.3),  # measured 0.057; trivial 1.0
          "imu": ("mse", 10.0),  # measured 5.3 (m/s^2 and rad/s squared); trivial 18.0
          "audio": ("log_spectral_distance_db", 25.0)}  # measured 17.6 dB; trivial 40.6 dB


def write_malformed(modality: str, root: Path) -> None:
    rng = np.random.default_rng(1)
    if modality == "time_series":
        values = [str(v) for v in rng.normal(size=100)]
        values[40] = "n/a?"
        (root / "text_in_numbers.csv").write_text("time,value\n" + "".join(f"{i},{v}\n" for i, v in
                                                                         enumerate(values)))
        (root / "too_short.csv").write_text("time,value\n" + "".join(f"{i},{i}\n" for i in range(10)))
        (root / "three_channels.csv").write_text("time,a,b,c\n" + "".join(f"{i},1,2,3\n" for i in range(80)))
        (root / "mostly_missing.csv").write_text("time,value\n" + "".join(
            f"{i},{'' if i % 2 else i}\n" for i in range(80)))
    elif modality == "imu":
        (root / "five_channels.csv").write_text("t,acc_x,acc_y,acc_z,gyro_x,gyro_y\n" + "0,1,2,3,4,5\n" * 100)
        np.save(root / "four_channels.npy", rng.normal(size=(300, 4)).astype(np.float32))
        rows = "".join(f"{i / 50},1,2,3,4,5,6\n" for i in range(200)) + "4.0,1,2,three,4,5,6\n"
        (root / "text_cell.csv").write_text(HEADER + "\n" + rows)
        np.save(root / "too_long.npy", rng.normal(size=(10_000, 6)).astype(np.float32))  # 200 s at 50 Hz
    else:
        wav = io.BytesIO()
        soundfile.write(wav, rng.uniform(-0.5, 0.5, 16_000).astype(np.float32), 16_000, format="WAV")
        (root / "truncated.wav").write_bytes(wav.getvalue()[:12_000])
        (root / "garbage.ogg").write_bytes(rng.bytes(3000))
        soundfile.write(root / "too_long.flac", np.zeros(8 * 8000, np.float32), 8000)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, tuple[Path, PreprocessConfig, dict]]:
    """Each modality's corpus (the sample corpus, small, plus malformed files) through the label stage."""
    root = tmp_path_factory.mktemp("signals")
    writers = {"time_series": lambda out: write_time_series_corpus(out),
               "imu": lambda out: write_imu_corpus(out, recordings_per_activity=3),
               "audio": lambda out: write_audio_corpus(out, variants=2)}
    outputs = {}
    for modality in SIGNALS:
        corpus = root / f"{modality}-corpus"
        writers[modality](corpus)
        write_malformed(modality, corpus)
        config = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml", [
            f"input={corpus}", f"output={root / modality}", f"primary={modality}",
            f"modalities=[{modality}, caption]", "reader.samples_per_unit=12", f"raw={{{modality}: {RAW[modality]}}}"])
        outputs[modality] = (corpus, config, run_preprocess(config, log=lambda _: None))
    return outputs


def expected_samples(modality: str, corpus: Path) -> dict[str, np.ndarray]:
    """Key -> frames of every sample of every good file, read by the plug-in directly."""
    reader = RAW_READERS.get(modality)(RAW[modality])
    expected = {}
    for path in sorted(corpus.iterdir()):
        if path.suffix.lstrip(".") in reader.exts and path.stem not in MALFORMED[modality]:
            for item in reader.read(str(path), path.read_bytes()):
                expected[path.stem + item.suffix] = reader.decode_member(item.member)
    return expected


@pytest.mark.parametrize("modality", SIGNALS)
def test_good_files_are_read_and_malformed_ones_quarantined_with_their_reason(labelled, modality):
    corpus, config, report = labelled[modality]
    storage = Storage(config.output, StorageConfig())
    expected = expected_samples(modality, corpus)
    written = {key: RAW_READERS.get(modality)().decode_member(member)
               for key, member in iter_members(storage, modality)}
    assert written.keys() == expected.keys()
    assert all(np.array_equal(written[k], expected[k]) for k in expected)
    shapes = {a.shape for a in written.values()}
    assert len(shapes) == 1 and next(iter(shapes))[0] > 1  # one (T, C) for every sample: fixed tokens per sample
    records = pq.read_table(Path(config.output) / "quarantine" / "quarantine.parquet").to_pylist()
    quarantined = {q["source_key"]: q for q in records}
    assert quarantined.keys() == MALFORMED[modality].keys() and len(records) == len(quarantined)
    for key, words in MALFORMED[modality].items():
        assert quarantined[key]["reason"] == "bad_raw" and words in quarantined[key]["detail"], quarantined[key]
    # Nothing lost: every sample of every file is a shard member or its file is one quarantine record.
    assert report["samples_in"] == len(expected) + len(MALFORMED[modality]) == report["samples_written"] + \
        report["samples_quarantined"]
    captions = dict(iter_members(storage, "caption"))
    assert captions.keys() == written.keys()
    some_key = sorted(captions)[0]
    sidecar = corpus / f"{some_key.rsplit('_w', 1)[0] if modality != 'audio' else some_key}.txt"
    assert captions[some_key].decode() == sidecar.read_text().strip()


def test_image_labelers_are_refused_for_a_corpus_without_images(tmp_path):
    config = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml", [
        f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "primary=imu",
        "modalities=[imu, caption, canny_edge]"])
    with pytest.raises(ValueError, match="canny_edge.*labelled from images"):
        run_preprocess(config, log=lambda _: None)
    with pytest.raises(ValueError, match="no raw reader"):
        run_preprocess(config.model_copy(update={"primary": "depth", "modalities": ("depth",)}), log=lambda _: None)
    with pytest.raises(ValueError, match="audio is read from its own files"):
        run_preprocess(config.model_copy(update={"primary": "rgb", "modalities": ("rgb", "audio")}),
                       log=lambda _: None)


@pytest.fixture(scope="module")
def tokenizers(labelled, tmp_path_factory) -> dict[str, Path]:
    """A tiny tokenizer per modality, trained by the real job (1 worker), then the tokenize stage with it; the audio
    run also tokenizes its captions (a WordPiece vocabulary of them, for audio <-> caption retrieval)."""
    from pipeline.tokenizers import train_wordpiece

    root = tmp_path_factory.mktemp("signal-tokenizers")
    extra = {"time_series": ["model.normalize=sample"], "imu": [], "audio": ["model.values_in_db=true"]}
    out = {}
    for modality in SIGNALS:
        _, label_config, _ = labelled[modality]
        config = load_config(TrainTokenizerConfig, REPO / "configs/train_tokenizer/default.yaml", [
            f"modality={modality}", f"input={label_config.output}", f"output={root / modality}",
            f"storage_path={root / 'runs'}", f"name=signal-{modality}", "workers=1", "steps=150", "batch_size=16",
            "optim.warmup_steps=10", "log_every=50", "checkpoint_every=150", "holdout_fraction=0.2",
            "model.hidden=48", "model.patch=8", *extra[modality]])
        run_train_tokenizer(config)
        used = {modality: str(root / modality)}
        if modality == "audio":
            captions = [text.decode() for _, text in iter_members(Storage(label_config.output, StorageConfig()),
                                                                  "caption")]
            used["caption"] = str(train_wordpiece(captions, vocab_size=4700).save(root / "caption"))
            out["caption"] = root / "caption"
        run_preprocess(label_config.model_copy(update={"stages": ("tokenize",), "tokenizers": used}),
                       log=lambda _: None)
        out[modality] = root / modality
    return out


@pytest.mark.parametrize("modality", SIGNALS)
def test_tokenizer_round_trips_and_reconstructs_held_out_windows(labelled, tokenizers, modality):
    tokenizer = load_tokenizer(tokenizers[modality])
    metrics = json.loads((tokenizers[modality] / "metrics.json").read_text())
    held_out = metrics["held_out"]
    metric, bound = BOUNDS[modality]
    assert held_out["samples"] > 0 and held_out[metric] < bound, held_out
    assert ("log_spectral_distance_db" in held_out) == (modality == "audio")
    assert (tokenizers[modality] / "reconstructions.png").exists()
    storage = Storage(labelled[modality][1].output, StorageConfig())
    frames = [tokenizer.read(m) for _, m in list(iter_members(storage, modality))[:5]]
    ids = tokenizer.encode(frames)
    assert ids.shape == (5, tokenizer.tokens_per_sample) and 0 <= ids.min() and ids.max() < tokenizer.vocab_size
    decoded = tokenizer.decode(ids)
    assert [d.shape for d in decoded] == [f.shape for f in frames] and all(np.isfinite(d).all() for d in decoded)
    per_sample = tokenizer.settings.normalize == "sample"
    assert tokenizer.tokens_per_sample == frames[0].shape[0] // 8 * 2 + (3 * frames[0].shape[1] if per_sample else 0)
    # The tokenize stage stored exactly these rows.
    tok_rows = dict(iter_members(storage, f"tok_{modality}"))
    first = sorted(tok_rows)[0]
    stored = np.load(io.BytesIO(tok_rows[first]), allow_pickle=False)
    np.testing.assert_array_equal(stored.reshape(-1), tokenizer.encode([tokenizer.read(
        dict(iter_members(storage, modality))[first])])[0])


TASKS = {"time_series": "time_series_forecast", "imu": "imu_activity", "audio": "audio_class"}


def tiny_context(task_name: str, data: str, tokenizers: dict[str, Path], probe: dict | None = None):
    """The task's context on `data`, with an untrained tiny model of the task's modalities standing in for a
    checkpoint: the task's data access, head and baselines are what run."""
    import torch

    import pipeline.eval.tasks  # noqa: F401 (registers the tasks)
    from pipeline.eval.checkpoint import EvalModel
    from pipeline.eval.context import TaskContext
    from pipeline.eval.registry import get_task
    from pipeline.model import build_model
    from schemas.batch import ModalitySpec, ModalityTable
    from schemas.evaluate import EvaluateConfig, ProbeConfig
    from schemas.model import ModelConfig

    task = get_task(task_name)
    context = TaskContext(task, None, EvaluateConfig(data=data, probe=ProbeConfig(**(probe or {}))))
    torch.manual_seed(0)
    specs = []
    for modality in task.modalities:
        tokenizer = load_tokenizer(tokenizers[modality])
        specs.append(ModalitySpec.from_registry(modality, tokenizer.tokens_per_sample, tokenizer.vocab_size))
    table = ModalityTable.of(specs)
    context.model = EvalModel(build_model(ModelConfig(size="tiny"), table).eval(), table)
    return context


@pytest.mark.parametrize("modality", SIGNALS)
def test_eval_task_runs_on_the_token_shards(labelled, tokenizers, modality):
    context = tiny_context(TASKS[modality], labelled[modality][1].output, tokenizers)
    task = context.task
    scores = task.evaluate(context)
    assert {s.metric for s in scores} == {m.name for m in task.metrics}
    assert all(math.isfinite(s.value) and math.isfinite(s.baseline) for s in scores)
    if modality != "time_series":
        assert all(0 <= s.baseline <= 1 and 0 <= s.value <= 1 for s in scores)


@pytest.mark.parametrize("modality", SIGNALS)
def test_eval_task_raises_data_unmet_on_data_that_does_not_suit_it(labelled, tokenizers, modality):
    """Data the task cannot score is `DataUnmet` (`--tasks all` reports it skipped): no series window followed by
    the next one; captions that all say one thing, or free text whose score set names no class the probe fitted."""
    from pipeline.eval.context import EvalSample
    from pipeline.eval.registry import DataUnmet

    context = tiny_context(TASKS[modality], labelled[modality][1].output, tokenizers)
    samples = context.samples
    if modality == "time_series":  # windows start every window / 2: keep every other pair, so none has its next
        window = RAW[modality]["window"]
        cases = {"too few windows with a following window":
                 [s for s in samples if int(s.key.rsplit("_w", 1)[1]) // window % 2 == 0]}
    else:
        def captioned(caption) -> list[EvalSample]:
            return [EvalSample(s.key, s.tokens, {"caption": {"txt": caption(s).encode()}}) for s in samples]

        cases = {"fewer than two classes": captioned(lambda s: "one class"),
                 "names a class of the fit set": captioned(lambda s: f"free text about {s.key}")}
    for words, unsuited in cases.items():
        context.samples = unsuited
        fit, score = context.fit_and_score()
        assert fit and score  # the split itself is not what is unmet
        with pytest.raises(DataUnmet, match=words):
            context.task.evaluate(context)


@pytest.mark.parametrize("task_name", ["retrieval_audio_to_caption", "retrieval_caption_to_audio"])
def test_audio_caption_retrieval_runs_against_chance_by_caption_text(labelled, tokenizers, task_name):
    """Many clips share a caption (a word said by several voices): any of them is a hit, and chance counts them."""
    from pipeline.eval.metrics import chance_recall_at_k

    data = labelled["audio"][1].output
    context = tiny_context(task_name, data, tokenizers, probe={"test_fraction": 0.5})
    texts = dict(iter_members(Storage(data, StorageConfig()), "caption"))
    _, score = context.fit_and_score()
    groups = [texts[s.key].decode().strip().lower() for s in score]
    hits = np.array([groups.count(g) for g in groups])
    assert hits.max() > 1  # this split holds several clips of some caption
    scores = {s.metric: s for s in context.task.evaluate(context)}
    assert scores.keys() == {"recall@1", "recall@5"}
    for k in (1, 5):
        # Chance from the caption texts themselves, which the task reads as caption token rows.
        assert scores[f"recall@{k}"].baseline == pytest.approx(chance_recall_at_k(len(score), k, hits))
        assert scores[f"recall@{k}"].baseline > k / len(score)
        assert 0 <= scores[f"recall@{k}"].value <= 1
    assert "same caption text" in context.task.description


def test_retrieval_of_audio_is_skipped_by_all_on_data_without_audio(labelled):
    """`--tasks all` on the IMU output: the audio <-> caption tasks are skipped (no tok_audio folder), not failed;
    on the audio output they run."""
    import pipeline.eval.tasks  # noqa: F401 (registers the tasks)
    from pipeline.eval.registry import all_tasks
    from pipeline.eval.runner import drop_unmet
    from schemas.evaluate import EvaluateConfig

    audio_tasks = {"retrieval_audio_to_caption", "retrieval_caption_to_audio"}
    runnable, skipped = drop_unmet(EvaluateConfig(data=labelled["imu"][1].output), all_tasks(), progress=lambda _: None)
    rows = {row["task"]: row for row in skipped}
    assert audio_tasks <= rows.keys() and not audio_tasks & {t.name for t in runnable}
    assert all(rows[name]["status"] == "skipped" and "tok_audio" in rows[name]["error"] for name in audio_tasks)
    runnable, _ = drop_unmet(EvaluateConfig(data=labelled["audio"][1].output), all_tasks(), progress=lambda _: None)
    assert audio_tasks <= {t.name for t in runnable}


def test_sample_mixture_writes_one_corpus_per_modality(tmp_path):
    from jobs.sample_corpus import main
    from pipeline.data.sample_corpus.mixture import IMAGE_TEXT, RAW_CORPORA

    assert main(["--out", str(tmp_path), "--samples", "4", "--image-size", "32", "--mixture"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {IMAGE_TEXT, *RAW_CORPORA}
    assert list((tmp_path / IMAGE_TEXT).glob("corpus-*.tar"))
    for modality in RAW_CORPORA:  # every file of each corpus has an extension its plug-in reads
        reader = RAW_READERS.get(modality)
        files = [p for p in (tmp_path / modality).iterdir() if p.suffix != ".txt"]
        assert files and all(p.suffix.lstrip(".") in reader.exts for p in files), modality


@pytest.mark.parametrize("modality, limit", [("time_series", "max_frames 2,000,000"), ("tabular", "max_rows 100,000")])
def test_a_compressed_oversized_parquet_is_refused_from_its_footer(modality, limit):
    """3M rows of zeros compress to a few KiB: the footer's row count refuses the file before it is decompressed."""
    import pyarrow as pa

    from pipeline.data.decode import DecodeError
    from schemas.shards import Reason

    buffer = io.BytesIO()
    pq.write_table(pa.table({"v": np.zeros(3_000_000)}), buffer, compression="zstd")
    assert len(buffer.getvalue()) < 64 << 10
    reader = RAW_READERS.get(modality)()
    with pytest.raises(DecodeError, match=f"3,000,000 rows, over {limit}") as caught:
        list(reader.read("big.parquet", buffer.getvalue()))
    assert caught.value.reason is Reason.BAD_RAW
    wide = io.BytesIO()
    pq.write_table(pa.table({f"c{i}": [0.0] for i in range(300)}), wide)
    with pytest.raises(DecodeError, match="300 columns, over max_columns 256"):
        list(reader.read("wide.parquet", wide.getvalue()))

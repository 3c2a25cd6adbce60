"""Built-in eval tasks and their parts: eval batches packed the way the training masker packs a fully masked
target, probe heads, and the token-split data access on a real preprocess output of the sample corpus."""

from __future__ import annotations

import json
import pickle
import tarfile

import numpy as np
import pytest
import ray
import torch

from pipeline.data.masking import fill_spans
from pipeline.eval.batches import pack
from pipeline.eval.context import TaskContext, read_split
from pipeline.eval.heads import fit_probe
from pipeline.eval.metrics import classification_accuracy
from pipeline.eval.registry import ExternalDataset, HeadKind, TokenSplit, all_tasks, get_task
from pipeline.eval.tasks.probes import ANNOTATIONS, labelled, largest_shape, object_count
from schemas.batch import ModalitySpec, ModalityTable
from schemas.evaluate import EvaluateConfig, ProbeConfig
from schemas.keys import in_holdout
from schemas.modalities import Values


def test_pack_shows_all_inputs_and_the_whole_target_like_the_masker():
    table = ModalityTable.of([ModalitySpec.from_registry("rgb", 4), ModalitySpec.from_registry("caption", 12)])
    caption_row = np.array([[400, 401, 402, 3]])  # stored rows end with EOS (id 3); ids 4-203 are sentinels
    rows = [{"rgb": np.array([[5, 6, 7, 8]]), "caption": caption_row},
            {"rgb": np.array([[9, 9, 9, 9]]), "caption": np.array([[500, 3]])}]
    batch = pack(table, rows, ["rgb"], "caption")
    rgb, caption = table.index("rgb"), table.index("caption")
    enc_rgb = batch["enc_tokens"][0][(batch["enc_modality"][0] == rgb) & ~batch["enc_pad"][0]]
    np.testing.assert_array_equal(enc_rgb, [5, 6, 7, 8])
    np.testing.assert_array_equal(batch["enc_position"][0][:4], np.arange(4))
    # The caption is one fully masked span: its input is one sentinel, its target run the whole text then EOS;
    # the masker's own inverse rebuilds the stored text from the two.
    enc_caption = batch["enc_tokens"][0][(batch["enc_modality"][0] == caption) & ~batch["enc_pad"][0]]
    dec = batch["dec_target"][0][~batch["dec_pad"][0]]
    np.testing.assert_array_equal(fill_spans(enc_caption, dec), caption_row[0, :-1])
    assert dec[-1] == 3 and batch["dec_causal"][0][~batch["dec_pad"][0]].all()
    np.testing.assert_array_equal(batch["dec_input"][0][1:len(dec)], dec[:-1])  # teacher forcing: shifted right
    assert batch["dec_pad"][1].sum() == batch["dec_pad"].shape[1] - 3  # S_0, 500, EOS; the rest padding
    # A grid target: every position, decoder inputs unused.
    grid = pack(table, rows, ["caption"], "rgb")
    np.testing.assert_array_equal(grid["dec_target"][1], [9, 9, 9, 9])
    assert not grid["dec_causal"].any() and not grid["dec_pad"].any()


def test_target_logits_are_the_training_forward_per_sample():
    import torch

    from pipeline.eval.checkpoint import EvalModel
    from pipeline.eval.metrics import token_nll
    from pipeline.model import build_model
    from schemas.model import ModelConfig

    torch.manual_seed(0)
    table = ModalityTable.of([ModalitySpec.from_registry("rgb", 4), ModalitySpec.from_registry("caption", 12)])
    model = EvalModel(build_model(ModelConfig(size="tiny"), table).eval(), table)
    rows = [{"rgb": np.array([[5, 6, 7, 8]]), "caption": np.array([[400, 401, 402, 3]])},
            {"rgb": np.array([[9, 9, 9, 9]]), "caption": np.array([[500, 3]])},
            {"rgb": np.array([[1, 2, 3, 4]]), "caption": np.array([[600, 601, 602, 603, 604, 605, 3]])}]
    together = list(model.target_logits(rows, ["rgb"], "caption", batch_size=2))  # batches of 2 and 1, padded
    vocab = table["caption"].vocab_size
    assert [logits.shape for logits, _ in together] == [(5, vocab), (3, vocab), (8, vocab)]  # S_0 + text + EOS
    for row, (logits, ids) in zip(rows, together):
        (alone, alone_ids), = model.target_logits([row], ["rgb"], "caption")
        np.testing.assert_array_equal(ids, alone_ids)
        np.testing.assert_allclose(logits, alone, atol=1e-4)  # padding in the batch changes nothing
        # The mean cross-entropy of one sample's slots is the training forward's loss on that sample.
        batch = {k: torch.from_numpy(v) for k, v in pack(table, [row], ["rgb"], "caption").items()}
        with torch.no_grad():
            loss = model.module(batch).loss
        assert token_nll(logits, ids).mean() == pytest.approx(float(loss), rel=1e-4)
    (grid, grid_ids), = model.target_logits(rows[:1], ["caption"], "rgb")
    assert grid.shape == (4, table["rgb"].vocab_size) and grid_ids.tolist() == [5, 6, 7, 8]


def test_a_whole_metadata_target_is_packed_as_the_masker_packs_it():
    """Teacher forcing scores what training fed: the masker with every token of the sequence masked (ratio 1) makes
    the same decoder slots, input for input, as `pack`, and the same encoder tokens of each modality."""
    from pipeline.data.masking import Masker
    from schemas.loading import MaskingConfig

    table = ModalityTable.of([ModalitySpec.from_registry("rgb", 4), ModalitySpec.from_registry("metadata")])
    metadata = np.array([4211, 210, 4210, 210, 4204, 762, 3])  # original_width v0=6 ... brightness v0=558, EOS
    row = {"rgb": np.array([5, 6, 7, 8]), "metadata": metadata}
    whole = len(metadata) + 1  # S_0, the 6 tokens, EOS
    masker = Masker(table, MaskingConfig(input_tokens=5, target_tokens=whole, span_mask_ratio=(1.0, 1.0)))
    trained = masker.batch([row], np.random.default_rng(0))
    packed = pack(table, [{m: r[None] for m, r in row.items()}], ["rgb"], "metadata")
    for name in ("dec_target", "dec_input", "dec_modality", "dec_position", "dec_causal", "dec_pad"):
        np.testing.assert_array_equal(packed[name], trained[name], err_msg=name)
    assert packed["dec_input"][0, 0] == 2 and packed["dec_target"][0, -1] == 3  # SOS in, EOS out
    for modality in (0, 1):
        def tokens(batch: dict) -> list[int]:
            keep = (batch["enc_modality"][0] == modality) & ~batch["enc_pad"][0]
            return batch["enc_tokens"][0][keep].tolist()

        assert tokens(packed) == tokens(trained)


def test_the_unigram_baseline_keeps_its_mass_on_the_ids_the_fit_set_used():
    """A few thousand fit tokens of the 30k text vocabulary: an add-one unigram would put 94% of its mass on ids never
    seen (a perplexity baseline near V that a near-uniform model beats); Witten-Bell keeps it on the seen ones."""
    from pipeline.eval import baselines

    rng = np.random.default_rng(0)
    frequent = 300 + np.arange(50)
    fit = [rng.choice(frequent, size=2000)]
    probs = np.exp(baselines.unigram_log_probs(fit, 30_000))
    assert probs.sum() == pytest.approx(1.0) and probs[frequent].sum() == pytest.approx(2000 / 2050)
    _, ppl = baselines.unigram_scores(fit, [rng.choice(frequent, size=500)], 30_000)
    assert ppl < 55  # about the 50 ids it draws from


def test_read_step_prefers_the_step_the_export_records(tmp_path):
    from pipeline.eval.checkpoint import read_step

    export = tmp_path / "run-step-000010.safetensors"
    assert read_step(str(export)) == 10  # no sidecar: the name
    (tmp_path / "run-step-000010.json").write_text(json.dumps({"model": {}, "table": [], "step": 250}))
    assert read_step(str(export)) == 250
    checkpoint = tmp_path / "checkpoint_000003"
    checkpoint.mkdir()
    (checkpoint / "model.json").write_text(json.dumps({"model": {}, "table": []}))  # records no step
    assert read_step(str(checkpoint)) == 3
    (checkpoint / "model.json").write_text(json.dumps({"model": {}, "table": [], "step": 40}))
    assert read_step(str(checkpoint)) == 40 and read_step("s3-less/plain") is None


def test_probes_fit_what_their_head_can_separate():
    rng = np.random.default_rng(0)
    config = ProbeConfig(steps=200)
    # Linear: three Gaussian blobs in 16-d.
    centres = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.normal(size=(300, 16))
    predict = fit_probe(x[:200], y[:200], HeadKind.LINEAR_PROBE, config)
    assert classification_accuracy(predict(x[200:]), y[200:]) > 0.9
    # XOR of two coordinates: no linear probe beats chance by much, a small MLP does.
    x = rng.uniform(-1, 1, size=(600, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
    linear = classification_accuracy(fit_probe(x[:400], y[:400], HeadKind.LINEAR_PROBE, config)(x[400:]), y[400:])
    mlp = classification_accuracy(fit_probe(x[:400], y[:400], HeadKind.MLP_PROBE, config)(x[400:]), y[400:])
    assert linear < 0.7 < 0.9 < mlp
    with pytest.raises(ValueError):
        fit_probe(x, y, HeadKind.DECODER, config)


def test_builtin_tasks_are_declared_and_ship_to_workers():
    tasks = all_tasks()
    assert {"object_count", "largest_shape", "retrieval_rgb_to_caption"} <= {t.name for t in tasks}
    for task in tasks:
        assert isinstance(task.data, TokenSplit | ExternalDataset) and task.metrics
        clone = ray.cloudpickle.loads(ray.cloudpickle.dumps(task))  # what the runner sends to a Ray worker
        assert clone.name == task.name and clone.metrics == task.metrics


@pytest.fixture(scope="module")
def sample_output(tmp_path_factory, ray_session):
    """The sample corpus through the real preprocess job: label shards with annotations and the corpus's own depth
    and semseg maps, captions tokenized."""
    from pipeline.data.inspect import iter_members
    from pipeline.data.preprocess import run_preprocess
    from pipeline.data.sample_corpus import write_corpus
    from pipeline.data.storage import Storage
    from pipeline.tokenizers import train_wordpiece
    from schemas.config import load_config
    from schemas.corpus import SampleCorpusConfig
    from schemas.preprocess import PreprocessConfig

    root = tmp_path_factory.mktemp("eval-sample")
    write_corpus(SampleCorpusConfig(out=str(root / "corpus"), samples=24, image_size=48, samples_per_shard=8))
    config = load_config(PreprocessConfig, None, [f"input={root / 'corpus'}", f"output={root / 'out'}",
                                                  "image.resolution=32", "modalities=[rgb, caption, depth, semseg]",
                                                  "labelers.depth.source=ground_truth",
                                                  "labelers.semseg.source=ground_truth"])
    run_preprocess(config, log=lambda _: None)
    captions = [payload.decode() for _, payload in iter_members(Storage(config.output, config.storage), "caption")]
    tokenizer_dir = train_wordpiece(captions, vocab_size=4700).save(root / "wordpiece")
    run_preprocess(config.model_copy(update={"stages": ("tokenize",), "tokenizers": {"caption": str(tokenizer_dir)}}),
                   log=lambda _: None)
    return root


def _raw_annotations(corpus) -> dict[str, dict]:
    raw = {}
    for path in sorted(corpus.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json") and member.name.count(".") == 1:  # not <key>.det.json
                    raw[member.name[:-len(".json")]] = json.load(tar.extractfile(member))
    return raw


def test_token_split_reads_tokens_with_their_ground_truth(sample_output):
    from pipeline.data.storage import Storage
    from schemas.common import StorageConfig

    storage = Storage(str(sample_output / "out"), StorageConfig())
    samples = read_split(storage, TokenSplit(("caption",), (ANNOTATIONS,)), max_samples=1000)
    raw = _raw_annotations(sample_output / "corpus")
    # Photos carry no depth/semseg maps, so preprocess quarantines them when those are ground-truth modalities.
    scenes_in_corpus = {key for key, sample in raw.items() if sample["kind"] == "scene"}
    assert {s.key for s in samples} == scenes_in_corpus and len(samples) == len(scenes_in_corpus) > 12
    for sample in samples:
        assert sample.tokens["caption"].ndim == 2 and sample.tokens["caption"].shape[0] == 1
        truth = raw[sample.key]
        assert json.loads(sample.aux[ANNOTATIONS]["json"]) == truth
    scenes, counts = labelled(samples, object_count)
    assert [len(raw[s.key]["objects"]) for s in scenes] == counts.tolist()
    assert len(scenes) == len(samples)
    assert object_count({"kind": "photo", "key": "p"}) is None and largest_shape({"kind": "photo"}) is None
    _, shapes = labelled(samples, largest_shape)
    assert set(shapes.tolist()) <= set(range(1, 6))  # shape ids: background is 0, never the largest object
    assert len(read_split(storage, TokenSplit(("caption",)), max_samples=5)) == 5


def test_fit_and_score_split_by_key(sample_output):
    config = EvaluateConfig(data=str(sample_output / "out"), probe=ProbeConfig(test_fraction=0.3))
    context = TaskContext(get_task("object_count"), None, config)
    context.__dict__["samples"] = read_split(context.storage, TokenSplit(("caption",), (ANNOTATIONS,)), 1000)
    fit, score = context.fit_and_score()
    assert fit and score and len(fit) + len(score) == len(context.samples)
    assert all(in_holdout(s.key, 0.3) for s in score) and not any(in_holdout(s.key, 0.3) for s in fit)
    with pytest.raises(ValueError, match="needs a model but no checkpoint"):
        context.model  # noqa: B018


def test_in_score_set_is_a_fraction_of_keys():
    keys = [f"sample_{i:06d}" for i in range(4000)]
    share = np.mean([in_holdout(k, 0.25) for k in keys])
    assert 0.22 < share < 0.28
    assert pickle.loads(pickle.dumps(EvaluateConfig())) == EvaluateConfig()


def test_dense_ground_truth_is_scored_against_its_baseline(sample_output):
    from pipeline.data.storage import Storage
    from pipeline.eval.tasks.dense import read_label, resize_to, score_decoded
    from schemas.common import StorageConfig

    storage = Storage(str(sample_output / "out"), StorageConfig())
    samples = read_split(storage, TokenSplit(("caption",), ("depth", "semseg")), max_samples=1000)
    half = len(samples) // 2
    depth = [read_label(s, "depth") for s in samples]
    semseg = [read_label(s, "semseg") for s in samples]
    assert all(d.shape == (32, 32) and d.dtype.kind == "f" and (d > 0).any() for d in depth)
    assert all(m.shape == (32, 32) and m.dtype.kind in "ui" for m in semseg)
    # The truth itself is perfect; the mean-depth and majority-class baselines are not (and are finite).
    value, baseline = score_decoded(Values.DEPTH, depth[half:], depth[half:], depth[:half])
    assert value == {"abs_rel": 0.0, "delta1": 1.0}
    assert 0 < baseline["abs_rel"] < 10 and 0 <= baseline["delta1"] < 1
    value, baseline = score_decoded(Values.CLASSES, semseg[half:], semseg[half:], semseg[:half])
    assert value["miou"] == pytest.approx(1.0) and 0 < baseline["miou"] < 0.5
    # Predictions at another resolution are brought to the label's: class ids stay class ids.
    small = resize_to(semseg[0][::2, ::2], semseg[0].shape, nearest=True)
    assert small.shape == (32, 32) and set(np.unique(small)) <= set(np.unique(semseg[0]))
    # Maps with channels (normals, features) are resampled channel by channel.
    normals = np.dstack([np.full((8, 8), 10.0), np.full((8, 8), 128.0), np.full((8, 8), 250.0)])
    np.testing.assert_allclose(resize_to(normals, (16, 16, 3), nearest=False), np.broadcast_to([10, 128, 250],
                                                                                               (16, 16, 3)))


def test_edge_maps_are_scored_by_f1_against_the_better_constant():
    from pipeline.eval.tasks.dense import score_decoded

    truth = [np.array([[0, 255], [0, 0]], np.uint8), np.array([[255, 255], [0, 0]], np.uint8)]
    pred = [np.array([[0, 255], [255, 0]], np.uint8), np.array([[0, 0], [0, 0]], np.uint8)]
    fit = [np.array([[0, 0], [0, 255]], np.uint8)]
    # TP 1 of 2 predicted and 3 true -> F1 2 / 5; the fit set has an edge, so the baseline is all-edge: 2 * 3 / 11
    value, baseline = score_decoded(Values.BINARY, pred, truth, fit)
    assert value == {"f1": pytest.approx(2 / 5)} and baseline == {"f1": pytest.approx(6 / 11)}
    # Resampled with nearest neighbour: an edge map at half the size still holds only 0 and 255.
    value, _ = score_decoded(Values.BINARY, [np.kron(t, np.ones((2, 2), np.uint8))[::2, ::2] for t in truth], truth,
                             fit)
    assert value == {"f1": 1.0}


class Oracle:
    """Stands in for the model in a decoding task: every target slot's logits peak at the id the data holds, and
    the ids past the tokenizer's codes (the registry's larger head) peak higher still, which the task must ignore."""

    def __init__(self, codes: int, extra: int = 3):
        self.codes, self.extra = codes, extra

    def target_logits(self, rows, inputs, target, batch_size=32):
        for row in rows:
            ids = np.asarray(row[target][0], np.int64)
            logits = np.zeros((len(ids), self.codes + self.extra))
            logits[np.arange(len(ids)), ids] = 1.0
            logits[:, self.codes:] = 2.0
            yield logits, ids


def labeler_output(modality: str, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Label arrays in the format each labeler writes (pipeline/data/labelers): normals as uint8 RGB of unit
    vectors facing the camera more or less, feature maps (h, w, C) and embeddings (C,) as float16."""
    if modality == "normal":
        v = rng.normal(size=(n, 16, 16, 3)) * 0.4 + np.array([0.0, 0.0, 1.0])
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        return list(((v + 1) * 127.5).round().astype(np.uint8))
    shape = {"clip_feature": (7, 7, 12), "dinov2_feature": (8, 8, 12)}.get(modality, (24,))
    offset = rng.normal(size=shape[-1])  # a shared direction, as real features have: the mean is a fair baseline
    return [(offset + rng.normal(size=shape)).astype(np.float16) for _ in range(n)]


DECODED_ELSEWHERE = {"rgb_to_normal": "mean_angle_deg", "rgb_to_clip_feature": "cosine",
                     "rgb_to_dinov2_feature": "cosine", "rgb_to_dinov2_global": "cosine",
                     "caption_to_caption_embedding": "cosine"}


@pytest.mark.parametrize("name", sorted(DECODED_ELSEWHERE))
def test_decoded_targets_score_what_the_tokenizer_reconstructs(name, tmp_path):
    """Targets the trained tiny model lacks (normals, CLIP/DINOv2, caption embeddings), through the registered
    task with a real tokenizer: the oracle's tokens decode to the tokenizer's own reconstruction, so the task's
    score is the tokenizer's reconstruction score (pipeline/tokenizers/codecs.py), and the truth itself is perfect."""
    from pipeline.data.encoding import encode_npy, encode_png
    from pipeline.eval.context import EvalSample
    from pipeline.eval.tasks.dense import score_decoded
    from pipeline.tokenizers.fit import new_tokenizer
    from schemas.modalities import get_modality

    task, metric = get_task(name), DECODED_ELSEWHERE[name]
    target, values = task.target, get_modality(task.target).values
    labels = labeler_output(target, 40, np.random.default_rng(0))
    torch.manual_seed(0)
    model = {Values.FEATURES: {"widths": (8,)}, Values.VECTOR: {"tokens": 4, "hidden": 32}}.get(
        values, {"widths": (8, 16), "blocks": 0})
    tokenizer = new_tokenizer(target, f"test/{target}", labels, {**model, "quantizer": {"levels": (4, 4, 3)}})
    directory = tokenizer.save(tmp_path / target)
    ids = tokenizer.encode(labels)
    ext, write = ("npy", encode_npy) if get_modality(target).ext == "npy" else ("png", encode_png)
    samples = [EvalSample(f"sample_{i:04d}", {task.inputs[0]: np.zeros((1, 4), np.int64), target: ids[i:i + 1]},
                          {target: {ext: write(label)}}) for i, label in enumerate(labels)]
    context = TaskContext(task, None, EvaluateConfig(tokenizers={target: str(directory)}))
    context.__dict__.update(samples=samples, model=Oracle(tokenizer.vocab_size))
    (score,) = task.evaluate(context)
    fit, scored = context.fit_and_score()
    held = [int(s.key.rpartition("_")[2]) for s in scored]
    reconstruction = tokenizer.codec.scores(tokenizer.decode(ids[held]), [labels[i] for i in held])
    assert score.metric == metric and score.value == pytest.approx(reconstruction[metric], rel=1e-6)
    truth = [labels[i] for i in held]
    perfect, baseline = score_decoded(values, truth, truth, [labels[int(s.key.rpartition("_")[2])] for s in fit])
    assert baseline == {metric: pytest.approx(score.baseline)}
    if metric == "cosine":
        assert perfect == {"cosine": pytest.approx(1.0)} and 0.2 < score.baseline < 1  # the mean shares a direction
    else:  # normals about 20 degrees off the camera axis: the mean direction is that far off, give or take
        assert perfect == {"mean_angle_deg": pytest.approx(0.0, abs=1e-6)} and 5 < score.baseline < 40

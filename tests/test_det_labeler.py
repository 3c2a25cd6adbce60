"""The det labeler (OpenCV's offline detectors on real photos; a tiny random-weight DETR loaded like real weights, in
an actor pool), the sample corpus's det ground truth, mAP@0.5, and the rgb -> det eval task's decoding."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import skimage.data
import torch
from model_weights import TINY_DET_CLASSES, TINY_DET_QUERIES, save_tiny_model
from PIL import Image

from pipeline.data.decode import Crop
from pipeline.data.ground_truth import crop_detections
from pipeline.data.inspect import iter_members, verify_output
from pipeline.data.labelers import DecodedBatch, get_labeler
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from pipeline.eval.checkpoint import EvalModel
from pipeline.eval.metrics import box_iou, mean_average_precision
from pipeline.eval.tasks.detection import as_prediction, greedy_runs, majority_box, parse_boxes
from pipeline.model import build_model
from pipeline.tokenizers import train_wordpiece
from pipeline.tokenizers.sequence import VALUE_BINS, decode_records, encode_records, value_token
from schemas.batch import ModalitySpec, ModalityTable
from schemas.common import StorageConfig
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.labels import Detection, detection_record, read_detections
from schemas.modalities import Family
from schemas.model import ModelConfig
from schemas.preprocess import LabelerConfig, PreprocessConfig

# Eileen Collins's face in skimage's astronaut, by eye: (xmin, ymin, xmax, ymax) as fractions of the 512 px photo.
ASTRONAUT_FACE = (0.32, 0.10, 0.55, 0.34)


def photo(name: str, size: int = 224) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize((size, size), Image.BILINEAR))


def batch_of(images: np.ndarray) -> DecodedBatch:
    return DecodedBatch(images, [""] * len(images), [images.shape[1:3]] * len(images))


@pytest.fixture(scope="module")
def opencv():
    return get_labeler("det")(LabelerConfig())


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(["a photo of a face", "a person and a dog", "traffic light"] * 4, vocab_size=4_400)


def test_opencv_finds_the_astronaut_s_face_and_nothing_in_a_cat_or_a_cup(opencv):
    (payload, cat, cup) = opencv(batch_of(np.stack([photo("astronaut"), photo("chelsea"), photo("coffee")])))
    record = json.loads(payload)
    faces = [d for d in read_detections(record, threshold=0.0) if d.name == "face"]
    assert len(faces) == 1 and box_iou([faces[0].box], [ASTRONAUT_FACE])[0, 0] > 0.5
    assert 0.6 <= faces[0].score <= 1.0
    assert json.loads(cat) == json.loads(cup) == {"instances": []}


def test_opencv_faces_on_skimage_s_labelled_faces_in_the_wild(opencv):
    """lfw_subset: 100 face crops then 100 non-faces, 25 px, shown at 64 px."""
    crops = skimage.data.lfw_subset()
    images = np.stack([np.repeat(np.asarray(Image.fromarray((c * 255).astype(np.uint8)).resize((64, 64)))[..., None],
                                 3, axis=-1) for c in crops])
    found = [any(d.name == "face" for d in f) for f in opencv.detect(batch_of(images))]
    assert np.mean(found[:100]) >= 0.75 and np.mean(found[100:]) <= 0.02


def test_det_payload_round_trips_through_the_serializer(opencv, wordpiece):
    (payload,) = opencv(batch_of(photo("astronaut")[None]))
    record = json.loads(payload)
    (face,) = read_detections(record)
    ids = encode_records("det", [record], wordpiece)
    (parsed,) = decode_records("det", ids, wordpiece, [(1.0, 1.0)])
    ((box, name),) = [(o["box"], o["class"]) for o in parsed["objects"]]
    assert name == "face" and np.allclose(box, face.box, atol=1 / VALUE_BINS)


def test_records_are_validated_and_ordered_by_score():
    record = detection_record([Detection((0.1, 0.1, 0.2, 0.2), "dog", 0.7), Detection((0, 0, 1, 1), "cat", 0.9)])
    assert [i["class_name"] for i in record["instances"]] == ["cat", "dog"]
    with pytest.raises(ValueError, match="within"):
        detection_record([Detection((0.5, 0.1, 0.2, 0.2), "dog", 0.7)])
    with pytest.raises(ValueError, match="score"):
        detection_record([Detection((0.1, 0.1, 0.2, 0.2), "dog", 1.5)])


def test_ground_truth_boxes_follow_the_crop():
    record = detection_record([Detection((0.0, 0.0, 0.5, 0.5), "a", 1.0), Detection((0.6, 0.0, 0.9, 0.2), "b", 0.5),
                               Detection((0.25, 0.5, 0.75, 1.0), "c", 0.3)])
    # 200 x 100 image, crop the right-hand 100 x 100 square: x in [0.5, 1] of the image becomes [0, 1].
    cropped = json.loads(crop_detections(json.dumps(record).encode(), Crop(0, 100, 100, 100), (200, 100)))
    got = {i["class_name"]: (i["boxes"], i["score"]) for i in cropped["instances"]}
    assert set(got) == {"b", "c"}  # a lies left of the crop: no area left
    assert np.allclose(got["b"][0], [0.2, 0.0, 0.8, 0.2]) and got["b"][1] == 0.5
    assert np.allclose(got["c"][0], [0.0, 0.5, 0.5, 1.0]) and got["c"][1] == 0.3


@pytest.fixture(scope="module")
def detr(tmp_path_factory):
    return save_tiny_model("det", tmp_path_factory.mktemp("detr"))


def test_detr_labeler_matches_transformers_own_pipeline(detr):
    import transformers as tf

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    labeler = get_labeler("det")(LabelerConfig(weights=str(detr), score_threshold=0.0))
    found = labeler.detect(batch_of(images))
    processor = tf.DetrImageProcessorPil.from_pretrained(detr)
    model = tf.DetrForObjectDetection.from_pretrained(detr, use_safetensors=True).eval()
    with torch.no_grad():
        outputs = model(**processor(images=list(images), return_tensors="pt"))
    for mine, theirs in zip(found, processor.post_process_object_detection(outputs, threshold=0.0)):
        assert len(mine) == TINY_DET_QUERIES
        assert np.allclose([d.box for d in mine], theirs["boxes"].clamp(0, 1).numpy(), atol=1e-4)
        assert np.allclose([d.score for d in mine], theirs["scores"].numpy(), atol=1e-4)
        assert [d.name for d in mine] == [TINY_DET_CLASSES[i] for i in theirs["labels"].tolist()]


def test_det_weights_of_another_architecture_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not an object detector"):
        get_labeler("det")(LabelerConfig(weights=str(save_tiny_model("semseg", tmp_path / "segformer"))))


def preprocess(tmp_path, *overrides: str) -> Storage:
    corpus = tmp_path / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=12, image_size=64, samples_per_shard=6))
    config = load_config(PreprocessConfig, None, [
        f"input={corpus}", f"output={tmp_path / 'out'}", "image.resolution=32", "modalities=[rgb, caption, det]",
        *overrides])
    run_preprocess(config, log=lambda _: None)
    return Storage(config.output, StorageConfig())


def test_detr_in_an_actor_pool_end_to_end(tmp_path, detr, ray_session):
    output = preprocess(tmp_path, "labelers.det.concurrency=1", f"labelers.det.weights={detr}",
                        "labelers.det.num_cpus=0.5", "labelers.det.score_threshold=0.0")
    assert verify_output(output).samples == 12
    records = [json.loads(payload) for _, payload in iter_members(output, "det")]
    assert len(records) == 12
    for record in records:
        found = read_detections(record, threshold=0.0)
        assert len(found) == TINY_DET_QUERIES and {d.name for d in found} <= set(TINY_DET_CLASSES)


def corpus_members(tmp_path, ext: str) -> dict[str, bytes]:
    members = {}
    for shard in sorted((tmp_path / "corpus").glob("corpus-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.partition(".")
                if suffix == ext:
                    members[key] = tar.extractfile(member).read()
    return members


def test_sample_corpus_det_ground_truth_end_to_end(tmp_path, ray_session):
    output = preprocess(tmp_path, "labelers.det.source=ground_truth")
    truth = corpus_members(tmp_path, "det.json")
    meta = {key: json.loads(payload) for key, payload in corpus_members(tmp_path, "json").items()}
    labelled = dict(iter_members(output, "det"))
    assert set(labelled) == set(truth) == {k for k, m in meta.items() if m["kind"] == "scene"}  # photos: none
    for key, payload in labelled.items():
        found = read_detections(json.loads(payload))
        objects = sorted(meta[key]["objects"], key=lambda o: (o["box"][0] ** 2 + o["box"][1] ** 2))
        assert [d.name for d in found] == [o["class"] for o in objects]
        # The 64 px scene is stored whole at 32 px: its pixel boxes, as fractions, are the label's.
        assert np.allclose([d.box for d in found], [np.array(o["box"]) / 64 for o in objects])


def test_map50_on_hand_made_boxes():
    a, b, far = [0, 0, .4, .4], [.5, .5, 1, 1], [.6, 0, .9, .3]
    both = (np.array([a, b]), ["x", "x"])

    def score(boxes, labels, scores, truths=(both,)):
        return mean_average_precision([(np.array(boxes).reshape(-1, 4), labels, scores)], list(truths))

    assert score([a, b], ["x", "x"], [.9, .8]) == 1.0
    assert score([a, far], ["x", "x"], [.9, .8]) == 0.5  # one of two found, ranked first
    assert score([far, a], ["x", "x"], [.9, .8]) == 0.25  # ... ranked behind a false positive
    assert score([a, a], ["x", "x"], [.9, .8], [(np.array([a]), ["x"])]) == 1.0  # duplicate after the hit
    assert score([a], ["x"], [.9], [(np.array([a, b]), ["x", "y"])]) == 0.5  # class y never predicted: AP 0
    assert score([a], ["y"], [.9], [(np.array([a]), ["x"])]) == 0.0  # right box, wrong class
    assert score([[0, 0, 1, .5]], ["x"], [1.], [(np.array([[0, 0, 1, 1]]), ["x"])]) == 1.0  # IoU exactly 0.5
    assert score([[0, 0, 1, .49]], ["x"], [1.], [(np.array([[0, 0, 1, 1]]), ["x"])]) == 0.0
    with pytest.raises(ValueError, match="no ground-truth"):
        score([a], ["x"], [1.], [(np.zeros((0, 4)), [])])


def test_majority_box_baseline():
    fit = [(np.array([[0, 0, .2, .2], [.2, .2, .6, .6]]), ["dog", "dog"]), (np.array([[0, 0, 1, 1]]), ["cat"])]
    (boxes, labels, scores), _ = majority_box(fit, 2)
    assert labels == ["dog"] and np.allclose(boxes, [[.1, .1, .4, .4]]) and scores.tolist() == [1.0]


def test_parse_boxes_inverts_the_det_tokens(wordpiece):
    truth = [Detection((0.1, 0.2, 0.3, 0.4), "traffic light", 0.9), Detection((0.5, 0.5, 0.9, 1.0), "dog", 0.8)]
    (row,) = encode_records("det", [detection_record(truth)], wordpiece)
    ids = row[: list(row).index(wordpiece.eos_id)]
    starts = frozenset(wordpiece.token_id(value_token(0, b)) for b in range(VALUE_BINS))
    found = parse_boxes(ids, np.zeros(len(ids)), wordpiece, starts)
    assert [d.name for d in found] == ["traffic light", "dog"] and all(d.score == 1.0 for d in found)
    assert np.allclose([d.box for d in found], [d.box for d in truth], atol=1 / VALUE_BINS)
    expected = (np.array([d.box for d in truth]), [d.name for d in truth])
    assert mean_average_precision([as_prediction(found)], [expected]) == 1.0


@pytest.fixture(scope="module")
def det_model(wordpiece):
    """A random-weight tiny model of rgb and det (bound 12), and three eval rows (n_crops, n), target included."""
    table = ModalityTable.of([ModalitySpec("rgb", Family.IMAGE_LIKE, 64, 16, (4, 4)),
                              ModalitySpec("det", Family.SEQUENCE, wordpiece.vocab_size, 12)])
    torch.manual_seed(0)
    model = EvalModel(build_model(ModelConfig(size="tiny"), table).eval(), table)
    rng = np.random.default_rng(0)
    rows = [{"rgb": rng.integers(0, 64, (1, 16)), "det": np.array([[wordpiece.eos_id]])} for _ in range(3)]
    return model, rows


def test_greedy_decoding_agrees_with_teacher_forcing_on_its_own_output(wordpiece, det_model):
    """Each greedy token must be the argmax (over allowed ids) of the teacher-forced logits at its position, given
    the tokens greedy chose before it, and its log-probability theirs: the step-by-step decoder and the training
    forward see the same thing."""
    from pipeline.data.masking import EOS_ID, SENTINEL_IDS, SOS_ID

    model, rows = det_model
    vocab = wordpiece.vocab_size
    runs = greedy_runs(model, rows, ("rgb",), "det", vocab, batch_size=2)
    assert len(runs) == 3 and all(len(ids) <= 10 for ids, _ in runs)  # bound 12: S_0, 10 tokens at most, EOS
    banned = [0, SOS_ID, *SENTINEL_IDS]
    forced = [{"rgb": row["rgb"], "det": np.concatenate([ids, [EOS_ID]])} for row, (ids, _) in zip(rows, runs)]
    for (ids, logps), (logits, _) in zip(runs, model.target_logits(forced, ("rgb",), "det")):
        logits = logits[:, :vocab].copy()
        logits[:, banned] = -np.inf
        assert logits[1:len(ids) + 1].argmax(-1).tolist() == ids.tolist()
        expected = torch.from_numpy(logits[1:len(ids) + 1]).log_softmax(-1).numpy()[np.arange(len(ids)), ids]
        np.testing.assert_allclose(logps, expected, atol=1e-4)


def test_det_eval_decodes_what_generation_decodes_at_temperature_zero(wordpiece, det_model):
    """The eval task's greedy runs are generate_sequence's rows (EOS dropped), whatever the eval batch size."""
    from pipeline.data.masking import EOS_ID
    from pipeline.generate.autoregressive import generate_sequence
    from pipeline.generate.sampling import Sampler

    model, rows = det_model
    vocab = wordpiece.vocab_size
    runs = greedy_runs(model, rows, ("rgb",), "det", vocab, batch_size=2)
    made = generate_sequence(model.module, model.table, [{"rgb": row["rgb"][0]} for row in rows], "det",
                             Sampler.seeded(0.0, 0, 1), vocab)
    assert all(row[-1] == EOS_ID and row.max() < vocab for row in made)
    assert [ids.tolist() for ids, _ in runs] == [row[:-1].tolist() for row in made]

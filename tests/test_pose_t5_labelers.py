"""human_poses (people from the det labeler, then ViTPose) and t5_caption (T5 encoder states) on tiny random-weight
checkpoints of the real architectures, loaded from disk as real weights are; the poses serializer; both labelers in
actor pools in one preprocess run, then the tokenize stage and their eval tasks on its output."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from model_weights import TINY_POSE_INPUT, save_tiny_model
from PIL import Image

from pipeline.data.inspect import iter_members
from pipeline.data.labelers import DecodedBatch, get_labeler
from pipeline.data.labelers.poses import crop_windows
from pipeline.data.labelers.weights import MissingWeightsError
from pipeline.data.preprocess import run_preprocess
from pipeline.data.storage import Storage
from pipeline.tokenizers import load_tokenizer, train_wordpiece
from pipeline.tokenizers.codecs import read_member
from pipeline.tokenizers.fit import new_tokenizer
from pipeline.tokenizers.poses import COCO_KEYPOINTS, VISIBLE_SCORE
from pipeline.tokenizers.sequence import decode_records, encode_records, get_serializer, max_tokens
from schemas.common import StorageConfig
from schemas.config import load_config
from schemas.preprocess import LabelerConfig, PreprocessConfig

SIZE = 224  # HOG needs people about 64 px tall after its 2x upscale: real photos at the 4M-21 resolution
T5_LENGTH = 32
BIN = 1 / 1000  # a coordinate bin, as a fraction of the image side


def photo(name: str, flip: bool = False) -> np.ndarray:
    """A skimage photo, centre-cropped square and resized to SIZE, RGB uint8."""
    import skimage.data

    image = getattr(skimage.data, name)()
    image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
    h, w = image.shape[:2]
    side = min(h, w)
    square = Image.fromarray(image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2])
    array = np.asarray(square.resize((SIZE, SIZE), Image.BILINEAR))
    return array[:, ::-1].copy() if flip else array


def batch(images: np.ndarray, captions: list[str] | None = None) -> DecodedBatch:
    captions = captions if captions is not None else [""] * len(images)
    return DecodedBatch(images=images, captions=captions, original_sizes=[images.shape[1:3]] * len(captions))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pose-t5-weights")
    return {m: str(save_tiny_model(m, root / m)) for m in ("human_poses", "t5_caption")}


@pytest.fixture(scope="module")
def poses(weights):
    return get_labeler("human_poses")(LabelerConfig(weights=weights["human_poses"], score_threshold=0.5))


@pytest.fixture(scope="module")
def t5(weights):
    return get_labeler("t5_caption")(LabelerConfig(weights=weights["t5_caption"], max_length=T5_LENGTH))


# --- the serializer ------------------------------------------------------------------------------------------------
def person(rng: np.random.Generator, width: float, height: float, visible: int = 17) -> dict:
    x0, x1 = sorted(rng.uniform(0, width, 2))
    y0, y1 = sorted(rng.uniform(0, height, 2))
    scores = np.r_[rng.uniform(VISIBLE_SCORE, 1, visible), rng.uniform(0, VISIBLE_SCORE - 0.01, 17 - visible)]
    return {"box": [x0, y0, x1, y1], "score": 0.9,
            "keypoints": [[rng.uniform(0, width), rng.uniform(0, height), s] for s in rng.permutation(scores)]}


def test_poses_round_trip_within_a_bin():
    rng = np.random.default_rng(0)
    width, height = 640.0, 480.0
    record = {"width": width, "height": height, "people": [person(rng, width, height, v) for v in (17, 5, 0)]}
    parsed = get_serializer("human_poses").parse(get_serializer("human_poses").to_text(record), (width, height))
    people = sorted(record["people"], key=lambda p: -(p["box"][2] - p["box"][0]) * (p["box"][3] - p["box"][1]))
    assert len(parsed["people"]) == 3
    for truth, back in zip(people, parsed["people"]):  # largest box first
        np.testing.assert_allclose(back["box"], truth["box"], atol=width * BIN / 2 + 1e-9)
        for (x, y, score), (px, py, visible) in zip(truth["keypoints"], back["keypoints"]):
            assert visible == float(score >= VISIBLE_SCORE)
            if visible:
                assert abs(px - x) <= width * BIN / 2 + 1e-9 and abs(py - y) <= height * BIN / 2 + 1e-9


def test_poses_are_cut_at_whole_people_largest_first():
    rng = np.random.default_rng(1)
    tokenizer = train_wordpiece(["a person walking on the grass"] * 4, vocab_size=4_400)
    record = {"width": 100, "height": 100, "people": [person(rng, 100, 100) for _ in range(8)]}
    (row,) = encode_records("human_poses", [record], tokenizer)
    # A fully visible person is 4 box + 17 x 3 keypoint tokens: 4 fit in 274 (EOS takes the last of 275).
    assert len(row) == max_tokens("human_poses") and (row != tokenizer.pad_id).sum() == 4 * 55 + 1
    (parsed,) = decode_records("human_poses", row[None], tokenizer, [(100, 100)])
    largest = sorted(record["people"], key=lambda p: -(p["box"][2] - p["box"][0]) * (p["box"][3] - p["box"][1]))
    assert len(parsed["people"]) == 4
    for truth, back in zip(largest, parsed["people"]):
        np.testing.assert_allclose(back["box"], truth["box"], atol=0.05 + 1e-9)
        assert all(k[2] == 1.0 for k in back["keypoints"])


# --- human_poses -----------------------------------------------------------------------------------------------------
def test_crops_and_keypoints_match_the_vitpose_processor(poses):
    """The batched torch crops are the processor's scipy warps; keypoints are its post-processing of their heatmaps
    (so the crop windows and the way back to the image are the processor's too)."""
    images = np.stack([photo("astronaut"), photo("camera")])
    boxes = np.array([[40.0, 20.0, 150.0, 220.0], [100.5, 60.0, 140.0, 90.0], [0.0, 0.0, 224.0, 224.0]])
    owners = np.array([0, 1, 1])
    coco = [[[40.0, 20.0, 110.0, 200.0]], [[100.5, 60.0, 39.5, 30.0], [0.0, 0.0, 224.0, 224.0]]]  # x, y, w, h
    reference = poses.decoder(images=list(images), boxes=coco, return_tensors="pt")["pixel_values"]
    centres, sizes = crop_windows(boxes, TINY_POSE_INPUT[1] / TINY_POSE_INPUT[0])
    crops = poses.crops(images, owners, centres, sizes)
    assert crops.shape == (3, 3, *TINY_POSE_INPUT)
    torch.testing.assert_close(crops, reference.float(), atol=0.02, rtol=0)  # 0.02: ~1/255 after normalising
    with torch.no_grad():
        outputs = poses.model(pixel_values=crops)
    expected = poses.decoder.post_process_pose_estimation(outputs, boxes=coco)
    keypoints = poses.keypoints(images, owners, boxes)
    assert keypoints.shape == (3, len(COCO_KEYPOINTS), 3)
    flat = [p for image in expected for p in image]
    for mine, theirs, centre, size in zip(keypoints, flat, centres, sizes):
        low, high = np.maximum(centre - size / 2, 0), np.minimum(centre + size / 2, SIZE)
        np.testing.assert_allclose(mine[:, :2], np.clip(theirs["keypoints"].numpy(), low, high), atol=1e-3)
        np.testing.assert_allclose(mine[:, 2], theirs["scores"].numpy(), atol=1e-5)


def test_poses_on_a_real_photo(poses):
    """OpenCV's people detector finds the cameraman (in one of the photo's two mirror images, at 224 px); every
    keypoint lies in the image and in its person's crop window."""
    records = [json.loads(p) for p in poses(batch(np.stack([photo("camera"), photo("camera", flip=True)])))]
    assert all((r["width"], r["height"]) == (SIZE, SIZE) for r in records)
    people = [found for r in records for found in r["people"]]
    assert people
    for found in people:
        x0, y0, x1, y1 = found["box"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE and 0.5 <= found["score"] <= 1
        points = np.array(found["keypoints"])
        assert points.shape == (len(COCO_KEYPOINTS), 3)
        assert ((points[:, :2] >= 0) & (points[:, :2] <= SIZE)).all()
        (centre,), (size,) = crop_windows(np.array([found["box"]]), TINY_POSE_INPUT[1] / TINY_POSE_INPUT[0])
        assert (np.abs(points[:, :2] - centre) <= size / 2 + 0.05).all()  # 0.05: the record rounds to 0.01
    # An image without people is an empty record, not an error.
    (empty,) = poses(batch(np.zeros((1, SIZE, SIZE, 3), np.uint8)))
    assert json.loads(empty)["people"] == []


def test_people_from_a_detr_checkpoint(weights, tmp_path):
    """With detector_weights the det labeler's transformers detector finds the people: every "person" it reports
    (and nothing else) gets a pose."""
    detr = save_tiny_model("det", tmp_path / "detr")
    config_file = detr / "config.json"  # the tiny DETR calls everything its last class: name that one "person"
    spec = json.loads(config_file.read_text())
    names = list(spec["id2label"].values())
    spec["id2label"] = dict(zip(spec["id2label"], [*names[:-1], "person"]))
    spec["label2id"] = {name: int(i) for i, name in spec["id2label"].items()}
    config_file.write_text(json.dumps(spec))
    detr = str(detr)
    config = LabelerConfig(weights=weights["human_poses"], detector_weights=detr, score_threshold=0.0)
    labeler = get_labeler("human_poses")(config)
    images = np.stack([photo("astronaut"), photo("chelsea")])
    detections = get_labeler("det")(LabelerConfig(weights=detr, score_threshold=0.0)).detect(batch(images))
    records = [json.loads(p) for p in labeler(batch(images))]
    expected = [sorted(d.box[2] - d.box[0] for d in found if d.name == "person") for found in detections]
    assert sum(map(len, expected)) > 0
    for record, widths in zip(records, expected):
        np.testing.assert_allclose(sorted((p["box"][2] - p["box"][0]) / SIZE for p in record["people"]), widths,
                                   atol=1e-3)
        assert all(len(p["keypoints"]) == len(COCO_KEYPOINTS) for p in record["people"])


# --- t5_caption ------------------------------------------------------------------------------------------------------
def test_t5_states_are_the_encoders_zero_padded(t5, weights):
    from transformers import AutoTokenizer, T5EncoderModel

    captions = ["a red circle", "two dogs sitting on the grass with a small cat " * 6, ""]
    states = [np.load(io.BytesIO(p), allow_pickle=False) for p in t5(batch(np.zeros((3, 0, 0, 3)), captions))]
    assert all(s.shape == (T5_LENGTH, 16) and s.dtype == np.float16 for s in states)
    tokenizer = AutoTokenizer.from_pretrained(weights["t5_caption"], local_files_only=True)
    model = T5EncoderModel.from_pretrained(weights["t5_caption"], local_files_only=True, use_safetensors=True)
    for caption, array in zip(captions, states):
        ids = tokenizer(caption, truncation=True, max_length=T5_LENGTH, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = model(input_ids=ids).last_hidden_state[0].numpy()
        n = ids.shape[1]  # the caption's tokens and its EOS; a long caption keeps T5_LENGTH of them
        assert n == min(T5_LENGTH, len(tokenizer(caption).input_ids))
        np.testing.assert_allclose(array[:n].astype(np.float32), expected, atol=2e-3, rtol=1e-2)
        assert not array[n:].any() and np.abs(array[:n]).sum(axis=1).min() > 0


def test_t5_weights_errors(weights):
    with pytest.raises(MissingWeightsError, match="labelers.t5_caption.weights"):
        get_labeler("t5_caption")(LabelerConfig())
    with pytest.raises(ValueError, match="'vitpose' model; labeler t5_caption runs T5EncoderModel"):
        get_labeler("t5_caption")(LabelerConfig(weights=weights["human_poses"]))


# --- both in actor pools, tokenized and evaluated ------------------------------------------------------------------
def write_photo_corpus(root) -> None:
    root.mkdir()
    captions = {"camera": "a man standing with a camera on a tripod", "astronaut": "an astronaut in front of a flag",
                "rocket": "a rocket on the launch pad", "chelsea": "a cat sitting"}
    for name, caption in captions.items():
        for flip in (False, True):
            stem = f"{name}_{int(flip)}"
            Image.fromarray(photo(name, flip)).save(root / f"{stem}.png")
            (root / f"{stem}.txt").write_text(caption)


def test_both_in_actor_pools_then_tokenized_and_evaluated(tmp_path, weights, ray_session):
    write_photo_corpus(tmp_path / "corpus")
    config = load_config(PreprocessConfig, None, [
        f"input={tmp_path / 'corpus'}", f"output={tmp_path / 'out'}", f"image.resolution={SIZE}",
        "modalities=[rgb, caption, human_poses, t5_caption]",
        f"labelers.human_poses.weights={weights['human_poses']}", "labelers.human_poses.score_threshold=0.5",
        f"labelers.t5_caption.weights={weights['t5_caption']}", f"labelers.t5_caption.max_length={T5_LENGTH}",
    ])  # both pools laid out by the job (pipeline/data/pool_layout.py)
    assert run_preprocess(config, log=lambda _: None)["samples_written"] == 8
    storage = Storage(config.output, StorageConfig())
    records = [json.loads(p) for _, p in iter_members(storage, "human_poses")]
    assert len(records) == 8 and any(r["people"] for r in records)
    states = [read_member("t5_caption", p) for _, p in iter_members(storage, "t5_caption")]
    assert len(states) == 8 and all(s.shape == (T5_LENGTH, 16) for s in states)

    # The tokenize stage: WordPiece for caption and poses, the signal tokenizer for t5_caption (frames = T5 tokens).
    texts = [p.decode() for _, p in iter_members(storage, "caption")]
    texts += [get_serializer("human_poses").to_text(r) for r in records]
    wordpiece = str(train_wordpiece(texts, vocab_size=4_400).save(tmp_path / "wordpiece"))
    torch.manual_seed(0)
    signal = new_tokenizer("t5_caption", "test/t5_caption", states, {"patch": 8, "codes_per_patch": 2})
    rgb = new_tokenizer("rgb", "test/rgb", [read_member("rgb", p) for _, p in iter_members(storage, "rgb")],
                        {"widths": (8,) * 5, "blocks": 0, "quantizer": {"levels": (4, 4, 3)}})  # 14 x 14 tokens
    tokenizers = {"caption": wordpiece, "human_poses": wordpiece, "t5_caption": str(signal.save(tmp_path / "t5")),
                  "rgb": str(rgb.save(tmp_path / "rgb"))}
    run_preprocess(config.model_copy(update={"stages": ("tokenize",), "tokenizers": tokenizers}), log=lambda _: None)
    assert load_tokenizer(tokenizers["t5_caption"]).tokens_per_sample == T5_LENGTH // 8 * 2

    for task_name in ("rgb_to_human_poses", "caption_to_t5_caption"):
        context = untrained_context(task_name, config.output, tokenizers)
        scores = context.task.evaluate(context)
        assert {s.metric for s in scores} == {m.name for m in context.task.metrics}
        assert all(math.isfinite(s.value) and math.isfinite(s.baseline) for s in scores)


def untrained_context(task_name: str, data: str, tokenizers: dict[str, str]):
    """The task's context on `data`, an untrained tiny model of its modalities standing in for a checkpoint."""
    import pipeline.eval.tasks  # noqa: F401 (registers the tasks)
    from pipeline.eval.checkpoint import EvalModel
    from pipeline.eval.context import TaskContext
    from pipeline.eval.registry import get_task
    from pipeline.model import build_model
    from schemas.batch import ModalitySpec, ModalityTable
    from schemas.evaluate import EvaluateConfig, ProbeConfig
    from schemas.model import ModelConfig

    task = get_task(task_name)
    config = EvaluateConfig(data=data, probe=ProbeConfig(test_fraction=0.5), tokenizers=tokenizers)
    context = TaskContext(task, None, config)
    torch.manual_seed(0)
    specs = [ModalitySpec.from_registry(m, load_tokenizer(tokenizers[m]).tokens_per_sample,
                                        load_tokenizer(tokenizers[m]).vocab_size) for m in task.modalities]
    table = ModalityTable.of(specs)
    context.model = EvalModel(build_model(ModelConfig(size="tiny"), table).eval(), table)
    return context

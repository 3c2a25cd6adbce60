"""Model-based labelers (depth, normals, CLIP/DINOv2 features, semseg) on tiny random-weight checkpoints of the real
architectures, loaded from disk through the same code path as real weights and checked against transformers' own
image processors and post-processing."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from model_weights import TINY_INPUT, build_model, save_tiny_model
from PIL import Image

from pipeline.data.inspect import iter_members, verify_output
from pipeline.data.labelers import DecodedBatch, get_labeler
from pipeline.data.labelers.image_model import PREPROCESSOR_FILE
from pipeline.data.labelers.weights import MissingWeightsError, resolve_weights
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.modalities import get_modality
from schemas.common import StorageConfig
from schemas.preprocess import LabelerConfig, PreprocessConfig

MODALITIES = ("depth", "normal", "clip_feature", "dinov2_feature", "dinov2_global", "semseg")
GRID = TINY_INPUT // 8  # patch 8
SHAPES = {  # at 32 px samples
    "depth": ((32, 32), np.float16), "normal": ((32, 32, 3), np.uint8), "semseg": ((32, 32), np.uint8),
    "clip_feature": ((GRID, GRID, 16), np.float16), "dinov2_feature": ((GRID, GRID, 32), np.float16),
    "dinov2_global": ((32,), np.float16),
}


def images(n: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    """Noise, a flat black image and a half-white one: inputs the models answer differently to."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    pixels[1 % n] = 0
    pixels[2 % n, : size // 2] = 255
    return pixels


def batch(pixels: np.ndarray) -> DecodedBatch:
    n, size = len(pixels), pixels.shape[1]
    return DecodedBatch(images=pixels, captions=[""] * n, original_sizes=[(size, size)] * n)


def decode(payload: bytes, ext: str) -> np.ndarray:
    if ext == "npy":
        assert payload.startswith(b"\x93NUMPY")
        return np.load(io.BytesIO(payload), allow_pickle=False)
    assert ext == "png" and payload.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(payload)))


def outputs(labeler, pixels: np.ndarray) -> list[np.ndarray]:
    return [decode(p, get_modality(labeler.modality).ext) for p in labeler(batch(pixels))]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-weights")
    return {m: str(save_tiny_model(m, root / m)) for m in MODALITIES}


@pytest.fixture(scope="module")
def labelers(weights) -> dict:
    return {m: get_labeler(m)(LabelerConfig(weights=weights[m])) for m in MODALITIES}


@pytest.mark.parametrize("modality", MODALITIES)
def test_payload_shape_dtype_and_format(labelers, modality):
    labeler = labelers[modality]
    assert labeler.needs_weights and labeler.needs_pool
    arrays = outputs(labeler, images())
    shape, dtype = SHAPES[modality]
    assert all(a.shape == shape and a.dtype == dtype for a in arrays), [(a.shape, a.dtype) for a in arrays]
    assert all(np.isfinite(a.astype(np.float32)).all() for a in arrays)
    assert not np.array_equal(arrays[0], arrays[1])  # the output depends on the image
    if modality == "normal":
        vectors = arrays[0].astype(np.float32) / 127.5 - 1
        assert np.allclose(np.linalg.norm(vectors, axis=-1), 1, atol=0.02)
    if modality == "semseg":
        assert all(a.max() < labeler.model.config.num_labels for a in arrays)


def reference(modality: str, weights: str, pixels: np.ndarray) -> list[np.ndarray]:
    """What transformers' own image processor, model and post-processing give for the same checkpoint."""
    import transformers as tf

    from pipeline.data.labelers.dpt_normals import DPTForSurfaceNormals

    processor = tf.AutoImageProcessor.from_pretrained(weights, local_files_only=True, backend="pil")
    inputs = processor(images=list(pixels), return_tensors="pt")
    sizes = [pixels.shape[1:3]] * len(pixels)
    with torch.inference_mode():
        if modality == "depth":
            out = tf.DPTForDepthEstimation.from_pretrained(weights, local_files_only=True)(**inputs)
            return [d["predicted_depth"].numpy() for d in processor.post_process_depth_estimation(out, sizes)]
        if modality == "normal":
            encoded = DPTForSurfaceNormals.from_pretrained(weights, local_files_only=True)(**inputs).predicted_depth
            normals = torch.nn.functional.normalize(encoded.clamp(0, 1) * 2 - 1, dim=1, eps=1e-6)
            return list(((normals + 1) * 127.5).round().permute(0, 2, 3, 1).numpy())
        if modality == "semseg":
            out = tf.SegformerForSemanticSegmentation.from_pretrained(weights, local_files_only=True)(**inputs)
            return [m.numpy() for m in processor.post_process_semantic_segmentation(out, sizes)]
        if modality == "clip_feature":
            model = tf.CLIPVisionModelWithProjection.from_pretrained(weights, local_files_only=True)
            hidden = model(**inputs).last_hidden_state[:, 1:]
            tokens = model.visual_projection(model.vision_model.post_layernorm(hidden))
            return list(tokens.reshape(len(pixels), GRID, GRID, -1).numpy())
        out = tf.Dinov2Model.from_pretrained(weights, local_files_only=True)(**inputs)
        if modality == "dinov2_global":
            return list(out.pooler_output.numpy())
        return list(out.last_hidden_state[:, 1:].reshape(len(pixels), GRID, GRID, -1).numpy())


@pytest.mark.parametrize("modality", MODALITIES)
def test_matches_transformers_reference(labelers, weights, modality, tmp_path):
    if modality.startswith("dinov2"):
        # DINOv2's processor resizes past the crop and crops again; our samples are crops already (no second crop),
        # so compare with the processor told to resize straight to the input size.
        path = shutil.copytree(weights[modality], tmp_path / "w")
        config = json.loads((path / PREPROCESSOR_FILE).read_text())
        (path / PREPROCESSOR_FILE).write_text(json.dumps({**config, "size": {"shortest_edge": TINY_INPUT}}))
        weights = {modality: str(path)}
    pixels = images()
    ours = [a.astype(np.float32) for a in outputs(labelers[modality], pixels)]
    theirs = reference(modality, weights[modality], pixels)
    for mine, expected in zip(ours, theirs):
        if modality in ("semseg", "normal"):
            assert np.mean(mine == expected) > 0.99  # class ids / quantised vectors: rare ties may flip
        else:
            np.testing.assert_allclose(mine, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("modality", ["depth", "dinov2_feature"])
def test_bf16_labels_are_close_to_fp32(labelers, weights, modality):
    """bf16 (the GPU setting) runs the same code; on CPU it must agree with fp32 to bf16's ~3 significant digits."""
    low = get_labeler(modality)(LabelerConfig(weights=weights[modality], precision="bf16"))
    assert next(low.model.parameters()).dtype == low.torch.bfloat16
    pixels = images()
    for mine, reference in zip(outputs(low, pixels), outputs(labelers[modality], pixels)):
        assert mine.dtype == reference.dtype and mine.shape == reference.shape
        mine, reference = mine.astype(np.float32), reference.astype(np.float32)
        assert np.abs(mine - reference).mean() < 0.05 * np.abs(reference).mean() + 1e-3


def test_pixel_values_match_the_image_processor(labelers, weights):
    import transformers as tf

    pixels = images()
    for modality in ("depth", "clip_feature", "semseg"):
        processor = tf.AutoImageProcessor.from_pretrained(weights[modality], local_files_only=True, backend="pil")
        expected = processor(images=list(pixels), return_tensors="pt")["pixel_values"]
        assert torch.allclose(labelers[modality].pixel_values(pixels), expected, atol=1e-5), modality


@pytest.mark.parametrize("modality", MODALITIES)
def test_deterministic(labelers, weights, modality):
    pixels = images()
    first = labelers[modality](batch(pixels))
    assert labelers[modality](batch(pixels)) == first
    assert get_labeler(modality)(LabelerConfig(weights=weights[modality]))(batch(pixels)) == first  # fresh load
    alone = [labelers[modality](batch(pixels[i : i + 1]))[0] for i in range(len(pixels))]
    ext = get_modality(modality).ext
    for together, single in zip(first, alone):  # batching does not change the labels beyond float noise
        a, b = decode(together, ext).astype(np.float32), decode(single, ext).astype(np.float32)
        assert np.mean(np.abs(a - b) <= 1e-2 + 1e-2 * np.abs(b)) > 0.99


def test_resized_to_the_sample_resolution(labelers):
    pixels = images(size=48)  # the tiny models run at 32 px; dense maps come back at 48, feature grids stay 4x4
    assert outputs(labelers["depth"], pixels)[0].shape == (48, 48)
    assert outputs(labelers["normal"], pixels)[0].shape == (48, 48, 3)
    assert outputs(labelers["semseg"], pixels)[0].shape == (48, 48)
    assert outputs(labelers["dinov2_feature"], pixels)[0].shape == (GRID, GRID, 32)


def test_clip_feature_from_a_whole_clip_checkpoint(labelers, weights, tmp_path):
    """CLIP is published as a whole CLIPModel (openai/clip-vit-base-patch16): its vision tower loads from it."""
    import transformers as tf

    vision = labelers["clip_feature"].model
    text = tf.CLIPTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                             vocab_size=99, projection_dim=vision.config.projection_dim)
    whole = tf.CLIPModel(tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision.config.to_dict(),
                                       projection_dim=vision.config.projection_dim))
    whole.vision_model.load_state_dict(vision.vision_model.state_dict())
    whole.visual_projection.load_state_dict(vision.visual_projection.state_dict())
    whole.save_pretrained(tmp_path, safe_serialization=True)
    shutil.copy(f"{weights['clip_feature']}/{PREPROCESSOR_FILE}", tmp_path)
    from_whole = get_labeler("clip_feature")(LabelerConfig(weights=str(tmp_path)))
    assert from_whole(batch(images())) == labelers["clip_feature"](batch(images()))


def test_normals_model_has_the_depth_models_layout():
    """Same module names as DPT depth (so converted Omnidata weights load alike), 3 output channels."""
    torch.manual_seed(0)
    depth = build_model("depth")[0].state_dict()
    normal = build_model("normal")[0].state_dict()
    assert depth.keys() == normal.keys()
    assert [k for k in depth if depth[k].shape != normal[k].shape] == ["head.head.4.weight", "head.head.4.bias"]
    assert normal["head.head.4.weight"].shape[0] == 3


def test_weights_errors(weights, tmp_path):
    with pytest.raises(MissingWeightsError, match=r"labeler depth needs weights: set labelers\.depth\.weights to a "
                                                  r"local path or s3:// URI"):
        get_labeler("depth")(LabelerConfig())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_labeler("semseg")(LabelerConfig(weights=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="'dinov2' model; labeler depth runs DPTForDepthEstimation"):
        get_labeler("depth")(LabelerConfig(weights=weights["dinov2_global"]))
    no_processor = shutil.copytree(weights["depth"], tmp_path / "no-processor")
    (no_processor / PREPROCESSOR_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=PREPROCESSOR_FILE):
        get_labeler("depth")(LabelerConfig(weights=str(no_processor)))
    # A depth checkpoint holds no normals head: loading it as normals must fail, not label with a random head.
    with pytest.raises(ValueError, match="do not fit DPTForSurfaceNormals"):
        get_labeler("normal")(LabelerConfig(weights=weights["depth"]))


def test_never_unpickles(weights, tmp_path):
    """Only safetensors are read: a directory holding the same weights as a pickle is refused."""
    pickled = tmp_path / "pickled"
    shutil.copytree(weights["depth"], pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    model = build_model("depth")[0]
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        get_labeler("depth")(LabelerConfig(weights=str(pickled)))


def test_weights_from_s3(labelers, weights, s3_bucket):
    bucket, overrides = s3_bucket
    storage = load_config(PreprocessConfig, None, overrides).storage
    uri = f"s3://{bucket}/weights/dpt-depth"
    remote = Storage(uri, storage)
    local = Storage(weights["depth"], StorageConfig())
    for relpath in local.list():
        remote.write_atomic(relpath, local.read_bytes(relpath))
    from_s3 = get_labeler("depth")(LabelerConfig(weights=uri), storage=storage)
    pixels = images()
    assert from_s3(batch(pixels)) == labelers["depth"](batch(pixels))
    # Weights replaced at the same URI are fetched again, never served stale from the cache.
    cached = resolve_weights(uri, storage)
    assert resolve_weights(uri, storage) == cached
    changed = json.loads(remote.read_bytes("config.json")) | {"tessera_note": "retrained"}
    remote.write_atomic("config.json", json.dumps(changed).encode())
    refreshed = resolve_weights(uri, storage)
    assert refreshed != cached and json.loads((refreshed / "config.json").read_text())["tessera_note"] == "retrained"


def test_depth_in_an_actor_pool_end_to_end(tmp_path, weights, ray_session):
    corpus = tmp_path / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=16, image_size=64, samples_per_shard=8))
    config = load_config(PreprocessConfig, None, [
        f"input={corpus}", f"output={tmp_path / 'out'}", "image.resolution=32", "modalities=[rgb, caption, depth]",
        "labelers.depth.concurrency=1", f"labelers.depth.weights={weights['depth']}", "labelers.depth.num_cpus=0.5",
    ])
    assert run_preprocess(config, log=lambda _: None)["samples_written"] == 16
    output = Storage(config.output, StorageConfig())
    summary = verify_output(output)
    assert summary.samples == 16 and {"rgb", "caption", "depth"} <= set(summary.folders)
    maps = [decode(payload, "npy") for _, payload in iter_members(output, "depth")]
    assert len(maps) == 16 and all(m.shape == (32, 32) and m.dtype == np.float16 for m in maps)

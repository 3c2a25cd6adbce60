"""The whole preprocess job against s3:// on moto's HTTP server: input and output both in a bucket."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.data.inspect import verify_output
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("ray_session")


def test_s3_in_s3_out_matches_local_run(tmp_path, s3_bucket):
    bucket, storage_overrides = s3_bucket
    corpus = tmp_path / "corpus"
    write_corpus(SampleCorpusConfig(out=str(corpus), samples=24, image_size=48, samples_per_shard=8))
    config = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml",
                         [f"input=s3://{bucket}/raw", f"output=s3://{bucket}/shards", "image.resolution=32",
                          *storage_overrides])
    remote_in = Storage(config.input, config.storage)
    for path in sorted(corpus.iterdir()):
        remote_in.write_atomic(path.name, path.read_bytes())

    logs: list[str] = []
    report = run_preprocess(config, log=logs.append)
    assert report["samples_written"] == 24 and report["units"] == 3

    output = Storage(config.output, config.storage)
    summary = verify_output(output)
    assert summary.samples == 24 and summary.shards == 3

    local = config.model_copy(update={"input": str(corpus), "output": str(tmp_path / "local"),
                                      "storage": StorageConfig()})
    run_preprocess(local, log=lambda _: None)
    for path in sorted((tmp_path / "local").rglob("shard-*.tar")):
        relpath = str(path.relative_to(tmp_path / "local"))
        if relpath.startswith("source/"):  # records where each sample came from: s3://... here, a path there
            assert f"s3://{bucket}/raw/corpus-".encode() in output.read_bytes(relpath)
            continue
        assert hashlib.sha256(output.read_bytes(relpath)).digest() == hashlib.sha256(path.read_bytes()).digest()

    # a rerun on S3 finds every unit done
    rerun: list[str] = []
    run_preprocess(config, log=rerun.append)
    assert "3 already done, 0 to do" in rerun[0]

    # credentials never reach logs or outputs
    secret = config.storage.secret_access_key.get_secret_value()
    assert not any(secret in line for line in logs + rerun)
    for relpath in output.list():
        assert secret.encode() not in output.read_bytes(relpath), relpath

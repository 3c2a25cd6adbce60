"""Pretraining on a real local Ray cluster with real DeepSpeed engines, on token shards made by the real pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.demo import TEXT_VOCAB
from pipeline.data.inspect import iter_members
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from pipeline.tokenizers import train_wordpiece
from pipeline.train.trainer import run_pretrain
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import PreprocessConfig, StorageConfig
from schemas.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("pretrain-data")
    write_corpus(SampleCorpusConfig(out=str(root / "corpus"), samples=64, image_size=32, samples_per_shard=16))
    label = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml",
                        [f"input={root / 'corpus'}", f"output={root / 'shards'}", "image.resolution=32"])
    run_preprocess(label, log=lambda _: None)
    captions = [p.decode() for _, p in iter_members(Storage(label.output, StorageConfig()), "caption")]
    tokenizer_dir = train_wordpiece(captions, vocab_size=TEXT_VOCAB).save(root / "wordpiece")
    text = ("caption", "color_palette", "metadata")
    run_preprocess(label.model_copy(update={"stages": ("tokenize",), "tokenizers": {m: str(tokenizer_dir)
                                                                                    for m in text}}),
                   log=lambda _: None)
    return label.output


def config(tokens: str, tmp_path: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data={tokens}", f"storage_path={tmp_path / 'runs'}", "steps=24", "log_every=4", "checkpoint_every=12",
        "workers=2", "loader.batch_size=8", "masking.input_tokens=32", "masking.target_tokens=32", *overrides])


def losses(summary: dict) -> list[float]:
    return [json.loads(line)["loss"] for line in Path(summary["metrics_file"]).read_text().splitlines()]


def test_loss_falls_and_stages_0_and_3_follow_the_same_trajectory(tokens, tmp_path):
    curves = {}
    for stage in (0, 3):
        summary = run_pretrain(config(tokens, tmp_path / f"stage{stage}", f"zero.stage={stage}",
                                      "optim.warmup_steps=4", "precision=fp32"))
        curves[stage] = losses(summary)
        assert summary["metrics"]["step"] == 24 and len(curves[stage]) == 6
        assert curves[stage][-1] < 0.8 * curves[stage][0]
        assert Path(summary["plot"]).stat().st_size > 0 and summary["checkpoint"] is not None
        assert list((Path(summary["metrics_file"]).parent / "tb").glob("events.out.tfevents.*"))
    # Same seed, same data, fp32: partitioning changes only the order of floating-point reductions.
    assert curves[0] == pytest.approx(curves[3], rel=1e-3)


def test_killed_worker_resumes_from_the_last_checkpoint(tokens, tmp_path):
    hooks = {"fail_at_step": 18, "failure_marker": str(tmp_path / "failed-once")}
    summary = run_pretrain(config(tokens, tmp_path, "max_failures=1", "zero.stage=2"), test_hooks=hooks)
    assert (tmp_path / "failed-once").exists()  # the worker did die
    assert summary["metrics"]["step"] == 24
    steps = [json.loads(line)["step"] for line in Path(summary["metrics_file"]).read_text().splitlines()]
    # 4, 8, 12 (checkpoint), 16, then the crash at 18 and a restart from 12: 16 is logged twice, then 20, 24
    assert steps == [4, 8, 12, 16, 16, 20, 24]


def test_export_after_stage_3_matches_deepspeeds_own_consolidation(tokens, tmp_path):
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from jobs.export import main as export_main
    from pipeline.data.loader import TokenShardLoader, to_torch
    from pipeline.train.export import load_exported
    from pipeline.train.loop import TAG

    run = config(tokens, tmp_path, "zero.stage=3", "steps=6", "checkpoint_every=6", "log_every=3")
    summary = run_pretrain(run)
    out = tmp_path / "export" / "tiny.safetensors"
    assert export_main(["--checkpoint", summary["checkpoint"], "--out", str(out)]) == 0
    model, table, meta = load_exported(str(out))
    assert meta["step"] == 6 and table.names == ("caption", "color_palette", "metadata")
    # DeepSpeed's own zero_to_fp32 over the ZeRO-3 shards we just wrote gives the same weights
    theirs = get_fp32_state_dict_from_zero_checkpoint(summary["checkpoint"], tag=TAG)
    ours = model.state_dict()
    assert set(theirs) == set(ours)
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor.float())
    batch = next(iter(TokenShardLoader(tokens, table, run.masking, run.loader)))
    assert torch.isfinite(model(to_torch(batch)).loss)

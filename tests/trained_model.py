"""One tiny model trained by the real pipeline, shared by every test that needs a trained model (evaluation,
generation): the sample corpus preprocessed with its ground-truth depth and semseg and the default recipe's Canny
edges, tokenized (WordPiece for text, tiny random-weight conv tokenizers for the maps), pretrained briefly with Ray
Train + DeepSpeed and exported.
Built once per session by the `trained_tiny` fixture in conftest.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from jobs.demo import TEXT_VOCAB
from pipeline.data.inspect import iter_members
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.data.storage import Storage
from pipeline.tokenizers import train_wordpiece
from pipeline.tokenizers.codecs import read_member
from pipeline.tokenizers.fit import new_tokenizer
from pipeline.train.export import export_checkpoint
from pipeline.train.trainer import run_pretrain
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.common import StorageConfig
from schemas.preprocess import PreprocessConfig
from schemas.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parent.parent

TEXT = ("caption", "color_palette", "metadata")
MAPS = ("rgb", "depth", "semseg", "canny_edge")  # canny_edge: labelled from pixels by the default labeler
# 32 px -> 8x8 tokens
TINY_IMAGE = {"widths": (8, 8, 8), "blocks": 0, "quantizer": {"levels": (4, 4, 3)}}


def random_image_tokenizer(storage: Storage, modality: str, directory: Path) -> str:
    """Untrained: its codes are still a fixed function of the map, which is all the eval tasks need of it. Fitted
    on every sample so that a class map's tokenizer knows every class."""
    samples = [read_member(modality, payload) for _, payload in iter_members(storage, modality)]
    torch.manual_seed(0)  # the same tokens every run, so the model trained on them is the same too
    return str(new_tokenizer(modality, f"test/{modality}", samples, TINY_IMAGE).save(directory / modality))


def train_tiny_model(root: Path) -> SimpleNamespace:
    """Needs a Ray connection. Returns data (the preprocess output), model (exported safetensors), tokenizers
    (modality -> tokenizer directory) and root."""
    write_corpus(SampleCorpusConfig(out=str(root / "corpus"), samples=160, image_size=32, samples_per_shard=40))
    label = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml", [
        f"input={root / 'corpus'}", f"output={root / 'shards'}", "image.resolution=32",
        f"modalities=[{', '.join(MAPS + TEXT)}]", "labelers.depth.source=ground_truth",
        "labelers.semseg.source=ground_truth"])
    run_preprocess(label, log=lambda _: None)
    storage = Storage(label.output, StorageConfig())
    captions = [p.decode() for _, p in iter_members(storage, "caption")]
    wordpiece = str(train_wordpiece(captions, vocab_size=TEXT_VOCAB).save(root / "wordpiece"))
    tokenizers = {**{m: wordpiece for m in TEXT}, **{m: random_image_tokenizer(storage, m, root) for m in MAPS}}
    run_preprocess(label.model_copy(update={"stages": ("tokenize",), "tokenizers": tokenizers}), log=lambda _: None)
    pretrain = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", [
        f"data={label.output}", f"storage_path={root / 'runs'}", f"modalities=[{', '.join(TEXT + MAPS)}]",
        "steps=40", "checkpoint_every=40", "log_every=20", "optim.warmup_steps=6"])
    summary = run_pretrain(pretrain)
    model = str(root / "models" / "tiny.safetensors")
    export_checkpoint(summary["checkpoint"], model)
    return SimpleNamespace(data=label.output, model=model, tokenizers=tokenizers, root=root)

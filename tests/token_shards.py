"""Token shards made by the real pipeline at toy size: sample corpus, label, shared WordPiece, tokenize."""

from __future__ import annotations

from pathlib import Path

from jobs.demo import TEXT_VOCAB
from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.train.wordpiece import run_train_wordpiece
from schemas.config import load_config
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import PreprocessConfig
from schemas.train_tokenizer import TrainTokenizerConfig

REPO = Path(__file__).resolve().parent.parent
TEXT_MODALITIES = ("caption", "color_palette", "metadata")


def write_token_shards(root: Path) -> str:
    """64 samples at 32 px in 4 shards, with tok_caption, tok_color_palette and tok_metadata; needs a Ray
    connection. Returns the preprocess output, which is what pretrain's --data takes."""
    write_corpus(SampleCorpusConfig(out=str(root / "corpus"), samples=64, image_size=32, samples_per_shard=16))
    label = load_config(PreprocessConfig, REPO / "configs/preprocess/default.yaml",
                        [f"input={root / 'corpus'}", f"output={root / 'shards'}", "image.resolution=32"])
    run_preprocess(label, log=lambda _: None)
    tokenizer_dir = run_train_wordpiece(TrainTokenizerConfig(modality="caption", input=label.output,
                                                             output=str(root / "wordpiece"),
                                                             model={"vocab_size": TEXT_VOCAB}))["output"]
    tokenize = label.model_copy(update={"stages": ("tokenize",),
                                        "tokenizers": {m: str(tokenizer_dir) for m in TEXT_MODALITIES}})
    run_preprocess(tokenize, log=lambda _: None)
    return label.output

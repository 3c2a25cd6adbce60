"""Token shards for a CPU-scale study from the embedded sample corpus: `python -m jobs.study sample-data OUT`.

A study needs more distinct samples than the demo's 256 (its runs would otherwise see each sample dozens of times
and measure memorisation) but only the text-like modalities, whose labels are cheap: generate the corpus, label
caption, color_palette and metadata (rgb only as the labelers' input, at 32 px), train the shared WordPiece
vocabulary on the captions, tokenize. 4,096 samples take about a minute on 2 cores.
"""

from __future__ import annotations

from pipeline.data.preprocess import run_preprocess
from pipeline.data.sample_corpus import write_corpus
from pipeline.train.wordpiece import run_train_wordpiece
from schemas.corpus import SampleCorpusConfig
from schemas.preprocess import PreprocessConfig
from schemas.train_tokenizer import TrainTokenizerConfig

TEXT = ("caption", "color_palette", "metadata")


def write_study_data(out: str, samples: int, vocab_size: int, log=print) -> dict:
    """Corpus, label shards and token shards under `out` (a local folder); returns where the shards are and the
    trained vocabulary's size, which a study's `pretrain.vocab_sizes` sizes its tables to. Needs a Ray connection."""
    corpus = SampleCorpusConfig(out=f"{out}/corpus", samples=samples, seed=0, image_size=64,
                                samples_per_shard=256, workers=2)
    write_corpus(corpus)
    log(f"{samples} samples at {corpus.out}")
    config = PreprocessConfig.model_validate({
        "input": corpus.out, "output": f"{out}/shards", "modalities": ["rgb", *TEXT],
        "image": {"resolution": 32}, "reader": {"samples_per_unit": 256}})
    run_preprocess(config, log=log)
    tokenizer = run_train_wordpiece(TrainTokenizerConfig(
        modality="caption", input=config.output, output=f"{out}/wordpiece", model={"vocab_size": vocab_size}))
    report = run_preprocess(config.model_copy(update={
        "stages": ("tokenize",), "tokenizers": {m: str(tokenizer["output"]) for m in TEXT}}), log=log)
    for folder, stats in report["tokens"].items():
        log(f"  {folder:<18} {stats['tokens']:>8} tokens, {stats['mean_per_sample']:>6} per sample")
    return {"data": config.output, "vocab_size": tokenizer["tokenizer"].vocab_size}

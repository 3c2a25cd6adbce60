"""The embedded sample corpus: procedural scenes with exact ground truth plus a few real photos, written as
img2dataset-style WebDataset tars, so the whole pipeline can run and be checked without downloading anything.

`scenes` samples and renders scenes, `captions` describes them, `photos` crops skimage.data photos, `samples`
turns sample (seed, index) into tar members, and `writer` cuts the corpus into shards and commits them.
"""

from pipeline.data.sample_corpus.writer import CORPUS_FILE, ShardSummary, corpus_shard_name, write_corpus

__all__ = ["CORPUS_FILE", "ShardSummary", "corpus_shard_name", "write_corpus"]

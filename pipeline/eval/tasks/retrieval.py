"""Cross-modal retrieval through the shared encoder, registered both ways for each (modality, caption) pair: each
sample's pooled encoder features from one modality alone query those of the other; recall@k against chance.

A retrieved item is a hit when its sample has the same caption as the query's sample (identical caption token rows:
the same text as the model reads it, lowercased and normalised by the text tokenizer). The audio corpus says each
word with several voices and holds several clips of each sound class, so clips are told apart only by what their
caption says; where every caption is distinct this is the usual one true match per query. Chance is a random
ranking's recall@k with each query's own number of hits (k / n with one each).
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.metrics import chance_recall_at_k, recall_at_k
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, Score, TokenSplit, register_task

KS = (1, 5)
CAPTION = "caption"
PAIRS = (("rgb", CAPTION), ("audio", CAPTION))  # each registered both ways


def caption_labels(samples: list[EvalSample]) -> np.ndarray:
    """One id per sample, shared by the samples whose caption token rows are identical."""
    ids: dict[tuple, int] = {}
    return np.array([ids.setdefault((row.shape, row.tobytes()), len(ids))
                     for row in (np.ascontiguousarray(s.tokens[CAPTION], np.int64) for s in samples)], np.int64)


def evaluate_retrieval(ctx: TaskContext, query: str, gallery: str) -> list[Score]:
    """Scored on the score split only (no fitting happens, but the candidates match the probes' score set)."""
    _, score = ctx.fit_and_score()
    labels = caption_labels(score)
    if len(set(labels.tolist())) < 2:
        raise DataUnmet(f"the score set's {len(score)} samples hold fewer than two distinct captions")
    rows = [s.tokens for s in score]
    size = ctx.config.probe.batch_size
    q = ctx.model.pooled_features(rows, (query,), size)
    g = ctx.model.pooled_features(rows, (gallery,), size)
    hits = np.bincount(labels)[labels]  # gallery items each query counts as a hit, its own pair included
    return [Score(f"recall@{k}", recall_at_k(q, g, k, labels), chance_recall_at_k(len(rows), k, hits)) for k in KS]


def register_retrieval(query: str, gallery: str) -> None:
    register_task(name=f"retrieval_{query}_to_{gallery}", inputs=(query,), target=gallery, head=HeadKind.NONE,
                  data=TokenSplit((query, gallery)), metrics=tuple(Metric(f"recall@{k}", True) for k in KS),
                  baseline="chance", evaluate=functools.partial(evaluate_retrieval, query=query, gallery=gallery),
                  description=f"cosine similarity of mean-pooled encoder features, {query} queries {gallery}; a hit "
                              f"is any {gallery} item whose sample has the same caption text (chance counts them)")


for _modality, _caption in PAIRS:
    register_retrieval(_modality, _caption)
    register_retrieval(_caption, _modality)

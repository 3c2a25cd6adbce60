"""Cross-modal retrieval between RGB and caption: each sample's pooled encoder features from one modality alone
query those of the other; recall@k against chance (k / number of candidates)."""

from __future__ import annotations

import functools

from pipeline.eval.context import TaskContext
from pipeline.eval.metrics import chance_recall_at_k, recall_at_k
from pipeline.eval.registry import HeadKind, Metric, Score, TokenSplit, register_task

KS = (1, 5)


def evaluate_retrieval(ctx: TaskContext, query: str, gallery: str) -> list[Score]:
    """Scored on the score split only (no fitting happens, but the candidates match the probes' score set)."""
    _, score = ctx.fit_and_score()
    rows = [s.tokens for s in score]
    size = ctx.config.probe.batch_size
    q = ctx.model.pooled_features(rows, (query,), size)
    g = ctx.model.pooled_features(rows, (gallery,), size)
    return [Score(f"recall@{k}", recall_at_k(q, g, k), chance_recall_at_k(len(rows), k)) for k in KS]


for _query, _gallery in (("rgb", "caption"), ("caption", "rgb")):
    register_task(name=f"retrieval_{_query}_to_{_gallery}", inputs=(_query,), target=_gallery, head=HeadKind.NONE,
                  data=TokenSplit((_query, _gallery)), metrics=tuple(Metric(f"recall@{k}", True) for k in KS),
                  baseline="chance", evaluate=functools.partial(evaluate_retrieval, query=_query, gallery=_gallery),
                  description=f"cosine similarity of mean-pooled encoder features, {_query} queries {_gallery}")

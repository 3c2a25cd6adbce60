"""Graph-family classification on the sample corpus's procedural graphs (Erdos-Renyi, Barabasi-Albert, Watts-
Strogatz, trees, grids, caveman graphs): the family from the graph's tokens alone, linear probe on the frozen
encoder's pooled features against the majority class. The family comes from the sample's raw caption (the
`caption` label folder, an aux folder beside the tokens); the real graphs, whose captions name no family, are left
out.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.sample_corpus.graph import FAMILIES, family_of_caption
from pipeline.eval.context import EvalSample, TaskContext
from pipeline.eval.heads import pooled_features, probe_accuracy
from pipeline.eval.registry import DataUnmet, HeadKind, Metric, Score, TokenSplit, register_task

GRAPH, CAPTION = "graph", "caption"


def with_family(samples: list[EvalSample]) -> tuple[list[EvalSample], np.ndarray]:
    pairs = [(s, family_of_caption(s.aux[CAPTION]["txt"].decode("utf-8"))) for s in samples]
    pairs = [(s, list(FAMILIES).index(f)) for s, f in pairs if f is not None]
    return [s for s, _ in pairs], np.array([y for _, y in pairs], np.int64)


def evaluate_graph_family(ctx: TaskContext) -> list[Score]:
    fit, score = ctx.fit_and_score()
    (fit, y_fit), (score, y_score) = with_family(fit), with_family(score)
    if len(fit) < 2 or not len(score):  # the data's graphs are not the sample corpus's procedural ones
        raise DataUnmet(f"too few procedural graphs whose caption names their family (fit {len(fit)}, "
                        f"score {len(score)})")
    x_fit, x_score = pooled_features(ctx, (fit, score), (GRAPH,))
    return probe_accuracy(ctx, x_fit, y_fit, x_score, y_score)


register_task(name="graph_family", inputs=(GRAPH,), target="graph family", head=HeadKind.LINEAR_PROBE,
              data=TokenSplit((GRAPH,), (CAPTION,)), metrics=(Metric("accuracy", True),),
              baseline="majority class", evaluate=evaluate_graph_family,
              description="procedural graph family from graph tokens, linear probe on mean-pooled encoder features")

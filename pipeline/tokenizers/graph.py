"""Graphs -> a sequence of node and edge tokens, in a canonical node order; fitted (the node vocabulary), not trained.

Nodes are renumbered by breadth-first search from the highest-degree node, neighbours taken highest degree first
(ties by the file's order), the next component starting at the highest-degree node left: the same graph in any
file order mostly gets the same sequence, and BFS keeps each node's neighbours at nearby indices. The sequence is

    [COUNT n] adj(0) NEXT adj(1) NEXT ... adj(n-1)

where adj(u) lists, as NODE tokens, u's neighbours v >= u (each edge once); trailing NEXTs are dropped. That is
1 + E + at most n - 1 tokens. A graph over `max_nodes` keeps its first `max_nodes` nodes in BFS order; a row cut
at `max_len` keeps the edges before the cut. Both show up in the recovery scores. Ids: 0 PAD, 1 NEXT, then NODE 0..
max_nodes - 1, then COUNT 0..max_nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import Field

from pipeline.tokenizers.base import TokenizerConfig, register_family
from pipeline.tokenizers.fitted import FittedTokenizer
from schemas.config import ConfigModel
from schemas.modalities import TokenizerFamily
from schemas.raw_members import GraphRecord

NEXT_ID = 1
FIRST_NODE_ID = 2


class GraphSeqSettings(ConfigModel):
    max_nodes: int | None = Field(default=None, ge=1)  # None: fitted, the largest training graph's node count


def canonical_order(graph: GraphRecord) -> list[int]:
    """Node indices in BFS order from the highest-degree node, component by component (see the module doc)."""
    neighbours: list[list[int]] = [[] for _ in range(graph.nodes)]
    for u, v in graph.edges:
        neighbours[u].append(v)
        if u != v:
            neighbours[v].append(u)
    degree = [len(n) for n in neighbours]
    by_degree = sorted(range(graph.nodes), key=lambda i: (-degree[i], i))
    seen = [False] * graph.nodes
    order: list[int] = []
    for start in by_degree:
        if seen[start]:
            continue
        seen[start] = True
        queue = deque([start])
        while queue:
            u = queue.popleft()
            order.append(u)
            for v in sorted(neighbours[u], key=lambda i: (-degree[i], i)):
                if not seen[v]:
                    seen[v] = True
                    queue.append(v)
    return order


def relabelled(graph: GraphRecord) -> GraphRecord:
    """The graph with node i renamed to its position in `canonical_order` (what decoding gives back)."""
    rank = {node: i for i, node in enumerate(canonical_order(graph))}
    return GraphRecord.build(graph.nodes, ((rank[u], rank[v]) for u, v in graph.edges))


@register_family
class GraphTokenizer(FittedTokenizer):
    family = TokenizerFamily.GRAPH_SEQ
    settings_model = GraphSeqSettings

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        self.settings = GraphSeqSettings.model_validate(config.settings)
        if self.settings.max_nodes is None or config.vocab_size != 3 + 2 * self.settings.max_nodes:
            raise ValueError(f"{config.tokenizer_id}: vocab_size {config.vocab_size} is not 3 + 2 * max_nodes")
        self.max_nodes = self.settings.max_nodes
        self.first_count_id = FIRST_NODE_ID + self.max_nodes

    @staticmethod
    def read_member(member: bytes) -> GraphRecord:
        return GraphRecord.from_member(member)

    @classmethod
    def fit(cls, values: Sequence[GraphRecord], tokenizer_id: str, settings: dict, vocab_limit: int) -> GraphTokenizer:
        s = GraphSeqSettings.model_validate(settings)
        if not values and s.max_nodes is None:
            raise ValueError("no training graphs to fit max_nodes on")
        max_nodes = s.max_nodes or max(2, max(g.nodes for g in values))
        max_nodes = min(max_nodes, (vocab_limit - 3) // 2)  # the registry's vocabulary caps the node ids
        config = TokenizerConfig(family=cls.family, tokenizer_id=tokenizer_id, vocab_size=3 + 2 * max_nodes,
                                 files=(), settings=GraphSeqSettings(max_nodes=max_nodes).model_dump(mode="json"))
        return cls(config)

    def encode_one(self, graph: GraphRecord) -> list[int]:
        canonical = relabelled(graph)
        n = min(canonical.nodes, self.max_nodes)
        forward: list[list[int]] = [[] for _ in range(n)]
        for u, v in canonical.edges:  # u <= v, sorted: each list comes out ascending
            if v < n:
                forward[u].append(v)
        ids = [self.first_count_id + n]
        for u in range(n):
            if u:
                ids.append(NEXT_ID)
            ids += [FIRST_NODE_ID + v for v in forward[u]]
        while ids[-1] == NEXT_ID:
            ids.pop()
        return ids

    def decode(self, ids) -> list[GraphRecord]:
        """Rows of ids -> graphs in canonical numbering. Tokens that make no edge (a node index past the count, a
        second COUNT) are skipped, so any id row decodes."""
        graphs = []
        for row in ids:
            row = self.unpadded(row)
            n, u, edges = 0, 0, []
            if row and row[0] >= self.first_count_id:
                n, row = row[0] - self.first_count_id, row[1:]
            for i in row:
                if i == NEXT_ID:
                    u += 1
                elif FIRST_NODE_ID <= i < self.first_count_id and u <= i - FIRST_NODE_ID < n:
                    edges.append((u, i - FIRST_NODE_ID))
            graphs.append(GraphRecord.build(n, edges))
        return graphs

    def scores(self, values: Sequence[GraphRecord], max_len: int) -> dict[str, float]:
        """Edge-set F1 against the whole graph (canonical numbering), the share of graphs recovered exactly (node
        count and every edge), and the share whose sequence fits `max_len`."""
        rows = [self.encode_one(g) for g in values]
        decoded = self.decode(self.encode(values, max_len))
        f1, exact = [], []
        for graph, back in zip(values, decoded):
            truth, got = set(relabelled(graph).edges), set(back.edges)
            f1.append(1.0 if not truth and not got else 2 * len(truth & got) / (len(truth) + len(got)))
            exact.append(truth == got and back.nodes == graph.nodes)
        return {"samples": float(len(values)), "edge_f1": float(np.mean(f1)) if f1 else 0.0,
                "exact_recovery": float(np.mean(exact)) if exact else 0.0,
                "within_max_tokens": float(np.mean([len(r) <= max_len for r in rows])) if rows else 0.0,
                "tokens_mean": float(np.mean([len(r) for r in rows])) if rows else 0.0}

    def payload_files(self) -> dict[str, bytes]:
        return {}

    @classmethod
    def from_payload(cls, config: TokenizerConfig, files: Mapping[str, bytes]) -> GraphTokenizer:
        return cls(config)

"""Graphs for the graph modality, offline: procedural families plus the real small graphs networkx ships.

Each procedural graph is drawn at a random size from its family with its nodes relabelled in a random order (so
a file's node order tells nothing), and written as an edge list, GraphML or node-link JSON in turn, with its
family's caption in a sidecar `<stem>.txt`. The real graphs (karate club, Les Miserables, Florentine families,
Davis's southern women) follow with their own captions. Equal (samples, seed) write equal bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np

Generator = Callable[[np.random.Generator], nx.Graph]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


# family -> (caption, generator at a random size of about 10-40 nodes)
FAMILIES: dict[str, tuple[str, Generator]] = {
    "erdos_renyi": ("erdos renyi random graph",
                    lambda rng: nx.gnp_random_graph(int(rng.integers(12, 36)), 0.15, seed=_seed(rng))),
    "barabasi_albert": ("barabasi albert preferential attachment graph",
                        lambda rng: nx.barabasi_albert_graph(int(rng.integers(12, 36)), 2, seed=_seed(rng))),
    "watts_strogatz": ("watts strogatz small world graph",
                       lambda rng: nx.watts_strogatz_graph(int(rng.integers(12, 36)), 4, 0.1, seed=_seed(rng))),
    "tree": ("random tree", lambda rng: nx.random_labeled_tree(int(rng.integers(12, 36)), seed=_seed(rng))),
    "grid": ("two dimensional grid graph",
             lambda rng: nx.grid_2d_graph(int(rng.integers(3, 7)), int(rng.integers(3, 7)))),
    "caveman": ("connected caveman graph of cliques",
                lambda rng: nx.connected_caveman_graph(int(rng.integers(3, 6)), int(rng.integers(4, 7)))),
}
REAL_GRAPHS: dict[str, tuple[str, Callable[[], nx.Graph]]] = {
    "karate_club": ("zachary karate club social network", nx.karate_club_graph),
    "les_miserables": ("les miserables character co-occurrence network", nx.les_miserables_graph),
    "florentine_families": ("florentine families marriage network", nx.florentine_families_graph),
    "davis_southern_women": ("davis southern women event attendance network", nx.davis_southern_women_graph),
}
FORMATS = ("edgelist", "graphml", "json")


def family_of_caption(caption: str) -> str | None:
    """The procedural family a caption names, or None (a real graph's caption, or any other text)."""
    text = caption.strip().lower()
    return next((family for family, (words, _) in FAMILIES.items() if words == text), None)


def _graph_bytes(graph: nx.Graph, fmt: str) -> bytes:
    if fmt == "graphml":
        return "\n".join(nx.generate_graphml(graph)).encode()
    if fmt == "json":
        return json.dumps(nx.node_link_data(graph, edges="edges"), sort_keys=True, default=str).encode()
    lines = [f"{u} {v}" for u, v in graph.edges()] + [str(n) for n in nx.isolates(graph)]
    return ("\n".join(lines) + "\n").encode()


def write_graph_corpus(out: Path, samples: int = 120, seed: int = 0) -> list[Path]:
    """`samples` procedural graphs (families in turn) plus the real graphs, each file with its caption sidecar."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    graphs = []
    for i in range(samples):
        family = list(FAMILIES)[i % len(FAMILIES)]
        caption, generate = FAMILIES[family]
        graph = generate(rng)
        order = rng.permutation(graph.number_of_nodes())
        graph = nx.relabel_nodes(graph, dict(zip(graph.nodes, (int(j) for j in order))))
        fmt = FORMATS[(i // len(FAMILIES)) % len(FORMATS)]
        graphs.append((f"{family}_{i:05d}", nx.Graph(graph), caption, fmt))
    for j, (name, (caption, load)) in enumerate(REAL_GRAPHS.items()):
        graphs.append((name, nx.Graph(load()), caption, FORMATS[1 + j % 2]))
    paths = []
    for stem, graph, caption, fmt in graphs:
        path = out / f"{stem}.{fmt}"
        path.write_bytes(_graph_bytes(graph, fmt))
        (out / f"{stem}.txt").write_text(caption + "\n")
        paths.append(path)
    return paths

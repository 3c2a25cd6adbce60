"""Graphs: edge lists (.edgelist, .edges: "u v [w]" per line, a lone "u" for an isolated node, '#' comments),
GraphML and networkx node-link JSON. Edge lists named .txt are not read: a raw corpus's `<stem>.txt` is the
sidecar caption of the file `<stem>.*` beside it.

One sample per file, or one per graph of a JSON list (suffix `_g000003`). Every graph is stored the same way
(schemas/raw_members.py): undirected, simple, node indices 0..n-1 in the file's node order (edge lists: order of
first appearance), edges once each, plus the numeric node attributes that every node carries. GraphML is XML, so it
is parsed with defusedxml first and refused if it declares a DTD or entities (billion laughs, external entities)
before networkx reads it. Limits on bytes, nodes and edges are checked as the file is read; any malformed file or
broken limit quarantines the file (Reason.BAD_RAW).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from pydantic import Field

from pipeline.data.raw.base import RawItem, RawReader, RawSettings, bad_raw, register_raw_reader
from schemas.raw_members import GraphRecord, strict_json


class GraphSettings(RawSettings):
    max_nodes: int = Field(default=4096, ge=1)
    max_edges: int = Field(default=65_536, ge=0)
    max_graphs: int = Field(default=10_000, ge=1)  # per JSON list
    max_bytes: int = Field(default=16 << 20, ge=1)
    node_features: bool = True  # keep the numeric attributes every node carries (GraphML, JSON)


@register_raw_reader
class GraphReader(RawReader):
    modality = "graph"
    exts = ("edgelist", "edges", "graphml", "json")
    settings_model = GraphSettings
    settings: GraphSettings

    def read(self, name: str, data: bytes) -> Iterator[RawItem]:
        if len(data) > self.settings.max_bytes:
            raise bad_raw(f"{len(data):,} bytes, over max_bytes {self.settings.max_bytes:,}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_raw(f"not UTF-8 text: {exc}") from None
        ext = PurePosixPath(name).suffix.lower().lstrip(".")
        if ext == "json":
            yield from self._node_link(text)
        elif ext == "graphml":
            yield RawItem("", self._from_networkx(self._graphml(text)).to_member())
        else:
            yield RawItem("", self._edge_list(text).to_member())

    def decode_member(self, member: bytes) -> GraphRecord:
        return GraphRecord.from_member(member)

    def _edge_list(self, text: str) -> GraphRecord:
        index: dict[str, int] = {}
        edges = []
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 3 or (len(fields) == 3 and not _is_number(fields[2])):
                raise bad_raw(f"line {number}: {line[:60]!r} is not 'u v [weight]'")
            for node in fields[:2]:
                index.setdefault(node, len(index))
            if len(index) > self.settings.max_nodes:
                raise bad_raw(f"more than max_nodes {self.settings.max_nodes:,} nodes")
            if len(fields) >= 2:
                edges.append((index[fields[0]], index[fields[1]]))
                if len(edges) > self.settings.max_edges:
                    raise bad_raw(f"more than max_edges {self.settings.max_edges:,} edges")
        if not index:
            raise bad_raw("no nodes: an empty edge list")
        return GraphRecord.build(len(index), edges)

    def _graphml(self, text: str) -> Any:
        import networkx as nx
        from defusedxml import DefusedXmlException
        from defusedxml.ElementTree import ParseError, fromstring

        try:
            fromstring(text, forbid_dtd=True)  # refuses DTDs, entities and external references before networkx
        except (DefusedXmlException, ParseError) as exc:
            raise bad_raw(f"unsafe or malformed XML: {exc}") from None
        try:
            return nx.parse_graphml(text)
        except (nx.NetworkXError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise bad_raw(f"not a GraphML graph: {exc}") from None

    def _node_link(self, text: str) -> Iterator[RawItem]:
        import networkx as nx

        try:
            value = strict_json(text)
        except ValueError as exc:
            raise bad_raw(f"not strict JSON: {exc}") from None
        graphs = value if isinstance(value, list) else [value]
        if len(graphs) > self.settings.max_graphs:
            raise bad_raw(f"{len(graphs):,} graphs, over max_graphs {self.settings.max_graphs:,}")
        records = []
        for i, graph in enumerate(graphs):
            if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
                raise bad_raw(f"graph {i}: not a node-link object with a 'nodes' list")
            links = "edges" if "edges" in graph else "links"
            self._check_sizes(len(graph["nodes"]), len(graph.get(links) or []))
            try:
                g = nx.node_link_graph(graph, edges=links)
            except (nx.NetworkXError, KeyError, TypeError, ValueError) as exc:
                raise bad_raw(f"graph {i}: not a networkx node-link graph: {exc}") from None
            records.append(self._from_networkx(g))
        if not records:
            raise bad_raw("an empty list of graphs")
        for i, record in enumerate(records):
            yield RawItem(f"_g{i:06d}" if isinstance(value, list) else "", record.to_member())

    def _check_sizes(self, nodes: int, edges: int) -> None:
        if nodes > self.settings.max_nodes or edges > self.settings.max_edges:
            raise bad_raw(f"{nodes:,} nodes and {edges:,} edges, over max_nodes {self.settings.max_nodes:,} or "
                       f"max_edges {self.settings.max_edges:,}")

    def _from_networkx(self, g: Any) -> GraphRecord:
        """Node indices in the graph's own node order; directions and parallel edges dropped."""
        self._check_sizes(g.number_of_nodes(), g.number_of_edges())
        if g.number_of_nodes() == 0:
            raise bad_raw("a graph without nodes")
        index = {node: i for i, node in enumerate(g.nodes)}
        features = {}
        if self.settings.node_features:
            names = set.intersection(*(set(attributes) for _, attributes in g.nodes(data=True)))
            for name in sorted(names):
                values = [attributes[name] for _, attributes in g.nodes(data=True)]
                if all(_finite_number(v) for v in values):
                    features[str(name)] = [float(v) for v in values]
        return GraphRecord.build(len(index), ((index[u], index[v]) for u, v in g.edges()), features)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

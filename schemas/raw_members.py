"""The label members of the table and graph modalities: one writer and one reader each.

A table row is a JSON object {column: value}, values a number, a string, a boolean or null (a missing cell). A graph
is {"nodes": n, "edges": [[u, v], ...]} over node indices 0..n-1, undirected, each edge once with u <= v, sorted,
plus optional "node_features": {name: [one number per node]}. Both are canonical JSON (sorted keys, no spaces,
UTF-8), so equal values are equal bytes, and strict: NaN and infinities are refused on both sides, since no JSON
reader outside Python accepts them. The raw plug-ins write these members; tokenizers and eval tasks read them here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

Cell = int | float | str | bool | None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, compact separators, NaN/inf refused (ValueError)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def strict_json(data: bytes | str) -> Any:
    """Parse JSON, refusing the NaN/Infinity extensions Python would otherwise accept."""
    return json.loads(data, parse_constant=_refuse_constant)


def row_member(row: dict[str, Cell]) -> bytes:
    for column, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"column {column!r}: {value} is not a finite number")
    return canonical_json(row)


def read_row(member: bytes) -> dict[str, Cell]:
    row = strict_json(member)
    if not isinstance(row, dict):
        raise ValueError(f"a table row member is a JSON object, got {type(row).__name__}")
    for column, value in row.items():
        if not (value is None or isinstance(value, (int, float, str, bool))):
            raise ValueError(f"column {column!r}: {type(value).__name__} is not a table cell")
    return row


@dataclass(frozen=True)
class GraphRecord:
    nodes: int
    edges: tuple[tuple[int, int], ...]  # u <= v, sorted, unique
    node_features: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, nodes: int, edges, node_features: dict[str, list[float]] | None = None) -> GraphRecord:
        """Normalise any edge iterable of index pairs: undirected, deduplicated, sorted; indices checked."""
        pairs = sorted({(min(int(u), int(v)), max(int(u), int(v))) for u, v in edges})
        features = {name: tuple(float(x) for x in values) for name, values in (node_features or {}).items()}
        record = cls(int(nodes), tuple(pairs), features)
        record.check()
        return record

    def check(self) -> None:
        if self.nodes < 0:
            raise ValueError(f"a graph has a non-negative node count, got {self.nodes}")
        for u, v in self.edges:
            if not 0 <= u <= v < self.nodes:
                raise ValueError(f"edge ({u}, {v}) is not a pair of node indices u <= v below {self.nodes}")
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError("edges are unique and sorted")
        for name, values in self.node_features.items():
            if len(values) != self.nodes or not all(math.isfinite(x) for x in values):
                raise ValueError(f"node feature {name!r}: one finite number per node expected")

    def to_member(self) -> bytes:
        value: dict[str, Any] = {"nodes": self.nodes, "edges": [list(e) for e in self.edges]}
        if self.node_features:
            value["node_features"] = {k: list(v) for k, v in self.node_features.items()}
        return canonical_json(value)

    @classmethod
    def from_member(cls, member: bytes) -> GraphRecord:
        value = strict_json(member)
        if not isinstance(value, dict) or set(value) - {"nodes", "edges", "node_features"} or "nodes" not in value:
            raise ValueError("a graph member is {nodes, edges, node_features?}")
        if type(value["nodes"]) is not int:
            raise ValueError("a graph's node count is an integer")
        edges = value.get("edges", [])
        if not all(isinstance(e, list) and len(e) == 2 and all(type(i) is int for i in e) for e in edges):
            raise ValueError("graph edges are [u, v] pairs of integers")
        record = cls(value["nodes"], tuple((u, v) for u, v in edges),
                     {k: tuple(v) for k, v in value.get("node_features", {}).items()})
        record.check()
        return record

"""The tabular and graph raw plug-ins on good and malformed files (direct calls), and their offline sample corpora."""

from __future__ import annotations

import io
import json

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.decode import DecodeError
from pipeline.data.raw import RAW_READERS
from pipeline.data.sample_corpus.graph import FAMILIES, REAL_GRAPHS, family_of_caption, write_graph_corpus
from pipeline.data.sample_corpus.tabular import TABLES, TARGETS, write_tabular_corpus
from schemas.raw_members import GraphRecord
from schemas.shards import Reason


def read(modality: str, name: str, data: bytes, **settings):
    reader = RAW_READERS.get(modality)(settings)
    return [(item.suffix, reader.decode_member(item.member), item.caption) for item in reader.read(name, data)]


def refused(modality: str, name: str, data: bytes, match: str, **settings) -> None:
    with pytest.raises(DecodeError, match=match) as caught:
        read(modality, name, data, **settings)
    assert caught.value.reason is Reason.BAD_RAW


CSV = b"id,width,colour,count,flag\na7,1.5,red,3,true\nb2,,blue,4,false\nc9,2.25,red,,true\n"


def test_csv_rows_keep_their_types_and_missing_cells():
    rows = read("tabular", "t.csv", CSV, key="id", target=["colour"])
    assert [s for s, _, _ in rows] == ["_a7", "_b2", "_c9"]
    assert rows[0][1] == {"width": 1.5, "colour": "red", "count": 3, "flag": "true"}
    assert rows[1][1]["width"] is None and rows[2][1]["count"] is None and isinstance(rows[0][1]["count"], int)
    assert [c for _, _, c in rows] == ["red", "blue", "red"]  # the target's value is the caption
    plain = read("tabular", "t.csv", CSV, columns=["width", "count"], categorical=["count"])
    assert [s for s, _, _ in plain] == ["_r000000", "_r000001", "_r000002"]
    assert plain[0][1] == {"width": 1.5, "count": "3"} and plain[0][2] is None


def test_parquet_rows_and_the_member_bytes_are_canonical_strict_json():
    frame = pd.DataFrame({"b": [1.0, 2.5], "a": ["x", None], "n": [1, 2], "ok": [True, False]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    reader = RAW_READERS.get("tabular")()
    members = [item.member for item in reader.read("t.parquet", buffer.getvalue())]
    assert members[0] == b'{"a":"x","b":1.0,"n":1,"ok":true}' and json.loads(members[1])["a"] is None
    buffer = io.BytesIO()  # a real NaN (pandas would write it as null)
    pq.write_table(pa.table({"v": pa.array([1.0, float("nan")])}), buffer)
    refused("tabular", "n.parquet", buffer.getvalue(), "JSON cannot store")
    assert read("tabular", "n.parquet", buffer.getvalue(), non_finite="null")[1][1] == {"v": None}


@pytest.mark.parametrize("name, data, match, settings", [
    ("r.csv", b"a,b\n1,2\n3\n", "line 3: 1 cells", {}),
    ("j.csv", b"a,b\n\x00\x01\xff\xfe", "not UTF-8", {}),
    ("z.csv", b"a,b\n1,\x002\n", "NUL", {}),
    ("t.csv", b"a,b\n1,x\n", "numeric but holds 'x'", {"numeric": ["b"]}),
    ("w.csv", b"a,b,c\n1,2,3\n", "over max_columns 2", {"max_columns": 2}),
    ("l.csv", b"a\n" + b"1\n" * 5, "more than max_rows 4", {"max_rows": 4}),
    ("c.csv", b"a\n" + b"x" * 50 + b"\n", "over max_cell_chars", {"max_cell_chars": 10}),
    ("d.csv", b"a,a\n1,2\n", "duplicated column", {}),
    ("e.csv", b"a,b\n", "no rows", {}),
    ("k.csv", b"a,b\n1,2\n1,3\n", "repeats a key", {"key": "a"}),
    ("m.csv", b"a,b\n1,2\n", "no column", {"columns": ["a", "zzz"]}),
    ("g.csv", b"a,b\n1,2\n", "not exactly one", {"target": ["y", "z"]}),
    ("i.csv", b"a,b\n1,inf\n", "JSON cannot store", {}),
    ("p.parquet", b"PAR1 not really a parquet file", "not a readable Parquet", {}),
])
def test_malformed_tables_are_quarantined_with_a_reason(name, data, match, settings):
    refused("tabular", name, data, match, **settings)


def test_edge_lists_graphml_and_node_link_json_read_to_one_record_shape():
    edges = read("graph", "g.edgelist", b"# a comment\na b\nb c 0.5\nc a\nd\n")
    assert edges == [("", GraphRecord.build(4, [(0, 1), (1, 2), (0, 2)]), None)]
    graph = nx.Graph([(0, 1), (1, 2)])
    nx.set_node_attributes(graph, {0: 1.5, 1: 2.0, 2: -1.0}, "mass")
    graphml = "\n".join(nx.generate_graphml(graph)).encode()
    (suffix, record, _), = read("graph", "g.graphml", graphml)
    assert (suffix, record.nodes, record.edges, record.node_features) == ("", 3, ((0, 1), (1, 2)),
                                                                          {"mass": (1.5, 2.0, -1.0)})
    listed = json.dumps([nx.node_link_data(nx.path_graph(3), edges="links"),
                         nx.node_link_data(nx.DiGraph([(0, 1), (1, 0)]), edges="edges")]).encode()
    rows = read("graph", "g.json", listed)
    assert [(s, r.nodes, r.edges) for s, r, _ in rows] == [("_g000000", 3, ((0, 1), (1, 2))),
                                                           ("_g000001", 2, ((0, 1),))]


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="undirected"><node id="&lol2;"/></graph>
</graphml>"""
EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE g [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="undirected"><node id="&secret;"/></graph>
</graphml>"""


@pytest.mark.parametrize("name, data, match, settings", [
    ("bomb.graphml", BOMB, "unsafe or malformed XML", {}),
    ("external.graphml", EXTERNAL, "unsafe or malformed XML", {}),
    ("cut.graphml", b"<graphml><graph><node id='a'/>", "unsafe or malformed XML", {}),
    ("empty.graphml", b'<graphml xmlns="http://graphml.graphdrawing.org/xmlns"></graphml>', "GraphML", {}),
    ("bad.edgelist", b"a b c d\n", "is not 'u v \\[weight\\]'", {}),
    ("word.edgelist", b"a b heavy\n", "is not 'u v", {}),
    ("none.edgelist", b"# nothing\n", "empty edge list", {}),
    ("junk.edgelist", b"\xff\xfe\x00junk", "not UTF-8", {}),
    ("big.edgelist", b"".join(b"%d %d\n" % (i, i + 1) for i in range(20)), "max_nodes 10", {"max_nodes": 10}),
    ("many.edgelist", b"a b\nb c\nc a\n", "max_edges 2", {"max_edges": 2}),
    ("nan.json", b'{"nodes": [{"id": NaN}], "edges": []}', "not strict JSON", {}),
    ("shape.json", b'{"nodes": 3, "edges": []}', "nodes' list", {}),
    ("dangling.json", b'{"nodes": [{"id": 0}], "edges": [{"src": 0}]}', "node-link", {}),
    ("list.json", b"[]", "empty list", {}),
    ("huge.json", json.dumps({"nodes": [{"id": i} for i in range(50)], "edges": []}).encode(), "max_nodes",
     {"max_nodes": 10}),
])
def test_malformed_graphs_are_quarantined_with_a_reason(name, data, match, settings):
    refused("graph", name, data, match, **settings)


def test_graph_members_are_checked_when_read_back():
    reader = RAW_READERS.get("graph")()
    for member in (b'{"nodes":2,"edges":[[0,2]]}', b'{"nodes":2,"edges":[[1,0]]}', b'{"nodes":"2","edges":[]}',
                   b'{"nodes":2,"edges":[],"extra":1}'):
        with pytest.raises(ValueError):
            reader.decode_member(member)


def test_the_tabular_corpus_is_the_four_real_tables_each_with_its_target(tmp_path):
    paths = write_tabular_corpus(tmp_path, seed=3)
    assert [p.name for p in paths] == [f"{t.name}.{t.ext}" for t in TABLES]
    reader = RAW_READERS.get("tabular")({"target": list(TARGETS)})
    counts = {}
    for path, table in zip(paths, TABLES):
        items = list(reader.read(path.name, path.read_bytes()))
        counts[table.name] = len(items)
        row = reader.decode_member(items[0].member)
        assert table.target in row and items[0].caption == str(row[table.target])
    assert counts == {"wine": 178, "breast_cancer": 569, "iris": 150, "diabetes": 442}
    assert write_tabular_corpus(tmp_path / "again", seed=3)[1].read_bytes() == paths[1].read_bytes()


def test_the_graph_corpus_mixes_formats_and_families_with_captions(tmp_path):
    paths = write_graph_corpus(tmp_path, samples=18, seed=1)
    assert len(paths) == 18 + len(REAL_GRAPHS)
    assert {p.suffix for p in paths} == {".edgelist", ".graphml", ".json"}
    reader = RAW_READERS.get("graph")()
    families = []
    for path in paths:
        (item,) = reader.read(path.name, path.read_bytes())
        record = reader.decode_member(item.member)
        assert record.nodes >= 9 and record.edges
        families.append(family_of_caption(path.with_suffix(".txt").read_text()))
    assert families[:18] == [list(FAMILIES)[i % len(FAMILIES)] for i in range(18)] and families[18:] == [None] * 4
    again = write_graph_corpus(tmp_path / "again", samples=18, seed=1)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, again))
    assert not np.array_equal(*(np.frombuffer(p.read_bytes()[:8], np.uint8) for p in paths[:2]))

"""Sample keys, shard names, the manifest and quarantine schemas."""

import pyarrow as pa
import pytest

from schemas.keys import InvalidKeyError, make_key, sanitize_key, validate_key
from schemas.shards import (
    FORMAT_VERSION,
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    ManifestRow,
    QuarantineRecord,
    Reason,
    Stage,
    braceexpand_pattern,
    manifest_table,
    quarantine_table,
    shard_index,
    shard_name,
)


@pytest.mark.parametrize("bad", ["", "a.b", "a/b", "../x", "a b", "x" * 200, "é"])
def test_invalid_keys(bad):
    with pytest.raises(InvalidKeyError):
        validate_key(bad)


def test_make_and_sanitize_keys():
    assert make_key("scene", 42) == "scene_000000042"
    assert sanitize_key("plain_key-1") == "plain_key-1"
    a, b = sanitize_key("img.001"), sanitize_key("img-001")
    assert validate_key(a) and a != b, "sanitized names that collide stay apart"
    assert sanitize_key("img.001") == a, "stable"


def test_shard_names_round_trip():
    assert shard_name(42) == "shard-000042.tar"
    assert shard_index("shard-000042.tar") == 42
    with pytest.raises(ValueError):
        shard_index("shard-42.tar")
    assert braceexpand_pattern("/d", ["rgb", "caption"], 3) == "/d/[rgb,caption]/shard-{000000..000002}.tar"


def test_manifest_schema_is_versioned_and_sorted():
    rows = [ManifestRow("rgb", "rgb", shard, f"rgb/{shard_name(shard)}", 2, 10, "0" * 64, ("u",))
            for shard in (2, 0, 1)]
    table = manifest_table(rows)
    assert table.schema.equals(MANIFEST_SCHEMA, check_metadata=True)
    assert table.schema.metadata[b"tessera.format_version"] == str(FORMAT_VERSION).encode()
    assert table.column("shard").to_pylist() == [0, 1, 2]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        pa.Table.from_pylist([{"folder": "rgb", "shard": "not-a-number"}], schema=MANIFEST_SCHEMA)


def test_quarantine_records():
    record = QuarantineRecord("s3://b/x.tar", "k1", Stage.DECODE, Reason.BAD_IMAGE, "cannot identify image")
    table = quarantine_table([record])
    assert table.schema.equals(QUARANTINE_SCHEMA)
    assert table.to_pylist()[0] == {"source_uri": "s3://b/x.tar", "source_key": "k1", "stage": "decode",
                                   "reason": "bad_image", "detail": "cannot identify image"}

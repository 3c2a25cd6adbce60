"""Deterministic tar writing.

Tar headers carry a modification time, owner and mode; left to defaults they make two runs over the same data
differ byte for byte. Every tar Tessera writes goes through `tar_bytes`, which fixes all of them, so equal input and
config give byte-identical shards (and equal sha256 in the manifest).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

# A fixed, recent-enough timestamp (2020-01-01): zero would make some tools warn about dates before 1980.
FIXED_MTIME = 1_577_836_800


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """Build a tar archive in memory from (member name, payload) pairs, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()

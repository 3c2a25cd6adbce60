"""The layering of docs/architecture.md, checked against the code: which top-level folder may import which.

The table below is the one the document shows; a change to either must change both (the test reads the document's
table and compares).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# folder -> the project folders its modules may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "pipeline/model": {"schemas"},
    "pipeline/tokenizers": {"schemas"},
    "pipeline/data": {"schemas", "pipeline/tokenizers"},
    "pipeline/train": {"schemas", "pipeline/model", "pipeline/data", "pipeline/tokenizers"},
    "pipeline/generate": {"schemas", "pipeline/model", "pipeline/data", "pipeline/tokenizers"},
    "pipeline/eval": {"schemas", "pipeline/model", "pipeline/data", "pipeline/tokenizers", "pipeline/generate"},
    "pipeline/study": {"schemas", "pipeline/model", "pipeline/train", "pipeline/data", "pipeline/eval"},
    "cluster": {"schemas"},
    "jobs": {"schemas", "pipeline/model", "pipeline/data", "pipeline/tokenizers", "pipeline/train", "pipeline/eval",
             "pipeline/generate", "pipeline/study", "cluster"},
    "bench": {"schemas", "pipeline/model", "pipeline/data", "pipeline/tokenizers", "pipeline/train", "pipeline/eval",
              "pipeline/generate", "pipeline/study", "cluster", "jobs"},
}


def _layer(module: str) -> str | None:
    """'pipeline.data.loader' -> 'pipeline/data'; 'schemas.shards' -> 'schemas'; third-party -> None."""
    parts = module.split(".")
    if parts[0] == "pipeline" and len(parts) > 1:
        return f"pipeline/{parts[1]}"
    return parts[0] if parts[0] in {"schemas", "cluster", "jobs", "bench"} else None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_module_imports_only_what_its_layer_may():
    violations = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for module in _imports(path):
                target = _layer(module)
                if target and target != layer and target not in allowed:
                    violations.append(f"{path.relative_to(ROOT)} imports {module} ({layer} may not import {target})")
    assert not violations, "\n".join(violations)


def test_the_document_shows_the_same_table():
    text = (ROOT / "docs/architecture.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z/]+)/` \| [^|]* \| ([^|]*) \|$", text, flags=re.MULTILINE))
    documented = {layer: {m for m in re.findall(r"`([a-z/]+)`", cell)} for layer, cell in rows.items()}
    assert documented == ALLOWED

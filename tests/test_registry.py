"""The one registry type (schemas/registry.py) and the rule that a registry module imports none of its plug-ins."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.registry import Registry, UnknownNameError

REPO = Path(__file__).resolve().parent.parent


def test_register_get_aliases_and_order():
    colours: Registry[int] = Registry("colour")
    colours.register("red", 1, aliases=("rouge",))
    colours.register("green", 2)
    assert colours.get("red") == colours["rouge"] == 1 and colours.canonical("rouge") == "red"
    assert list(colours) == colours.names() == ["red", "green"]  # registration order
    assert colours.items() == [("red", 1), ("green", 2)] and len(colours) == 2
    assert "rouge" in colours and "blue" not in colours and 3 not in colours


def test_unknown_names_list_the_known_ones():
    sizes: Registry[str] = Registry("model size")
    sizes.register("S", "small")
    sizes.register("B", "base")
    with pytest.raises(UnknownNameError, match=r"^unknown model size 'M'; known model sizes: B, S$"):
        sizes.get("M")
    with pytest.raises(KeyError):  # callers that catch KeyError keep working
        sizes["M"]
    families: Registry[str] = Registry("family", "families")
    with pytest.raises(UnknownNameError, match="known families: none"):
        families.get("x")


def test_names_are_registered_once_unless_replaced():
    tasks: Registry[str] = Registry("task")
    tasks.register("a", "first", aliases=("alpha",))
    for name in ("a", "alpha"):
        with pytest.raises(ValueError, match=f"task '{name}' registered twice"):
            tasks.register(name, "second")
    tasks.register("a", "second", replace=True)
    assert tasks.get("a") == "second"
    tasks.unregister("a")
    assert "a" not in tasks and "alpha" not in tasks
    tasks.unregister("a")  # absent: nothing to do


REGISTRY_MODULES = {  # registry module -> the package of plug-ins that fill it
    "schemas/registry.py": "pipeline",
    "pipeline/eval/registry.py": "pipeline.eval.tasks",
    "pipeline/data/labelers/base.py": "pipeline.data.labelers",
    "pipeline/tokenizers/base.py": "pipeline.tokenizers",
    "pipeline/model/sizes.py": "pipeline",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


@pytest.mark.parametrize("module", sorted(REGISTRY_MODULES))
def test_registry_modules_import_none_of_their_plug_ins(module):
    plug_ins = REGISTRY_MODULES[module]
    assert not {name for name in _imports(REPO / module) if name.startswith(plug_ins)}


def test_the_eval_registry_is_filled_by_importing_the_tasks():
    script = """
import sys
from pipeline.eval.registry import TASKS
assert "pipeline.eval.tasks" not in sys.modules and len(TASKS) == 0
import pipeline.eval.tasks
assert "object_count" in TASKS and "retrieval_rgb_to_caption" in TASKS
"""
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)

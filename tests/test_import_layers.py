"""The package's imports run one way, down the data flow, with no cycle (issue: one-way imports).

Every ``mammoclip_monai`` import counts, the ones inside functions too: a function-local import
that dodges a cycle is still a cycle. The layers (lower numbers are imported by higher ones,
never the other way; one layer may import itself)::

    utils, version, resources  0   shared leaf: errors, atomic files, distributed gather, AUROC core
    data                       1
    text                       2
    networks                   3
    losses                     4
    engines                    5
    evaluation, interpret      6
    inference                  7
    cli, export                8
    mammoclip_monai (front door __init__) 9
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import mammoclip_monai

PACKAGE_DIR = Path(mammoclip_monai.__file__).resolve().parent
LAYERS = {"utils": 0, "version": 0, "resources": 0, "data": 1, "text": 2, "networks": 3, "losses": 4,
          "engines": 5, "evaluation": 6, "interpret": 6, "detection": 6, "inference": 7, "cli": 8, "export": 8}
FRONT_DOOR = 9


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (``from x import y``
    counts ``x`` and, when it is a module, ``x.y``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def layer(name: str) -> int:
    parts = name.split(".")
    return FRONT_DOOR if len(parts) == 1 else LAYERS[parts[1]]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_subpackage_has_a_layer():
    tops = {name.split(".")[1] for name in package_modules() if "." in name}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_upward_import():
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                    for a, targets in import_graph().items() for b in targets if layer(b) > layer(a))
    assert not upward, "imports must point down the data flow:\n" + "\n".join(upward)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(defaultdict(set, graph)) == expected


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function and a relative one are both edges."""
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from ..high import b\n")
    (package / "high.py").write_text("from .low.a import f\n")
    known = {"pkg", "pkg.low", "pkg.low.a", "pkg.high"}
    assert imported_modules("pkg.low.a", package / "low" / "a.py", known) == {"pkg.high"}
    assert imported_modules("pkg.high", package / "high.py", known) == {"pkg.low.a"}

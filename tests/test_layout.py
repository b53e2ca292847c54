"""The package's import graph: no module imports one that imports it back, not even inside a
function (an import made on use hides a cycle instead of removing it)."""

from __future__ import annotations

import ast
from pathlib import Path

import imagejepa

ROOT = Path(imagejepa.__file__).parent


def module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (relative imports, anywhere in the file)."""
    files = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        files[".".join(parts).removesuffix(".__init__")] = f
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files}
            deps |= submodules
            if target in files and len(submodules) < len(node.names):
                deps.add(target)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_graph_sees_relative_imports():
    graph = module_graph()
    assert "imagejepa.utils.files" in graph["imagejepa.checkpoint"]
    assert "imagejepa.models.softmax_attention" in graph["imagejepa.models.cpu_bf16"]


def test_no_import_cycles():
    assert cycles(module_graph()) == []

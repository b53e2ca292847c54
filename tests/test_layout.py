"""The package's import graph: no module imports one that imports it back, and no module
imports one of a higher layer, not even inside a function (an import made on use hides a
cycle instead of removing it)."""

from __future__ import annotations

import ast
import re
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


# From the bottom up; a module may import its own layer and those below. The longest
# matching name decides (imagejepa.train.budget is in imagejepa.train).
LAYERS = [
    ("imagejepa.errors", "imagejepa.utils"),
    ("imagejepa.models", "imagejepa.inference", "imagejepa.masking", "imagejepa.data"),
    ("imagejepa.config", "imagejepa.official_config", "imagejepa.runtime", "imagejepa.distributed"),
    ("imagejepa.anti_collapse", "imagejepa.jepa", "imagejepa.methods", "imagejepa.checkpoint"),
    ("imagejepa.train", "imagejepa.eval", "imagejepa.interop", "imagejepa.monitor", "imagejepa.decoder"),
    ("imagejepa.bench", "imagejepa.viz"),
    ("imagejepa.cli", "imagejepa.__main__", "imagejepa"),
]


def layer_of(module: str) -> int:
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer of tests/test_layout.py; add it to LAYERS")
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
                  for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_graph_sees_relative_imports():
    graph = module_graph()
    assert "imagejepa.utils.files" in graph["imagejepa.checkpoint"]
    assert "imagejepa.models.softmax_attention" in graph["imagejepa.inference.block"]


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_layer_check_finds_a_planted_upward_import():
    graph = {"imagejepa.data.loader": {"imagejepa.train.preempt"}, "imagejepa.train.preempt": set()}
    assert upward_imports(graph) == [
        "imagejepa.data.loader (layer 1) imports imagejepa.train.preempt (layer 4)"]


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower():
    assert upward_imports(module_graph()) == []


def readme_layout() -> list[tuple[str, str]]:
    """``(entry, its description)`` of the README's "Code layout" tree under ``src/imagejepa/``."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("## Code layout", 1)[1].split("```", 2)[1]
    entries: list[tuple[str, str]] = []
    for line in block.splitlines():
        match = re.match(r"^  (\S+)\s*(.*)$", line)
        if match:
            entries.append((match.group(1), match.group(2)))
        elif line.startswith("   ") and entries:  # a description continued
            name, text_so_far = entries[-1]
            entries[-1] = (name, f"{text_so_far} {line.strip()}")
    return entries


def test_readme_layout_matches_the_tree():
    """Every module and package of src/imagejepa is in the README's layout, every entry
    there exists, and each package's modules are named on its line."""
    package = ROOT
    entries = readme_layout()
    block_text = " ".join(f"{name} {text}" for name, text in entries)
    skip = ("__init__.py", "__main__.py", "__pycache__")
    on_disk = {p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
               if p.name not in skip and (p.is_dir() or p.suffix == ".py")}
    for name in on_disk:
        assert re.search(rf"(^|[\s(]){re.escape(name)}", block_text), f"README layout does not list {name}"
    for name, text in entries:
        path = package / name.rstrip("/")
        assert path.exists(), f"README layout lists {name}, which is not in src/imagejepa"
        if name.endswith("/"):
            for module in path.glob("*.py"):
                if module.name != "__init__.py":
                    assert module.name in text, f"README layout: {name} does not name {module.name}"

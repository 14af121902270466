"""The import graph of ``trainable/`` read from the source (docs/architecture.md, "Layers").

Every import statement counts, at module level or inside a function: a lazy import is a
dependency too. ``from a.b import c`` is an edge to ``a.b.c`` when that is a module of ours,
else to ``a.b``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "trainable"

# Lowest first; a module's layer is that of its longest matching prefix. A module may import
# only from its own layer or below (docs/architecture.md, "Layers").
LAYERS: list[tuple[str, ...]] = [
    ("trainable", "trainable.errors", "trainable.text", "trainable.registry"),
    ("trainable.data", "trainable.attacks.primitives", "trainable.weights.checkpoint"),
    ("trainable.models",),
    ("trainable.generators",),
    ("trainable.attacks",),
    ("trainable.defenses",),
    ("trainable.config",),
    ("trainable.weights",),
    ("trainable.training",),
    ("trainable.evaluation",),
    ("trainable.experiment",),
    ("trainable.trainable",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                names = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "trainable":
                    target = _target(name, modules)
                    if target is not None and target != mod:
                        graph[mod].add(target)
    return graph


def layer_of(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return layer


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_trainable():
    assert cycles(import_graph()) == []


def test_imports_only_point_down():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in import_graph().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert upward == []


def test_the_reader_finds_a_cycle_and_an_upward_import():
    graph = {"trainable.config": {"trainable.training.trainer"}, "trainable.training.trainer": {"trainable.config"}}
    assert cycles(graph) == [["trainable.config", "trainable.training.trainer"]]
    assert layer_of("trainable.attacks.primitives") < layer_of("trainable.attacks.gradient") < layer_of(
        "trainable.training.surrogates") < layer_of("trainable.evaluation.transfer")


def test_the_reader_sees_lazy_imports():
    # the graph of today's code has the lazy import of the export loader's generator builder
    assert "trainable.defenses.registry" in import_graph()["trainable.weights.export_dir"]


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_nothing_aliases_an_old_path(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        assert not (isinstance(node, ast.FunctionDef) and node.name == "__getattr__"), \
            f"{path.name}: a module __getattr__ serves names that do not live here"
        if isinstance(node, ast.Assign):
            for t in node.targets:
                assert not (isinstance(t, ast.Attribute) and t.attr == "__module__"), \
                    f"{path.name}: a class's __module__ is faked"
    assert not (ROOT / "_moved.py").exists()

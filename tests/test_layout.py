"""The package layout: layers that import only the layers below them (no cycle), documented subpackages.

The graph is built from the source with ``ast``, counting imports inside functions too: a lazy import
hides a cycle from the interpreter, not from a reader.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import policygrad as pg

PKG = Path(pg.__file__).resolve().parent

#: The layers, lowest first; a module may import only from its own layer or from layers before it.
LAYERS = [
    "_checks",
    "_tensor",
    "numeric_path",
    "utils",
    "rollout",
    "trajectory_side",
    "reward_side",
    "methods",
    "exact",
    "toy",
    "lm",
    "diagnostics",
    "train",
    "plotting",
]
SUBPACKAGES = ["trajectory_side", "reward_side", "methods", "exact", "toy", "lm"]


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(root: Path, path: Path, known: set[str]) -> set[str]:
    """The modules of the package at ``root`` that ``path`` imports (``from X import name`` counts as
    the module ``X.name`` when that is a module, else as ``X``), lazy imports included."""
    mod = _module_name(root, path)
    parts = mod.split(".") if mod else []
    pkg = parts if path.name == "__init__.py" else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "policygrad":
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                sub = ".".join(base + [alias.name])
                out.add(sub if sub in known else ".".join(base))
        elif isinstance(node, ast.Import):
            out |= {".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "policygrad"}
    return {o for o in out if o and o != mod}


def _graph(root: Path = PKG) -> dict[str, set[str]]:
    files = {_module_name(root, p): p for p in root.rglob("*.py")}
    known = set(files)
    return {m: _imports(root, p, known) for m, p in files.items()}


GRAPH = _graph()


def _layer(module: str) -> str:
    return module.split(".")[0]


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n, stack + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_every_module_belongs_to_a_declared_layer():
    unknown = {_layer(m) for m in GRAPH if m and _layer(m) not in LAYERS}
    assert not unknown, f"modules outside the declared layers: {unknown}; add them to LAYERS (and README)"


def test_layers_import_only_from_layers_below():
    bad = [
        f"{mod} imports {imp}"
        for mod, imps in GRAPH.items()
        if mod  # the top-level __init__ re-exports everything
        for imp in imps
        if LAYERS.index(_layer(imp)) > LAYERS.index(_layer(mod))
    ]
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_between_modules_or_layers():
    modules = {m: {i for i in imps if i in GRAPH} for m, imps in GRAPH.items() if m}
    assert _find_cycle(modules) is None, f"import cycle: {_find_cycle(modules)}"
    layers: dict[str, set[str]] = {}
    for m, imps in modules.items():
        layers.setdefault(_layer(m), set()).update(_layer(i) for i in imps if _layer(i) != _layer(m))
    assert _find_cycle(layers) is None, f"import cycle between layers: {_find_cycle(layers)}"


def test_the_import_graph_sees_lazy_imports_and_cycles(tmp_path):
    """Not vacuous: an import inside a function is an edge, and a two-module cycle is found."""
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "b.py").write_text("from . import a\n")
    graph = _graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_say_what_lives_there_and_export_it(name):
    mod = importlib.import_module(f"policygrad.{name}")
    doc = (mod.__doc__ or "").strip()
    assert doc and len(doc.splitlines()) <= 8, f"policygrad.{name} needs a short docstring saying what lives there"
    assert mod.__all__, f"policygrad.{name} exports nothing"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"policygrad.{name}.__all__ lists missing names {missing}"


def test_public_names_the_issue_and_the_chapters_use():
    assert callable(pg.reward_side.group_advantages)
    assert callable(pg.trajectory_side.ppo_clip_loss)
    assert callable(pg.methods.get_method)
    for name in pg.__all__:
        assert hasattr(pg, name), name

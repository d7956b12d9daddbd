"""The package's layers only look down, and no module imports itself back through others.

Read from the source with ``ast`` (nothing is imported), so an import hidden in a function counts as much as one at
the top of a file: a lazy import does not make a cycle go away, it only hides it until the wrong module is imported
first.

Layers, bottom to top (a module may import its own layer and the layers below it):

- ``base``: ``smallvit/__init__.py`` (the version) and ``errors.py``, which every layer may raise;
- ``data``: datasets, loader, augmentation — uint8 images in, batches of views out;
- ``models``: backbones and weight adaptation;
- ``objectives``: losses and their heads, on a backbone's output;
- ``metrics``: frozen features, kNN, linear probe, classifier diagnostics — tensors in, numbers out, so the engine
  can use them;
- ``config``: the run schema; it is made of data views and objective configs, and the engine is built from it;
- ``engine``: experiment, trainer, checkpoints, logging, multi-stage runner;
- ``run-level``: what reads the run folders the engine writes (``runs.py``: load, evaluate, probe, export;
  ``predict.py``; ``export/``: the shipped folder, ONNX and model card) or drives whole runs (``fit.py``,
  ``sweep.py``, ``compare.py``);
- ``cli``: the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "smallvit"

LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["smallvit", "smallvit.errors"]),
    ("data", ["smallvit.data"]),
    ("models", ["smallvit.models"]),
    ("objectives", ["smallvit.objectives"]),
    ("metrics", ["smallvit.metrics"]),
    ("config", ["smallvit.config"]),
    ("engine", ["smallvit.engine"]),
    (
        "run-level",
        ["smallvit.runs", "smallvit.predict", "smallvit.fit", "smallvit.sweep", "smallvit.compare", "smallvit.export"],
    ),
    ("cli", ["smallvit.cli"]),
]
"""Each layer's modules: a name stands for that module and, when it is a package, everything inside it. The package
itself (``smallvit``) stands only for its ``__init__.py``."""


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name → file of every module under ``root`` (a package's ``__init__.py`` is named as the package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ``known`` that ``name`` (a module, or an attribute of one) refers to; None outside them."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports anywhere in its file: at the top, in functions, under
    ``TYPE_CHECKING``, relative, or by ``importlib.import_module("…")`` / ``__import__("…")`` with a literal name.

    ``from package import x`` is an import of the submodule ``package.x`` when there is one, else of ``package``.
    Importing ``a.b`` also runs ``a/__init__.py``; that edge is left out, as a package's ``__init__`` importing its
    own submodules (to re-export them) would otherwise always look like a cycle.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if callee in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                targets = [node.args[0].value]
        for target in targets:
            module = _resolve(target, known)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph(root: Path = PACKAGE, package: str = "smallvit") -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: imports(name, path, known) for name, path in known.items()}


def layer_of(module: str, layers: list[tuple[str, list[str]]] = LAYERS) -> int | None:
    """Index of the layer that holds ``module`` (the longest matching name wins), or None."""
    best, best_length = None, -1
    for index, (_, names) in enumerate(layers):
        for name in names:
            is_top = "." not in name
            matches = module == name or (not is_top and module.startswith(name + "."))
            if matches and len(name) > best_length:
                best, best_length = index, len(name)
    return best


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, list[str]]] = LAYERS) -> list[tuple[str, str]]:
    """(importer, imported) for every import of a module in a higher layer than the importer's."""
    return sorted(
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if None not in (layer_of(module, layers), layer_of(target, layers))
        and layer_of(target, layers) > layer_of(module, layers)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle (as a path that returns to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the package is far too small for recursion depth to matter
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(group, graph) for group in groups]


def _cycle_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth-first)."""
    start, members = group[0], set(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {group}")  # a strongly connected group always has one


# ---------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    missing = sorted(module for module in graph if layer_of(module) is None)
    assert not missing, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_no_module_imports_from_a_higher_layer(graph):
    names = [name for name, _ in LAYERS]
    found = [
        f"{module} ({names[layer_of(module)]}) imports {target} ({names[layer_of(target)]})"
        for module, target in upward_imports(graph)
    ]
    assert not found, "imports that look up a layer:\n" + "\n".join(found)


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_the_engine_uses_the_metrics_and_the_run_level_uses_the_engine(graph):
    """The split this layering exists for: pure metrics below the trainer, run folders above it."""
    assert {"smallvit.metrics", "smallvit.engine.experiment"} <= graph["smallvit.engine.trainer"]
    assert {"smallvit.engine.trainer", "smallvit.metrics"} <= graph["smallvit.runs"]
    assert not any(target.startswith(("smallvit.engine", "smallvit.runs")) for target in graph["smallvit.metrics"])


# ---------------------------------------------------------------- the checker, on a package made for it


def _write(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_the_checker_sees_lazy_relative_and_dynamic_imports_and_reports_a_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "from pkg.low import a\n",  # re-exporting its own submodule is no cycle
            "low/a.py": "from pkg.low import b\nimport pkg.errors\n",
            "low/b.py": "def f():\n    from ..high.c import g  # a lazy, relative upward import\n",
            "high/__init__.py": "",
            "high/c.py": "import importlib\nmod = importlib.import_module('pkg.low.a')\n",
            "errors.py": "import os\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.errors": set(),
        "pkg.low": {"pkg.low.a"},
        "pkg.low.a": {"pkg.low.b", "pkg.errors"},
        "pkg.low.b": {"pkg.high.c"},
        "pkg.high": set(),
        "pkg.high.c": {"pkg.low.a"},
    }
    layers = [("base", ["pkg", "pkg.errors"]), ("low", ["pkg.low"]), ("high", ["pkg.high"])]
    assert upward_imports(graph, layers) == [("pkg.low.b", "pkg.high.c")]
    assert cycles(graph) == [["pkg.high.c", "pkg.low.a", "pkg.low.b", "pkg.high.c"]]
    assert layer_of("pkg.lowest", layers) is None and layer_of("pkg.other", layers) is None


def test_the_checker_finds_a_module_that_imports_itself_through_its_package(tmp_path):
    _write(tmp_path, {"__init__.py": "", "p/__init__.py": "from pkg.p.m import X\n", "p/m.py": "from pkg.p import Y\n"})
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.p", "pkg.p.m", "pkg.p"]]

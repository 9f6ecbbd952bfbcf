"""The import structure of gpt2lab/, read from the source with ``ast`` (nothing is imported).

Every ``import`` / ``from ... import`` statement counts, wherever it is (module level, inside functions
or try blocks), except those under ``if TYPE_CHECKING:``. Relative imports are resolved. An import
names the most specific gpt2lab module it reaches: ``from gpt2lab.data import TokenLoader`` is an edge
to the package ``gpt2lab.data`` (its ``__init__``), ``from gpt2lab.data import loader`` and
``import gpt2lab.data.loader`` are edges to ``gpt2lab.data.loader``. The parent packages a dotted
import also runs are not edges: Python has them in ``sys.modules`` before the child starts.

Rules: no import cycles between gpt2lab modules; nothing under gpt2lab/evals imports gpt2lab.train;
gpt2lab/model.py imports of gpt2lab only leaf modules, ones that import nothing from gpt2lab (the
torch-only gpt2lab.loss and gpt2lab.ops).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "gpt2lab"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root`` (a package ``__init__`` names the package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:`` (their ``else`` still counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, dict[str, list[int]]]:
    """module -> {imported gpt2lab module -> [line numbers]}, for every module under ``root``."""
    modules = module_names(root, package)

    def within(name: str) -> str | None:
        """The longest prefix of ``name`` that is one of our modules (None outside the package)."""
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                return ".".join(parts[:i])
        return None

    graph: dict[str, dict[str, list[int]]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rpartition(".")[0]  # the package relative imports start from
        edges: dict[str, list[int]] = {}
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    if node.level - 1 >= len(base_parts):
                        raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top package")
                    base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module
                # each imported name is a submodule if there is one, else an attribute of ``base``
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                target = within(t)
                if target is not None and target != mod:  # (a module naming itself is no cycle)
                    edges.setdefault(target, []).append(node.lineno)
        graph[mod] = {t: sorted(lines) for t, lines in edges.items()}
    return graph


def find_cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """One cycle (a list of modules, first == last) for each strongly connected component that has one."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in comps:
        start = comp[0]
        if len(comp) == 1 and start not in graph.get(start, {}):
            continue
        members = set(comp)
        # shortest path start -> ... -> start inside the component (breadth first)
        prev, frontier, found = {}, [start], None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path, v = [start], found
        while v != start:
            path.append(v)
            v = prev[v]
        path.append(start)
        path.reverse()
        cycles.append(path)
    return sorted(cycles)


def describe(cycle: list[str], graph: dict[str, dict[str, list[int]]], modules: dict[str, Path]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        where = modules[a].relative_to(ROOT.parent) if ROOT.parent in modules[a].parents else modules[a]
        steps.append(f"  {a} -> {b}  ({where} line {', '.join(map(str, graph[a][b]))})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


# --- the rules, on gpt2lab/ ----------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph()
    modules = module_names(ROOT, PACKAGE)
    assert len(graph) > 10 and "gpt2lab.model" in graph and "gpt2lab.evals.hellaswag" in graph
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) in gpt2lab/:\n" + "\n".join(
        describe(c, graph, modules) for c in cycles)


def test_evals_do_not_import_train():
    graph = import_graph()
    evals = [m for m in graph if m == "gpt2lab.evals" or m.startswith("gpt2lab.evals.")]
    assert len(evals) > 3
    bad = {m: graph[m][t] for m in evals for t in graph[m] if t == "gpt2lab.train" or t.startswith("gpt2lab.train.")}
    assert not bad, f"gpt2lab/evals modules import gpt2lab.train (module: lines): {bad}"


def test_model_imports_only_its_own_torch_only_parts():
    """model.py may import the LM loss and the ops it shares with it, and nothing else of gpt2lab:
    everything model.py reaches, directly or not, is one of those two."""
    graph = import_graph()
    allowed = {"gpt2lab.loss", "gpt2lab.ops"}
    assert "gpt2lab.loss" in graph["gpt2lab.model"]  # the rule below has something to check
    reached, todo = set(), list(graph["gpt2lab.model"])
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo.extend(graph[m])
    assert reached <= allowed, f"gpt2lab/model.py reaches {sorted(reached - allowed)}, beyond {sorted(allowed)}"


# --- the walker itself, on a made-up package ------------------------------------------------


def test_walker_on_a_small_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\nelse:\n    pass\n"
                "def f():\n    from pkg.sub import thing\nA = 1\n",
        "b.py": "import pkg.sub.deep as d\nfrom . import a\n",
        "c.py": "try:\n    from .b import x\nexcept ImportError:\n    pass\n",
        "lone.py": "from pkg import A\nimport typing\nif typing.TYPE_CHECKING:\n    import pkg.c\n",
        "sub/__init__.py": "from .. import c\nthing = 1\n",
        "sub/deep.py": "from ..sub import thing\nfrom .. import lone\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    g = import_graph(pkg, "pkg")
    assert g == {
        "pkg": {"pkg.a": [1]},
        "pkg.a": {"pkg.sub": [8]},  # in a function: counted; under TYPE_CHECKING: not
        "pkg.b": {"pkg.sub.deep": [1], "pkg.a": [2]},
        "pkg.c": {"pkg.b": [2]},
        "pkg.lone": {"pkg": [1]},
        "pkg.sub": {"pkg.c": [1]},
        "pkg.sub.deep": {"pkg.sub": [1], "pkg.lone": [2]},
    }
    # pkg.a -> pkg.sub -> pkg.c -> pkg.b -> pkg.a, and pkg.sub.deep -> pkg.lone -> pkg -> pkg.a joins them
    (cycle,) = find_cycles(g)
    assert cycle[0] == cycle[-1] and len(cycle) >= 3
    assert all(b in g[a] for a, b in zip(cycle, cycle[1:]))
    assert find_cycles({"x": {"y": [1]}, "y": {}}) == []
    assert find_cycles({"x": {"x": [3]}}) == [["x", "x"]]
    assert find_cycles({"x": {"y": [1]}, "y": {"x": [2]}, "z": {"z": [1]}}) == [["x", "y", "x"], ["z", "z"]]

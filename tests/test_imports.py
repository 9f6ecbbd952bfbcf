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
        "a.py": "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n"
                "else:\n    pass\ndef f():\n    from pkg.sub import thing\nA = 1\n",
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


# --- who writes checkpoints, and where the run folder's names come from ---------------------


# What writes a checkpoint's files: torch's and safetensors' savers, DCP's, and checkpoint.py's own writers
# (these two relative to the package).
WRITERS = {
    "torch.save", "torch.distributed.checkpoint.save", "torch.distributed.checkpoint.async_save",
    "torch.distributed.checkpoint.state_dict_saver.save", "safetensors.torch.save_file", "safetensors.torch.save",
    "safetensors.torch.save_model", "safetensors.numpy.save_file",
}
OWN_WRITERS = {"checkpoint.save_model_file", "checkpoint.write_checksums"}
# The files inside a checkpoint folder (layout.py names them): only checkpoint.py reads or writes them.
CHECKPOINT_FILES = {"MODEL_FILE", "CONFIG_FILE", "STATE_FILE", "DCP_DIR", "CHECKSUMS_FILE"}
# (module relative to the package, writer): hf.py writes a transformers folder's model.safetensors, not a checkpoint.
WRITERS_ALLOWED = {("hf", "safetensors.torch.save_file")}


def _from_base(node: ast.ImportFrom, mod: str, is_pkg: bool) -> str:
    """The absolute module a ``from ... import`` statement in ``mod`` imports from."""
    if not node.level:
        return node.module
    parts = (mod if is_pkg else mod.rpartition(".")[0]).split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def references(path: Path, mod: str) -> list[tuple[str, int]]:
    """(qualified name, line) of everything a module names through its imports: ``from x import y as z`` then
    ``z.w`` gives ``x.y`` and ``x.y.w``; ``import torch.distributed.checkpoint as dcp`` then ``dcp.save`` gives
    ``torch.distributed.checkpoint.save``. Names bound otherwise (locals, attributes of objects) are not followed."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    aliases: dict[str, str] = {}
    refs: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, mod, path.name == "__init__.py")
            for a in node.names:
                aliases[a.asname or a.name] = f"{base}.{a.name}"
                refs.append((f"{base}.{a.name}", node.lineno))

    def qualified(node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = qualified(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and (name := qualified(node)):
            refs.append((name, node.lineno))
    return refs


def checkpoint_writers(root: Path = ROOT, package: str = PACKAGE) -> dict[str, list[str]]:
    """module -> ["what (line)"] for every module but checkpoint.py (and layout.py, which only names) that uses a
    writer of checkpoint files or names a file inside a checkpoint folder."""
    writers = WRITERS | {f"{package}.{w}" for w in OWN_WRITERS}
    found: dict[str, list[str]] = {}
    for mod, path in module_names(root, package).items():
        if mod in (f"{package}.checkpoint", f"{package}.layout"):
            continue
        for name, line in sorted(references(path, mod), key=lambda r: (r[1], r[0])):
            module, _, attr = name.rpartition(".")
            writer = name in writers and (mod.removeprefix(f"{package}."), name) not in WRITERS_ALLOWED
            inside = module in (f"{package}.checkpoint", f"{package}.layout") and attr in CHECKPOINT_FILES
            if writer or inside:
                found.setdefault(mod, []).append(f"{name} (line {line})")
    return found


def names_from_checkpoint(root: Path = ROOT, package: str = PACKAGE) -> dict[str, list[str]]:
    """module -> the names it takes from checkpoint that are the run layout's (layout.py defines them), for every
    module that takes any, or that takes nothing but constants from checkpoint (a name, not a checkpoint)."""
    modules = module_names(root, package)
    layout_tree = ast.parse(modules[f"{package}.layout"].read_text(encoding="utf-8"))
    layout_names = {t.id for n in layout_tree.body if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)}
    layout_names |= {n.name for n in layout_tree.body if isinstance(n, ast.FunctionDef)}
    found: dict[str, list[str]] = {}
    prefix = f"{package}.checkpoint."
    for mod, path in modules.items():
        if mod == f"{package}.checkpoint":
            continue
        used = {name[len(prefix):].split(".")[0] for name, _ in references(path, mod) if name.startswith(prefix)}
        bad = sorted(used & layout_names) or (sorted(used) if used and all(n.isupper() for n in used) else [])
        if bad:
            found[mod] = bad
    return found


def test_only_checkpoint_writes_checkpoints():
    found = checkpoint_writers()
    assert not found, ("only gpt2lab/checkpoint.py writes checkpoints (torch.save, safetensors, DCP, the files of a "
                       f"checkpoint folder); move the writing there (module: what, line): {found}")


def test_file_names_come_from_layout():
    found = names_from_checkpoint()
    assert not found, f"import the run folder's file names from gpt2lab.layout, not checkpoint (module: names): {found}"


def test_writer_and_name_checks_on_a_small_package(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "layout.py": "RUN_CONFIG = 'config.yaml'\nMODEL_FILE = 'model.safetensors'\ndef step_of(name):\n    pass\n",
        "checkpoint.py": "import torch\nfrom .layout import MODEL_FILE, RUN_CONFIG\nTIED = 'x'\n"
                         "def save_model_file(m, p):\n    torch.save(m, p)\ndef load_model(p):\n    pass\n",
        "hf.py": "from safetensors.torch import save_file\ndef save_hf(s, p):\n    save_file(s, p)\n",
        "aliased.py": "import torch.distributed.checkpoint as dcp\nfrom safetensors.torch import save_file as sf\n"
                      "def f(s):\n    dcp.save(s)\n    g = sf\n",
        "dotted.py": "import torch\nimport torch.distributed\ndef f(s, p):\n    torch.save(s, p)\n",
        "inside.py": "from . import checkpoint\nfrom . import layout\ndef f(d, m):\n"
                     "    checkpoint.save_model_file(m, d / layout.MODEL_FILE)\n",
        "names.py": "from .checkpoint import RUN_CONFIG, load_model\n",
        "only_const.py": "from . import checkpoint\nx = checkpoint.TIED\n",
        "fine.py": "from .checkpoint import load_model\nfrom .layout import RUN_CONFIG\nimport torch\n"
                   "def f(x):\n    return torch.load(x), x.save()\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    writers = checkpoint_writers(pkg, "pkg")
    assert writers == {  # not hf.py (allowed), nor fine.py (torch.load; .save of an object)
        "pkg.aliased": ["safetensors.torch.save_file (line 2)", "torch.distributed.checkpoint.save (line 4)",
                        "safetensors.torch.save_file (line 5)"],
        "pkg.dotted": ["torch.save (line 4)"],
        "pkg.inside": ["pkg.checkpoint.save_model_file (line 4)", "pkg.layout.MODEL_FILE (line 4)"],
    }, writers
    assert names_from_checkpoint(pkg, "pkg") == {"pkg.names": ["RUN_CONFIG"], "pkg.only_const": ["TIED"]}

"""The package stays readable: no function over 60 lines, no internal function with more than 8 positional
parameters (a public function with many options takes them keyword-only), and model.py, cli.py and bench.py
within the sizes docs/architecture.md promises (issue 28)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpt2lab"
FILES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES, MAX_POSITIONAL = 60, 8
FILE_LIMITS = {"model.py": 350, "cli.py": 400, "bench.py": 250}


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def positional(fn: ast.FunctionDef) -> int:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return len(names) - (1 if names and names[0] in ("self", "cls", "ctx") else 0)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_short_and_take_few_positional_parameters(path):
    long = [f"{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)" for fn in functions(path)
            if fn.end_lineno - fn.lineno + 1 > MAX_LINES]
    wide = [f"{fn.name} ({positional(fn)} positional)" for fn in functions(path) if positional(fn) > MAX_POSITIONAL]
    assert not long, f"functions over {MAX_LINES} lines: {long}; split them into named parts"
    assert not wide, f"more than {MAX_POSITIONAL} positional parameters: {wide}; make the options keyword-only"


@pytest.mark.parametrize("name, limit", FILE_LIMITS.items())
def test_the_files_a_newcomer_reads_first_stay_small(name, limit):
    lines = len((PACKAGE / name).read_text(encoding="utf-8").splitlines())
    assert lines <= limit, f"gpt2lab/{name} is {lines} lines (at most {limit}): move what is not its job out"


def test_the_checker_sees_a_long_function(tmp_path):
    """The checks above can fail: a 61-line function and a 9-parameter one are found."""
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    path = tmp_path / "m.py"
    path.write_text(f"def f():\n{body}\n    return 0\n\n\ndef g(a, b, c, d, e, f, h, i, j):\n    pass\n")
    found = {fn.name: (fn.end_lineno - fn.lineno + 1, positional(fn)) for fn in functions(path)}
    assert found == {"f": (61, 0), "g": (2, 9)}

"""README.md and docs/*.md checked against the code, so that the docs cannot rot (issue 29).

Where commands are read: the lines of ```bash/```sh blocks (``\\`` continuations joined, ``# comments`` dropped,
``&&`` chains split), the ``$ ``-prompted lines of other blocks, and `inline code` that is a whole command (it
starts with one of the programs below).

The quick tests check each command against the real code, read at run time:

- ``gpt2lab ...`` (also ``.venv/bin/gpt2lab``, ``python -m gpt2lab`` and what ``torchrun -m gpt2lab`` or
  ``torchrun --no-python gpt2lab`` starts): parsed by ``gpt2lab.cli.build_parser()``; each ``key=value`` override
  names a key of ``gpt2lab.config.SECTIONS``, and with a config file of the repository (or none) and no
  placeholder, ``load_config(config, overrides)`` accepts the whole command line;
- ``torchrun ...``: torchrun's own options, parsed by torch's torchrun parser;
- ``python SCRIPT.py ...`` (benchmarks/, tools/): the script exists, and its options parse with a parser made
  from the script's own ``add_argument`` calls (read with ast; the script does not run);
- ``pytest ...``: the test files exist and ``-m`` names declared markers; ``pip install``: the extras exist in
  pyproject.toml; ``bash FILE``: the file exists.

An inline command's name alone (`gpt2lab eval loss` in a sentence) is checked as a name: the command and
subcommand exist. The quick tests also check that config keys named in prose (`train.loss_chunk`,
`data.verify=false`) are keys of SECTIONS (a name of the same-named module, such as
`optim.restore_group_settings`, is code, not a key); that options named in prose (`--style completion`) are
options of gpt2lab, torchrun or a script the page names, and take one of their choices; that every
`gpt2lab[extra]` exists; that relative links point at files; and that each ```python block compiles and
imports names that exist. Options are matched in full (no argparse abbreviations), so a renamed option fails.

Placeholders: an upper-case word (``MODEL``, ``RUN_DIR``, ``N``, ``FILE.png``, ``CORPUS...``), ``key=value``,
``...`` and ``[optional ...]`` stand for values. Where the parser wants a number or one of its choices (``--vocab-size
N``, ``gpt2lab eval X``), a placeholder is read as 1 or as the first choice, and the rest is parsed again.

The slow tests run the cheap commands for real, in this process (``gpt2lab.cli.main``, as a user's command line
would, minus the tcmalloc re-exec), in one temporary workspace, in the docs' order: each page's blocks (README.md
first; ```python blocks in their place), then the inline commands. The mapping from a doc command to its run:

- the workspace holds a copy of configs/ and, at the paths the docs name, files made from tests/data
  (``WORKSPACE_FILES``): e.g. ``mybooks/*.txt`` is tinyshakespeare_head.txt, ``corpus/*.jsonl`` the Wikipedia head,
  ``hellaswag_val.jsonl`` the 120 HellaSwag items; ``configs/mine.yaml`` is configs/quickstart.yaml writing to
  runs/mine;
- ``train`` and ``quickstart`` get ``SMALL`` appended (the micro model, 2 steps of 4 x 32 tokens, fp32, no compile,
  1,024 validation tokens, one short sample), and so does ``load_config`` in Python blocks;
- some options are set (or added) to a small value, ``OPTION_REWRITES``: ``tokenizer train --vocab-size 300``,
  ``eval hellaswag/lambada --limit 8``, ``sample --max-new-tokens 8``, ``prepare --workers 1``, ...;
- inline placeholders take the values of ``FILL_INS`` (``MODEL`` and ``RUN`` are runs/quickstart, ``DIR``, ``OUT``
  and ``FILE.png`` fresh paths); ``[optional ...]`` parts are left out; globs are expanded as a shell would;
- parsed only, never run (``not_run``): GPUs and several processes (``torchrun``), the network (``prepare --hub``,
  ``eval hellaswag/lambada`` without ``--data``, ``eval harness``, ``convert from-hf`` of a hub name),
  benchmarks (``gpt2lab bench``, scripts), set-up (``pip``, ``venv``, ``pytest``), ``$ `` lines of output listings,
  any command not in ``RUNNABLE``, and inline commands with a placeholder that has no fill-in;
- a command the same as one already run (after the mapping) runs once.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import glob
import importlib
import io
import json
import re
import shlex
import shutil
import traceback
from pathlib import Path

import pytest

from cli_helpers import DATA

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGS = ("bash", "sh", "shell", "console", "shell-session")
FENCE = re.compile(r"\s*(```+|~~~+)\s*([\w-]*)")


# --- reading the docs ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Snippet:
    """A command line or a Python block of a doc, as written."""

    doc: str
    line: int
    text: str
    kind: str  # "block" (a shell block's line), "prompt" (a "$ " line of another block), "inline", "python"

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first content line, lines) of each fenced block."""
    out, open_fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.fullmatch(line.rstrip()) if line.lstrip().startswith(("```", "~~~")) else None
        if open_fence is None and m:
            open_fence, lang, start, lines = m.group(1), m.group(2).lower(), n + 1, []
        elif open_fence is not None and m and m.group(1).startswith(open_fence) and not m.group(2):
            out.append((lang, start, lines))
            open_fence = None
        elif open_fence is not None:
            lines.append(line)
    return out


def _joined_lines(lines: list[str], start: int):
    """(line number, text) of each logical line: a line ending in a backslash continues on the next."""
    pending, first = "", None
    for n, line in enumerate(lines, start):
        first = n if first is None else first
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, " ".join((pending + line).split())
        pending, first = "", None


def _split_chain(text: str) -> list[str]:
    """A shell line without its comment, cut at ``&&``, ``;`` and ``|`` (quotes kept as written)."""
    lexer = shlex.shlex(text, posix=False, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, ""
    parts, current = [], []
    for tok in lexer:
        if tok.startswith("#"):  # a comment starts at a word, as in bash
            break
        if tok in ("&&", ";", "|", "||"):
            parts.append(" ".join(current))
            current = []
        else:
            current.append(tok)
    return [p for p in [*parts, " ".join(current)] if p]


def _inline_codes(text: str, blocks) -> list[tuple[int, str]]:
    """(line number, text) of each `inline code` outside fenced blocks; one spanning lines is joined."""
    lines = text.splitlines()
    for _lang, start, body in blocks:  # blank the blocks (and their fences), keeping the line numbers
        for i in range(start - 2, start + len(body)):
            lines[i] = ""
    prose = "\n".join(lines)
    return [(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
            for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose) if "\n\n" not in m.group(1)]


PROGRAMS = ("gpt2lab", "python", "python3", "torchrun", "pytest", "pip", "pip3", "bash")


def _is_command(text: str) -> bool:
    words = text.split()
    return bool(words) and Path(words[0]).name in PROGRAMS and len(words) > 1 or text == "gpt2lab"


@functools.cache
def read_doc(doc: str) -> tuple[Snippet, ...]:
    """Every command line and Python block of ``doc``, in the order of the page (inline ones after the blocks)."""
    text = (REPO / doc).read_text(encoding="utf-8")
    blocks = fenced_blocks(text)
    out = []
    for lang, start, body in blocks:
        if lang == "python":
            out.append(Snippet(doc, start, "\n".join(body), "python"))
            continue
        for n, line in _joined_lines(body, start):
            prompt = line.startswith("$ ")
            if lang not in SHELL_LANGS and not prompt:
                continue
            out += [Snippet(doc, n, part, "prompt" if prompt else "block")
                    for part in _split_chain(line.removeprefix("$ "))]
    out += [Snippet(doc, n, code, "inline") for n, code in _inline_codes(text, blocks) if _is_command(code)]
    return tuple(s for s in out if s.kind == "python" or _is_command(s.text))


def all_snippets(kinds=("block", "prompt", "inline")) -> list[Snippet]:
    return [s for doc in DOCS for s in read_doc(doc) if s.kind in kinds]


def argv_of(snippet: Snippet) -> list[str]:
    try:
        return shlex.split(snippet.text)
    except ValueError:  # unbalanced quotes: the parser then says what is wrong
        return snippet.text.split()


# --- placeholders ----------------------------------------------------------------------------------------------
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?(\.\.\.)?")
PLACEHOLDER_WORDS = ("", "...", "key=value", "section.key=value")


def is_placeholder(token: str) -> bool:
    """``MODEL``, ``FILES...``, ``[DIR]``, ``key=value``, ``TASK=FILE``: a word that stands for a value."""
    t = token.strip("[]")
    return t in PLACEHOLDER_WORDS or all(PLACEHOLDER.fullmatch(part) for part in t.split("="))


def _choices_in(message: str) -> list[str]:
    m = re.search(r"choose from (.*?)\)?$", message)
    return [c.strip(" '\"") for c in m.group(1).split(",")] if m else []


def parse_with_placeholders(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``; a placeholder refused as a number or a choice is read as 1 or the first choice
    and the line parsed again. A real error raises ValueError with argparse's message."""
    argv = list(argv)
    for _ in range(len(argv) + 1):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                return parser.parse_args(argv)
        except SystemExit as e:
            if e.code == 0:  # --help, --version
                return argparse.Namespace()
            message = (err.getvalue().strip().splitlines() or ["?"])[-1].partition("error: ")[2]
        quoted = re.search(r"'([^']*)'", message)
        value = quoted.group(1) if quoted else None
        if value is None or not is_placeholder(value) or value not in argv:
            raise ValueError(message)
        argv[argv.index(value)] = (_choices_in(message) or ["1"])[0]
    raise ValueError(f"placeholders could not be read: {argv}")


# --- the code the docs are checked against -------------------------------------------------------------------
def exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and its subcommands' parsers refusing abbreviated options: a doc writes each option in full, so
    that renaming ``--limit`` to ``--limit-items`` does not leave ``--limit`` passing as its abbreviation."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                exact(sub)
    return parser


@functools.cache
def gpt2lab_parser() -> argparse.ArgumentParser:
    from gpt2lab.cli import build_parser

    return exact(build_parser())


@functools.cache
def torchrun_parser() -> argparse.ArgumentParser:
    from torch.distributed.run import get_args_parser

    return exact(get_args_parser())


SCRIPT_KWARGS = ("action", "nargs", "required", "choices", "dest", "const", "metavar")


@functools.cache
def script_parser(path: str) -> argparse.ArgumentParser:
    """A parser with the options a script adds (its ``add_argument`` calls, literal arguments only), not running it."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                    and n.func.attr == "add_argument"), key=lambda n: (n.lineno, n.col_offset))
    parser = argparse.ArgumentParser(prog=path, conflict_handler="resolve", allow_abbrev=False)
    for call in calls:
        args = [ast.literal_eval(a) for a in call.args if isinstance(a, ast.Constant)]
        kwargs = {}
        for k in call.keywords:
            if k.arg in SCRIPT_KWARGS:
                with contextlib.suppress(ValueError):
                    kwargs[k.arg] = ast.literal_eval(k.value)
        parser.add_argument(*args, **kwargs)
    return parser


def config_keys(section: str) -> set[str]:
    from gpt2lab.config import SECTIONS

    return {f.name for f in dataclasses.fields(SECTIONS[section])} | ({"preset"} if section == "model" else set())


def _pyproject_list(header: str, item: str) -> set[str]:
    """Names in a table or list of pyproject.toml (tomllib is 3.11+, and the format here is plain)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    body = text.split(header, 1)[1].split("\n[", 1)[0]
    return set(re.findall(item, body, re.M))


def extras() -> set[str]:
    return _pyproject_list("[project.optional-dependencies]", r"^([\w-]+)\s*=")


def markers() -> set[str]:
    return _pyproject_list("markers = [", r'^\s*"([\w-]+):')


# --- checking one command ----------------------------------------------------------------------------------------
def gpt2lab_argv(argv: list[str]) -> tuple[list[str] | None, list[str]]:
    """(the gpt2lab command line a doc command runs, or None; problems found on the way: torchrun's options)."""
    prog = Path(argv[0]).name
    if prog == "gpt2lab":
        return argv[1:], []
    if prog.startswith("python") and argv[1:3] == ["-m", "gpt2lab"]:
        return argv[3:], []
    if prog == "torchrun":
        try:
            ns = parse_with_placeholders(torchrun_parser(), argv[1:])
        except ValueError as e:
            return None, [f"torchrun: {e}"]
        if ns.training_script == "gpt2lab" and (ns.module or ns.no_python):
            return ns.training_script_args, []
        return None, [] if ns.training_script.endswith(".py") else [f"torchrun starts {ns.training_script!r}"]
    return None, []


def check_overrides(ns: argparse.Namespace) -> list[str]:
    """Each key=value override names a config key; with a config of the repository, the whole line loads."""
    from gpt2lab.config import load_config, parse_override
    from gpt2lab.errors import UserError

    given = [o for o in getattr(ns, "overrides", None) or [] if not is_placeholder(o)]
    problems = []
    for text in given:
        try:
            section, key, _ = parse_override(text)
        except UserError as e:
            problems.append(str(e))
            continue
        if key not in config_keys(section):
            problems.append(f"unknown config key {section}.{key} in {text!r}")
    config = "configs/quickstart.yaml" if ns.command == "quickstart" else getattr(ns, "config", None)
    loadable = ns.command in ("train", "config", "quickstart") and not isinstance(getattr(ns, "resume", None), str)
    if problems or not loadable or any(is_placeholder(o.partition("=")[2]) for o in given):
        return problems
    if config is None or (REPO / config).is_file():
        try:
            load_config(None if config is None else REPO / config, given)
        except UserError as e:
            problems.append(str(e))
    return problems


def command_words(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[int, list[str]]:
    """How many leading words of ``argv`` name a command (``eval loss``, ``tokenizer train``, ``eval X``), and the
    problems: a word where the parser wants one of its commands or choices that is neither one nor a placeholder."""
    n = 0
    while n < len(argv) and not argv[n].startswith("-"):
        first = next((a for a in parser._actions if not a.option_strings and a.dest != "help"), None)
        if first is None or not first.choices:
            break
        word = argv[n]
        if word not in first.choices and not is_placeholder(word):
            return n, [f"gpt2lab: {' '.join(argv[:n + 1])}: no such command or choice (choose from "
                       f"{', '.join(first.choices)})"]
        n += 1
        if not isinstance(first, argparse._SubParsersAction) or word not in first.choices:
            break
        parser = first.choices[word]
    return n, []


def check_gpt2lab(argv: list[str], parser: argparse.ArgumentParser | None = None, inline: bool = False) -> list[str]:
    """Problems of a gpt2lab command line; ``inline``: a mention of a command's name alone (`gpt2lab eval loss`)
    is checked as a name, not as a whole command."""
    parser = exact(parser) if parser else gpt2lab_parser()
    n, problems = command_words(parser, argv)
    if problems or (inline and n == len(argv)):
        return problems
    try:
        ns = parse_with_placeholders(parser, argv)
    except ValueError as e:
        return [f"gpt2lab: {e}"]
    return check_overrides(ns) if getattr(ns, "command", None) else []


def check_script(argv: list[str]) -> list[str]:
    script = argv[0]
    if not (REPO / script).is_file():
        return [f"no such script {script}"]
    try:
        parse_with_placeholders(script_parser(script), argv[1:])
    except ValueError as e:
        return [f"{script}: {e}"]
    return []


def check_pytest(argv: list[str]) -> list[str]:
    problems = []
    for prev, tok in zip(["", *argv], argv):
        if prev == "-m":
            unknown = set(re.findall(r"[\w-]+", tok)) - {"and", "or", "not"} - markers()
            problems += [f"pytest -m: no marker {m!r} in pyproject.toml" for m in sorted(unknown)]
        elif not tok.startswith("-") and prev not in ("-k", "-p") and not (REPO / tok.split("::")[0]).exists():
            problems.append(f"pytest: no such path {tok}")
    return problems


def check_pip(argv: list[str]) -> list[str]:
    named = {e for tok in argv for group in re.findall(r"^(?:gpt2lab|\.)\[([\w,-]+)\]$", tok) for e in group.split(",")}
    return [f"pip install: no extra {e!r} in pyproject.toml" for e in sorted(named - extras())]


def check_command(snippet: Snippet, parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Problems of one doc command against today's code ([] when it parses)."""
    argv = argv_of(snippet)
    prog = Path(argv[0]).name
    inner, problems = gpt2lab_argv(argv)
    if inner is not None:
        return problems + check_gpt2lab(inner, parser, inline=snippet.kind == "inline")
    if prog == "torchrun":
        script = [a for a in argv if a.endswith(".py")]
        return problems or (check_script(argv[argv.index(script[0]):]) if script else [])
    if prog.startswith("python") and len(argv) > 1 and argv[1].endswith(".py"):
        return check_script(argv[1:])
    if prog == "pytest" or (prog.startswith("python") and argv[1:3] == ["-m", "pytest"]):
        return check_pytest(argv[1:] if prog == "pytest" else argv[3:])
    if prog.startswith("pip") or (prog.startswith("python") and argv[1:3] == ["-m", "pip"]):
        return check_pip(argv)
    if prog == "bash" and not argv[1].startswith("-") and not (REPO / argv[1]).is_file():
        return [f"bash: no such file {argv[1]}"]
    return []


# --- quick tests -------------------------------------------------------------------------------------------------
COMMANDS = all_snippets()


def test_the_docs_show_commands():
    """The reader finds the commands (so the tests below test something): each shell block's, and inline ones."""
    with_blocks = {d for d in DOCS if any(lang in SHELL_LANGS for lang, _, _ in fenced_blocks((REPO / d).read_text()))}
    assert with_blocks <= {s.doc for s in COMMANDS if s.kind == "block"}
    readme = [s for s in COMMANDS if s.doc == "README.md" and gpt2lab_argv(argv_of(s))[0] is not None]
    assert {"block", "inline"} <= {s.kind for s in readme}


@pytest.mark.parametrize("snippet", COMMANDS, ids=[f"{s.doc}:{s.line}" for s in COMMANDS])
def test_doc_command_parses(snippet):
    problems = check_command(snippet)
    assert not problems, f"{snippet}\n  " + "\n  ".join(problems)


CODE_SUFFIXES = {"py", "md", "yaml", "yml", "json", "jsonl", "safetensors", "pt", "txt", "bin", "png", "npy"}


def prose_keys(doc: str) -> list[tuple[int, str]]:
    """(line, section.key) named in `inline code` of ``doc`` that is a key or key=value (or several of them)."""
    from gpt2lab.config import SECTIONS

    key = re.compile(rf"({'|'.join(SECTIONS)})\.([a-z_][a-z0-9_]*)(=\S*)?")
    text = (REPO / doc).read_text(encoding="utf-8")
    found = []
    for n, code in _inline_codes(text, fenced_blocks(text)):
        words = code.split()
        if words and all(key.fullmatch(w) and w not in PLACEHOLDER_WORDS for w in words):
            found += [(n, w.split("=")[0]) for w in words]
    return found


def _is_code_name(section: str, name: str) -> bool:
    """`model.gelu_tanh`, `optim.restore_group_settings`, `train.py`: a file or a name of gpt2lab's module."""
    if name in CODE_SUFFIXES:
        return True
    try:
        return hasattr(importlib.import_module(f"gpt2lab.{section}"), name)
    except ImportError:
        return False


@pytest.mark.parametrize("doc", DOCS)
def test_doc_config_keys_exist(doc):
    bad = [f"{doc}:{n}: {k}" for n, k in prose_keys(doc)
           if k.split(".")[1] not in config_keys(k.split(".")[0]) and not _is_code_name(*k.split("."))]
    assert not bad, "config keys the docs name that gpt2lab.config lacks:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("doc", DOCS)
def test_doc_extras_and_links_exist(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    named = {e for group in re.findall(r"gpt2lab\[([\w,-]+)\]", text) for e in group.split(",")}
    bad = [f"extra gpt2lab[{e}] is not in pyproject.toml" for e in sorted(named - extras())]
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path = target.split("#")[0]
        if path and "://" not in path and not target.startswith("mailto:"):
            bad += [] if ((REPO / doc).parent / path).exists() else [f"link to a missing file: {target}"]
    assert not bad, f"{doc}:\n  " + "\n  ".join(bad)


def _parser_tree(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parser_tree(sub)


def known_options(doc: str) -> dict[str, list[argparse.Action]]:
    """Option string -> its actions in gpt2lab's parsers, torchrun's, and those of the scripts ``doc`` names."""
    text = (REPO / doc).read_text(encoding="utf-8")
    scripts = {p for name in set(re.findall(r"([\w-]+)\.py\b", text))
               for p in (f"benchmarks/{name}.py", f"tools/{name}.py") if (REPO / p).is_file()}
    options: dict[str, list[argparse.Action]] = {}
    for parser in [*_parser_tree(gpt2lab_parser()), torchrun_parser(), *map(script_parser, sorted(scripts))]:
        for option, action in parser._option_string_actions.items():
            options.setdefault(option, []).append(action)
    return options


@pytest.mark.parametrize("doc", DOCS)
def test_doc_prose_options_exist(doc):
    """An option named in prose (`--style completion`, `--limit N`) is one of gpt2lab's, torchrun's or a named
    script's; a value given to an option with choices is one of them."""
    known, bad = known_options(doc), []
    text = (REPO / doc).read_text(encoding="utf-8")
    for n, code in _inline_codes(text, fenced_blocks(text)):
        words = code.split()
        if not words or not words[0].startswith("--") or _is_command(code):
            continue
        for option, value in zip(words, [*words[1:], "-"]):
            actions = known.get(option.split("=")[0], []) if option.startswith("--") else None
            if actions == []:
                bad.append(f"{doc}:{n}: {option} is no option of gpt2lab, torchrun or a script the page names")
            elif actions and not value.startswith("-") and not is_placeholder(value) and all(
                    a.choices and value not in a.choices for a in actions):
                bad.append(f"{doc}:{n}: {option} {value}: not one of its choices")
    assert not bad, "\n  ".join(["options the docs name that the code lacks:", *bad])


PYTHON_BLOCKS = all_snippets(("python",))


@pytest.mark.parametrize("snippet", PYTHON_BLOCKS, ids=[f"{s.doc}:{s.line}" for s in PYTHON_BLOCKS])
def test_doc_python_imports_exist(snippet):
    tree = compile(snippet.text, str(snippet), "exec", ast.PyCF_ONLY_AST)
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gpt2lab":
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
        elif isinstance(node, ast.Import):
            for a in node.names:
                importlib.import_module(a.name)
    assert not missing, f"{snippet.doc}:{snippet.line}: imports names gpt2lab lacks: {missing}"


def test_a_renamed_flag_or_key_fails(monkeypatch):
    """The check bites: a flag the parser no longer has, or a config key the schema no longer has, is a problem."""
    import gpt2lab.cli
    import gpt2lab.config

    doc = Snippet("README.md", 0, 'gpt2lab sample runs/x --prompt "ROMEO:" --max-new-tokens 100', "block")
    train = Snippet("README.md", 0, "gpt2lab train --config configs/quickstart.yaml train.max_steps=5", "block")
    assert not check_command(doc) and not check_command(train)

    summary, add_sample = gpt2lab.cli.PARSERS["sample"]

    def renamed(p):  # sample's parser as if --max-new-tokens were renamed --max-tokens in cli.py
        add = p.add_argument
        p.add_argument = lambda *names, **kw: add(*(n.replace("-new-", "-") for n in names), **kw)
        add_sample(p)

    monkeypatch.setitem(gpt2lab.cli.PARSERS, "sample", (summary, renamed))
    problems = check_command(doc, gpt2lab.cli.build_parser())
    assert problems and "unrecognized arguments: --max-new-tokens" in problems[0], problems

    fields = {k: f for k, f in gpt2lab.config.TrainConfig.__dataclass_fields__.items() if k != "max_steps"}
    monkeypatch.setattr(gpt2lab.config.TrainConfig, "__dataclass_fields__", fields)  # as if the key were renamed
    problems = check_command(train)
    assert problems and "max_steps" in problems[0], problems


# --- running the cheap commands ----------------------------------------------------------------------------------
def _wiki_as_content() -> bytes:
    import zstandard

    rows = [json.loads(line) for line in (DATA / "wikipedia-en_head.jsonl").read_text(encoding="utf-8").splitlines()]
    text = "".join(json.dumps({"content": r["text"]}, ensure_ascii=False) + "\n" for r in rows)
    return zstandard.ZstdCompressor().compress(text.encode())


WORKSPACE_FILES = {  # path in the workspace -> its content (a tests/data file, or bytes made from one)
    "mybooks/shakespeare.txt": DATA / "tinyshakespeare_head.txt",
    "books/shakespeare.txt": DATA / "tinyshakespeare_head.txt",
    "corpus/wikipedia.jsonl": DATA / "wikipedia-en_head.jsonl",
    "dump/wikipedia.jsonl.zst": _wiki_as_content,  # --text-key content
    "heldout.jsonl": DATA / "lambada_original_test_head.jsonl",
    "hellaswag_val.jsonl": DATA / "hellaswag_val_120.jsonl",
    "lambada_test.jsonl": DATA / "lambada_original_test_head.jsonl",
    "lambada_test_plain_text.txt": DATA / "lambada_test_plain_text_head.txt",
    "configs/mine.yaml": lambda: (REPO / "configs/quickstart.yaml").read_bytes().replace(b"runs/quickstart",
                                                                                         b"runs/mine"),
}
SMALL = ("model.preset=micro", "train.device=cpu", "train.dtype=float32", "train.compile=false",
         "train.micro_batch=4", "train.seq_len=32", "train.total_batch_tokens=0", "train.max_steps=2",
         "train.log_every=1", "train.ckpt_every=0", "optim.warmup_steps=1", "eval.every=0", "eval.val_tokens=1024",
         "eval.val_batch=0", "eval.hellaswag_every=-1", "eval.lambada_every=-1", "eval.sample_every=0",
         "eval.sample_count=1", "eval.sample_tokens=4")
APPEND_SMALL = ("train", "quickstart")
OPTION_REWRITES = {  # (command, subcommand) -> options set to these values (added when absent)
    ("prepare",): {"--workers": "1"},
    ("tokenizer", "train"): {"--vocab-size": "300"},
    ("tokenizer", "stats"): {"--repeats": "1"},
    ("sample",): {"--max-new-tokens": "8"},
    ("eval", "hellaswag"): {"--limit": "8"},
    ("eval", "lambada"): {"--limit": "8"},
}
FILL_INS = {"MODEL": "runs/quickstart", "RUN": "runs/quickstart", "RUN_DIR": "runs/quickstart", "TEXT": "ROMEO:",
            "FILES...": "mybooks/*.txt", "CORPUS...": "corpus/*.jsonl", "A": "gpt2", "B": "tok32k", "N": "1",
            "SRC": "hf/mine"}
FRESH = ("DIR", "OUT", "FILE", "FILE.png")  # a new path each time: inline/<line>-<name>
RUNNABLE = ("quickstart", "prepare", "tokenizer", "train", "sample", "eval", "report", "runs", "plot", "convert",
            "config")


def verb(ns: argparse.Namespace) -> tuple[str, ...]:
    return (ns.command, *(getattr(ns, a) for a in ("task", "action", "direction") if getattr(ns, a, None)))


def not_run(ns: argparse.Namespace) -> str | None:
    """Why a parsed gpt2lab command is parsed only (None: it runs)."""
    v = verb(ns)
    if v[0] not in RUNNABLE:
        return f"{v[0]}: a benchmark or not a cheap command"
    if v[0] == "prepare" and ns.hub is not None:
        return "--hub streams from the network"
    if v[:2] in (("eval", "hellaswag"), ("eval", "lambada")) and not ns.data:
        return "downloads its data"
    if v[:2] == ("eval", "harness"):
        return "lm-evaluation-harness fetches its tasks"
    if v[:2] == ("convert", "from-hf") and not Path(ns.src).exists():
        return "a hub name"
    return None


def fill(argv: list[str], line: int) -> list[str] | None:
    """Inline placeholders given values; ``[optional ...]`` parts dropped; None when one has no value."""
    out, optional = [], False
    for tok in argv:
        optional = optional or tok.startswith("[")
        if not optional:
            fresh = f"inline/{line}-{tok}" if tok in FRESH else None
            out.append(fresh or FILL_INS.get(tok, tok))
        optional = optional and not tok.endswith("]")
    return None if any(is_placeholder(t) for t in out) else out


def rewrite(argv: list[str], ns: argparse.Namespace) -> list[str]:
    """The doc's command with the small sizes of the mapping, globs expanded as a shell would."""
    argv = list(argv)
    for key, options in OPTION_REWRITES.items():
        if verb(ns)[:len(key)] != key:
            continue
        for option, value in options.items():
            if option in argv:
                argv[argv.index(option) + 1] = value
            else:
                argv += [option, value]
    if ns.command in APPEND_SMALL:
        argv += SMALL
    return [m for tok in argv for m in (sorted(glob.glob(tok)) or [tok] if glob.has_magic(tok) else [tok])]


@dataclasses.dataclass
class Ran:
    snippet: Snippet
    argv: list[str] | None  # the gpt2lab command line run; None: a Python block
    ok: bool
    output: str  # or why it was not run


def run_cli(argv: list[str]) -> tuple[bool, str]:
    from gpt2lab.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        except Exception:  # a crash: what it says is the failure
            traceback.print_exc(file=out)
            rc = "traceback"
    return rc == 0, out.getvalue()


def run_python(snippet: Snippet, monkeypatch) -> tuple[bool, str]:
    """A Python block as written, with ``load_config`` giving the small sizes (SMALL appended)."""
    import gpt2lab.config

    original = gpt2lab.config.load_config
    monkeypatch.setattr(gpt2lab.config, "load_config", lambda path=None, overrides=(): original(
        path, [*overrides, *SMALL]))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(snippet.text, str(snippet), "exec"), {"__name__": "__doc_block__"})
        return True, out.getvalue()
    except Exception:
        return False, out.getvalue() + traceback.format_exc()
    finally:
        monkeypatch.setattr(gpt2lab.config, "load_config", original)


def plan() -> list[Snippet]:
    """What the slow test walks through: each page's blocks (README first), then every inline command."""
    blocks = [s for doc in DOCS for s in read_doc(doc) if s.kind in ("block", "python")]
    return blocks + all_snippets(("inline",))


def to_run(snippet: Snippet) -> tuple[list[str] | None, str]:
    """(the gpt2lab command line a doc command runs as, or None and why it is parsed only)."""
    argv = argv_of(snippet)
    inner = gpt2lab_argv(argv)[0]
    if inner is None or Path(argv[0]).name == "torchrun" or snippet.kind == "prompt":
        return None, "not a gpt2lab command in this process"
    if snippet.kind == "inline":  # a command's name alone is a mention, not a command to run
        if command_words(gpt2lab_parser(), inner)[0] == len(inner):
            return None, "a command's name"
        inner = fill(inner, snippet.line)
        if inner is None:
            return None, "a placeholder without a fill-in"
    ns = parse_with_placeholders(gpt2lab_parser(), inner)  # ValueError: the doc is wrong (test_doc_command_parses)
    reason = not_run(ns)
    return (None, reason) if reason else (rewrite(inner, ns), "")


def make_workspace(root: Path) -> None:
    shutil.copytree(REPO / "configs", root / "configs")
    for rel, source in WORKSPACE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(source.read_bytes() if isinstance(source, Path) else source())


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory) -> list[Ran]:
    """Every cheap doc command run in order in one workspace (and the others, with why they did not run)."""
    root = tmp_path_factory.mktemp("docs_workspace")
    make_workspace(root)
    ran, seen = [], set()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GPT2LAB_CACHE", str(root / "cache"))  # nothing reaches ~/.cache
        for snippet in plan():
            if snippet.kind == "python":
                ran.append(Ran(snippet, None, *run_python(snippet, mp)))
                continue
            try:
                argv, why = to_run(snippet)
            except ValueError as e:
                ran.append(Ran(snippet, None, False, f"does not parse: {e}"))
                continue
            if argv is None or tuple(argv) in seen:
                ran.append(Ran(snippet, None, True, why or "the same as a command run before"))
                continue
            seen.add(tuple(argv))
            ran.append(Ran(snippet, argv, *run_cli(argv)))
    return ran


def _failures(ran: list[Ran]) -> str:
    return "\n".join(f"{r.snippet}\n  " + (f"ran: gpt2lab {shlex.join(r.argv)}\n  " if r.argv else "")
                     + "\n  ".join(r.output.strip().splitlines()[-6:]) for r in ran if not r.ok)


@pytest.mark.slow
def test_doc_commands_run(docs_run):
    commands = [r for r in docs_run if r.snippet.kind != "python"]
    print("\n".join(f"{'ok  ' if r.ok else 'FAIL'} {r.snippet.doc}:{r.snippet.line}: "
                    + (f"gpt2lab {shlex.join(r.argv)}" if r.argv else f"{r.snippet.text}  [not run: {r.output}]")
                    for r in commands))
    assert all(r.ok for r in commands), ("doc commands that fail on the test data (a file the docs name that the "
                                         "workspace lacks goes in WORKSPACE_FILES):\n" + _failures(commands))
    ran = {w for r in commands if r.argv for w in (r.argv[0], " ".join(r.argv[:2]))}
    wanted = {"quickstart", "prepare", "train", "sample", "eval loss", "eval hellaswag", "eval lambada",
              "convert to-hf", "convert from-hf", "tokenizer train", "tokenizer stats", "runs", "report", "plot"}
    assert wanted <= ran, f"the docs no longer show a runnable form of: {sorted(wanted - ran)}"


@pytest.mark.slow
def test_doc_python_blocks_run(docs_run):
    blocks = [r for r in docs_run if r.snippet.kind == "python"]
    assert any(r.snippet.doc == "README.md" for r in blocks), "README.md shows no ```python block"
    assert all(r.ok for r in blocks), "\n".join(f"{r.snippet.doc}:{r.snippet.line}:\n{r.output[-3000:]}"
                                                for r in blocks if not r.ok)

"""argparse options made from a library function's signature and docstring: what the ``gpt2lab`` command uses to
build its commands (gpt2lab/cli.py), the way litgpt builds its CLI with jsonargparse.

A parameter ``max_new_tokens`` becomes ``--max-new-tokens`` (:func:`options_from`), with the parameter's default and
type and the help from the function's docstring (its Google-style ``Args:`` block, :func:`param_help`); the command's
description is the docstring's first paragraph (:func:`summary`). :func:`call` calls the function with the parsed
arguments named like its parameters. The range each number must be in is :data:`RANGES`' (by parameter name), checked
by the parser, so a value out of range is a usage error naming the flag. :class:`Parser` prints a usage error as one
line and help with each option's default.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import inspect
import math
import re
import textwrap
import typing
from pathlib import Path


def number(kind, low: float, low_ok: bool = True, high: float | None = None, high_ok: bool = True):
    """An argparse type: ``kind`` (int or float) >= low (> low unless low_ok), <= high (< high unless high_ok);
    a bad value is a usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        too_high = high is not None and (value > high or (value == high and not high_ok))
        if not math.isfinite(value) or value < low or (value == low and not low_ok) or too_high:
            bound = f"{'>=' if low_ok else '>'} {low}" + (f" and {'<=' if high_ok else '<'} {high}" if high is not None
                                                          else "")
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    return parse


POSITIVE, NON_NEGATIVE = number(int, 1), number(int, 0)
# The range of a number, by parameter name (a name means the same in every command); an int not named here counts
# something, so is >= 1. The parser checks it: a value out of range is a usage error naming the flag.
RANGES = {"top_k": NON_NEGATIVE, "limit": NON_NEGATIVE, "num_fewshot": NON_NEGATIVE, "val_tokens": NON_NEGATIVE,
          "warmup": NON_NEGATIVE, "loss_chunk": NON_NEGATIVE, "temperature": number(float, 0),
          "top_p": number(float, 0, low_ok=False, high=1), "val_fraction": number(float, 0, high=1, high_ok=False)}


class Formatter(argparse.HelpFormatter):
    """Wraps descriptions and epilogs but keeps their indented lines (examples) as written, and ends each
    option's help with its default (the parser's, taken from the code), unless there is none to show (None,
    a flag's False, an empty string) or the help speaks of its default itself."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line if line.startswith(" ") else
                         textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent,
                                       break_on_hyphens=False)
                         for line in text.splitlines())

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if any(default is v for v in (None, False, argparse.SUPPRESS)) or default == "" or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and so its subcommands' parsers) with Formatter's help, whose usage errors are one
    line, as gpt2lab's other errors are, pointing at the command's help."""

    def __init__(self, *args, formatter_class=Formatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def summary(function) -> str:
    """The first paragraph of ``function``'s docstring, on one line: its command's description."""
    return " ".join(inspect.getdoc(function).split("\n\n")[0].split()).replace("``", "")


@functools.cache
def param_help(function) -> dict[str, str]:
    """The help of each parameter in ``function``'s docstring, as argparse takes it. The docstring's ``Args:`` block
    (Google style) has a line ``name: text`` for each parameter; lines indented further continue the text."""
    helps, name = {}, None
    for line in (inspect.getdoc(function) or "").partition("\nArgs:\n")[2].splitlines():
        if not line.startswith(" "):  # a blank line or the next section ends the block
            break
        entry = re.fullmatch(r" {4}(\w+): (.*)", line)
        if entry:
            name, helps[entry[1]] = entry[1], entry[2]
        else:
            helps[name] += " " + line.strip()
    # ``code`` reads as plain text in a terminal; argparse %-formats help, so a % is doubled
    return {name: text.replace("``", "").replace("%", "%%") for name, text in helps.items()}


def option_help(functions: dict, name: str) -> str:
    """The help of parameter ``name`` in the docstrings of ``functions`` ({label: function}): the text, when all of
    them say the same, else each text after the labels of those that say it ("loss: ...; hellaswag: ...")."""
    said: dict[str, list[str]] = {}
    for label, function in functions.items():
        if name in inspect.signature(function).parameters:
            said.setdefault(param_help(function)[name], []).append(label)
    if list(said.values()) == [list(functions)]:
        return next(iter(said))
    return "; ".join(f"{', '.join(labels)}: {text}" for text, labels in said.items())


def options_from(parser, functions, names: str, **special: dict) -> None:
    """Add to ``parser`` (or an argument group) an option for each parameter named in ``names``, in that order:
    ``max_new_tokens`` becomes --max-new-tokens, with the parameter's default (none: the option is required), its
    docstring's help (:func:`option_help`) and its annotation's type: a bool is a flag, an int or a float
    (``int | None`` too) is checked against RANGES, anything else is a string.

    ``functions`` is the library function, or {label: function} where several share a command's options (eval's
    tasks): the first with the parameter gives its type and default, and each its own help.
    ``special[name]`` holds what the command line does its own way, as add_argument's keywords (choices, metavar,
    action, default, required, ...), with two more: ``flags``, the option's names when not --max-new-tokens (a
    short alias, another name), and ``help_end``, text added to the docstring's help."""
    functions = functions if isinstance(functions, dict) else {"": functions}
    for name in names.split():
        first = next(f for f in functions.values() if name in inspect.signature(f).parameters)
        param = inspect.signature(first).parameters[name]
        hint = typing.get_type_hints(first).get(name, type(param.default))
        kinds = typing.get_args(hint) or (hint,)  # int | None: (int, NoneType)
        if bool in kinds:
            kwargs = {"action": "store_true"}
        else:
            kwargs = {"type": RANGES.get(name, POSITIVE if int in kinds else float if float in kinds else str)}
        if param.default is not param.empty:
            kwargs["default"] = param.default
        kwargs.update(dest=name, help=option_help(functions, name), **special.get(name, {}))
        flags = kwargs.pop("flags", ["--" + name.replace("_", "-")])
        kwargs["help"] += kwargs.pop("help_end", "")
        if kwargs.setdefault("required", "default" not in kwargs):
            kwargs.pop("default", None)  # a required option shows no default
        parser.add_argument(*flags, **kwargs)


def unimported(module: str, name: str):
    """Function ``name`` of ``module`` compiled from its source with its signature and docstring but no body: enough
    for its options, without importing what the module imports (the harness's lm-eval: optional, slow to import)."""
    path = importlib.util.find_spec(module).origin
    node = next(n for n in ast.parse(Path(path).read_text(encoding="utf-8")).body
                if isinstance(n, ast.FunctionDef) and n.name == name)
    node.body = node.body[:1]  # the docstring
    namespace: dict = {}  # compile() keeps this module's `from __future__ import annotations`: names stay strings
    exec(compile(ast.Module([node], type_ignores=[]), path, "exec"), namespace)
    return namespace[name]


def call(function, args: argparse.Namespace, **given):
    """``function`` called with every parsed argument named like one of its parameters, and ``given``."""
    params = inspect.signature(function).parameters
    return function(**{**{k: v for k, v in vars(args).items() if k in params}, **given})

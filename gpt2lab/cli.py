"""The ``gpt2lab`` command: for each command, a function that adds its options to a parser and names its handler,
which makes one call of a library function from the parsed arguments (:func:`_call`) and prints what it returns.

A command's options are its library function's parameters (:func:`_options_from`): ``max_new_tokens`` of
``generate_text`` is ``gpt2lab sample --max-new-tokens``, with the parameter's default and type and the help in the
function's docstring (its ``Args:``), so Python users and ``--help`` read one text, kept next to the code. What only
the command line has is written here: short aliases, positional arguments, repeated options, choices, and the range
each number must be in (RANGES).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import typing

from .argspec import Parser, call, number, options_from, param_help, summary, unimported
from .errors import PeerFailure, UserError, print_error

STATS_TOKENIZERS = ["gpt2"]  # what `tokenizer stats` measures without --tokenizer


def _text_inputs(p, function, nargs: str) -> None:
    """The input files and how their documents are read: prepare's and the tokenizer's."""
    from .data.sources import DOC_SPLITS

    p.add_argument("inputs", nargs=nargs, help=param_help(function)["inputs"])
    options_from(p, function, "doc_split text_key", doc_split=dict(choices=DOC_SPLITS))


def _unverified(p) -> None:
    p.add_argument("--unverified", action="store_true",
                   help="use a gpt2lab checkpoint whose checksums.json is missing or incomplete as it is (nothing "
                   "shows that its files are the ones written; `gpt2lab checkpoint checksums DIR` gives an older "
                   "checkpoint its checksums)")


# --- the commands: options, then the handler ---------------------------------------------------------------------
def _prepare(p) -> None:
    from .data.prepare import prepare
    from .data.sources import HubSource

    p.description = summary(prepare)
    p.epilog = ("examples:\n  gpt2lab prepare corpus/*.jsonl.zst --out data/mycorpus\n  gpt2lab prepare --hub --out "
                f"data/fineweb-edu-10B     # {HubSource.name} {HubSource.config}, val = the first shard")
    options_from(p, prepare, "out_dir", out_dir=dict(flags=["--out", "-o"], metavar="OUT", required=True))
    _text_inputs(p, prepare, "*")
    # --hub and its options make the HubSource passed as hub=
    p.add_argument("--hub", nargs="?", const=HubSource.name, metavar="NAME",
                   help="read a hub dataset by name, streaming (NAME left out: %(const)s); needs datasets")
    p.add_argument("--hub-config", help=f"hub dataset config (default: {HubSource.config} for {HubSource.name}, "
                   "none otherwise)")
    p.add_argument("--hub-split", default=HubSource.split, help="hub dataset split")
    p.add_argument("--hub-data-files", nargs="+", metavar="FILE",
                   help="data_files for a builder dataset such as --hub parquet or --hub json")
    options_from(p.add_mutually_exclusive_group(), prepare, "val_fraction val_tokens")
    options_from(p, prepare, "shard_tokens max_docs max_tokens tokenizer workers overwrite")
    # prepare prints its own summary
    p.set_defaults(run=lambda args: call(prepare, args, inputs=args.inputs or None, hub=HubSource.named(
        args.hub, args.inputs, config=args.hub_config, split=args.hub_split, data_files=args.hub_data_files)))


def _train(p) -> None:
    p.description = "Train a GPT. Config = defaults < --config YAML < key=value overrides."
    p.epilog = ("overrides are section.key=value (or key=value when the key is unique), e.g.\n"
                "  gpt2lab train --config configs/gpt2-124m.yaml optim.lr=3e-4 train.micro_batch=32\n"
                "every key is listed in docs/config.md (or: gpt2lab config --doc).")
    p.add_argument("--config", "-c", help="YAML config file (see configs/)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the newest checkpoint of train.run_dir (or of RUN_DIR, using its config.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _unverified(p)
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(run=cmd_train)


def cmd_train(args) -> int | None:
    from .train import nothing_to_resume, resume_config, train

    cfg, resume = resume_config(args.config, args.overrides, args.resume)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return None
    if resume and nothing_to_resume(cfg):
        return None
    summary = train(cfg, resume=resume)
    if summary.get("stopped"):  # SIGTERM/SIGINT: checkpoint written; exit as a signalled process would
        return 128 + signal.Signals[summary["stopped"]].value
    if "val_loss" in summary and os.environ.get("RANK", "0") == "0":
        print(f"done: {summary['steps']} steps, val loss {summary['val_loss']:.4f}, run in {summary['run_dir']}")


def _sample(p) -> None:
    from .config import MAX_SEED
    from .generate import generate_text

    p.description = summary(generate_text)
    p.add_argument("model_path", metavar="checkpoint", help=param_help(generate_text)["model_path"])
    options_from(p, generate_text, "prompt num_samples max_new_tokens temperature top_k top_p seed device compile "
                  "int8 tokenizer", num_samples=dict(flags=["--num-samples", "-n"]),
                  seed=dict(type=number(int, 0, high=MAX_SEED)))
    _unverified(p)
    p.set_defaults(run=cmd_sample)


def cmd_sample(args) -> None:
    from .generate import generate_text

    stream = args.num_samples == 1 and sys.stdout.isatty()  # one sample to a terminal: shown as it comes
    texts = call(generate_text, args, on_text=(lambda text: print(text, end="", flush=True)) if stream else None)
    if stream:
        print()
        return
    for i, text in enumerate(texts):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + text)


def _eval(p) -> None:
    from .config import TrainConfig
    from .evals.hellaswag import STYLES, run_hellaswag
    from .evals.lambada import VARIANTS, run_lambada
    from .evals.loss import run_loss
    from .evals.scoring import BATCH_TOKENS

    tasks = {"loss": run_loss, "hellaswag": run_hellaswag, "lambada": run_lambada,
             "harness": unimported("gpt2lab.evals.harness", "run_harness")}
    p.description = ("Evaluate a model: loss (validation loss over prepared shards), hellaswag (4-way completion "
                     "accuracy, build-nanogpt's and lm-eval-harness' definitions), lambada (last-word accuracy and "
                     "perplexity), harness (any lm-evaluation-harness task, with gpt2lab as the model). Each runs "
                     "under torchrun too, sharded over the processes, writes OUT/<task>_summary.json (hellaswag and "
                     "lambada also OUT/<task>_examples.jsonl, harness the harness's OUT/harness_results.json) and "
                     "prints the summary.")
    p.add_argument("task", choices=list(tasks), help="what to evaluate")
    p.add_argument("model_path", metavar="MODEL", help="checkpoint folder, run folder, or a Hugging Face GPT-2 "
                   "folder or hub name (loss: with --data)")
    # the options most tasks take, then each task's own; a help names the tasks it is for where they differ
    by_device = ", ".join(f"{n} on {kind}" for kind, n in BATCH_TOKENS.items())  # batch_tokens=None means this
    options_from(p, tasks, "data out device dtype tokenizer limit batch_tokens", data=dict(action="append"),
                  dtype=dict(choices=typing.get_args(typing.get_type_hints(TrainConfig)["dtype"])),
                  batch_tokens=dict(help_end=f" (default: {by_device})"))
    _unverified(p)
    options_from(p.add_argument_group("loss"), {"loss": run_loss}, "split tokens batch_size seq_len")
    options_from(p.add_argument_group("hellaswag and lambada"), {"hellaswag": run_hellaswag, "lambada": run_lambada},
                  "plain style variant", style=dict(choices=["both", *(s.replace("_", "-") for s in STYLES)]),
                  variant=dict(choices=VARIANTS))
    options_from(p.add_argument_group("harness (needs lm-eval: pip install 'gpt2lab[harness]')"),
                  {"harness": tasks["harness"]}, "tasks include_path num_fewshot",
                  tasks=dict(type=lambda text: [t.strip() for t in text.split(",") if t.strip()], default="hellaswag"))
    p.set_defaults(run=lambda args: cmd_eval(args, tasks))


def cmd_eval(args, tasks: dict) -> None:
    """Run ``tasks[args.task]``: the library function of eval TASK (for the harness, imported only now)."""
    if args.task == "harness":
        try:
            from .evals.harness import run_harness as function
        except ImportError as e:
            raise UserError(f"eval harness needs lm-evaluation-harness ({e}): pip install 'gpt2lab[harness]'") from None
    else:  # --data TASK=FILE repeats for the harness's tasks only
        if len(args.data or []) > 1:
            raise UserError(f"--data: give one for eval {args.task}")
        args.data, function = (args.data[0] if args.data else None), tasks[args.task]
    summary = call(function, args)
    if os.environ.get("RANK", "0") == "0":
        summary.pop("definitions", None)
        print(json.dumps(summary))


def _tokenizer(p) -> None:
    from .tokenizer_train import tokenizer_stats, train_tokenizer

    p.description = ("train: a byte-level BPE on your corpus (the Hugging Face tokenizers library; pip install "
                     "'gpt2lab[tokenizer]'), saved as a folder that --tokenizer and data.tokenizer take. stats: bytes "
                     "per token and encode speed of tokenizers on your text.")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a byte-level BPE on a corpus", description=summary(train_tokenizer),
                        epilog="example:\n  gpt2lab tokenizer train corpus/*.jsonl --vocab-size 32768 --out tok32k\n"
                        "  gpt2lab prepare corpus/*.jsonl --tokenizer tok32k --out data/mycorpus\n"
                        "  gpt2lab train data.dir=data/mycorpus data.tokenizer=tok32k")
    options_from(t, train_tokenizer, "vocab_size out pattern", out=dict(flags=["--out", "-o"]))
    _text_inputs(t, train_tokenizer, "+")
    options_from(t, train_tokenizer, "name overwrite")
    st = tsub.add_parser("stats", help="bytes per token and tokens/s of tokenizers on some text",
                         description=summary(tokenizer_stats))
    _text_inputs(st, tokenizer_stats, "+")
    # --tokenizer, repeated, makes the list (default None: argparse would append to a default list)
    options_from(st, tokenizer_stats, "tokenizers repeats", tokenizers=dict(
        flags=["--tokenizer"], metavar="TOKENIZER", action="append", default=None,
        help_end=f"; repeat to compare (default: {', '.join(STATS_TOKENIZERS)})"))
    st.add_argument("--json", action="store_true", help="print one JSON object per tokenizer instead of a table")
    p.set_defaults(run=cmd_tokenizer)


def cmd_tokenizer(args) -> None:
    from .tokenizer_train import format_stats, tokenizer_stats, train_tokenizer

    if args.action == "stats":
        rows = call(tokenizer_stats, args, tokenizers=args.tokenizers or STATS_TOKENIZERS)
        print("\n".join(json.dumps(r) for r in rows) if args.json else format_stats(rows))
        return
    tok = call(train_tokenizer, args)
    print(f"wrote tokenizer {tok.name} ({tok.n_vocab:,} tokens, sha256 {tok.sha256}) to {args.out}; use it with "
          f"--tokenizer {args.out} (prepare, sample, eval) and data.tokenizer={args.out} (train)")


def _report(p) -> None:
    from .evals.report import run_report

    p.description = summary(run_report)
    p.add_argument("run_dir", help=param_help(run_report)["run_dir"])
    options_from(p, run_report, "plot as_json markdown", plot=dict(metavar="FILE"), as_json=dict(flags=["--json"]))
    p.set_defaults(run=lambda args: print(call(run_report, args), end=""))


def _runs(p) -> None:
    from .runinfo import format_runs, list_runs

    p.description = summary(list_runs)
    p.add_argument("dir", nargs="?", default="runs", help=param_help(list_runs)["root"])
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")

    def run(args):
        rows = list_runs(args.dir)
        print("\n".join(json.dumps(r) for r in rows) if args.json else format_runs(rows, args.dir))

    p.set_defaults(run=run)


def _plot(p) -> None:
    from .plot import plot_runs

    p.description = summary(plot_runs)
    p.add_argument("runs", nargs="+", metavar="RUN", help=param_help(plot_runs)["runs"])
    options_from(p, plot_runs, "out log_x labels", out=dict(flags=["--out", "-o"], metavar="FILE", required=True),
                  labels=dict(flags=["--label"], action="append", metavar="NAME"))

    def run(args):
        call(plot_runs, args)
        print(f"wrote {args.out}")

    p.set_defaults(run=run)


def _bench(p) -> None:
    from .bench import run_bench
    from .config import MODEL_PRESETS

    p.description = summary(run_bench)
    options_from(p, run_bench, "preset batch seq_len dtype compile_mode steps warmup device compare recipe "
                  "loss_chunk as_json", preset=dict(choices=MODEL_PRESETS), batch=dict(flags=["--batch", "-B"]),
                  seq_len=dict(flags=["--seq-len", "-T"]), dtype=dict(choices=["auto", "bfloat16", "float32"]),
                  compile_mode=dict(flags=["--compile"], choices=["off", "on", "both"]), compare=dict(choices=["hf"]),
                  recipe=dict(metavar="CONFIG"), loss_chunk=dict(metavar="ROWS"), as_json=dict(flags=["--json"]))
    p.set_defaults(run=lambda args: call(run_bench, args))  # it prints the table


def _convert(p) -> None:
    from .weights import export_hf, import_hf

    p.description = f"from-hf SRC OUT: {summary(import_hf)} to-hf CHECKPOINT OUT: {summary(export_hf)}"
    p.add_argument("direction", choices=["from-hf", "to-hf"],
                   help="from-hf: transformers -> gpt2lab; to-hf: the reverse")
    p.add_argument("src", help="from-hf: transformers directory or hub name; to-hf: checkpoint or run folder")
    p.add_argument("out", help="output folder (written atomically; must not exist unless --overwrite)")
    options_from(p, import_hf, "overwrite")
    _unverified(p)

    def run(args):
        if args.direction == "from-hf":
            out = import_hf(args.src, args.out, overwrite=args.overwrite)
            print(f"wrote gpt2lab checkpoint {out} (sample it with: gpt2lab sample {out})")
        else:
            out = export_hf(args.src, args.out, overwrite=args.overwrite)
            print(f"wrote transformers directory {out} (GPT2LMHeadModel.from_pretrained({str(out)!r}))")

    p.set_defaults(run=run)


def _checkpoint(p) -> None:
    from .checkpoint import add_checksums

    p.description = "checksums PATH: " + summary(add_checksums)
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("checksums", help="write the checksums of checkpoints that lack them",
                        description=p.description)
    c.add_argument("path", help=param_help(add_checksums)["path"])

    def run(args):
        for folder, what in add_checksums(args.path):
            print(f"{folder}: checksums {what}")

    p.set_defaults(run=run)


def _quickstart(p) -> None:
    from .quickstart import quickstart

    p.description = summary(quickstart)
    options_from(p, quickstart, "run_dir", run_dir=dict(flags=["--out"], metavar="OUT"))
    p.add_argument("overrides", nargs="*", help=param_help(quickstart)["overrides"])
    p.set_defaults(run=lambda args: call(quickstart, args))


def _config(p) -> None:
    from .config import config_doc, load_config

    p.description = "Print the config reference or a resolved config."
    p.add_argument("--doc", action="store_true", help="print the Markdown reference of every key")
    p.add_argument("--config", "-c", help="YAML config to resolve")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.set_defaults(run=lambda args: print(config_doc() if args.doc else load_config(args.config, args.overrides)
                                          .to_yaml(), end=""))


# The commands, in `gpt2lab --help`'s order: the summary it shows, and the function adding the options and handler.
PARSERS = {
    "quickstart": ("prepare the shipped tinyshakespeare, train a small model on CPU, sample", _quickstart),
    "prepare": ("tokenize a corpus (local files or a Hugging Face dataset) into token shards", _prepare),
    "tokenizer": ("train your own byte-level BPE tokenizer, or compare tokenizers", _tokenizer),
    "train": ("train a model (CPU, one GPU, or torchrun)", _train),
    "sample": ("generate text from a checkpoint", _sample),
    "eval": ("evaluate a model: validation loss, HellaSwag, LAMBADA, any lm-evaluation-harness task", _eval),
    "report": ("print a run's evaluation history, status and environment", _report),
    "runs": ("list training runs and whether they are running, finished or stopped", _runs),
    "plot": ("plot loss, learning rate, HellaSwag and LAMBADA of runs against tokens", _plot),
    "bench": ("measure training tokens/s and MFU", _bench),
    "convert": ("import GPT-2 weights from Hugging Face transformers, or export to it", _convert),
    "checkpoint": ("give checkpoints of an older gpt2lab their checksums", _checkpoint),
    "config": ("show config options", _config),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``gpt2lab`` parser. Adding a command's options imports its library (their defaults are its functions'),
    so given ``command``, the one on the command line, only its options are added; every command is listed by
    name and summary in ``gpt2lab --help``."""
    from . import __version__

    parser = Parser(prog="gpt2lab",
                     description="Pretrain GPT-2-class language models from scratch: prepare, train, eval, sample.")
    parser.add_argument("--version", action="version", version=f"gpt2lab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (line, add_options) in PARSERS.items():
        if command in (None, name):
            add_options(sub.add_parser(name, help=line))
        else:
            sub.add_parser(name, help=line)
    return parser


# The commands that run a model on the CPU, and so gain from a fast allocator (gpt2lab/allocator.py).
ALLOCATOR_COMMANDS = ("train", "quickstart", "bench", "eval", "sample")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ALLOCATOR_COMMANDS:  # the command line, not a caller
        from .allocator import reexec_with_allocator

        reexec_with_allocator(sys.argv[1:])
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(next((w for w in words if not w.startswith("-")), "")).parse_args(argv)
    try:
        if hasattr(args, "unverified"):  # the commands that load checkpoints
            from .checkpoint import accept_unverified

            accept_unverified(args.unverified)
        rc = args.run(args)
    except UserError as e:
        print_error(" ".join(str(e).split("\n")))  # one line, whatever a message quotes
        return 2
    except PeerFailure as e:
        print_error(str(e))
        sys.stdout.flush()
        # The process group is broken; normal interpreter exit could block or abort tearing it down.
        os._exit(1)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)  # train's Aborted: a second SIGTERM/SIGINT while stopping
        print(str(e) if signum else "interrupted", file=sys.stderr)
        return 128 + (signum or signal.SIGINT)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # full disk, quota or file-size limit: the user's
            print_error(f"no space left while writing {e.filename or 'a file'} ({e.strerror}): free space and run the "
                        "same command again (files are written atomically: nothing half-written is kept, and prepare "
                        "and train --resume continue from their last complete shard or checkpoint)")
            return 2
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())

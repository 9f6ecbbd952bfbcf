"""The ``gpt2lab`` command: a parser per command, and a handler per command that turns the parsed arguments
into one call of a library function and prints what it returns.

Options take their defaults from the library function's signature (:func:`_defaults`), so each default is
written once, in the code that uses it, and ``--help`` shows it (:class:`_Formatter`). A handler passes the
function every parsed argument named like one of its parameters (:func:`_call`). Choices come from the code
too: the config's ``Literal`` types, the evaluations' variants.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import math
import os
import signal
import sys
import textwrap
import typing

from .errors import PeerFailure, UserError

EPILOG_TRAIN = """\
overrides are section.key=value (or key=value when the key is unique), e.g.
  gpt2lab train --config configs/gpt2-124m.yaml optim.lr=3e-4 train.micro_batch=32
every key is listed in docs/config.md (or: gpt2lab config --doc)."""


def _number(kind, low: float, low_ok: bool = True, high: float | None = None, high_ok: bool = True):
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


POSITIVE, NON_NEGATIVE = _number(int, 1), _number(int, 0)
TOKENIZER_HELP = ("gpt2 or a tokenizer folder (gpt2lab tokenizer train); default: the model's own (a checkpoint's "
                  "copy, else gpt2); one that differs from the model's recorded tokenizer is an error")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
STATS_TOKENIZERS = ["gpt2"]  # what `tokenizer stats` measures without --tokenizer


class _Formatter(argparse.HelpFormatter):
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


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and so its subcommands' parsers) with _Formatter's help, whose usage errors are one
    line, as gpt2lab's other errors are, pointing at the command's help."""

    def __init__(self, *args, formatter_class=_Formatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _defaults(parser: argparse.ArgumentParser, *functions) -> None:
    """Give each optional argument of ``parser`` the default of the same-named parameter of the first of
    ``functions`` that has one: the library keeps the one copy of a default, and --help shows it."""
    for action in parser._actions:
        params = [inspect.signature(f).parameters.get(action.dest) for f in functions]
        found = [p.default for p in params if p is not None and p.default is not p.empty]
        if found and not action.required:
            action.default = found[0]


def _call(function, args: argparse.Namespace, **given):
    """``function`` called with every parsed argument named like one of its parameters, and ``given``."""
    params = inspect.signature(function).parameters
    return function(**{**{k: v for k, v in vars(args).items() if k in params}, **given})


def _text_inputs(p, nargs: str, column: str = "jsonl key / parquet column") -> None:
    """The input files and how their documents are read: prepare's and the tokenizer's."""
    from .data.sources import DOC_SPLITS

    p.add_argument("inputs", nargs=nargs, help="input files or globs (txt/jsonl/parquet, compressed too)")
    p.add_argument("--doc-split", choices=DOC_SPLITS,
                   help=".txt files: one document per file, per line, or per blank-line block")
    p.add_argument("--text-key", help=f"{column} holding the text")


def _add_prepare(p) -> None:
    from .data.prepare import prepare
    from .data.sources import HubSource

    p.description = ("Tokenize local .txt/.jsonl/.parquet files (globs allowed; .gz/.zst/.bz2/.xz ok) or a Hugging "
                     "Face hub dataset (--hub, streamed) with the GPT-2 BPE (or --tokenizer) into llm.c-compatible "
                     ".bin shards (val_*.bin, train_*.bin) plus manifest.json. An interrupted prepare continues when "
                     "the same command is run again.")
    p.epilog = ("examples:\n  gpt2lab prepare corpus/*.jsonl.zst --out data/mycorpus\n  gpt2lab prepare --hub --out "
                f"data/fineweb-edu-10B     # {HubSource.name} {HubSource.config}, val = the first shard")
    p.add_argument("--out", "-o", dest="out_dir", metavar="OUT", required=True, help="output folder for the shards")
    _text_inputs(p, "*", "jsonl key / parquet or hub column")
    p.add_argument("--hub", nargs="?", const=HubSource.name, metavar="NAME",
                   help="read a hub dataset by name, streaming (NAME left out: %(const)s); needs datasets")
    p.add_argument("--hub-config", help=f"hub dataset config (default: {HubSource.config} for {HubSource.name}, "
                   "none otherwise)")
    p.add_argument("--hub-split", default=HubSource.split, help="hub dataset split")
    p.add_argument("--hub-data-files", nargs="+", metavar="FILE",
                   help="data_files for a builder dataset such as --hub parquet or --hub json")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=_number(float, 0, high=1, high_ok=False),
                     help="fraction of tokens for validation (default for local files: 0.1)")
    val.add_argument("--val-tokens", type=NON_NEGATIVE,
                     help="the first N tokens are validation (default for --hub: one shard)")
    p.add_argument("--shard-tokens", type=POSITIVE, help="tokens per shard")
    p.add_argument("--max-docs", type=POSITIVE, help="stop after this many documents")
    p.add_argument("--max-tokens", type=POSITIVE, help="stop after this many tokens")
    p.add_argument("--tokenizer", help="gpt2 (shipped), a folder made by `gpt2lab tokenizer train`, or another "
                   "tiktoken encoding name (downloaded by tiktoken)")
    p.add_argument("--workers", type=POSITIVE, help="tokenizer processes (default: cores, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace shards (or an interrupted prepare) in --out")
    _defaults(p, prepare)


def _add_train(p) -> None:
    p.description, p.epilog = "Train a GPT. Config = defaults < --config YAML < key=value overrides.", EPILOG_TRAIN
    p.add_argument("--config", "-c", help="YAML config file (see configs/)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the newest checkpoint of train.run_dir (or of RUN_DIR, using its config.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _unverified(p)
    p.add_argument("overrides", nargs="*", help="section.key=value")


def _add_sample(p) -> None:
    from .config import MAX_SEED
    from .generate import generate_text

    p.description = ("Generate text from a checkpoint folder, a run folder (its newest checkpoint), or a Hugging "
                     "Face GPT-2 folder or hub name.")
    p.add_argument("model_path", metavar="checkpoint", help="checkpoint folder (…/checkpoints/step_N), run folder, "
                   "or Hugging Face GPT-2 folder or hub name")
    p.add_argument("--prompt", help="text to continue (default: the start of a document)")
    p.add_argument("--num-samples", "-n", type=POSITIVE, help="how many samples")
    p.add_argument("--max-new-tokens", type=POSITIVE, help="tokens per sample, at most (fewer when it ends)")
    p.add_argument("--temperature", type=_number(float, 0), help="0 = greedy")
    p.add_argument("--top-k", type=NON_NEGATIVE, help="sample from the k likeliest tokens; 0 = off")
    p.add_argument("--top-p", type=_number(float, 0, low_ok=False, high=1), help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=_number(int, 0, high=MAX_SEED), help="makes the samples reproducible")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (compiles first, faster after)")
    p.add_argument("--int8", action="store_true",
                   help="CPU only: int8 dynamic quantization of the Linear layers (faster, ~1%% higher perplexity)")
    p.add_argument("--tokenizer", help=TOKENIZER_HELP)
    _unverified(p)
    _defaults(p, generate_text)


def _add_convert(p) -> None:
    p.description = ("from-hf SRC OUT: SRC is a directory saved by transformers' save_pretrained() (safetensors or "
                     "pytorch_model.bin) or a hub name such as openai-community/gpt2 (needs gpt2lab[hf] and a "
                     "connection); OUT becomes a gpt2lab checkpoint folder that `gpt2lab sample` loads. to-hf "
                     "CHECKPOINT OUT: OUT becomes a directory that transformers' GPT2LMHeadModel and AutoTokenizer "
                     "load offline.")
    p.add_argument("direction", choices=["from-hf", "to-hf"],
                   help="from-hf: transformers -> gpt2lab; to-hf: the reverse")
    p.add_argument("src", help="from-hf: transformers directory or hub name; to-hf: checkpoint or run folder")
    p.add_argument("out", help="output folder (written atomically; must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _unverified(p)


def _add_eval(p) -> None:
    from .config import TrainConfig
    from .evals.hellaswag import STYLES, run_hellaswag
    from .evals.lambada import VARIANTS, run_lambada
    from .evals.loss import run_loss
    from .evals.scoring import BATCH_TOKENS

    p.description = ("Evaluate a model: loss (validation loss over prepared shards), hellaswag (4-way completion "
                     "accuracy, build-nanogpt's and lm-eval-harness' definitions), lambada (last-word accuracy and "
                     "perplexity), harness (any lm-evaluation-harness task, with gpt2lab as the model). Each runs "
                     "under torchrun too, sharded over the processes, writes OUT/<task>_summary.json (hellaswag and "
                     "lambada also OUT/<task>_examples.jsonl, harness the harness's OUT/harness_results.json) and "
                     "prints the summary.")
    p.add_argument("task", choices=["loss", "hellaswag", "lambada", "harness"], help="what to evaluate")
    p.add_argument("model_path", metavar="MODEL", help="checkpoint folder, run folder, or a Hugging Face GPT-2 "
                   "folder or hub name (loss: with --data)")
    p.add_argument("--data", action="append", help="loss: shard folder (default: the run's data.dir); hellaswag: a "
                   "HellaSwag jsonl (default: downloaded to the cache); lambada: jsonl with 'text' or one passage per "
                   "line (default: lambada_openai, downloaded); harness: TASK=FILE, a local copy of a task's data "
                   "(repeat it for each task)")
    p.add_argument("--out", help="folder for the result files (default: evals/<name of MODEL>)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--dtype", choices=typing.get_args(typing.get_type_hints(TrainConfig)["dtype"]),
                   help="autocast dtype (auto: bfloat16 where the hardware has it; loss: the run's train.dtype)")
    p.add_argument("--tokenizer", help=TOKENIZER_HELP)
    p.add_argument("--limit", type=NON_NEGATIVE, help="score only N items: hellaswag and lambada a fixed subset spread "
                   "evenly over the file (as eval.hellaswag_items / eval.lambada_items in training), harness the "
                   "first N documents of each task; 0 = all")
    p.add_argument("--batch-tokens", type=POSITIVE, help="hellaswag, lambada, harness: tokens per forward batch "
                   "(default: " + ", ".join(f"{n} on {kind}" for kind, n in BATCH_TOKENS.items()) + ")")
    _unverified(p)
    g = p.add_argument_group("loss")
    g.add_argument("--split", help="the shards' split to score")
    g.add_argument("--tokens", type=POSITIVE, help="tokens to score (default: eval.val_tokens of the run)")
    g.add_argument("--batch-size", type=POSITIVE, help="windows per forward batch")
    g.add_argument("--seq-len", type=POSITIVE,
                   help="window length (default: the run's train.seq_len; a Hugging Face model's n_positions)")
    g = p.add_argument_group("hellaswag and lambada")
    g.add_argument("--plain", action="store_true", help="use the plain one-example-at-a-time scorer (reference, slow)")
    g.add_argument("--style", choices=["both", *(s.replace("_", "-") for s in STYLES)],
                   help="hellaswag: which definitions to compute")
    g.add_argument("--variant", choices=VARIANTS, help="lambada: openai (detokenized, lambada_openai; downloaded "
                   "when reachable) or original (lowercased, tokenized; needs --data); default: openai, or what the "
                   "--data file is (original when it is lowercased throughout)")
    g = p.add_argument_group("harness (needs lm-eval: pip install 'gpt2lab[harness]')")
    g.add_argument("--tasks", type=lambda text: [t.strip() for t in text.split(",") if t.strip()], default="hellaswag",
                   help="comma-separated harness tasks, e.g. hellaswag,lambada_openai,piqa,arc_easy,winogrande")
    g.add_argument("--include-path", help="a folder of your own task YAMLs")
    g.add_argument("--num-fewshot", type=NON_NEGATIVE, help="few-shot examples (default: the task's)")
    _defaults(p, run_loss, run_hellaswag, run_lambada)


def _add_tokenizer(p) -> None:
    from .tokenizer import PATTERNS
    from .tokenizer_train import tokenizer_stats, train_tokenizer

    p.description = ("train: a byte-level BPE on your corpus (the Hugging Face tokenizers library; pip install "
                     "'gpt2lab[tokenizer]'), saved as a folder that --tokenizer and data.tokenizer take. stats: bytes "
                     "per token and encode speed of tokenizers on your text.")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a byte-level BPE on a corpus",
                        description="Train a byte-level BPE (GPT-2's pre-tokenisation pattern by default, "
                        "<|endoftext|> as its last token) on txt/jsonl/parquet files (compressed too), as prepare "
                        "reads them; write OUT (a tiktoken rank file and gpt2lab-tokenizer.json).",
                        epilog="example:\n  gpt2lab tokenizer train corpus/*.jsonl --vocab-size 32768 --out tok32k\n"
                        "  gpt2lab prepare corpus/*.jsonl --tokenizer tok32k --out data/mycorpus\n"
                        "  gpt2lab train data.dir=data/mycorpus data.tokenizer=tok32k")
    t.add_argument("--vocab-size", type=POSITIVE, required=True,
                   help="tokens, <|endoftext|> included (GPT-2: 50257); at least 257")
    t.add_argument("--out", "-o", required=True,
                   help="output folder (written atomically; must not exist unless --overwrite)")
    t.add_argument("--pattern", help=f"pre-tokenisation pattern: {' or '.join(PATTERNS)}")
    _text_inputs(t, "+")
    t.add_argument("--name", help="the tokenizer's name in manifests (default: the folder's name)")
    t.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _defaults(t, train_tokenizer)
    st = tsub.add_parser("stats", help="bytes per token and tokens/s of tokenizers on some text",
                         description="Encode the documents of TEXT files with each --tokenizer as prepare does "
                         "(tiktoken, one process) and report bytes per token and tokens/s.")
    _text_inputs(st, "+")
    st.add_argument("--tokenizer", dest="tokenizers", metavar="TOKENIZER", action="append",
                    help=f"gpt2 or a tokenizer folder; repeat to compare (default: {', '.join(STATS_TOKENIZERS)})")
    st.add_argument("--repeats", type=POSITIVE, help="timed passes; tokens/s is the best")
    st.add_argument("--json", action="store_true", help="print one JSON object per tokenizer instead of a table")
    _defaults(st, tokenizer_stats)


def _add_report(p) -> None:
    p.description = ("Print the validation loss, HellaSwag and LAMBADA history of a training run (from its "
                     "metrics.jsonl) as a table, then its status and what it ran on (environment.json).")
    p.add_argument("run_dir", help="training run folder (train.run_dir)")
    p.add_argument("--plot", metavar="FILE", help="also plot the run to FILE (.png, .svg, ...; needs matplotlib)")
    p.add_argument("--json", dest="as_json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--markdown", action="store_true",
                   help="print a Markdown report: figures, best checkpoint, time, tokens/s, MFU, evaluations, "
                   "environment, config, and the plot (--plot FILE, or RUN_DIR/plot.png when matplotlib is installed)")


def _add_runs(p) -> None:
    p.description = ("List the run folders in DIR (DIR itself, or up to two levels below it): model, steps "
                     "done/total, tokens, last train and val loss, best HellaSwag, status, last update. Status comes "
                     "from RUN_DIR/status.json: running while the training process is alive (on another host: while "
                     "its heartbeat, rewritten every 30 s, is younger than 3 minutes).")
    p.add_argument("dir", nargs="?", default="runs", help="folder of runs")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")


def _add_plot(p) -> None:
    p.description = ("Plot one or more runs overlaid: train and validation loss, learning rate, HellaSwag (with "
                     "GPT-2 124M's 0.2955 and GPT-3 Small's 0.337) and LAMBADA, against tokens seen. Needs matplotlib "
                     "(pip install 'gpt2lab[plot]').")
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run folders")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="image file to write (.png, .svg, .pdf)")
    p.add_argument("--log-x", action="store_true", help="logarithmic tokens axis")
    p.add_argument("--label", dest="labels", action="append", metavar="NAME",
                   help="legend name of each run, in order (default: the folder names)")


def _add_bench(p) -> None:
    from .bench import run_bench
    from .config import MODEL_PRESETS

    p.description = ("Time training steps on random tokens and report tokens/s and MFU against a bf16 (and fp32) "
                     "matmul peak measured in the same run on the same device.")
    p.add_argument("--preset", choices=MODEL_PRESETS, help="model preset")
    p.add_argument("--batch", "-B", type=POSITIVE, help="micro-batch")
    p.add_argument("--seq-len", "-T", type=POSITIVE, help="sequence length")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"],
                   help="autocast dtype; auto = bfloat16 where the hardware has it")
    p.add_argument("--compile", dest="compile_mode", choices=["off", "on", "both"],
                   help="torch.compile the model: off, on, or both side by side with their ratio")
    p.add_argument("--steps", type=POSITIVE, help="timed steps, after --warmup")
    p.add_argument("--warmup", type=NON_NEGATIVE, help="untimed steps first; compilation happens here and its time "
                   "is reported")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--compare", choices=["hf"], help="also time transformers' GPT2LMHeadModel of the same shape, same "
                   "step and protocol, right after each case, and print gpt2lab's ratio to it")
    p.add_argument("--recipe", metavar="CONFIG", help="take the model switches and the optimizer from this training "
                   "config (e.g. configs/speedrun.yaml) instead of the GPT-2 recipe; --preset sets the size")
    p.add_argument("--loss-chunk", type=NON_NEGATIVE, metavar="ROWS", help="the chunked LM head and loss, ROWS rows "
                   "of logits at a time, as train.loss_chunk (0: the whole logits)")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="print one JSON object per result instead of a table")
    _defaults(p, run_bench)


def _add_quickstart(p) -> None:
    from .quickstart import quickstart

    p.description = ("The whole loop on the corpus shipped inside gpt2lab: prepare tinyshakespeare, train the "
                     "quickstart model (under 4 minutes on 2 CPU cores with tcmalloc), report validation loss, save a "
                     "checkpoint, print samples.")
    p.add_argument("--out", dest="run_dir", metavar="OUT", help="run folder")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/quickstart.yaml, e.g. max_steps=50")
    _defaults(p, quickstart)


def _unverified(p) -> None:
    p.add_argument("--unverified", action="store_true",
                   help="use a gpt2lab checkpoint whose checksums.json is missing or incomplete as it is (nothing "
                   "shows that its files are the ones written; `gpt2lab checkpoint checksums DIR` gives an older "
                   "checkpoint its checksums)")


def _add_checkpoint(p) -> None:
    p.description = ("checksums PATH: give a checkpoint of an older gpt2lab (or every checkpoint of a run folder) "
                     "the checksums.json that sample, eval, convert and train --resume check: the sha256 of every "
                     "file in it. A file that checksums.json already lists must still match it.")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("checksums", help="write the checksums of checkpoints that lack them",
                        description=p.description)
    c.add_argument("path", help="checkpoint folder, or run folder (all its checkpoints)")


def _add_config(p) -> None:
    p.description = "Print the config reference or a resolved config."
    p.add_argument("--doc", action="store_true", help="print the Markdown reference of every key")
    p.add_argument("--config", "-c", help="YAML config to resolve")
    p.add_argument("overrides", nargs="*", help="section.key=value")


# The commands, in `gpt2lab --help`'s order: the summary it shows, and the function adding the options.
PARSERS = {
    "quickstart": ("prepare the shipped tinyshakespeare, train a small model on CPU, sample", _add_quickstart),
    "prepare": ("tokenize a corpus (local files or a Hugging Face dataset) into token shards", _add_prepare),
    "tokenizer": ("train your own byte-level BPE tokenizer, or compare tokenizers", _add_tokenizer),
    "train": ("train a model (CPU, one GPU, or torchrun)", _add_train),
    "sample": ("generate text from a checkpoint", _add_sample),
    "eval": ("evaluate a model: validation loss, HellaSwag, LAMBADA, any lm-evaluation-harness task", _add_eval),
    "report": ("print a run's evaluation history, status and environment", _add_report),
    "runs": ("list training runs and whether they are running, finished or stopped", _add_runs),
    "plot": ("plot loss, learning rate, HellaSwag and LAMBADA of runs against tokens", _add_plot),
    "bench": ("measure training tokens/s and MFU", _add_bench),
    "convert": ("import GPT-2 weights from Hugging Face transformers, or export to it", _add_convert),
    "checkpoint": ("give checkpoints of an older gpt2lab their checksums", _add_checkpoint),
    "config": ("show config options", _add_config),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``gpt2lab`` parser. Adding a command's options imports its library (their defaults are its functions'),
    so given ``command``, the one on the command line, only its options are added; every command is listed by
    name and summary in ``gpt2lab --help``."""
    from . import __version__

    parser = _Parser(prog="gpt2lab",
                     description="Pretrain GPT-2-class language models from scratch: prepare, train, eval, sample.")
    parser.add_argument("--version", action="version", version=f"gpt2lab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_options) in PARSERS.items():
        if command in (None, name):
            add_options(sub.add_parser(name, help=summary))
        else:
            sub.add_parser(name, help=summary)
    return parser


def cmd_prepare(args) -> None:
    from .data.prepare import prepare

    _call(prepare, args, inputs=args.inputs or None, hub=_hub_source(args))  # it prints its own summary


def _hub_source(args):
    """The HubSource that --hub and its options name (None without --hub)."""
    from .data.sources import HubSource

    if args.hub is None:
        if not args.inputs:
            raise UserError("no inputs: give files or globs to tokenize, or --hub for a Hugging Face dataset")
        return None
    if args.inputs:
        raise UserError("give input files or --hub, not both")
    config = HubSource.config if args.hub_config is None and args.hub == HubSource.name else args.hub_config
    return HubSource(args.hub, config, args.hub_split, tuple(args.hub_data_files) if args.hub_data_files else None)


def cmd_train(args) -> int | None:
    from .train import train

    cfg, resume = _train_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return None
    if resume and _already_done(cfg):
        return None
    summary = train(cfg, resume=resume)
    if summary.get("stopped"):  # SIGTERM/SIGINT: checkpoint written; exit as a signalled process would
        return 128 + signal.Signals[summary["stopped"]].value
    if "val_loss" in summary and os.environ.get("RANK", "0") == "0":
        print(f"done: {summary['steps']} steps, val loss {summary['val_loss']:.4f}, run in {summary['run_dir']}")


def _already_done(cfg) -> bool:
    """Whether --resume has nothing to do (the newest checkpoint, intact, is at train.max_steps), said at once, before
    a model is built (a damaged one is left to train(), which sets it aside and resumes from an older one)."""
    from .checkpoint import DamagedCheckpoint, list_checkpoints, verify_checkpoint
    from .layout import step_of

    found = list_checkpoints(cfg.train.run_dir)
    step = step_of(found[-1].name) if found else 0
    if step < cfg.train.max_steps:
        return False
    try:
        verify_checkpoint(found[-1])
    except DamagedCheckpoint:
        return False
    if os.environ.get("RANK", "0") == "0":
        print(f"{cfg.train.run_dir} has already done {step} steps (train.max_steps={cfg.train.max_steps}): nothing "
              "to do; raise train.max_steps to train further")
    return True


def _train_config(args):
    """(config, resume) as train's options give them: ``--resume RUN_DIR`` resumes that run, with its config.yaml
    unless --config is given; in ``--resume lr=1e-4`` the override follows a plain --resume."""
    from .config import load_config
    from .layout import RUN_CONFIG

    config, overrides, resume = args.config, list(args.overrides), args.resume
    if isinstance(resume, str) and "=" in resume:
        overrides.insert(0, resume)
        resume = True
    if isinstance(resume, str):  # a run folder: its config, then the overrides
        if config is None:
            config = os.path.join(resume, RUN_CONFIG)
        overrides.append(f"train.run_dir={resume}")
    return load_config(config, overrides), bool(resume)


def cmd_sample(args) -> None:
    from .generate import generate_text

    stream = args.num_samples == 1 and sys.stdout.isatty()  # one sample to a terminal: shown as it comes
    texts = _call(generate_text, args, on_text=(lambda text: print(text, end="", flush=True)) if stream else None)
    if stream:
        print()
        return
    for i, text in enumerate(texts):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + text)


def cmd_eval(args) -> None:
    if args.task != "harness":  # --data TASK=FILE repeats for the harness's tasks only
        if len(args.data or []) > 1:
            raise UserError(f"--data: give one for eval {args.task}")
        args.data = args.data[0] if args.data else None
    summary = _call(_eval_function(args.task), args)
    if os.environ.get("RANK", "0") == "0":
        summary.pop("definitions", None)
        print(json.dumps(summary))


def _eval_function(task: str):
    """The library function behind ``gpt2lab eval TASK``."""
    if task == "harness":
        try:
            from .evals.harness import run_harness
        except ImportError as e:
            raise UserError(f"eval harness needs lm-evaluation-harness ({e}): pip install 'gpt2lab[harness]'") from None
        return run_harness
    from .evals import hellaswag, lambada, loss

    return {"loss": loss.run_loss, "hellaswag": hellaswag.run_hellaswag, "lambada": lambada.run_lambada}[task]


def cmd_tokenizer(args) -> None:
    from .tokenizer_train import format_stats, tokenizer_stats, train_tokenizer

    if args.action == "stats":
        rows = _call(tokenizer_stats, args, tokenizers=args.tokenizers or STATS_TOKENIZERS)
        print("\n".join(json.dumps(r) for r in rows) if args.json else format_stats(rows))
        return
    tok = _call(train_tokenizer, args)
    print(f"wrote tokenizer {tok.name} ({tok.n_vocab:,} tokens, sha256 {tok.sha256}) to {args.out}; use it with "
          f"--tokenizer {args.out} (prepare, sample, eval) and data.tokenizer={args.out} (train)")


def cmd_report(args) -> None:
    from .evals.report import run_report

    print(_call(run_report, args), end="")


def cmd_runs(args) -> None:
    from .runinfo import format_runs, list_runs

    rows = list_runs(args.dir)
    print("\n".join(json.dumps(r) for r in rows) if args.json else format_runs(rows, args.dir))


def cmd_plot(args) -> None:
    from .plot import plot_runs

    _call(plot_runs, args)
    print(f"wrote {args.out}")


def cmd_bench(args) -> None:
    from .bench import run_bench

    _call(run_bench, args)


def cmd_convert(args) -> None:
    from .weights import export_hf, import_hf

    if args.direction == "from-hf":
        out = import_hf(args.src, args.out, overwrite=args.overwrite)
        print(f"wrote gpt2lab checkpoint {out} (sample it with: gpt2lab sample {out})")
    else:
        out = export_hf(args.src, args.out, overwrite=args.overwrite)
        print(f"wrote transformers directory {out} (GPT2LMHeadModel.from_pretrained({str(out)!r}))")


def cmd_checkpoint(args) -> None:
    from .checkpoint import add_checksums

    for folder, what in add_checksums(args.path):
        print(f"{folder}: checksums {what}")


def cmd_quickstart(args) -> None:
    from .quickstart import quickstart

    _call(quickstart, args)


def cmd_config(args) -> None:
    from .config import config_doc, load_config

    print(config_doc() if args.doc else load_config(args.config, args.overrides).to_yaml(), end="")


COMMANDS = {
    "prepare": cmd_prepare, "tokenizer": cmd_tokenizer, "train": cmd_train, "sample": cmd_sample, "eval": cmd_eval,
    "report": cmd_report, "bench": cmd_bench, "quickstart": cmd_quickstart, "config": cmd_config,
    "convert": cmd_convert, "runs": cmd_runs, "plot": cmd_plot, "checkpoint": cmd_checkpoint,
}


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
        rc = COMMANDS[args.command](args)
    except UserError as e:
        print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)  # one line, whatever a message quotes
        return 2
    except PeerFailure as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # The process group is broken; normal interpreter exit could block or abort tearing it down.
        os._exit(1)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)  # train's Aborted: a second SIGTERM/SIGINT while stopping
        print(str(e) if signum else "interrupted", file=sys.stderr)
        return 128 + (signum or signal.SIGINT)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # full disk, quota or file-size limit: the user's
            print(f"error: no space left while writing {e.filename or 'a file'} ({e.strerror}): free space and run the "
                  "same command again (files are written atomically: nothing half-written is kept, and prepare and "
                  "train --resume continue from their last complete shard or checkpoint)", file=sys.stderr)
            return 2
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())

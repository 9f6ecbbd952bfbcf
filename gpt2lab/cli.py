"""The ``gpt2lab`` command. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import math
import os
import signal
import sys
from pathlib import Path

from .errors import PeerFailure, UserError

EPILOG_TRAIN = """\
overrides are section.key=value (or key=value when the key is unique), e.g.
  gpt2lab train --config configs/gpt2-124m.yaml optim.lr=3e-4 train.micro_batch=32
every key is listed in docs/config.md (or: gpt2lab config --doc)."""


def _number(kind, low: float, low_ok: bool = True, high: float | None = None):
    """An argparse type: ``kind`` (int or float) >= low (> low unless low_ok), <= high; a bad value is a usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value) or value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f"{'>=' if low_ok else '>'} {low}" + (f" and <= {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    return parse


POSITIVE, NON_NEGATIVE = _number(int, 1), _number(int, 0)
TOKENIZER_HELP = ("gpt2 or a tokenizer folder (gpt2lab tokenizer train); default: the model's own (a checkpoint's "
                  "copy, else gpt2); one that differs from the model's recorded tokenizer is an error")


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize a corpus (local files or a Hugging Face dataset) into token shards",
        description="Tokenize local .txt/.jsonl/.parquet files (globs allowed; .gz/.zst/.bz2/.xz ok) or a Hugging "
        "Face hub dataset (--hub, streamed) with the GPT-2 BPE (or --tokenizer) into llm.c-compatible .bin shards "
        "(val_*.bin, train_*.bin) plus manifest.json. An interrupted prepare continues when the same command is run again.",
        epilog="examples:\n"
        "  gpt2lab prepare corpus/*.jsonl.zst --out data/mycorpus\n"
        "  gpt2lab prepare --hub --out data/fineweb-edu-10B     # FineWeb-Edu sample-10BT, val = first 100M tokens",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", help="input files or globs")
    p.add_argument("--out", "-o", required=True, help="output folder for the shards")
    p.add_argument("--hub", nargs="?", const="HuggingFaceFW/fineweb-edu", default=None, metavar="NAME",
                   help="read a hub dataset by name, streaming (default HuggingFaceFW/fineweb-edu); needs datasets")
    p.add_argument("--hub-config", default=None,
                   help="hub dataset config (default sample-10BT for FineWeb-Edu, none otherwise)")
    p.add_argument("--hub-split", default="train", help="hub dataset split (default train)")
    p.add_argument("--hub-data-files", nargs="+", default=None, metavar="FILE",
                   help="data_files for a builder dataset such as --hub parquet or --hub json")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=None,
                     help="fraction of tokens for validation (default 0.1 for local files)")
    val.add_argument("--val-tokens", type=int, default=None,
                     help="the first N tokens are validation (default for --hub: one shard)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 100M)")
    p.add_argument("--doc-split", choices=["file", "line", "blank"], default="file",
                   help=".txt files: one document per file, per line, or per blank-line block (default file)")
    p.add_argument("--text-key", default="text", help="jsonl key / parquet or hub column holding the text (default text)")
    p.add_argument("--max-docs", type=int, default=None, help="stop after this many documents")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--tokenizer", default="gpt2",
                   help="gpt2 (shipped, default), a folder made by `gpt2lab tokenizer train`, or another tiktoken "
                   "encoding name (downloaded by tiktoken)")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: cores, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace shards (or an interrupted prepare) in --out")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (CPU, one GPU, or torchrun)",
        description="Train a GPT. Config = defaults < --config YAML < key=value overrides.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", help="YAML config file (see configs/)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the newest checkpoint of train.run_dir (or of RUN_DIR, using its config.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="section.key=value")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a checkpoint folder, a run folder (its newest checkpoint), "
                                   "or a Hugging Face GPT-2 folder or hub name.")
    p.add_argument("checkpoint", help="checkpoint folder (…/checkpoints/step_N), run folder, or Hugging Face GPT-2 "
                                      "folder or hub name")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--num-samples", "-n", type=POSITIVE, default=1)
    p.add_argument("--max-new-tokens", type=POSITIVE, default=100)
    p.add_argument("--temperature", type=_number(float, 0), default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=NON_NEGATIVE, default=50, help="0 = off")
    p.add_argument("--top-p", type=_number(float, 0, low_ok=False, high=1), default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (compiles first, faster after)")
    p.add_argument("--int8", action="store_true",
                   help="CPU only: int8 dynamic quantization of the Linear layers (faster, ~1%% higher perplexity)")
    p.add_argument("--tokenizer", default=None, help=TOKENIZER_HELP)


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="import GPT-2 weights from Hugging Face transformers, or export to it",
        description="from-hf SRC OUT: SRC is a directory saved by transformers' save_pretrained() (safetensors or "
        "pytorch_model.bin) or a hub name such as openai-community/gpt2 (needs gpt2lab[hf] and a connection); OUT "
        "becomes a gpt2lab checkpoint folder that `gpt2lab sample` loads. to-hf CHECKPOINT OUT: OUT becomes a "
        "directory that transformers' GPT2LMHeadModel and AutoTokenizer load offline.",
    )
    p.add_argument("direction", choices=["from-hf", "to-hf"], help="from-hf: transformers -> gpt2lab; to-hf: the reverse")
    p.add_argument("src", help="from-hf: transformers directory or hub name; to-hf: checkpoint or run folder")
    p.add_argument("out", help="output folder (written atomically; must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model: validation loss, HellaSwag, LAMBADA",
        description="Evaluate a model. MODEL is a gpt2lab checkpoint or run folder; hellaswag and lambada also take "
        "a Hugging Face GPT-2 folder. Tasks: loss (validation loss over prepared shards), hellaswag (4-way "
        "completion accuracy, build-nanogpt and lm-eval-harness definitions), lambada (last-word accuracy and "
        "perplexity). All of them also run under torchrun, sharded over the processes. hellaswag and lambada "
        "write OUT/<task>_examples.jsonl and OUT/<task>_summary.json and print the summary.",
    )
    p.add_argument("task", choices=["loss", "hellaswag", "lambada", "harness"],
                   help="what to evaluate (harness: any lm-evaluation-harness task, with gpt2lab as the model)")
    p.add_argument("checkpoint", metavar="MODEL", help="checkpoint folder, run folder, or a Hugging Face GPT-2 "
                   "folder or hub name (loss: with --data)")
    p.add_argument("--data", help="loss: shard folder (default: the run's data.dir); hellaswag: hellaswag_val.jsonl "
                   "(default: download to the cache); lambada: jsonl with 'text' or one passage per line")
    p.add_argument("--device", default="auto")
    g = p.add_argument_group("loss")
    g.add_argument("--split", default="val")
    g.add_argument("--tokens", type=POSITIVE, default=None, help="tokens to score (default: eval.val_tokens of the run)")
    g.add_argument("--batch-size", type=POSITIVE, default=8)
    g.add_argument("--seq-len", type=POSITIVE, default=None, help="default: the run's train.seq_len (a Hugging Face model's: its n_positions)")
    g = p.add_argument_group("hellaswag and lambada")
    g.add_argument("--out", help="folder for the result files (default: evals/<name of MODEL>)")
    g.add_argument("--limit", type=NON_NEGATIVE, default=0, help="score only N items, a fixed subset spread evenly over the "
                   "file (as eval.hellaswag_items / eval.lambada_items in training); 0 = all")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="autocast dtype (default auto: bfloat16 where the hardware has it; loss: the run's train.dtype)")
    g.add_argument("--batch-tokens", type=POSITIVE, default=None,
                   help="tokens per forward batch (default 4096 on CPU, 16384 on CUDA)")
    p.add_argument("--tokenizer", default=None, help=TOKENIZER_HELP)
    g.add_argument("--plain", action="store_true", help="use the plain one-example-at-a-time scorer (reference, slow)")
    g.add_argument("--style", default="both", choices=["both", "completion", "lm-eval"],
                   help="hellaswag: which definitions to compute (default both)")
    g.add_argument("--variant", default="openai", choices=["openai", "original"],
                   help="lambada: openai (detokenized, lambada_openai; downloaded when reachable) or original "
                   "(lowercased, tokenized; needs --data)")
    g = p.add_argument_group("harness (needs lm-eval: pip install 'gpt2lab[harness]')")
    g.add_argument("--tasks", default="hellaswag", help="comma-separated harness tasks, e.g. "
                   "hellaswag,lambada_openai,piqa,arc_easy,winogrande (default hellaswag)")
    g.add_argument("--include-path", help="a folder of your own task YAMLs, e.g. one that points a harness task "
                   "at a local file (see gpt2lab/evals/harness.py)")
    g.add_argument("--num-fewshot", type=NON_NEGATIVE, default=None, help="few-shot examples (default: the task's)")


def _add_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train your own byte-level BPE tokenizer, or compare tokenizers",
                       description="train: a byte-level BPE on your corpus (the Hugging Face tokenizers library; pip "
                       "install 'gpt2lab[tokenizer]'), saved as a folder that --tokenizer and data.tokenizer take. "
                       "stats: bytes per token and encode speed of tokenizers on your text.")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a byte-level BPE on a corpus",
                        description="Train a byte-level BPE (GPT-2's pre-tokenisation pattern by default, "
                        "<|endoftext|> as its last token) on txt/jsonl/parquet files (compressed too), as prepare reads "
                        "them; write OUT (a tiktoken rank file and gpt2lab-tokenizer.json).",
                        epilog="example:\n  gpt2lab tokenizer train corpus/*.jsonl --vocab-size 32768 --out tok32k\n"
                        "  gpt2lab prepare corpus/*.jsonl --tokenizer tok32k --out data/mycorpus\n"
                        "  gpt2lab train data.dir=data/mycorpus data.tokenizer=tok32k",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("inputs", nargs="+", help="input files or globs")
    t.add_argument("--vocab-size", type=POSITIVE, required=True,
                   help="tokens, <|endoftext|> included (GPT-2: 50257); at least 257")
    t.add_argument("--out", "-o", required=True,
                   help="output folder (written atomically; must not exist unless --overwrite)")
    t.add_argument("--pattern", default="gpt2", help="pre-tokenisation pattern: gpt2 (default) or cl100k")
    t.add_argument("--doc-split", choices=["file", "line", "blank"], default="file",
                   help=".txt files: one document per file, per line, or per blank-line block (default file)")
    t.add_argument("--text-key", default="text", help="jsonl key / parquet column holding the text (default text)")
    t.add_argument("--name", default=None, help="the tokenizer's name in manifests (default: the folder's name)")
    t.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    st = tsub.add_parser("stats", help="bytes per token and tokens/s of tokenizers on some text",
                         description="Encode the documents of TEXT files with each --tokenizer as prepare does "
                         "(tiktoken, one process) and report bytes per token and tokens/s.")
    st.add_argument("inputs", nargs="+", help="input files or globs (txt/jsonl/parquet)")
    st.add_argument("--tokenizer", action="append", default=None,
                    help="gpt2 or a tokenizer folder; repeat to compare (default: gpt2)")
    st.add_argument("--doc-split", choices=["file", "line", "blank"], default="file")
    st.add_argument("--text-key", default="text")
    st.add_argument("--repeats", type=POSITIVE, default=1, help="timed passes; tokens/s is the best (default 1)")
    st.add_argument("--json", action="store_true", help="print one JSON object per tokenizer instead of a table")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="print a run's evaluation history, status and environment",
                       description="Print the validation loss, HellaSwag and LAMBADA history of a training run (from "
                       "its metrics.jsonl) as a table, then its status and what it ran on (environment.json).")
    p.add_argument("run_dir", help="training run folder (train.run_dir)")
    p.add_argument("--plot", metavar="FILE", help="also plot the run to FILE (.png, .svg, ...; needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--markdown", action="store_true",
                   help="print a Markdown report: figures, best checkpoint, time, tokens/s, MFU, evaluations, "
                   "environment, config, and the plot (--plot FILE, or RUN_DIR/plot.png when matplotlib is installed)")


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list training runs and whether they are running, finished or stopped",
                       description="List the run folders in DIR (DIR itself, or up to two levels below it): model, "
                       "steps done/total, tokens, last train and val loss, best HellaSwag, status, last update. "
                       "Status comes from RUN_DIR/status.json: running while the training process is alive (on "
                       "another host: while its heartbeat, rewritten every 30 s, is younger than 3 minutes).")
    p.add_argument("dir", nargs="?", default="runs", help="folder of runs (default runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="plot loss, learning rate, HellaSwag and LAMBADA of runs against tokens",
                       description="Plot one or more runs overlaid: train and validation loss, learning rate, "
                       "HellaSwag (with GPT-2 124M's 0.2955 and GPT-3 Small's 0.337) and LAMBADA, against tokens "
                       "seen. Needs matplotlib (pip install 'gpt2lab[plot]').")
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run folders")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="image file to write (.png, .svg, .pdf)")
    p.add_argument("--log-x", action="store_true", help="logarithmic tokens axis")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="legend name of each run, in order (default: the folder names)")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure training tokens/s and MFU",
        description="Time training steps on random tokens and report tokens/s and MFU against a bf16 (and fp32) "
        "matmul peak measured in the same run on the same device.",
    )
    p.add_argument("--preset", default="tiny",
                   help="model preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny, mini, micro (default %(default)s)")
    p.add_argument("--batch", "-B", type=POSITIVE, default=16, help="micro-batch (default %(default)s)")
    p.add_argument("--seq-len", "-T", type=POSITIVE, default=256, help="sequence length (default %(default)s)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="autocast dtype; auto = bfloat16 where the hardware has it (default %(default)s)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile the model: off, on, or both side by side with their ratio (default %(default)s)")
    p.add_argument("--steps", type=POSITIVE, default=5, help="timed steps, after --warmup (default %(default)s)")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=2,
                   help="untimed steps first; compilation happens here and its time is reported (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--compare", choices=["hf"], default=None,
                   help="also time transformers' GPT2LMHeadModel of the same shape, same step and protocol, "
                   "right after each case, and print gpt2lab's ratio to it")
    p.add_argument("--recipe", default=None, metavar="CONFIG",
                   help="take the model switches and the optimizer from this training config "
                   "(e.g. configs/speedrun.yaml) instead of the GPT-2 recipe; --preset sets the size")
    p.add_argument("--loss-chunk", type=NON_NEGATIVE, default=0, metavar="ROWS",
                   help="the chunked LM head and loss, ROWS rows of logits at a time, as train.loss_chunk "
                   "(default %(default)s: the whole logits)")
    p.add_argument("--json", action="store_true", help="print one JSON object per result instead of a table")


def _add_quickstart(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="prepare the shipped tinyshakespeare, train a small model on CPU, sample",
        description="The whole loop on the corpus shipped inside gpt2lab: prepare tinyshakespeare, train the "
        "quickstart model (under 4 minutes on 2 CPU cores with tcmalloc), report validation loss, save a checkpoint, print samples.",
    )
    p.add_argument("--out", default="runs/quickstart", help="run folder (default runs/quickstart)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/quickstart.yaml, e.g. max_steps=50")


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="show config options", description="Print the config reference or a resolved config.")
    p.add_argument("--doc", action="store_true", help="print the Markdown reference of every key")
    p.add_argument("--config", "-c", help="YAML config to resolve")
    p.add_argument("overrides", nargs="*")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gpt2lab",
        description="Pretrain GPT-2-class language models from scratch: prepare, train, eval, sample.",
    )
    parser.add_argument("--version", action="version", version=f"gpt2lab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_quickstart, _add_prepare, _add_tokenizer, _add_train, _add_sample, _add_eval, _add_report,
                _add_runs, _add_plot,
                _add_bench, _add_convert, _add_config):
        add(sub)
    return parser


def cmd_prepare(args) -> None:
    from .data.prepare import prepare
    from .data.sources import HubSource

    hub = None
    if args.hub is not None:
        if args.inputs:
            raise UserError("give input files or --hub, not both")
        config = args.hub_config
        if config is None and args.hub == HubSource.name:
            config = HubSource.config
        data_files = tuple(args.hub_data_files) if args.hub_data_files else None
        hub = HubSource(args.hub, config, args.hub_split, data_files)
    elif not args.inputs:
        raise UserError("no inputs: give files or globs to tokenize, or --hub for a Hugging Face dataset")
    manifest = prepare(args.inputs or None, args.out, hub=hub, val_fraction=args.val_fraction,
                       val_tokens=args.val_tokens, shard_tokens=args.shard_tokens, doc_split=args.doc_split,
                       text_key=args.text_key, tokenizer=args.tokenizer, max_docs=args.max_docs,
                       max_tokens=args.max_tokens, workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {args.out}: {json.dumps(manifest['tokens'])}")


def cmd_train(args) -> None:
    from .layout import RUN_CONFIG
    from .config import load_config
    from .train import train

    config_path = args.config
    overrides = list(args.overrides)
    if isinstance(args.resume, str) and "=" in args.resume:  # `--resume lr=1e-4`: a flag, then an override
        overrides.insert(0, args.resume)
        args.resume = True
    if isinstance(args.resume, str):  # --resume RUN_DIR: that run's config, then overrides
        if config_path is None:
            config_path = os.path.join(args.resume, RUN_CONFIG)
        overrides.append(f"train.run_dir={args.resume}")
    cfg = load_config(config_path, overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return
    summary = train(cfg, resume=bool(args.resume))
    if summary.get("stopped"):  # SIGTERM/SIGINT: checkpoint written; exit as a signalled process would
        return 128 + signal.Signals[summary["stopped"]].value
    if "val_loss" in summary and os.environ.get("RANK", "0") == "0":
        print(f"done: {summary['steps']} steps, val loss {summary['val_loss']:.4f}, run in {summary['run_dir']}")


def cmd_sample(args) -> None:
    import torch

    from .generate import generate
    from .device import resolve_device
    from .weights import load_pretrained, model_tokenizer

    device = resolve_device(args.device)
    model = load_pretrained(args.checkpoint, device)
    tok = model_tokenizer(args.checkpoint, model.config, args.tokenizer)
    eot = tok.eot_token
    if args.int8:
        if device != "cpu":
            raise UserError("--int8 runs on CPU only: add --device cpu")
        from .quantize import quantize_int8

        model = quantize_int8(model)
    prompt = tok.encode(args.prompt) if args.prompt else [eot]
    if len(prompt) >= model.config.block_size:
        raise UserError(f"--prompt is {len(prompt)} tokens; the model's block_size is {model.config.block_size}")
    stream = args.num_samples == 1 and sys.stdout.isatty()
    pieces: list[int] = []

    def on_token(t: torch.Tensor) -> None:  # stream a single sample to the terminal as it comes
        if int(t[0]) == eot:  # the end of the sample, not text
            return
        pieces.append(int(t[0]))
        text = tok.decode(pieces)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text, end="", flush=True)
            pieces.clear()

    outs = generate(model, prompt, args.max_new_tokens, num_samples=args.num_samples, temperature=args.temperature,
                    top_k=args.top_k or None, top_p=args.top_p, seed=args.seed, stop_token=eot,
                    on_token=on_token if stream else None, compile=args.compile, vocab=tok.n_vocab)
    if stream:
        print()
        return
    for i, out in enumerate(outs):
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + tok.decode(out))


def cmd_eval(args) -> None:
    if args.task == "hellaswag":
        from .evals.hellaswag import run_hellaswag

        summary = run_hellaswag(args.checkpoint, data=args.data, out=args.out, limit=args.limit, device=args.device,
                                dtype=args.dtype, style=args.style, batch_tokens=args.batch_tokens, plain=args.plain,
                                tokenizer=args.tokenizer)
    elif args.task == "lambada":
        from .evals.lambada import run_lambada

        summary = run_lambada(args.checkpoint, variant=args.variant, data=args.data, out=args.out, limit=args.limit,
                              device=args.device, dtype=args.dtype, batch_tokens=args.batch_tokens, plain=args.plain,
                              tokenizer=args.tokenizer)
    elif args.task == "harness":
        try:
            from .evals.harness import run_harness
        except ImportError as e:
            raise UserError(f"eval harness needs lm-evaluation-harness ({e}): pip install 'gpt2lab[harness]'") from None
        summary = run_harness(args.checkpoint, [t.strip() for t in args.tasks.split(",") if t.strip()], out=args.out,
                              device=args.device, dtype=args.dtype, limit=args.limit or None,
                              num_fewshot=args.num_fewshot, include_path=args.include_path,
                              batch_tokens=args.batch_tokens, tokenizer=args.tokenizer)
    else:
        summary = _eval_loss(args)
    if os.environ.get("RANK", "0") == "0":
        summary.pop("definitions", None)
        print(json.dumps(summary))


def _eval_loss(args) -> dict:
    from .checkpoint import load_model
    from .data.prepare import check_data_tokenizer, load_manifest
    from .distributed import init_distributed, shutdown
    from .config import from_dict
    from .weights import CHECKPOINT, RUN, classify, load_pretrained, model_tokenizer
    from .evals.loss import eval_windows, evaluate_loss
    from .device import autocast_for, resolve_dtype

    own = classify(args.checkpoint) in (CHECKPOINT, RUN)
    if not own and not args.data:
        raise UserError(f"{args.checkpoint} is a Hugging Face model: pass --data (a folder of shards) to score it on")
    info = init_distributed(args.device)
    try:
        # a gpt2lab run gives the defaults (data, seq_len, tokens, dtype); a Hugging Face model, the config's
        model, cfg = load_model(args.checkpoint, device=info.device) if own else (
            load_pretrained(args.checkpoint, info.device), from_dict({}))
        data = args.data or cfg.data.dir
        tok = model_tokenizer(args.checkpoint, model.config, args.tokenizer)
        check_data_tokenizer(data, load_manifest(data), tok, f"model {args.checkpoint}'s tokenizer")
        T = args.seq_len or (cfg.train.seq_len if own else model.config.block_size)
        if T > model.config.block_size:
            raise UserError(f"--seq-len {T} is longer than the model's block_size {model.config.block_size}")
        windows = eval_windows(data, args.split, T, args.tokens or cfg.eval.val_tokens)
        dtype = cfg.train.dtype if args.dtype == "auto" else args.dtype  # by default, as the run evaluated
        autocast = autocast_for(info.device, resolve_dtype(dtype, info.device))
        loss = evaluate_loss(model, windows, args.batch_size, info.device, autocast, info)
    finally:
        shutdown(info)
    return {"task": "loss", "split": args.split, "data": str(data), "tokenizer": tok.spec, "tokens": len(windows) * T,
            "loss": loss}


def cmd_tokenizer(args) -> None:
    from .tokenizer_train import format_stats, tokenizer_stats, train_tokenizer

    if args.action == "train":
        tok = train_tokenizer(args.inputs, args.vocab_size, args.out, pattern=args.pattern, doc_split=args.doc_split,
                              text_key=args.text_key, name=args.name, overwrite=args.overwrite)
        print(f"wrote tokenizer {tok.name} ({tok.n_vocab:,} tokens, sha256 {tok.sha256}) to {args.out}; use it with "
              f"--tokenizer {args.out} (prepare, sample, eval) and data.tokenizer={args.out} (train)")
        return
    rows = tokenizer_stats(args.inputs, args.tokenizer or ["gpt2"], doc_split=args.doc_split, text_key=args.text_key,
                           repeats=args.repeats)
    print("\n".join(json.dumps(r) for r in rows) if args.json else format_stats(rows))


def cmd_report(args) -> None:
    from .layout import ENV_FILE, PLOT_FILE
    from .evals.report import eval_history, format_history
    from .runinfo import environment_lines, read_json, report_markdown, run_row

    bad: list[int] = []
    rows = eval_history(args.run_dir, bad)
    if bad:
        print(f"warning: skipped {len(bad)} damaged line(s) of {os.path.join(args.run_dir, 'metrics.jsonl')} "
              f"(line {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})", file=sys.stderr)
    plot = args.plot
    if args.markdown and plot is None and importlib.util.find_spec("matplotlib") is not None:
        plot = os.path.join(args.run_dir, PLOT_FILE)
    if plot:
        from .plot import plot_runs

        plot_runs([args.run_dir], plot)
    if args.markdown:
        print(report_markdown(args.run_dir, rows, plot), end="")
        return
    if args.json:
        print(json.dumps(rows))
        return
    print(format_history(rows))
    status = run_row(Path(args.run_dir))
    print(f"\nstatus: {status['status']}" + (f" ({status['status_detail']})" if status["status_detail"] else "")
          + f", step {status['steps']}/{status['max_steps']}")
    env = read_json(Path(args.run_dir) / ENV_FILE)
    for line in environment_lines(env) if env else ["environment: no environment.json (a run of an older gpt2lab)"]:
        print(line)
    if args.plot:
        print(f"wrote {args.plot}")


def cmd_runs(args) -> None:
    from .runinfo import format_runs, list_runs

    rows = list_runs(args.dir)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(format_runs(rows, args.dir))


def cmd_plot(args) -> None:
    from .plot import plot_runs

    plot_runs(args.runs, args.out, log_x=args.log_x, labels=args.label)
    print(f"wrote {args.out}")


def cmd_bench(args) -> None:
    from .bench import run_bench

    run_bench(preset=args.preset, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype, compile_mode=args.compile,
              steps=args.steps, warmup=args.warmup, device=args.device, as_json=args.json, compare=args.compare,
              recipe=args.recipe, loss_chunk=args.loss_chunk)


def cmd_convert(args) -> None:
    from .weights import export_hf, import_hf

    if args.direction == "from-hf":
        out = import_hf(args.src, args.out, overwrite=args.overwrite)
        print(f"wrote gpt2lab checkpoint {out} (sample it with: gpt2lab sample {out})")
    else:
        out = export_hf(args.src, args.out, overwrite=args.overwrite)
        print(f"wrote transformers directory {out} (GPT2LMHeadModel.from_pretrained({str(out)!r}))")


def cmd_quickstart(args) -> None:
    from .quickstart import quickstart

    quickstart(args.out, args.overrides)


def cmd_config(args) -> None:
    from .config import config_doc, load_config

    if args.doc:
        print(config_doc(), end="")
    else:
        print(load_config(args.config, args.overrides).to_yaml(), end="")


COMMANDS = {
    "prepare": cmd_prepare, "tokenizer": cmd_tokenizer, "train": cmd_train, "sample": cmd_sample, "eval": cmd_eval,
    "report": cmd_report, "bench": cmd_bench, "quickstart": cmd_quickstart, "config": cmd_config, "convert": cmd_convert,
    "runs": cmd_runs, "plot": cmd_plot,
}


# The commands that run a model on the CPU, and so gain from tcmalloc (gpt2lab/allocator.py).
TCMALLOC_COMMANDS = ("train", "quickstart", "bench", "eval", "sample")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in TCMALLOC_COMMANDS:  # the command line, not a caller
        from .allocator import reexec_with_tcmalloc

        reexec_with_tcmalloc(sys.argv[1:])
    args = build_parser().parse_args(argv)
    try:
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
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # full disk, quota or file-size limit: the user's to fix
            print(f"error: no space left while writing {e.filename or 'a file'} ({e.strerror}): free space and run the "
                  "same command again (files are written atomically: nothing half-written is kept, and prepare and "
                  "train --resume continue from their last complete shard or checkpoint)", file=sys.stderr)
            return 2
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())

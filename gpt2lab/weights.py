"""Any model source to a model, by one rule: what a path or a name given as a model means.

A source is, checked in this order:

- a gpt2lab checkpoint folder (``config.yaml`` and ``model.safetensors``);
- a gpt2lab run folder (``checkpoints/step_*/``): its newest checkpoint;
- a Hugging Face GPT-2 folder (``config.json``, from ``save_pretrained``);
- a Hugging Face hub name (``openai-community/gpt2``), when nothing of that name exists on disk
  and it does not look like a path: starting with ``.``, ``/`` or ``~``, or ``DIR/NAME`` where DIR is a
  folder here (``runs/quickstrat`` is a mistyped folder, not a hub model).

Training's ``train.init_from``, ``gpt2lab eval hellaswag|lambada``, ``sample`` and ``convert``
all go through :func:`classify` and :func:`load_pretrained`; so does ``eval loss``, which takes its
defaults (data folder, sequence length, dtype) from a gpt2lab run's config, and needs ``--data``
for a Hugging Face model.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch

from . import checkpoint
from .config import Config
from .errors import UserError
from .fileio import atomic_dir, check_out_dir
from .hf import is_hub_name, load_hf, save_hf
from .model import GPT, GPTConfig
from .tokenizer import COPY_DIR, Tokenizer, check_same, copy_folder, load_tokenizer

CHECKPOINT, RUN, HF_FOLDER, HUB = "checkpoint", "run", "hf", "hub"


def classify(source: str | os.PathLike) -> str:
    """What ``source`` is: CHECKPOINT, RUN, HF_FOLDER or HUB; a UserError naming it when none."""
    s = os.fspath(source)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{s}: a file, not a model: expected a gpt2lab checkpoint or run folder, "
                            "or a Hugging Face GPT-2 folder (config.json)")
        if checkpoint.is_checkpoint(p):
            return CHECKPOINT
        if checkpoint.is_run(p):
            return RUN
        if (p / "config.json").is_file():
            return HF_FOLDER
        raise UserError(f"{s}: not a model: expected a gpt2lab checkpoint or run folder, "
                        "or a Hugging Face GPT-2 folder (config.json)")
    if not is_hub_name(s) or (len(p.parts) > 1 and p.parent.is_dir()):
        close = difflib.get_close_matches(p.name, [c.name for c in p.parent.iterdir()], n=1) \
            if p.parent.is_dir() else []
        hint = f" (did you mean {p.parent / close[0]}?)" if close else ""
        raise UserError(f"{s}: no such folder{hint}; expected a checkpoint, run or Hugging Face folder")
    return HUB


def load_pretrained(source: str | os.PathLike, device: str | torch.device = "cpu", *,
                    unverified: bool | None = None) -> GPT:
    """The model of any source (see the module docstring), in eval mode on ``device``; ``unverified``: a gpt2lab
    checkpoint without a complete checksums.json too (None: as checkpoint.accept_unverified set)."""
    kind = classify(source)
    if kind in (CHECKPOINT, RUN):
        model = checkpoint.load_model(source, unverified=unverified)[0]
    else:  # no transformers needed: hf.py reads safetensors and config.json itself
        model = load_hf(source)
    return model.to(device).eval()


def recorded_tokenizer(source: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer a model source names: a checkpoint's or run's (checkpoint.checkpoint_tokenizer), a transformers
    folder's ``tokenizer/`` copy (written by ``convert to-hf``); None for a transformers folder without one."""
    kind = classify(source)
    if kind in (CHECKPOINT, RUN):
        return checkpoint.checkpoint_tokenizer(source)
    if kind == HF_FOLDER and (Path(source).expanduser() / COPY_DIR).is_dir():
        return load_tokenizer(Path(source).expanduser() / COPY_DIR)
    return None


def model_tokenizer(source: str | os.PathLike, model_config: GPTConfig | None = None,
                    override: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer of a model source: a checkpoint's own (see checkpoint.checkpoint_tokenizer), a transformers
    folder's ``tokenizer/`` copy (written by ``convert to-hf``), else GPT-2's. ``override`` (``--tokenizer``) must
    be the same tokenizer as a recorded one; a tokenizer with more tokens than ``model_config`` has is refused."""
    recorded = recorded_tokenizer(source)
    tok = load_tokenizer(override) if override else recorded or load_tokenizer("gpt2")
    if override and recorded is not None:
        check_same(recorded, tok, f"model {os.fspath(source)}", "--tokenizer")
    if model_config is not None and tok.n_vocab > model_config.vocab_size:
        raise UserError(f"{os.fspath(source)}: the model has {model_config.vocab_size:,} tokens but tokenizer "
                        f"{tok.describe()} has more: it is not this model's tokenizer; "
                        "pass the model's with --tokenizer")
    return tok


def import_hf(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert a transformers GPT-2 into a gpt2lab checkpoint folder that `gpt2lab sample` loads. The GPT-2 is a
    directory saved by transformers' save_pretrained() (safetensors or pytorch_model.bin) or a hub name such as
    openai-community/gpt2 (needs gpt2lab[hf] and a connection).

    The folder holds model.safetensors, config.yaml and checksums.json (no training state); ``sample``, ``eval``
    and ``train.init_from`` take it. ``gpt2lab convert from-hf SRC OUT`` calls it (``--help`` shows this text).

    Args:
        src: transformers directory or hub name
        out: output folder (written atomically; it must not exist yet, unless overwriting)
        overwrite: replace the output folder if it exists
    """
    check_out_dir(Path(out), overwrite)  # before a possibly long download
    if classify(src) in (CHECKPOINT, RUN):
        raise UserError(f"{src} is already a gpt2lab checkpoint or run folder; use it as it is")
    model = load_pretrained(src)
    tok = recorded_tokenizer(src)
    with atomic_dir(out, overwrite) as tmp:
        cfg = Config(model=model.config)
        if tok is not None and tok.folder is not None:
            # the checkpoint's copy is the one it uses (checkpoint.checkpoint_tokenizer)
            copy_folder(tok, tmp / COPY_DIR)
            cfg.data.tokenizer = str(Path(out).resolve() / COPY_DIR)
        checkpoint.save_model_checkpoint(tmp, model, cfg, {"format": "gpt2lab", "source": f"transformers:{src}"})
    return Path(out)


def export_hf(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, *,
              unverified: bool | None = None) -> Path:
    """Write a model (a gpt2lab checkpoint or run folder, typically) as a directory that transformers'
    GPT2LMHeadModel and AutoTokenizer load offline.

    ``gpt2lab convert to-hf CHECKPOINT OUT`` calls it (``--help`` shows this text).

    Args:
        source: checkpoint or run folder (or any model source that sample takes)
        out: output folder (written atomically; it must not exist yet, unless overwriting)
        overwrite: replace the output folder if it exists
        unverified: use a checkpoint whose checksums.json is missing or incomplete as it is (None: as
            checkpoint.accept_unverified set it)
    """
    check_out_dir(Path(out), overwrite)
    model = load_pretrained(source, unverified=unverified)
    return save_hf(model, out, overwrite=overwrite, tokenizer=recorded_tokenizer(source))

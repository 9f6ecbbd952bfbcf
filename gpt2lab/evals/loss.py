"""Validation loss over a fixed set of token windows, the same whatever the world size or batch.

The first ``max_tokens`` tokens of the split are cut into windows of ``seq_len + 1`` tokens
(stride ``seq_len``, crossing shard boundaries only by starting a new window in the next shard).
Rank r scores windows r, r + world, ...; per-token losses are summed and all-reduced, so the
result is the mean loss over exactly the same tokens for any world size or batch size.
``run_loss`` is ``gpt2lab eval loss``: a model source in, the loss over its run's validation windows out.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..config import from_dict
from ..data.loader import check_shards
from ..data.prepare import check_data_tokenizer, load_manifest
from ..data.shards import find_shards, read_shard
from ..device import autocast_for, resolve_dtype
from ..distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from ..errors import UserError
from ..fileio import write_json_atomic
from ..weights import CHECKPOINT, RUN, classify, load_pretrained, model_tokenizer
from .common import results_folder


def eval_windows(data_dir, split: str, seq_len: int, max_tokens: int, verify: bool = True) -> list[np.ndarray]:
    """Up to max_tokens // seq_len windows of seq_len + 1 tokens, in order, from the split's shards.

    ``verify``: the shards the windows come from are checked against the folder's manifest (size and
    sha256) before they are returned, as the training shards are, so a damaged validation shard is an
    error, not a changed loss. (The windows are views of memory-mapped shards: nothing is read before.)"""
    n_windows = max(1, max_tokens // seq_len)
    windows, used = [], []
    for path in find_shards(data_dir, split):
        tokens = read_shard(path)
        used.append(path)
        for start in range(0, len(tokens) - seq_len, seq_len):
            windows.append(tokens[start : start + seq_len + 1])
            if len(windows) == n_windows:
                break
        if len(windows) == n_windows:
            break
    if verify:
        check_shards(data_dir, used)
    if not windows:  # else the mean loss would be 0/0
        raise UserError(f"the {split!r} shards in {data_dir} hold fewer than seq_len + 1 = {seq_len + 1} tokens: "
                        "too few for one window; prepare more text for that split or lower train.seq_len")
    return windows


@torch.no_grad()
def score_windows(model: torch.nn.Module, windows: list[np.ndarray], batch_size: int, device: str,
                  autocast: contextlib.AbstractContextManager | None = None, dist_info: DistInfo | None = None,
                  lockstep: bool = False, token_bytes: list[int] | None = None) -> dict:
    """``loss``: the mean next-token loss over all ``windows`` (see :func:`eval_windows`), in nats per token;
    with ``token_bytes`` (:meth:`~gpt2lab.tokenizer.Tokenizer.token_bytes`) also ``bpb``, bits per byte: the
    nats of the targets that are text, over ln 2 times their UTF-8 bytes, as nanochat computes it (the
    end-of-text token is no text: neither its loss nor bytes count). Bits per byte do not depend on the
    tokenizer, so runs with different tokenizers compare.

    ``lockstep``: every rank runs the same number of forwards (a sharded FSDP model gathers its
    weights collectively in each one); ranks with fewer windows score a repeat and drop it.
    """
    info = dist_info or DistInfo(device=device)
    mine = windows[info.rank :: info.world_size]
    n_real = len(mine)
    if lockstep and windows:
        per_rank = -(-len(windows) // info.world_size)
        mine = mine + [windows[0]] * (per_rank - len(mine))
    was_training = model.training
    model.eval()
    # loss sum, token count, the loss of the targets that are text, their bytes
    total = torch.zeros(4, dtype=torch.float64, device=device)
    nbytes = torch.tensor(token_bytes or [0], dtype=torch.float64, device=device)
    ctx = autocast or contextlib.nullcontext()
    for i in range(0, len(mine), batch_size):
        batch = torch.from_numpy(np.stack(mine[i : i + batch_size]).astype(np.int64)).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        real = max(0, min(len(batch), n_real - i))  # leading rows are this rank's windows, the rest repeats
        if real < len(batch):
            y = y.clone()
            y[real:] = -1  # ignored targets: no loss
        with ctx:
            _, loss = model(x, y, reduction="none")
        loss = loss.double().view(-1)
        total[0] += loss.sum()
        total[1] += real * y.size(1)
        if token_bytes is not None:
            b = torch.where(y.reshape(-1) >= 0, nbytes[y.reshape(-1).clamp(min=0)], 0.0)
            total[2] += (loss * (b > 0)).sum()
            total[3] += b.sum()
    model.train(was_training)
    all_reduce_sum(total, info)
    result = {"loss": (total[0] / total[1]).item(), "tokens": int(total[1].item())}
    if token_bytes is not None:
        result.update(bpb=(total[2] / (math.log(2) * total[3])).item(), bytes=int(total[3].item()))
    return result


def evaluate_loss(model: torch.nn.Module, windows: list[np.ndarray], batch_size: int, device: str,
                  autocast: contextlib.AbstractContextManager | None = None, dist_info: DistInfo | None = None,
                  lockstep: bool = False) -> float:
    """Mean next-token loss over all ``windows``: :func:`score_windows`' ``loss``."""
    return score_windows(model, windows, batch_size, device, autocast, dist_info, lockstep)["loss"]


def run_loss(model_path, *, data=None, out=None, split: str = "val", tokens: int | None = None, batch_size: int = 8,
             seq_len: int | None = None, device: str = "auto", dtype: str = "auto",
             tokenizer: str | None = None) -> dict:
    """``gpt2lab eval loss``: the mean loss of the model at ``model_path`` over the first ``tokens`` tokens of
    ``split`` in the shard folder ``data``, in windows of ``seq_len``. A gpt2lab run or checkpoint gives the defaults
    (its data.dir, train.seq_len, eval.val_tokens and train.dtype, for ``dtype="auto"``); a Hugging Face model needs
    ``data`` and defaults to its block_size and the config defaults. Runs under torchrun too, sharded; rank 0 writes
    ``OUT/loss_summary.json`` (default OUT: ``evals/<name of the model folder>``).

    ``gpt2lab eval loss`` takes these arguments as its options (``--help`` shows this text).

    Args:
        model_path: checkpoint folder, run folder, or a Hugging Face GPT-2 folder or hub name (which needs data)
        data: shard folder (default: the run's data.dir)
        out: folder for the result files (default: evals/<name of MODEL>)
        split: the shards' split to score
        tokens: tokens to score (default: eval.val_tokens of the run)
        batch_size: windows per forward batch
        seq_len: window length (default: the run's train.seq_len; a Hugging Face model's n_positions)
        device: auto, cpu, cuda or cuda:N
        dtype: autocast dtype (auto: the run's train.dtype)
        tokenizer: gpt2 or a tokenizer folder (gpt2lab tokenizer train); default: the model's own (a checkpoint's
            copy, else gpt2); one that differs from the model's recorded tokenizer is an error
    """
    own = classify(model_path) in (CHECKPOINT, RUN)
    if not own and not data:
        raise UserError(f"{model_path} is a Hugging Face model: pass --data (a folder of shards) to score it on")
    out_dir = results_folder(out, model_path)
    info = init_distributed(device)
    try:
        # a gpt2lab run gives the defaults (data, seq_len, tokens, dtype); a Hugging Face model, the config's
        model, cfg = load_model(model_path, device=info.device) if own else (
            load_pretrained(model_path, info.device), from_dict({}))
        if not data and not Path(cfg.data.dir).is_dir():  # e.g. a checkpoint of convert from-hf: the default data.dir
            raise UserError(f"{model_path} names data.dir {cfg.data.dir}, which is not here: pass --data (a folder of "
                            "shards made by gpt2lab prepare) to score it on")
        data = data or cfg.data.dir
        tok = model_tokenizer(model_path, model.config, tokenizer)
        check_data_tokenizer(data, load_manifest(data), tok, f"model {model_path}'s tokenizer")
        seq_len = seq_len or (cfg.train.seq_len if own else model.config.block_size)
        if seq_len > model.config.block_size:
            raise UserError(f"--seq-len {seq_len} is longer than the model's block_size {model.config.block_size}")
        windows = eval_windows(data, split, seq_len, tokens or cfg.eval.val_tokens)
        dtype = cfg.train.dtype if dtype == "auto" else dtype  # by default, as the run evaluated
        autocast = autocast_for(info.device, resolve_dtype(dtype, info.device))
        scored = score_windows(model, windows, batch_size, info.device, autocast, info, token_bytes=tok.token_bytes())
        summary = {"task": "loss", "model": str(model_path), "split": split, "data": str(data), "tokenizer": tok.spec,
                   "tokens": len(windows) * seq_len, "loss": scored["loss"], "bpb": scored["bpb"],
                   "bytes": scored["bytes"], "dtype": dtype, "world_size": info.world_size}
        if info.is_main:
            write_json_atomic(out_dir / "loss_summary.json", summary)
            summary["out"] = str(out_dir)
        return summary
    finally:
        shutdown(info)

"""The training loop: one function, :func:`train`, that the ``gpt2lab train`` command calls.

Per optimizer step: set the learning rate, run ``accum`` micro-batches (forward under bf16
autocast where available, loss / accum, backward; under DDP or FSDP2 gradients are synchronised
on the last micro-batch only), clip the gradient norm, step AdamW. Validation loss, samples and
checkpoints come at their intervals and at the end. Only rank 0 prints, samples and writes
metrics; the parallel wrapping (DDP, FSDP2) lives in distributed.py.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt_mod
from .config import Config, validate
from .data.loader import TokenLoader
from .data.shards import find_shards
from .distributed import (
    DistInfo,
    all_reduce_mean,
    broadcast_object,
    clip_grad_norm,
    full_state_dict,
    grad_sync,
    init_distributed,
    is_comm_failure,
    is_sharded,
    load_full_state,
    load_sharded_state,
    peer_failure,
    sharded_state,
    shutdown,
    wrap_model,
)
from .errors import UserError
from .fileio import write_atomic, write_json_atomic
from .evals.common import select_items
from .evals.hellaswag import evaluate_hellaswag, load_hellaswag
from .evals.lambada import evaluate_lambada, load_lambada
from .evals.loss import eval_windows, evaluate_loss
from .generate import generate
from .metrics import MetricsWriter, truncate_metrics
from .model import GPT
from .optim import build_optimizer, lr_at
from .runtime import autocast_for, device_type as device_type_of, resolve_dtype, set_backends, synchronize
from .weights import load_pretrained
from .tokenizer import EOT_TOKEN, get_tokenizer


class TrainingDiverged(UserError):
    """Loss or gradient norm became NaN/inf."""


def grad_accum_steps(cfg: Config, world_size: int) -> int:
    per_micro = cfg.train.micro_batch * cfg.train.seq_len * world_size
    total = cfg.train.total_batch_tokens or per_micro
    if total % per_micro:
        raise UserError(
            f"config key 'train.total_batch_tokens': {total} is not a multiple of micro_batch x seq_len x processes "
            f"= {cfg.train.micro_batch} x {cfg.train.seq_len} x {world_size} = {per_micro}"
        )
    return total // per_micro


def _rng_state(device: str) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: str) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (small, trusted, from our own processes), in rank order."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _due(every: int, step: int, last: bool) -> bool:
    """Interval semantics shared by eval/sample: N > 0 every N steps and at the end, 0 only at the end, -1 never."""
    return every >= 0 and (last or (every > 0 and step % every == 0))


def train(cfg: Config, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train a model as ``cfg`` says; with ``resume``, continue from the newest checkpoint in train.run_dir.

    Returns a summary: steps, tokens, last train loss, last validation loss, run directory.
    """
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout)
    lost_peer = False
    try:
        return _train(cfg, info, resume, log if info.is_main else (lambda _msg: None))
    except Exception as e:
        if info.enabled and is_comm_failure(e):
            lost_peer = True  # the group is broken: tearing it down could block on the dead peer
            raise peer_failure(e, info, cfg.train.dist_timeout) from e
        raise
    finally:
        if not lost_peer:
            shutdown(info)


def _train(cfg: Config, info: DistInfo, resume: bool, log: Callable[[str], None]) -> dict:
    cfg = copy.deepcopy(cfg)  # init_from may change the model section; the caller's config stays as it was
    t_cfg, o_cfg, e_cfg = cfg.train, cfg.optim, cfg.eval
    device = info.device
    device_type = device_type_of(device)
    set_backends(device, t_cfg.threads, t_cfg.deterministic)
    dtype = resolve_dtype(t_cfg.dtype, device_type)
    autocast = autocast_for(device_type, dtype)
    B, T = t_cfg.micro_batch, t_cfg.seq_len
    accum = grad_accum_steps(cfg, info.world_size)
    tokens_per_step = B * T * accum * info.world_size
    run_dir = Path(t_cfg.run_dir)

    # Same seed on every rank for the weights; then a per-rank seed (train.seed + rank) for dropout.
    torch.manual_seed(t_cfg.seed)
    init_model = None
    if t_cfg.init_from:
        if resume and ckpt_mod.list_checkpoints(run_dir):  # the checkpoint has the weights; take its shape
            saved = ckpt_mod.load_checkpoint_config(ckpt_mod.list_checkpoints(run_dir)[-1]).model
            cfg.model = dataclasses.replace(saved, dropout=cfg.model.dropout)
        else:
            init_model = load_pretrained(t_cfg.init_from)
            cfg.model = dataclasses.replace(init_model.config, dropout=cfg.model.dropout)
            log(f"initialised from {t_cfg.init_from}")
        validate(cfg)
    model = GPT(cfg.model).to(device)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
        del init_model
    torch.manual_seed(t_cfg.seed + info.rank)
    train_model = wrap_model(model, info, t_cfg.parallel, dtype)  # DDP, or FSDP2 sharding `model` in place
    sharded = is_sharded(model)
    # FSDP2's mixed-precision policy already runs the training forward in bf16; eval/sampling keep autocast.
    train_autocast = contextlib.nullcontext() if sharded else autocast
    optimizer = build_optimizer(model, o_cfg, device_type)
    loader = TokenLoader(cfg.data.dir, cfg.data.train_split, B, T, rank=info.rank, world_size=info.world_size,
                         shuffle=cfg.data.shuffle, seed=t_cfg.seed, verify=cfg.data.verify)
    data_vocab = (loader.manifest or {}).get("vocab_size", 0)
    if data_vocab > cfg.model.vocab_size:
        raise UserError(f"{cfg.data.dir}: tokenized with {loader.manifest.get('tokenizer')!r} ({data_vocab} ids), more than "
                        f"model.vocab_size {cfg.model.vocab_size}; set model.vocab_size={data_vocab} or prepare with gpt2")
    has_val = e_cfg.every >= 0 and bool(_try_find(cfg.data.dir, cfg.data.val_split))
    windows = eval_windows(cfg.data.dir, cfg.data.val_split, T, e_cfg.val_tokens) if has_val else []
    if e_cfg.every >= 0 and not has_val:
        log(f"warning: no '{cfg.data.val_split}' shards in {cfg.data.dir}; validation loss is skipped")
    # downstream tasks: (name, data, evaluate, every, one-line summary); their data is loaded (downloaded)
    # before training, so a data problem stops the run at once
    tasks = []
    if e_cfg.hellaswag_every >= 0:
        tasks.append(("hellaswag", select_items(load_hellaswag(e_cfg.hellaswag_data or None), e_cfg.hellaswag_items),
                      functools.partial(evaluate_hellaswag, gather=False), e_cfg.hellaswag_every,
                      lambda m: f"hellaswag acc_norm {m['completion_acc_norm']:.4f} "
                                f"(lm-eval {m['lm_eval_acc_norm']:.4f}, {m['items']:,} items)"))
    if e_cfg.lambada_every >= 0:
        tasks.append(("lambada", select_items(load_lambada(e_cfg.lambada_data or None), e_cfg.lambada_items),
                      evaluate_lambada, e_cfg.lambada_every,
                      lambda m: f"lambada acc {m['acc']:.4f} ppl {m['ppl']:.2f} ({m['items']:,} passages)"))

    start_step = 0
    if resume:
        start_step = _restore(cfg, info, model, optimizer, loader, log)
    elif broadcast_object(bool(ckpt_mod.list_checkpoints(run_dir)), info):
        raise UserError(f"{run_dir} already holds checkpoints: add --resume to continue, or set train.run_dir to a new folder")

    metrics = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", cfg.to_yaml())
        # history past the restart point is from a run that stopped (or, fresh, from one that never
        # reached a checkpoint): drop it, or the step records would appear twice
        dropped = truncate_metrics(run_dir, start_step)
        for old in (run_dir / "evals").glob("step_*.json"):
            step_text = old.stem.partition("_")[2]
            if step_text.isdigit() and int(step_text) > start_step:
                old.unlink()
                dropped += 1
        if dropped:
            log(f"dropped {dropped} metrics record(s) and eval file(s) past step {start_step} from an earlier run")
        metrics = MetricsWriter(run_dir, tensorboard=t_cfg.tensorboard)

    if t_cfg.compile:
        train_model = torch.compile(train_model)  # evaluation and sampling use the plain model

    log(
        f"model {model.num_params():,} params | {info.world_size} process(es) on {device} | "
        f"{'fsdp' if sharded else 'ddp' if info.enabled else 'single'} | "
        f"{('bf16 fsdp mixed precision' if sharded else 'bf16 autocast') if dtype == torch.bfloat16 else 'fp32'} | "
        f"batch {tokens_per_step:,} tokens = {B} x {T} x {accum} accum x {info.world_size} | "
        f"steps {start_step}..{t_cfg.max_steps} | compile {t_cfg.compile}"
    )
    if o_cfg.warmup_steps >= t_cfg.max_steps / 2:
        log(f"warning: optim.warmup_steps={o_cfg.warmup_steps} is {o_cfg.warmup_steps / t_cfg.max_steps:.0%} of "
            f"train.max_steps={t_cfg.max_steps}; the recipe warms up for ~4% (715 of 19,073 steps)")
    summary: dict = {"run_dir": str(run_dir), "steps": start_step, "tokens": start_step * tokens_per_step}
    if start_step >= t_cfg.max_steps:
        log(f"{run_dir} has already done {start_step} steps; raise train.max_steps to train further")
        summary["checkpoint"] = str(ckpt_mod.list_checkpoints(run_dir)[-1])
        if has_val:
            summary["val_loss"] = evaluate_loss(model, windows, e_cfg.val_batch or B, device, autocast, info, sharded)
    clip = o_cfg.grad_clip if o_cfg.grad_clip > 0 else float("inf")
    timed_steps, timed_seconds = 0, 0.0
    recent_dt = None  # moving average of the step time, for the ETA
    loss_value = float("nan")
    for step in range(start_step, t_cfg.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, o_cfg, t_cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = (_checked_batch(loader, cfg.model.vocab_size, cfg.data.dir, device) for _ in range(accum))
        try:
            loss_sum, norm = train_step(train_model, model, optimizer, batches, accum, train_autocast, clip, info)
        except Exception as e:
            if t_cfg.compile and step == start_step and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise UserError(f"torch.compile failed ({type(e).__name__}: {first}); set train.compile=false") from e
            raise
        loss_value, norm_value = loss_sum.item(), norm.item()
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):  # optimizer.step() skipped the update
            raise TrainingDiverged(
                f"training diverged at step {step + 1}: loss {loss_value}, grad norm {norm_value}; "
                "lower optim.lr or raise optim.warmup_steps, then resume from the last checkpoint"
            )
        if device_type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        done = step + 1
        last = done == t_cfg.max_steps
        if step > start_step:  # the first step includes compilation and warm-up
            timed_steps, timed_seconds = timed_steps + 1, timed_seconds + dt
            recent_dt = dt if recent_dt is None else 0.9 * recent_dt + 0.1 * dt
        summary.update(steps=done, tokens=done * tokens_per_step, train_loss=loss_value)

        if done % t_cfg.log_every == 0 or last or step == start_step:
            tok_s = tokens_per_step / dt
            eta = (t_cfg.max_steps - done) * (recent_dt or dt)
            log(
                f"step {done:>6}/{t_cfg.max_steps} | loss {loss_value:.4f} | lr {lr:.2e} | norm {norm_value:.3f} | "
                f"{tok_s:,.0f} tok/s | {dt * 1000:.0f} ms/step | ETA {_fmt_time(eta)}"
            )
            if metrics:
                metrics.log("train", done, loss=loss_value, lr=lr, grad_norm=norm_value, tokens=done * tokens_per_step,
                            tok_per_s=tok_s, step_time=dt)

        full = None  # FSDP2: the full weights, gathered (on rank 0) at most once per step for all that need them
        # the checkpoint first: evaluation and samples use no RNG, and if they fail the training is kept
        if last or (t_cfg.ckpt_every and done % t_cfg.ckpt_every == 0):
            state = {
                "loader": loader.state_dict(),  # the same on every rank
                "rng": _gather(_rng_state(device), info),
                "world_size": info.world_size,
                "parallel": t_cfg.parallel,
            }
            if t_cfg.parallel == "fsdp":  # sharded model + optimizer through DCP, and a consolidated model file
                full = full_state_dict(model)
                weights, shards = full, sharded_state(model, optimizer)
            else:
                weights, shards = model, None
                state["optimizer"] = optimizer.state_dict()
            path = ckpt_mod.save_checkpoint(run_dir, done, weights, cfg, state, keep=t_cfg.keep_checkpoints,
                                            sharded_state=shards, dist_info=info)
            if info.is_main:
                summary["checkpoint"] = str(path)
                if last:
                    log(f"saved {path}")

        evals: dict = {}  # what was evaluated at this step, also written to run_dir/evals/step_N.json
        if has_val and _due(e_cfg.every, done, last):
            val = evaluate_loss(model, windows, e_cfg.val_batch or B, device, autocast, info, sharded)
            summary["val_loss"] = val
            evals.update(val_loss=val, val_tokens=len(windows) * T)
            log(f"step {done:>6} | val loss {val:.4f} ({len(windows) * T:,} tokens)")
            if metrics:
                metrics.log("val", done, val_loss=val, val_tokens=len(windows) * T)

        due = [t for t in tasks if _due(t[3], done, last)]
        sample_due = _due(e_cfg.sample_every, done, last)
        # FSDP2: one full copy, gathered on rank 0 (None elsewhere), serves the tasks and the samples
        plain = _unsharded(model, cfg, device, full) if sample_due or (due and sharded) else model
        for name, data, evaluate, _, describe in due:
            if sharded:  # FSDP2 forwards need every rank in lockstep: score the gathered copy on rank 0 instead
                result = evaluate(plain, data, device, autocast)[0] if info.is_main else None
            else:
                result = evaluate(model, data, device, autocast, info)[0]
            if result is not None:
                summary[name] = evals[name] = result
                log(f"step {done:>6} | {describe(result)}")
                if metrics:
                    metrics.log(name, done, **result)
        if evals and info.is_main:
            write_json_atomic(run_dir / "evals" / f"step_{done:08d}.json", {"step": done, **evals})

        if sample_due and info.is_main:
            texts = sample_texts(plain, cfg, device, autocast)
            for text in texts:
                log(f"sample: {text!r}")
            summary["samples"] = texts
            if metrics:
                metrics.log("sample", done, prompt=e_cfg.sample_prompt, samples=texts)
        del plain, full

    if timed_steps:
        summary["tok_per_s"] = tokens_per_step * timed_steps / timed_seconds
    if metrics:
        metrics.close()
    if info.enabled:  # rank 0 may still be sampling or (FSDP2) scoring alone: the group must outlive that
        dist.barrier()
    return summary


def train_step(train_model, model, optimizer, batches, accum: int, autocast, clip: float, info: DistInfo):
    """One optimizer step over ``accum`` micro-batches; returns (mean loss, grad norm before clipping).

    ``train_model`` is what runs forward (possibly DDP-, FSDP2- or compile-wrapped); ``model`` is
    the module whose parameters are clipped (for FSDP2 the same, sharded, module). The update is
    skipped when the loss or the gradient norm is not finite, so a diverged step never corrupts
    the weights.
    """
    optimizer.zero_grad(set_to_none=True)
    loss_sum = None
    for micro, (x, y) in enumerate(batches):
        sync = not info.enabled or micro == accum - 1  # all-reduce/reduce-scatter gradients on the last micro-batch only
        with grad_sync(train_model, sync):
            with autocast:
                _, loss = train_model(x, y)
            loss = loss / accum  # the gradient of the mean over all micro-batches
            loss.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    all_reduce_mean(loss_sum, info)
    norm = clip_grad_norm(model.parameters(), clip)
    if torch.isfinite(loss_sum) and torch.isfinite(norm):
        optimizer.step()
    return loss_sum, norm


def _checked_batch(loader: TokenLoader, vocab_size: int, data_dir: str, device: str):
    x, y = loader.next_batch()
    top = max(int(x.max()), int(y.max()))
    if top >= vocab_size:
        raise UserError(
            f"{data_dir}: token id {top} >= model.vocab_size {vocab_size}; "
            "the data was made with another tokenizer, or model.vocab_size is too small"
        )
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _try_find(data_dir: str, split: str) -> list:
    try:
        return find_shards(data_dir, split)
    except UserError:
        return []


def _restore(cfg: Config, info: DistInfo, model: GPT, optimizer, loader: TokenLoader, log) -> int:
    """Load the newest checkpoint of train.run_dir into model, optimizer, loader and RNG; return its step.

    Rank 0 picks the checkpoint and every rank loads that one, so all agree on the step. The
    number of processes may differ from the run that wrote it: the loader state does not depend
    on it, DDP optimizer state is replicated, and a sharded (dcp/) checkpoint is resharded.
    """
    run_dir = Path(cfg.train.run_dir)
    found = ckpt_mod.list_checkpoints(run_dir)
    name = broadcast_object(found[-1].name if found else None, info)
    if name is None:
        raise UserError(f"--resume: no checkpoint in {run_dir}/checkpoints; start without --resume")
    path = run_dir / "checkpoints" / name
    if not path.is_dir():
        raise UserError(f"--resume: rank {info.rank} cannot see {path}; train.run_dir must be on a filesystem all nodes share")
    saved = ckpt_mod.load_checkpoint_config(path)
    if dataclasses.replace(saved.model, dropout=cfg.model.dropout) != cfg.model:  # dropout may change; shape may not
        raise UserError(f"--resume: {path} holds a different model ({saved.model}); set the same model.* keys")
    state = ckpt_mod.load_train_state(path)
    missing = [k for k in ("step", "loader", "rng") if k not in state]
    if missing:
        raise UserError(f"--resume: {path / ckpt_mod.STATE_FILE} lacks {', '.join(missing)}; the checkpoint is "
                        "damaged or not gpt2lab's: delete that folder to resume from the one before")
    if not (path / ckpt_mod.DCP_DIR).is_dir() and "optimizer" not in state:
        raise UserError(f"--resume: {path} has neither {ckpt_mod.DCP_DIR}/ nor optimizer state; the checkpoint is incomplete")
    if (path / ckpt_mod.DCP_DIR).is_dir():
        load_sharded_state(model, optimizer, path / ckpt_mod.DCP_DIR)
    elif is_sharded(model):  # a DDP/single-process checkpoint: every rank reads it whole and keeps its shards
        load_full_state(model, optimizer, ckpt_mod.read_model_file(path / ckpt_mod.MODEL_FILE), state["optimizer"])
    else:
        ckpt_mod.load_model_weights(model, path / ckpt_mod.MODEL_FILE)
        optimizer.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])
    step, saved_ranks = int(state["step"]), len(state["rng"])
    if info.rank < saved_ranks:
        _set_rng_state(state["rng"][info.rank], info.device)
    else:  # a rank the old run did not have: a fresh stream, derived from the seed, this rank and the step
        torch.manual_seed(int(np.random.SeedSequence([cfg.train.seed, info.rank, step]).generate_state(1)[0]))
    if saved_ranks != info.world_size:
        log(f"checkpoint written by {saved_ranks} process(es), continuing on {info.world_size}")
    log(f"resumed from {path} (step {step})")
    return step


def _unsharded(model: GPT, cfg: Config, device: str, full: dict | None = None) -> GPT | None:
    """The model as one plain module on rank 0: ``model`` itself, or for FSDP2 a full copy of the
    shards (a collective unless ``full``, the state already gathered this step, is given; other
    ranks get None). Built on the meta device first, so no RNG is used."""
    if not is_sharded(model):
        return model
    if full is None:
        full = full_state_dict(model)
    if not full:
        return None
    return GPT.from_state_dict(cfg.model, full).to(device)


def sample_texts(model: GPT, cfg: Config, device: str, autocast=None) -> list[str]:
    """The samples training prints: eval.sample_count continuations of eval.sample_prompt (fixed seed)."""
    e = cfg.eval
    tok = get_tokenizer()
    prompt = tok.encode_ordinary(e.sample_prompt) or [EOT_TOKEN]
    outs = generate(
        model, prompt, e.sample_tokens, num_samples=e.sample_count, temperature=e.sample_temperature,
        top_k=e.sample_top_k or None, seed=cfg.train.seed, autocast=autocast,
    )
    return [e.sample_prompt + tok.decode(o) for o in outs]

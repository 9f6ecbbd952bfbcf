"""Training: :func:`train` (what ``gpt2lab train`` calls) and the :class:`Trainer` behind it.

A Trainer is built in three parts: **build** (``Trainer(...)``: backends, model, parallel wrapping,
optimizer, data, evaluators), **restore** (``start``: the newest checkpoint on ``--resume``, the
run folder, metrics) and **run** (the loop). Per optimizer step: set the learning rate, run
``accum`` micro-batches (forward under bf16 autocast where available, loss / accum, backward;
under DDP or FSDP2 gradients are synchronised on the last micro-batch only), clip the gradient
norm, step AdamW. Then the checkpointer and the evaluators (validation loss, HellaSwag, LAMBADA,
samples; see evals/during_training.py) run when due. Only rank 0 prints and writes metrics; the parallel
wrapping (DDP, FSDP2) lives in distributed.py, checkpoints in checkpoint.py, the run folder's file names in
layout.py.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import Checkpointer, DamagedCheckpoint, list_checkpoints, load_checkpoint_config, verify_checkpoint
from .config import Config, load_config, validate
from .data.loader import TokenLoader, seq_len_at, split_rows
from .data.prepare import check_data_tokenizer
from .device import autocast_for, device_type, emulated_bf16, resolve_dtype, set_backends, synchronize
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
    peer_failure,
    shutdown,
    wrap_model,
)
from .errors import UserError
from .evals.during_training import Evaluator, ValLoss, build_evaluators, due
from .fileio import check_folder_path
from .layout import CHECKPOINTS_DIR, LOCK_FILE, RUN_CONFIG, STATUS_FILE, step_of
from .lock import FolderBusy, FolderLock
from .metrics import MetricsWriter, drop_history_after
from .model import GPT
from .optim import build_optimizer, lr_at, set_lr
from .perf import device_name, device_peak, memory_bytes, mfu
from .progress import Clock, SpikeWatch, TrainConsole, live_wanted
from .runinfo import Heartbeat, environment, note_status, read_status, write_environment
from .sizes import check_fits
from .tokenizer import check_same, load_tokenizer
from .weights import load_pretrained, model_tokenizer


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


def train(cfg: Config, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train a model as ``cfg`` says; with ``resume``, continue from the newest checkpoint in train.run_dir.

    The run folder has one writer: rank 0 locks it for the whole run (lock.py) before anything else, and a
    second run on it is refused in one line, on every rank, before it touches the folder.
    Returns a summary: steps, tokens, last train loss, last validation loss, run directory.
    """
    lock, refusal = _lock_run_dir(cfg.train.run_dir)
    try:
        return _train(cfg, resume, log, lock, refusal)
    finally:
        if lock is not None:
            lock.release()


def nothing_to_resume(cfg: Config) -> bool:
    """Whether ``--resume`` has nothing to do (the newest checkpoint, intact, is at train.max_steps, and the run
    finished), said at once, before a model is built. A damaged one is left to train(), which sets it aside and
    resumes from an older one; so is a run that stopped after its last step (a rank killed during the final
    evaluation, torchrun restarting the group): train() does what is left and marks it finished."""
    found = list_checkpoints(cfg.train.run_dir)
    step = step_of(found[-1].name) if found else 0
    if step < cfg.train.max_steps:
        return False
    status = read_status(Path(cfg.train.run_dir) / STATUS_FILE)
    if status is not None and status["state"] != "finished":
        return False
    try:
        verify_checkpoint(found[-1])
    except DamagedCheckpoint:
        return False
    if os.environ.get("RANK", "0") == "0":
        print(f"{cfg.train.run_dir} has already done {step} steps (train.max_steps={cfg.train.max_steps}): nothing "
              "to do; raise train.max_steps to train further")
    return True


def resume_config(config: str | None, overrides: list[str], resume: bool | str) -> tuple[Config, bool]:
    """(config, resume) as ``gpt2lab train``'s options give them: ``--resume RUN_DIR`` resumes that run, with its
    config.yaml unless ``--config`` is given; in ``--resume lr=1e-4`` the override follows a plain --resume."""
    overrides = list(overrides)
    if isinstance(resume, str) and "=" in resume:
        overrides.insert(0, resume)
        resume = True
    if isinstance(resume, str):  # a run folder: its config, then the overrides
        if config is None:
            config = os.path.join(resume, RUN_CONFIG)
        overrides.append(f"train.run_dir={resume}")
    return load_config(config, overrides), bool(resume)


def _lock_run_dir(run_dir) -> tuple[FolderLock | None, str]:
    """Rank 0 (torchrun's RANK: the group is not set up yet) locks the run folder: (the lock, "") or (None, why
    not), the refusal told to every rank once the group is up."""
    if os.environ.get("RANK", "0") != "0":
        return None, ""
    run_dir = Path(run_dir)
    try:
        check_folder_path(run_dir / CHECKPOINTS_DIR, "config key 'train.run_dir'")  # a file in the way: before mkdir
        lock = FolderLock(run_dir / LOCK_FILE, "train")
        lock.acquire()
    except UserError as e:
        return None, str(e)
    except OSError as e:
        return None, (f"config key 'train.run_dir': cannot write {e.filename or run_dir} ({e.strerror or e}); "
                      "choose a folder this user can write to")
    return lock, ""


def _train(cfg: Config, resume: bool, log: Callable[[str], None], lock: FolderLock | None, refusal: str) -> dict:
    t = cfg.train
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    noting = lock is not None and restart not in ("", "0")  # status.json tells of torchrun's restarts

    def note(state: str, message: str) -> None:
        if noting:
            note_status(t.run_dir, state, message, t.max_steps)

    note("running", f"restarted by torchrun (restart {restart} of {os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')}):"
         " setting up the processes, then resuming")
    info = init_distributed(t.device, t.dist_timeout, on_failure=lambda message: note("stopped", message))
    lost_peer, trainer = False, None
    try:
        refusal = broadcast_object(refusal, info)
        if refusal:
            raise FolderBusy(refusal)
        trainer = Trainer(cfg, info, resume, log if info.is_main else (lambda _msg: None))
        trainer.start(resume)
        return trainer.run()
    except BaseException as e:
        if trainer is not None:
            trainer.close(e)  # status.json says stopped, and why; the live line and wandb are closed
        else:
            note("stopped", (str(e).splitlines() or [""])[0][:300] or type(e).__name__)
        if isinstance(e, Exception) and info.enabled and is_comm_failure(e):
            lost_peer = True  # the group is broken: tearing it down could block on the dead peer
            raise peer_failure(e, info, t.dist_timeout) from e
        raise
    finally:
        if not lost_peer:
            shutdown(info)


class Trainer:
    """One training run. ``Trainer(cfg, info, resume)`` builds it, ``start(resume)`` restores or
    begins it, ``run()`` trains to train.max_steps and returns the summary."""

    def __init__(self, cfg: Config, info: DistInfo, resume: bool = False, log: Callable[[str], None] = print):
        self.cfg = cfg = copy.deepcopy(cfg)  # init_from may change the model section; the caller's stays
        self.info, self.log, t = info, log, cfg.train
        self.device = info.device
        set_backends(self.device, t.threads, t.deterministic)
        self.dtype = resolve_dtype(t.dtype, self.device)
        self.autocast = autocast_for(self.device, self.dtype)
        self.accum = grad_accum_steps(cfg, info.world_size)
        self.tokens_per_step = t.micro_batch * t.seq_len * self.accum * info.world_size
        self.ckpt = Checkpointer(t.run_dir, info, t.ckpt_every, t.keep_checkpoints, t.parallel)
        try:
            self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        except UserError as e:
            raise UserError(f"config key 'data.tokenizer': {e}") from None
        self.model = self._build_model(resume)
        torch.manual_seed(t.seed + info.rank)  # after the weights (same on every rank): dropout differs per rank
        self.train_model = wrap_model(self.model, info, t.parallel, self.dtype)  # DDP, or FSDP2 sharding in place
        self.sharded = is_sharded(self.model)
        # FSDP2's mixed-precision policy already runs the training forward in bf16; evaluations keep autocast
        self.train_autocast = contextlib.nullcontext() if self.sharded else self.autocast
        self.optimizer = build_optimizer(self.model, cfg.optim, device_type(self.device))
        self.loader = TokenLoader(cfg.data.dir, cfg.data.train_split, t.micro_batch, t.seq_len, rank=info.rank,
                                  world_size=info.world_size, shuffle=cfg.data.shuffle, seed=t.seed,
                                  verify=cfg.data.verify,
                                  doc_start=self.tokenizer.eot_token if cfg.data.align_docs else None)
        check_data_tokenizer(cfg.data.dir, self.loader.manifest, self.tokenizer, "config key 'data.tokenizer'")
        data_vocab = (self.loader.manifest or {}).get("vocab_size", 0)
        if data_vocab > cfg.model.vocab_size:
            raise UserError(f"{cfg.data.dir}: tokenized with {self.loader.manifest.get('tokenizer')!r} ({data_vocab} "
                            f"ids), more than model.vocab_size {cfg.model.vocab_size}; set "
                            f"model.vocab_size={data_vocab} (or 0: the tokenizer's) or prepare with gpt2")
        if self.tokenizer.n_vocab > cfg.model.vocab_size:  # shards of other ids without a manifest can still train
            log(f"warning: tokenizer {self.tokenizer.describe()} has more tokens than model.vocab_size "
                f"{cfg.model.vocab_size}: samples and HellaSwag/LAMBADA need its ids; set model.vocab_size=0 (the "
                "tokenizer's) or data.tokenizer to the data's tokenizer")
        self.evaluators: list[Evaluator] = build_evaluators(cfg, self.device, self.autocast, info, self.sharded, log,
                                                            self.tokenizer)
        self.metrics: MetricsWriter | None = None
        self.heartbeat: Heartbeat | None = None
        self.start_step, self.skips_in_row, self.skipped = 0, 0, 0
        self.spikes = SpikeWatch(t.loss_spike, t.loss_spike_window)

    def _build_model(self, resume: bool) -> GPT:
        """The model, initialised from train.seed (the same on every rank) or from train.init_from."""
        cfg, t = self.cfg, self.cfg.train
        torch.manual_seed(t.seed)
        init = None
        if t.init_from:
            if resume and self.ckpt.checkpoints():  # the run's own checkpoint has the weights: take its shape
                shape = load_checkpoint_config(self.ckpt.resume_point(self.log)).model
            else:
                try:
                    init = load_pretrained(t.init_from)
                    check_same(model_tokenizer(t.init_from, init.config), self.tokenizer,
                               f"train.init_from {t.init_from}", "data.tokenizer")
                except UserError as e:
                    raise UserError(f"config key 'train.init_from': {e}") from None
                shape = init.config
                self.log(f"initialised from {t.init_from}")
            cfg.model = dataclasses.replace(shape, dropout=cfg.model.dropout)
            validate(cfg)
        check_fits(cfg.model, self.device, f"train.init_from {t.init_from}" if t.init_from else "config keys model.*",
                   optimizer=cfg.optim.optimizer, micro_batch=t.micro_batch, seq_len=t.seq_len,
                   loss_chunk=t.loss_chunk, shards=self.info.world_size if t.parallel == "fsdp" else 1)
        model = GPT(cfg.model).to(self.device)
        if init is not None:
            model.load_state_dict(init.state_dict())
        return model

    def start(self, resume: bool) -> None:
        """Restore the newest checkpoint (``resume``) or check the run is new; open the run folder."""
        cfg, t, info = self.cfg, self.cfg.train, self.info
        if resume and self.ckpt.checkpoints():
            self.start_step = self.ckpt.restore(cfg, self.model, self.optimizer, self.loader, self.log)
        elif resume:  # torchrun's restarts repeat the first command line: --resume before any checkpoint
            self.ckpt.check_none_damaged()
            self.log(f"--resume: no checkpoint in {Path(t.run_dir) / CHECKPOINTS_DIR} yet: starting from step 0")
        elif self.ckpt.checkpoints():
            raise UserError(f"{t.run_dir} already holds checkpoints: add --resume to continue, or set "
                            "train.run_dir to a new folder")
        self.ckpt.start(cfg)
        if info.is_main:
            dropped = drop_history_after(t.run_dir, self.start_step)
            if dropped:
                self.log(f"dropped {dropped} metrics record(s) and eval file(s) past step {self.start_step} "
                         "from an earlier run")
            self._open_record()
        if t.compile:
            self.train_model = torch.compile(self.train_model)  # evaluation and sampling use the plain model
        precision = ("bf16 fsdp mixed precision" if self.sharded else "bf16 autocast") \
            if self.dtype == torch.bfloat16 else "fp32"
        self.log(
            f"model {self.model.num_params():,} params | {info.world_size} process(es) on {self.device} | "
            f"{'fsdp' if self.sharded else 'ddp' if info.enabled else 'single'} | {precision} | "
            f"batch {self.tokens_per_step:,} tokens = {t.micro_batch} x {t.seq_len} x {self.accum} accum x "
            f"{info.world_size} | steps {self.start_step}..{t.max_steps} | compile {t.compile}"
        )
        for note in cfg.notes:  # what loading decided: a warm-up scaled to the run, the data's tokenizer
            self.log(note)
        if emulated_bf16(self.dtype, self.device):
            self.log("warning: train.dtype=bfloat16 on a CPU without bf16 instructions (AVX-512 BF16 or AMX) is "
                     "emulated, about 100x slower than fp32: set train.dtype=auto or float32")
        o = cfg.optim
        if o.warmup_steps >= t.max_steps / 2:
            self.log(f"warning: optim.warmup_steps={o.warmup_steps:,} is {o.warmup_steps / t.max_steps:.0%} of "
                     f"train.max_steps={t.max_steps:,}: most of the run is warm-up")

    def _open_record(self) -> None:
        """Rank 0: the metrics stream with its sinks (file, TensorBoard, wandb, the status line),
        environment.json and the status.json heartbeat (see runinfo.py)."""
        cfg, t = self.cfg, self.cfg.train
        console = TrainConsole(self.log, live_wanted(t.progress, self.log), t.max_steps, self.start_step)
        self.log = console.write  # log lines go above the live status line
        wandb = dict(project=t.wandb_project, name=t.wandb_name or Path(t.run_dir).resolve().name, mode=t.wandb_mode,
                     config=cfg.to_dict()) if t.wandb_project else None
        self.metrics = MetricsWriter(t.run_dir, tensorboard=t.tensorboard, wandb=wandb, console=console)
        self.peak, source = device_peak(self.device, self.dtype, t.peak_tflops)
        self.flops_per_token = self.model.flops_per_token(t.seq_len)
        write_environment(t.run_dir, environment(cfg, self.info.world_size, self.device, device_name(self.device),
                                                 str(self.dtype).replace("torch.", ""), self.peak, source,
                                                 self.start_step))
        self.log(f"MFU against {source} per device")
        self.heartbeat = Heartbeat(t.run_dir, t.max_steps)
        self.heartbeat.start(self.start_step)

    def close(self, error: BaseException | None = None, stopped: str = "") -> None:
        """Rank 0: close the metrics sinks and mark the run finished, or stopped (by a signal: ``stopped``
        says how) or with ``error``'s message."""
        if self.metrics:
            self.metrics.close(failed=error is not None)
            self.metrics = None
        if self.heartbeat:
            message = stopped if error is None else (str(error).splitlines() or [""])[0][:300] or type(error).__name__
            self.heartbeat.stop("stopped" if error is not None or stopped else "finished", message)
            self.heartbeat = None

    def run(self) -> dict:
        """The loop: one optimizer step, its progress line, then checkpoint and evaluations when due."""
        t, start = self.cfg.train, self.start_step
        summary: dict = {"run_dir": str(Path(t.run_dir)), "steps": start, "tokens": start * self.tokens_per_step}
        if start >= t.max_steps:
            self._already_done(summary)
        self.clock = clock = Clock(start, t.max_steps)
        with StopSignals(self.log) as stop:
            for step in range(start, t.max_steps):
                t0 = time.perf_counter()
                lr = lr_at(step, self.cfg.optim, t.max_steps)
                loss, norm = self.step(step, lr)
                synchronize(self.device)
                dt = time.perf_counter() - t0
                done = step + 1
                last = done == t.max_steps
                stopping = stop.requested(self.info) and not last  # a signal during the step lets it finish
                clock.add(step, dt)  # the first step includes compilation and warm-up: not in the rates
                summary.update(steps=done, tokens=done * self.tokens_per_step, train_loss=loss)
                if done % t.log_every == 0 or last or step == start or stopping:
                    self._log_step(done, loss, lr, norm, dt, clock.eta(done, dt))
                self._watch(done, loss)
                if stopping:
                    self._stop(done, stop.name, summary)
                    break
                self._after_step(done, last, summary)
        if clock.timed_steps:
            summary["tok_per_s"] = self.tokens_per_step * clock.timed_steps / clock.timed_seconds
        if self.skipped:
            summary["skipped_steps"] = self.skipped
        stopped = f"stopped by {summary['stopped']} after step {summary['steps']}" if "stopped" in summary else ""
        self.close(stopped=stopped)
        if self.info.enabled:  # rank 0 may still be sampling or (FSDP2) scoring alone: the group must outlive that
            dist.barrier()
        return summary

    def step(self, step: int, lr: float) -> tuple[float, float]:
        """One optimizer step at learning rate ``lr``; returns (loss, grad norm), refusing NaN/inf."""
        cfg = self.cfg
        set_lr(self.optimizer, lr, cfg.optim)  # each group's own peak, scaled by the schedule
        t = cfg.train  # a sequence-length warm-up cuts the rows shorter: the same tokens
        length = seq_len_at(step, t.seq_len, t.seq_len_warmup_steps, t.seq_len_warmup_min)
        batches = (split_rows(*_checked_batch(self.loader, cfg.model.vocab_size, cfg.data.dir, self.device), length)
                   for _ in range(self.accum))
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        try:
            loss, norm = train_step(self.train_model, self.model, self.optimizer, batches, accum=self.accum,
                                    autocast=self.train_autocast, clip=clip, info=self.info,
                                    loss_chunk=cfg.train.loss_chunk)
        except Exception as e:
            if cfg.train.compile and step == self.start_step and type(e).__module__.startswith(
                    ("torch._dynamo", "torch._inductor")):
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise UserError(f"torch.compile failed ({type(e).__name__}: {first}); set train.compile=false") from e
            raise
        loss_value, norm_value = loss.item(), norm.item()
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            self.skips_in_row = 0
            return loss_value, norm_value
        # optimizer.step() skipped the update
        self.skips_in_row += 1
        if self.skips_in_row > cfg.train.skip_nonfinite:
            in_row = f" ({self.skips_in_row} non-finite steps in a row)" if cfg.train.skip_nonfinite else ""
            raise TrainingDiverged(
                f"training diverged at step {step + 1}: loss {loss_value}, grad norm {norm_value}{in_row}; "
                "lower optim.lr or raise optim.warmup_steps, then resume from the last checkpoint"
            )
        self.skipped += 1
        self._event(step + 1, "nonfinite_skip", f"loss {loss_value}, grad norm {norm_value}: step skipped, no update "
                    f"({self.skips_in_row} in a row, {self.skipped} in all)", loss=loss_value, grad_norm=norm_value,
                    in_row=self.skips_in_row, skipped=self.skipped)
        return loss_value, norm_value

    def _event(self, done: int, event: str, text: str, **values) -> None:
        """Something to notice (a loss spike, a skipped step): a log line and a metrics record of kind "event"."""
        self.log(f"step {done:>6} | {event.replace('_', ' ')}: {text}")
        if self.metrics:
            self.metrics.log("event", done, event=event, **values)

    def _watch(self, done: int, loss: float) -> None:
        """After each step: the loss-spike check and the heartbeat's step."""
        mean = self.spikes.check(loss)
        if mean is not None:
            self._event(done, "loss_spike", f"loss {loss:.4f} is {loss / mean:.2f}x the mean {mean:.4f} of the last "
                        f"{self.spikes.window} steps", loss=loss, mean=mean, factor=loss / mean)
        if self.heartbeat:
            self.heartbeat.update(done)

    def _log_step(self, done: int, loss: float, lr: float, norm: float, dt: float, eta: float) -> None:
        if self.metrics:  # the console (status line), metrics.jsonl, TensorBoard and wandb: one record
            tok_s = self.tokens_per_step / dt
            muon = [g["lr"] for g in self.optimizer.param_groups if g.get("kind") == "muon"]
            self.metrics.log("train", done, loss=loss, lr=lr, **({"lr_muon": muon[0]} if muon else {}), grad_norm=norm,
                             tokens=done * self.tokens_per_step,
                             tok_per_s=tok_s, step_time=dt,
                             mfu=mfu(self.flops_per_token, tok_s, self.peak * self.info.world_size),
                             **memory_bytes(self.device), elapsed_s=self.clock.elapsed, eta_s=eta)

    def _stop(self, done: int, signame: str, summary: dict) -> None:
        """After SIGTERM/SIGINT: checkpoint this step (all ranks) unless it was just saved, and say so."""
        t0 = time.perf_counter()
        if self.ckpt.saved_step != done:
            self.ckpt.save(done, self.model, self.optimizer, self.loader, self.cfg)
        summary.update(stopped=signame, checkpoint=str(self.ckpt.last_saved))
        self.log(f"stopped by {signame} after step {done}: checkpoint {self.ckpt.last_saved} written in "
                 f"{time.perf_counter() - t0:.1f} s; continue with --resume")

    def _after_step(self, done: int, last: bool, summary: dict) -> None:
        """The checkpoint first (evaluations use no RNG, and if they fail the training is kept), then
        the evaluations due, sharing one full copy of the weights under FSDP2."""
        full = None
        if self.ckpt.due(done, last):
            full = self.ckpt.save(done, self.model, self.optimizer, self.loader, self.cfg)
            if self.info.is_main:
                summary["checkpoint"] = str(self.ckpt.last_saved)
                if last:
                    self.log(f"saved {self.ckpt.last_saved}")
        due_now = [ev for ev in self.evaluators if due(ev.every, done, last)]
        plain = self._full_model(full) if any(ev.needs_full for ev in due_now) else None
        record: dict = {}
        for ev in due_now:
            result = ev.run(self.model, plain)
            if result is None:  # a rank that took no part
                continue
            for line in ev.lines(result):
                self.log(line if ev.kind == "sample" else f"step {done:>6} | {line}")
            summary.update(ev.summary(result))
            record.update(ev.record(result))
            if self.metrics:
                self.metrics.log(ev.kind, done, **result)
        if record and self.metrics:
            self.metrics.record_evals(done, record)

    def _full_model(self, full: dict | None) -> GPT | None:
        """The model as one plain module on rank 0: the model itself, or under FSDP2 a full copy
        of the shards (a collective unless ``full``, the state gathered at this step's checkpoint,
        is given; other ranks get None), built on the meta device, so no RNG is used."""
        if not self.sharded:
            return self.model
        if full is None:
            full = full_state_dict(self.model)
        return GPT.from_state_dict(self.cfg.model, full).to(self.device) if full else None

    def _already_done(self, summary: dict) -> None:
        t = self.cfg.train
        self.log(f"{t.run_dir} has already done {self.start_step} steps; raise train.max_steps to train further")
        summary["checkpoint"] = str(self.ckpt.checkpoints()[-1])
        for ev in self.evaluators:
            if isinstance(ev, ValLoss):
                summary.update(ev.summary(ev.run(self.model, None)))


class StopSignals:
    """SIGTERM (what Slurm, Kubernetes and spot instances send before killing) and SIGINT (Ctrl-C)
    while training: the first lets the current step finish, then the loop writes a checkpoint and
    stops; a second aborts at once (checkpoints are written atomically: the previous one stays).

    ``requested(info)`` is a collective under torchrun, so every rank stops after the same step
    even when only some got the signal. Handlers are installed only from the main thread.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, log: Callable[[str], None] = print):
        self.log, self.signum, self._old = log, 0, {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum:  # the second: stop now
            self.__exit__()
            raise Aborted(signum)
        self.signum = signum
        self.log(f"{self.name} received: finishing this step, then writing a checkpoint "
                 f"(send {self.name} again to stop at once)")

    def requested(self, info: DistInfo) -> bool:
        if not info.enabled:
            return bool(self.signum)
        flag = torch.tensor([self.signum], device=info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not self.signum:
            self.signum = int(flag.item())  # another rank's signal
        return bool(flag.item())


class Aborted(KeyboardInterrupt):
    """A second SIGTERM/SIGINT while stopping: the run ends at once."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return (f"aborted by a second {signal.Signals(self.signum).name}; the checkpoint being written (if any) "
                "is discarded, the previous one is intact")


def train_step(train_model, model, optimizer, batches, *, accum: int, autocast, clip: float, info: DistInfo,
               loss_chunk: int = 0):
    """One optimizer step over ``accum`` micro-batches; returns (mean loss, grad norm before clipping).

    ``train_model`` is what runs forward (possibly DDP-, FSDP2- or compile-wrapped); ``model`` is
    the module whose parameters are clipped (for FSDP2 the same, sharded, module). ``loss_chunk`` > 0
    computes the loss ``loss_chunk`` rows of logits at a time (``GPT.forward``). The update is
    skipped when the loss or the gradient norm is not finite, so a diverged step never corrupts
    the weights.
    """
    optimizer.zero_grad(set_to_none=True)
    loss_sum = None
    for micro, (x, y) in enumerate(batches):
        # all-reduce/reduce-scatter gradients on the last micro-batch only
        sync = not info.enabled or micro == accum - 1
        with grad_sync(train_model, sync):
            with autocast:
                _, loss = train_model(x, y, loss_chunk=loss_chunk, return_logits=False)
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

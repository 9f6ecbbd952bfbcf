"""Checkpoints: written atomically, verified by their checksums, loaded without unpickling code.

This module is the only one that writes checkpoints (tests/test_imports.py checks); the names of
their files, and of everything else in a run folder, are in layout.py. :class:`Checkpointer` is
what the training loop asks "save now?" and what restores all training state (model, optimizer,
data position, RNG) on resume.

A checkpoint is a folder ``RUN_DIR/checkpoints/step_00001000/`` holding

- ``model.safetensors``: the weights (the tied LM head is stored once, as the token embedding);
- ``config.yaml``: the resolved config the run used;
- ``tokenizer/``: a copy of the run's tokenizer folder (``data.tokenizer``; none for GPT-2's, which
  ships with gpt2lab), so that the checkpoint samples and evaluates with it wherever it is moved;
- ``train_state.pt``: optimizer state, step, data-loader position and RNG states, read back
  with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers;
- ``checksums.json``: the sha256 of every other file of the folder, written last; checked on every
  load, so a damaged file is refused (and skipped on ``--resume``) instead of used silently. A
  checkpoint whose checksums.json is missing, empty or does not list every file is refused in one
  line (an UnverifiedCheckpoint: not moved aside), naming ``gpt2lab checkpoint checksums DIR``
  (:func:`add_checksums`), which gives a checkpoint of an older gpt2lab its checksums; a command's
  ``--unverified`` uses it as it is;
- ``dcp/`` (FSDP runs, ``train.parallel=fsdp``): model and optimizer state written shard by shard
  by every process with ``torch.distributed.checkpoint``, which reshards on load, so a run can
  resume on another number of processes. ``model.safetensors`` is then a consolidated copy for
  sampling and export, and ``train_state.pt`` holds no optimizer state.

The folder is written under a temporary name and renamed into place, so a checkpoint that
exists is complete: a run killed mid-write leaves only a ``.tmp-*`` folder that is ignored
and cleaned up by the next save. A save that fails (a full disk) removes its temporary folder
and leaves the previous checkpoint as it was. A checkpoint found damaged on ``--resume`` is moved
aside to ``checkpoints/damaged-step_N`` and the newest intact one is used.

Readers (``sample``, ``eval``, ``convert``) take no lock: a run folder given to them means its newest
checkpoint, and when the run's retention removes it while they read, they read the newest again
(:func:`read_newest`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import Config, from_dict
from .device import device_type
from .distributed import (
    DistInfo,
    broadcast_object,
    full_state_dict,
    gather_objects,
    is_sharded,
    load_full_state,
    load_sharded_state,
    sharded_state,
)
from .errors import UserError, brief
from .fileio import check_folder_path, file_mode, file_sha256, fsync_path, replace_dir, write_atomic, write_json_atomic
from .layout import (
    CHECKPOINTS_DIR,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    DAMAGED_PREFIX,
    DCP_DIR,
    MODEL_FILE,
    RUN_CONFIG,
    STATE_FILE,
    checkpoint_name,
    step_of,
)
from .model import GPT
from .optim import group_settings, restore_group_settings
from .sizes import check_fits
from .tokenizer import COPY_DIR, Tokenizer, copy_folder, load_tokenizer

T = TypeVar("T")
TIED = "lm_head.weight"  # same tensor as transformer.wte.weight (unless model.tie_head is false)


class DamagedCheckpoint(UserError):
    """A checkpoint's files differ from its checksums, or one is missing."""


class UnverifiedCheckpoint(UserError):
    """A checkpoint without a complete checksums.json: missing, empty, or not listing every file."""


CHECKSUMS_COMMAND = "gpt2lab checkpoint checksums"  # what gives a checkpoint of an older gpt2lab its checksums


def save_model_file(model: GPT | dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``model`` is a GPT or its state dict (full tensors)."""
    state = _untied(model if isinstance(model, dict) else model.state_dict())
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata=metadata or {})
    os.chmod(path, file_mode())  # safetensors writes 0600; as readable as the checkpoint's other files


def _untied(state: dict) -> dict:
    """``state`` without the LM head when it is the token embedding (GPT-2's tied head: saved once);
    an untied head (``model.tie_head=false``) stays. Equal values count as tied: reading fills them in."""
    head, wte = state.get(TIED), state.get("transformer.wte.weight")
    if head is not None and wte is not None and (head is wte or torch.equal(head, wte)):
        return {k: v for k, v in state.items() if k != TIED}
    return state


def read_model_file(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a model file, with the tied LM head filled in."""
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: cannot read model weights ({e}); the file is damaged or not a gpt2lab "
                        "checkpoint") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{path}: the weights hold NaN or Inf values ({name}); this checkpoint is unusable: "
                            "use an earlier one")
    if "transformer.wte.weight" in tensors:
        tensors.setdefault(TIED, tensors["transformer.wte.weight"])
    return tensors


def load_model_weights(model: GPT, path: Path) -> None:
    tensors = read_model_file(path, str(model.transformer.wte.weight.device))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatch
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{path}: weights do not fit the model config ({first})") from None
    missing = [k for k in missing if k != TIED]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: GPT | dict,
    cfg: Config,
    train_state: dict,
    *,
    keep: int = 0,
    sharded_state: dict | None = None,
    dist_info=None,
) -> Path | None:
    """Write checkpoint ``step`` (the number of optimizer steps done) and prune old ones; return its folder.

    ``model`` is the model or its full state dict. In a multi-process run every rank calls this
    (``dist_info``); rank 0 writes the files, and with ``sharded_state`` each rank also writes
    its shards into ``dcp/`` of the same folder, which must then be on a filesystem all
    processes share. Other ranks get ``None``.
    """
    main = dist_info is None or dist_info.is_main
    together = dist_info is not None and dist_info.enabled
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    tmp = ckpt_root / f".tmp-{checkpoint_name(step)}"
    failed = None  # what went wrong on rank 0, told to every rank so that all stop together
    try:
        if main:
            _empty_folder(tmp)
        if together:
            dist.barrier()  # the temporary folder exists before anyone writes into it
        if sharded_state is not None:
            _save_shards(sharded_state, tmp / DCP_DIR)
        if main:
            failed = _write_files(tmp, step, model, cfg, train_state)
            if failed is None:
                _put_in_place(tmp, Path(run_dir), step, keep)
    except BaseException:  # interrupted (a second signal) or failed elsewhere: never leave a partial folder
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if together:  # nobody goes on (or resumes) before the checkpoint is complete
        failed = broadcast_object(failed, dist_info)
    if failed:
        raise UserError(failed)
    return ckpt_root / checkpoint_name(step) if main else None


def _empty_folder(folder: Path) -> None:
    """``folder`` created empty (what a save killed half way left there is removed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()


def _save_shards(state: dict, folder: Path) -> None:
    """Every process writes its shards of ``state`` into ``folder`` with torch.distributed.checkpoint (a collective
    when several processes run; the files are fsynced)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # one process: DCP warns that it saves without a process group, as meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())


def _write_files(tmp: Path, step: int, model: GPT | dict, cfg: Config, train_state: dict) -> str | None:
    """Rank 0: a checkpoint's files into ``tmp``, fsynced, checksums last (a folder with checksums has all its
    files). None when written, else what failed (the folder is then removed)."""
    try:
        save_model_file(model, tmp / MODEL_FILE, {"format": "gpt2lab", "step": str(step)})
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml())
        torch.save({**train_state, "step": step}, tmp / STATE_FILE)
        copy_folder(load_tokenizer(cfg.data.tokenizer), tmp / COPY_DIR)
        for path in [tmp / MODEL_FILE, tmp / CONFIG_FILE, tmp / STATE_FILE, *sorted((tmp / COPY_DIR).glob("*"))]:
            fsync_path(path)
        write_checksums(tmp)
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save reports a full disk as RuntimeError
        return _save_failure(tmp, e, model, train_state)
    return None


def _put_in_place(tmp: Path, run_dir: Path, step: int, keep: int) -> None:
    """Rename the written ``tmp`` to checkpoint ``step`` (re-saving a step replaces it whole), then drop the
    checkpoints past the newest ``keep`` (0: none) and the temporary folders of killed saves."""
    ckpt_root = run_dir / CHECKPOINTS_DIR
    replace_dir(tmp, ckpt_root / checkpoint_name(step), aside=ckpt_root / f".old-{checkpoint_name(step)}")
    fsync_path(ckpt_root)
    if keep > 0:  # the newest is the one just written, verified: an intact one always stays
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)


def save_model_checkpoint(folder: Path, model: GPT, cfg: Config, metadata: dict[str, str]) -> None:
    """A checkpoint of weights only (no training state; what ``convert from-hf`` makes) into ``folder``, which
    the caller renames into place: the model file, the config, then the checksums of every file in the folder
    (a tokenizer copy put there first included)."""
    save_model_file(model, folder / MODEL_FILE, metadata)
    (folder / CONFIG_FILE).write_text(cfg.to_yaml())
    write_checksums(folder)


def _save_failure(tmp: Path, err: Exception, model, train_state: dict) -> str:
    """Remove the partial folder and say what failed, with the space a checkpoint needs."""
    shutil.rmtree(tmp, ignore_errors=True)
    state = _untied(model if isinstance(model, dict) else model.state_dict())
    need = sum(t.numel() * t.element_size() for t in state.values())
    need += sum(t.numel() * t.element_size() for t in _tensors(train_state))
    free = shutil.disk_usage(tmp.parent).free
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    why = "the disk is full" if free < need or getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) else first
    return (f"cannot write checkpoint {tmp.parent / tmp.name.removeprefix('.tmp-')} ({why}): a checkpoint of this run "
            f"needs about {need / 2**20:,.0f} MiB and {free / 2**20:,.0f} MiB are free; the previous checkpoint is "
            "intact: free space (or lower train.keep_checkpoints) and run again with --resume")


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def write_checksums(folder: Path) -> None:
    """Write ``folder/checksums.json``: the sha256 of every other file in it (sub-folders too)."""
    sums = {name: file_sha256(folder / name) for name in _files(folder)}
    write_json_atomic(folder / CHECKSUMS_FILE, {"sha256": sums})


def _files(folder: Path) -> list[str]:
    """The files a checkpoint's checksums.json must list: every file in it but that one, as relative paths."""
    sums = folder / CHECKSUMS_FILE
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p != sums)


_accept_unverified = False  # accept_unverified(): the command line's --unverified


def accept_unverified(accept: bool = True) -> None:
    """Let this process use checkpoints without a complete checksums.json (``--unverified``: the user named them
    as unverified), wherever verify_checkpoint is not told otherwise."""
    global _accept_unverified
    _accept_unverified = accept


def verify_checkpoint(folder: str | os.PathLike, *, unverified: bool | None = None) -> bool:
    """Check the files of a checkpoint against its ``checksums.json``; raise DamagedCheckpoint naming
    the first that differs. A checkpoint whose checksums.json is missing, empty or does not list every file
    (written before checksums existed, or edited) is an UnverifiedCheckpoint naming the command that writes
    them (:func:`add_checksums`), unless ``unverified`` (the user said to use it as it is; None: as
    :func:`accept_unverified` set, by default not): then False."""
    folder = Path(folder)
    unverified = _accept_unverified if unverified is None else unverified
    path = folder / CHECKSUMS_FILE
    if not path.exists():
        return _unverified(folder, f"has no {CHECKSUMS_FILE}", unverified)
    sums = _read_checksums(path)
    for name, digest in sums.items():
        f = folder / name
        if ".." in Path(name).parts or not f.is_file():
            raise DamagedCheckpoint(f"{f} is missing (listed in {CHECKSUMS_FILE})")
        if file_sha256(f) != digest:
            raise DamagedCheckpoint(f"{f} differs from its sha256 in {CHECKSUMS_FILE}: the file is damaged")
    unlisted = [name for name in _files(folder) if name not in sums]
    if not sums or unlisted:
        what = "lists no file" if not sums else f"does not list {unlisted[0]}"
        return _unverified(folder, f"{CHECKSUMS_FILE} {what}", unverified)
    return True


def _read_checksums(path: Path) -> dict[str, str]:
    try:
        sums = json.loads(path.read_bytes())["sha256"]
        if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise DamagedCheckpoint(f"{path} is damaged (not the list of sha256 sums gpt2lab writes)") from None
    return sums


def _unverified(folder: Path, why: str, allowed: bool) -> bool:
    if allowed:
        return False
    raise UnverifiedCheckpoint(f"{folder}: {why}, so nothing shows that its files are the ones gpt2lab wrote (a "
                               f"checkpoint of an older gpt2lab, or one that was edited); if you trust its files, "
                               f"write their checksums with `{CHECKSUMS_COMMAND} {folder}` (or use it as it is with "
                               "--unverified)")


def add_checksums(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """Give a checkpoint of an older gpt2lab (or every checkpoint of a run folder) the checksums.json that sample,
    eval, convert and train --resume check: the sha256 of every file in it. A file that checksums.json already lists
    must still match it.

    A damaged one is a DamagedCheckpoint: nothing is written. Returns (folder, "written" or "already complete") for
    each checkpoint; ``gpt2lab checkpoint checksums PATH`` prints them (``--help`` shows this text).

    Args:
        path: checkpoint folder, or run folder (all its checkpoints)
    """
    p = Path(path)
    if is_run(p):  # before is_checkpoint: a run folder holds a config.yaml too
        folders = list_checkpoints(p)
        if not folders:
            raise UserError(f"{p}: a run folder without checkpoints")
    elif is_checkpoint(p):
        folders = [p]
    else:
        raise UserError(f"{p}: not a checkpoint folder ({CONFIG_FILE} inside) or a run folder ({CHECKPOINTS_DIR}/)")
    done = []
    for folder in folders:
        if verify_checkpoint(folder, unverified=True):
            done.append((folder, "already complete"))
        else:
            write_checksums(folder)
            done.append((folder, "written"))
    return done


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if (step := step_of(p.name)) is not None and p.is_dir()]
    return [p for _, p in sorted(found)]


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint folder (of a run, or made by ``convert from-hf``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run folder (one that holds, or is to hold, checkpoints)."""
    return (Path(path) / CHECKPOINTS_DIR).is_dir()


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    p = Path(path)
    if (p / MODEL_FILE).is_file():
        return p
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint or run directory")
    found = list_checkpoints(p)
    if not found:
        damaged = sorted(q.name for q in (p / CHECKPOINTS_DIR).glob(DAMAGED_PREFIX + "step_*"))
        also = f"; --resume set aside the damaged {', '.join(damaged)}" if damaged else ""
        raise UserError(f"{p}: no checkpoint found (expected {MODEL_FILE} or checkpoints/step_*/ inside){also}")
    return found[-1]


def load_checkpoint_config(ckpt: Path) -> Config:
    path = Path(ckpt) / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the checkpoint is incomplete") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; the checkpoint is damaged") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    return from_dict(raw or {}, f" in {path}")


RECHECK_S = 0.5  # how long a reader waits before it calls a failed newest checkpoint damaged
CHASE_S = 60.0  # how long a reader chases a run whose retention removes each checkpoint before the read ends


def read_newest(path: str | os.PathLike, read: Callable[[Path], T]) -> T:
    """``read(checkpoint)`` of the checkpoint ``path`` names: the folder itself, or a run folder's newest.

    Readers take no lock: a run training beside them keeps only its newest ``keep_checkpoints``, and may remove
    the one being read. When reading a run's newest fails and it is no longer the newest (retention removed it,
    or a newer one came), the newest is read instead, for up to CHASE_S seconds (a run that saves every step
    can remove several in a row while one is read); a failure of the newest itself (a damaged checkpoint)
    is the error."""
    ckpt = resolve_checkpoint(path)
    deadline = time.monotonic() + CHASE_S
    while True:
        try:
            return read(ckpt)
        except (UserError, OSError):
            if ckpt == Path(path):  # a checkpoint folder named itself: nothing else to take
                raise
            newest = resolve_checkpoint(path)
            if newest == ckpt:  # retention may be removing it before the next one is in place: look once more
                time.sleep(RECHECK_S)
                newest = resolve_checkpoint(path)
            if newest == ckpt:
                raise
            if time.monotonic() > deadline:
                raise UserError(f"{path}: the run saved and removed its newest checkpoint faster than it could be "
                                f"read, for {CHASE_S:.0f} s; read it when the run has stopped, or keep more "
                                "checkpoints (train.keep_checkpoints)") from None
        ckpt = newest


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", *,
               unverified: bool | None = None) -> tuple[GPT, Config]:
    """Load a trained model from a checkpoint or run folder (its newest checkpoint), for sampling or evaluation;
    ``unverified``: also one without a complete checksums.json (see verify_checkpoint)."""
    def read(ckpt: Path) -> tuple[GPT, Config]:
        verify_checkpoint(ckpt, unverified=unverified)
        cfg = load_checkpoint_config(ckpt)
        check_fits(cfg.model, str(device), str(ckpt / CONFIG_FILE))
        model = GPT(cfg.model).to(device)
        load_model_weights(model, ckpt / MODEL_FILE)
        return model.eval(), cfg

    return read_newest(path, read)


def checkpoint_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A checkpoint's (or a run's newest checkpoint's) tokenizer: its own copy (``tokenizer/``), else its config's
    data.tokenizer (GPT-2's for checkpoints made before tokenizers could be chosen)."""
    def read(ckpt: Path) -> Tokenizer:
        if (ckpt / COPY_DIR).is_dir():
            return load_tokenizer(ckpt / COPY_DIR)
        return load_tokenizer(load_checkpoint_config(ckpt).data.tokenizer)

    return read_newest(path, read)


def load_train_state(ckpt: Path) -> dict:
    path = Path(ckpt) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the checkpoint is incomplete") from None
    except OSError as e:  # permissions, I/O: the file may be fine
        raise UserError(f"{path}: cannot read the training state ({e.strerror or e})") from None
    except Exception as e:  # damaged zip, or an object weights_only refuses (its message suggests unsafe loading)
        raise UserError(f"{path}: cannot read the training state ({type(e).__name__}); the file is damaged or not "
                        f"gpt2lab's: resume from another checkpoint (delete this folder) or start a new run") from None


def check_train_state(state, ckpt: Path) -> None:
    """Refuse, in one line, a training state whose fields have the wrong type or range (a damaged or
    foreign file that still unpickles), before any of it is used."""
    path = Path(ckpt) / STATE_FILE

    def bad(what: str) -> UserError:
        return UserError(f"--resume: {path}: {what}; the checkpoint is damaged or not gpt2lab's: delete "
                         f"{Path(ckpt)} to resume from the one before")

    if not isinstance(state, dict):
        raise bad(f"holds a {type(state).__name__}, not a dict")
    missing = [k for k in ("step", "loader", "rng") if k not in state]
    if missing:
        raise bad(f"lacks {', '.join(missing)}")
    step = state["step"]
    if type(step) is not int or step < 0:
        raise bad(f"step {brief(step)} is not a count of steps")
    folder_step = step_of(Path(ckpt).name)
    if folder_step is not None and folder_step != step:
        raise bad(f"step {step} differs from the folder's step {folder_step}")
    if not isinstance(state["loader"], dict):
        raise bad("the data loader state is not a dict")
    rng = state["rng"]
    n_state = torch.get_rng_state().numel()
    if not isinstance(rng, list) or not rng or not all(
            isinstance(r, dict) and _is_rng(r.get("torch"), n_state) for r in rng):
        raise bad("the RNG states are not the list of per-process states gpt2lab writes")
    for k, ok in (("world_size", lambda v: type(v) is int and v >= 1), ("parallel", lambda v: v in ("ddp", "fsdp"))):
        if k in state and not ok(state[k]):
            raise bad(f"{k} {brief(state[k])} is not valid")


def _label(v) -> str:
    """A name for a message: a short string as it is, anything else as ``brief`` shows it."""
    return v if isinstance(v, str) and len(v) <= 40 and v.isprintable() else brief(v)


def _is_rng(t, numel: int | None = None) -> bool:
    return (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1
            and (numel is None or t.numel() == numel))


def check_optimizer_state(saved, optimizer, path: Path) -> None:
    """The saved optimizer state (AdamW's, or MuonAdamW's: both in one) must have this optimizer's
    parameter groups (their kinds), sizes and shapes."""
    def bad(what: str) -> UserError:
        return UserError(f"--resume: {path}: the optimizer state {what}; the checkpoint is damaged or was written "
                         "for another model or optimizer config")

    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        raise bad("is not an optimizer state dict")
    ours = optimizer.param_groups
    if len(groups) != len(ours):
        raise bad(f"has {len(groups)} parameter group(s), this run's optimizer {len(ours)}")
    for i, (g, o) in enumerate(zip(groups, ours)):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or len(g["params"]) != len(o["params"]):
            raise bad(f"group {i} does not have this run's {len(o['params'])} parameters")
        if g.get("kind") != o.get("kind"):  # optim.optimizer=muon names its groups: muon, embed, head, scalar
            raise bad(f"group {i} is {brief(g.get('kind'))}, this run's is {brief(o.get('kind'))}")
        for key in ("lr", "weight_decay", "eps"):
            v = g.get(key, 0.0)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(f"group {i} has {key} {brief(v)}")
        for pid, param in zip(g["params"], o["params"]):
            entry = saved["state"].get(pid, {})
            if not isinstance(entry, dict):
                raise bad(f"entry {brief(pid)} is not a dict")
            for name, t in entry.items():
                if not isinstance(t, torch.Tensor):
                    raise bad(f"{_label(name)} of parameter {brief(pid)} is not a tensor")
                # the parameter's shape, or (NorMuon's second moment) its rows' or columns' statistic
                if t.dim() and (t.dim() != param.dim() or any(n not in (m, 1) for n, m in zip(t.shape, param.shape))):
                    raise bad(f"{_label(name)} of parameter {brief(pid)} has shape {tuple(t.shape)}, the model's is "
                              f"{tuple(param.shape)}")
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise bad(f"{_label(name)} of parameter {brief(pid)} holds NaN or Inf")


def _rng_state(device: str) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device_type(device) == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: str) -> None:
    torch.set_rng_state(state["torch"])
    if _is_rng(state.get("cuda")) and device_type(device) == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpointer:
    """Saves a run's training state when due and restores all of it on resume.

    ``every``: save every N steps (0: only at the end); ``keep``: the newest N are kept (0: all).
    Under FSDP2 (``parallel="fsdp"``) the model and optimizer go shard by shard into ``dcp/``
    and rank 0 writes a consolidated model file too; otherwise rank 0 writes everything.
    """

    def __init__(self, run_dir: str | os.PathLike, info: DistInfo, every: int = 0, keep: int = 0,
                 parallel: str = "ddp"):
        self.run_dir, self.info = Path(run_dir), info
        self.every, self.keep, self.parallel = every, keep, parallel
        self.last_saved: Path | None = None
        self._intact: Path | None = None  # what resume_point chose (checksums are read once)

    @property
    def saved_step(self) -> int | None:
        """The step of the checkpoint this run last wrote or resumed from."""
        return step_of(self.last_saved.name) if self.last_saved else None

    def checkpoints(self) -> list[Path]:
        """The run's complete checkpoints, oldest first, as rank 0 sees them (the same list on every rank)."""
        names = broadcast_object([p.name for p in list_checkpoints(self.run_dir)], self.info)
        return [self.run_dir / CHECKPOINTS_DIR / n for n in names]

    def due(self, step: int, last: bool) -> bool:
        return last or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, model: GPT, optimizer, loader, cfg: Config) -> dict | None:
        """Write checkpoint ``step`` (all ranks call this). Returns the full state dict when it was
        gathered for FSDP2 (on rank 0; {} elsewhere), so that evaluations of this step reuse it."""
        state = {
            "loader": loader.state_dict(),  # the same on every rank
            "rng": gather_objects(_rng_state(self.info.device), self.info),
            "world_size": self.info.world_size,
            "parallel": self.parallel,
        }
        full = None
        if self.parallel == "fsdp":  # sharded model + optimizer through DCP, and a consolidated model file
            full = full_state_dict(model)
            weights, shards = full, sharded_state(model, optimizer)
        else:
            weights, shards = model, None
            state["optimizer"] = optimizer.state_dict()
        self.last_saved = save_checkpoint(self.run_dir, step, weights, cfg, state, keep=self.keep,
                                          sharded_state=shards, dist_info=self.info)
        return full

    def start(self, cfg: Config) -> None:
        """Rank 0: the run folder with its resolved config (written anew at every start and resume)."""
        if self.info.is_main:
            # now, not at the first save
            check_folder_path(self.run_dir / CHECKPOINTS_DIR, "config key 'train.run_dir'")
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(self.run_dir / RUN_CONFIG, cfg.to_yaml())
            except OSError as e:
                raise UserError(f"config key 'train.run_dir': cannot write {e.filename or self.run_dir} "
                                f"({e.strerror or e}); choose a folder this user can write to") from None

    def check_none_damaged(self) -> None:
        """``--resume`` finding no checkpoint starts from step 0, unless damaged ones were set aside: starting over
        would then hide them, so it is refused (the same answer on every rank)."""
        root = self.run_dir / CHECKPOINTS_DIR
        damaged = broadcast_object(sorted(p.name for p in root.glob(DAMAGED_PREFIX + "step_*")), self.info)
        if damaged:
            raise UserError(f"--resume: no intact checkpoint in {root}, only damaged ones set aside "
                            f"({', '.join(damaged)}); delete them to start over from step 0")

    def resume_point(self, log) -> Path:
        """The newest checkpoint whose files match their checksums, chosen by rank 0 for all ranks
        (once: later calls return the same).

        A damaged one is renamed to ``damaged-step_N`` (kept for a look, out of the way of
        resuming and of retention), with a warning naming what failed."""
        if self._intact is not None:
            return self._intact
        chosen, failures, refused = None, [], ""
        if self.info.is_main:
            for path in reversed(list_checkpoints(self.run_dir)):
                try:
                    verify_checkpoint(path)
                except UnverifiedCheckpoint as e:  # neither damaged nor known intact: the user decides
                    refused = str(e)
                    break
                except DamagedCheckpoint as e:
                    aside = path.with_name(DAMAGED_PREFIX + path.name)
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(path, aside)
                    failures.append(f"{e} (moved {path.name} to {aside.name})")
                    continue
                chosen = path.name
                break
        chosen, failures, refused = broadcast_object((chosen, failures, refused), self.info)
        if refused:  # on every rank, so that all stop
            raise UnverifiedCheckpoint(f"--resume: {refused}")
        root = self.run_dir / CHECKPOINTS_DIR
        if chosen is None:
            if failures:
                raise UserError(f"--resume: no intact checkpoint in {root}: {'; '.join(failures)}")
            raise UserError(f"--resume: no checkpoint in {root}; start without --resume")
        for f in failures:
            log(f"warning: skipped a damaged checkpoint: {f}")
        path = self.run_dir / CHECKPOINTS_DIR / chosen
        if not path.is_dir():
            raise UserError(f"--resume: rank {self.info.rank} cannot see {path}; train.run_dir must be on a "
                            "filesystem all nodes share")
        self._intact = path
        return path

    def restore(self, cfg: Config, model: GPT, optimizer, loader, log) -> int:
        """Load the newest checkpoint into model, optimizer, loader and RNG; return its step.

        Rank 0 picks the checkpoint and every rank loads that one, so all agree on the step. The
        number of processes may differ from the run that wrote it: the loader state does not
        depend on it, DDP optimizer state is replicated, and a sharded (dcp/) checkpoint is resharded.
        """
        path = self.resume_point(log)
        saved = load_checkpoint_config(path)
        # dropout may change; the shape may not
        if dataclasses.replace(saved.model, dropout=cfg.model.dropout) != cfg.model:
            raise UserError(f"--resume: {path} holds a different model ({saved.model}); set the same model.* keys")
        state = load_train_state(path)
        check_train_state(state, path)
        dcp_dir = path / DCP_DIR
        if not dcp_dir.is_dir() and "optimizer" not in state:
            raise UserError(f"--resume: {path} has neither {DCP_DIR}/ nor optimizer state; the checkpoint is "
                            "incomplete")
        if "optimizer" in state:
            check_optimizer_state(state["optimizer"], optimizer, path / STATE_FILE)
        own = group_settings(optimizer)
        if dcp_dir.is_dir():
            load_sharded_state(model, optimizer, dcp_dir)
        elif is_sharded(model):  # a DDP/single-process checkpoint: every rank reads it whole and keeps its shards
            load_full_state(model, optimizer, read_model_file(path / MODEL_FILE), state["optimizer"])
        else:
            load_model_weights(model, path / MODEL_FILE)
            optimizer.load_state_dict(state["optimizer"])
        restore_group_settings(optimizer, own)
        loader.load_state_dict(state["loader"])
        step, saved_ranks, rank = int(state["step"]), len(state["rng"]), self.info.rank
        if rank < saved_ranks:
            _set_rng_state(state["rng"][rank], self.info.device)
        else:  # a rank the old run did not have: a fresh stream, derived from the seed, this rank and the step
            torch.manual_seed(int(np.random.SeedSequence([cfg.train.seed, rank, step]).generate_state(1)[0]))
        if saved_ranks != self.info.world_size:
            log(f"checkpoint written by {saved_ranks} process(es), continuing on {self.info.world_size}")
        log(f"resumed from {path} (step {step})")
        self.last_saved = path
        return step

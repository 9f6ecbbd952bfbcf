"""Checkpoints: written atomically, loaded without unpickling code.

A checkpoint is a folder ``RUN_DIR/checkpoints/step_00001000/`` holding

- ``model.safetensors``: the weights (the tied LM head is stored once, as the token embedding);
- ``config.yaml``: the resolved config the run used;
- ``train_state.pt``: optimizer state, step, data-loader position and RNG states, read back
  with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers;
- ``dcp/`` (FSDP runs, ``train.parallel=fsdp``): model and optimizer state written shard by shard
  by every process with ``torch.distributed.checkpoint``, which reshards on load, so a run can
  resume on another number of processes. ``model.safetensors`` is then a consolidated copy for
  sampling and export, and ``train_state.pt`` holds no optimizer state.

The folder is written under a temporary name and renamed into place, so a checkpoint that
exists is complete: a run killed mid-write leaves only a ``.tmp-*`` folder that is ignored
and cleaned up by the next save.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import Config, from_dict
from .errors import UserError
from .fileio import replace_dir
from .model import GPT

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
STATE_FILE = "train_state.pt"
DCP_DIR = "dcp"
CHECKPOINTS_DIR = "checkpoints"  # in a run folder
TIED = "lm_head.weight"  # same tensor as transformer.wte.weight
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def save_model_file(model: GPT | dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``model`` is a GPT or its state dict (full tensors)."""
    state = model if isinstance(model, dict) else model.state_dict()
    tensors = {k: v.detach().contiguous() for k, v in state.items() if k != TIED}
    save_file(tensors, str(path), metadata=metadata or {})


def read_model_file(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a model file, with the tied LM head filled in."""
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: cannot read model weights ({e}); the file is damaged or not a gpt2lab checkpoint") from None
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
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-step_{step:08d}"
    if main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    if together:
        dist.barrier()  # the temporary folder exists before anyone writes into it
    if sharded_state is not None:
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():  # one process: DCP warns that it saves without a process group, as meant
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            # a collective when several processes run; the files are fsynced
            dcp.save(sharded_state, checkpoint_id=str(tmp / DCP_DIR), no_dist=not dist.is_initialized())
    if main:
        save_model_file(model, tmp / MODEL_FILE, {"format": "gpt2lab", "step": str(step)})
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml())
        torch.save({**train_state, "step": step}, tmp / STATE_FILE)
        for name in (MODEL_FILE, CONFIG_FILE, STATE_FILE):
            _fsync(tmp / name)
        replace_dir(tmp, final, aside=ckpt_root / f".old-step_{step:08d}")  # re-saving a step replaces it whole
        _fsync(ckpt_root)
        if keep > 0:
            for old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        for stale in ckpt_root.glob(".tmp-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
    if together:
        dist.barrier()  # nobody goes on (or resumes) before the checkpoint is complete
    return final if main else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
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
        raise UserError(f"{p}: no checkpoint found (expected {MODEL_FILE} or checkpoints/step_*/ inside)")
    return found[-1]


def load_checkpoint_config(ckpt: Path) -> Config:
    path = Path(ckpt) / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the checkpoint is incomplete") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    return from_dict(raw or {}, f" in {path}")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, Config]:
    """Load a trained model from a checkpoint or run folder, for sampling or evaluation."""
    ckpt = resolve_checkpoint(path)
    cfg = load_checkpoint_config(ckpt)
    model = GPT(cfg.model).to(device)
    load_model_weights(model, ckpt / MODEL_FILE)
    model.eval()
    return model, cfg


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

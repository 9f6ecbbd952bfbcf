"""What a model needs in memory, from its config alone, checked against the device's before anything is built.

A config may ask for any size (``model.n_layer=10**9``, a Hugging Face ``config.json``, a checkpoint's
``config.yaml``); building it would allocate until the machine gives up (a MemoryError or "can't allocate"
traceback, or the OOM killer). :func:`check_fits` is called where a model is built (training, a checkpoint, a
transformers folder) and refuses one that cannot fit in one line naming its size and the memory: on a CPU the
RAM available now (``MemAvailable``, or the container's limit when lower), on a GPU the GPU's memory.

:func:`model_bytes` is a lower bound: the parameters in fp32; for training also their gradients, the optimizer's
state and one micro-batch's activations and logits. A model it refuses cannot fit; one it lets through may still
run out of memory later (the allocator's overhead, a larger attention kernel, other processes).
"""

from __future__ import annotations

import os
from pathlib import Path

from .device import device_type
from .errors import UserError
from .model import GPTConfig

FP32 = 4
# Bytes per parameter while training: weights and gradients in fp32, and the optimizer's state (AdamW: two moments;
# Muon: one momentum for its matrices, and AdamW's two for the rest: at least one).
TRAIN_BYTES = {"adamw": 4 * FP32, "muon": 3 * FP32}
# Activations kept for the backward pass, in bytes per layer, token and unit of width: about 34 in bf16 without
# recomputation (Korthikanti et al., 2022, table 2, without the attention scores); 16 is safely below it.
ACTIVATION_BYTES = 16


def parameter_count(cfg: GPTConfig) -> int:
    """Every element of the parameters ``GPT(cfg)`` would hold (a tied head once, the padded vocabulary's rows
    included), from the config alone, in arithmetic: building a model of a hostile size, even on the meta
    device, makes one Python object per layer. tests/test_sizes.py checks it against built models of every
    switch: a switch that adds parameters adds them here too."""
    c = cfg.n_embd
    norm = c if cfg.norm == "rmsnorm" or not cfg.bias else 2 * c
    bias = 1 if cfg.bias else 0
    attn = 3 * c * c + c * c + bias * 4 * c
    mlp = 8 * c * c + bias * 5 * c
    fixed = cfg.padded_vocab_size * c + norm  # token embedding, final norm
    fixed += 0 if cfg.rotary else cfg.block_size * c  # learned positions
    fixed += 0 if cfg.tie_head else cfg.padded_vocab_size * c  # a head of its own
    # value embeddings: N tables, and two mixing weights in each block served (the first N and the last N)
    fixed += cfg.value_embeds * cfg.padded_vocab_size * c + 2 * min(cfg.n_layer, 2 * cfg.value_embeds)
    fixed += cfg.n_layer // 2 if cfg.unet_skips else 0  # one weight per U-net skip
    return fixed + cfg.n_layer * (2 * norm + attn + mlp)


def model_bytes(cfg: GPTConfig, *, optimizer: str | None = None, micro_batch: int = 0, seq_len: int = 0,
                loss_chunk: int = 0, shards: int = 1) -> dict[str, int]:
    """A lower bound of the memory a model of ``cfg`` needs, by part: ``weights`` (fp32); with ``optimizer``
    (training: "adamw" or "muon") ``state`` (weights, gradients and optimizer state, over ``shards`` FSDP
    processes) and ``activations`` (one micro-batch of ``micro_batch`` x ``seq_len`` tokens, with its logits
    unless ``loss_chunk``). ``total`` is the sum of what applies."""
    params = parameter_count(cfg)
    if optimizer is None:
        return {"params": params, "weights": params * FP32, "total": params * FP32}
    state = params * TRAIN_BYTES.get(optimizer, TRAIN_BYTES["muon"]) // max(shards, 1)
    tokens = micro_batch * seq_len
    activations = tokens * cfg.n_layer * cfg.n_embd * ACTIVATION_BYTES
    if not loss_chunk:  # the whole B x T x vocab logits at once, in fp32 for the loss
        activations += tokens * cfg.padded_vocab_size * FP32
    return {"params": params, "state": state, "activations": activations, "total": state + activations}


def available_memory(device: str) -> tuple[int, str] | None:
    """(bytes, what they are) of the memory a model on ``device`` can use; None where it cannot be told."""
    if device_type(device) == "cuda":
        import torch

        try:
            index = torch.device(device).index
            index = torch.cuda.current_device() if index is None else index
            props = torch.cuda.get_device_properties(index)
        except (RuntimeError, AssertionError, ValueError):  # no usable GPU: the device check says so itself
            return None
        return props.total_memory, f"GPU {index} ({props.name}) has"
    found = _meminfo_available()
    limit = _cgroup_room()
    if limit is not None and (found is None or limit < found):
        return limit, "this container has"
    return (found, "this machine has") if found is not None else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What the cgroup (v2) memory limit leaves, where there is one."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((root / "memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


def fmt_size(n: int) -> str:
    """Bytes in binary units: 512 MiB, 7.4 GiB, 183 TiB, ..."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"):
        if value < 1024 or unit == "YiB":
            break
        value /= 1024
    return f"{value:,.0f} {unit}" if value >= 100 or unit == "B" else f"{value:.1f} {unit}"


def describe(cfg: GPTConfig, need: dict[str, int]) -> str:
    """The model and what it needs, for a message."""
    params = need["params"]
    count = f"{params:,}" if params < 10**15 else f"{params:.2e}"
    shape = f"{cfg.n_layer:,} layers x {cfg.n_embd:,} wide, {cfg.padded_vocab_size:,} vocabulary rows"
    if "state" not in need:
        return f"a model of {count} parameters ({shape}) needs at least {fmt_size(need['total'])} for its weights"
    return (f"training a model of {count} parameters ({shape}) needs at least {fmt_size(need['total'])}: "
            f"{fmt_size(need['state'])} for weights, gradients and optimizer state and {fmt_size(need['activations'])} "
            "for one micro-batch's activations")


def check_fits(cfg: GPTConfig, device: str, what: str, *, keys: str = "model.n_layer, model.n_embd",
               **training) -> None:
    """Refuse, in one line starting with ``what`` (where the size was asked for) and ending with the ``keys`` that
    set it, a model of ``cfg`` that cannot fit on ``device``; ``training``: :func:`model_bytes`' training
    arguments. Nothing is allocated."""
    need = model_bytes(cfg, **training)
    room = available_memory(device)
    if room is None or need["total"] <= room[0]:
        return
    hint = keys + (", train.micro_batch, train.seq_len" if "state" in need else "")
    raise UserError(f"{what}: {describe(cfg, need)}, but {room[1]} {fmt_size(room[0])}"
                    f"{' available' if device_type(device) == 'cpu' else ''}; choose a smaller size ({hint})")

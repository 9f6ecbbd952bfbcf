"""``gpt2lab bench``: training tokens/s, ms/step and MFU, eager and ``torch.compile``.

What is timed is one optimizer step of the real training loop, :func:`gpt2lab.train.train_step`
(forward under autocast, backward, gradient clipping, fused AdamW), plus reading the loss and
gradient norm back as the loop does, on random token ids made before timing starts. MFU =
``model.flops_per_token(seq_len) * tokens/s`` / the best dense square-matmul rate measured in the
same process on the same device (bf16, and fp32 with TF32 allowed on CUDA as training allows it):
"MFU against what this machine's matmul reaches"; the timer, peaks and MFU are :mod:`gpt2lab.perf`'s,
the table and the ratios :mod:`gpt2lab.bench_table`'s.

The scripts in ``benchmarks/`` build on :func:`bench_train` and :func:`make_train_step`; their own tools
(results files, retrying busy cases, peers fetched from GitHub) live there.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable

import torch

from .bench_table import add_compile_ratios, add_peer_ratios, format_table
from .config import MODEL_PRESETS, OptimConfig, load_config
from .device import autocast_for, device_type, resolve_dtype
from .distributed import DistInfo
from .errors import UserError
from .hf import transformers_lm
from .model import GPT, GPTConfig
from .optim import build_optimizer
from .perf import (
    describe_machine,
    measure_peaks,
    peak_memory,
    prepare_device,
    reset_peak_memory,
    set_peaks,
    time_steps,
    timed,
    warn_if_busy,
)
from .train import train_step

COMPILE_MODES = {"off": (False,), "on": (True,), "both": (False, True)}  # --compile -> the settings run, in order
PEERS = ("gpt2lab", "hf")  # who trains: gpt2lab's model, or transformers' of the same shape
Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def stderr_log(msg: str) -> None:
    """Progress and warnings: stderr, so that stdout holds only the figures."""
    print(msg, file=sys.stderr, flush=True)


# --- the models and the step ----------------------------------------------------------------


def recipe_configs(preset: str, seq_len: int, recipe: str | None) -> tuple[GPTConfig, OptimConfig]:
    """The model and optimizer to time: the preset's shape with the GPT-2 recipe, or with the model
    switches and the optimizer of ``recipe`` (a training config file such as configs/speedrun.yaml)."""
    if preset not in MODEL_PRESETS:
        raise UserError(f"--preset: unknown preset {preset!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    if recipe:
        # seq_len=0: the recipe's own length (gpt2-124m.yaml's 1024) may not fit a smaller preset; the caller's is used
        cfg = load_config(recipe, [f"model.preset={preset}", "train.seq_len=0"])
        model_cfg, optim_cfg = cfg.model, cfg.optim
    else:
        model_cfg, optim_cfg = GPTConfig(**MODEL_PRESETS[preset]), OptimConfig()
    model_cfg.block_size = max(model_cfg.block_size, seq_len)  # position embeddings are not in the FLOPs per token
    return model_cfg, optim_cfg


def _check_peer(peer: str, allowed: tuple[str, ...] = PEERS) -> None:
    if peer not in allowed:
        raise UserError(f"--compare: unknown peer {peer!r}; choose one of: {', '.join(PEERS[1:])}")


def make_train_step(model: torch.nn.Module, optim_cfg: OptimConfig, *, vocab_size: int, batch: int, seq_len: int,
                    device: str, autocast, compile: bool = False, seed: int = 1337, n_batches: int = 8,
                    loss_chunk: int = 0) -> Callable[[int], tuple[float, float]]:
    """A function that runs and times training step ``i`` of ``model`` (the training loop's
    ``train_step`` on ``n_batches`` fixed random batches): (seconds, loss). benchmarks/profile_step.py
    profiles it and benchmarks/bench_precision.py times it."""
    torch.manual_seed(seed)
    optimizer = build_optimizer(model, optim_cfg, device_type(device))
    train_model: torch.nn.Module = model
    if compile:
        torch._dynamo.reset()  # compile from scratch, not on top of an earlier benchmark's graphs
        train_model = torch.compile(model)
    info = DistInfo(device=device)
    # Random tokens, fixed seed, made and moved to the device before any timing.
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab_size, (n_batches, batch, seq_len + 1), generator=g).to(device)
    batches = [(data[i, :, :-1].contiguous(), data[i, :, 1:].contiguous()) for i in range(n_batches)]

    def one_step(i: int) -> tuple[float, float]:
        def step() -> float:
            loss, norm = train_step(train_model, model, optimizer, iter([batches[i % n_batches]]), accum=1,
                                    autocast=autocast, clip=optim_cfg.grad_clip, info=info, loss_chunk=loss_chunk)
            norm.item()  # the training loop reads both back every step too
            return loss.item()
        return timed(step, device)

    return one_step


# --- one case --------------------------------------------------------------------------------


def bench_train(preset: str = "tiny", *, batch: int = 16, seq_len: int = 256, dtype: str = "auto",
                compile: bool = False, steps: int = 5, warmup: int = 2, device: str = "auto",
                peer: str = "gpt2lab", make_model: Callable[[GPTConfig], torch.nn.Module] | None = None,
                recipe: str | None = None, loss_chunk: int = 0, peaks: dict | None = None,
                retry: Callable[[list[dict]], str | None] | None = None, log: Log | None = None) -> dict:
    """Time ``steps`` training steps of the ``preset`` model after ``warmup`` untimed ones; a flat dict of figures.

    ``peer`` "hf" times transformers' GPT2LMHeadModel of the same shape (SDPA attention, its own loss)
    in the same step; ``make_model`` (with ``peer`` as its name) times any other model of the
    preset's shape whose ``forward(x, y, **options)`` returns ``(logits, loss)`` (benchmarks/peers.py:
    nanoGPT, build-nanogpt); ``recipe`` (a config file) takes the model switches and the optimizer from it.
    ``peaks`` (from :func:`measure_peaks` for this device) adds the MFU figures; without, there are none.
    ``retry``, given the attempts so far (``ms_per_step``, ``cpu_share``), says why the timed steps
    should run again, or None (benchmarks/harness.py's ``retry_while_busy``); the figures are the
    last attempt's and every attempt is listed under ``attempts``.
    """
    if batch <= 0 or seq_len <= 0:
        raise UserError("--batch and --seq-len must be > 0")
    if steps < 1 or warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    log = log or _quiet
    device = prepare_device(device)
    if make_model is None:
        _check_peer(peer)
    loss_chunk = loss_chunk if peer == "gpt2lab" else 0  # a peer computes its loss its own way
    cfg, optim_cfg = recipe_configs(preset, seq_len, recipe)
    amp_dtype = resolve_dtype(dtype, device_type(device))
    if compile and warmup == 0:
        log("warning: --warmup 0 with compile: compilation is inside the timed steps")
    reset_ok = reset_peak_memory(device)  # from here on: model, optimizer state, activations, compiled code
    if make_model is None:
        make_model = GPT if peer == "gpt2lab" else transformers_lm
    model = make_model(cfg).to(device)
    one_step = make_train_step(model, optim_cfg, vocab_size=cfg.vocab_size, batch=batch, seq_len=seq_len,
                               device=device, autocast=autocast_for(device_type(device), amp_dtype), compile=compile,
                               n_batches=min(warmup + steps, 8), loss_chunk=loss_chunk)
    name = peer + (f" {os.path.splitext(os.path.basename(recipe))[0]}" if recipe else "") + \
        (f" chunk{loss_chunk}" if loss_chunk else "")
    case = {"model": name, "peer": peer, "recipe": recipe, "preset": preset, "batch": batch, "seq_len": seq_len,
            "tokens_per_step": batch * seq_len, "dtype": str(amp_dtype).replace("torch.", ""), "compile": bool(compile)}
    tag = f"{name} {preset} B={batch} T={seq_len} {case['dtype']} compile={'on' if compile else 'off'}"
    warmup_times, step_times, loss, attempts = time_steps(one_step, device, steps, warmup, retry,
                                                          lambda msg: log(f"{tag}: {msg}"))
    result = {**case, **describe_machine(device), **_figures(cfg, case, warmup_times, step_times),
              "cpu_share": attempts[-1]["cpu_share"], "attempts": attempts}
    result["peak_mem_bytes"], result["peak_mem_kind"] = peak_memory(device, reset_ok)
    result["final_loss"] = loss
    if peaks is not None:
        set_peaks(result, peaks)
    del model, one_step
    if compile:
        torch._dynamo.reset()
    if device_type(device) == "cuda":
        torch.cuda.empty_cache()
    return result


def _figures(cfg: GPTConfig, case: dict, warmup_times: list[float], step_times: list[float]) -> dict:
    """The model's size and FLOPs (gpt2lab's model of this shape: a peer of the same shape is
    counted alike, FLOPs being the model's, not the implementation's) and the timed figures."""
    with torch.device("meta"):
        model = GPT(cfg)
    flops_per_token, total, steps = model.flops_per_token(case["seq_len"]), sum(step_times), len(step_times)
    tok_s = case["tokens_per_step"] * steps / total
    return {
        "params": model.num_params(), "flops_per_token": flops_per_token, "steps": steps, "warmup": len(warmup_times),
        "warmup_s": sum(warmup_times), "first_step_s": warmup_times[0] if warmup_times else None,
        "ms_per_step": 1000 * total / steps, "ms_per_step_min": 1000 * min(step_times),
        "ms_per_step_max": 1000 * max(step_times), "ms_per_step_median": 1000 * statistics.median(step_times),
        "tokens_per_s": tok_s, "achieved_tflops": flops_per_token * tok_s / 1e12,
    }


# --- the command -----------------------------------------------------------------------------


def run_bench(*, preset: str = "tiny", batch: int = 16, seq_len: int = 256, dtype: str = "auto",
              compile_mode: str = "off", steps: int = 5, warmup: int = 2, device: str = "auto", as_json: bool = False,
              compare: str | None = None, recipe: str | None = None, loss_chunk: int = 0, peaks: dict | None = None,
              out=None, log: Log | None = stderr_log) -> list[dict]:
    """Time training steps on random tokens and report tokens/s and MFU against a bf16 (and fp32) matmul peak
    measured in the same run on the same device.

    Measures the matmul peaks once, then :func:`bench_train` with compile off and/or on; prints and returns the
    results. ``gpt2lab bench`` takes these arguments as its options (``--help`` shows this text).

    Args:
        preset: model preset
        batch: micro-batch
        seq_len: sequence length
        dtype: autocast dtype; auto = bfloat16 where the hardware has it
        compile_mode: torch.compile the model: off, on, or both side by side with their ratio
        steps: timed steps, after the warmup
        warmup: untimed steps first; compilation happens here and its time is reported
        device: auto, cpu, cuda or cuda:N
        as_json: print one JSON object per result instead of a table
        compare: also time transformers' GPT2LMHeadModel of the same shape, same step and protocol, right after
            each case, and print gpt2lab's ratio to it
        recipe: take the model switches and the optimizer from this training config (e.g. configs/speedrun.yaml)
            instead of the GPT-2 recipe; the preset sets the size
        loss_chunk: the chunked LM head and loss, ROWS rows of logits at a time, as train.loss_chunk (0: the whole
            logits)
        peaks: the matmul peaks of :func:`measure_peaks`, not measured again
        out: where the table goes (default: stdout)
        log: where progress goes (default: stderr)
    """
    if compile_mode not in COMPILE_MODES:
        raise UserError(f"--compile: {compile_mode!r}; choose off, on or both")
    out = out or sys.stdout
    device = prepare_device(device)
    recipe_configs(preset, seq_len, recipe)  # fail on a bad preset or config before spending time on the peaks
    if compare is not None:
        _check_peer(compare, PEERS[1:])
    log = log or _quiet
    warn_if_busy(device, log)
    if peaks is None:
        log(f"measuring bf16 and fp32 matmul peaks on {device} ...")
        peaks = measure_peaks(device)
    results = []
    for compiled in COMPILE_MODES[compile_mode]:
        for peer in ("gpt2lab",) + ((compare,) if compare else ()):
            results.append(bench_train(preset, batch=batch, seq_len=seq_len, dtype=dtype, compile=compiled,
                                       steps=steps, warmup=warmup, device=device, peer=peer,
                                       recipe=recipe if peer == "gpt2lab" else None, loss_chunk=loss_chunk,
                                       peaks=peaks, log=log))
    add_peer_ratios(add_compile_ratios(results))
    if as_json:
        for r in results:
            print(json.dumps(r), file=out)
    else:
        print(format_table(results, peaks), file=out)
    out.flush()
    return results

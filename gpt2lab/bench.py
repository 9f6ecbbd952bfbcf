"""Training throughput benchmark: tokens/s, ms/step and MFU, eager and ``torch.compile``.

What is timed is exactly one optimizer step of the real training loop,
:func:`gpt2lab.train.train_step` (forward under autocast, backward, gradient clipping, fused
AdamW), plus reading the loss and gradient norm back as :func:`gpt2lab.train.train` does. The
data are random token ids made before timing starts, so no data loading is included.

MFU (model FLOPs utilisation) = achieved FLOP/s / peak FLOP/s, where achieved FLOP/s is
``model.flops_per_token(seq_len) * tokens/s`` (6N + attention, PaLM appendix B) and the peak is
the best dense square-matmul rate measured in the same process on the same device, in bf16 and
in fp32 (TF32 allowed on CUDA, as training allows it). It is therefore "MFU against what this
machine's matmul reaches", not against a datasheet number.

The machine description and the busy-machine warning at the top are also what the scripts in
``benchmarks/`` use (through ``benchmarks/harness.py``): the package cannot import that folder, so
the one copy lives here; the timer and the matmul peak live in :mod:`gpt2lab.perf`, which the
training loop's MFU uses too.

Timings are what they are: nothing here asserts or rounds towards an expected speed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from typing import Callable

import torch

from .config import MODEL_PRESETS, OptimConfig, load_config
from .distributed import DistInfo
from .errors import UserError
from .model import GPT, GPTConfig
from .optim import build_optimizer
from .perf import PEAK_SIZES, cpu_info, known_bf16_peak, matmul_peak, timed
from .progress import fmt_bytes
from .device import autocast_for, device_type, resolve_device, resolve_dtype, set_backends
from .train import train_step

# --- timing and the machine ------------------------------------------------------------------


# Above this 1-minute load average other processes are likely to take CPU from a CPU benchmark.
BUSY_LOAD = 0.5
def load_average() -> float | None:
    """1-minute load average of the machine (None where the OS has none): other work skews CPU timings."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def warn_if_busy(device: str, log: Callable[[str], None]) -> None:
    """Say so when other work on the machine will lower CPU figures (a GPU benchmark barely notices)."""
    load = load_average()
    if device_type(device) == "cpu" and load is not None and load > BUSY_LOAD:
        log(f"warning: 1-minute load average is {load:.2f}: if other processes are using the CPU, "
            "the figures will be lower than this machine can do")


def describe_machine(device: str = "cpu") -> dict:
    """Where figures were measured: the device (a GPU's name, or the CPU's model and flags), threads,
    cores, torch, host, and the load average now (so call it when the measurement starts)."""
    if device_type(device) == "cuda":
        about: dict = {"device_name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    else:
        name, features = cpu_info()
        about = {"device_name": name, "cpu_features": features}
    return {"device": device, **about, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "torch": torch.__version__, "host": platform.node(), "load_avg_1m_at_start": load_average()}


def machine_line(m: dict) -> str:
    """One line of :func:`describe_machine`'s answer, to print above figures."""
    features = f" [{', '.join(m['cpu_features'])}]" if m.get("cpu_features") else ""
    load = m.get("load_avg_1m_at_start")
    load_text = f" | load avg {load:.2f} at start" if load is not None else ""
    return (f"device: {m['device']} ({m['device_name']}){features}, {m['threads']} threads | torch {m['torch']} "
            f"| host {m['host']}{load_text}")


def _device(device: str) -> str:
    device = resolve_device(device)
    set_backends(device)  # as in training: TF32 for any fp32 matmul left outside autocast
    return device


# --- matmul peak -----------------------------------------------------------------------------


def measure_peaks(device: str = "auto", repeats: int = 5, sizes: tuple[int, ...] | None = None) -> dict:
    """bf16 and fp32 matmul peaks on one device, measured one after the other in this process.

    Each is the best rate over the sizes of PEAK_SIZES (or ``sizes``, for both dtypes).
    """
    device = _device(device)
    peaks: dict = {"device": device}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        flops, n = matmul_peak(device, dtype, sizes or PEAK_SIZES[device_type(device), dtype], repeats)
        peaks[f"peak_{name}_flops"], peaks[f"peak_{name}_n"] = flops, n
    peaks["fp32_tf32"] = device_type(device) == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
    known = known_bf16_peak(torch.cuda.get_device_name(device)) if device_type(device) == "cuda" else None
    if known is not None:  # a known GPU: MFU against its datasheet too, as llm.c and others report it
        peaks["datasheet_bf16_flops"], peaks["datasheet_name"] = known
    peaks["matmul_repeats"] = repeats
    return peaks


# --- peak memory -----------------------------------------------------------------------------


def _reset_cpu_peak() -> bool:
    """Reset this process's peak RSS (Linux: write 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak(reset_ok: bool) -> tuple[int, str]:
    if reset_ok:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024, "process peak RSS during this benchmark (VmHWM)"
        except (OSError, ValueError, IndexError):
            pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return rss, "process max RSS since start (getrusage)"


# --- the training benchmark ------------------------------------------------------------------

# compile mode -> the torch.compile settings run, in order
COMPILE_MODES = {"off": (False,), "on": (True,), "both": (False, True)}
# Below this cpu share (see bench_train) other processes took a noticeable part of the CPU.
BUSY_CPU_SHARE = 0.85


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Who trains: gpt2lab's own model, or a peer's model under the same step and protocol.
PEERS = ("gpt2lab", "hf")


def _check_peer(peer: str, allowed: tuple[str, ...] = PEERS) -> None:
    if peer not in allowed:
        raise UserError(f"--compare: unknown peer {peer!r}; choose one of: {', '.join(PEERS[1:])}")


def recipe_configs(preset: str, seq_len: int, recipe: str | None) -> tuple[GPTConfig, OptimConfig]:
    """The model and optimizer to time: the preset's shape with the GPT-2 recipe, or with the model
    switches and the optimizer of ``recipe`` (a training config file such as configs/speedrun.yaml)."""
    if preset not in MODEL_PRESETS:
        raise UserError(f"--preset: unknown preset {preset!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    if recipe:
        cfg = load_config(recipe, [f"model.preset={preset}"])
        model_cfg, optim_cfg = cfg.model, cfg.optim
    else:
        model_cfg, optim_cfg = GPTConfig(**MODEL_PRESETS[preset]), OptimConfig()
    model_cfg.block_size = max(model_cfg.block_size, seq_len)  # position embeddings are not in the FLOPs per token
    return model_cfg, optim_cfg


def bench_train(
    preset: str = "tiny",
    batch: int = 16,
    seq_len: int = 256,
    dtype: str = "auto",
    compile: bool = False,
    steps: int = 5,
    warmup: int = 2,
    device: str = "auto",
    *,
    peer: str = "gpt2lab",
    make_model: Callable[[GPTConfig], torch.nn.Module] | None = None,
    recipe: str | None = None,
    loss_chunk: int = 0,
    peaks: dict | None = None,
    seed: int = 1337,
    retry_busy: int = 0,
    min_cpu_share: float = BUSY_CPU_SHARE,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Time ``steps`` training steps of the ``preset`` model after ``warmup`` untimed ones.

    ``peer`` "hf" times transformers' GPT2LMHeadModel of the same shape (SDPA attention, its own loss)
    in the same step; ``make_model`` (with ``peer`` as its name) times any other model of the
    preset's shape whose ``forward(x, y, **options)`` returns ``(logits, loss)`` (the training step
    passes gpt2lab's ``loss_chunk`` and ``return_logits``; benchmarks/peers.py: nanoGPT,
    build-nanogpt); ``recipe`` (a config file) takes the model switches and the optimizer from it.
    ``peaks`` (from :func:`measure_peaks` for this device) adds the MFU figures; without, there are none.
    On a CPU, when other processes took CPU during the timed steps (``cpu_share`` below
    ``min_cpu_share``), the timed steps are run again, up to ``retry_busy`` more times; the figures
    are those of the last attempt and every attempt is listed under ``attempts``.
    Returns a flat dict of the figures (see the keys at the end of this function).
    """
    if batch <= 0 or seq_len <= 0:
        raise UserError("--batch and --seq-len must be > 0")
    if steps < 1 or warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    log = log or (lambda _msg: None)
    device = _device(device)
    kind = device_type(device)
    if make_model is None:
        _check_peer(peer)
    if peer != "gpt2lab":
        loss_chunk = 0  # a peer computes its loss its own way
    cfg, optim_cfg = recipe_configs(preset, seq_len, recipe)
    amp_dtype = resolve_dtype(dtype, kind)
    autocast = autocast_for(kind, amp_dtype)
    if compile and warmup == 0:
        log("warning: --warmup 0 with compile: compilation is inside the timed steps")

    # Memory high-water mark from here on: model, optimizer state, activations, compiled code.
    if kind == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        reset_ok = False
    else:
        reset_ok = _reset_cpu_peak()
    if make_model is not None:
        model = make_model(cfg).to(device)
    else:
        model = GPT(cfg).to(device) if peer == "gpt2lab" else _hf_model(cfg, device)
    flops_per_token, params = _flops_and_params(cfg, seq_len)
    one_step = make_train_step(model, optim_cfg, cfg.vocab_size, batch, seq_len, device, autocast, compile, seed,
                        n_batches=min(warmup + steps, 8), loss_chunk=loss_chunk)
    dtype_name = str(amp_dtype).replace("torch.", "")
    name = peer + (f" {os.path.splitext(os.path.basename(recipe))[0]}" if recipe else "") + \
        (f" chunk{loss_chunk}" if loss_chunk else "")
    tag = f"{name} {preset} B={batch} T={seq_len} {dtype_name} compile={'on' if compile else 'off'}"
    warmup_times, step_times, loss_value, cpu_share, attempts = _time_steps(
        one_step, kind, steps, warmup, retry_busy, min_cpu_share, lambda msg: log(f"{tag}: {msg}"))
    total = sum(step_times)
    machine = describe_machine(device)
    if kind == "cuda":
        peak_mem, mem_kind = torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    else:
        peak_mem, mem_kind = _cpu_peak(reset_ok)

    tokens_per_step = batch * seq_len
    tok_s = tokens_per_step * steps / total
    result: dict = {
        "model": name,
        "peer": peer,
        "recipe": recipe,
        "preset": preset,
        "batch": batch,
        "seq_len": seq_len,
        "tokens_per_step": tokens_per_step,
        "dtype": dtype_name,
        "compile": bool(compile),
        **machine,
        "params": params,
        "flops_per_token": flops_per_token,
        "steps": steps,
        "warmup": warmup,
        "warmup_s": sum(warmup_times),
        "first_step_s": warmup_times[0] if warmup_times else None,
        "ms_per_step": 1000 * total / steps,
        "ms_per_step_min": 1000 * min(step_times),
        "ms_per_step_max": 1000 * max(step_times),
        "ms_per_step_median": 1000 * statistics.median(step_times),
        "tokens_per_s": tok_s,
        "achieved_tflops": flops_per_token * tok_s / 1e12,
        "cpu_share": cpu_share,
        "attempts": attempts,
        "peak_mem_bytes": peak_mem,
        "peak_mem_kind": mem_kind,
        "final_loss": loss_value,
    }
    if peaks is not None:
        set_peaks(result, peaks)
    del model, one_step
    if compile:
        torch._dynamo.reset()
    if kind == "cuda":
        torch.cuda.empty_cache()
    return result


def _flops_and_params(cfg: GPTConfig, seq_len: int) -> tuple[float, int]:
    """Model FLOPs per token and parameters of gpt2lab's model of this shape (a peer of the same
    shape is counted alike: FLOPs are the model's, not the implementation's)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return model.flops_per_token(seq_len), model.num_params()


class _HFLoss(torch.nn.Module):
    """transformers' GPT-2 behind gpt2lab's ``model(x, y) -> (logits, loss)`` call, with its own
    loss (labels = inputs, shifted inside transformers), as a user of transformers trains it."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x, _y, **_gpt2lab_options):
        return None, self.hf(input_ids=x, labels=x).loss


def _hf_model(cfg: GPTConfig, device: str) -> torch.nn.Module:
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise UserError("--compare hf needs transformers: pip install 'gpt2lab[hf]'") from None
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                        attn_pdrop=cfg.dropout, attn_implementation="sdpa")
    return _HFLoss(GPT2LMHeadModel(hf_cfg)).to(device)


def make_train_step(model: torch.nn.Module, optim_cfg: OptimConfig, vocab_size: int, batch: int, seq_len: int,
                    device: str, autocast, compile: bool, seed: int, n_batches: int,
                    loss_chunk: int = 0) -> Callable[[int], tuple[float, float]]:
    """A function that runs and times training step ``i`` of ``model`` (the training loop's
    ``train_step`` on fixed random batches): (seconds, loss). Also what benchmarks/profile_step.py profiles."""
    kind = device_type(device)
    torch.manual_seed(seed)
    optimizer = build_optimizer(model, optim_cfg, kind)
    train_model: torch.nn.Module = model
    if compile:
        torch._dynamo.reset()  # compile from scratch, not on top of an earlier benchmark's graphs
        train_model = torch.compile(model)
    info = DistInfo(device=device)
    clip = optim_cfg.grad_clip
    # Random tokens, fixed seed, made and moved to the device before any timing.
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab_size, (n_batches, batch, seq_len + 1), generator=g).to(device)
    batches = [(data[i, :, :-1].contiguous(), data[i, :, 1:].contiguous()) for i in range(n_batches)]

    def one_step(i: int) -> tuple[float, float]:
        def step() -> float:
            loss, norm = train_step(train_model, model, optimizer, iter([batches[i % n_batches]]), accum=1,
                                    autocast=autocast, clip=clip, info=info, loss_chunk=loss_chunk)
            norm.item()  # the training loop reads both back every step too
            return loss.item()
        return timed(step, device)

    return one_step


def _time_steps(one_step, kind: str, steps: int, warmup: int, retry_busy: int, min_cpu_share: float, log):
    """Warm-up steps, then ``steps`` timed ones, again (up to ``retry_busy`` times) while other
    processes took CPU; returns (warm-up times, step times, last loss, cpu share, attempts)."""
    warmup_times = []
    for i in range(warmup):
        dt, _ = one_step(i)
        warmup_times.append(dt)
        log(f"warm-up step {i + 1}/{warmup} {dt:.2f} s")
    attempts = []
    for attempt in range(1 + max(0, retry_busy)):
        step_times, loss_value = [], float("nan")
        cpu0 = _process_cpu_seconds()
        for i in range(steps):
            dt, loss_value = one_step(warmup + attempt * steps + i)
            step_times.append(dt)
            log(f"step {i + 1}/{steps} {dt * 1000:.0f} ms")
        total = sum(step_times)
        # CPU time this process got / (wall time x torch threads) over the timed steps. On a quiet CPU
        # it sits near 1 (PyTorch's threads spin while they wait); well below that, other processes
        # took CPU from the benchmark and the timings are low.
        cpu_share = None
        if kind == "cpu":
            cpu_share = (_process_cpu_seconds() - cpu0) / (total * torch.get_num_threads())
        attempts.append({"ms_per_step": 1000 * total / steps, "cpu_share": cpu_share})
        if cpu_share is None or cpu_share >= min_cpu_share or attempt == retry_busy:
            break
        log(f"cpu share {cpu_share:.2f} < {min_cpu_share}: other processes took CPU; timing again")
    return warmup_times, step_times, loss_value, cpu_share, attempts


def set_peaks(result: dict, peaks: dict) -> dict:
    """(Re)compute a result's MFU figures against ``peaks`` (from :func:`measure_peaks`)."""
    achieved = result["achieved_tflops"] * 1e12
    result["peak_bf16_tflops"] = peaks["peak_bf16_flops"] / 1e12
    result["peak_fp32_tflops"] = peaks["peak_fp32_flops"] / 1e12
    result["mfu"] = achieved / peaks["peak_bf16_flops"]  # headline: training runs under bf16 autocast
    result["mfu_fp32"] = achieved / peaks["peak_fp32_flops"]
    if peaks.get("datasheet_bf16_flops"):
        result["mfu_datasheet"] = achieved / peaks["datasheet_bf16_flops"]
    return result


def add_compile_ratios(results: list[dict]) -> list[dict]:
    """Set ``compiled_vs_eager`` (tokens/s compiled / tokens/s eager) on compiled results that have an eager twin."""
    eager = {(_shape_key(r), r.get("model")): r for r in results if not r["compile"]}
    for r in results:
        twin = eager.get((_shape_key(r), r.get("model")))
        if r["compile"] and twin is not None:
            r["compiled_vs_eager"] = r["tokens_per_s"] / twin["tokens_per_s"]
            # Not comparable when either side shared the CPU with other processes.
            r["compiled_vs_eager_busy"] = any(_busy(x) for x in (r, twin))
    return results


def add_peer_ratios(results: list[dict]) -> list[dict]:
    """Set ``vs_peer`` (gpt2lab tokens/s / the best peer's, same shape and compile setting) on gpt2lab's results."""
    peers: dict = {}
    for r in results:
        key = (_shape_key(r), r["compile"])
        if r.get("peer", "gpt2lab") != "gpt2lab" and r["tokens_per_s"] > peers.get(key, {}).get("tokens_per_s", 0):
            peers[key] = r
    for r in results:
        twin = peers.get((_shape_key(r), r["compile"]))
        if r.get("peer", "gpt2lab") == "gpt2lab" and twin is not None:
            r["vs_peer"], r["peer_name"] = r["tokens_per_s"] / twin["tokens_per_s"], twin["peer"]
            r["vs_peer_busy"] = any(_busy(x) for x in (r, twin))
    return results


def _busy(r: dict) -> bool:
    return r.get("cpu_share") is not None and r["cpu_share"] < BUSY_CPU_SHARE


def _shape_key(r: dict) -> tuple:
    return (r["preset"], r["batch"], r["seq_len"], r["dtype"], r["device"])


# --- output ----------------------------------------------------------------------------------


def format_table(results: list[dict], peaks: dict) -> str:
    """A plain-text table of results, with the machine and the measured peaks above it."""
    lines = [machine_line(results[0])] if results else []
    tf32 = " (TF32 allowed)" if peaks.get("fp32_tf32") else ""
    lines.append(
        f"matmul peak (best of {peaks['matmul_repeats']}, measured in this run): "
        f"bf16 {peaks['peak_bf16_flops'] / 1e12:.3f} TFLOP/s (n={peaks['peak_bf16_n']}), "
        f"fp32{tf32} {peaks['peak_fp32_flops'] / 1e12:.3f} TFLOP/s (n={peaks['peak_fp32_n']})"
    )
    header = ["model", "preset", "params", "B x T", "dtype", "compile", "tok/s", "ms/step (min)", "TFLOP/s",
              "MFU bf16", "MFU fp32", "warm-up s", "peak mem", "compiled/eager"]
    show_sheet = any("mfu_datasheet" in r for r in results)
    if show_sheet:
        header.insert(header.index("MFU fp32"), "MFU datasheet")
    show_peer = any("vs_peer" in r for r in results)
    if show_peer:
        header.append("vs peer")
    show_share = any(r.get("cpu_share") is not None for r in results)
    if show_share:
        header.append("cpu share")
    rows = []
    for r in results:
        ratio = r.get("compiled_vs_eager")
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x" + (" (busy)" if r.get("compiled_vs_eager_busy") else "")
        row = [
            r.get("model", "gpt2lab"), r["preset"], f"{r['params'] / 1e6:.1f}M", f"{r['batch']} x {r['seq_len']}", r["dtype"],
            "on" if r["compile"] else "off", f"{r['tokens_per_s']:,.0f}",
            f"{r['ms_per_step']:,.1f} ({r['ms_per_step_min']:,.1f})",
            f"{r['achieved_tflops']:.3f}", f"{100 * r['mfu']:.1f}%", f"{100 * r['mfu_fp32']:.1f}%",
            f"{r['warmup_s']:.1f}", fmt_bytes(r["peak_mem_bytes"]), ratio_text,
        ]
        if show_sheet:
            sheet = r.get("mfu_datasheet")
            row.insert(header.index("MFU datasheet"), "-" if sheet is None else f"{100 * sheet:.1f}%")
        if show_peer:
            vs = r.get("vs_peer")
            row.append("-" if vs is None else f"{vs:.2f}x {r['peer_name']}" + (" (busy)" if r.get("vs_peer_busy") else ""))
        if show_share:
            share = r.get("cpu_share")
            tries = len(r.get("attempts", ()))
            row.append((f"{share:.2f}" if share is not None else "-") + (f" ({tries} tries)" if tries > 1 else ""))
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    left = {0, 1, 2, 4, 5}

    def fmt(row):
        return "  ".join(str(x).ljust(w) if i in left else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths)))

    lines += [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(row) for row in rows]
    if results:
        steps = sorted({(r["steps"], r["warmup"]) for r in results})
        lines.append(
            "timed steps / warm-up steps: " + ", ".join(f"{s}/{w}" for s, w in steps)
            + "; tok/s = B*T*steps / timed seconds (mean step; fastest step in brackets); "
            "MFU = model FLOPs/token * tok/s / matmul peak"
        )
        lines.append(f"peak mem = {results[0]['peak_mem_kind']}")
        if show_sheet:
            lines.append(f"MFU datasheet = against the {peaks['datasheet_name']} dense bf16 datasheet peak, "
                         f"{peaks['datasheet_bf16_flops'] / 1e12:g} TFLOP/s")
        if show_peer:
            lines.append("vs peer = gpt2lab tok/s / the peer's, same shape and compile setting, in this run; "
                         "the peer's FLOPs are counted as gpt2lab's model of the same shape")
        if show_share:
            lines.append("cpu share = CPU time of this process / (wall time x threads) in the timed steps; "
                         "well below 1 means other processes took CPU and the timings are low "
                         "(N tries: the timed steps were run again after a busy attempt)")
    return "\n".join(lines)


def stderr_log(msg: str) -> None:
    """Progress and warnings: stderr, so that stdout holds only the figures."""
    print(msg, file=sys.stderr, flush=True)


def run_bench(
    preset: str = "tiny",
    batch: int = 16,
    seq_len: int = 256,
    dtype: str = "auto",
    compile_mode: str = "off",
    steps: int = 5,
    warmup: int = 2,
    device: str = "auto",
    as_json: bool = False,
    *,
    compare: str | None = None,
    recipe: str | None = None,
    loss_chunk: int = 0,
    peaks: dict | None = None,
    out=None,
    log: Callable[[str], None] | None = stderr_log,
) -> list[dict]:
    """Measure the matmul peaks once, then bench_train with compile off and/or on; print and return the results.

    ``compile_mode`` is "off", "on" or "both" (eager and compiled side by side, with their ratio).
    ``compare`` "hf" runs transformers' GPT-2 of the same shape after each gpt2lab case and adds the ratio;
    ``recipe`` (a config file) times its model switches and optimizer instead of the GPT-2 recipe;
    ``loss_chunk`` > 0 times gpt2lab with the chunked LM head and loss (``train.loss_chunk``).
    Progress goes to ``log`` (stderr); the table, or one JSON object per line with ``as_json``, to ``out``
    (stdout). ``peaks`` (from :func:`measure_peaks`) skips measuring them again.
    """
    if compile_mode not in COMPILE_MODES:
        raise UserError(f"--compile: {compile_mode!r}; choose off, on or both")
    out = out or sys.stdout
    device = _device(device)
    recipe_configs(preset, seq_len, recipe)  # fail on a bad preset or config before spending time on the peaks
    if compare is not None:
        _check_peer(compare, PEERS[1:])
    log = log or (lambda _msg: None)
    warn_if_busy(device, log)
    if peaks is None:
        log(f"measuring bf16 and fp32 matmul peaks on {device} ...")
        peaks = measure_peaks(device)
    results = []
    for compiled in COMPILE_MODES[compile_mode]:
        for peer in ("gpt2lab",) + ((compare,) if compare else ()):
            results.append(bench_train(preset, batch, seq_len, dtype, compiled, steps, warmup, device, peer=peer,
                                       recipe=recipe if peer == "gpt2lab" else None, loss_chunk=loss_chunk,
                                       peaks=peaks, log=log))
    add_compile_ratios(results)
    add_peer_ratios(results)
    if as_json:
        for r in results:
            print(json.dumps(r), file=out)
    else:
        print(format_table(results, peaks), file=out)
    out.flush()
    return results

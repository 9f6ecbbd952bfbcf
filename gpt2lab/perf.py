"""How fast a device is, and how much of it a run uses: the timer, matmul peaks, MFU, memory.

``gpt2lab bench`` and the training loop's status both take their figures from here:

- :func:`timed`, :func:`time_cases`, :func:`best_time`: wall-clock timing with queued GPU work finished;
- :func:`matmul_peak`: the best dense square-matmul rate measured on the device, in one dtype;
- :func:`device_peak`: the peak a training run states its MFU against: ``train.peak_tflops`` when
  set, else the datasheet dense bf16 figure of a known GPU (:data:`KNOWN_BF16_PEAKS`) for a bf16 run,
  else a quick matmul measurement in the run's dtype (CPUs, other GPUs, fp32 runs);
- :func:`memory_bytes`: what the process holds now (CUDA: allocated and its peak; CPU: RSS);
  :func:`reset_peak_memory` and :func:`peak_memory`: the high-water mark over a measurement;
- :func:`describe_machine`, :func:`machine_line`, :func:`warn_if_busy`: where figures were measured,
  recorded beside them (``gpt2lab bench`` and every script in ``benchmarks/``).

MFU (model FLOPs utilisation) = ``model.flops_per_token(seq_len) * tokens/s / peak``.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from .device import device_type, emulated_bf16, resolve_device, set_backends, synchronize


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """``(seconds, fn())``. Queued GPU work is finished before the clock starts and before it stops,
    so the time is that of ``fn``'s own work."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def time_cases(fns: dict[Any, Callable[[], Any]], repeats: int, warmup: int = 1,
               device: str = "cpu") -> dict[Any, list[float]]:
    """Each case's seconds over ``repeats`` timed calls, after ``warmup`` untimed calls of each.

    The rounds alternate the cases, so a busy spell of a shared machine hits every case alike.
    Take the min (the least disturbed call) or the median of each list.
    """
    for _ in range(warmup):  # kernel selection, allocator, page faults, clocks
        for fn in fns.values():
            timed(fn, device)
    times: dict[Any, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            times[name].append(timed(fn, device)[0])
    return times


def best_time(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    return min(time_cases({"": fn}, repeats, warmup, device)[""])


# --- the device ------------------------------------------------------------------------------

# CPU flags that decide matmul speed (bf16 and fp32 paths), in the order they are reported.
_CPU_FEATURES = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and which of the matmul-relevant flags it has."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    return name or platform.processor() or platform.machine(), [f for f in _CPU_FEATURES if f in flags]


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device_type(device) == "cuda" else cpu_info()[0]


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


# --- matmul peak -----------------------------------------------------------------------------

# Square matmul sizes tried for the peak; the best rate over all of them counts. On 2 Sapphire
# Rapids cores (AMX) a 4096^3 bf16 matmul takes ~60 ms and a 3072^3 fp32 one ~140 ms; on an
# H100 an 8192^3 bf16 matmul takes ~2 ms.
PEAK_SIZES = {
    ("cpu", torch.bfloat16): (2048, 4096),
    ("cpu", torch.float32): (2048, 3072),
    ("cuda", torch.bfloat16): (4096, 8192),
    ("cuda", torch.float32): (4096, 8192),
}
# What a training run measures at its start when it has no other peak: one size, a few repeats, under a
# second. On an AVX2 CPU in fp32, 3 repeats of 1024^3 read 0.10-0.18 TFLOP/s from run to run (the steps then
# showed 140% MFU); 5 of 2048^3 read the steady 0.18.
QUICK_SIZES = {"cpu": (2048,), "cuda": (4096,)}
QUICK_REPEATS = 5


def _matmul_flops(device: str, dtype: torch.dtype, n: int, repeats: int) -> float:
    """FLOP/s of the fastest of ``repeats`` n x n x n matmuls after one untimed one."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return 2.0 * n**3 / best_time(lambda: torch.matmul(a, b, out=out), repeats, device=device)


# bf16 on a CPU without bf16 instructions runs at ~1 GFLOP/s (2048^3 would take 20 s a repeat): its useless rate
# is read off one small matmul, whatever sizes were asked for
EMULATED_SIZES = (128,)


def matmul_peak(device: str, dtype: torch.dtype, sizes: tuple[int, ...], repeats: int) -> tuple[float, int]:
    """(best FLOP/s, its size n) over n x n x n matmuls of ``sizes`` (EMULATED_SIZES for emulated bf16) in
    ``dtype`` on ``device``."""
    sizes = EMULATED_SIZES if emulated_bf16(dtype, device) else sizes
    return max((_matmul_flops(device, dtype, n, repeats), n) for n in sizes)


# Datasheet dense (not 2:4 sparse) bf16 tensor-core peaks of one GPU, TFLOP/s, matched against
# torch.cuda.get_device_name(): the first entry whose words all appear in the name wins.
KNOWN_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
    ("A10G", 70.0),
)


def known_bf16_peak(device_name: str) -> tuple[float, str] | None:
    """(FLOP/s, entry) of a known GPU's datasheet dense bf16 peak, or None."""
    for key, tflops in KNOWN_BF16_PEAKS:
        if all(word in device_name for word in key.split()):
            return tflops * 1e12, key
    return None


@functools.cache
def _measured(device: str, dtype: torch.dtype) -> tuple[float, int]:
    return matmul_peak(device, dtype, QUICK_SIZES[device_type(device)], QUICK_REPEATS)


def device_peak(device: str, dtype: torch.dtype, configured_tflops: float = 0.0) -> tuple[float, str]:
    """The peak FLOP/s a run's MFU is stated against, and where it comes from (a few words).

    ``configured_tflops`` > 0 wins; then, for a bf16 run on a known GPU, its datasheet figure;
    otherwise a quick matmul measurement in the run's dtype, once per process and device.
    """
    short = str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
    if configured_tflops > 0:
        return configured_tflops * 1e12, f"{configured_tflops:g} TFLOP/s (train.peak_tflops)"
    if device_type(device) == "cuda" and dtype == torch.bfloat16:
        known = known_bf16_peak(torch.cuda.get_device_name(device))
        if known is not None:
            return known[0], f"{known[0] / 1e12:g} TFLOP/s ({known[1]} dense bf16 datasheet)"
    flops, n = _measured(device, dtype)
    return flops, f"{flops / 1e12:.3g} TFLOP/s ({short} {n}^3 matmul measured at start)"


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    return flops_per_token * tokens_per_s / peak_flops if peak_flops > 0 else float("nan")


def memory_bytes(device: str) -> dict:
    """Memory of this process now: CUDA ``mem_bytes`` (allocated) and ``mem_peak_bytes`` (its high-water
    mark); CPU ``mem_bytes`` (resident set) and ``mem_peak_bytes`` (max resident set)."""
    if device_type(device) == "cuda":
        return {"mem_bytes": torch.cuda.memory_allocated(device),
                "mem_peak_bytes": torch.cuda.max_memory_allocated(device)}
    rss = 0
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"mem_bytes": rss or peak, "mem_peak_bytes": peak}


def reset_peak_memory(device: str) -> bool:
    """Count the memory high-water mark from here (CUDA; on a CPU, Linux's peak RSS, reset through
    /proc/self/clear_refs). False where it cannot be reset: :func:`peak_memory` then gives the process's."""
    if device_type(device) == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(device: str, reset: bool) -> tuple[int, str]:
    """(bytes, what they are): the high-water mark since :func:`reset_peak_memory` (which gave ``reset``)."""
    if device_type(device) == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    if reset:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024, "process peak RSS during this benchmark (VmHWM)"
        except (OSError, ValueError, IndexError):
            pass
    return memory_bytes("cpu")["mem_peak_bytes"], "process max RSS since start (getrusage)"


# --- measuring training steps (gpt2lab bench, benchmarks/) ------------------------------------

BUSY_CPU_SHARE = 0.85  # below this cpu share (see time_steps) other processes took a noticeable part of the CPU


def prepare_device(device: str) -> str:
    """The device a measurement runs on, with training's backend settings."""
    device = resolve_device(device)
    set_backends(device)  # as in training: TF32 for any fp32 matmul left outside autocast
    return device


def measure_peaks(device: str = "auto", repeats: int = 5, sizes: tuple[int, ...] | None = None) -> dict:
    """bf16 and fp32 matmul peaks on one device, measured one after the other in this process: each the
    best rate over the sizes of PEAK_SIZES (or ``sizes``, for both dtypes); a known GPU's datasheet peak too."""
    device = prepare_device(device)
    peaks: dict = {"device": device, "bf16_native": not emulated_bf16(torch.bfloat16, device)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        flops, n = matmul_peak(device, dtype, sizes or PEAK_SIZES[device_type(device), dtype], repeats)
        peaks[f"peak_{name}_flops"], peaks[f"peak_{name}_n"] = flops, n
    peaks["fp32_tf32"] = device_type(device) == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
    known = known_bf16_peak(torch.cuda.get_device_name(device)) if device_type(device) == "cuda" else None
    if known is not None:  # MFU against the datasheet too, as llm.c and others report it
        peaks["datasheet_bf16_flops"], peaks["datasheet_name"] = known
    peaks["matmul_repeats"] = repeats
    return peaks


def set_peaks(result: dict, peaks: dict) -> dict:
    """(Re)compute a result's MFU figures against ``peaks`` (from :func:`measure_peaks`)."""
    def of(peak: float) -> float:
        return mfu(result["flops_per_token"], result["tokens_per_s"], peak)

    result["peak_bf16_tflops"] = peaks["peak_bf16_flops"] / 1e12
    result["peak_fp32_tflops"] = peaks["peak_fp32_flops"] / 1e12
    result["mfu"] = of(peaks["peak_bf16_flops"])  # the headline: training runs under bf16 autocast
    result["mfu_fp32"] = of(peaks["peak_fp32_flops"])
    if peaks.get("datasheet_bf16_flops"):
        result["mfu_datasheet"] = of(peaks["datasheet_bf16_flops"])
    return result


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_steps(one_step, device: str, steps: int, warmup: int, retry, log: Callable[[str], None]):
    """Warm-up steps, then ``steps`` timed ones, again while ``retry`` (of the attempts so far) gives a
    reason; returns (warm-up times, the last attempt's step times, its last loss, the attempts)."""
    warmup_times = []
    for i in range(warmup):
        dt, _ = one_step(i)
        warmup_times.append(dt)
        log(f"warm-up step {i + 1}/{warmup} {dt:.2f} s")
    attempts: list[dict] = []
    while True:
        step_times, loss_value = [], float("nan")
        cpu0 = _process_cpu_seconds()
        for i in range(steps):
            dt, loss_value = one_step(warmup + len(attempts) * steps + i)
            step_times.append(dt)
            log(f"step {i + 1}/{steps} {dt * 1000:.0f} ms")
        total = sum(step_times)
        # CPU time this process got / (wall time x torch threads) over the timed steps. On a quiet CPU
        # it sits near 1 (PyTorch's threads spin while they wait); well below that, other processes
        # took CPU from the benchmark and the timings are low.
        cpu_share = None
        if device_type(device) == "cpu":
            cpu_share = (_process_cpu_seconds() - cpu0) / (total * torch.get_num_threads())
        attempts.append({"ms_per_step": 1000 * total / steps, "cpu_share": cpu_share})
        reason = retry(attempts) if retry is not None else None
        if reason is None:
            return warmup_times, step_times, loss_value, attempts
        log(f"{reason}; timing again")

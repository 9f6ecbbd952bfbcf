"""Where and in what precision computation runs: device, dtype, autocast and backend flags.

Every command (train, eval, sample, bench) decides these here and nowhere else, so a device
string is mapped to "cuda"/"cpu" once and TF32 is switched on in one place.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from .errors import UserError

DTYPES = ("auto", "bfloat16", "float32")


def device_type(device: str | torch.device) -> str:
    """"cuda" for any CUDA device ("cuda", "cuda:3"), else "cpu"."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def resolve_device(device: str) -> str:
    """``auto`` -> cuda where available, else cpu; refuses a CUDA device this machine lacks."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: no CUDA GPU here (or this PyTorch build has no CUDA); use cpu")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), so cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1}")
    elif device != "cpu":
        raise UserError(f"device {device!r}: choose auto, cpu, cuda or cuda:N")
    return device


@functools.cache  # the hardware does not change; asked on every Muon step
def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def emulated_bf16(dtype: torch.dtype, device: str | torch.device) -> bool:
    """bf16 on a CPU without AVX-512 BF16 or AMX: oneDNN emulates it at about 1 GFLOP/s, 100x slower than fp32."""
    return dtype == torch.bfloat16 and device_type(device) == "cpu" and not cpu_supports_bf16()


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The autocast dtype for ``name`` (auto, bfloat16, float32) on ``device`` (a device or device type):
    auto is bfloat16 where the hardware runs it natively, else float32."""
    if name not in DTYPES:
        raise UserError(f"dtype {name!r}: choose auto, bfloat16 or float32")
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device_type(device) == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def autocast_for(device: str | torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (a device or device type); nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=dtype)


def set_backends(device: str, threads: int = 0, deterministic: bool = False) -> None:
    """Process-wide flags: TF32 for fp32 matmuls left outside autocast on GPUs, CPU threads, determinism."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace; set before its first use (CUDA docs)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device_type(device) == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work (for timing); nothing on CPU."""
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)

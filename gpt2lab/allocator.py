"""The memory allocator a CPU run uses: tcmalloc where it is installed, else glibc's.

A training step frees and allocates the same large buffers every step. glibc gives every block
above its mmap threshold (at most 32 MiB) back to the kernel on free, so each step faults them in
again page by page; tcmalloc keeps and reuses them. On the 2-core CI machine that doubles the
quickstart model's tokens/s (benchmarks/bench_malloc.py, docs/performance.md). An allocator can
only be chosen before a process starts, so the ``gpt2lab`` command re-runs itself once with
tcmalloc in ``LD_PRELOAD`` (same PID, same arguments: :func:`reexec_with_tcmalloc`).

``GPT2LAB_ALLOCATOR=system`` keeps glibc's. Install tcmalloc with ``apt install
libtcmalloc-minimal4`` (Debian, Ubuntu) or your system's gperftools package.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "GPT2LAB_ALLOCATOR"  # auto (default): tcmalloc where installed; system: glibc's
LIBS = ("tcmalloc_minimal", "tcmalloc")


def find_tcmalloc() -> str | None:
    """The shared library name of an installed tcmalloc (``libtcmalloc_minimal.so.4``), or None."""
    if not sys.platform.startswith("linux"):
        return None
    for name in LIBS:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def in_use() -> str:
    """Which allocator this process runs on: ``tcmalloc`` (loaded, e.g. preloaded) or ``system``."""
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" if "libtcmalloc" in f.read() else "system"
    except OSError:
        return "system"


def reexec_with_tcmalloc(argv: list[str]) -> None:
    """Replace this process by ``python -m gpt2lab ARGV`` with tcmalloc preloaded, when it is installed,
    not loaded yet, and ``GPT2LAB_ALLOCATOR`` is unset or ``auto``. Otherwise return and carry on."""
    if os.environ.get(ENV, "auto") != "auto" or in_use() == "tcmalloc":
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    preload = " ".join(x for x in (lib, os.environ.get("LD_PRELOAD", "")) if x)
    env = {**os.environ, "LD_PRELOAD": preload, ENV: "tcmalloc"}  # tcmalloc: never re-run again
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "gpt2lab", *argv], env)

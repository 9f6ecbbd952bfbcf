"""The memory allocator a CPU run uses: a fast one that keeps freed memory, rather than glibc's.

A training step frees and allocates the same large buffers every step. glibc gives every block above its mmap
threshold (at most 32 MiB) back to the kernel on free, so each step faults them in again page by page: about half
of a CPU step on the 2-core CI machine. tcmalloc and mimalloc keep and reuse them (docs/performance.md, "The
allocator"). An allocator can only be chosen before a process starts, so the ``gpt2lab`` command re-runs itself
once with the library in ``LD_PRELOAD`` (same PID, same arguments: :func:`reexec_with_allocator`).

Which one, by ``GPT2LAB_ALLOCATOR``:

- ``auto`` (the default): the first of :data:`PREFERENCE` that is there. mimalloc comes with the install (the
  ``cmeel-mimalloc`` wheel, a dependency on Linux), and with its freed pages kept it was the fastest measured,
  tcmalloc included (1.05x tcmalloc on the quickstart's shape, 1.13x on gpt2's); tcmalloc where the system has
  it (``apt install libtcmalloc-minimal4``) and mimalloc is not there;
- ``mimalloc`` or ``tcmalloc``: that one (glibc's when it is not there);
- ``system``: glibc's, untouched.

:func:`in_use` says which one this process runs on, for ``environment.json``.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
import sysconfig

ENV = "GPT2LAB_ALLOCATOR"
CHOICES = ("auto", "mimalloc", "tcmalloc", "system")
PREFERENCE = ("mimalloc", "tcmalloc")  # auto: the first one found; mimalloc measured fastest (bench_malloc.py)
# mimalloc's own settings for a training process: keep freed pages instead of returning them after 10 ms, so a
# step reuses the last step's (the point of it; MIMALLOC_* already set by the user win)
MIMALLOC_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}


def find_tcmalloc() -> str | None:
    """The shared library name of an installed tcmalloc (``libtcmalloc_minimal.so.4``), or None."""
    if not sys.platform.startswith("linux"):
        return None
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def find_mimalloc() -> str | None:
    """The path of mimalloc's shared library from the ``cmeel-mimalloc`` wheel (site-packages/cmeel.prefix/lib),
    or None."""
    if not sys.platform.startswith("linux"):
        return None
    for site in dict.fromkeys([sysconfig.get_paths()["platlib"], sysconfig.get_paths()["purelib"], *sys.path]):
        found = sorted(glob.glob(os.path.join(site, "cmeel.prefix", "lib", "libmimalloc.so.*")))
        if found:
            return found[0]
    return None


FINDERS = {"tcmalloc": find_tcmalloc, "mimalloc": find_mimalloc}


def in_use() -> str:
    """Which allocator this process runs on: ``tcmalloc``, ``mimalloc`` (loaded, e.g. preloaded) or ``system``."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    return next((name for name in FINDERS if f"lib{name}" in maps), "system")


def choose(setting: str) -> tuple[str, str] | None:
    """(name, library) of the allocator ``setting`` asks for and that is there; None for glibc's."""
    names = PREFERENCE if setting == "auto" else (setting,) if setting in FINDERS else ()
    for name in names:
        lib = FINDERS[name]()
        if lib:
            return name, lib
    return None


def reexec_with_allocator(argv: list[str]) -> None:
    """Replace this process by ``python -m gpt2lab ARGV`` with the chosen allocator preloaded, unless
    ``GPT2LAB_ALLOCATOR`` says ``system``, one is loaded already, or none is there. Otherwise return."""
    setting = os.environ.get(ENV, "auto")
    if setting not in CHOICES or in_use() != "system":
        return
    chosen = choose(setting)
    if chosen is None:
        return
    name, lib = chosen
    preload = " ".join(x for x in (lib, os.environ.get("LD_PRELOAD", "")) if x)
    extra = {k: v for k, v in MIMALLOC_ENV.items() if k not in os.environ} if name == "mimalloc" else {}
    env = {**os.environ, **extra, "LD_PRELOAD": preload, ENV: name}  # the child finds it loaded: no second re-run
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "gpt2lab", *argv], env)

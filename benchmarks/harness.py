"""What the benchmark scripts share: timing, the machine description, the busy-machine warning,
retrying busy cases, and writing a results file.

The timer, the machine description and the warning are also what ``gpt2lab bench`` needs, and
the package cannot import this folder, so they live in :mod:`gpt2lab.perf` and are re-exported
here; a script imports everything from this one module (a script runs as ``python benchmarks/x.py``,
so this folder is on its path; tests/test_bench.py puts it there for the tests):

- ``timed(fn, device)`` -> (seconds, fn()); ``time_cases({name: fn}, repeats, warmup, device)`` ->
  each case's timed seconds, rounds alternating the cases; ``best_time(fn, repeats, warmup, device)``.
  GPU work is waited for inside every timing.
- ``start(device, **versions)``: describe the machine (CPU model and flags or GPU, threads, cores,
  torch, host, load average), log it and warn when other work runs on it; returns the description.
- ``retry_while_busy(times)``: for ``gpt2lab.bench.bench_train``'s ``retry``: time a case's steps
  again, up to ``times`` more times, while other processes took the CPU from them.
- ``write_results(path, machine, doc)``: the JSON file, written atomically, with the command line
  and the machine description in front of ``doc``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # benchmark this checkout's gpt2lab, not whichever one is installed

from gpt2lab.bench import stderr_log as log  # noqa: E402,F401  (re-exported for the scripts)
from gpt2lab.device import resolve_device  # noqa: E402
from gpt2lab.perf import (  # noqa: E402,F401  (re-exported for the scripts)
    BUSY_CPU_SHARE,  # noqa: E402
    best_time,
    describe_machine,
    machine_line,
    time_cases,
    timed,
    warn_if_busy,
)


def start(device: str = "cpu", **versions: str) -> dict:
    """The machine description (plus ``versions`` of other libraries timed, e.g. transformers),
    logged with a warning when the machine is busy. Call it before measuring: it holds the load then."""
    device = resolve_device(device)
    machine = {**describe_machine(device), **versions}
    log(machine_line(machine) + "".join(f" | {k} {v}" for k, v in versions.items()))
    warn_if_busy(device, log)
    return machine


def retry_while_busy(times: int, min_cpu_share: float = BUSY_CPU_SHARE):
    """A ``retry`` for ``bench_train``: why to time the steps again while the last attempt's cpu share
    (CPU time / (wall time x threads)) is below ``min_cpu_share``, at most ``times`` more times."""
    def retry(attempts: list[dict]) -> str | None:
        share = attempts[-1]["cpu_share"]
        if share is None or share >= min_cpu_share or len(attempts) > times:
            return None
        return f"cpu share {share:.2f} < {min_cpu_share}: other processes took CPU"

    return retry


def data_dir() -> Path:
    """The shared data folder: $GPT2LAB_DATA, else ../shared/data next to this checkout."""
    return Path(os.environ.get("GPT2LAB_DATA", ROOT.parent / "shared" / "data"))


def wikipedia_shards(data: str | None, out: Path) -> Path:
    """The shared Wikipedia articles as shards with 262,144 held-out tokens: ``data`` if given, else OUT/data,
    prepared there the first time."""
    folder = Path(data) if data else out / "data"
    if not (folder / "manifest.json").is_file():
        src = data_dir() / "corpora" / "wikipedia-en.jsonl"
        subprocess.run([sys.executable, "-m", "gpt2lab", "prepare", str(src), "--out", str(folder),
                        "--val-tokens", "262144"], cwd=ROOT, check=True)
    return folder


def train_logged(args: list[str], log_file: Path) -> tuple[int, float]:
    """``gpt2lab train ARGS`` in a subprocess from the checkout, its output in ``log_file``: (exit code, wall s)."""
    t = time.perf_counter()
    with open(log_file, "w") as f:
        r = subprocess.run([sys.executable, "-m", "gpt2lab", "train", *args], cwd=ROOT, stdout=f,
                           stderr=subprocess.STDOUT)
    return r.returncode, time.perf_counter() - t


def default_out(kind: str) -> Path:
    """benchmarks/results/<kind>-<host>.json: one file per benchmark and machine."""
    return RESULTS_DIR / f"{kind}-{platform.node() or 'unknown'}.json"


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def write_results(path: str | Path, machine: dict, doc: dict) -> Path:
    """Write ``{"command", "machine", **doc}`` as JSON to ``path``.

    The text goes to a temporary file in the same folder that is then renamed over ``path``, so an
    interrupted run (scripts rewrite the file after each case) leaves the last complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"command": command_line(), "machine": machine, **doc}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

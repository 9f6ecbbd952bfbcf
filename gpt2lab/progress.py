"""What a long command shows while it runs: one status of named fields, live or as plain lines.

On a terminal (stdout is a tty) the status is a live line redrawn in place, with the log lines
printed above it; in a file, a pipe or CI the same fields are printed as plain lines. The live
line is tqdm's: one small pure-Python package that redraws a single line, sizes it to the
terminal, and has ``tqdm.write`` for the lines in between. rich draws richer panels, but a
training log is one line of figures plus events, and tqdm is what Hugging Face's libraries already
bring along. Without tqdm installed, the plain lines are printed.

``gpt2lab train`` (through :class:`TrainConsole`, a sink of :class:`gpt2lab.metrics.MetricsWriter`)
shows step/total, tokens seen, loss, learning rate, gradient norm, tokens/s, MFU, memory,
elapsed time and ETA; ``gpt2lab prepare`` shows documents, tokens, MB/s, shards and, when the
size of the input is known, the ETA.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable

MODES = ("auto", "bar", "lines")


def live_wanted(mode: str, log: Callable[[str], None]) -> bool:
    """Whether to draw the live line: ``bar``, or ``auto`` when the log is plain ``print`` to a terminal.
    A caller's own ``log`` function always gets plain lines."""
    if mode == "bar":
        return True
    return mode == "auto" and log is print and sys.stdout.isatty()


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def fmt_count(n: float) -> str:
    """1,234 -> 1.23k, 5.1e6 -> 5.10M, 1.1e10 -> 11.0B."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class Status:
    """One status line of fields: a live tqdm line (``live``), else each :meth:`show` is one ``log`` line."""

    def __init__(self, log: Callable[[str], None], live: bool, total: int | None = None, initial: int = 0,
                 label: str = "step"):
        self.log, self.label, self.total = log, label, total
        self._bar = None
        if live:
            with contextlib.suppress(ImportError):  # no tqdm: plain lines
                self._bar = _live_bar(total, initial, f"{label} {initial:>6}/{total}" if label and total else label)

    @property
    def live(self) -> bool:
        return self._bar is not None

    def write(self, msg: str) -> None:
        """A line of the log (above the live line)."""
        if self._bar is not None:
            self._bar.write(msg, file=sys.stdout)
        else:
            self.log(msg)

    def show(self, n: int, fields: list[str]) -> None:
        head = [f"{self.label} {n:>6}" + (f"/{self.total}" if self.total else "")] if self.label else []
        if self._bar is None:
            self.log(" | ".join(head + fields))
            return
        self._bar.set_description_str("".join(head), refresh=False)
        self._bar.fields = " | ".join(fields)
        self._bar.update(n - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _live_bar(total: int | None, initial: int, desc: str):
    """A tqdm line on stdout: ``desc``, a bar when the total is known, then the fields."""
    from tqdm import tqdm

    class Bar(tqdm):
        fields = ""

        @property
        def format_dict(self):  # tqdm's way to add a field to bar_format
            return {**super().format_dict, "fields": self.fields}

    fmt = "{desc} {percentage:3.0f}%|{bar:10}| {fields}" if total else "{desc}{fields}"
    return Bar(total=total, initial=initial, desc=desc, file=sys.stdout, bar_format=fmt, dynamic_ncols=True,
               leave=True, mininterval=0.2)


def train_fields(v: dict) -> list[str]:
    """The status fields of a train record (see :meth:`gpt2lab.train.Trainer._log_step`)."""
    # optim.lr's scheduled value; with Muon, its matrices' rate beside it (the AdamW groups' is lr)
    lr = f"lr {v['lr']:.2e}" + (f" muon {v['lr_muon']:.2e}" if v.get("lr_muon") is not None else "")
    fields = [f"tokens {fmt_count(v['tokens'])}", f"loss {v['loss']:.4f}", lr,
              f"norm {v['grad_norm']:.3f}", f"{v['tok_per_s']:,.0f} tok/s"]
    if v.get("mfu") is not None and math.isfinite(v["mfu"]):
        fields.append(f"MFU {100 * v['mfu']:.1f}%")
    if v.get("mem_bytes"):
        fields.append(f"mem {fmt_bytes(v['mem_bytes'])}")
    fields += [f"{v['step_time'] * 1000:.0f} ms/step", f"elapsed {fmt_time(v['elapsed_s'])}",
               f"ETA {fmt_time(v['eta_s'])}"]
    return fields


class TrainConsole:
    """The terminal as a sink of the metrics stream: a train record becomes the status line."""

    def __init__(self, log: Callable[[str], None], live: bool, max_steps: int, start_step: int):
        self.status = Status(log, live, total=max_steps, initial=start_step)

    def write(self, msg: str) -> None:
        self.status.write(msg)

    def record(self, kind: str, step: int, values: dict) -> None:
        if kind == "train":
            self.status.show(step, train_fields(values))

    def close(self) -> None:
        self.status.close()


class Clock:
    """Time of the steps of a run: elapsed, tokens/s, ETA. The first step (compilation, warm-up) is
    left out of the rates."""

    def __init__(self, start_step: int, max_steps: int):
        self.start_step, self.max_steps = start_step, max_steps
        self.t0 = time.perf_counter()
        self.timed_steps, self.timed_seconds, self.recent = 0, 0.0, None

    def add(self, step: int, dt: float) -> None:
        """Optimizer step ``step`` (0-based) took ``dt`` seconds."""
        if step > self.start_step:
            self.timed_steps, self.timed_seconds = self.timed_steps + 1, self.timed_seconds + dt
            self.recent = dt if self.recent is None else 0.9 * self.recent + 0.1 * dt

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self, done: int, dt: float) -> float:
        return (self.max_steps - done) * (self.recent or dt)


class SpikeWatch:
    """A loss above ``factor`` times the mean of the last ``window`` losses is a spike (factor 0: off).
    Spikes are not added to the window, so one spike does not hide the next."""

    def __init__(self, factor: float, window: int):
        self.factor, self.window = factor, window
        self.recent: list[float] = []

    def check(self, loss: float) -> float | None:
        """The recent mean when ``loss`` is a spike, else None."""
        if self.factor <= 0 or not math.isfinite(loss):
            return None
        full = len(self.recent) >= self.window
        mean = sum(self.recent) / len(self.recent) if self.recent else 0.0
        if full and loss > self.factor * mean:
            return mean
        self.recent = (self.recent + [loss])[-self.window:]
        return None


class PrepareStatus:
    """``gpt2lab prepare``'s status: documents, tokens, MB/s, shards, and the ETA when the size is known
    (``total_bytes`` of uncompressed text inputs, or ``max_tokens``). Plain lines come every ``every`` seconds."""

    def __init__(self, log: Callable[[str], None], live: bool, total_bytes: int | None = None,
                 max_tokens: int | None = None, every: float = 30.0):
        self.status = Status(log, live, label="")
        self.total_bytes, self.max_tokens, self.every = total_bytes, max_tokens, every
        self.t0 = self.last = time.perf_counter()
        self.bytes = 0

    def write(self, msg: str) -> None:
        self.status.write(msg)

    def update(self, docs: int, tokens: int, start_tokens: int, nbytes: int, shards: int, force: bool = False) -> None:
        """``nbytes`` more bytes of text were read; ``tokens`` done in all, ``start_tokens`` of them before this run."""
        self.bytes += nbytes
        now = time.perf_counter()
        if not (force or self.status.live or now - self.last >= self.every):
            return
        self.last = now
        secs = max(now - self.t0, 1e-9)
        mb_s, tok_s = self.bytes / secs / 1e6, (tokens - start_tokens) / secs
        fields = [f"{docs:,} documents", f"{tokens:,} tokens", f"{mb_s:.2f} MB/s", f"{tok_s:,.0f} tokens/s",
                  f"{shards} shards", f"elapsed {fmt_time(secs)}"]
        if self.max_tokens and tok_s > 0:
            fields.append(f"ETA {fmt_time((self.max_tokens - tokens) / tok_s)}")
        elif self.total_bytes and self.bytes and mb_s > 0:
            fields.append(f"ETA {fmt_time(max(self.total_bytes - self.bytes, 0) / (mb_s * 1e6))}")
        self.status.show(docs, fields)

    def close(self) -> None:
        self.status.close()

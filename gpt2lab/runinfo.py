"""A run's record of itself: what it ran on (``environment.json``), whether it runs (``status.json``),
and the list of runs that ``gpt2lab runs`` prints.

**environment.json** is written by rank 0 at every start and resume: package versions, the git
commit of the gpt2lab source (and whether the tree had uncommitted changes), Python, host, device
and the peak FLOP/s its MFU is stated against, world size, the exact command line, the working
folder, and the sha256 of the data's manifest.json. The records of earlier starts of the same run
are kept under ``earlier``.

**status.json** is rank 0's heartbeat: ``state`` (running, finished, stopped), ``pid``, ``host``,
``step``/``max_steps`` and ``updated`` (a Unix time rewritten every HEARTBEAT_S seconds by a
thread, so a long evaluation or checkpoint does not look like a dead run). A run that ends writes
``finished``; one that fails or is interrupted writes ``stopped`` with the message. A run killed
without a chance to write (``kill -9``, out of memory, a lost node) still says ``running``, so
:func:`run_state` checks it: on this host, running means that process id is alive; from another
host (a shared filesystem), running means a heartbeat younger than STALE_S seconds.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .allocator import in_use as allocator_in_use
from .checkpoint import list_checkpoints, load_checkpoint_config
from .config import MODEL_PRESETS
from .errors import UserError, brief
from .fileio import file_sha256, write_json_atomic
from .layout import CHECKPOINTS_DIR, ENV_FILE, METRICS_FILE, RUN_CONFIG, STATUS_FILE, step_of
from .lock import pid_alive
from .metrics import read_metrics, warn_once
from .progress import fmt_count, fmt_time

HEARTBEAT_S = 30.0
STALE_S = 180.0
PACKAGES = ("torch", "numpy", "tiktoken", "safetensors", "pydantic", "pyyaml", "tqdm", "tensorboard", "wandb",
            "matplotlib", "transformers", "datasets", "lm_eval")


# --- environment.json --------------------------------------------------------------------------


def package_versions() -> dict:
    """Installed versions of gpt2lab's dependencies (those not installed are left out)."""
    out = {"python": platform.python_version(), "gpt2lab": __version__}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # not installed: left out
            out[name] = importlib.metadata.version(name)
    return out


def git_state() -> dict | None:
    """{"commit", "dirty"} of the git checkout gpt2lab runs from; None for an installed package."""
    src = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10)
        if top.returncode or Path(top.stdout.strip()).resolve() / "gpt2lab" != src:
            return None  # not a checkout, or gpt2lab installed inside some other repository
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if not dirty.returncode else None}


def environment(cfg, world_size: int, device: str, device_name: str, dtype: str, peak_flops: float,
                peak_source: str, start_step: int) -> dict:
    """What this start of a run runs on (see the module's docstring)."""
    manifest = Path(cfg.data.dir) / "manifest.json"
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start_step": start_step,
        "command": shlex.join(argv),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "packages": package_versions(),
        "git": git_state(),
        "device": device,
        "device_name": device_name,
        "dtype": dtype,
        "peak_flops": peak_flops,
        "peak_source": peak_source,
        "world_size": world_size,
        "allocator": allocator_in_use(),
        "data_dir": str(cfg.data.dir),
        "data_manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
    }


def write_environment(run_dir: str | os.PathLike, env: dict) -> None:
    """RUN_DIR/environment.json: this start's record, the earlier starts' under ``earlier``."""
    path = Path(run_dir) / ENV_FILE
    old = read_json(path)
    earlier = old.pop("earlier", []) if old else []
    earlier = [e for e in earlier if isinstance(e, dict)] + [old] if old else []  # a damaged file: what can be kept
    write_json_atomic(path, {**env, "earlier": earlier})


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# The fields of environment.json that readers format (and their types); one of another type is left out.
ENV_TYPES = {"started": str, "start_step": int, "command": str, "cwd": str, "host": str, "packages": dict,
             "git": dict, "device": str, "device_name": str, "dtype": str, "peak_flops": (int, float),
             "peak_source": str, "world_size": int, "allocator": str, "data_dir": str, "data_manifest_sha256": str,
             "earlier": list}


def read_environment(run_dir: str | os.PathLike) -> dict | None:
    """RUN_DIR/environment.json as readers use it: None when it is missing; a damaged file (not a JSON object, or
    fields of another type) is read as far as it can be, with a warning naming the file and what was left out."""
    path = Path(run_dir) / ENV_FILE
    if not path.exists():
        return None
    env = read_json(path)
    if env is None:
        warn_once(f"{path} is damaged (not a JSON object); its environment is not shown")
        return None
    return read_environment_fields(env, path)


def read_environment_fields(env: dict, path: Path | None = None) -> dict:
    """``env`` (environment.json's content) without the fields of another type than gpt2lab writes; a warning
    names ``path`` and them when there were any."""
    env, dropped = _typed_fields(env)
    git = env.get("git")
    if git is not None and not (isinstance(git.get("commit"), str) and git.get("dirty") in (True, False, None)):
        dropped.append("git")
        env.pop("git")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.get("packages", {}).items()):
        dropped.append("packages")
        env.pop("packages")
    earlier = []
    for e in env.get("earlier", []):
        kept, bad = _typed_fields(e) if isinstance(e, dict) else ({}, ["an entry"])
        earlier.append(kept)
        dropped += [f"earlier: {b}" for b in bad]
    if "earlier" in env:
        env["earlier"] = earlier
    if dropped and path is not None:
        warn_once(f"{path}: left out fields of the wrong type ({', '.join(dropped[:5])}); the file is damaged")
    return env


def _typed_fields(record: dict) -> tuple[dict, list[str]]:
    """``record`` without the ENV_TYPES fields of another type (None stays: a field not known), and their names."""
    bad = [k for k, tp in ENV_TYPES.items() if record.get(k) is not None and
           (not isinstance(record[k], tp) or (tp is int and isinstance(record[k], bool)))]
    return {k: v for k, v in record.items() if k not in bad}, bad


def environment_lines(env: dict) -> list[str]:
    """The environment as ``key: value`` lines for ``gpt2lab report``."""
    env = read_environment_fields(env)
    git = env.get("git")
    git_text = "not a git checkout" if not git else (
        git["commit"][:12] + (" (uncommitted changes)" if git.get("dirty") else ""))
    pk = env.get("packages", {})
    lines = [
        f"command: {env.get('command')}",
        f"started: {env.get('started')} at step {env.get('start_step')} on {env.get('host')} (cwd {env.get('cwd')})",
        f"gpt2lab: {pk.get('gpt2lab')}, git {git_text}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in pk.items() if k != "gpt2lab"),
        f"device: {env.get('device')} ({env.get('device_name')}), {env.get('dtype')}, "
        f"world size {env.get('world_size')}"
        + (f", allocator {env['allocator']}" if env.get("allocator") else ""),
        f"MFU peak: {env.get('peak_source')}",
        f"data: {env.get('data_dir')} (manifest sha256 {env.get('data_manifest_sha256')})",
    ]
    if env.get("earlier"):
        lines.append(f"earlier starts: {len(env['earlier'])} (" + "; ".join(
            f"step {e.get('start_step')} on {e.get('started')}" for e in env["earlier"]) + ")")
    return lines


# --- status.json -------------------------------------------------------------------------------


class Heartbeat:
    """Rank 0's status.json: ``running`` from :meth:`start`, refreshed by a thread every ``every``
    seconds and by :meth:`update`, then ``finished`` or ``stopped`` from :meth:`stop`."""

    def __init__(self, run_dir: str | os.PathLike, max_steps: int, every: float = HEARTBEAT_S):
        self.path = Path(run_dir) / STATUS_FILE
        self.every = every
        self.state = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "step": 0,
                      "max_steps": max_steps, "started": time.time()}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        with self._lock:
            self.state["updated"] = time.time()
            write_json_atomic(self.path, self.state)

    def start(self, step: int) -> None:
        self.state["step"] = step
        self._write()
        self._thread = threading.Thread(target=self._beat, name="gpt2lab-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._done.wait(self.every):
            with contextlib.suppress(OSError):  # a full disk: the training will say so itself
                self._write()

    def update(self, step: int) -> None:
        self.state["step"] = step

    def stop(self, state: str, message: str = "") -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.state.update(state=state, message=message)
        self._write()


def note_status(run_dir: str | os.PathLike, state: str, message: str, max_steps: int) -> None:
    """Rank 0's status.json outside the loop's Heartbeat: a torchrun restart setting up (``running``, saying so)
    or failing before it trains (``stopped``, with the error). The step stays the last one recorded."""
    path = Path(run_dir) / STATUS_FILE
    old = read_json(path) or {}
    step = old.get("step") if isinstance(old.get("step"), int) else 0
    now = time.time()
    write_json_atomic(path, {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "step": step,
                             "max_steps": max_steps, "started": now, "updated": now, "message": message})


# status.json's fields and what each must be (Heartbeat writes them); "state" is required.
STATUS_CHECKS = {
    "state": (lambda v: v in ("running", "finished", "stopped"), "running, finished or stopped"),
    "pid": (lambda v: type(v) is int and v > 0, "a process id"),
    "host": (lambda v: isinstance(v, str), "a host name"),
    "updated": (lambda v: type(v) in (int, float) and math.isfinite(v), "a Unix time"),
    "message": (lambda v: isinstance(v, str), "a string"),
}


def read_status(path: Path) -> dict | None:
    """status.json, checked: None (with a warning naming the file) when it is not a JSON object or a field has
    another type than Heartbeat writes (``"updated": "soon"``): its state is then unknown."""
    status = read_json(path)
    why = "not a JSON object" if status is None else "no 'state'" if "state" not in status else None
    for key, (ok, what) in STATUS_CHECKS.items():
        if why is None and key in status and not ok(status[key]):
            why = f"'{key}' is {brief(status[key])}, not {what}"
    if why is not None:
        warn_once(f"{path} is damaged ({why}); the run's state is told from its metrics instead")
        return None
    return status


def run_state(run_dir: str | os.PathLike, now: float | None = None) -> tuple[str, str]:
    """(running | finished | stopped, a few words why) from RUN_DIR/status.json, checked against the
    process and the heartbeat (see the module docstring). A run without status.json (made before gpt2lab
    wrote one) is finished when its last train record reached max_steps, else stopped."""
    now = time.time() if now is None else now
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return "", "no status.json"
    status = read_status(path)
    if status is None:
        return "", "damaged status.json"
    state, message = status["state"], status.get("message", "")
    if state != "running":
        return state, message
    if status.get("host") == socket.gethostname():
        if "pid" in status and pid_alive(status["pid"]):  # (os.kill of pid 0 would ask this process group)
            return "running", f"pid {status.get('pid')}"
        return "stopped", f"process {status.get('pid')} is gone (killed?)"
    age = now - status.get("updated", 0)
    if age < STALE_S:
        return "running", f"on {status.get('host')}, heartbeat {age:.0f} s ago"
    return "stopped", f"no heartbeat from {status.get('host')} for {fmt_time(age)}"


# --- gpt2lab runs ------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / RUN_CONFIG).is_file() and ((path / METRICS_FILE).is_file() or (path / CHECKPOINTS_DIR).is_dir())


def find_runs(root: str | os.PathLike) -> list[Path]:
    """``root`` itself when it is a run folder, else the run folders up to two levels below it."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    if is_run_dir(root):
        return [root]
    found = [p for p in sorted(root.glob("*")) + sorted(root.glob("*/*")) if p.is_dir() and is_run_dir(p)]
    return sorted(found)


def describe_model(m) -> str:
    """A preset's name when the shape is one, else layers x width."""
    shape = {"n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd}
    for name, preset in MODEL_PRESETS.items():
        if all(preset[k] == v for k, v in shape.items()) and preset.get("block_size", 1024) == m.block_size:
            return name
    return f"{m.n_layer}L/{m.n_embd}d"


def run_row(run_dir: Path) -> dict:
    """One run as ``gpt2lab runs`` lists it (None where it has no such figure yet)."""
    row: dict = {"run": str(run_dir), "name": run_dir.name}
    try:
        cfg = load_checkpoint_config(run_dir)
        row["model"], row["max_steps"] = describe_model(cfg.model), cfg.train.max_steps
    except UserError:
        row["model"], row["max_steps"] = "?", None
    records = read_metrics(run_dir, warn=warn_once) if (run_dir / METRICS_FILE).is_file() else []
    train = [r for r in records if r.get("kind") == "train"]
    last = train[-1] if train else {}
    row["steps"] = last.get("step", 0)
    row["tokens"] = last.get("tokens")
    row["train_loss"] = last.get("loss")
    val = [r for r in records if r.get("kind") == "val"]
    row["val_loss"] = val[-1].get("val_loss") if val else None
    row["val_bpb"] = val[-1].get("val_bpb") if val else None  # None for runs from before bits per byte
    hs = [r.get("completion_acc_norm") for r in records if r.get("kind") == "hellaswag"]
    hs = [h for h in hs if isinstance(h, (int, float))]
    row["best_hellaswag"] = max(hs) if hs else None
    state, why = run_state(run_dir)
    if not state:  # no status.json (a run of an older gpt2lab), or a damaged one
        done = row["max_steps"] is not None and row["steps"] >= row["max_steps"]
        state = "finished" if done else "stopped"
    row["status"], row["status_detail"] = state, why
    files = [run_dir / n for n in (STATUS_FILE, METRICS_FILE, RUN_CONFIG)] + list_checkpoints(run_dir)[-1:]
    row["updated"] = max((m for f in files if (m := _mtime(f)) is not None), default=None)
    return row


def _mtime(path: Path) -> float | None:
    """None for a file that is gone, also one a training run's retention removes while it is looked at."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_runs(root: str | os.PathLike) -> list[dict]:
    """List the run folders in a folder (itself, or up to two levels below it): model, steps done/total, tokens,
    last train and val loss, best HellaSwag, status, last update. Status comes from RUN_DIR/status.json: running
    while the training process is alive (on another host: while its heartbeat, rewritten every 30 s, is younger
    than 3 minutes).

    Returns a row for each run; ``gpt2lab runs`` prints them (``--help`` shows this text). A run whose files cannot
    be read (permissions, I/O) is left out with a warning naming it, so one bad folder never hides the others.

    Args:
        root: folder of runs
    """
    rows = []
    for p in find_runs(root):
        try:
            rows.append(run_row(p))
        except OSError as e:
            warn_once(f"{p}: cannot read {e.filename or 'its files'} ({e.strerror or e}); left out")
    return rows


def format_runs(rows: list[dict], root: str | os.PathLike = ".") -> str:
    if not rows:
        return f"no runs in {root} (a run folder holds config.yaml and metrics.jsonl or checkpoints/)"
    header = ["run", "model", "steps", "tokens", "train loss", "val loss", "val bpb", "best HellaSwag", "status",
              "updated"]

    def num(v, fmt="{:.4f}"):
        return "-" if v is None or isinstance(v, str) else fmt.format(v)

    table = [header]
    for r in rows:
        name = os.path.relpath(r["run"], root) if Path(root).resolve() != Path(r["run"]).resolve() else r["name"]
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updated"])) if r["updated"] else "-"
        table.append([name, r["model"], f"{r['steps']}/{r['max_steps'] or '?'}",
                      fmt_count(r["tokens"]) if r["tokens"] else "-", num(r["train_loss"]), num(r["val_loss"]),
                      num(r.get("val_bpb")), num(r["best_hellaswag"]), r["status"], updated])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i in (0, 1, 8, 9) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


# --- gpt2lab report ----------------------------------------------------------------------------


def run_figures(run_dir: str | os.PathLike) -> dict:
    """The figures of a run's report: train time (summed over its starts), median tokens/s and MFU,
    and the best checkpoint (the kept one with the lowest validation loss, else the newest)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir, warn=warn_once) if (run_dir / METRICS_FILE).is_file() else []
    train = [r for r in records if r.get("kind") == "train"]
    env = read_environment(run_dir) or {}
    starts = {e.get("start_step") for e in [env, *env.get("earlier", [])]}
    seconds, last = 0.0, 0.0
    for r in train:  # elapsed_s restarts at each start of the run: at the step after a start's, or where it drops
        e = r.get("elapsed_s")
        if isinstance(e, (int, float)):
            restarted = e < last or (isinstance(r.get("step"), int) and r["step"] - 1 in starts)
            seconds += e if restarted else e - last
            last = e

    def median(key):
        vals = sorted(r[key] for r in train[1:] if isinstance(r.get(key), (int, float)))
        return vals[len(vals) // 2] if vals else None

    val = {r["step"]: r.get("val_loss") for r in records if r.get("kind") == "val"}
    kept = list_checkpoints(run_dir)
    scored = [(val[step_of(p.name)], p) for p in kept if isinstance(val.get(step_of(p.name)), float)]
    best = min(scored)[1] if scored else (kept[-1] if kept else None)
    return {"train_seconds": seconds, "tok_per_s": median("tok_per_s"), "mfu": median("mfu"),
            "best_checkpoint": str(best) if best else None,
            "best_checkpoint_val_loss": min(scored)[0] if scored else None,
            "events": sum(1 for r in records if r.get("kind") == "event")}


def report_markdown(run_dir: str | os.PathLike, history: list[dict], plot: str | None) -> str:
    """The run as Markdown: status, final figures, the plot, the history table, environment, config."""
    run_dir = Path(run_dir)
    row, fig = run_row(run_dir), run_figures(run_dir)
    env = read_environment(run_dir)
    lines = [f"# Run `{run_dir.name}`", "", f"`{run_dir}`: {row['status']}"
             + (f" ({row['status_detail']})" if row["status_detail"] else ""), "", "## Figures", "",
             "| | |", "|---|---|"]

    def num(v, fmt="{:.4f}"):  # metrics keep nan and inf as the strings "nan" and "inf"
        return "-" if v is None else fmt.format(v) if isinstance(v, (int, float)) else str(v)

    figures = [("model", row["model"]), ("steps", f"{row['steps']} / {row['max_steps']}"),
               ("tokens", f"{row['tokens']:,}" if row["tokens"] else "-"),
               ("last train loss", num(row["train_loss"])), ("last val loss", num(row["val_loss"])),
               ("best HellaSwag (acc_norm)", num(row["best_hellaswag"])),
               ("best checkpoint", f"`{fig['best_checkpoint']}`" + (f" (val loss {fig['best_checkpoint_val_loss']:.4f})"
                                                                   if fig["best_checkpoint_val_loss"] else "")
                if fig["best_checkpoint"] else "-"),
               ("training time", fmt_time(fig["train_seconds"]) if fig["train_seconds"] else "-"),
               ("tokens/s (median)", num(fig["tok_per_s"], "{:,.0f}")),
               ("MFU (median)", num(None if fig["mfu"] is None else 100 * fig["mfu"], "{:.1f}%")
                + (f" against {env['peak_source']}" if env and env.get("peak_source") else "")),
               ("events (spikes, skipped steps)", str(fig["events"]))]
    lines += [f"| {k} | {v} |" for k, v in figures]
    if plot:
        lines += ["", f"![{run_dir.name}]({plot})"]
    if history:
        keys = [k for k in ("step", "tokens", "train_loss", "val_loss", "val_bpb", "completion_acc_norm",
                            "lm_eval_acc_norm", "lambada_acc", "lambada_ppl") if any(k in r for r in history)]
        lines += ["", "## Evaluations", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in history:
            lines.append("| " + " | ".join(num(r.get(k)) if isinstance(r.get(k), float) else str(r.get(k, "-"))
                                           for k in keys) + " |")
    if env:
        lines += ["", "## Environment", ""] + [f"- {line}" for line in environment_lines(env)]
    config = run_dir / RUN_CONFIG
    if config.is_file():
        lines += ["", "## Config", "", "```yaml", config.read_text(errors="replace").rstrip(), "```"]
    return "\n".join(lines) + "\n"

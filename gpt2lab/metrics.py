"""Run metrics: one JSON object per line in RUN_DIR/metrics.jsonl, and the other sinks of that one stream.

Every record has ``step`` and ``kind`` ("train", "val", "hellaswag", "lambada", "sample",
"event", ...) plus its values, so a run's history is read back with :func:`read_metrics` (and
plotted, compared, ...). :class:`MetricsWriter` sends each record to every sink: the file, then
TensorBoard (``train.tensorboard``: each number as ``kind/key``), Weights & Biases
(``train.wandb_project``: the same keys) and the console (the live status line or plain lines).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import UserError
from .fileio import write_atomic, write_json_atomic, write_jsonl_atomic
from .layout import EVALS_DIR, METRICS_FILE, TB_DIR, WANDB_DIR, WANDB_ID_FILE, eval_record_path, eval_record_step


class MetricsWriter:
    """``wandb``: keyword arguments of ``wandb.init`` (project, name, mode, config) or None; ``console``:
    an object with ``record(kind, step, values)`` and ``close()`` (see gpt2lab.progress.TrainConsole)."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False, wandb: dict | None = None,
                 console=None):
        self.run_dir = Path(run_dir)
        self.console = console
        self.path = self.run_dir / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # line-buffered: a killed run loses no whole line; open for the run's life, closed by close()
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        if self._file.tell() and not _ends_a_line(self.path):  # a line torn by a crash: the next record starts anew
            self._file.write("\n")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.tensorboard=true needs tensorboard: pip install tensorboard") from None
            self._tb = SummaryWriter(str(Path(run_dir) / TB_DIR))
        self._wandb = _start_wandb(self.run_dir, wandb) if wandb else None

    def log(self, kind: str, step: int, **values) -> None:
        record = {"kind": kind, "step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        numbers = {f"{kind}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None and numbers:
            self._wandb.log(numbers, step=step)
        if self.console is not None:
            self.console.record(kind, step, values)

    def record_evals(self, step: int, results: dict) -> None:
        """What was evaluated at ``step``, also kept as its own file (read by ``gpt2lab report``)."""
        write_json_atomic(eval_record_path(self.run_dir, step), {"step": step, **results})

    def close(self, failed: bool = False) -> None:
        if self.console is not None:
            self.console.close()
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=1 if failed else 0)
            self._wandb = None


def _start_wandb(run_dir: Path, kwargs: dict):
    """A wandb run writing under RUN_DIR/wandb/. Its id is kept in RUN_DIR/wandb/gpt2lab_run_id, so a
    resumed run continues the same wandb run. mode "offline" never touches the network (``wandb sync`` later)."""
    try:
        import wandb
    except ImportError:
        raise UserError("train.wandb_project needs wandb: pip install 'gpt2lab[wandb]'") from None
    folder = run_dir / WANDB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    write_atomic(id_file, run_id + "\n")
    try:
        return wandb.init(dir=str(run_dir), id=run_id, resume="allow", **kwargs)
    except wandb.errors.Error as e:  # not logged in, bad project name, no network in online mode
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserError(f"wandb could not start ({first}); check train.wandb_* or set "
                        "train.wandb_mode=offline") from None


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


# The fields readers (runs, report, plot) take as numbers. A record holding one of another type is damage,
# skipped as a line that is not a record is: counts are integers; the others may also be "nan", "inf" or "-inf",
# as _jsonable writes a non-finite value.
COUNT_FIELDS = frozenset({"tokens", "items", "val_tokens", "mem_bytes", "mem_peak_bytes"})
NUMBER_FIELDS = frozenset({"loss", "lr", "lr_muon", "grad_norm", "tok_per_s", "step_time", "mfu", "elapsed_s", "eta_s",
                           "val_loss", "val_bpb", "acc", "ppl", "completion_acc", "completion_acc_norm", "lm_eval_acc",
                           "lm_eval_acc_norm", "lm_eval_acc_bytes"})
NON_FINITE = frozenset({"nan", "inf", "-inf"})
_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A reader's warning about a damaged file, on stderr, once per process (``report`` reads a file several times)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None, bad_lines: list[int] | None = None,
                 warn: Callable[[str], None] | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl (of one ``kind``), oldest first.

    A line that is not a record (a torn last line from a killed run, or damage), or a record whose
    numeric fields (:data:`NUMBER_FIELDS`, :data:`COUNT_FIELDS`) are not numbers, is skipped; its
    number goes into ``bad_lines`` when given, and ``warn`` (e.g. :func:`warn_once`) is told of them
    all in one line naming the file, so a reader can say so."""
    path = Path(run_dir) / METRICS_FILE
    records, bad = [], []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            r = _record(line)
            if r is None:
                if line.strip():
                    bad.append(number)
            elif kind is None or r.get("kind") == kind:
                records.append(r)
    if bad_lines is not None:
        bad_lines.extend(bad)
    if bad and warn is not None:
        warn(damaged_lines(path, bad))
    return records


def damaged_lines(path: Path, numbers: list[int]) -> str:
    """The warning about damaged lines of a metrics file."""
    more = ", ..." if len(numbers) > 5 else ""
    return f"skipped {len(numbers)} damaged line(s) of {path} (line {', '.join(map(str, numbers[:5]))}{more})"


def _record(line: bytes) -> dict | None:
    if not line.endswith(b"\n"):
        return None
    try:
        r = json.loads(line)
    except ValueError:  # not UTF-8 or not JSON
        return None
    ok = isinstance(r, dict) and isinstance(r.get("kind"), str) and type(r.get("step")) is int
    return r if ok and all(_typed(k, v) for k, v in r.items()) else None


def _typed(key: str, value) -> bool:
    """Whether a record's field has the type readers take it as."""
    if key in COUNT_FIELDS:
        return type(value) is int
    if key in NUMBER_FIELDS:
        return type(value) in (int, float) or (isinstance(value, str) and value in NON_FINITE)
    return True


def truncate_metrics(run_dir: str | os.PathLike, after_step: int) -> int:
    """Drop records past ``after_step`` (logged after the checkpoint a run restarts from); return how many."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return 0
    records = read_metrics(run_dir)
    kept = [r for r in records if r.get("step", 0) <= after_step]
    if len(kept) < len(records) or not _ends_a_line(path):  # a torn last line goes too
        write_jsonl_atomic(path, kept)
    return len(records) - len(kept)


def _ends_a_line(path: Path) -> bool:
    """Whether the file is empty or its last byte ends a line."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def drop_history_after(run_dir: str | os.PathLike, step: int) -> int:
    """Drop metrics records and eval files past ``step``: they come from a run that stopped after
    its last checkpoint (or, on a fresh start, never reached one), and would appear twice. Returns
    how many were dropped."""
    dropped = truncate_metrics(run_dir, step)
    for old in (Path(run_dir) / EVALS_DIR).glob("step_*.json"):
        at = eval_record_step(old)
        if at is not None and at > step:
            old.unlink()
            dropped += 1
    return dropped

"""A run's evaluation history: validation loss and HellaSwag by step, from its metrics.jsonl.

``gpt2lab report RUN_DIR`` (:func:`run_report`) prints it as a table with the run's status and
environment, as JSON, or as a Markdown report (``--plot`` draws the run with
:func:`gpt2lab.plot.plot_runs`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

from ..errors import UserError
from ..layout import METRICS_FILE, PLOT_FILE
from ..metrics import damaged_lines, read_metrics, warn_once
from ..plot import PlotNotWritten, plot_runs
from ..runinfo import environment_lines, read_environment, report_markdown, run_row

COLUMNS = ("step", "tokens", "train_loss", "val_loss", "val_bpb", "completion_acc", "completion_acc_norm",
           "lm_eval_acc", "lm_eval_acc_norm", "lm_eval_acc_bytes", "hellaswag_items", "lambada_acc", "lambada_ppl")


def eval_history(run_dir: str | os.PathLike, bad_lines: list[int] | None = None) -> list[dict]:
    """One row per step with an evaluation: step, tokens, last train loss, val loss and bits per byte, HellaSwag and
    LAMBADA metrics.

    Damaged lines of metrics.jsonl are skipped (their numbers go into ``bad_lines``)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found; RUN_DIR must be a training run folder (train.run_dir)")
    rows: dict[int, dict] = {}
    last_train: dict = {}
    for r in read_metrics(run_dir, bad_lines=bad_lines):
        kind, step = r.get("kind"), r.get("step", 0)
        if kind == "train":
            last_train = r
        elif kind in ("val", "hellaswag", "lambada"):
            row = rows.setdefault(step, {"step": step})
            if last_train and last_train.get("step", -1) <= step:
                row["train_loss"] = last_train.get("loss")
                row["tokens"] = last_train.get("tokens")
            if kind == "val":
                row["val_loss"] = r.get("val_loss")
                if r.get("val_bpb") is not None:  # runs before bits per byte have none
                    row["val_bpb"] = r["val_bpb"]
            elif kind == "lambada":
                row.update(lambada_acc=r.get("acc"), lambada_ppl=r.get("ppl"))
            else:
                row.update({f"hellaswag_{k}" if k == "items" else k: v for k, v in r.items()
                            if k not in ("kind", "step")})
    return [rows[s] for s in sorted(rows)]


def format_history(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    if not rows:
        return "no evaluations logged yet (eval.every / eval.hellaswag_every / eval.lambada_every)"

    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}" if math.isfinite(v) else str(v)
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_report(run_dir: str | os.PathLike, *, plot: str | None = None, as_json: bool = False,
               markdown: bool = False) -> str:
    """Report a training run: its validation loss, HellaSwag and LAMBADA history (from its metrics.jsonl) as a
    table, then its status and what it ran on (environment.json).

    Returns the text, which ``gpt2lab report`` prints (its options are these arguments; ``--help`` shows this
    text). ``plot`` is drawn first; a run folder one may not write to gets no default plot, and a warning; damaged
    lines of metrics.jsonl and fields of the wrong type in the run's files are skipped with a warning on stderr.

    Args:
        run_dir: training run folder (train.run_dir)
        plot: also plot the run to FILE (.png, .svg, ...; needs matplotlib)
        as_json: the rows as JSON instead of a table
        markdown: a Markdown report: figures, best checkpoint, time, tokens/s, MFU, evaluations, environment,
            config, and the plot (FILE, or RUN_DIR/plot.png when matplotlib is installed)
    """
    bad: list[int] = []
    rows = eval_history(run_dir, bad)
    if bad:
        warn_once(damaged_lines(Path(run_dir) / METRICS_FILE, bad))
    drawn = plot
    if markdown and plot is None and importlib.util.find_spec("matplotlib") is not None:
        drawn = os.path.join(run_dir, PLOT_FILE)
    if drawn:
        try:
            plot_runs([run_dir], drawn)
        except PlotNotWritten as e:
            if plot is not None:  # the user's own --plot: the error is theirs to fix
                raise
            warn_once(f"cannot write {e.path} ({e.reason}): the report shows no plot; --plot FILE writes it elsewhere")
            drawn = None
    if markdown:  # the plot's link is absolute: the report is saved and opened anywhere
        return report_markdown(run_dir, rows, drawn and str(Path(drawn).resolve()))
    if as_json:
        return json.dumps(rows) + "\n"
    status = run_row(Path(run_dir))
    lines = [format_history(rows), f"\nstatus: {status['status']}"
             + (f" ({status['status_detail']})" if status["status_detail"] else "")
             + f", step {status['steps']}/{status['max_steps']}"]
    env = read_environment(run_dir)
    lines += environment_lines(env) if env else ["environment: no environment.json (a run of an older gpt2lab)"]
    if plot:
        lines.append(f"wrote {plot}")
    return "\n".join(lines) + "\n"

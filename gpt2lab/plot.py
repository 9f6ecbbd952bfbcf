"""``gpt2lab plot RUN [RUN ...] --out FILE.png``: runs side by side, against tokens seen.

Five panels: training loss (thin line) and validation loss (dots), validation bits per byte (the
figure that compares across tokenizers), learning rate, HellaSwag (``completion_acc_norm``,
build-nanogpt's figure, with GPT-2 124M's 0.2955 and GPT-3 Small's 0.337 as reference lines) and
LAMBADA accuracy. Each run has one colour in every panel and is
named in the legend. The x axis is tokens seen (``log_x``: logarithmic), so runs with other
batch sizes line up. Needs matplotlib (``pip install 'gpt2lab[plot]'``).
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

from .errors import UserError
from .fileio import check_folder_path, write_atomic
from .layout import METRICS_FILE
from .metrics import read_metrics, warn_once
from .progress import fmt_count

# (label, accuracy): HellaSwag acc_norm figures the panel draws as horizontal lines.
HELLASWAG_REFERENCES = (("GPT-2 124M", 0.2955), ("GPT-3 Small", 0.337))
PANELS = ("loss", "bpb", "lr", "hellaswag", "lambada")
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)  # what writing into a folder one may not write to raises


class PlotNotWritten(UserError):
    """The figure is drawn but its file cannot be written there (a read-only folder)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot write {path} ({reason}); choose a folder this user can write to")
        self.path, self.reason = path, reason


def run_curves(run_dir: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """A run's series as (tokens, value) points: train, val, bpb, lr, hellaswag, lambada."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found; give training run folders (train.run_dir)")
    records = read_metrics(run_dir, warn=warn_once)  # fields of the wrong type: skipped, with a warning
    # points need numbers: a non-finite value is kept as the string "nan" or "inf"
    train = [r for r in records if r.get("kind") == "train" and _is_number(r.get("loss")) and "tokens" in r]
    per_step = train[-1]["tokens"] / train[-1]["step"] if train and train[-1].get("step") else 0

    def tokens_at(step: int) -> float:
        return step * per_step

    curves: dict[str, list[tuple[float, float]]] = {k: [] for k in ("train", "val", "bpb", "lr", "hellaswag",
                                                                      "lambada")}
    for r in train:
        curves["train"].append((r["tokens"], r["loss"]))
        if _is_number(r.get("lr")):
            curves["lr"].append((r["tokens"], r["lr"]))
    for r in records:
        kind, value = r.get("kind"), None
        if kind == "val":
            value = r.get("val_loss")
            if _is_number(r.get("val_bpb")):
                curves["bpb"].append((tokens_at(r["step"]), r["val_bpb"]))
        elif kind == "hellaswag":
            value = r.get("completion_acc_norm")
        elif kind == "lambada":
            value = r.get("acc")
        if _is_number(value):
            curves[kind].append((tokens_at(r["step"]), value))
    return curves


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_runs(runs: list[str | os.PathLike], out: str | os.PathLike | None = None, log_x: bool = False,
              labels: list[str] | None = None):
    """Plot one or more runs overlaid: train and validation loss, learning rate, HellaSwag (with GPT-2 124M's 0.2955
    and GPT-3 Small's 0.337) and LAMBADA, against tokens seen. Needs matplotlib (pip install 'gpt2lab[plot]').

    Writes ``out`` atomically when given; returns the Figure (the module docstring describes it). Each plotted
    line's label starts with its run's label, so ``fig.axes[i].get_lines()`` shows what is drawn. ``gpt2lab plot``
    takes these arguments as its options (``--help`` shows this text).

    Args:
        runs: training run folders
        out: image file to write (.png, .svg, .pdf)
        log_x: logarithmic tokens axis
        labels: legend name of each run, in order (default: the folder names)
    """
    if not runs:
        raise UserError("give at least one run folder")
    labels = list(labels) if labels else _labels(runs)
    if len(labels) != len(runs):
        raise UserError(f"{len(labels)} labels for {len(runs)} runs")
    plt = _pyplot()
    out = _checked_out(out) if out is not None else None  # before any drawing
    data = [run_curves(r) for r in runs]
    fig, grid = plt.subplots(2, 3, figsize=(16, 8), sharex=True)  # one tokens axis for all panels
    fig.delaxes(grid[1, 2])
    axes = list(grid.flat)[:5]  # loss, bits per byte, lr; hellaswag, lambada
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, curves) in enumerate(zip(labels, data)):
        _draw_run(axes, curves, label, colors[i % len(colors)])
    _finish_panels(axes, log_x)
    fig.tight_layout()
    if out is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format=out.suffix.lstrip(".").lower() or "png", dpi=80)
        try:
            write_atomic(out, buf.getvalue())
        except OSError as e:  # a read-only folder (a full disk is the command's one-line error already)
            if e.errno not in READ_ONLY:
                raise
            raise PlotNotWritten(out, e.strerror) from None
    return fig


def _pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed); a UserError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'gpt2lab[plot]'") from None
    return plt


def _checked_out(out: str | os.PathLike) -> Path:
    """``out`` as a Path, refused when matplotlib cannot write its kind of file or its folder cannot be made."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    kinds = FigureCanvasBase.get_supported_filetypes()
    if (out.suffix.lstrip(".").lower() or "png") not in kinds:  # no suffix: PNG
        raise UserError(f"{out}: matplotlib cannot write {out.suffix} files; name it .png, .svg, .pdf "
                        f"(or {', '.join('.' + k for k in sorted(kinds) if k not in ('png', 'svg', 'pdf'))})")
    check_folder_path(out.parent, str(out))
    return out


def _draw_run(axes, curves: dict, label: str, color) -> None:
    """One run's curves into the five panels (loss, bits per byte, lr, hellaswag, lambada), in one colour."""
    ax_loss, ax_bpb, ax_lr, ax_hs, ax_lam = axes
    if curves["train"]:
        ax_loss.plot(*zip(*curves["train"]), color=color, lw=0.8, alpha=0.6, label=f"{label} train")
    if curves["val"]:
        ax_loss.plot(*zip(*curves["val"]), color=color, lw=1.8, marker="o", ms=4, label=f"{label} val")
    if curves["lr"]:
        ax_lr.plot(*zip(*curves["lr"]), color=color, lw=1.5, label=label)
    for ax, key in ((ax_bpb, "bpb"), (ax_hs, "hellaswag"), (ax_lam, "lambada")):
        if curves[key]:
            ax.plot(*zip(*curves[key]), color=color, lw=1.5, marker="o", ms=4, label=label)


def _finish_panels(axes, log_x: bool) -> None:
    """Reference lines, titles, axes and legends of the five panels, once every run is drawn."""
    from matplotlib.ticker import FuncFormatter

    ax_loss, ax_bpb, ax_lr, ax_hs, ax_lam = axes
    for name, value in HELLASWAG_REFERENCES:
        ax_hs.axhline(value, color="gray", lw=1, ls="--" if "GPT-2" in name else ":", label=f"{name} ({value})")
    ax_hs.axhline(0.25, color="lightgray", lw=1, label="chance (0.25)")
    titles = {ax_loss: "loss (thin: train, dots: validation)", ax_bpb: "validation bits per byte",
              ax_lr: "learning rate",
              ax_hs: "HellaSwag acc_norm", ax_lam: "LAMBADA accuracy"}
    for ax, title in titles.items():
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if log_x:
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_count(x)))  # 20k, 1.5M, 10B
        ax.tick_params(labelbottom=True)
        if ax.get_lines():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax_loss.set_ylabel("cross-entropy (nats)")
    top = max(ax_lam.get_ylim()[1], 0.05)
    ax_lam.set_ylim(-0.03 * top, top)  # an accuracy: no negative half-axis while it is still 0
    for ax in (ax_lr, ax_hs, ax_lam):  # the bottom of each column
        ax.set_xlabel("tokens seen")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))


def _labels(runs) -> list[str]:
    """Each run's folder name, or its path when two runs share a name."""
    names = [Path(r).resolve().name for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]

"""The layout of a run folder (``train.run_dir``): every file and folder name in it, in one place.

::

    RUN_DIR/config.yaml                  the resolved config (RUN_CONFIG; checkpoint.Checkpointer.start writes it)
    RUN_DIR/metrics.jsonl                one record per line (METRICS_FILE; metrics.py)
    RUN_DIR/environment.json             what the run ran on: packages, commit, device, command (ENV_FILE; runinfo.py)
    RUN_DIR/status.json                  running/finished/stopped, pid, host, heartbeat (STATUS_FILE; runinfo.py)
    RUN_DIR/plot.png                     the plot of `gpt2lab report --markdown` (PLOT_FILE; cli.py, plot.py)
    RUN_DIR/tb/                          TensorBoard events (TB_DIR; metrics.py)
    RUN_DIR/wandb/gpt2lab_run_id         Weights & Biases files, and the wandb run id (WANDB_DIR, WANDB_ID_FILE)
    RUN_DIR/evals/step_00001000.json     what was evaluated at a step (EVALS_DIR, eval_record_path; metrics.py)
    RUN_DIR/checkpoints/step_00001000/   a checkpoint (CHECKPOINTS_DIR, checkpoint_name; only checkpoint.py writes one)
    RUN_DIR/checkpoints/damaged-step_N/  one that --resume found damaged, set aside (DAMAGED_PREFIX)
    RUN_DIR/.gpt2lab.lock                the lock of the one process writing the run, while it runs (LOCK_FILE;
                                         lock.py, train.py; a prepared data folder has one while prepare runs)

A checkpoint folder (also what ``convert from-hf`` makes) holds::

    model.safetensors   the weights (MODEL_FILE)
    config.yaml         the resolved config of the run (CONFIG_FILE)
    train_state.pt      optimizer state, step, data position, RNG states (STATE_FILE; not in converted models)
    dcp/                FSDP runs: model and optimizer state shard by shard (DCP_DIR)
    tokenizer/          a copy of the run's tokenizer folder (gpt2lab.tokenizer.COPY_DIR; none for GPT-2's)
    checksums.json      the sha256 of every other file, written last (CHECKSUMS_FILE)

Only names live here (no file is read or written), so any module can import it cheaply.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# --- a run folder ------------------------------------------------------------------------------
RUN_CONFIG = "config.yaml"  # a run folder's resolved config has a checkpoint's config's name (CONFIG_FILE)
METRICS_FILE = "metrics.jsonl"
ENV_FILE = "environment.json"
STATUS_FILE = "status.json"
PLOT_FILE = "plot.png"
TB_DIR = "tb"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "gpt2lab_run_id"  # in WANDB_DIR
EVALS_DIR = "evals"
CHECKPOINTS_DIR = "checkpoints"
DAMAGED_PREFIX = "damaged-"  # a checkpoint --resume found damaged is renamed to damaged-step_N
LOCK_FILE = ".gpt2lab.lock"  # held by the one writer of a run folder (train) or a data folder (prepare --out)

# --- a checkpoint folder -----------------------------------------------------------------------
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
STATE_FILE = "train_state.pt"
DCP_DIR = "dcp"
CHECKSUMS_FILE = "checksums.json"

_STEP_NAME = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    """The folder name of checkpoint ``step`` in CHECKPOINTS_DIR: ``step_00001000``."""
    return f"step_{step:08d}"


def step_of(name: str) -> int | None:
    """The step a ``step_N`` name stands for (a checkpoint folder, an eval record's stem); None for another name."""
    m = _STEP_NAME.match(name)
    return int(m.group(1)) if m else None


def eval_record_path(run_dir: str | os.PathLike, step: int) -> Path:
    """RUN_DIR/evals/step_N.json: what was evaluated at ``step``."""
    return Path(run_dir) / EVALS_DIR / f"{checkpoint_name(step)}.json"


def eval_record_step(path: Path) -> int | None:
    """The step of an eval record file, or None for a file of another name."""
    return step_of(path.stem)

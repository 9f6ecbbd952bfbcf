"""The quickstart: the whole loop on the tinyshakespeare text shipped inside the package.

prepare -> train the ``quickstart`` config (a 4-layer model, about 10 minutes on 2 CPU cores)
-> validation loss -> checkpoint -> samples. Its config is ``gpt2lab/assets/quickstart.yaml``
(the same file as configs/quickstart.yaml), so it works from a plain ``pip install``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .config import load_config
from .data.prepare import MANIFEST, prepare
from .train import train


def asset(name: str) -> Path:
    return Path(str(resources.files("gpt2lab").joinpath("assets", name)))


def quickstart(run_dir: str = "runs/quickstart", overrides: Sequence[str] = ()) -> dict:
    """The whole loop on the corpus shipped inside gpt2lab: prepare tinyshakespeare, train the quickstart model
    (under 4 minutes on 2 CPU cores with tcmalloc), report validation loss, save a checkpoint, print samples.

    Continues from the run's newest checkpoint, if any; returns train's summary. ``gpt2lab quickstart`` takes these
    arguments as its options (``--help`` shows this text).

    Args:
        run_dir: run folder
        overrides: key=value overrides of configs/quickstart.yaml, e.g. max_steps=50
    """
    run = Path(run_dir)
    data_dir = run / "data"
    if not (data_dir / MANIFEST).exists():
        print(f"preparing the shipped tinyshakespeare corpus into {data_dir}")
        prepare([str(asset("tinyshakespeare.txt.gz"))], data_dir, val_fraction=0.1, workers=1, log=print)
    cfg = load_config(asset("quickstart.yaml"), [f"data.dir={data_dir}", f"train.run_dir={run}", *overrides])
    from .checkpoint import list_checkpoints

    summary = train(cfg, resume=bool(list_checkpoints(run)))
    val = f", val loss {summary['val_loss']:.4f}" if "val_loss" in summary else ""
    print(
        f"\nquickstart done: {summary['steps']} steps, {summary['tokens']:,} tokens{val}\n"
        f"checkpoint: {summary.get('checkpoint')}\n"
        f"sample more: gpt2lab sample {run} --prompt 'ROMEO:' --max-new-tokens 100"
    )
    return summary

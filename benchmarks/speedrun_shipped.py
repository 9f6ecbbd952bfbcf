"""The speedrun recipe against the GPT-2 recipe as a user runs them: the shipped configs at the tiny size, compiled,
the whole `gpt2lab train` command timed (start-up, compilation and the final evaluation included).

    python benchmarks/speedrun_shipped.py --out runs/speedrun-shipped            # GPT-2 at 300 steps, speedrun at 100
    python benchmarks/speedrun_shipped.py --out runs/speedrun-shipped --steps 150 --seeds 1

Each run is one of these two commands (plus data.dir, train.run_dir, train.seed), the speedrun with a third of
the GPT-2 recipe's steps; each config's warm-up keeps its share of the shorter run by itself:

    gpt2lab train --config configs/gpt2-124m.yaml model.preset=tiny train.micro_batch=16 train.seq_len=256 \\
        train.total_batch_tokens=4096 train.max_steps=N EVAL
    gpt2lab train --config configs/speedrun.yaml model.preset=tiny train.total_batch_tokens=4096 \\
        train.max_steps=N/3 EVAL

EVAL = the validation loss once, at the end, over all 262,144 held-out tokens, and no HellaSwag or samples
(the same for both). The runs alternate GPT-2, speedrun per seed, the machine to itself; the data are the shared
Wikipedia articles, prepared once (as speedrun_cpu.py does). Reported: final validation loss, wall seconds of the
command, and the ratio of the GPT-2 recipe's wall time to the speedrun's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
EVAL = ["eval.every=0", "eval.val_tokens=262144", "eval.val_batch=16", "eval.hellaswag_every=-1",
        "eval.sample_every=-1", "train.ckpt_every=0", "train.keep_checkpoints=1", "train.progress=lines",
        "train.device=cpu"]
RECIPES = {
    "gpt2": ["--config", "configs/gpt2-124m.yaml", "model.preset=tiny", "train.micro_batch=16", "train.seq_len=256",
             "train.total_batch_tokens=4096"],
    "speedrun": ["--config", "configs/speedrun.yaml", "model.preset=tiny", "train.total_batch_tokens=4096"],
}


def run(out: Path, recipe: str, steps: int, seed: int, data: Path, extra: list[str]) -> dict:
    name = f"{recipe}-{steps}-s{seed}"
    args = [*RECIPES[recipe], f"train.max_steps={steps}", f"train.seed={seed}", f"data.dir={data}",
            f"train.run_dir={out / name}", *EVAL, *extra]
    harness.log(f"{name}: gpt2lab train {' '.join(args)}")
    code, wall = harness.train_logged(args, out / f"{name}.log")
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {out / f'{name}.log'}")
    from gpt2lab.metrics import read_metrics

    val = read_metrics(out / name, "val")[-1]["val_loss"]
    steps_s = sum(x["step_time"] for x in read_metrics(out / name, "train"))
    harness.log(f"{name}: val {val:.4f}, {wall:.0f} s wall ({steps_s:.0f} s in training steps)")
    return {"run": name, "recipe": recipe, "steps": steps, "seed": seed, "val_loss": val, "wall_s": wall,
            "steps_s": steps_s, "extra": extra}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs and results.json")
    p.add_argument("--data", help="prepared Wikipedia shards (default: OUT/data, prepared from $GPT2LAB_DATA)")
    p.add_argument("--steps", type=int, default=300, help="the GPT-2 recipe's steps; the speedrun gets a third")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--speedrun-extra", default="", help="more overrides of the speedrun runs, space-separated")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = harness.start("cpu")
    data = harness.wikipedia_shards(args.data, out)
    rows = []
    for seed in args.seeds:
        rows.append(run(out, "gpt2", args.steps, seed, data, []))
        rows.append(run(out, "speedrun", args.steps // 3, seed, data, args.speedrun_extra.split()))
    mean = {r: {k: statistics.mean(x[k] for x in rows if x["recipe"] == r) for k in ("val_loss", "wall_s", "steps_s")}
            for r in RECIPES}
    lines = ["| recipe | steps | final val loss (per seed) | wall s (per seed) | training-step s |",
             "|---|---|---|---|---|"]
    for recipe in RECIPES:
        rs = [x for x in rows if x["recipe"] == recipe]
        cells = [", ".join(format(x[k], f) for x in rs) for k, f in (("val_loss", ".4f"), ("wall_s", ".0f"),
                                                                       ("steps_s", ".0f"))]
        lines.append(f"| {recipe} | {rs[0]['steps']} | " + " | ".join(cells) + " |")
    ratio = mean["gpt2"]["wall_s"] / mean["speedrun"]["wall_s"]
    lines.append(f"\nspeedrun: {mean['gpt2']['val_loss'] - mean['speedrun']['val_loss']:+.4f} lower validation loss "
                 f"with a third of the steps, in {ratio:.2f}x less wall time (means over seeds)")
    print(harness.machine_line(machine))
    print("\n".join(lines))
    harness.write_results(out / "results.json", machine, {"rows": rows, "mean": mean, "wall_ratio": ratio,
                                                          "eval": EVAL, "recipes": RECIPES})
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

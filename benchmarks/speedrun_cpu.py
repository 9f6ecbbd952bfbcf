"""The GPT-2 recipe against the `speedrun` recipe on this CPU, at the `tiny` size, on Wikipedia.

    python benchmarks/speedrun_cpu.py --out runs/speedrun-cpu              # every run, then the report
    python benchmarks/speedrun_cpu.py --out runs/speedrun-cpu --report     # the report of the runs there

The runs (each `gpt2lab train` in a subprocess, one after the other, the machine to itself):

- the GPT-2 recipe (configs/gpt2-124m.yaml at the tiny size) at each of ``--lrs`` (seed 1), then
  the best of them with a second seed;
- the speedrun recipe (configs/speedrun.yaml at the tiny size, ``--speedrun-overrides``) with
  2 seeds over a third of the GPT-2 runs' steps (the 3x target), and one over all of them.

Every run has B=16 x T=256 = 4,096 tokens a step, bf16 autocast, no compile, warmup a fixed
fraction of its steps (the share each recipe's config gives it), and the validation loss on the
same 32,768 held-out tokens at evenly spaced steps. A run already finished in ``--out`` is kept,
so the script can be stopped and started again. The report (``report.json``, ``report.md``,
``speedrun-cpu.png``) gives each recipe's final validation loss (mean over seeds), and the tokens and
training seconds (the sum of step times: evaluations excluded) the speedrun runs took to reach the
GPT-2 recipe's final loss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
TOKENS_PER_STEP = 16 * 256
COMMON = ["model.preset=tiny", "train.micro_batch=16", "train.seq_len=256",
          f"train.total_batch_tokens={TOKENS_PER_STEP}",
          "train.device=cpu", "train.dtype=bfloat16", "train.compile=false", "train.ckpt_every=0",
          "train.keep_checkpoints=1", "eval.val_tokens=32768", "eval.val_batch=16", "eval.hellaswag_every=-1",
          "eval.sample_every=-1", "train.progress=lines", "train.log_every=1"]
# warmup as a share of the run, as each recipe's config has it: gpt2-124m 715 / 19,073; speedrun 100 / 6,358
WARMUP = {"gpt2": 715 / 19073, "speedrun": 100 / 6358}
CONFIG = {"gpt2": "configs/gpt2-124m.yaml", "speedrun": "configs/speedrun.yaml"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs and the report")
    p.add_argument("--data", default=None, help="prepared Wikipedia shards (default: prepared into OUT/data from "
                   "$GPT2LAB_DATA/corpora/wikipedia-en.jsonl)")
    p.add_argument("--steps", type=int, default=300, help="steps of the GPT-2 recipe runs (default 300)")
    p.add_argument("--evals", type=int, default=10, help="validation evaluations per run (default 10)")
    p.add_argument("--lrs", default="3e-4,6e-4,1.2e-3",
                   help="GPT-2 recipe learning rates to sweep (default 3e-4,6e-4,1.2e-3: GPT-3 Small's 6e-4 "
                   "and a factor 2 either side)")
    p.add_argument("--speedrun-overrides", default="model.logit_softcap=0",
                   help="config overrides of the speedrun runs, space-separated (default: no logit soft-cap, "
                   "which doubles a step's time on a CPU; see docs/speedrun.md)")
    p.add_argument("--report", action="store_true", help="only write the report of the runs already in --out")
    return p.parse_args(argv)


def train_run(out: Path, name: str, recipe: str, steps: int, seed: int, data: Path, evals: int,
              extra: list[str]) -> Path:
    run = out / name
    if (run / "summary.json").is_file():
        harness.log(f"{name}: done before, kept")
        return run
    every = max(1, steps // evals)
    args = ["--config", CONFIG[recipe], *COMMON, f"data.dir={data}", f"train.run_dir={run}",
            f"train.max_steps={steps}", f"train.seed={seed}", f"eval.every={every}",
            f"optim.warmup_steps={max(1, round(WARMUP[recipe] * steps))}", *extra]
    harness.log(f"{name}: gpt2lab train {' '.join(args)}")
    log = out / f"{name}.log"
    code, wall = harness.train_logged(args, log)
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {log}")
    summary = {"name": name, "recipe": recipe, "steps": steps, "seed": seed, "extra": extra, "wall_s": wall}
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    harness.log(f"{name}: done in {summary['wall_s']:.0f} s")
    return run


def curve(run: Path) -> dict:
    """Validation loss against tokens and against training seconds (the sum of step times so far)."""
    from gpt2lab.metrics import read_metrics

    train = read_metrics(run, "train")
    secs, total = {}, 0.0
    for r in train:
        total += r["step_time"]
        secs[r["step"]] = total
    val = read_metrics(run, "val")
    summary = json.loads((run / "summary.json").read_text())
    return {**summary, "step": [r["step"] for r in val], "tokens": [r["step"] * TOKENS_PER_STEP for r in val],
            "seconds": [secs[r["step"]] for r in val], "val_loss": [r["val_loss"] for r in val],
            "train_s": total, "s_per_step": total / max(1, len(train))}


def crossing(c: dict, target: float) -> tuple[float, float] | None:
    """(tokens, seconds) where the curve first reaches ``target``, linearly between evaluations; None if never."""
    pts = list(zip(c["tokens"], c["seconds"], c["val_loss"]))
    for (t0, s0, l0), (t1, s1, l1) in zip(pts, pts[1:]):
        if l1 <= target:
            f = 1.0 if l0 <= target or l0 == l1 else (l0 - target) / (l0 - l1)
            return t0 + f * (t1 - t0), s0 + f * (s1 - s0)
    return (pts[0][0], pts[0][1]) if pts and pts[0][2] <= target else None


def report(out: Path, lrs: list[str]) -> dict:
    runs = {p.parent.name: curve(p.parent) for p in sorted(out.glob("*/summary.json"))}
    sweep = {n: c for n, c in runs.items() if n.startswith("gpt2-lr")}
    # names are gpt2-lr<LR>-s<SEED>, and an lr such as 6e-4 has a '-' of its own
    best_lr = min(sweep, key=lambda n: sweep[n]["val_loss"][-1])[len("gpt2-lr"):].rsplit("-s", 1)[0] if sweep else None
    gpt2 = [c for n, c in runs.items() if n.startswith(f"gpt2-lr{best_lr}-")]
    base = statistics.mean(c["val_loss"][-1] for c in gpt2) if gpt2 else None
    base_tokens = statistics.mean(c["tokens"][-1] for c in gpt2) if gpt2 else None
    base_secs = statistics.mean(c["train_s"] for c in gpt2) if gpt2 else None
    rows = []
    for n, c in runs.items():
        hit = crossing(c, base) if base is not None and c["recipe"] == "speedrun" else None
        rows.append({"run": n, "recipe": c["recipe"], "steps": c["steps"], "seed": c["seed"],
                     "final_val": c["val_loss"][-1], "train_s": c["train_s"], "s_per_step": c["s_per_step"],
                     "reach_tokens": hit[0] if hit else None, "reach_s": hit[1] if hit else None,
                     "tokens_ratio": base_tokens / hit[0] if hit else None,
                     "time_ratio": base_secs / hit[1] if hit else None})
    doc = {"best_lr": best_lr, "gpt2_final_val_mean": base, "gpt2_tokens": base_tokens, "gpt2_train_s_mean": base_secs,
           "rows": rows, "curves": runs}
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    lines = [f"GPT-2 recipe: best lr {best_lr}; final validation loss {base:.4f} (mean of {len(gpt2)} seeds) after "
             f"{base_tokens:,.0f} tokens and {base_secs:.0f} s of training steps"
             if base is not None else "no GPT-2 runs",
             "", "| run | recipe | steps | seed | final val loss | s/step | tokens to reach GPT-2's final | "
             "seconds to reach it | fewer tokens | less time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = (f"{r['reach_tokens']:,.0f} | {r['reach_s']:.0f} | {r['tokens_ratio']:.2f}x | {r['time_ratio']:.2f}x"
                 if r["reach_tokens"] else "- | - | - | -")
        lines.append(f"| {r['run']} | {r['recipe']} | {r['steps']} | {r['seed']} | {r['final_val']:.4f} | "
                     f"{r['s_per_step']:.2f} | {reach} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out, runs, best_lr, base)
    return doc


def plot(out: Path, runs: dict, best_lr, base) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for n, c in runs.items():
        if c["recipe"] == "gpt2" and not n.startswith(f"gpt2-lr{best_lr}-"):
            style = dict(color="0.7", lw=1, ls=":")
        elif c["recipe"] == "gpt2":
            style = dict(color="tab:blue", lw=1.8)
        else:
            style = dict(color="tab:orange", lw=1.8, ls="-" if c["steps"] < max(r["steps"] for r in runs.values())
                         else "--")
        for ax, key in zip(axes, ("tokens", "seconds")):
            xs = [x / 1e6 for x in c[key]] if key == "tokens" else c[key]
            ax.plot(xs, c["val_loss"], label=n, **style)
    for ax, label in zip(axes, ("tokens (millions)", "training seconds (sum of step times)")):
        if base is not None:
            ax.axhline(base, color="tab:blue", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (32,768 held-out Wikipedia tokens)")
    axes[1].legend(fontsize=8)
    lo = min(min(c["val_loss"]) for c in runs.values())
    axes[0].set_ylim(lo - 0.1, lo + 2.5)
    fig.suptitle("tiny (6 x 384), B=16 x T=256, bf16, 2-core CPU: GPT-2 recipe (blue; grey: other lrs) "
                 "and speedrun (orange)")
    fig.tight_layout()
    fig.savefig(out / "speedrun-cpu.png", dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lrs = args.lrs.split(",")
    if not args.report:
        harness.start("cpu")
        data = harness.wikipedia_shards(args.data, out)
        sr_extra = args.speedrun_overrides.split()
        third = args.steps // 3
        # the speedrun first: a bad speedrun setting shows before the long sweep
        train_run(out, "speedrun-third-s1", "speedrun", third, 1, data, args.evals, sr_extra)
        for lr in lrs:
            train_run(out, f"gpt2-lr{lr}-s1", "gpt2", args.steps, 1, data, args.evals, [f"optim.lr={lr}"])
        doc = report(out, lrs)
        train_run(out, f"gpt2-lr{doc['best_lr']}-s2", "gpt2", args.steps, 2, data, args.evals,
                  [f"optim.lr={doc['best_lr']}"])
        train_run(out, "speedrun-third-s2", "speedrun", third, 2, data, args.evals, sr_extra)
        train_run(out, "speedrun-full-s1", "speedrun", args.steps, 1, data, args.evals, sr_extra)
    report(out, lrs)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

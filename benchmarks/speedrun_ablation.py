"""An ablation of the speedrun recipe's switches at the tiny size on the shared Wikipedia articles, compiled.

    python benchmarks/speedrun_ablation.py --out runs/ablation                  # every run, then the report
    python benchmarks/speedrun_ablation.py --out runs/ablation --report         # the report of the runs there
    python benchmarks/speedrun_ablation.py --out runs/ablation --only full gpt2 --seeds 1 2

The runs, each a `gpt2lab train` in a subprocess (one after the other, the machine to itself), all with the same
token budget (``--steps`` x 4,096 tokens: B=16 x T=256), bf16, compiled, the validation loss and bits per byte
over all 262,144 held-out tokens at the end:

- ``full``: configs/speedrun.yaml at the tiny size, as shipped;
- ``-X``: the full recipe with switch X left out (X back to the GPT-2 recipe's choice);
- ``gpt2``: configs/gpt2-124m.yaml at the tiny size; ``+X``: the GPT-2 recipe with switch X alone;
- ``full+Y``: the full recipe with one of the newer switches (value embeddings, U-net skips, document-aligned rows,
  a sequence-length warm-up, Polar Express, NorMuon, cautious weight decay) added.

Seconds per step are the median of the training steps' times after the first 5 (compilation happens there).
A run already finished in ``--out`` is kept, so the script can be stopped and started again.
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
RECIPES = {
    "speedrun": ["--config", "configs/speedrun.yaml", "model.preset=tiny", "train.total_batch_tokens=4096"],
    "gpt2": ["--config", "configs/gpt2-124m.yaml", "model.preset=tiny", "train.micro_batch=16", "train.seq_len=256",
             "train.total_batch_tokens=4096"],
}
COMMON = ["eval.every=0", "eval.val_tokens=262144", "eval.val_batch=16", "eval.hellaswag_every=-1",
          "eval.sample_every=-1", "train.ckpt_every=0", "train.keep_checkpoints=1", "train.progress=lines",
          "train.device=cpu"]
# Each speedrun switch: (its speedrun setting, the GPT-2 recipe's), as config overrides.
SWITCHES = {
    "rotary": (["model.rotary=true"], ["model.rotary=false"]),
    "qk_norm": (["model.qk_norm=true"], ["model.qk_norm=false"]),
    "rmsnorm": (["model.norm=rmsnorm"], ["model.norm=layernorm"]),
    "relu2": (["model.mlp=relu2"], ["model.mlp=gelu"]),
    "no_bias": (["model.bias=false"], ["model.bias=true"]),
    "untied_head": (["model.tie_head=false"], ["model.tie_head=true"]),
    "zero_init": (["model.zero_init_proj=true"], ["model.zero_init_proj=false"]),
    "softcap": (["model.logit_softcap=30"], ["model.logit_softcap=0"]),
    # Muon with speedrun's rates, or GPT-2's AdamW (its rate, betas, weight decay)
    "muon": (["optim.optimizer=muon", "optim.lr=0.008", "optim.embed_lr=0.3", "optim.head_lr=0.008",
              "optim.scalar_lr=0.04", "optim.beta1=0.8", "optim.weight_decay=0.0", "optim.eps=1e-10"],
             ["optim.optimizer=adamw", "optim.lr=6e-4", "optim.embed_lr=0", "optim.head_lr=0", "optim.scalar_lr=0",
              "optim.beta1=0.9", "optim.weight_decay=0.1", "optim.eps=1e-8"]),
    "wsd": (["optim.schedule=wsd", "optim.decay_fraction=0.4", "optim.min_lr_ratio=0"],
            ["optim.schedule=cosine", "optim.min_lr_ratio=0.1"]),
}
NEW = {  # the newer switches, each added to the full recipe
    "value_embeds": ["model.value_embeds=2"],
    "unet_skips": ["model.unet_skips=true"],
    "align_docs": ["data.align_docs=true"],
    "seq_len_warmup": ["train.seq_len_warmup_steps=20"],
    "polar_express": ["optim.muon_ns=polar_express"],
    "normuon": ["optim.muon_normuon=true"],
    "cautious_wd": ["optim.cautious_wd=true", "optim.muon_weight_decay=0.01", "optim.weight_decay=0.01"],
}


def configs() -> dict[str, tuple[str, list[str]]]:
    """Every run's name: (recipe, overrides)."""
    runs = {"full": ("speedrun", []), "gpt2": ("gpt2", [])}
    for name, (on, off) in SWITCHES.items():
        runs[f"-{name}"] = ("speedrun", off)
        runs[f"+{name}"] = ("gpt2", on)
    runs.update({f"full+{name}": ("speedrun", extra) for name, extra in NEW.items()})
    return runs


def run(out: Path, name: str, seed: int, steps: int, data: Path) -> dict:
    folder = out / f"{name}-s{seed}"
    done = folder / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    recipe, extra = configs()[name]
    args = [*RECIPES[recipe], *COMMON, f"train.max_steps={steps}", f"train.seed={seed}", f"data.dir={data}",
            f"train.run_dir={folder}", *extra]
    harness.log(f"{folder.name}: gpt2lab train {' '.join(args)}")
    code, wall = harness.train_logged(args, out / f"{folder.name}.log")
    if code != 0:
        harness.log(f"{folder.name} failed (exit {code}); see {out / f'{folder.name}.log'}")
        return {"name": name, "seed": seed, "failed": code}
    from gpt2lab.metrics import read_metrics

    val = read_metrics(folder, "val")[-1]
    times = [x["step_time"] for x in read_metrics(folder, "train")][5:]
    summary = {"name": name, "recipe": recipe, "seed": seed, "steps": steps, "overrides": extra,
               "val_loss": val["val_loss"], "val_bpb": val.get("val_bpb"), "s_per_step": statistics.median(times),
               "wall_s": wall}
    done.write_text(json.dumps(summary, indent=1))
    harness.log(f"{folder.name}: val {summary['val_loss']:.4f} ({summary['val_bpb']:.4f} bpb), "
                f"{summary['s_per_step']:.2f} s/step, {wall:.0f} s wall")
    return summary


def report(out: Path) -> str:
    rows: dict[str, list[dict]] = {}
    for p in sorted(out.glob("*/summary.json")):
        r = json.loads(p.read_text())
        rows.setdefault(r["name"], []).append(r)
    order = [n for n in configs() if n in rows]
    base = {k: statistics.mean(r["val_loss"] for r in rows[k]) for k in ("full", "gpt2") if k in rows}
    base_t = {k: statistics.mean(r["s_per_step"] for r in rows[k]) for k in ("full", "gpt2") if k in rows}
    lines = ["| run | seeds | val loss | val bpb | vs its base | s/step | vs its base's |",
             "|---|---|---|---|---|---|---|"]
    for name in order:
        rs = rows[name]
        loss, bpb = statistics.mean(r["val_loss"] for r in rs), statistics.mean(r["val_bpb"] for r in rs)
        sps = statistics.mean(r["s_per_step"] for r in rs)
        ref = "gpt2" if name == "gpt2" or name.startswith("+") else "full"
        d = f"{loss - base[ref]:+.4f}" if ref in base and name not in ("full", "gpt2") else "-"
        dt = f"{sps / base_t[ref]:.2f}x" if ref in base_t and name not in ("full", "gpt2") else "-"
        lines.append(f"| {name} | {len(rs)} | {loss:.4f} | {bpb:.4f} | {d} | {sps:.2f} | {dt} |")
    text = "\n".join(lines)
    (out / "report.md").write_text(text + "\n")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="prepared Wikipedia shards (default: OUT/data, prepared from $GPT2LAB_DATA)")
    p.add_argument("--steps", type=int, default=100, help="steps of every run (x 4,096 tokens)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--only", nargs="+", help="run names (default: all; see the module docstring)")
    p.add_argument("--report", action="store_true", help="only the report of the runs in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        harness.start("cpu")
        data = harness.wikipedia_shards(args.data, out)
        for seed in args.seeds:
            for name in args.only or configs():
                run(out, name, seed, args.steps, data)
    print(report(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

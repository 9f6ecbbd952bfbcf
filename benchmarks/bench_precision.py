"""Precision and optimizer choices against CPU training speed, side by side in one process.

    python benchmarks/bench_precision.py                         # mini B=16 x 256 (the quickstart's shape)
    python benchmarks/bench_precision.py --preset gpt2 -B 4 -T 1024 --rounds 2
    python benchmarks/bench_precision.py --compile on --rounds 5

The cases, each gpt2lab's model and step (``gpt2lab.bench.make_train_step``) on the same batches,
their timed steps alternating round by round so that a busy spell hits all alike:

- ``autocast``: fp32 weights, bf16 autocast, fused AdamW (the GPT-2 recipe);
- ``autocast, foreach AdamW``: the same with ``optim.fused=false``;
- ``bf16 weights``: the model cast to bf16, no autocast, fused AdamW on the bf16 weights. No fp32
  master copy, so it is not a recipe to train with (updates smaller than bf16's resolution are
  lost): it bounds what bf16 weights with fp32 master weights could gain by removing autocast's
  per-step weight casts, since such a scheme does the same compute plus a master update.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics

import torch

import harness
from gpt2lab.bench import make_train_step, recipe_configs
from gpt2lab.device import autocast_for, set_backends
from gpt2lab.model import GPT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini")
    ap.add_argument("-B", "--batch", type=int, default=16)
    ap.add_argument("-T", "--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps a case a round (default 3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", choices=["off", "on"], default="off",
                    help="torch.compile every case (the first, untimed round compiles)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    compiled = args.compile == "on"
    machine = harness.start("cpu")
    set_backends("cpu")
    cfg, optim_cfg = recipe_configs(args.preset, args.seq_len, None)
    autocast = autocast_for("cpu", torch.bfloat16)
    cases = {
        "autocast": (torch.float32, autocast, optim_cfg),
        "autocast, foreach AdamW": (torch.float32, autocast, dataclasses.replace(optim_cfg, fused=False)),
        "bf16 weights": (torch.bfloat16, contextlib.nullcontext(), optim_cfg),
    }
    steps, counters = {}, {}
    for name, (dtype, ctx, ocfg) in cases.items():
        model = GPT(cfg).to(dtype)
        steps[name] = make_train_step(model, ocfg, vocab_size=cfg.vocab_size, batch=args.batch,
                                      seq_len=args.seq_len, device="cpu", autocast=ctx, compile=compiled,
                                      seed=1337, n_batches=8)
        counters[name] = 0

    def runner(name):
        def run():
            for _ in range(args.steps):
                steps[name](counters[name])
                counters[name] += 1
        return run

    times = harness.time_cases({n: runner(n) for n in cases}, repeats=args.rounds, warmup=1, device="cpu")
    tokens = args.batch * args.seq_len * args.steps
    base = tokens / statistics.median(times["autocast"])
    mode = "compiled" if compiled else "eager"
    print(f"\n{args.preset}, B={args.batch} x T={args.seq_len}, {mode}, {args.rounds} rounds of {args.steps} steps\n")
    print("| case | tok/s (median round) | vs autocast |\n|---|---|---|")
    rows = {}
    for name, ts in times.items():
        tok_s = tokens / statistics.median(ts)
        rows[name] = tok_s
        print(f"| {name} | {tok_s:,.0f} | {tok_s / base:.2f}x |")
    harness.write_results(args.out or harness.default_out("precision"), machine,
                          {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len,
                           "compile": compiled, "round_seconds": times, "tokens_per_s": rows})


if __name__ == "__main__":
    main()

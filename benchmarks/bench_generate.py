"""Generation speed against transformers, and int8 on CPU.

    python benchmarks/bench_generate.py                          # fp32 and bf16, batch 1 and 8
    python benchmarks/bench_generate.py --dtype float32 --batch 8 --repeats 5
    python benchmarks/bench_generate.py --compile                # also gpt2lab with a compiled decode step
    python benchmarks/bench_generate.py --int8                   # int8: perplexity change and speed only
    python benchmarks/bench_generate.py --int8 --int8-ckpt runs/quickstart   # ... on an existing checkpoint

**Speed** (default): GPT-2 124M with random weights, created once in transformers and
converted to gpt2lab (``gpt2lab.hf``), so both compute the same function. Every case: a prompt
of 16 random tokens per row, 128 new tokens, greedy; transformers' ``generate`` with its own
KV cache (``do_sample=False``, ``min_new_tokens=max_new_tokens=128``, so both produce exactly
128 tokens per row) against ``gpt2lab.generate.generate(temperature=0)``. Same process, same
weights, same dtype (the models' parameters are cast: fp32, bf16). tokens/s = batch x 128 /
wall time of the whole call (prefill included). gpt2lab runs two ways: **gpt2lab** is one
``generate(model, ...)`` call, which packs the weights itself only where that pays within the
call; **gpt2lab decoder** reuses one ``Decoder(model, batch=B)`` built before the timing (its
build time is printed), as a program that generates many times would; ``--compile`` adds a
reused ``Decoder(..., compile=True)`` (its compile time is printed). One untimed call of each first, then
``--repeats`` rounds, alternating the cases, and the best time of each counts (other processes
may share the CPU). "same tokens" is the share of generated tokens on which the two agree:
with random weights the logits are nearly flat, so rounding differences can flip an argmax.

**int8** (``--int8``): a small model (``mini`` preset, 4 x 256) trained briefly on
tinyshakespeare (the corpus shipped in the package, prepared into token shards), or the
checkpoint ``--int8-ckpt``; validation perplexity of the fp32 model and of its int8
dynamic-quantized copy (``gpt2lab.quantize.quantize_int8``) on the same validation windows;
then generation tokens/s of both for that model and for GPT-2 124M (batch 1 and 8).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

import harness

PROMPT_LEN = 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " See the module docstring for what is measured.")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per case; the best counts (default 3)")
    p.add_argument("--compile", action="store_true", help="also time a reused Decoder with a compiled decode step")
    p.add_argument("--pack", choices=["auto", "on", "off"], default="auto",
                   help="gpt2lab's packed weights (default auto)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--int8", action="store_true", help="run the int8 measurements instead of the comparison")
    p.add_argument("--int8-ckpt", default=None, help="checkpoint for --int8 (default: train a mini model briefly)")
    p.add_argument("--train-steps", type=int, default=300, help="--int8: steps of the brief training (default 300)")
    p.add_argument("--val-tokens", type=int, default=65536, help="--int8: validation tokens scored (default 65536)")
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    return p.parse_args(argv)


def _best_of(fns: dict, repeats: int) -> dict:
    """One untimed call of each, then ``repeats`` alternating rounds; the best time of each."""
    return {name: min(times) for name, times in harness.time_cases(fns, repeats).items()}


def bench_speed(args) -> list[dict]:
    from gpt2_pair import random_gpt2_pair

    from gpt2lab.generate import Decoder, generate

    hf32, ours32 = random_gpt2_pair()
    n = args.new_tokens
    pack = {"auto": None, "on": True, "off": False}[args.pack]
    results = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        hf = hf32.to(dtype)  # in place for nn.Module: fp32 first, then bf16
        ours = ours32.to(dtype)
        for B in args.batch:
            g = torch.Generator().manual_seed(B)
            ids = torch.randint(0, 50257, (B, PROMPT_LEN), generator=g)
            outs: dict = {}

            def run_hf():
                o = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                min_new_tokens=n)
                assert o.shape == (B, PROMPT_LEN + n), o.shape
                outs["hf"] = o[:, PROMPT_LEN:].tolist()

            def run_ours(decoder=None, key="ours"):
                o = generate(decoder or ours, ids.tolist(), n, temperature=0.0, pack=None if decoder else pack)
                assert [len(r) for r in o] == [PROMPT_LEN + n] * B
                outs[key] = [r[PROMPT_LEN:] for r in o]

            # a Decoder built once: packed weights (and the compiled step) reused by every call
            build_s, dec = harness.timed(lambda: Decoder(ours, batch=B))
            build = {"decoder build s": build_s}
            fns = {"transformers": run_hf, "gpt2lab": run_ours, "gpt2lab decoder": lambda: run_ours(dec, "decoder")}
            if args.compile:
                cdec = Decoder(ours, batch=B, compile=True)
                build["compile s"], _ = harness.timed(lambda: run_ours(cdec, "compiled"))  # compiles
                fns["gpt2lab compiled"] = lambda: run_ours(cdec, "compiled")
            try:
                with torch.no_grad():
                    best = _best_of(fns, args.repeats)
            except Exception as e:  # e.g. bf16 unsupported on this CPU
                print(f"{dtype_name} batch {B}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
                continue
            def agree(key):
                return sum(a == b for ra, rb in zip(outs["hf"], outs[key]) for a, b in zip(ra, rb)) / (B * n)

            # the share of positions where transformers' tokens and the least agreeing gpt2lab case's match
            same = min(agree(k) for k in ("ours", "decoder", "compiled") if k in outs)
            row = {"dtype": dtype_name, "batch": B, "prompt": PROMPT_LEN, "new_tokens": n, "same_tokens": same}
            for k, t in best.items():
                row[f"{k} tok/s"] = B * n / t
            row["ratio"] = row["gpt2lab tok/s"] / row["transformers tok/s"]
            row["decoder ratio"] = row["gpt2lab decoder tok/s"] / row["transformers tok/s"]
            if args.compile:
                row["compiled ratio"] = row["gpt2lab compiled tok/s"] / row["transformers tok/s"]
            row.update(build)
            results.append(row)
            _print_row(row, args.compile, header=len(results) == 1)
    return results


def _print_row(row: dict, compiled: bool, header: bool) -> None:
    cols = ["dtype", "batch", "transformers tok/s", "gpt2lab tok/s", "ratio", "gpt2lab decoder tok/s",
            "decoder ratio"]
    if compiled:
        cols += ["gpt2lab compiled tok/s", "compiled ratio", "compile s"]
    cols += ["decoder build s", "same_tokens"]
    if header:
        print(" | ".join(f"{c:>14}" for c in cols))
        print("-|-".join("-" * 14 for _ in cols))
    cells = []
    for c in cols:
        v = row[c]
        cells.append(f"{v:>13.2f}x" if "ratio" in c else f"{v:>14.1f}" if "tok/s" in c else
                     f"{v:>13.1%} " if c == "same_tokens" else f"{v:>14.2f}" if c.endswith(" s") else f"{v!s:>14}")
    print(" | ".join(cells), flush=True)


# --- int8 -----------------------------------------------------------------------------------
def _train_small(workdir: Path, steps: int) -> Path:
    from gpt2lab.config import load_config
    from gpt2lab.data.prepare import prepare
    from gpt2lab.quickstart import asset
    from gpt2lab.train import train

    data = workdir / "data"
    prepare([str(asset("tinyshakespeare.txt.gz"))], data, val_fraction=0.1, workers=1, log=lambda _m: None)
    cfg = load_config(asset("quickstart.yaml"), [
        f"data.dir={data}", f"train.run_dir={workdir / 'run'}", f"train.max_steps={steps}", "train.compile=false",
        "train.log_every=50", "train.ckpt_every=0", "eval.every=0", "eval.sample_every=-1", "train.dtype=float32",
        "optim.warmup_steps=30",
    ])
    print(f"training the quickstart model ({cfg.model.n_layer} x {cfg.model.n_embd}) for {steps} steps "
          "on tinyshakespeare")
    summary = train(cfg, log=lambda m: print("  " + m) if "step" in m and "/" in m else None)
    return Path(summary["checkpoint"])


def bench_int8(args) -> dict:
    from gpt2lab.checkpoint import load_model
    from gpt2lab.evals.loss import eval_windows, evaluate_loss
    from gpt2lab.generate import generate
    from gpt2lab.model import GPT, GPTConfig
    from gpt2lab.quantize import quantize_int8

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.int8_ckpt) if args.int8_ckpt else _train_small(Path(tmp), args.train_steps)
        model, cfg = load_model(ckpt)
        data = cfg.data.dir
        T = cfg.train.seq_len
        windows = eval_windows(data, cfg.data.val_split, T, args.val_tokens)
        q = quantize_int8(model)
        loss32 = evaluate_loss(model, windows, 8, "cpu")
        loss8 = evaluate_loss(q, windows, 8, "cpu")
    ppl32, ppl8 = math.exp(loss32), math.exp(loss8)
    res = {"checkpoint": str(ckpt) if args.int8_ckpt else f"mini, {args.train_steps} steps",
           "val_tokens": len(windows) * T, "val_loss_fp32": loss32, "val_loss_int8": loss8,
           "ppl_fp32": ppl32, "ppl_int8": ppl8, "ppl_change": ppl8 / ppl32 - 1, "speed": []}
    print(f"\nvalidation ({len(windows) * T:,} tokens): perplexity fp32 {ppl32:.3f}, int8 {ppl8:.3f} "
          f"({res['ppl_change']:+.2%})")

    torch.manual_seed(0)
    big = GPT(GPTConfig()).eval()
    print("\nmodel | batch | fp32 tok/s | int8 tok/s | int8/fp32")
    for name, m32, m8 in (("mini (trained)", model, q), ("gpt2 124M (random)", big, quantize_int8(big))):
        for B in args.batch:
            prompt = torch.randint(0, 50257, (B, PROMPT_LEN), generator=torch.Generator().manual_seed(B)).tolist()
            n = args.new_tokens
            best = _best_of({
                "fp32": lambda: generate(m32, prompt, n, temperature=0.0),
                "int8": lambda: generate(m8, prompt, n, temperature=0.0),
            }, args.repeats)
            row = {"model": name, "batch": B, "fp32 tok/s": B * n / best["fp32"], "int8 tok/s": B * n / best["int8"]}
            row["ratio"] = row["int8 tok/s"] / row["fp32 tok/s"]
            res["speed"].append(row)
            print(f"{name} | {B} | {row['fp32 tok/s']:.1f} | {row['int8 tok/s']:.1f} | {row['ratio']:.2f}x", flush=True)
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    machine = harness.start("cpu", transformers=transformers.__version__)
    result = {}
    if args.int8:
        result["int8"] = bench_int8(args)
    else:
        print(f"GPT-2 124M (random weights), prompt {PROMPT_LEN} tokens, {args.new_tokens} new tokens, greedy; "
              f"best of {args.repeats}")
        rows = bench_speed(args)
        result["speed"] = rows
        if rows:
            print("ratios to transformers (one call / reused decoder" + (" / compiled" if args.compile else "") + "): "
                  + ", ".join(f"{r['dtype']} B={r['batch']}: " + " / ".join(
                      f"{r[k]:.2f}x" for k in ("ratio", "decoder ratio", "compiled ratio") if k in r) for r in rows))
    if args.out:
        print(f"wrote {harness.write_results(args.out, machine, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HellaSwag scoring speed: the fast scorer against the plain one, same model, same items, same run.

    .venv/bin/python benchmarks/bench_hellaswag.py                    # 124M random init, 48 items, 4 cases
    .venv/bin/python benchmarks/bench_hellaswag.py --full             # ... then all 10,042 items, fast bf16
    .venv/bin/python benchmarks/bench_hellaswag.py --preset tiny --items 200

Cases (plain = one item at a time, its 4 endings as one padded batch through ``model(idx)``, as
build-nanogpt does; fast = one row per item packing the context once and the 4 endings behind it,
rows of similar length batched, LM head only where scored): plain fp32, plain bf16, fast fp32,
fast bf16, timed ``--repeat`` times round-robin (the fastest run counts: the machine may be
shared). Each prints items/s and its speed-up
over plain fp32 and over plain in the same dtype; fast fp32 is checked against plain fp32
(same predictions, max |difference| of the log-likelihoods). ``--full`` times the fast scorer
on every item (``--style``: completion, lm_eval or both, as ``gpt2lab eval hellaswag``).
Figures go to stdout and, as JSON, to ``--out``.
"""

from __future__ import annotations

import argparse
import functools

import torch

import harness
from gpt2lab.config import MODEL_PRESETS
from gpt2lab.device import autocast_for, cpu_supports_bf16
from gpt2lab.evals.hellaswag import evaluate_hellaswag, load_hellaswag, requests_for, select_items
from gpt2lab.evals.scoring import score_fast, score_plain
from gpt2lab.model import GPT, GPTConfig


def default_data() -> str | None:
    shared = harness.data_dir() / "hellaswag" / "hellaswag_val.jsonl"
    return str(shared) if shared.is_file() else None  # None: the cached official file (downloaded when missing)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt2", help="model preset, random init (default gpt2 = 124M)")
    ap.add_argument("--items", type=int, default=48, help="items for the plain-vs-fast comparison (default 48)")
    ap.add_argument("--style", default="completion", choices=["completion", "lm_eval", "both"],
                    help="text preparation scored (default completion; both = two requests per item)")
    ap.add_argument("--data", default=default_data(), help="hellaswag_val.jsonl (default: shared data, else cache)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: 4096 on CPU, 16384 on CUDA")
    ap.add_argument("--full", action="store_true", help="also time the fast bf16 scorer on all items")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per case, round-robin; the fastest counts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", default=str(harness.default_out("hellaswag")))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = harness.start("cpu")
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL_PRESETS[args.preset])).eval()
    all_items = load_hellaswag(args.data)
    items = select_items(all_items, args.items)
    styles = ("completion", "lm_eval") if args.style == "both" else (args.style,)
    reqs = [r for s in styles for r in requests_for(items, s)]
    bf16 = cpu_supports_bf16()
    print(f"model {args.preset} ({model.num_params() / 1e6:.0f}M, random init) | {len(items)} items x {len(styles)} "
          f"style(s) | bf16 {'yes' if bf16 else 'no'}")
    cases = [("plain", torch.float32), ("plain", torch.bfloat16), ("fast", torch.float32), ("fast", torch.bfloat16)]
    if not bf16:
        cases = [c for c in cases if c[1] == torch.float32]
    scores, runs = {}, {}
    for scorer, dtype in cases:
        ac = autocast_for("cpu", dtype)
        fn = score_plain if scorer == "plain" else functools.partial(score_fast, batch_tokens=args.batch_tokens,
                                                                       greedy=False)
        fn(model, reqs[:2], "cpu", ac)  # warm-up on two requests: allocator, oneDNN kernels

        def run(case=(scorer, dtype), fn=fn, ac=ac):
            scores[case] = fn(model, reqs, "cpu", ac)
        runs[(scorer, dtype)] = run
    times = harness.time_cases(runs, args.repeat, warmup=0)
    results = []
    for (scorer, dtype), ts in times.items():
        sec = min(ts)  # the least disturbed run
        results.append({"scorer": scorer, "dtype": str(dtype).replace("torch.", ""), "items": len(items),
                        "seconds": sec, "all_seconds": ts, "items_per_s": len(items) / sec})
    base = results[0]["items_per_s"]
    same_dtype = {r["dtype"]: r["items_per_s"] for r in results if r["scorer"] == "plain"}
    print(f"{'scorer':>6} {'dtype':>8} {'items':>6} {'best s':>8} {'items/s':>8} {'vs plain fp32':>13} "
          f"{'vs plain same dtype':>19}")
    for r in results:
        r["speedup_vs_plain_fp32"] = r["items_per_s"] / base
        r["speedup_vs_plain_same_dtype"] = r["items_per_s"] / same_dtype[r["dtype"]]
        print(f"{r['scorer']:>6} {r['dtype']:>8} {r['items']:>6} {r['seconds']:>8.2f} {r['items_per_s']:>8.2f} "
              f"{r['speedup_vs_plain_fp32']:>12.2f}x {r['speedup_vs_plain_same_dtype']:>18.2f}x")
    a, b = scores[("plain", torch.float32)], scores[("fast", torch.float32)]
    diff = max(abs(x.logprob - y.logprob) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    same = sum(max(range(4), key=lambda i: ra[i].logprob) == max(range(4), key=lambda i: rb[i].logprob)
               for ra, rb in zip(a, b))
    check = {"max_abs_logprob_diff_fp32": diff, "same_prediction": same, "requests": len(a)}
    print(f"fast fp32 vs plain fp32: same prediction for {same}/{len(a)} requests, max |logprob diff| {diff:.2e}")
    report = {"preset": args.preset, "style": args.style, "batch_tokens": args.batch_tokens, "cases": results,
              "check": check}
    if args.full:
        dtype = torch.bfloat16 if bf16 else torch.float32
        sec, (metrics, _) = harness.timed(lambda: evaluate_hellaswag(
            model, all_items, "cpu", autocast_for("cpu", dtype), styles=styles, batch_tokens=args.batch_tokens))
        report["full"] = {"items": len(all_items), "styles": list(styles), "seconds": sec,
                          "items_per_s": len(all_items) / sec, "dtype": str(dtype).replace("torch.", ""),
                          **{k: v for k, v in metrics.items() if k != "items"}}
        print(f"full set: {len(all_items):,} items x {len(styles)} style(s), fast {report['full']['dtype']}: "
              f"{sec:.1f} s ({len(all_items) / sec:.1f} items/s) | " +
              " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "items"))
    print(f"wrote {harness.write_results(args.out, machine, report)}")


if __name__ == "__main__":
    main()

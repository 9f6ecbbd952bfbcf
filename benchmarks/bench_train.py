"""Training throughput figures: GPT-2 124M and the `tiny` preset, eager and torch.compile, bf16.

    python benchmarks/bench_train.py                      # everything, JSON to benchmarks/results/train-<host>.json
    python benchmarks/bench_train.py --only tiny --steps 5
    python benchmarks/bench_train.py --compile off --out /tmp/eager.json
    python benchmarks/bench_train.py --peers hf nanogpt build-nanogpt      # beside the peers, same run
    python benchmarks/bench_train.py --peers nanogpt --peer-file nanogpt=model.py   # a local copy, no network

The bf16 and fp32 matmul peaks are measured at the start and again at the end (the better of the
two counts); every case reports tokens/s, ms/step and MFU against them (see gpt2lab/bench.py and
benchmarks/README.md). The JSON (command, machine, peaks, one object per case) is
rewritten after each case, so an interrupted run keeps what it finished.

``--peers`` times other trainers' models of the same shape right after gpt2lab's, under the same
step and protocol: transformers' GPT2LMHeadModel (``hf``), nanoGPT's ``model.py`` and
build-nanogpt's model (fetched at run time at a pinned commit, see peers.py). Each gpt2lab case
reports ``vs_peer``: its tokens/s over the best peer's, same shape and compile setting.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import harness
import peers as peer_models
from gpt2lab.bench import COMPILE_MODES, bench_train
from gpt2lab.bench_table import add_compile_ratios, add_peer_ratios, format_table
from gpt2lab.device import DTYPES
from gpt2lab.perf import measure_peaks, set_peaks

# name -> (preset, micro-batch, seq_len, timed steps, warm-up steps eager, warm-up steps compiled)
CASES = {
    "gpt2": ("gpt2", 4, 1024, 3, 1, 2),
    "tiny": ("tiny", 16, 256, 10, 2, 2),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark training steps (tokens/s, ms/step, MFU) for "
        + ", ".join(f"{k} (B={v[1]}, T={v[2]})" for k, v in CASES.items())
        + ", with and without torch.compile, and save the results as JSON.",
    )
    p.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE",
                   help=f"cases to run, of: {', '.join(CASES)} (default all)")
    p.add_argument("--compile", choices=list(COMPILE_MODES), default="both",
                   help="torch.compile off, on, or both side by side (default both)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps for every case (default: "
                   + ", ".join(f"{k} {v[3]}" for k, v in CASES.items()) + ")")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before timing for every case (default: gpt2 1 eager / 2 compiled, tiny 2)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                   help="autocast dtype (default bfloat16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--cold-compile", action="store_true",
                   help="disable inductor's on-disk caches, so compile warm-up times are cold-start times")
    p.add_argument("--retry-busy", type=int, default=3,
                   help="CPU: when other processes took CPU during a case's timed steps (cpu share < 0.85), "
                   "time them again, up to this many more times; every attempt is kept in the JSON (default 3)")
    p.add_argument("--peers", nargs="*", default=[], choices=["gpt2lab", "hf", *peer_models.SOURCES], metavar="PEER",
                   help="also time these models of the same shapes: hf (transformers), "
                   + ", ".join(peer_models.SOURCES) + " (downloaded at a pinned commit; default none), in this "
                   "order after gpt2lab's; name gpt2lab among them to place it elsewhere (e.g. last)")
    p.add_argument("--peer-file", action="append", default=[], metavar="NAME=PATH",
                   help="a local copy of a peer's pinned source file (nanogpt=model.py, build-nanogpt=train_gpt2.py)")
    p.add_argument("--out", default=None,
                   help="JSON file for the results (default benchmarks/results/train-<hostname>.json)")
    return p.parse_args(argv)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cold_compile:
        # Read when torch._inductor is first imported, which happens at the first compile, not before.
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    log = harness.log
    out = args.out or harness.default_out("train")
    if any("=" not in f for f in args.peer_file):
        raise SystemExit("error: --peer-file takes NAME=PATH, e.g. nanogpt=model.py")
    files = dict(f.split("=", 1) for f in args.peer_file)
    order = args.peers if "gpt2lab" in args.peers else ["gpt2lab", *args.peers]
    # name -> make_model (None: gpt2lab's own model, or transformers', which bench_train builds itself)
    who = {p: (None if p in ("gpt2lab", "hf") else peer_models.peer_model(p, files.get(p))) for p in order}
    machine = harness.start(args.device)
    log("measuring bf16 and fp32 matmul peaks ...")
    peaks = measure_peaks(args.device)
    log(f"peaks: bf16 {peaks['peak_bf16_flops'] / 1e12:.3f} TFLOP/s, "
        f"fp32 {peaks['peak_fp32_flops'] / 1e12:.3f} TFLOP/s")
    doc = {"started": _now(), "cold_compile": args.cold_compile, "peaks": peaks, "results": []}
    for name in [c for c in CASES if c in args.only]:
        preset, batch, seq_len, steps, warm_eager, warm_compiled = CASES[name]
        for compiled in COMPILE_MODES[args.compile]:
            warmup = args.warmup if args.warmup is not None else (warm_compiled if compiled else warm_eager)
            for peer, make_model in who.items():
                r = bench_train(preset, batch=batch, seq_len=seq_len, dtype=args.dtype, compile=compiled,
                                steps=args.steps or steps, warmup=warmup, device=args.device, peer=peer,
                                make_model=make_model, peaks=peaks, retry=harness.retry_while_busy(args.retry_busy),
                                log=log)
                doc["results"].append(r)
                add_peer_ratios(add_compile_ratios(doc["results"]))
                harness.write_results(out, machine, doc)  # after each case: an interrupted run keeps what it finished
    # The peak is a best-of: measure it again at the end and keep the better of the two, so that a
    # busy moment at the start does not inflate every MFU. Both measurements are kept in the JSON.
    log("measuring the matmul peaks again ...")
    again = measure_peaks(args.device)
    doc["peaks_at_start"], doc["peaks_at_end"] = peaks, again
    peaks = dict(peaks)
    for key in ("bf16", "fp32"):
        if again[f"peak_{key}_flops"] > peaks[f"peak_{key}_flops"]:
            peaks[f"peak_{key}_flops"], peaks[f"peak_{key}_n"] = again[f"peak_{key}_flops"], again[f"peak_{key}_n"]
    doc["peaks"] = peaks
    for r in doc["results"]:
        set_peaks(r, peaks)
    doc["finished"] = _now()
    harness.write_results(out, machine, doc)
    print(format_table(doc["results"], peaks), flush=True)
    log(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

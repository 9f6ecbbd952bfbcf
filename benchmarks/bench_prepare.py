"""Data pipeline speed: ``gpt2lab prepare`` against bare tiktoken, and the loader against a training step.

    python benchmarks/bench_prepare.py                      # Wikipedia jsonl x 3, all cores
    python benchmarks/bench_prepare.py --workers 1 --repeat 1
    python benchmarks/bench_prepare.py --no-step            # skip timing a gpt2 training step

**prepare**: ``gpt2lab.data.prepare.prepare`` on ``$GPT2LAB_DATA/corpora/wikipedia-en.jsonl``
(18,230 articles, 27.7 MB) given ``--repeat`` times as input, with ``--workers`` processes,
timed end to end (pool start, reading, JSON parsing, tokenizing, writing shards with their
sha256, the manifest). **bare**: the same documents already parsed into memory, split into
``--workers`` parts, each part given to ``encode_ordinary_batch`` in one of ``--workers`` forked
processes that already hold their part and a loaded tokenizer and start together (timed from
the first start to the last finish): tokenizing and nothing else, no IPC. Both figures
come from the same run; the ratio prepare/bare is what to compare (target >= 0.9). Each is the
best of ``--rounds`` rounds, alternating.

**loader**: ``TokenLoader.next_batch`` on the prepared training shards at the recipe's shape
(64 x 1024 tokens per call), plain and shuffled, in tokens/s. **step**: one ``gpt2`` (124M)
forward+backward under bf16 autocast at 1 x 1024 tokens on this machine, in tokens/s: the
rate a training process consumes tokens. The loader must serve at least 100x that.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import tiktoken

import harness
from gpt2lab.data import TokenLoader
from gpt2lab.data.prepare import prepare
from gpt2lab.tokenizer import get_tokenizer


def _bare_worker(docs: list[str], barrier, results) -> None:
    enc = get_tokenizer()
    enc.encode_ordinary_batch(docs[:10], num_threads=1)  # warm
    barrier.wait()
    t0 = time.perf_counter()
    n = sum(len(t) for t in enc.encode_ordinary_batch(docs, num_threads=1))
    results.put((t0, time.perf_counter(), n))


def bare_tiktoken(docs: list[str], workers: int) -> tuple[float, int]:
    """Each of ``workers`` forked processes already holds its share of the documents (no IPC is timed)
    and a loaded tokenizer; they start together; the time is first start to last finish."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_bare_worker, args=(docs[i::workers], barrier, results)) for i in range(workers)]
    for p in procs:
        p.start()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return max(o[1] for o in out) - min(o[0] for o in out), sum(o[2] for o in out)


def time_prepare(inputs, out: Path, workers: int) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    return harness.timed(lambda: prepare(inputs, out, val_fraction=0.01, shard_tokens=10_000_000, workers=workers,
                                         log=lambda _m: None))


def loader_rate(data_dir: Path, shuffle: bool, seconds: float = 3.0) -> float:
    ld = TokenLoader(data_dir, "train", 64, 1024, shuffle=shuffle, verify=False)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, y = ld.next_batch()
        n += x.numel()
    return n / (time.perf_counter() - t0)


def gpt2_step_rate() -> float:
    """Tokens/s of a gpt2 forward+backward under bf16 autocast at 1 x 1024: best of 2 after a warm-up."""
    import torch

    from gpt2lab.config import MODEL_PRESETS
    from gpt2lab.device import autocast_for
    from gpt2lab.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL_PRESETS["gpt2"]))
    x = torch.randint(0, 50257, (1, 1024))

    def step():
        with autocast_for("cpu", torch.bfloat16):
            _, loss = model(x, x)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return 1024 / harness.best_time(step, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(harness.data_dir()), help="shared data folder (default $GPT2LAB_DATA, "
                    "else ../shared/data next to this checkout)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3, help="give the corpus this many times (more text to time)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-step", action="store_true", help="do not time a gpt2 training step")
    ap.add_argument("--out", default=None, help="JSON results file")
    args = ap.parse_args()

    machine = harness.start("cpu", tiktoken=tiktoken.__version__)
    src = Path(args.data) / "corpora" / "wikipedia-en.jsonl"
    if not src.is_file():
        sys.exit(f"error: {src} not found; set GPT2LAB_DATA or --data")
    inputs = [str(src)] * args.repeat
    docs = [json.loads(line)["text"] for line in src.read_text(encoding="utf-8").splitlines()] * args.repeat
    mb = src.stat().st_size * args.repeat / 1e6
    W = args.workers
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    bare_s, prep_s = [], []
    try:
        for _ in range(args.rounds):
            s, n_bare = bare_tiktoken(docs, W)
            bare_s.append(s)
            s, manifest = time_prepare(inputs, tmp / "out", W)
            prep_s.append(s)
        n_docs = manifest["documents"]["kept"]
        n_tok = manifest["tokens"]["total"]
        assert n_tok == n_bare + n_docs, (n_tok, n_bare, n_docs)  # the same text: prepare adds one EOT per document
        bare, prep = min(bare_s), min(prep_s)
        res = {
            "workers": W, "input_mb": round(mb, 1), "documents": n_docs, "tokens": n_tok,
            "bare": {"seconds": round(bare, 3), "mb_per_s": round(mb / bare, 2), "tokens_per_s": round(n_bare / bare)},
            "prepare": {"seconds": round(prep, 3), "mb_per_s": round(mb / prep, 2),
                        "tokens_per_s": round(n_tok / prep)},
        }
        res["ratio_prepare_over_bare"] = round((n_tok / prep) / (n_bare / bare), 3)
        print(f"input: {mb:.1f} MB, {n_docs:,} documents, {n_tok:,} tokens; {W} process(es); best of {args.rounds}")
        print(f"{'':10} {'seconds':>8} {'MB/s':>8} {'tokens/s':>12}")
        for name in ("bare", "prepare"):
            r = res[name]
            print(f"{name:10} {r['seconds']:>8.2f} {r['mb_per_s']:>8.2f} {r['tokens_per_s']:>12,}")
        print(f"prepare / bare tiktoken: {res['ratio_prepare_over_bare']:.3f}  (target >= 0.9)")

        res["loader_tokens_per_s"] = {s: round(loader_rate(tmp / "out", s == "shuffled"))
                                      for s in ("sequential", "shuffled")}
        for k, v in res["loader_tokens_per_s"].items():
            print(f"loader ({k}, 64 x 1024 per batch): {v:,} tokens/s")
        if not args.no_step:
            step = gpt2_step_rate()
            res["gpt2_step_tokens_per_s"] = round(step, 1)
            worst = min(res["loader_tokens_per_s"].values())
            res["loader_over_step"] = round(worst / step)
            print(f"gpt2 training step (bf16, 1 x 1024, fwd+bwd) consumes {step:,.0f} tokens/s here: "
                  f"the loader serves {worst / step:,.0f}x that (target >= 100x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        harness.write_results(args.out, machine, res)


if __name__ == "__main__":
    main()

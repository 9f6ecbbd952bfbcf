"""Your own tokenizer against GPT-2's: bytes per token on held-out Wikipedia, training time, encode speed.

    python benchmarks/bench_tokenizer.py                          # vocab 32768 and 50257, last 10% held out
    python benchmarks/bench_tokenizer.py --vocab 8192 --repeats 1
    python benchmarks/bench_tokenizer.py --vocab 50257 --train-fraction 0.5   # how the gain grows with the corpus
    python benchmarks/bench_tokenizer.py --vocab 50257 --pattern cl100k
    python benchmarks/bench_tokenizer.py --vocab 50257 --in-sample 3000      # also on text it was trained on

The articles of ``$GPT2LAB_DATA/corpora/wikipedia-en.jsonl`` (18,230, in file order) are split:
the last ``--held-out`` fraction is never seen by training (``--train-fraction``: train on the first
part of the rest only, to see how the gain grows with the corpus). For each ``--vocab`` a byte-level BPE
is trained on the rest with ``gpt2lab.tokenizer_train.train_tokenizer`` (what ``gpt2lab tokenizer
train`` runs: reading the jsonl, the ``tokenizers`` trainer, writing the folder), timed end to end.
Then GPT-2's tokenizer and each trained one encode the held-out articles through gpt2lab's path
(``tokenizer_stats``: prepare's ``tokenize_texts``, tiktoken, one process; tokens/s is the best of
``--repeats`` passes), giving bytes per token (UTF-8 bytes of the articles / tokens, the
``<|endoftext|>`` before each article not counted) and its gain over GPT-2's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import tokenizers

import harness
from gpt2lab.tokenizer_train import format_stats, tokenizer_stats, train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=harness.data_dir() / "corpora" / "wikipedia-en.jsonl")
    ap.add_argument("--held-out", type=float, default=0.1, help="last fraction of the articles held out (default 0.1)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="train on the first fraction of the articles not held out (default 1: all of them)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[32768, 50257], help="vocabulary sizes to train")
    ap.add_argument("--pattern", default="gpt2", help="pre-tokenisation pattern of the trained ones (default gpt2)")
    ap.add_argument("--in-sample", type=int, default=0, metavar="N",
                    help="also measure bytes per token on the first N training articles (text the BPE has seen): "
                    "what a vocabulary fitted to its text gains at most (default 0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="timed encode passes; tokens/s is the best (default 3)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the split and the trained tokenizers in this folder")
    ap.add_argument("--out", type=Path, default=harness.default_out("tokenizer"))
    args = ap.parse_args()

    machine = harness.start("cpu", tokenizers=tokenizers.__version__)
    lines = [line for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    n_held = round(len(lines) * args.held_out)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    work.mkdir(parents=True, exist_ok=True)
    train_file, held_file = work / "train.jsonl", work / "heldout.jsonl"
    n_train = round((len(lines) - n_held) * args.train_fraction)
    train_file.write_text("\n".join(lines[:n_train]) + "\n", encoding="utf-8")
    held_file.write_text("\n".join(lines[-n_held:]) + "\n", encoding="utf-8")
    held_ids = {json.loads(line)["id"] for line in lines[-n_held:]}
    assert not held_ids & {json.loads(line)["id"] for line in lines[:-n_held]}, "an article in both parts"
    harness.log(f"{n_train:,} articles ({train_file.stat().st_size / 1e6:.1f} MB) to train on, "
                f"{n_held:,} ({held_file.stat().st_size / 1e6:.1f} MB) held out")

    trained = []
    for v in args.vocab:
        folder = work / f"wiki-{v}"
        t0 = time.perf_counter()
        tok = train_tokenizer([train_file], v, folder, pattern=args.pattern, overwrite=True, log=harness.log)
        trained.append({"vocab_size": v, "pattern": args.pattern, "folder": str(folder), "sha256": tok.sha256,
                        "train_seconds": round(time.perf_counter() - t0, 2)})
    def stats(path: Path, repeats: int) -> list[dict]:
        """GPT-2's and each trained tokenizer's figures on ``path``, with the gain over GPT-2's (the first row)."""
        rows = tokenizer_stats([path], ["gpt2"] + [t["folder"] for t in trained], repeats=repeats)
        for r in rows:
            r["gain_vs_gpt2"] = r["bytes_per_token"] / rows[0]["bytes_per_token"] - 1
        return rows

    rows = stats(held_file, args.repeats)
    print(format_stats(rows))
    doc_extra = {}
    if args.in_sample:
        seen_file = work / "seen.jsonl"
        seen_file.write_text("\n".join(lines[:args.in_sample]) + "\n", encoding="utf-8")
        seen = stats(seen_file, repeats=1)
        print(f"in sample: the first {args.in_sample:,} training articles")
        print(format_stats(seen))
        doc_extra = {"in_sample_articles": args.in_sample, "in_sample_stats": seen}
    for t in trained:
        print(f"trained {t['vocab_size']:,}: {t['train_seconds']:.1f} s")
    doc = {"data": str(args.data), "articles": len(lines), "held_out_articles": n_held, "train_articles": n_train,
           "train_bytes": train_file.stat().st_size, "threads": os.cpu_count(), "trained": trained, "stats": rows,
           **doc_extra}
    print(f"wrote {harness.write_results(args.out, machine, doc)}")


if __name__ == "__main__":
    main()

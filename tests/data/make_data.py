"""Regenerate tests/data from the shared data folder (see PROVENANCE.md next to this file).

    python tests/data/make_data.py [SHARED_DATA]          # write the files here
    python tests/data/make_data.py [SHARED_DATA] --check  # only compare with what is here

SHARED_DATA defaults to $GPT2LAB_DATA, else ../shared/data beside the repository. Every file is
cut byte for byte from a shared file (whole lines, or a byte prefix), except
gpt2_tokenizer.sha256, which records the sha256 of the shared GPT-2 tokenizer files.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

SHAKESPEARE_BYTES = 100_000
HELLASWAG_ITEMS = 120  # spread evenly over the 10,042 items: line i * N // 120
HELLASWAG_OFFICIAL_ITEMS = 10
LAMBADA_PASSAGES = 120
LAMBADA_JSONL_PASSAGES = 40
WIKI_ARTICLES = 40


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def build(shared: Path) -> dict[str, bytes]:
    hs = lines(shared / "hellaswag" / "hellaswag_val.jsonl")
    tok = shared / "tokenizer" / "gpt2"
    return {
        "tinyshakespeare_head.txt":
            (shared / "corpora" / "tinyshakespeare" / "input.txt").read_bytes()[:SHAKESPEARE_BYTES],
        "hellaswag_val_120.jsonl":
            b"".join(hs[i * len(hs) // HELLASWAG_ITEMS] for i in range(HELLASWAG_ITEMS)),
        "hellaswag_val_official_head.jsonl":
            b"".join(lines(shared / "hellaswag" / "hellaswag_val_official_sample.jsonl")[:HELLASWAG_OFFICIAL_ITEMS]),
        "lambada_test_plain_text_head.txt":
            b"".join(lines(shared / "eval" / "lambada_test_plain_text.txt")[:LAMBADA_PASSAGES]),
        "lambada_original_test_head.jsonl":
            b"".join(lines(shared / "eval" / "lambada_original_test.jsonl")[:LAMBADA_JSONL_PASSAGES]),
        "wikipedia-en_head.jsonl":
            b"".join(lines(shared / "corpora" / "wikipedia-en.jsonl")[:WIKI_ARTICLES]),
        "gpt2_124M_reference.json": (shared / "reference" / "gpt2_124M_reference.json").read_bytes(),
        "gpt2_tokenizer.sha256": b"".join(
            f"{hashlib.sha256((tok / name).read_bytes()).hexdigest()}  {name}\n".encode()
            for name in ("encoder.json", "vocab.bpe", "gpt2.tiktoken")),
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    shared = Path(args[0] if args else os.environ.get("GPT2LAB_DATA", REPO.parent / "shared" / "data"))
    if not shared.is_dir():
        print(f"error: shared data folder {shared} not found", file=sys.stderr)
        return 2
    bad = 0
    for name, data in build(shared).items():
        dst = HERE / name
        if check:
            same = dst.is_file() and dst.read_bytes() == data
            bad += not same
            print(f"{'ok  ' if same else 'DIFF'} {name}")
        else:
            dst.write_bytes(data)
            print(f"wrote {dst.relative_to(REPO)} ({len(data)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

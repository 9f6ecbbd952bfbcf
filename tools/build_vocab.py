"""Rebuild gpt2lab/assets/gpt2.tiktoken from OpenAI's GPT-2 encoder.json and vocab.bpe.

    python tools/build_vocab.py ENCODER_JSON VOCAB_BPE [OUT]

Both inputs are sha256-checked against the hashes tiktoken pins for GPT-2, and the output is
checked against the hash gpt2lab verifies at load time, so the shipped file can be reproduced.
"""

from __future__ import annotations

import base64
import os
import sys

from tiktoken.load import data_gym_to_mergeable_bpe_ranks

ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"


def build(encoder_json: str, vocab_bpe: str) -> bytes:
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=vocab_bpe,
        encoder_json_file=encoder_json,
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    lines = [base64.b64encode(tok) + b" " + str(rank).encode()
             for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    return b"\n".join(lines) + b"\n"


def main(argv: list[str]) -> int:
    import hashlib

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from gpt2lab.tokenizer import VOCAB_SHA256, vocab_path

    if len(argv) not in (2, 3):
        print(__doc__)
        return 2
    out = argv[2] if len(argv) == 3 else vocab_path()
    data = build(argv[0], argv[1])
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        print(f"built vocabulary has sha256 {digest}, expected {VOCAB_SHA256}", file=sys.stderr)
        return 1
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    print(f"wrote {out} ({len(data)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

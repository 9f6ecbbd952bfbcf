"""Helpers the tests share (fixtures are in conftest.py): the ``gpt2lab`` command in a subprocess,
as a user runs it; a silent log; the micro training config; the small data in tests/data."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2lab.device import cpu_supports_bf16

DATA = Path(__file__).resolve().parent / "data"  # see data/PROVENANCE.md
# A CPU without bf16 instructions (AVX2 only, e.g. an older AMD EPYC) emulates bf16 matmuls at about
# 1 GFLOP/s: a bf16 test that takes seconds on a GPU or an AVX-512/AMX CPU takes minutes there.
needs_fast_bf16 = pytest.mark.skipif(not torch.cuda.is_available() and not cpu_supports_bf16(),
                                     reason="bf16 on this CPU is emulated (no AVX-512 BF16 or AMX): minutes a test")


def gpt2lab(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpt2lab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """Assert a user error: exit 2, exactly one ``error: ...`` line, no traceback; return the line."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]


class socket_port:
    """A free TCP port on localhost (closed again before use)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def quiet(_msg):
    pass


def micro_cfg(data_dir, run_dir, *extra):
    """A micro model on the prepared shards: fp32, a few small steps, cheap eval and sampling."""
    from gpt2lab.config import load_config

    return load_config(None, [
        f"data.dir={data_dir}", f"train.run_dir={run_dir}", "model.preset=micro", "train.device=cpu",
        "train.dtype=float32", "train.micro_batch=4", "train.seq_len=32", "train.max_steps=4",
        "optim.warmup_steps=2", "eval.every=2", "eval.val_tokens=1024", "eval.sample_count=1",
        "eval.sample_tokens=4", *extra,
    ])


def ckpt_cfg(data_dir, run_dir, steps: int, *extra):
    """``micro_cfg`` for checkpoint tests: ``steps`` steps, a checkpoint every 2, no evaluations."""
    return micro_cfg(data_dir, run_dir, f"train.max_steps={steps}", "train.ckpt_every=2", "optim.warmup_steps=1",
                     "eval.every=-1", "eval.sample_every=-1", *extra)


@functools.cache
def _wiki_articles() -> tuple:
    with open(DATA / "wikipedia-en_head.jsonl", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def wiki_rows(n: int) -> list[dict]:
    """n Wikipedia articles ({id, title, text}): the real ones in tests/data first, then distinct variants of them
    (article i % K with its paragraphs rotated by i // K and a first line naming the variant)."""
    base = _wiki_articles()
    rows = []
    for i in range(n):
        art, r = base[i % len(base)], i // len(base)
        if r == 0:
            rows.append(dict(art))
            continue
        paras = art["text"].split("\n")
        k = r % len(paras)
        rows.append({"id": str(int(art["id"]) + r * 10**9), "title": f"{art['title']} ({r})",
                     "text": f"{art['title']}, variant {r}.\n" + "\n".join(paras[k:] + paras[:k])})
    return rows


def write_wiki_jsonl(path: Path, n: int) -> Path:
    """``wiki_rows(n)`` as a .jsonl file, one article a line."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in wiki_rows(n)), encoding="utf-8")
    return path


TOKENIZER_CORPUS = (DATA / "wikipedia-en_head.jsonl", DATA / "tinyshakespeare_head.txt")  # trains the small BPE


def held_out_texts() -> list[str]:
    """Text the small trained tokenizer never saw: LAMBADA passages and HellaSwag contexts and endings."""
    texts = list((DATA / "lambada_test_plain_text_head.txt").read_text(encoding="utf-8").splitlines())
    for line in (DATA / "hellaswag_val_120.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        texts += [item["ctx"], *(" " + e for e in item["endings"])]
    return texts


def gpt2_tokenizer_sha256() -> dict[str, str]:
    """sha256 of OpenAI's encoder.json, vocab.bpe and of gpt2.tiktoken (= r50k_base.tiktoken), by file name."""
    pairs = (line.split() for line in (DATA / "gpt2_tokenizer.sha256").read_text().splitlines())
    return {name: digest for digest, name in pairs}

"""LAMBADA: predict the last word of a passage.

Each passage is split at its last space: the context is the text before it, the target is
``" " + last word`` (as lm-eval-harness does). Per passage we score the target's tokens:

- ``acc``: greedy accuracy, 1 when every token of the last word is the model's argmax;
- ``ppl``: perplexity of the last word, ``exp(-mean over passages of log p(last word))``
  (lm-eval-harness' ``perplexity``; GPT-2's paper reports this kind of figure, 35.13 for 124M).

Variants:

- ``openai``: the detokenized test set OpenAI made for GPT-2, which lm-eval-harness calls
  ``lambada_openai`` (5,153 passages, jsonl ``{"text": ...}``); downloaded into the cache when
  reachable, else pass ``--data``.
- ``original``: the original LAMBADA test set (Paperno et al., 2016; 5,153 passages, lowercased,
  PTB-style tokens such as ``do n't``), a local file only (``--data``): jsonl with ``text`` or
  plain text with one passage per line. It is scored as it is, without detokenization, so its
  numbers are lower than ``openai``'s and not comparable to them.

A local file is the variant its text shows (:func:`file_variant`), unless one is named: the
original release is lowercased throughout, OpenAI's is not.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..distributed import DistInfo, all_reduce_sum
from ..errors import UserError
from ..tokenizer import Tokenizer, load_tokenizer
from .common import cache_dir, download, gather_records, read_jsonl, run_task, select_items
from .scoring import Request, score_fast, score_plain

# lambada_openai: Hugging Face copy (checksum as pinned by users of it), then OpenAI's original location.
OPENAI_URLS = [
    "https://huggingface.co/datasets/EleutherAI/lambada_openai/resolve/main/data/lambada_test_en.jsonl",
    "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
]
OPENAI_SHA256 = {OPENAI_URLS[0]: "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"}
VARIANTS = ("openai", "original")


def default_path() -> Path:
    return cache_dir() / "lambada" / "lambada_openai_test.jsonl"


def fetch_openai(dest: Path | None = None, urls: list[str] | None = None, option: str = "--data PATH") -> Path:
    """Download lambada_openai into the cache (the first URL that works)."""
    return download(urls or OPENAI_URLS, Path(dest) if dest else default_path(), sha256=OPENAI_SHA256,
                    what="LAMBADA (lambada_openai)", option=option)


def load_lambada(path: str | os.PathLike | None = None, variant: str = "openai",
                 option: str = "--data PATH") -> list[str]:
    """Passages of LAMBADA: from ``path`` (jsonl with 'text', or one passage per line), or the cached download of
    ``variant``; ``option`` is how the user gives a local file (``--data PATH``, ``eval.lambada_data=PATH``)."""
    if variant not in VARIANTS:
        raise UserError(f"LAMBADA variant {variant!r}: choose {' or '.join(VARIANTS)}")
    if path is None:
        if variant == "original":
            raise UserError("the original LAMBADA test set is not downloaded: pass its file "
                            f"(lambada_test_plain_text.txt, or a jsonl with 'text') as {option}")
        path = default_path()
        if not path.is_file():
            fetch_openai(path, option=option)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such LAMBADA file; check the path given as {option}")
    if path.suffix.lower() in (".jsonl", ".json"):  # JSON lines, as lm-eval's lambada_openai
        texts = []
        for n, r in enumerate(read_jsonl(path, "LAMBADA", option), 1):
            if not isinstance(r.get("text"), str):
                raise UserError(f"{path} record {n}: no 'text' string field; is this a LAMBADA jsonl file?")
            texts.append(r["text"])
    else:
        try:
            texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8 text; expected one LAMBADA passage per line") from None
    for n, t in enumerate(texts, 1):
        if " " not in t.strip():
            raise UserError(f"{path} passage {n}: needs a context and a last word separated by a space")
    if not texts:
        raise UserError(f"{path}: no passages")
    return texts


def file_variant(texts: list[str]) -> str:
    """The variant passages of a local file are: "original" when lowercased throughout (the original release),
    else "openai" (OpenAI's detokenized set keeps its capitals)."""
    return "original" if all(t == t.lower() for t in texts) else "openai"


def split_passage(text: str) -> tuple[str, str]:
    """(context, target): the target is the last space-separated word, with its leading space."""
    ctx, _, word = text.strip().rpartition(" ")
    return ctx, " " + word


def _exp(x: float) -> float:
    """exp, inf past float's range (a perplexity of a model that puts next to nothing on the words)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def evaluate_lambada(
    model,
    texts: list[str],
    device: str = "cpu",
    autocast=None,
    dist_info: DistInfo | None = None,
    *,
    batch_tokens: int | None = None,
    plain: bool = False,
    gather: bool = True,
    tokenizer: Tokenizer | None = None,
) -> tuple[dict, list[dict]]:
    """Score ``texts``; return (metrics, per-passage records).

    Metrics are over all passages on every rank. Records are those of every rank, or with
    ``gather=False`` only this rank's (no object collective: training needs the metrics only).
    """
    info = dist_info or DistInfo(device=device)
    was_training = model.training
    tok = tokenizer or load_tokenizer()
    mine = list(range(info.rank, len(texts), info.world_size))
    pairs = [split_passage(texts[i]) for i in mine]
    reqs = [Request(tok.encode(c), [tok.encode(w)], tok.eot_token) for c, w in pairs]
    if plain:
        scores = score_plain(model, reqs, device, autocast)
    else:
        scores = score_fast(model, reqs, device, autocast, batch_tokens=batch_tokens)
    model.train(was_training)
    records = [{"index": i, "target": w.strip(), "logprob": s[0].logprob, "tokens": s[0].n_tokens,
                "greedy": s[0].greedy} for i, (_, w), s in zip(mine, pairs, scores)]
    totals = torch.tensor([len(records), sum(r["greedy"] for r in records), sum(r["logprob"] for r in records),
                           sum(r["tokens"] for r in records)], dtype=torch.float64, device=device)
    all_reduce_sum(totals, info)
    n, hits, lp, ntok = totals.tolist()
    metrics = {"items": int(n), "acc": hits / max(n, 1), "ppl": _exp(-lp / max(n, 1)),
               "token_ppl": _exp(-lp / max(ntok, 1))}
    if gather:
        records = sorted(gather_records(records, info), key=lambda r: r["index"])
    return metrics, records


def run_lambada(
    model_path: str,
    *,
    variant: str | None = None,
    data: str | None = None,
    out: str | None = None,
    limit: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    batch_tokens: int | None = None,
    plain: bool = False,
    tokenizer: str | None = None,
) -> dict:
    """``gpt2lab eval lambada``: score a model, write the per-passage file and the summary JSON.

    ``gpt2lab eval lambada`` takes these arguments as its options (``--help`` shows this text).

    Args:
        model_path: checkpoint folder, run folder, or a Hugging Face GPT-2 folder or hub name
        variant: openai (detokenized, lambada_openai; downloaded when reachable) or original (lowercased,
            tokenized; needs a data file); default: openai, or what the data file is (original when it is lowercased
            throughout)
        data: jsonl with 'text' or one passage per line (default: lambada_openai, downloaded)
        out: folder for the result files (default: evals/<name of MODEL>)
        limit: score only N items, a fixed subset spread evenly over the file, as training's evaluation does (0: all)
        device: auto, cpu, cuda or cuda:N
        dtype: autocast dtype (auto: bfloat16 where the hardware has it)
        batch_tokens: tokens per forward batch
        plain: use the plain one-example-at-a-time scorer (reference, slow)
        tokenizer: gpt2 or a tokenizer folder (gpt2lab tokenizer train); default: the model's own (a checkpoint's
            copy, else gpt2); one that differs from the model's recorded tokenizer is an error
    """
    texts = load_lambada(data, variant or "openai")
    variant = variant or (file_variant(texts) if data else "openai")
    return run_task(
        f"lambada_{variant}", model_path, lambda: select_items(texts, limit),  # the subset eval.lambada_items scores
        lambda model, texts, info, autocast, tok: evaluate_lambada(
            model, texts, info.device, autocast, info, batch_tokens=batch_tokens, plain=plain, tokenizer=tok),
        data_label=str(data or default_path()), out=out, device=device, dtype=dtype, plain=plain, tokenizer=tokenizer,
        definitions={"acc": "greedy: every token of the last word is the argmax",
                     "ppl": "exp(-mean log-likelihood of the last word), per passage",
                     "token_ppl": "exp(-mean log-likelihood per last-word token)"},
    )

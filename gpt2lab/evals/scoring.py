"""Log-likelihood of continuations given a context: the engine under HellaSwag and LAMBADA.

A :class:`Request` is one context and one or more continuations (HellaSwag: 4 endings,
LAMBADA: 1 last word). For each continuation we want the summed log-probability of its
tokens, their number, and whether greedy decoding would have produced every one of them.

Two implementations give the same numbers:

- :func:`score_plain`: one request at a time, its continuations as rows of one padded batch
  through ``model(idx)`` (full logits), as build-nanogpt does. Simple; the reference.
- :func:`score_fast`: requests grouped by context length and batched; the context runs once and
  its KV cache is shared by all continuations; the LM head (a third of the 124M model's
  forward) is applied only at the positions that are scored.

Truncation, the same in both: if the context plus the longest continuation do not fit in the
model's ``block_size + 1`` tokens, the context loses tokens from its left, equally for every
continuation of the request (so the endings are compared on the same context). An empty
context becomes the end-of-text token, as in lm-eval-harness.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..tokenizer import EOT_TOKEN

HEAD_CHUNK = 2048  # positions per LM-head matmul + log-softmax (bounds the fp32 logits memory)


@dataclass
class Request:
    context: list[int]
    continuations: list[list[int]]


@dataclass
class Score:
    logprob: float  # sum of log p(token) over the continuation's tokens
    n_tokens: int
    greedy: bool  # every token of the continuation is the argmax of its distribution


def fit(req: Request, block_size: int) -> tuple[list[int], list[list[int]]]:
    """The request as it is scored: non-empty context, cut from the left to fit ``block_size``."""
    conts = [list(c) for c in req.continuations]
    if not conts or any(len(c) == 0 for c in conts):
        raise ValueError("every continuation needs at least one token")
    longest = max(len(c) for c in conts)
    if longest > block_size:
        raise UserError(f"a continuation of {longest} tokens does not fit the model's block_size {block_size}")
    ctx = list(req.context) or [EOT_TOKEN]
    keep = block_size + 1 - longest  # input = context + continuation minus its last token
    return ctx[-keep:], conts


def _null(autocast):
    return autocast if autocast is not None else contextlib.nullcontext()


def _head_logprobs(model, h: torch.Tensor) -> torch.Tensor:
    """fp32 log-probabilities over the real vocabulary for hidden states h (N, C)."""
    logits = model.lm_head(h)[:, : model.config.vocab_size]  # padded columns dropped, as -inf would be
    return logits.float().log_softmax(-1)


def _score_positions(model, h: torch.Tensor, targets: torch.Tensor):
    """(log p(target), target == argmax) for hidden states h (N, C), in chunks."""
    lps, hits = [], []
    for i in range(0, h.size(0), HEAD_CHUNK):
        logp = _head_logprobs(model, h[i : i + HEAD_CHUNK])
        t = targets[i : i + HEAD_CHUNK]
        lps.append(logp.gather(1, t[:, None])[:, 0].double())
        hits.append(logp.argmax(-1) == t)
    return torch.cat(lps), torch.cat(hits)


@torch.no_grad()
def score_plain(model, requests: list[Request], device: str = "cpu", autocast=None) -> list[list[Score]]:
    """Reference scorer: one request at a time through the model's ordinary forward."""
    model.eval()
    out = []
    for req in requests:
        ctx, conts = fit(req, model.config.block_size)
        rows = [ctx + c for c in conts]
        T = max(len(r) for r in rows) - 1
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, : len(r) - 1] = torch.tensor(r[:-1])
        with _null(autocast):
            logits, _ = model(idx.to(device))
        logp = logits.float().log_softmax(-1)
        scores = []
        for i, c in enumerate(conts):
            pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c), device=logp.device)
            t = torch.tensor(c, device=logp.device)
            lp = logp[i, pos]
            scores.append(Score(float(lp.gather(1, t[:, None]).double().sum()), len(c), bool((lp.argmax(-1) == t).all())))
        out.append(scores)
    return out


def _hidden(model, idx: torch.Tensor, caches=None):
    """GPT.forward up to the final LayerNorm, with the same modules; returns (hidden, caches)."""
    tr = model.transformer
    past = caches[0][0].size(2) if caches else 0
    pos = torch.arange(past, past + idx.size(1), dtype=torch.long, device=idx.device)
    x = tr.drop(tr.wte(idx) + tr.wpe(pos))
    new = []
    for i, block in enumerate(tr.h):
        x, kv = block(x, caches[i] if caches else None)
        new.append(kv)
    return tr.ln_f(x), new


def _batches(fitted: list[tuple[list[int], list[list[int]]]], batch_tokens: int):
    """Request indices in batches of equal context length, about ``batch_tokens`` tokens each."""
    by_len = defaultdict(list)
    for i, (ctx, _) in enumerate(fitted):
        by_len[len(ctx)].append(i)
    for L in sorted(by_len, reverse=True):
        # Similar continuation lengths together, so little padding in the continuation pass.
        group = sorted(by_len[L], key=lambda i: max(len(c) for c in fitted[i][1]))
        batch, tokens = [], 0
        for i in group:
            conts = fitted[i][1]
            cost = len(conts) * (L + max(len(c) for c in conts))  # the shared cache is copied per continuation
            if batch and tokens + cost > batch_tokens:
                yield batch
                batch, tokens = [], 0
            batch.append(i)
            tokens += cost
        if batch:
            yield batch


@torch.no_grad()
def score_fast(
    model, requests: list[Request], device: str = "cpu", autocast=None, batch_tokens: int = 8192
) -> list[list[Score]]:
    """Batched scorer with the context computed once per request (KV cache); same results as :func:`score_plain`."""
    model.eval()
    fitted = [fit(r, model.config.block_size) for r in requests]
    out: list[list[Score] | None] = [None] * len(requests)
    for batch in _batches(fitted, batch_tokens):
        ctxs = torch.tensor([fitted[i][0] for i in batch], dtype=torch.long, device=device)
        conts = [c for i in batch for c in fitted[i][1]]
        owner = torch.tensor([j for j, i in enumerate(batch) for _ in fitted[i][1]], device=device)  # row -> ctx
        n = torch.tensor([len(c) for c in conts], device=device)
        E = max(len(c) for c in conts) - 1  # continuation tokens fed to the model (the last is only predicted)
        with _null(autocast):
            h, caches = _hidden(model, ctxs)
            # First token of every continuation: predicted by the context's last position.
            # (one head row per context, shared by its continuations)
            first = torch.tensor([c[0] for c in conts], device=device)
            logp0 = _head_logprobs(model, h[:, -1])
            lp_sum = logp0[owner, first].double()
            miss = (logp0.argmax(-1)[owner] != first).long()
            if E > 0:
                inp = torch.zeros(len(conts), E, dtype=torch.long)
                tgt = torch.full((len(conts), E), -1, dtype=torch.long)
                for r, c in enumerate(conts):
                    inp[r, : len(c) - 1] = torch.tensor(c[:-1])
                    tgt[r, : len(c) - 1] = torch.tensor(c[1:])
                inp, tgt = inp.to(device), tgt.to(device)
                shared = [(k[owner], v[owner]) for k, v in caches]
                h2, _ = _hidden(model, inp, shared)
                rows, cols = (tgt >= 0).nonzero(as_tuple=True)  # padding after short continuations is not scored
                lp, hit = _score_positions(model, h2[rows, cols], tgt[rows, cols])
                lp_sum.index_add_(0, rows, lp)
                miss.index_add_(0, rows, (~hit).long())
        lp_sum, miss, n = lp_sum.tolist(), miss.tolist(), n.tolist()
        r = 0
        for i in batch:
            k = len(fitted[i][1])
            out[i] = [Score(lp_sum[r + j], n[r + j], miss[r + j] == 0) for j in range(k)]
            r += k
    return out  # type: ignore[return-value]

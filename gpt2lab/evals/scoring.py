"""Log-likelihood of continuations given a context: the engine under HellaSwag and LAMBADA.

A :class:`Request` is one context and one or more continuations (HellaSwag: 4 endings,
LAMBADA: 1 last word). For each continuation we want the summed log-probability of its
tokens, their number, and whether greedy decoding would have produced every one of them.

Two implementations give the same numbers:

- :func:`score_plain`: one request at a time, its continuations as rows of one padded batch
  through ``model(idx)`` (full logits), as build-nanogpt does. Simple; the reference.
- :func:`score_fast`: one request per row, packed as context + all continuations with an
  attention mask that lets each continuation see only the context and itself (the context is
  computed once, not once per continuation); rows of similar length batched together; the LM
  head (a third of the 124M model's forward) applied only at the positions that are scored.

Truncation, the same in both: if the context plus the longest continuation do not fit in the
model's ``block_size + 1`` tokens, the context loses tokens from its left, equally for every
continuation of the request (so the endings are compared on the same context). An empty
context becomes the end-of-text token, as in lm-eval-harness.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..tokenizer import EOT_TOKEN

# On CPU, tensors over glibc's mmap threshold (at most 32 MB) are mapped fresh and page-faulted in on every
# allocation: with 512 head rows (a 100 MB fp32 logits block) a small model spent more time in the kernel than
# computing. 64 head rows (13 MB) and 4096-token batches keep every buffer under it; GPUs take larger batches.
HEAD_CHUNK = 64  # positions per LM-head matmul + log-softmax
BATCH_TOKENS = {"cpu": 4096, "cuda": 16384}  # default tokens per packed forward batch, by device type


def default_batch_tokens(device: str) -> int:
    return BATCH_TOKENS.get(str(device).split(":")[0], 4096)


@dataclass
class Request:
    context: list[int]
    continuations: list[list[int]]
    eot: int = EOT_TOKEN  # the tokenizer's <|endoftext|>: the context of an empty one


@dataclass
class Score:
    logprob: float  # sum of log p(token) over the continuation's tokens
    n_tokens: int
    greedy: bool  # every token of the continuation is the argmax of its distribution (False when not computed)


def fit(req: Request, block_size: int) -> tuple[list[int], list[list[int]]]:
    """The request as it is scored: non-empty context, cut from the left to fit ``block_size``."""
    conts = [list(c) for c in req.continuations]
    if not conts or any(len(c) == 0 for c in conts):
        raise ValueError("every continuation needs at least one token")
    longest = max(len(c) for c in conts)
    if longest > block_size:
        raise UserError(f"a continuation of {longest} tokens does not fit the model's block_size {block_size}")
    ctx = list(req.context) or [req.eot]
    keep = block_size + 1 - longest  # input = context + continuation minus its last token
    return ctx[-keep:], conts


def _null(autocast):
    return autocast if autocast is not None else contextlib.nullcontext()


def _score_positions(model, h: torch.Tensor, targets: torch.Tensor, greedy: bool):
    """(log p(target) in float64, target == argmax or None) for hidden states h (N, C), in chunks.

    Padded vocabulary columns are dropped, which is what their -inf logits amount to.
    (log_softmax then gather is faster on CPU than gather minus logsumexp, which is not fused.)
    """
    lps, hits = [], []
    V = model.config.vocab_size
    for i in range(0, h.size(0), HEAD_CHUNK):
        logp = model.logits(h[i : i + HEAD_CHUNK])[:, :V].float().log_softmax(-1)
        t = targets[i : i + HEAD_CHUNK]
        lps.append(logp.gather(1, t[:, None])[:, 0].double())
        if greedy:
            hits.append(logp.argmax(-1) == t)
    return torch.cat(lps), (torch.cat(hits) if greedy else None)


@torch.no_grad()
def score_plain(model, requests: list[Request], device: str = "cpu", autocast=None) -> list[list[Score]]:
    """Reference scorer: one request at a time through the model's ordinary forward."""
    model.eval()
    with _null(autocast):  # entered once, as in score_fast: autocast caches its bf16 weight copies
        return _plain_loop(model, requests, device)


def _plain_loop(model, requests: list[Request], device: str) -> list[list[Score]]:
    out = []
    for req in requests:
        ctx, conts = fit(req, model.config.block_size)
        rows = [ctx + c for c in conts]
        T = max(len(r) for r in rows) - 1
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, : len(r) - 1] = torch.tensor(r[:-1])
        logits, _ = model(idx.to(device))
        logp = logits.float().log_softmax(-1)
        scores = []
        for i, c in enumerate(conts):
            pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c), device=logp.device)
            t = torch.tensor(c, device=logp.device)
            lp = logp[i, pos]
            logprob = float(lp.gather(1, t[:, None]).double().sum())
            scores.append(Score(logprob, len(c), bool((lp.argmax(-1) == t).all())))
        out.append(scores)
    return out


def packed_mask(seg: torch.Tensor) -> torch.Tensor:
    """The attention mask of packed rows, (B, 1, T, T) bool, from each token's segment (B, T).

    A row holds one context (segment 0) followed by several continuations (segments 1, 2, ...),
    each continuation with the positions it would have right after the context. A token sees
    earlier tokens of the context and of its own segment only, so each continuation is scored
    exactly as if it followed the context alone, and the context is computed once. Padding has
    segment -1 (never scored; it sees the context and earlier padding, so no mask row is empty,
    which would give NaN).
    """
    T = seg.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    mask = causal & ((seg[:, :, None] == seg[:, None, :]) | (seg == 0)[:, None, :])
    return mask[:, None]  # the same for every head


def _packed_len(ctx: list[int], conts: list[list[int]]) -> int:
    return len(ctx) + sum(len(c) - 1 for c in conts)  # the last token of a continuation is only predicted


def _batches(fitted: list[tuple[list[int], list[list[int]]]], batch_tokens: int):
    """Request indices in batches of similar packed length, at most ``batch_tokens`` tokens (with padding) each."""
    order = sorted(range(len(fitted)), key=lambda i: _packed_len(*fitted[i]), reverse=True)
    batch: list[int] = []
    for i in order:
        longest = _packed_len(*fitted[batch[0]]) if batch else _packed_len(*fitted[i])
        if batch and (len(batch) + 1) * longest > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def score_fast(
    model, requests: list[Request], device: str = "cpu", autocast=None, batch_tokens: int | None = None,
    greedy: bool = True,
) -> list[list[Score]]:
    """Batched scorer: requests packed one per row, context computed once; same results as :func:`score_plain`."""
    model.eval()
    fitted = [fit(r, model.config.block_size) for r in requests]
    batch_tokens = batch_tokens or default_batch_tokens(device)
    out: list[list[Score] | None] = [None] * len(requests)
    with _null(autocast):  # entered once: autocast caches the bf16 copies of the weights across batches
        for batch in _batches(fitted, batch_tokens):
            T = max(_packed_len(*fitted[i]) for i in batch)
            idx = torch.zeros(len(batch), T, dtype=torch.long)
            pos = torch.zeros(len(batch), T, dtype=torch.long)
            seg = torch.full((len(batch), T), -1, dtype=torch.long)
            # Scored positions: (row, column that predicts, target token, continuation number).
            rows, cols, tgts, conts_of = [], [], [], []
            k = 0
            for b, i in enumerate(batch):
                ctx, conts = fitted[i]
                L = len(ctx)
                idx[b, :L] = torch.tensor(ctx)
                pos[b, :L] = torch.arange(L)
                seg[b, :L] = 0
                at = L
                for j, c in enumerate(conts):
                    n = len(c) - 1
                    idx[b, at : at + n] = torch.tensor(c[:-1], dtype=torch.long)
                    pos[b, at : at + n] = torch.arange(L, L + n)
                    seg[b, at : at + n] = j + 1
                    # token 0 is predicted by the context's last position, token t by the continuation's token t-1
                    rows += [b] * len(c)
                    cols += [L - 1] + list(range(at, at + n))
                    tgts += c
                    conts_of += [k] * len(c)
                    at += n
                    k += 1
            h = model.hidden(idx.to(device), pos.to(device), packed_mask(seg.to(device)))
            lp, hit = _score_positions(model, h[torch.tensor(rows, device=device), torch.tensor(cols, device=device)],
                                       torch.tensor(tgts, device=device), greedy)
            owner = torch.tensor(conts_of, device=device)
            lp_sum = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, owner, lp).tolist()
            miss = [1] * k  # greedy not computed: reported as False
            if hit is not None:
                miss = torch.zeros(k, dtype=torch.long, device=device).index_add_(0, owner, (~hit).long()).tolist()
            r = 0
            for i in batch:
                conts = fitted[i][1]
                out[i] = [Score(lp_sum[r + j], len(c), miss[r + j] == 0) for j, c in enumerate(conts)]
                r += len(conts)
    return out  # type: ignore[return-value]

"""Text generation with a KV cache: greedy, temperature, top-k and top-p sampling."""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from .model import GPT


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from (B, vocab) logits. temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: GPT,
    prompt: Sequence[int],
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_token: int | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Continue ``prompt`` ``num_samples`` times; returns the new tokens of each sample.

    A sample ends at ``stop_token`` (not included) or after ``max_new_tokens``. Beyond the
    model's block_size the context slides (and the cache is recomputed each step).
    ``on_token`` receives each step's (num_samples,) tokens, for streaming.
    """
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    device = model.transformer.wte.weight.device
    block = model.config.block_size
    vocab = model.config.vocab_size
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    was_training = model.training
    model.eval()
    idx = torch.tensor([list(prompt)] * num_samples, dtype=torch.long, device=device)[:, -block:]
    out = torch.empty(num_samples, 0, dtype=torch.long, device=device)
    done = torch.zeros(num_samples, dtype=torch.bool, device=device)
    caches = model.empty_caches(num_samples, device=device)
    step_input = idx
    ctx = autocast or contextlib.nullcontext()
    for _ in range(max_new_tokens):
        with ctx:
            if caches is not None and caches[0][0].size(2) + step_input.size(1) <= block:
                logits, caches = model(step_input, caches=caches)
            else:  # context full: slide the window and recompute without cache
                caches = None
                window = torch.cat([idx, out], dim=1)[:, -block:]
                logits, _ = model(window)
        nxt = sample_next(logits[:, -1, :vocab], temperature, top_k, top_p, gen)
        if stop_token is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
            done |= nxt == stop_token
        out = torch.cat([out, nxt[:, None]], dim=1)
        if on_token is not None:
            on_token(nxt)
        step_input = nxt[:, None]
        if stop_token is not None and bool(done.all()):
            break
    model.train(was_training)
    result = []
    for row in out.tolist():
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token)]
        result.append(row)
    return result

"""The language-model loss: cross-entropy of the LM head's logits over the real vocabulary.

:func:`lm_loss` is the one entry point (``GPT.forward`` calls it) and picks one of three paths,
all the same loss and gradients to rounding:

- plain (eager, or whenever the logits are returned): the padded columns of the logits are set to
  -inf in place, then aten's fused ``F.cross_entropy`` in fp32, the faster kernel in eager mode;
- compiled, logits not returned (the training step): :class:`LMCrossEntropy`, one pass over the
  logits each way, as a -inf fill compiles to a copy of the whole logits;
- ``chunk`` > 0: :class:`ChunkedLMLoss`, the LM head and the loss a few rows at a time, never
  holding the full (N, padded vocabulary) logits.

tests/test_model.py bounds the differences: plain against compiled to fp32 rounding
(``test_loss_without_logits_equals_the_loss_with_them``), plain against chunked to bf16 rounding
(``test_chunked_loss_equals_the_full_logits_loss``).

Torch only, and the soft-cap of gpt2lab/ops.py (model.py imports both).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .ops import softcap

# exp(x) is finite in fp32 up to x = 88.7: a sum of vocab terms, each < e^cap, is finite while cap + ln(vocab) < this
_EXP_MAX = 80.0


def _capped(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap tanh(x / cap)`` through a sigmoid, in x's dtype (what ops.softcap does compiled)."""
    return cap * (2.0 * torch.sigmoid(x * (2.0 / cap)) - 1.0)


def padding_bias(vocab_size: int, padded_vocab_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """0.0 for each real column of the logits, -inf for each padded one (:class:`LMCrossEntropy`'s backward)."""
    bias = torch.zeros(padded_vocab_size, device=device)
    bias[vocab_size:] = float("-inf")
    return bias


def lm_loss(h: torch.Tensor, targets: torch.Tensor | None, *, head: Callable[[torch.Tensor], torch.Tensor],
            head_weight: torch.Tensor, vocab_size: int, cap: float, vocab_bias: torch.Tensor,
            reduction: str = "mean", chunk: int = 0, return_logits: bool = True):
    """``(logits, loss)`` of hidden states ``h`` (B, T, C) against ``targets`` (B, T) (< 0 ignored).

    ``head`` maps hidden states to raw logits over the padded vocabulary (the LM head module); each
    path applies the soft-cap ``cap`` itself (compiled, inside the loss's one pass; the chunked
    path, chunk by chunk, with ``head_weight``). ``vocab_bias`` is
    :func:`padding_bias`. Logits come back with -inf in the padded columns, or ``None`` when
    ``return_logits`` is False or ``chunk`` > 0; the loss is ``None`` without targets.
    ``chunk`` only applies with targets and the mean reduction.
    """
    if chunk > 0 and targets is not None and reduction == "mean":
        return None, ChunkedLMLoss.apply(h.reshape(-1, h.size(-1)), head_weight, targets.reshape(-1),
                                         vocab_size, cap, chunk)
    logits = head(h)
    if not return_logits and torch.compiler.is_compiling():
        if targets is None:
            return None, None
        return None, LMCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                          vocab_bias, vocab_size, reduction, cap)
    logits = softcap(logits, cap)
    if logits.size(-1) > vocab_size:
        # Through .detach(): constants need no autograd record, whose backward would copy the
        # whole gradient to zero the padded columns that the softmax's gradient leaves at zero.
        logits.detach()[..., vocab_size:] = float("-inf")
    loss = None
    if targets is not None:
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1, reduction=reduction
        )
    return (logits if return_logits else None), loss


class LMCrossEntropy(torch.autograd.Function):
    """Cross-entropy of 2-D ``logits`` over the padded vocabulary against ``targets`` (< 0 ignored),
    counting only the first ``vocab`` columns: logsumexp minus the target's logit, in fp32, with its
    gradient (softmax minus one-hot, zero in the padded columns) written out. What training runs
    under ``torch.compile``; the same loss and gradients as ``F.cross_entropy`` over -inf-filled
    logits to fp32 rounding.

    Compiled, each direction is one pass over the logits. The forward reads a view of the real
    columns, so nothing is written into the padded ones (a -inf fill compiles to a copy of the
    whole logits). The backward writes the gradient at the logits' full width and dtype, zeroing
    the padded columns by adding ``vocab_bias`` (0.0 for a real column, -inf for a padded one: the
    -inf fill, in the exponent), a tensor in memory: a slice's backward, or a mask made from column
    indices inside the kernel, costs a second pass or twice the time of this one on the CPU. The
    target's entry is then set from its fp32 value (one entry a row).

    ``cap`` > 0: the logits are soft-capped here, ``cap tanh(logits / cap)`` written through a
    sigmoid as :func:`~gpt2lab.ops.softcap` does, and the backward multiplies by the cap's
    derivative, recomputed from the raw logits it keeps anyway: the cap adds no pass over the
    logits and no tensor of their size (a separate soft-cap costs two, each way). The forward reads
    the capped logits once, in one sum of exponentials (they are bounded by the cap, so logsumexp's
    max pass is not needed): read twice, inductor stored them, a tensor of the logits' size, and the
    capped loss took 4.6x the uncapped one (0.59 s against 0.13 s forward, one 2-core EPYC thread,
    4096 x 50304 logits; 0.22 s now)."""

    @staticmethod
    def forward(ctx, logits, targets, vocab_bias, vocab: int, reduction: str, cap: float = 0.0):
        x = logits[:, :vocab].float()
        keep = targets >= 0
        safe = torch.where(keep, targets, 0)
        picked = x.gather(1, safe[:, None]).squeeze(1)
        if cap > 0:  # the capped logits are read once, by one reduction: inductor keeps them in registers
            x, picked = _capped(x, cap), _capped(picked, cap)
        if cap > 0 and cap + math.log(vocab) < _EXP_MAX:  # |x| < cap: exp cannot overflow, no max pass needed
            lse = torch.log(torch.exp(x).sum(dim=-1))
        else:
            lse = torch.logsumexp(x, dim=-1)
        per_token = torch.where(keep, lse - picked, 0.0)
        count = keep.sum()
        ctx.save_for_backward(logits, vocab_bias, lse, picked, safe, keep, count)
        ctx.reduction, ctx.cap = reduction, cap
        if reduction == "none":
            return per_token
        return per_token.sum() if reduction == "sum" else per_token.sum() / count

    @staticmethod
    def backward(ctx, grad):
        logits, vocab_bias, lse, picked, safe, keep, count = ctx.saved_tensors
        scale = torch.where(keep, grad / count if ctx.reduction == "mean" else grad, 0.0)[:, None]
        x, cap = logits.float(), ctx.cap
        at_target = (torch.exp(picked - lse)[:, None] - 1.0) * scale
        if cap > 0:  # d cap tanh(x / cap) / dx = 1 - tanh^2 = 4 s (1 - s), s = sigmoid(2 x / cap)
            s = torch.sigmoid(x * (2.0 / cap))
            x, scale = cap * (2.0 * s - 1.0), scale * (4.0 * s * (1.0 - s))
            s_t = torch.sigmoid(logits.gather(1, safe[:, None]).float() * (2.0 / cap))
            at_target = at_target * (4.0 * s_t * (1.0 - s_t))
        dlogits = (torch.exp(x + vocab_bias - lse[:, None]) * scale).to(logits.dtype)
        return dlogits.scatter(1, safe[:, None], at_target.to(logits.dtype)), None, None, None, None, None


class ChunkedLMLoss(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` (soft-capped, padded columns masked) against ``targets``,
    ``rows`` rows of logits at a time, never holding the full (N, padded_vocab) logits.

    The gradients are computed in the forward pass, chunk by chunk (the loss is a scalar: its
    gradient only scales them), so each chunk's logits are made, used and freed while still in
    cache; backward multiplies the stored gradients by the incoming scalar. The arithmetic is that
    of the plain path: the matmul in the ambient autocast dtype, softmax and loss in fp32, the
    gradient of the logits cast back to the matmul dtype, so the two agree within bf16 rounding.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size: int, cap: float, rows: int):
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
            loss = torch.zeros((), dtype=torch.float32, device=h.device)
            valid_all = targets >= 0
            count = valid_all.sum().clamp(min=1)
            for start in range(0, h.size(0), rows):
                hc = h[start:start + rows].to(dtype)
                tgt = targets[start:start + rows]
                valid = valid_all[start:start + rows]
                logits = (hc @ w.T).float()
                if cap > 0:
                    t = torch.tanh(logits / cap)
                    logits = cap * t
                logits[:, vocab_size:] = float("-inf")
                lse = torch.logsumexp(logits, dim=-1)
                safe = tgt.clamp(min=0)
                picked = logits.gather(1, safe[:, None]).squeeze(1)
                loss += torch.where(valid, lse - picked, 0.0).sum()
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(g.size(0), device=g.device), safe] -= 1.0
                g.mul_(valid[:, None])
                if cap > 0:
                    g.mul_(1 - t * t)
                g = g.to(dtype)
                grad_h[start:start + rows] = (g @ w).to(h.dtype)
                grad_w += (g.T @ hc).float()
        ctx.save_for_backward(grad_h / count, grad_w / count)
        ctx.weight_dtype = weight.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(ctx.weight_dtype), None, None, None, None

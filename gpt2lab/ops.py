"""GPT-2's tanh GELU and the logit soft-cap: the model's two functions whose compiled code differs from eager.

Both contain a tanh. Compiled, each is written through a sigmoid in fp32 (tanh z = 2 sigmoid(2z) - 1,
the same function), which inductor's CPU code runs about 2x faster than its tanh. Eager mode keeps
aten's kernels, the faster there. The two forms agree to fp32 rounding, and bf16 results within one
bf16 rounding (tests/test_model.py, ``test_compiled_tanh_forms_equal_atens_tanh``).

Torch only: nothing of gpt2lab is imported here (model.py imports this module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_GELU_2C = 2 * math.sqrt(2 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``; compiled, written as
    ``x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))`` in fp32. Eager mode keeps aten's one kernel."""
    if not torch.compiler.is_compiling():
        return F.gelu(x, approximate="tanh")
    xf = x.float()
    return (xf * torch.sigmoid(_GELU_2C * (xf + 0.044715 * xf * xf * xf))).to(x.dtype)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(logits / cap)``: bounded by ``cap``, near the identity for small logits; cap 0 = unchanged.
    Compiled, written as ``cap (2 sigmoid(2 logits / cap) - 1)`` in fp32."""
    if cap <= 0:
        return logits
    if not torch.compiler.is_compiling():
        return cap * torch.tanh(logits / cap)
    return (cap * (2.0 * torch.sigmoid(logits.float() * (2.0 / cap)) - 1.0)).to(logits.dtype)

"""The GPT-2 model, readable top to bottom.

Pre-LN transformer blocks, GELU (tanh approximation), learned position embeddings, and a
language-model head tied to the token embedding, as in OpenAI's GPT-2. Parameter names follow
Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``, ...), stored in
``nn.Linear`` layout, so weight conversion is a transpose and nothing else.

The model knows nothing of training: no optimizer, no distributed code, no data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence (number of position embeddings)
    vocab_size: int = 50257  # real tokens; ids >= vocab_size are padding
    padded_vocab_size: int = 50304  # rows of the embedding (a multiple of 64 is faster); >= vocab_size
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout on embeddings, attention and residual branches (0 for pretraining)
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2 has

    def to_dict(self) -> dict:
        return asdict(self)


# KV cache of one layer: keys and values, each (B, n_head, T_cached, head_dim).
KVCache = tuple[torch.Tensor, torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v together
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scale = True  # type: ignore[attr-defined]  # see GPT._init_weights
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None or cache[0].size(2) == 0:
            # Flash / memory-efficient attention where the backend has it.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # New queries sit at the end of the sequence: query i may see keys <= past + i.
            past = k.size(2) - T
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scale = True  # type: ignore[attr-defined]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        a, cache = self.attn(self.ln_1(x), cache)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, cache


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.padded_vocab_size < cfg.vocab_size:
            raise ValueError("padded_vocab_size must be >= vocab_size")
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)

    @classmethod
    def from_state_dict(cls, cfg: GPTConfig, state: dict) -> "GPT":
        """A GPT that holds ``state``'s tensors themselves: built on the meta device (no random
        init of weights that are replaced at once), then assigned, with the LM head tied again."""
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state, strict=True, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tied tensor
        return model

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2: N(0, 0.02) everywhere; residual projections scaled by 1/sqrt(2 * n_layer)
        # because each block adds two of them to the residual stream.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scale", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters as GPT-2 counts them: tied weights once, padded vocabulary rows not at all.

        ``non_embedding`` leaves out the position embedding (the token embedding stays: it is
        also the output layer), as nanoGPT reports.
        """
        c = self.config
        n = sum(p.numel() for p in self.parameters()) - (c.padded_vocab_size - c.vocab_size) * c.n_embd
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N for the weights plus attention scores (PaLM, App. B)."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * seq_len

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        caches: list[KVCache] | None = None,
        reduction: str = "mean",
    ):
        """Return ``(logits, loss)``; with ``caches`` return ``(logits, new_caches)``.

        logits are over the padded vocabulary, with padded columns set to -inf so they are never
        sampled and take no probability mass in the loss. Targets < 0 are ignored in the loss.
        With ``caches`` (a list of per-layer caches, possibly empty tensors) the tokens in ``idx``
        continue the cached sequence; this is the incremental decoding path.
        """
        B, T = idx.shape
        past = 0 if not caches else caches[0][0].size(2)
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        new_caches = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, caches[i] if caches else None)
            new_caches.append(kv)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        if self.config.padded_vocab_size > self.config.vocab_size:
            logits[..., self.config.vocab_size :] = float("-inf")
        if caches is not None:
            return logits, new_caches
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1, reduction=reduction
            )
        return logits, loss

    def empty_caches(self, batch_size: int, device=None, dtype=None) -> list[KVCache]:
        c = self.config
        shape = (batch_size, c.n_head, 0, c.n_embd // c.n_head)
        dtype = dtype or self.transformer.wte.weight.dtype
        return [(torch.empty(shape, device=device, dtype=dtype),) * 2 for _ in range(c.n_layer)]

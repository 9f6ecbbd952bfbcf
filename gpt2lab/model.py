"""The GPT-2 model, readable top to bottom.

Pre-LN transformer blocks, GELU (tanh approximation), learned position embeddings, and a
language-model head tied to the token embedding, as in OpenAI's GPT-2. Parameter names follow
Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``, ...), stored in
``nn.Linear`` layout, so weight conversion is a transpose and nothing else.

The model knows nothing of training: no optimizer, no distributed code, no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated and written in place.

    ``k[i]`` and ``v[i]`` are (B, n_head, length, head_dim). A forward pass takes
    ``cache.at(slots, kv_len)``: the new tokens' keys and values are written at cache slots
    ``slots`` (T,), and attention reads slots [0, kv_len) (all when None). The cache is zeroed,
    not empty: slots hidden by the mask are still multiplied by 0 and must not hold NaN.
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slots: torch.Tensor | None = None,
                 kv_len: int | None = None):
        self.k, self.v, self.slots, self.kv_len = k, v, slots, kv_len

    @classmethod
    def zeros(cls, cfg: GPTConfig, batch: int, length: int, dtype: torch.dtype, device) -> "KVCache":
        shape = (batch, cfg.n_head, length, cfg.n_embd // cfg.n_head)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)])

    @property
    def length(self) -> int:
        return self.k[0].size(2)

    def at(self, slots: torch.Tensor, kv_len: int | None = None) -> "KVCache":
        return KVCache(self.k, self.v, slots, kv_len)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values; return all keys and values to attend to."""
        kc, vc = self.k[layer], self.v[layer]
        kc.index_copy_(2, self.slots, k.to(kc.dtype))
        vc.index_copy_(2, self.slots, v.to(vc.dtype))
        if self.kv_len is not None:
            kc, vc = kc[:, :, : self.kv_len], vc[:, :, : self.kv_len]
        return kc.to(k.dtype), vc.to(v.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.layer = layer  # which of a KVCache's layers is this one's
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v together
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scale = True  # type: ignore[attr-defined]  # see GPT._init_weights
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # no mask: causal, which for one new query against a cache means every key (see GPT.hidden)
        causal = mask is None and T > 1
        if causal and k.size(2) != T:
            raise ValueError("several new tokens after cached ones need an explicit attention mask")
        dropout_p = self.dropout if self.training else 0.0
        # flash / memory-efficient attention where the backend has it
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


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
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)
        x = x + self.mlp(self.ln_2(x))
        return x


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
                h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
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

    def hidden(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The hidden states after the final LayerNorm, (B, T, n_embd): the one walk over the blocks.

        - ``pos``: the position of each token, (T,) or (B, T); default 0..T-1. Packed scoring
          gives several continuations the positions they would have right after one context;
          left-padded decoding counts each row from its first real token.
        - ``mask``: which keys each query sees, bool (B or 1, 1, T, keys), True = attend. Default:
          causal; for one new token per row after a ``cache``, every cached key.
        - ``cache``: a :class:`KVCache` placed with ``cache.at(slots, kv_len)``; the tokens' keys
          and values are stored there and attention runs over the cache.
        """
        T = idx.size(1)
        if pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than block_size {self.config.block_size}")
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, mask, cache)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, reduction: str = "mean", **kw):
        """Return ``(logits, loss)``; ``kw`` (pos, mask, cache) go to :meth:`hidden`.

        logits are over the padded vocabulary, with padded columns set to -inf so they are never
        sampled and take no probability mass in the loss. Targets < 0 are ignored in the loss.
        """
        logits = self.lm_head(self.hidden(idx, **kw))
        if self.config.padded_vocab_size > self.config.vocab_size:
            logits[..., self.config.vocab_size :] = float("-inf")
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1, reduction=reduction
            )
        return logits, loss

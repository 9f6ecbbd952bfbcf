"""The GPT-2 model, readable top to bottom.

Pre-LN transformer blocks, GELU (tanh approximation), learned position embeddings, and a
language-model head tied to the token embedding, as in OpenAI's GPT-2. Parameter names follow
Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``, ...), stored in
``nn.Linear`` layout, so weight conversion is a transpose and nothing else.

The fields of :class:`GPTConfig` after ``bias`` are switches that take changes from the nanoGPT
speedrun (modded-nanogpt) one at a time, each described on its field and off by default (GPT-2 as
it is, bit for bit).

The model knows nothing of training: no optimizer, no distributed code, no data. Of gpt2lab it
imports only two torch-only modules: ``ops`` (the tanh GELU and the soft-cap, whose compiled code
differs from eager) and ``loss`` (the LM loss, three paths: :func:`~gpt2lab.loss.lm_loss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loss import lm_loss, padding_bias
from .ops import gelu_tanh, softcap


def _field(default, description: str, **limits):
    """A GPTConfig field: its default, and the description and limits (pydantic ``Field``'s ``gt``, ``ge``,
    ``lt``, ``le``, ``examples``) that config files check and docs/config.md shows (see gpt2lab/config.py)."""
    return field(default=default, metadata={"description": description, **limits})


@dataclass
class GPTConfig:
    """The model's shape and switches; the defaults are GPT-2 small's. A field added here is a config key."""

    block_size: int = _field(1024, "longest sequence (number of position embeddings)", gt=0)
    vocab_size: int = _field(50257, "real tokens; ids >= vocab_size are padding", gt=0)
    padded_vocab_size: int = _field(50304, "rows of the embedding (a multiple of 64 is faster); >= vocab_size", gt=0)
    n_layer: int = _field(12, "transformer blocks", gt=0)
    n_head: int = _field(12, "attention heads per block", gt=0)
    n_embd: int = _field(768, "width of the residual stream", gt=0)
    dropout: float = _field(0.0, "dropout on embeddings, attention and residual branches (0 for pretraining)",
                            ge=0, lt=1)
    bias: bool = _field(True, "biases in Linear layers and LayerNorms, as GPT-2 has")
    # Beyond GPT-2: the speedrun switches (the module docstring; configs/speedrun.yaml), off by default
    rotary: bool = _field(False, "rotary position embeddings on queries and keys instead of the learned position "
                                 "table (needs an even head dimension, n_embd / n_head)")
    rotary_base: float = _field(10000.0, "rotary: wavelength base of the rotation frequencies", gt=0)
    qk_norm: bool = _field(False, "RMS-normalise queries and keys per head before attention (QK-norm)")
    norm: Literal["layernorm", "rmsnorm"] = _field(
        "layernorm", "layernorm (GPT-2) or rmsnorm (a gain, no bias) in every block and at the end")
    mlp: Literal["gelu", "relu2"] = _field(
        "gelu", "the MLP's activation: gelu (tanh approximation, GPT-2) or relu2 (ReLU squared)")
    tie_head: bool = _field(True, "the LM head is the token embedding (GPT-2); false: a head of its own")
    zero_init_proj: bool = _field(
        False, "start the output projections of attention and MLP (and an untied LM head) at zero")
    logit_softcap: float = _field(
        0.0, "logits become c * tanh(logits / c) with c this value (15-30 in the speedrun); 0 = off", ge=0,
        examples=[0.0])
    value_embeds: int = _field(0, "value embeddings: N token tables, table j mixed into the attention values of "
                                  "blocks j and n_layer - N + j with learned weights; 0 = off, at most n_layer", ge=0)
    unet_skips: bool = _field(False, "U-net skips: block j's output (j < n_layer // 2) is added, with a learned "
                                     "weight, to the input of block n_layer - 1 - j")


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
    def zeros(cls, cfg: GPTConfig, batch: int, length: int, dtype: torch.dtype, device) -> KVCache:
        shape = (batch, cfg.n_head, length, cfg.n_embd // cfg.n_head)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)])

    @property
    def length(self) -> int:
        return self.k[0].size(2)

    def at(self, slots: torch.Tensor, kv_len: int | None = None) -> KVCache:
        return KVCache(self.k, self.v, slots, kv_len)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values; return all keys and values to attend to."""
        kc, vc = self.k[layer], self.v[layer]
        kc.index_copy_(2, self.slots, k.to(kc.dtype))
        vc.index_copy_(2, self.slots, v.to(vc.dtype))
        if self.kv_len is not None:
            kc, vc = kc[:, :, : self.kv_len], vc[:, :, : self.kv_len]
        return kc.to(k.dtype), vc.to(v.dtype)


def make_norm(cfg: GPTConfig) -> nn.Module:
    """GPT-2's LayerNorm, or RMSNorm (``norm="rmsnorm"``: a gain and no bias, whatever ``bias`` says)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=1e-5)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def rotary_angles(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles at positions ``pos`` (T,) or (B, T), shaped to broadcast
    over (B, n_head, T, head_dim // 2): pair i of a head turns by pos * base^(-2i / head_dim)."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim)
    angles = pos.to(torch.float32)[..., None] * inv_freq  # (T, hd/2) or (B, T, hd/2)
    angles = angles[None, None] if angles.dim() == 2 else angles[:, None]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[..., i], x[..., i + head_dim/2]) of ``x`` (B, n_head, T, head_dim) by the angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).to(x.dtype)


def value_table(cfg: GPTConfig, layer: int) -> int | None:
    """The value-embedding table block ``layer`` mixes in, or None: table j serves blocks j and n_layer - N + j."""
    if layer < cfg.value_embeds:
        return layer
    first_of_last = cfg.n_layer - cfg.value_embeds
    return layer - first_of_last if layer >= first_of_last else None


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.layer = layer  # which of a KVCache's layers is this one's
        self.dropout = cfg.dropout
        self.qk_norm = cfg.qk_norm
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v together
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scale = True  # type: ignore[attr-defined]  # see GPT._init_weights
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if value_table(cfg, layer) is not None:  # v = a v + b ve; a and b start at 0.5, as in modded-nanogpt
            self.ve_mix = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        if ve is not None:  # value embeddings: each token's own vector mixed into its value (before the cache)
            v = (self.ve_mix[0] * v + self.ve_mix[1] * ve).to(v.dtype)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rope is not None:  # before the cache: cached keys keep the rotation of their own position
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
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
        self.relu2 = cfg.mlp == "relu2"
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scale = True  # type: ignore[attr-defined]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else gelu_tanh(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, ve: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, rope, ve)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.padded_vocab_size < cfg.vocab_size:
            raise ValueError("padded_vocab_size must be >= vocab_size")
        if cfg.norm not in ("layernorm", "rmsnorm") or cfg.mlp not in ("gelu", "relu2"):
            raise ValueError(f"norm must be layernorm or rmsnorm, mlp gelu or relu2 (got {cfg.norm!r}, {cfg.mlp!r})")
        if cfg.rotary and (cfg.n_embd // cfg.n_head) % 2:
            raise ValueError(f"rotary needs an even head dimension, got n_embd / n_head = {cfg.n_embd // cfg.n_head}")
        if cfg.value_embeds > cfg.n_layer:
            raise ValueError(f"value_embeds {cfg.value_embeds} is more than n_layer {cfg.n_layer}")
        self.config = cfg
        layers = dict(wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd))
        if not cfg.rotary:
            layers["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        layers.update(drop=nn.Dropout(cfg.dropout), h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
                      ln_f=make_norm(cfg))
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_head:
            self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        else:
            self.lm_head.zero_init = cfg.zero_init_proj  # type: ignore[attr-defined]  # see _init_weights
        if cfg.unet_skips and cfg.n_layer // 2:
            self.skip_weights = nn.Parameter(torch.ones(cfg.n_layer // 2))
        self.apply(self._init_weights)
        if cfg.value_embeds:  # made and initialised after the others, which so start the same with them
            self.value_embeds = nn.ModuleList(nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)
                                              for _ in range(cfg.value_embeds))
            self.value_embeds.apply(self._init_weights)
        # 0.0 for the real vocabulary's columns, -inf for the padding (the compiled loss); not saved
        self.register_buffer("vocab_bias", padding_bias(cfg.vocab_size, cfg.padded_vocab_size), persistent=False)

    @classmethod
    def from_state_dict(cls, cfg: GPTConfig, state: dict) -> GPT:
        """A GPT that holds ``state``'s tensors themselves: built on the meta device (no random
        init of weights that are replaced at once), then assigned, with the LM head tied again."""
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(state, strict=True, assign=True)
        # the buffer is not in state: still on meta
        model.vocab_bias = padding_bias(cfg.vocab_size, cfg.padded_vocab_size, model.lm_head.weight.device)
        if cfg.tie_head:
            model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tied tensor
        return model

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2: N(0, 0.02) everywhere; residual projections scaled by 1/sqrt(2 * n_layer)
        # because each block adds two of them to the residual stream.
        # zero_init_proj: those projections (and an untied head) start at zero, so each block
        # begins as the identity on the residual stream (modded-nanogpt).
        if isinstance(module, nn.Linear):
            std = 0.02
            residual = getattr(module, "residual_scale", False)
            if residual:
                std /= math.sqrt(2 * self.config.n_layer)
            if getattr(module, "zero_init", False) or (residual and self.config.zero_init_proj):
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters as GPT-2 counts them: tied weights once, padded vocabulary rows not at all.

        ``non_embedding`` leaves out the position embedding (the token embedding stays when it
        is also the output layer, as nanoGPT reports; an untied one, a lookup, goes too, and so do
        the value embeddings).
        """
        c = self.config
        lookups = (0 if c.tie_head else 1) + c.value_embeds  # vocabulary tables besides the one of the head
        n = sum(p.numel() for p in self.parameters()) - (1 + lookups) * (c.padded_vocab_size - c.vocab_size) * c.n_embd
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            n -= lookups * c.vocab_size * c.n_embd
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N for the weights plus attention scores (PaLM, App. B)."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * seq_len

    def hidden(self, idx: torch.Tensor, pos: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """The hidden states after the final LayerNorm, (B, T, n_embd): the one walk over the blocks.

        - ``pos``: the position of each token, (T,) or (B, T); default 0..T-1. Packed scoring
          gives several continuations the positions they would have right after one context;
          left-padded decoding counts each row from its first real token.
        - ``mask``: which keys each query sees, bool (B or 1, 1, T, keys), True = attend. Default:
          causal; for one new token per row after a ``cache``, every cached key.
        - ``cache``: a :class:`KVCache` placed with ``cache.at(slots, kv_len)``; the tokens' keys
          and values are stored there and attention runs over the cache.
        """
        length, cfg = idx.size(1), self.config
        if pos is None:
            if length > cfg.block_size:
                raise ValueError(f"sequence of {length} tokens is longer than block_size {cfg.block_size}")
            pos = torch.arange(length, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx)
        rope = None
        if cfg.rotary:  # positions enter in attention, as rotations of queries and keys
            rope = rotary_angles(pos, cfg.n_embd // cfg.n_head, cfg.rotary_base)
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        ves = [table(idx) for table in self.value_embeds] if cfg.value_embeds else []
        skips, n, half = [], cfg.n_layer, (cfg.n_layer // 2 if cfg.unet_skips else 0)
        for i, block in enumerate(self.transformer.h):
            if i >= n - half:  # U-net: block n-1-j takes block j's output (the first half's last output first)
                x = x + self.skip_weights[n - 1 - i] * skips.pop()
            j = value_table(cfg, i)
            x = block(x, mask, cache, rope, None if j is None else ves[j])
            if i < half:
                skips.append(x)
        return self.transformer.ln_f(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states ``h``, soft-capped when ``logit_softcap`` is set, over the
        padded vocabulary (padded columns as they come: callers drop or mask them)."""
        return softcap(self.lm_head(h), self.config.logit_softcap)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, reduction: str = "mean",
                loss_chunk: int = 0, return_logits: bool = True, **kw):
        """Return ``(logits, loss)``; ``kw`` (pos, mask, cache) go to :meth:`hidden`.

        logits are over the padded vocabulary, with padded columns set to -inf so they are never
        sampled and take no probability mass in the loss. Targets < 0 are ignored in the loss.
        ``return_logits=False`` (what training passes): ``None`` for the logits, and the same loss,
        computed faster under ``torch.compile``. ``loss_chunk`` > 0 (with targets and the mean
        reduction): the loss that many rows of logits at a time, and ``None`` for the logits.
        The loss's paths are in gpt2lab/loss.py.
        """
        c = self.config
        return lm_loss(self.hidden(idx, **kw), targets, head=self.lm_head, head_weight=self.lm_head.weight,
                       vocab_size=c.vocab_size, cap=c.logit_softcap, vocab_bias=self.vocab_bias,
                       reduction=reduction, chunk=loss_chunk, return_logits=return_logits)

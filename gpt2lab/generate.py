"""Text generation: greedy, temperature, top-k and top-p sampling, batched, with a KV cache.

``generate`` runs the model's own forward pass (``GPT.hidden``), with dropout off, giving it
what batching prompts of different lengths needs: a position per row, a key-padding mask and a
preallocated ``KVCache``. ``generate_text`` is ``gpt2lab sample``: a model source and a text
prompt in, texts out (streamed to a terminal piece by piece).

- **Batches of prompts of different lengths** are left-padded to the longest. Each row gets
  positions counted from its own first real token, and an attention mask that hides its pad
  keys, so every row computes what it would compute alone.
- **The KV cache is preallocated** once, ``(batch, heads, prompt + new tokens, head_dim)`` per
  layer, and written in place; nothing is concatenated per step.
- **Packed weights (CPU)**: decoding reads every weight once per step, so the weights' layout
  sets the speed. Packing copies the Linear weights (and the output layer) into oneDNN's
  blocked layout, which multiplies a few rows much faster than PyTorch's ``(out, in)`` layout
  in bf16 at any batch and in fp32 from batch 2 (GPT-2 124M on 2 cores: fp32 batch 8 30
  ms/step against 53, bf16 batch 1 13 against 19); for fp32 at one row the fastest is a plain
  ``(in, out)`` copy for ``addmm`` (``benchmarks/bench_decode_bound.py``). The copy costs one
  more set of weights in memory, and ~0.15-0.6 s for 124M.
- **A Decoder reused across calls** pays that once: ``dec = Decoder(model)`` packs on CPU and
  ``generate(dec, ...)`` reuses its weights, KV cache and compiled step. After changing the
  model's weights, call ``dec.refresh()`` (see ``Decoder`` for what is noticed without it). ``generate(model,
  ...)`` builds a Decoder for the one call, and with ``pack=None`` (auto) packs only where that
  pays within the call: on CPU, for bf16/fp16 or fp32 with several rows, when at least 16 tokens
  are generated.
- **The output layer is computed for the last position only**, over the real vocabulary.
- ``compile=True`` runs the decode step (one token per row) through ``torch.compile`` with
  static shapes: the whole cache (its length rounded up to a multiple of 64) is attended to,
  with the not-yet-written slots masked. Packed weights are then plain transposes (compile
  cannot trace oneDNN's opaque tensors). The first call compiles (~10 s for 124M on 2 cores), so
  compile a reused ``Decoder(model, compile=True)``. On CPU it gains ~6% for fp32 at batch 1
  and loses at batch 8 and in bf16, where oneDNN's layout is faster (``benchmarks/README.md``).

Beyond the model's ``block_size`` the context slides: each row keeps its last ``block_size``
tokens and the forward pass is recomputed every step (positions restart at 0), as the
uncached reference does. ``use_cache=False`` recomputes every step from the start, and is the
reference the cached path is tested against.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .device import resolve_device
from .errors import UserError
from .model import GPT, KVCache
from .ops import softcap
from .tokenizer import Tokenizer
from .weights import load_pretrained, model_tokenizer

PAD_ID = 0  # token id put in left padding; never seen by real tokens (masked)
# Sampling's defaults, one copy for generate, generate_text and so `gpt2lab sample` (top_k 0 or None, top_p 1: off).
TEMPERATURE, TOP_K, TOP_P = 1.0, 50, 1.0


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
    logits = logits.float()
    # from the row's maximum down: a tiny temperature then gives -inf, never inf - inf (NaN)
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
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


def _transpose(w: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """``w.t()`` as a contiguous ``dtype`` tensor (into ``out`` if given), copied in column blocks
    (faster than one copy on CPU)."""
    out_f, in_f = w.shape
    wt = torch.empty(in_f, out_f, dtype=dtype, device=w.device) if out is None else out
    step = 1024
    for s in range(0, out_f, step):
        wt[:, s : s + step].copy_(w[s : s + step].t())
    return wt


def _mkldnn_pack(w: torch.Tensor, batch: int) -> torch.Tensor | None:
    """``w`` (out, in) reordered into oneDNN's blocked layout for ``batch`` rows, or None where unavailable."""
    if w.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, batch)
        x = torch.ones(1, w.size(1), dtype=w.dtype)
        torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # the op runs with this layout
        return packed
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


def _stamp(t: torch.Tensor) -> tuple:
    """Changes when ``t`` is written in place by ordinary ops (non-fused optimizer steps,
    ``load_state_dict``) or replaced. Fused optimizers and ``.data`` writes do not bump
    ``_version``: ``Decoder.refresh()`` covers those."""
    # inference tensors (made under torch.inference_mode) keep no version counter
    return t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device


def _writable(t: torch.Tensor) -> bool:
    """Whether ``t`` may be written in place here: an inference tensor only inside inference mode."""
    return not t.is_inference() or torch.is_inference_mode_enabled()


class PackedLinear(nn.Module):
    """A copy of a Linear layer's weight in a layout that is fast for few rows on CPU.

    ``layout="onednn"``: oneDNN's blocked layout (``torch.ops.mkldnn``, the one inductor's
    freezing pass uses) where available; ``"transposed"``: a plain (in, out) copy for
    ``addmm(bias, x, W)`` (the fastest fp32 layout for one row here, and one torch.compile can
    trace). ``rows`` keeps the first rows only (the real vocabulary of the output layer). A module
    with no parameters or buffers (its copies are plain attributes, and the source layer is held
    in a tuple, not as a submodule), so nothing like ``.half()`` reaches the source through it.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, batch: int = 1, layout: str = "onednn",
                 rows: int | None = None):
        super().__init__()
        self.source, self.rows = (linear,), rows  # read again at every sync; a tuple: not a submodule
        self.dtype, self.batch, self.layout = dtype, batch, layout
        self.mkldnn: torch.Tensor | None = None
        self.wt: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self._stamps: tuple = ()
        self.sync(force=True)

    def sync(self, force: bool = False) -> bool:
        """Re-copy the weight (and bias) if the source changed (or ``force``); True if it did."""
        weight, bias = self.source[0].weight, self.source[0].bias
        stamps = (_stamp(weight),) + (() if bias is None else (_stamp(bias),))
        if stamps == self._stamps and not force:
            return False
        with torch.no_grad():
            w = weight.detach()[: self.rows].to(self.dtype)
            self.b = None if bias is None else bias.detach()[: self.rows].to(self.dtype)
            if self.layout == "onednn":
                self.mkldnn = _mkldnn_pack(w.contiguous(), self.batch)
            if self.mkldnn is None:  # transposed, or oneDNN unavailable; in place keeps compiled graphs valid
                same = (self.wt is not None and self.wt.shape == w.t().shape and self.wt.dtype == self.dtype
                        and _writable(self.wt))
                self.wt = _transpose(w, self.dtype, self.wt if same else None)
        self._stamps = stamps
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.size(-1)).to(self.dtype)
        if self.mkldnn is not None:
            y = torch.ops.mkldnn._linear_pointwise(x2, self.mkldnn, self.b, "none", [], "")
        elif self.b is None:
            y = torch.mm(x2, self.wt)
        else:
            y = torch.addmm(self.b, x2, self.wt)
        return y.view(*x.shape[:-1], y.size(-1))


class Decoder:
    """The inference forward pass of a ``GPT``, with a preallocated KV cache and per-row masks.

    Build one and pass it to ``generate`` in place of the model to pack the weights (and
    compile the decode step) once for many calls::

        dec = Decoder(model)                # CPU: weights packed once (one more copy in memory)
        for prompt in prompts:
            out = generate(dec, prompt, 128, temperature=0.0)

    ``pack`` (default: on CPU) copies the Linear weights and the output layer into a layout that
    is fast for a few rows (see the module docstring); ``batch`` is the number of rows it is laid
    out for (any number works). ``dtype`` is the dtype of the packed weights and the KV cache
    (default: the model's); to run under ``autocast``, build it with autocast's dtype.
    ``compile`` runs the one-token decode step through ``torch.compile``, compiled on first use
    and kept (once per batch size and cache length, which is rounded up to a multiple of 64;
    past torch._dynamo's recompile limit, 8 by default, further shapes run eagerly).

    The Decoder reads the model's other weights (embeddings, LayerNorms, unpacked layers) where
    they are, and keeps its own copies of the packed ones. ``generate`` re-copies those the
    model changed in place since (``load_state_dict``, a non-fused optimizer step); a fused
    optimizer step (``torch.optim.AdamW(fused=True)``, gpt2lab's default) or a write through
    ``.data`` goes unseen, so call ``refresh()`` after one. The model's layout is taken when the
    Decoder is built: after ``model.to(...)`` or replacing its layers, build a new one. Layers
    replaced before the build (e.g. int8 dynamic-quantized ones) are decoded through as they are.
    """

    def __init__(self, model: GPT, pack: bool | None = None, dtype: torch.dtype | None = None, batch: int = 1,
                 compile: bool = False):
        cfg = model.config
        self.config, self.vocab, self.block_size = cfg, cfg.vocab_size, cfg.block_size
        self.softcap = cfg.logit_softcap  # GPT.logits' cap, applied after the (packed) head
        self.wte = model.transformer.wte
        self.device, self.model_dtype = self.wte.weight.device, self.wte.weight.dtype
        self.dtype = dtype or self.model_dtype
        quantized = [n for n, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
        if quantized and self.dtype != torch.float32:
            raise ValueError(f"{quantized[0]} is a {type(model.get_submodule(quantized[0])).__name__}, which runs "
                             f"in float32 only: decode without {self.dtype} (no autocast, no dtype)")
        pack = self.device.type == "cpu" if pack is None else pack
        # fp32 at one row: (in, out) GEMVs beat oneDNN's layout (benchmarks/bench_decode_bound.py);
        # compile cannot trace oneDNN's opaque tensors.
        layout = "transposed" if compile or (self.dtype == torch.float32 and batch == 1) else "onednn"
        self.packed: list[PackedLinear] = []

        def swap(m: nn.Module) -> nn.Module | None:
            if not (pack and type(m) is nn.Linear) or m is model.lm_head:
                return None
            self.packed.append(PackedLinear(m, self.dtype, batch, layout))
            return self.packed[-1]

        # the model's own forward (GPT.hidden) over a copy of its module tree that shares its
        # weights, with the Linear layers swapped for packed copies and dropout off
        self.net = _shadow(model, swap, direct=not compile)  # compiled graphs have no call overhead
        lm_head, vocab = model.lm_head, self.vocab
        if pack and type(lm_head) is nn.Linear:
            self.head = PackedLinear(lm_head, self.dtype, batch, layout, rows=vocab)
            self.packed.append(self.head)
        else:
            self.head = lambda x: lm_head(x)[..., :vocab]
        self.cache: KVCache | None = None
        self.step = torch.compile(self.forward, dynamic=False) if compile else None

    def sync(self, force: bool = False) -> int:
        """Re-copy the packed weights whose tensors changed visibly since (all with ``force``); returns how many."""
        if (self.wte.weight.device, self.wte.weight.dtype) != (self.device, self.model_dtype):
            raise ValueError(f"the model moved to {self.wte.weight.device}/{self.wte.weight.dtype} after its Decoder "
                             f"was built for {self.device}/{self.model_dtype}: build a new Decoder")
        return sum(m.sync(force) for m in self.packed)

    def refresh(self) -> None:
        """Re-copy every packed weight from the model (after a fused optimizer step or a ``.data`` write)."""
        self.sync(force=True)

    def allocate(self, batch: int, length: int) -> None:
        """A zeroed cache of ``length`` slots per row (the previous call's, zeroed, when it fits)."""
        c = self.cache
        if c is not None and c.k[0].shape[0] == batch and c.length == length and _writable(c.k[0]):
            for t in c.k + c.v:  # a previous call's values: masked, but could be inf or NaN
                t.zero_()
            return
        self.cache = KVCache.zeros(self.config, batch, length, self.dtype, self.device)

    @property
    def cache_len(self) -> int:
        return self.cache.length if self.cache is not None else 0

    def forward(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor,
        slots: torch.Tensor,
        mask: torch.Tensor | None,
        kv_len: int | None,
    ) -> torch.Tensor:
        """Run tokens ``idx`` (B, T) at positions ``pos`` (B, T), writing their keys and values at
        cache slots ``slots`` (T,); attend to cache slots [0, kv_len) (all when None) under
        ``mask`` (B, 1, T, kv_len) bool, or causally when None. Returns the (B, vocab) logits of
        the last position."""
        h = self.net.hidden(idx, pos, mask, self.cache.at(slots, kv_len))
        return softcap(self.head(h[:, -1]).float(), self.softcap)

    __call__ = forward


def _shadow(module: nn.Module, swap: Callable[[nn.Module], nn.Module | None], direct: bool) -> nn.Module:
    """A copy of ``module``'s tree, in eval mode, that shares its parameters and buffers; a
    submodule for which ``swap`` returns a module is replaced by it in the copy only, and dropout
    (a no-op in eval mode) by ``nn.Identity``. With ``direct``, calling a module of the copy runs
    its ``forward`` without ``nn.Module.__call__``'s hook handling (some 3 us a call, ~140 calls
    a token for GPT-2; nothing here uses hooks), and finds its submodules and parameters as
    plain attributes: together 2-4% of an eager decode step at 124M."""
    new = swap(module)
    if new is None and isinstance(module, nn.Dropout):
        new = nn.Identity()
    if new is not None:
        c = new
    else:
        c = copy.copy(module)  # a new __dict__, but the same _modules/_parameters/_buffers dicts: copy them
        c._modules = {k: None if m is None else _shadow(m, swap, direct) for k, m in module._modules.items()}
        c._parameters = dict(module._parameters)
        c._buffers = dict(module._buffers)
        c.training = False
    if direct:
        c.__class__ = _direct_class(type(c))
        # plain attributes are found before nn.Module.__getattr__'s search of these dicts (the copy
        # is never assigned to, so they stay in step)
        c.__dict__.update({**c._parameters, **c._buffers, **c._modules})
    return c


@functools.cache
def _direct_class(cls: type) -> type:
    """A subclass of module class ``cls`` whose instances' call is their ``forward``."""
    return type(cls.__name__, (cls,), {"__call__": lambda self, *args, **kw: self.forward(*args, **kw)})


def _as_prompts(prompt) -> list[list[int]]:
    if isinstance(prompt, torch.Tensor):
        prompt = prompt.tolist()
    prompts = [list(p) for p in prompt] if len(prompt) and isinstance(prompt[0], (list, tuple)) else [list(prompt)]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompt must hold at least one token")
    return prompts


def prompts_rows(prompts: list[list[int]], num_samples: int) -> list[list[int]]:
    """The prompt of each row of a batch: ``num_samples`` rows per prompt, prompt by prompt."""
    return [p for p in prompts for _ in range(num_samples)]


def autocast_dtype(ctx, device_type: str) -> torch.dtype | None:
    """The dtype ``ctx`` autocasts to on ``device_type``, or None (no autocast, or one for another device)."""
    if isinstance(ctx, torch.autocast) and getattr(ctx, "_enabled", True) and ctx.device == device_type:
        return ctx.fast_dtype
    return None


class _Batch:
    """Left-padded rows: tokens, positions and key-padding for a batch of sequences of different lengths."""

    def __init__(self, rows: list[list[int]], device):
        L = max(len(r) for r in rows)
        self.pad = torch.tensor([L - len(r) for r in rows], device=device)  # (B,)
        self.length = L
        self.idx = torch.tensor([[PAD_ID] * (L - len(r)) + r for r in rows], dtype=torch.long, device=device)
        ar = torch.arange(L, device=device)
        self.pos = (ar[None, :] - self.pad[:, None]).clamp_min(0)
        self.ragged = bool(self.pad.any())

    def prefill_mask(self) -> torch.Tensor | None:
        """(B, 1, L, L): causal, minus pad keys; a pad query sees itself only (so no row is all -inf)."""
        if not self.ragged:
            return None
        ar = torch.arange(self.length, device=self.pad.device)
        causal = ar[None, :] <= ar[:, None]  # (L, L) key <= query
        real_key = ar[None, :] >= self.pad[:, None]  # (B, L)
        mask = causal[None] & real_key[:, None, :]
        return (mask | torch.eye(self.length, dtype=torch.bool, device=mask.device)[None])[:, None]


@torch.no_grad()
def generate(
    model: GPT | Decoder,
    prompt: Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = TEMPERATURE,
    top_k: int | None = TOP_K,
    top_p: float | None = TOP_P,
    seed: int | None = None,
    stop_token: int | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    vocab: int | None = None,
    use_cache: bool = True,
    pack: bool | None = None,
    compile: bool = False,
) -> list[list[int]]:
    """Continue ``prompt`` ``num_samples`` times; returns each sample whole: its prompt, then the new tokens.

    ``model`` is a ``GPT``, or a ``Decoder`` built from one to reuse its packed weights and
    compiled step across calls (``pack`` and ``compile`` are then the Decoder's). ``prompt`` is
    one list of token ids, or a list of them (a batch; lengths may differ): the result then
    holds ``num_samples`` rows per prompt, prompt by prompt. A sample ends at ``stop_token``
    (not included) or after ``max_new_tokens``. Sampling draws from the ``top_k`` likeliest tokens
    (0 or None: all) within ``top_p`` of the mass (1: all), at ``temperature`` (0: greedy), with the
    defaults of ``gpt2lab sample``. ``on_token`` receives each step's (rows,)
    tokens, for streaming. ``seed`` makes sampling reproducible. ``autocast`` (e.g.
    ``torch.autocast("cpu", dtype=torch.bfloat16)``) runs the forward pass under it; packed
    weights are then stored in its dtype. ``vocab``: only ids below it are drawn (the tokenizer's
    vocabulary, where the model's is larger: ids the tokenizer cannot decode). See the module
    docstring for ``use_cache``, ``pack`` and ``compile``.
    """
    prompts = _as_prompts(prompt)
    dec = _decoder_for(model, len(prompts) * num_samples, max_new_tokens, autocast, pack, compile)
    rows = [p[-dec.block_size :] for p in prompts_rows(prompts, num_samples)]
    gen = torch.Generator(device=dec.device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return sample_next(logits[:, :vocab], temperature, top_k, top_p, gen)

    with autocast or contextlib.nullcontext():
        out = _decode(dec, rows, max_new_tokens, pick, stop_token, on_token, use_cache)
    result = []
    for prompt_row, row in zip(prompts_rows(prompts, num_samples), out.tolist()):
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token)]
        result.append(prompt_row + row)
    return result


def generate_text(
    model_path,
    prompt: str = "",
    *,
    num_samples: int = 1,
    max_new_tokens: int = 100,
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    seed: int | None = None,
    device: str = "auto",
    compile: bool = False,
    int8: bool = False,
    tokenizer: str | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[str]:
    """Generate text from a checkpoint folder, a run folder (its newest checkpoint), or a Hugging Face GPT-2 folder
    or hub name.

    Continues ``prompt`` ``num_samples`` times with the model and its tokenizer; returns the continuations' texts.
    ``gpt2lab sample`` takes these arguments as its options (``--help`` shows this text).

    Args:
        model_path: checkpoint folder (…/checkpoints/step_N), run folder, or Hugging Face GPT-2 folder or hub name
        prompt: text to continue (default: the start of a document)
        num_samples: how many samples
        max_new_tokens: tokens per sample, at most (fewer when it ends)
        temperature: 0 = greedy
        top_k: sample from the k likeliest tokens; 0 = off
        top_p: nucleus sampling mass (1 = off)
        seed: makes the samples reproducible
        device: auto, cpu, cuda or cuda:N
        compile: torch.compile the decode step (compiles first, faster after)
        int8: CPU only: int8 dynamic quantization of the Linear layers (faster, ~1% higher perplexity)
        tokenizer: gpt2 or a tokenizer folder (gpt2lab tokenizer train); default: the model's own (a checkpoint's
            copy, else gpt2); one that differs from the model's recorded tokenizer is an error
        on_text: receives the text of the first sample as it is generated, piece by piece (to stream one sample to
            a terminal)
    """
    dev = resolve_device(device)
    model = load_pretrained(model_path, dev)
    tok = model_tokenizer(model_path, model.config, tokenizer)
    if int8:
        if dev != "cpu":
            raise UserError("--int8 runs on CPU only: add --device cpu")
        from .quantize import quantize_int8

        model = quantize_int8(model)
    ids = tok.encode(prompt) if prompt else [tok.eot_token]
    if len(ids) >= model.config.block_size:
        raise UserError(f"--prompt is {len(ids)} tokens; the model's block_size is {model.config.block_size}")
    outs = generate(model, ids, max_new_tokens, num_samples=num_samples, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, stop_token=tok.eot_token, compile=compile, vocab=tok.n_vocab,
                    on_token=None if on_text is None else _text_stream(tok, on_text))
    return [tok.decode(out[len(ids) :]) for out in outs]


def _text_stream(tok: Tokenizer, write: Callable[[str], None]) -> Callable[[torch.Tensor], None]:
    """An ``on_token`` that passes the first row's text to ``write`` as it comes (not its end-of-text token)."""
    pieces: list[int] = []

    def on_token(t: torch.Tensor) -> None:
        if int(t[0]) == tok.eot_token:  # the end of the sample, not text
            return
        pieces.append(int(t[0]))
        text = tok.decode(pieces)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            write(text)
            pieces.clear()

    return on_token


def _decoder_for(model: GPT | Decoder, rows: int, max_new_tokens: int, autocast, pack: bool | None,
                 compile: bool) -> Decoder:
    """The Decoder ``generate`` runs: ``model`` itself when it is one (its weights re-copied where they changed),
    else one built for this call of ``rows`` rows."""
    device = model.device if isinstance(model, Decoder) else model.transformer.wte.weight.device
    ac_dtype = autocast_dtype(autocast, device.type)
    if isinstance(model, Decoder):
        if pack is not None or compile:
            raise ValueError("pack and compile are set when the Decoder is built: "
                             "Decoder(model, pack=..., compile=...)")
        if ac_dtype is not None and ac_dtype != model.dtype:
            raise ValueError(f"autocast runs {ac_dtype} but the Decoder was built for {model.dtype}: "
                             f"build it with Decoder(model, dtype={ac_dtype})")
        model.sync()
        return model
    if pack is None:  # a one-call Decoder: packing must pay for itself within this call
        fp32 = (ac_dtype or model.transformer.wte.weight.dtype) == torch.float32
        pack = device.type == "cpu" and max_new_tokens >= 16 and (
            (fp32 and rows >= 2) if compile else (rows >= 2 or not fp32))
    return Decoder(model, pack=pack, dtype=ac_dtype, batch=rows, compile=compile)


def _decode(dec: Decoder, rows: list[list[int]], max_new_tokens: int, pick: Callable[[torch.Tensor], torch.Tensor],
            stop_token: int | None, on_token, use_cache: bool) -> torch.Tensor:
    """The (rows, n <= max_new_tokens) new tokens: prefill the prompts, then one token per step, through the KV
    cache while it has room, else recomputing each row's last block_size tokens. ``pick`` draws from logits."""
    device, block, B = dec.device, dec.block_size, len(rows)
    first = _Batch(rows, device)
    # the cache holds the prompt and every generated token but the last (never fed back);
    # its length is rounded up so that a reused compiled step meets few distinct shapes
    need = first.length + max(max_new_tokens - 1, 0)
    cache_len = min(block, -(-need // 64) * 64) if use_cache else block
    dec.allocate(B, cache_len)
    out = torch.empty(B, 0, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    all_slots = torch.arange(cache_len, device=device)
    key_real = all_slots[None, :] >= first.pad[:, None]  # (B, cache_len)
    t = first.length  # cache slot of the next token fed back
    nxt = None
    for step in range(max_new_tokens):
        if step == 0:
            logits = _prefill(dec, first)
        elif use_cache and t < cache_len:
            logits = _cached_step(dec, first, nxt, t, all_slots, key_real)
            t += 1
        else:  # no cache, or context full: each row's last block_size tokens, recomputed
            seqs = [r + o for r, o in zip(rows, out.tolist())]
            logits = _prefill(dec, _Batch([s[-block:] for s in seqs], device))
        nxt = pick(logits)
        if stop_token is not None:
            nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
            done |= nxt == stop_token
        out = torch.cat([out, nxt[:, None]], dim=1)
        if on_token is not None:
            on_token(nxt)
        if stop_token is not None and bool(done.all()):
            break
    return out


def _cached_step(dec: Decoder, first: _Batch, nxt: torch.Tensor, t: int, all_slots: torch.Tensor,
                 key_real: torch.Tensor) -> torch.Tensor:
    """Feed ``nxt`` (one token per row) back at cache slot ``t``; returns the next logits."""
    pos = (t - first.pad)[:, None]
    if dec.step is not None:  # compiled, static shapes: attend to the whole cache, unwritten slots masked
        mask = (key_real & (all_slots <= t)[None])[:, None, None, :]
        return dec.step(nxt[:, None], pos, all_slots[t : t + 1], mask, None)
    mask = key_real[:, None, None, : t + 1] if first.ragged else None
    return dec(nxt[:, None], pos, all_slots[t : t + 1], mask, t + 1)


def _prefill(dec: Decoder, batch: _Batch) -> torch.Tensor:
    """Run whole (left-padded) rows from cache slot 0; returns the last position's logits."""
    L = batch.length
    slots = torch.arange(L, device=batch.idx.device)
    mask = batch.prefill_mask()
    return dec(batch.idx, batch.pos, slots, mask, L)

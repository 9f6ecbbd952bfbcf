"""How close batch-1 decoding gets to the memory-bandwidth bound, against transformers (issue 6).

    python benchmarks/bench_decode_bound.py                 # fp32, GPT-2 124M, 16-token prompt, 128 new tokens

At batch 1 every generated token reads every weight once, so decoding is bound by memory
bandwidth, not arithmetic. The script measures, in one process, on the same random GPT-2 124M:

- **copy**: bandwidth of a 256 MB tensor copy (read + write), and the tokens/s it would allow;
- **GEMVs**: one batch-1 matrix-vector product over every weight matrix of the model (the 48
  block matrices and the 50,257-row head), in three layouts: ``F.linear`` on (out, in) weights
  (what the model holds), ``x @ Wt`` on an (in, out) copy, and oneDNN's packed layout;
- **generate**: ``gpt2lab.generate.generate`` (given the model; given a reused ``Decoder``, whose
  weights are laid out (in, out) once; given a reused compiled ``Decoder``) and transformers'
  ``generate`` (greedy, its KV cache), whole calls, best of ``--repeats``.

A decoder can only beat transformers by (its GEMV rate) / (transformers' rate) in a layout, so
the ratios printed say what a target like 1.5x needs.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import harness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from gpt2_pair import random_gpt2_pair

    from gpt2lab.generate import Decoder, generate

    harness.start("cpu")
    hf, ours = random_gpt2_pair()
    cfg = ours.config

    weights = [lin.weight.detach() for blk in ours.transformer.h
               for lin in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)]
    weights.append(ours.lm_head.weight.detach()[: cfg.vocab_size].contiguous())
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    xs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    transposed = [w.t().contiguous() for w in weights]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]

    a = torch.empty(64 * 2**20)
    b = torch.empty_like(a)
    copy_bw = 2 * a.numel() * 4 / harness.best_time(lambda: b.copy_(a), 5)
    layouts = {
        "F.linear, (out, in)": lambda: [F.linear(xs[w.shape[1]], w) for w in weights],
        "x @ Wt, (in, out) copy": lambda: [xs[w.shape[0]] @ w for w in transposed],
        "oneDNN packed": lambda: [torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")
                                  for w, p in zip(weights, packed)],
    }
    rates = {name: 1 / harness.best_time(fn, 7) for name, fn in layouts.items()}

    n = args.new_tokens
    ids = torch.randint(0, cfg.vocab_size, (1, 16))
    t_ours = harness.best_time(lambda: generate(ours, ids.tolist(), n, temperature=0.0), args.repeats)
    dec, cdec = Decoder(ours), Decoder(ours, compile=True)  # reused: weights laid out (and compiled) once
    t_dec = harness.best_time(lambda: generate(dec, ids.tolist(), n, temperature=0.0), args.repeats)
    t_cdec = harness.best_time(lambda: generate(cdec, ids.tolist(), n, temperature=0.0), args.repeats)
    t_hf = harness.best_time(lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                 max_new_tokens=n, min_new_tokens=n), args.repeats)
    hf_rate = n / t_hf
    print(f"weights read per token: {nbytes / 1e6:.0f} MB (fp32, batch 1, {torch.get_num_threads()} threads)")
    print(f"copy bandwidth {copy_bw / 1e9:.1f} GB/s -> at most {copy_bw / nbytes:.1f} tokens/s "
          f"({copy_bw / nbytes / hf_rate:.2f}x transformers)")
    for name, r in rates.items():
        print(f"GEMVs, {name:24} {r:6.1f} tokens/s  {r * nbytes / 1e9:5.1f} GB/s  {r / hf_rate:.2f}x transformers")
    print(f"gpt2lab generate          {n / t_ours:6.1f} tokens/s  ({t_hf / t_ours:.2f}x transformers)")
    print(f"gpt2lab Decoder           {n / t_dec:6.1f} tokens/s  ({t_hf / t_dec:.2f}x transformers)")
    print(f"gpt2lab Decoder, compiled {n / t_cdec:6.1f} tokens/s  ({t_hf / t_cdec:.2f}x transformers)")
    print(f"transformers generate     {hf_rate:6.1f} tokens/s")


if __name__ == "__main__":
    main()

"""The model pair the generation benchmarks compare: a random GPT-2 124M in transformers, and the
same weights converted to gpt2lab (``gpt2lab.hf``), so both compute the same function."""

from __future__ import annotations

import torch


def random_gpt2_pair(seed: int = 0):
    """``(transformers GPT2LMHeadModel, gpt2lab GPT)``, both fp32 and in eval mode, with equal weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2lab.hf import gpt2lab_state_from_hf
    from gpt2lab.model import GPT

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.generation_config.pad_token_id = 50256  # greedy generate() warns without one
    cfg, state = gpt2lab_state_from_hf(hf.state_dict(), hf.config)
    ours = GPT(cfg)
    ours.load_state_dict(state)
    return hf, ours.eval()

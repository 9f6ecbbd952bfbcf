"""int8 inference on CPU: dynamic quantization of the Linear layers.

``quantize_int8(model)`` returns a copy of the model whose ``nn.Linear`` layers (the four
projections of every block and the LM head) hold int8 weights, one scale per output channel,
and quantize their input activations on the fly (``torch.ao`` dynamic quantization, fbgemm
kernels on x86). Embeddings and LayerNorms stay fp32. The LM head is tied to the token
embedding in the model; in the copy it becomes an int8 copy of that matrix while the
embedding lookup keeps the fp32 table, so the result is for inference only (not training,
not saving as a checkpoint).

Decoding one token reads every weight once, so on CPU it is bound by memory traffic: int8
weights are a quarter of fp32's. ``benchmarks/bench_generate.py --int8`` measures the speed
and the validation perplexity change on prepared shards.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .errors import UserError
from .model import GPT


def quantize_int8(model: GPT) -> GPT:
    """An int8 dynamic-quantized copy of ``model`` for CPU inference (the model itself is unchanged)."""
    if model.transformer.wte.weight.device.type != "cpu":
        raise UserError("int8 quantization runs on CPU only: load the model with device cpu")
    if ("fbgemm" not in torch.backends.quantized.supported_engines
            and "x86" not in torch.backends.quantized.supported_engines):
        raise UserError("this PyTorch build has no x86 int8 kernels (fbgemm); int8 is unavailable")
    q = copy.deepcopy(model).float().eval()
    with warnings.catch_warnings():  # torch.ao quantized tensors are deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(q, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return q

"""optim.py: the optimizer the config asks for."""

import pytest

from gpt2lab.config import load_config
from gpt2lab.model import GPT
from gpt2lab.optim import build_optimizer


@pytest.mark.parametrize("value, fused", [("auto", True), ("true", True), ("yes", True), ("false", False),
                                          ("off", False)])
def test_fused_setting_reaches_adamw(value, fused):
    cfg = load_config(None, ["model.preset=micro", f"optim.fused={value}"])
    opt = build_optimizer(GPT(cfg.model), cfg.optim, "cpu")
    assert bool(opt.defaults["fused"]) is fused
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg.optim.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])

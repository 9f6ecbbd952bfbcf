"""optim.py: the optimizer the config asks for."""

from pathlib import Path

import pytest

from gpt2lab.config import load_config
from gpt2lab.model import GPT
from gpt2lab.optim import build_optimizer

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


@pytest.mark.parametrize("value, fused", [("auto", True), ("true", True), ("yes", True), ("false", False),
                                          ("off", False)])
def test_fused_setting_reaches_adamw(value, fused):
    cfg = load_config(None, ["model.preset=micro", f"optim.fused={value}"])
    opt = build_optimizer(GPT(cfg.model), cfg.optim, "cpu")
    assert bool(opt.defaults["fused"]) is fused
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg.optim.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])


def _schedule(cfg, steps):
    from gpt2lab.optim import lr_at

    return [lr_at(s, cfg.optim, steps) for s in range(steps)]


def test_wsd_anneals_even_when_the_warmup_reaches_into_its_decay():
    """A warm-up longer than the stable part: the rate rises, then falls to lr * min_lr_ratio at the last
    step (it used to rise to the end, the run left unannealed at a fraction of its peak)."""
    cfg = load_config(CONFIGS + "/speedrun.yaml", ["train.max_steps=20", "optim.warmup_steps=15"])
    lrs = _schedule(cfg, 20)
    assert lrs[-1] == pytest.approx(cfg.optim.lr * cfg.optim.min_lr_ratio, abs=1e-12)
    peak = max(range(20), key=lrs.__getitem__)
    assert 0 < peak < 19 and all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


@pytest.mark.parametrize("config, steps, warmup", [(CONFIGS + "/speedrun.yaml", 50, 1),
                                                   (CONFIGS + "/speedrun.yaml", 600, 9),
                                                   (CONFIGS + "/gpt2-124m.yaml", 150, 6),
                                                   (CONFIGS + "/quickstart.yaml", 3000, 300)])
def test_a_shorter_or_longer_run_keeps_its_configs_warmup_share(config, steps, warmup):
    """train.max_steps on the command line scales the config's warm-up with it (at least one step), and
    says so; at the config's own length, or with optim.warmup_steps given too, nothing changes."""
    own = load_config(config)
    cfg = load_config(config, [f"train.max_steps={steps}"])
    assert cfg.optim.warmup_steps == warmup == max(1, round(own.optim.warmup_steps * steps / own.train.max_steps))
    assert any(n.startswith(f"optim.warmup_steps {own.optim.warmup_steps:,} -> {warmup:,}") for n in cfg.notes)
    assert load_config(config, [f"train.max_steps={own.train.max_steps}"]).optim == own.optim and not own.notes
    assert load_config(config, [f"train.max_steps={steps}", "optim.warmup_steps=7"]).optim.warmup_steps == 7


def test_the_gpt2_recipe_schedule_is_unchanged_at_its_own_length():
    """GPT-2's cosine: 715 warm-up steps to 6e-4, then down to 6e-5 at step 19,073 (build-nanogpt's get_lr)."""
    import math

    cfg = load_config(CONFIGS + "/gpt2-124m.yaml")
    o = cfg.optim

    def get_lr(it, max_lr=6e-4, min_lr=6e-5, warmup=715, max_steps=19073):  # build-nanogpt's, as written there
        if it < warmup:
            return max_lr * (it + 1) / warmup
        if it > max_steps:
            return min_lr
        ratio = (it - warmup) / (max_steps - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)

    assert (o.lr, o.warmup_steps, cfg.train.max_steps) == (6e-4, 715, 19073)
    from gpt2lab.optim import lr_at

    for step in (0, 1, 714, 715, 716, 5000, 19072):
        assert lr_at(step, o, cfg.train.max_steps) == pytest.approx(get_lr(step), rel=1e-12)

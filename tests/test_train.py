import contextlib
import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli_helpers import micro_cfg, quiet
from gpt2lab import checkpoint as ckpt
from gpt2lab.config import OptimConfig, from_dict, load_config
from gpt2lab.data.shards import write_shard
from gpt2lab.distributed import DistInfo
from gpt2lab.errors import UserError
from gpt2lab.evals.loss import eval_windows, evaluate_loss
from gpt2lab.metrics import read_metrics
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.optim import build_optimizer, lr_at, param_groups
from gpt2lab.train import TrainingDiverged, grad_accum_steps, train, train_step

NO_AUTOCAST = contextlib.nullcontext()
SMALL = GPTConfig(block_size=32, vocab_size=512, padded_vocab_size=512, n_layer=2, n_head=2, n_embd=64)


def small_model(seed=0, cfg=SMALL) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


# --- the optimizer step ----------------------------------------------------------------


@pytest.mark.slow
def test_overfits_one_batch():
    model = small_model()
    model.train()
    opt = build_optimizer(model, OptimConfig(lr=3e-3, weight_decay=0.0), "cpu")
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, SMALL.vocab_size, (4, 33), generator=g)
    x, y = batch[:, :-1], batch[:, 1:]
    losses = []
    for _ in range(80):
        loss, norm = train_step(model, model, opt, [(x, y)], accum=1, autocast=NO_AUTOCAST, clip=1.0, info=DistInfo())
        assert torch.isfinite(norm)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(SMALL.vocab_size), abs=0.3)
    assert losses[-1] < 1.0, losses[::10]
    assert losses[-1] < 0.2 * losses[0]


def test_grad_accumulation_equals_full_batch():
    """4 micro-batches of B/4 with accum=4 == one batch of B with accum=1 (fp32, no dropout).

    Tolerances: gradients rtol 1e-4 / atol 1e-6 (largest gradients ~1e-2), weights after each step rtol 1e-5 / atol 1e-6
    (only the summation order differs). Adam's first step is nearly scale-free, so the gradients
    themselves are compared too: a missing 1/accum would make them 4x too large. Adam divides by
    |g| + eps, which turns round-off in gradients of ~1e-8 into O(lr) weight differences with the
    default eps=1e-8, so this test uses eps=1e-6 (the update rule is otherwise the same).
    """
    B, T = 8, 16
    g = torch.Generator().manual_seed(1)
    ocfg = OptimConfig(lr=1e-3, weight_decay=0.1, eps=1e-6)
    a, b = small_model(seed=5), small_model(seed=5)
    a.train(), b.train()
    opt_a, opt_b = build_optimizer(a, ocfg, "cpu"), build_optimizer(b, ocfg, "cpu")
    for _ in range(2):
        data = torch.randint(0, SMALL.vocab_size, (B, T + 1), generator=g)
        x, y = data[:, :-1], data[:, 1:]
        loss_a, norm_a = train_step(a, a, opt_a, [(x, y)], accum=1, autocast=NO_AUTOCAST, clip=1.0, info=DistInfo())
        micro = [(x[i : i + B // 4], y[i : i + B // 4]) for i in range(0, B, B // 4)]
        loss_b, norm_b = train_step(b, b, opt_b, iter(micro), accum=4, autocast=NO_AUTOCAST, clip=1.0, info=DistInfo())
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(norm_b, norm_a, rtol=1e-5, atol=1e-7)
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
            torch.testing.assert_close(pb.detach(), pa.detach(), rtol=1e-5, atol=1e-6, msg=name)
    # and the step did move the weights (the comparison is not between two untouched models)
    assert not torch.allclose(a.transformer.h[0].mlp.c_fc.weight, small_model(seed=5).transformer.h[0].mlp.c_fc.weight)


def test_non_finite_step_skips_update():
    model = small_model()
    opt = build_optimizer(model, OptimConfig(lr=1e-3), "cpu")
    before = copy.deepcopy(model.state_dict())
    x = torch.randint(0, SMALL.vocab_size, (2, 8))
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = float("nan")
    before["transformer.ln_f.weight"] = model.transformer.ln_f.weight.detach().clone()
    loss, norm = train_step(model, model, opt, [(x, x)], accum=1, autocast=NO_AUTOCAST, clip=1.0, info=DistInfo())
    assert not torch.isfinite(loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v.isnan(), before[k].isnan()), k
        assert torch.equal(torch.nan_to_num(v), torch.nan_to_num(before[k])), k
    assert not opt.state  # optimizer.step() never ran


def test_grad_accum_steps_from_config():
    cfg = load_config(None, ["preset=micro", "micro_batch=4", "seq_len=32", "total_batch_tokens=512"])
    assert grad_accum_steps(cfg, 1) == 4
    assert grad_accum_steps(cfg, 2) == 2
    cfg = load_config(None, ["preset=micro", "micro_batch=4", "seq_len=32"])
    assert grad_accum_steps(cfg, 1) == 1
    cfg = load_config(None, ["preset=micro", "micro_batch=4", "seq_len=32", "total_batch_tokens=500"])
    with pytest.raises(UserError, match="train.total_batch_tokens"):
        grad_accum_steps(cfg, 1)


# --- learning rate and weight decay ----------------------------------------------------


def test_lr_schedule_cosine():
    c = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, schedule="cosine")
    max_steps = 110
    lr, min_lr = c.lr, c.lr * c.min_lr_ratio
    # linear warmup from lr/warmup, reaching lr at the last warmup step
    for s in range(10):
        assert lr_at(s, c, max_steps) == pytest.approx(lr * (s + 1) / 10)
    assert lr_at(9, c, max_steps) == pytest.approx(lr)
    assert lr_at(10, c, max_steps) == pytest.approx(lr)  # decay starts at the peak
    assert lr_at(60, c, max_steps) == pytest.approx((lr + min_lr) / 2)  # half way: cos = 0
    assert lr_at(35, c, max_steps) == pytest.approx(min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, c, max_steps) == pytest.approx(min_lr)
    assert lr_at(500, c, max_steps) == pytest.approx(min_lr)  # past the end: stays at the floor
    after = [lr_at(s, c, max_steps) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(after, after[1:]))
    assert min(lr_at(s, c, max_steps) for s in range(0, 200)) >= min_lr * (1 - 1e-12) or lr / 10 < min_lr


def test_lr_schedule_linear_constant_and_edges():
    lin = OptimConfig(lr=2e-3, min_lr_ratio=0.0, warmup_steps=4, schedule="linear")
    assert lr_at(4, lin, 104) == pytest.approx(2e-3)
    assert lr_at(54, lin, 104) == pytest.approx(1e-3)
    assert lr_at(104, lin, 104) == pytest.approx(0.0, abs=1e-15)
    const = OptimConfig(lr=2e-3, warmup_steps=4, schedule="constant")
    assert lr_at(0, const, 100) == pytest.approx(5e-4)
    assert all(lr_at(s, const, 100) == pytest.approx(2e-3) for s in range(3, 100))
    no_warmup = OptimConfig(lr=1e-3, warmup_steps=0, min_lr_ratio=0.1)
    assert lr_at(0, no_warmup, 50) == pytest.approx(1e-3)
    assert lr_at(50, no_warmup, 50) == pytest.approx(1e-4)
    short = OptimConfig(lr=1e-3, warmup_steps=100)  # max_steps inside warmup: no decay phase
    assert lr_at(10, short, 20) == pytest.approx(1e-3 * 11 / 100)


def test_weight_decay_only_on_2d_params():
    model = small_model()
    groups = param_groups(model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    names = dict(model.named_parameters())  # tied weight listed once
    assert len(decay) + len(no_decay) == len(names) and not decay & no_decay
    for name, p in names.items():
        assert (id(p) in decay) == (p.dim() == 2), name
        if name.endswith(".bias") or ".ln_" in name:
            assert id(p) in no_decay, name
    assert id(model.transformer.wte.weight) in decay and id(model.transformer.wpe.weight) in decay

    # behaviour: with zero gradients Adam's update is 0, so only decoupled decay moves weights
    c = OptimConfig(lr=0.5, weight_decay=0.1)
    opt = build_optimizer(model, c, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # make biases / LayerNorm params non-zero so decay would be visible
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - c.lr * c.weight_decay) if p.dim() == 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7, msg=n)


# --- the whole loop --------------------------------------------------------------------


@pytest.mark.slow
def test_train_writes_run(small_shards, tmp_path):
    run = tmp_path / "run"
    cfg = micro_cfg(small_shards, run, "train.ckpt_every=2", "train.keep_checkpoints=1")
    lines = []
    summary = train(cfg, log=lines.append)
    B, T = 4, 32
    assert summary["steps"] == 4 and summary["tokens"] == 4 * B * T

    records = read_metrics(run)
    train_recs = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    for r in train_recs:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["tokens"] == r["step"] * B * T
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg.optim, cfg.train.max_steps))
    assert train_recs[-1]["loss"] == summary["train_loss"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    assert val[-1]["val_loss"] == summary["val_loss"] and val[-1]["val_tokens"] == 1024
    assert [r["step"] for r in records if r["kind"] == "sample"] == [4]
    assert any("val loss" in line for line in lines)

    saved = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved == cfg

    found = ckpt.list_checkpoints(run)
    assert [p.name for p in found] == ["step_00000004"]  # keep_checkpoints=1 pruned step 2
    assert not list((run / "checkpoints").glob(".tmp-*"))
    model, ck_cfg = ckpt.load_model(run)
    assert ck_cfg == cfg and not model.training
    # the checkpoint is the final model: it scores the validation windows exactly as the run did
    windows = eval_windows(small_shards, "val", T, cfg.eval.val_tokens)
    assert evaluate_loss(model, windows, B, "cpu") == pytest.approx(summary["val_loss"], rel=1e-6)

    # a second run in the same folder without --resume refuses, and leaves the run alone
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(cfg, log=quiet)
    assert (run / "metrics.jsonl").read_bytes() == before
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000004"]


def test_diverged_training_raises(small_shards, tmp_path):
    run = tmp_path / "run"
    cfg = micro_cfg(small_shards, run, "optim.lr=1e30", "optim.grad_clip=0", "optim.warmup_steps=0",
                    "train.max_steps=6", "eval.every=-1", "eval.sample_every=-1")
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, log=quiet)
    assert isinstance(e.value, UserError)
    msg = str(e.value)
    assert re.search(r"at step \d+", msg) and "optim.lr" in msg
    logged = [r["step"] for r in read_metrics(run, "train")]
    assert len(logged) < 6  # it stopped early
    assert not ckpt.list_checkpoints(run)  # no checkpoint of a diverged model
    last_good = max(logged, default=0)
    assert f"at step {last_good + 1}:" in msg  # named as logs and checkpoints count steps



def test_token_beyond_vocab_is_user_error(small_shards, tmp_path):
    cfg = micro_cfg(small_shards, tmp_path / "run", "model.vocab_size=1000", "model.padded_vocab_size=1024",
                    "eval.every=-1")
    with pytest.raises(UserError, match=r"tokenized with 'gpt2' \(50257 ids\), more than model.vocab_size 1000"):
        train(cfg, log=quiet)  # known from the manifest before the first step


def test_token_beyond_vocab_at_window_start_is_user_error(tmp_path):
    toks = np.random.RandomState(0).randint(0, 1000, 5000)
    toks[0] = 2000  # >= padded_vocab_size: only ever appears in x, never in y
    write_shard(tmp_path / "data" / "train_000000.bin", toks)
    cfg = load_config(None, [
        f"data.dir={tmp_path / 'data'}", f"train.run_dir={tmp_path / 'run'}", "preset=micro", "vocab_size=1000",
        "padded_vocab_size=1024", "device=cpu", "dtype=float32", "micro_batch=2", "seq_len=16", "max_steps=1",
        "eval.every=-1", "eval.sample_every=-1",
    ])
    with pytest.raises(UserError, match=r"token id 2000 >= model.vocab_size 1000"):  # no manifest: found in the batch
        train(cfg, log=quiet)


def test_missing_data_dir_is_user_error(tmp_path):
    cfg = micro_cfg(tmp_path / "nope", tmp_path / "run")
    with pytest.raises(UserError, match="nope"):
        train(cfg, log=quiet)




@pytest.mark.slow
def test_init_from_checkpoint_takes_weights_and_shape(small_shards, tmp_path):
    """train.init_from starts a new run from another run's weights; its model shape wins, dropout stays ours."""
    src = tmp_path / "src"
    train(micro_cfg(small_shards, src, "eval.every=-1", "eval.sample_every=-1"), log=quiet)
    source_model, _ = ckpt.load_model(src)

    dst = tmp_path / "dst"
    cfg = micro_cfg(small_shards, dst, f"train.init_from={src}", "model.n_layer=1", "model.dropout=0.2",
                    "train.max_steps=1", "optim.lr=1e-12", "optim.warmup_steps=0", "optim.weight_decay=0",
                    "eval.every=-1", "eval.sample_every=-1")
    train(cfg, log=quiet)
    tuned, tuned_cfg = ckpt.load_model(dst)
    assert tuned_cfg.model.n_layer == source_model.config.n_layer  # not the 1 asked for: the weights decide
    assert tuned_cfg.model.dropout == 0.2
    assert cfg.model.n_layer == 1  # the caller's config object is left alone
    for (name, a), (_, b) in zip(source_model.state_dict().items(), tuned.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-9), name  # one step at lr 1e-12 moves nothing visible

    # resuming that run takes the shape from its own checkpoint, not from init_from again
    more = micro_cfg(small_shards, dst, f"train.init_from={src}", "train.max_steps=2", "eval.every=-1",
                     "eval.sample_every=-1")
    assert train(more, resume=True, log=quiet)["steps"] == 2


def test_init_from_missing_folder_is_user_error(small_shards, tmp_path):
    cfg = micro_cfg(small_shards, tmp_path / "run", f"train.init_from={tmp_path / 'nope'}")
    with pytest.raises(UserError):
        train(cfg, log=quiet)


@pytest.mark.parametrize("extra", [[], ["train.total_batch_tokens=256"]], ids=["one-micro-batch", "accumulation"])
def test_loss_chunk_trains_like_the_full_logits(small_shards, tmp_path, extra):
    """train.loss_chunk: the same per-step losses and final weights as the full logits (fp32), also
    with gradient accumulation."""
    runs = {}
    for chunk in (0, 24):
        run = tmp_path / f"chunk{chunk}"
        train(micro_cfg(small_shards, run, f"train.loss_chunk={chunk}", "eval.every=-1", "eval.sample_every=-1",
                        *extra), log=quiet)
        runs[chunk] = run
    losses = [[r["loss"] for r in read_metrics(runs[c], "train")] for c in (0, 24)]
    assert len(losses[0]) == 4 and all(abs(a - b) <= 1e-5 * a for a, b in zip(*losses))
    a, b = (ckpt.load_model(runs[c])[0].state_dict() for c in (0, 24))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_a_model_vocabulary_larger_than_the_tokenizers_samples_decodable_text(small_shards, tmp_path, capsys):
    """model.vocab_size=50304 with GPT-2's 50,257-token tokenizer (a nanoGPT habit): the samples of
    training and of `gpt2lab sample` draw only ids the tokenizer can decode."""
    from gpt2lab.cli import main

    run = tmp_path / "run"
    cfg = micro_cfg(small_shards, run, "model.vocab_size=50304", "train.max_steps=1", "eval.every=-1",
                    "eval.sample_every=0", "eval.sample_count=16", "eval.sample_tokens=200", "eval.sample_top_k=0")
    train(cfg, log=quiet)
    assert main(["sample", str(run), "-n", "16", "--max-new-tokens", "200", "--top-k", "0", "--seed", "1",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 16


def test_a_validation_split_shorter_than_one_window_is_an_error(tmp_path):
    """Not a loss of 0/0 (NaN) reported as a result."""
    write_shard(tmp_path / "val_000000.bin", np.arange(50))
    assert len(eval_windows(tmp_path, "val", 49, 1000)) == 1
    with pytest.raises(UserError, match=r"'val' shards in .* fewer than seq_len \+ 1 = 51 tokens"):
        eval_windows(tmp_path, "val", 50, 1000)


def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(small_shards, tmp_path):
    """Where the CPU has no bf16 instructions a bf16 step is ~100x slower than fp32: the start says so, and
    auto picks fp32 there (the recipes say auto)."""
    from gpt2lab.device import cpu_supports_bf16, resolve_dtype

    lines = []
    train(micro_cfg(small_shards, tmp_path / "run", "train.dtype=bfloat16", "train.max_steps=1", "train.seq_len=16",
                    "train.micro_batch=1"), log=lines.append)
    warned = [x for x in lines if "emulated, about 100x slower than fp32" in x]
    assert len(warned) == (0 if cpu_supports_bf16() else 1), lines
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    for recipe in ("configs/gpt2-124m.yaml", "configs/speedrun.yaml"):
        assert load_config(str(Path(__file__).resolve().parent.parent / recipe), []).train.dtype == "auto"

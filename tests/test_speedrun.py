"""The speedrun switches (issue 14): the GPT-2 recipe unchanged bit for bit, every model switch
through training, scoring, decoding with a KV cache, int8 and export, and the Muon optimizer.

The subprocess tests (DDP against accumulation, FSDP2's refusal, kill -9 and resume) are in
test_distributed.py and test_resume.py.
"""

import copy
import dataclasses
import hashlib

import pytest
import torch

from gpt2lab.cli import main as cli_main
from gpt2lab.checkpoint import load_model, load_train_state, list_checkpoints, save_checkpoint
from gpt2lab.config import MODEL_PRESETS, OptimConfig, load_config
from gpt2lab.errors import UserError
from gpt2lab.evals.hellaswag import evaluate_hellaswag, load_hellaswag
from gpt2lab.evals.lambada import evaluate_lambada, load_lambada
from gpt2lab.generate import Decoder, generate
from gpt2lab.hf import hf_state_from_gpt2lab, non_gpt2_features
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.optim import MuonAdamW, build_optimizer, lr_at, orthogonalize, set_lr
from gpt2lab.quantize import quantize_int8
from gpt2lab.train import train
from cli_helpers import DATA, ckpt_cfg, quiet

REPO_CONFIGS = DATA.parent.parent / "configs"
MICRO = GPTConfig(vocab_size=50257, padded_vocab_size=50304, **MODEL_PRESETS["micro"])
# Every switch off, written out: what the defaults must equal.
ALL_OFF = dict(bias=True, rotary=False, rotary_base=10000.0, qk_norm=False, norm="layernorm", mlp="gelu", tie_head=True,
               zero_init_proj=False, logit_softcap=0.0)
SPEEDRUN = dict(bias=False, rotary=True, qk_norm=True, norm="rmsnorm", mlp="relu2", tie_head=False, zero_init_proj=True,
                logit_softcap=30.0)
# A few combinations that between them turn each switch on, and off, with others.
COMBOS = {
    "speedrun": SPEEDRUN,
    "rotary+softcap": dict(rotary=True, logit_softcap=15.0),
    "qknorm+relu2+untied": dict(qk_norm=True, mlp="relu2", tie_head=False),
    "rmsnorm+zeroinit+nobias": dict(norm="rmsnorm", zero_init_proj=True, bias=False),
}
# sha256 of the micro model's initial weights (seed 0), names and bytes, as gpt2lab made them before the switches
MICRO_INIT_SHA256 = "2b884e1de1464d31338713b0216fe047347416c973eb0304d111ef6c42399169"


def micro(seed: int = 0, **switches) -> GPT:
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(MICRO, **switches))
    if switches.get("zero_init_proj"):  # zeros make blocks the identity: give every weight something to compute
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def state_sha256(state: dict) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def gpt2_keys(n_layer: int) -> list[str]:
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        for p in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            keys += [f"transformer.h.{i}.{p}.weight", f"transformer.h.{i}.{p}.bias"]
    return keys + ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]


# --- the GPT-2 recipe stays what it was ---------------------------------------------------------


def test_default_model_is_gpt2_bit_for_bit():
    default, off = micro(), micro(**ALL_OFF)
    assert list(default.state_dict()) == gpt2_keys(2) == list(off.state_dict())
    assert [n for n, _ in default.named_parameters()] == gpt2_keys(2)[:-1]  # the tied head is the embedding
    assert default.lm_head.weight is default.transformer.wte.weight
    assert state_sha256(default.state_dict()) == MICRO_INIT_SHA256 == state_sha256(off.state_dict())
    # forward, backward and three AdamW steps through the trainer's learning-rate setting: bitwise the same
    cfg = OptimConfig()
    assert cfg.optimizer == "adamw" and cfg.schedule == "cosine"
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 50257, (2, 16), generator=g), torch.randint(0, 50257, (2, 16), generator=g)
    results = []
    for model in (default.train(), off.train()):
        opt = build_optimizer(model, cfg, "cpu")
        assert [len(gr["params"]) for gr in opt.param_groups] == [2 + 4 * 2, 8 * 2 + 2]
        losses = []
        for step in range(3):
            lr = lr_at(step, cfg, 10)
            set_lr(opt, lr, cfg)
            assert all(gr["lr"] == lr for gr in opt.param_groups)  # exactly the schedule's value
            opt.zero_grad()
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        results.append((losses, state_sha256(model.state_dict())))
    assert results[0] == results[1]


def test_gpt2_recipe_config_has_every_switch_off():
    cfg = load_config(REPO_CONFIGS / "gpt2-124m.yaml")
    assert {k: getattr(cfg.model, k) for k in ALL_OFF} == ALL_OFF
    assert (cfg.optim.optimizer, cfg.optim.schedule) == ("adamw", "cosine")


# --- each switch -------------------------------------------------------------------------------


def test_switches_change_what_they_say():
    m = micro(**SPEEDRUN)
    names = [n for n, _ in m.named_parameters()]
    assert "transformer.wpe.weight" not in names and not any(n.endswith(".bias") for n in names)
    assert m.lm_head.weight is not m.transformer.wte.weight and "lm_head.weight" in names
    assert type(m.transformer.ln_f) is torch.nn.RMSNorm
    fresh = GPT(dataclasses.replace(MICRO, **SPEEDRUN))
    assert all((b.attn.c_proj.weight == 0).all() and (b.mlp.c_proj.weight == 0).all() for b in fresh.transformer.h)
    assert (fresh.lm_head.weight == 0).all() and fresh.transformer.wte.weight.std() > 0.01
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        logits, _ = m(x)
    assert logits[..., :50257].abs().max() <= 30.0  # soft-capped
    # num_params: the untied head counted, its padded rows and (non_embedding) the embedding lookup not
    C = MICRO.n_embd
    assert m.num_params() == sum(p.numel() for p in m.parameters()) - 2 * (50304 - 50257) * C
    assert m.num_params(non_embedding=True) == m.num_params() - 50257 * C


def test_rotary_attention_depends_on_relative_position_only():
    m = micro(rotary=True)
    x = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        a, _ = m(x, pos=torch.arange(12))
        b, _ = m(x, pos=torch.arange(12) + 40)  # every position shifted: the same relative offsets
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    with torch.no_grad():
        c, _ = micro()(x, pos=torch.arange(12) + 40)
    assert not torch.allclose(a[..., :50257], c[..., :50257])


@pytest.mark.parametrize("name", COMBOS)
def test_decoder_with_kv_cache_matches_full_forward(name):
    m = micro(**COMBOS[name])
    V = MICRO.vocab_size
    idx = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = m(idx)
        for pack in (False, True):
            dec = Decoder(m, pack=pack, batch=2)
            dec.allocate(2, 16)
            first = dec(idx[:, :9], torch.arange(9).expand(2, 9), torch.arange(9), None, 9)
            torch.testing.assert_close(first, full[:, 8, :V], atol=1e-4, rtol=1e-4)
            nxt = dec(idx[:, 9:], torch.full((2, 1), 9), torch.arange(9, 10), None, 10)  # one token after the cache
            torch.testing.assert_close(nxt, full[:, 9, :V], atol=1e-4, rtol=1e-4)
    # prompts of different lengths (left padding, per-row positions and masks) decode as each alone
    prompts = [idx[0, :7].tolist(), idx[1, :3].tolist()]
    batch = generate(m, prompts, 6, temperature=0.0)
    assert batch == [generate(m, p, 6, temperature=0.0)[0] for p in prompts]
    assert batch == generate(m, prompts, 6, temperature=0.0, use_cache=False)


@pytest.mark.parametrize("name", COMBOS)
def test_hellaswag_and_lambada_fast_scoring_matches_plain(name):
    m = micro(**COMBOS[name])
    items = load_hellaswag(DATA / "hellaswag_val_120.jsonl")[:2]
    fast, fast_recs = evaluate_hellaswag(m, items, batch_tokens=400)
    plain, plain_recs = evaluate_hellaswag(m, items, plain=True)
    assert fast == plain
    for f, p in zip(fast_recs, plain_recs):
        assert max(abs(a - b) for a, b in zip(f["completion"]["logprob"], p["completion"]["logprob"])) < 1e-4
    texts = load_lambada(DATA / "lambada_test_plain_text_head.txt", "original")[:3]
    fast_m, fast_l = evaluate_lambada(m, texts, batch_tokens=500)
    plain_m, plain_l = evaluate_lambada(m, texts, plain=True)
    assert all(abs(f["logprob"] - p["logprob"]) < 1e-4 and f["greedy"] == p["greedy"] for f, p in zip(fast_l, plain_l))
    assert fast_m["acc"] == plain_m["acc"]


@pytest.mark.parametrize("name", COMBOS)
def test_int8_works_for_every_switch(name):
    m = micro(**COMBOS[name])
    q = quantize_int8(m)
    x = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        ref, got = m(x)[0][..., :50257], q(x)[0][..., :50257]
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    with torch.no_grad():  # the Decoder with its cache; int8 activations are quantized per call, so not bitwise
        dec = Decoder(q)
        dec.allocate(1, 16)
        last = dec(x, torch.arange(12)[None], torch.arange(12), None, 12)
    assert (last - ref[:, -1]).abs().max() < 0.05 * ref.abs().max()
    out = generate(q, [x[0].tolist()], 5, temperature=0.0)
    assert out[0][:12] == x[0].tolist() and len(out[0]) == 12 + 5 and all(0 <= t < 50257 for t in out[0])


@pytest.mark.parametrize("name", COMBOS)
def test_export_to_hf_refuses_non_gpt2_features_in_one_line(name):
    m = micro(**COMBOS[name])
    features = non_gpt2_features(m.config)
    assert features and all(f.startswith("model.") for f in features)
    with pytest.raises(UserError) as e:
        hf_state_from_gpt2lab(m)
    assert "\n" not in str(e.value) and all(f in str(e.value) for f in features)
    assert non_gpt2_features(dataclasses.replace(MICRO, bias=False)) == []  # zero biases export exactly


def test_untied_head_is_saved_and_loaded_and_the_commands_take_it(tmp_path, capsys):
    m = micro(**SPEEDRUN)
    cfg = load_config(None, ["model.preset=micro", *(f"model.{k}={v}" for k, v in SPEEDRUN.items())])
    assert cfg.model == m.config
    save_checkpoint(tmp_path / "run", 1, m, cfg, {"loader": {}, "rng": []})
    loaded, _ = load_model(tmp_path / "run")
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    # convert to-hf: one line naming the features; sample works
    assert cli_main(["convert", "to-hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "model.rotary=True" in err
    assert not (tmp_path / "hf").exists()
    assert cli_main(["sample", str(tmp_path / "run"), "--max-new-tokens", "3", "--seed", "0", "--device", "cpu"]) == 0


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    (["model.rotary=true", "model.n_embd=66", "model.n_head=6"], "model.rotary"),  # head dim 11
    (["optim.embed_lr=0.1"], "optim.embed_lr"),  # a muon rate with adamw
    (["model.norm=batchnorm"], "model.norm"),
    (["model.logit_softcap=-1"], "model.logit_softcap"),
    (["optim.schedule=wsd", "optim.decay_fraction=0"], "optim.decay_fraction"),
])
def test_bad_combinations_are_one_line_errors_naming_the_key(overrides, key):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert f"config key '{key}'" in str(e.value) and "\n" not in str(e.value)


def test_speedrun_config_takes_the_tiny_overrides():
    cfg = load_config(REPO_CONFIGS / "speedrun.yaml", ["model.preset=tiny", "train.total_batch_tokens=4096"])
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (6, 384, 256)
    assert cfg.model.rotary and not cfg.model.tie_head and cfg.optim.optimizer == "muon"
    assert cfg.train.seq_len == 256 and cfg.train.total_batch_tokens == 4096


# --- the optimizer and the schedule ---------------------------------------------------------------


def assert_near_one(s: torch.Tensor, shape) -> None:
    """Singular values of a Newton-Schulz result: 5 steps put every one of a rectangular Gaussian matrix
    in about [0.68, 1.14]; a square one has a few tiny singular values of its own (under 2% of them),
    which 5 steps cannot lift: the rest must be there."""
    assert s.max() < 1.25, (shape, s.max())
    if shape[-1] == shape[-2]:
        assert (s > 0.5).float().mean() > 0.95, (shape, s)
    else:
        assert s.min() > 0.6, (shape, s.min())


def test_newton_schulz_gives_singular_values_near_one():
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 64), (3, 192, 64), (64, 256), (256, 64), (2, 128, 128)]:
        a = torch.randn(*shape, generator=g) * 10
        o = orthogonalize(a)
        assert o.shape == a.shape and o.dtype == torch.bfloat16
        for m in o.reshape(-1, *shape[-2:]):
            assert_near_one(torch.linalg.svdvals(m.float()), shape)
    # batched is each alone (one bf16 batched matmul per shape)
    a = torch.randn(4, 32, 48, generator=g)
    torch.testing.assert_close(orthogonalize(a).float(), torch.stack([orthogonalize(m) for m in a]).float(),
                               atol=1e-2, rtol=0)


def test_muon_update_is_orthogonal_and_scaled():
    m = micro(**SPEEDRUN).train()
    cfg = OptimConfig(optimizer="muon", muon_lr=0.01, muon_nesterov=False, muon_momentum=0.0, weight_decay=0.0)
    opt = build_optimizer(m, cfg, "cpu")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    g = torch.Generator().manual_seed(1)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=g)  # full rank: a real gradient of a small batch is not
    opt.step()
    muon = [n for n, p in m.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2]
    assert len(muon) == 8
    for n, p in m.named_parameters():
        if n in muon:
            rows, cols = p.shape
            step = (before[n] - p.detach()) / (0.01 * max(1, rows / cols) ** 0.5)
            assert_near_one(torch.linalg.svdvals(step), p.shape)


@pytest.mark.parametrize("switches", [ALL_OFF, SPEEDRUN, dict(tie_head=False), dict(rotary=True, bias=False)])
def test_every_parameter_is_in_exactly_one_group(switches):
    m = micro(**switches)
    opt = build_optimizer(m, OptimConfig(optimizer="muon", embed_lr=0.3, head_lr=0.01, scalar_lr=0.04), "cpu")
    assert isinstance(opt, MuonAdamW)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters()) and len(ids) == len(set(ids))
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert all(p.dim() == 2 for p in kinds["muon"]["params"]) and len(kinds["muon"]["params"]) == 4 * 2
    assert kinds["embed"]["lr"] == 0.3 and kinds["scalar"]["lr"] == 0.04 and kinds["muon"]["lr"] == 0.02
    assert ("head" in kinds) == (not m.config.tie_head)
    # the schedule scales each group's own peak
    set_lr(opt, 0.5 * 6e-4, OptimConfig())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 * b for b in opt.base_lrs])


def test_muon_state_dict_round_trip_continues_identically():
    cfg = OptimConfig(optimizer="muon", muon_weight_decay=0.01)
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))

    def one_step(model, opt):
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        opt.step()

    a = micro(**SPEEDRUN).train()
    opt_a = build_optimizer(a, cfg, "cpu")
    one_step(a, opt_a)
    b = micro(**SPEEDRUN).train()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, cfg, "cpu")
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # state_dict() shares opt_a's tensors
    one_step(a, opt_a)
    one_step(b, opt_b)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_wsd_schedule_is_a_trapezoid():
    c = OptimConfig(lr=1e-3, warmup_steps=10, schedule="wsd", decay_fraction=0.25, min_lr_ratio=0.0)
    lrs = [lr_at(s, c, 100) for s in range(100)]
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    assert all(v == 1e-3 for v in lrs[10:75])
    assert lrs[75:] == pytest.approx([1e-3 * (1 - (s + 1) / 25) for s in range(25)])
    assert lrs[-1] == 0.0


def test_speedrun_training_checkpoints_both_optimizers_and_refuses_another_optimizer(small_shards, tmp_path):
    switches = [f"model.{k}={v}" for k, v in SPEEDRUN.items()]
    muon = ["optim.optimizer=muon", "optim.embed_lr=0.05", "optim.schedule=wsd"]
    cfg = ckpt_cfg(small_shards, tmp_path / "run", 2, *switches, *muon)
    summary = train(cfg, log=quiet)
    assert summary["steps"] == 2 and summary["train_loss"] < 11
    from gpt2lab.metrics import read_metrics
    from gpt2lab.progress import train_fields

    record = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"][-1]
    muon_peak = cfg.optim.muon_lr * record["lr"] / cfg.optim.lr  # Muon's rate follows the same schedule
    assert record["lr_muon"] == pytest.approx(muon_peak) and f"muon {muon_peak:.2e}" in " ".join(train_fields(record))
    state = load_train_state(list_checkpoints(tmp_path / "run")[-1])["optimizer"]
    assert [g["kind"] for g in state["param_groups"]] == ["muon", "embed", "head", "scalar"]
    muon_ids, adam_ids = state["param_groups"][0]["params"], state["param_groups"][1]["params"]
    assert all(set(state["state"][i]) == {"momentum_buffer"} for i in muon_ids)
    assert all(set(state["state"][i]) == {"step", "exp_avg", "exp_avg_sq"} for i in adam_ids)
    # resuming with the other optimizer is refused in one line
    other = ckpt_cfg(small_shards, tmp_path / "run", 3, *switches)
    with pytest.raises(UserError, match="optimizer state has 4 parameter group"):
        train(other, resume=True, log=quiet)
    assert train(ckpt_cfg(small_shards, tmp_path / "run", 3, *switches, *muon), resume=True, log=quiet)["steps"] == 3


def test_muon_refuses_a_matrix_that_is_not_2d():
    model = torch.nn.Module()
    model.transformer = torch.nn.ModuleDict({"h": torch.nn.ModuleList([torch.nn.Conv1d(4, 4, 3)])})
    with pytest.raises(UserError, match=r"^config key 'optim.optimizer': muon orthogonalises 2-D matrices, but "
                                        r"transformer.h.0.weight has 3 dimensions"):
        build_optimizer(model, OptimConfig(optimizer="muon"), "cpu")


def test_checkpoint_check_names_a_group_of_another_kind(tmp_path):
    from gpt2lab.checkpoint import check_optimizer_state

    m = micro(tie_head=False)
    opt = build_optimizer(m, OptimConfig(optimizer="muon"), "cpu")
    saved = copy.deepcopy(opt.state_dict())
    check_optimizer_state(saved, opt, tmp_path)
    saved["param_groups"][2]["kind"] = "scalar"
    with pytest.raises(UserError, match="group 2 is 'scalar', this run's is 'head'"):
        check_optimizer_state(saved, opt, tmp_path)

import math

import pytest
import torch
import torch.nn.functional as F

from gpt2lab.config import MODEL_PRESETS
from gpt2lab.model import GPT, GPTConfig, KVCache
from gpt2lab.ops import gelu_tanh, softcap

GPT2_124M_PARAMS = 124_439_808  # GPT-2 small as OpenAI/Hugging Face count it (tied head once)


def tiny_cfg(**kw) -> GPTConfig:
    base = dict(block_size=64, vocab_size=500, padded_vocab_size=512, n_layer=2, n_head=2, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


def make(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def expected_param_count(c: GPTConfig) -> int:
    """GPT-2 parameter count from the architecture, independent of the module tree."""
    d, L = c.n_embd, c.n_layer
    bias = 1 if c.bias else 0
    per_block = (
        2 * (d + bias * d)  # ln_1, ln_2
        + d * 3 * d + bias * 3 * d  # c_attn
        + d * d + bias * d  # attn.c_proj
        + d * 4 * d + bias * 4 * d  # c_fc
        + 4 * d * d + bias * d  # mlp.c_proj
    )
    return c.vocab_size * d + c.block_size * d + L * per_block + d + bias * d  # wte (= lm_head), wpe, blocks, ln_f


@pytest.mark.parametrize("padded", [50257, 50304])
def test_gpt2_124m_param_count(padded):
    cfg = GPTConfig(vocab_size=50257, padded_vocab_size=padded, **MODEL_PRESETS["gpt2"])
    with torch.device("meta"):
        model = GPT(cfg)
    assert expected_param_count(cfg) == GPT2_124M_PARAMS
    assert model.num_params() == GPT2_124M_PARAMS
    # non_embedding leaves out the position embedding only
    assert model.num_params(non_embedding=True) == GPT2_124M_PARAMS - cfg.block_size * cfg.n_embd
    # the padded rows exist in the tensors but are not counted
    assert model.transformer.wte.weight.shape == (padded, cfg.n_embd)


@pytest.mark.parametrize("kw", [dict(), dict(bias=False), dict(vocab_size=300, padded_vocab_size=300, n_layer=3)])
def test_param_count_small_configs(kw):
    cfg = tiny_cfg(**kw)
    model = make(cfg)
    assert model.num_params() == expected_param_count(cfg)


def test_output_shapes_and_loss_none_without_targets():
    cfg = tiny_cfg()
    model = make(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 17))
    logits, loss = model(idx)
    assert logits.shape == (3, 17, cfg.padded_vocab_size)
    assert loss is None
    logits, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)
    _, per_token = model(idx, idx, reduction="none")
    assert per_token.shape == (3 * 17,)
    assert torch.allclose(per_token.mean(), loss)


def test_sequence_longer_than_block_size_rejected():
    cfg = tiny_cfg(block_size=8)
    model = make(cfg)
    model(torch.zeros(1, 8, dtype=torch.long))  # exactly block_size is fine
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_padded_vocab_smaller_than_vocab_rejected():
    with pytest.raises(ValueError):
        GPT(tiny_cfg(vocab_size=600, padded_vocab_size=512))


def test_init_loss_is_uniform_over_vocab():
    # small but realistic: the full GPT-2 vocabulary, padded as for training
    cfg = GPTConfig(block_size=64, vocab_size=50257, padded_vocab_size=50304, n_layer=2, n_head=4, n_embd=128)
    model = make(cfg, seed=1)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, cfg.vocab_size, (4, 64), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (4, 64), generator=g)
    with torch.no_grad():
        _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.3


def padded_rows_rigged_to_win(model: GPT) -> GPT:
    """The padded rows of the tied embedding/head made to win by a mile were they not masked: ln_f
    outputs its bias (plus normalised noise), and the padded rows align with that bias."""
    with torch.no_grad():
        model.transformer.ln_f.bias.fill_(5.0)
        model.transformer.wte.weight[model.config.vocab_size :] = 5.0
    return model


def test_padded_logits_are_minus_inf_and_never_sampled():
    cfg = tiny_cfg(vocab_size=100, padded_vocab_size=128)
    model = padded_rows_rigged_to_win(make(cfg))
    with torch.no_grad():
        idx = torch.randint(0, cfg.vocab_size, (4, 16))
        logits, _ = model(idx)
    assert torch.isneginf(logits[..., cfg.vocab_size :]).all()
    assert torch.isfinite(logits[..., : cfg.vocab_size]).all()
    probs = logits.softmax(-1)
    assert (probs[..., cfg.vocab_size :] == 0).all()
    draws = torch.multinomial(probs.view(-1, cfg.padded_vocab_size), 200, replacement=True)
    assert int(draws.max()) < cfg.vocab_size
    # and the loss gives them no mass: a target in the real vocab has a finite loss
    _, loss = model(idx, idx)
    assert torch.isfinite(loss)


def test_lm_head_tied_to_token_embedding():
    model = make(tiny_cfg())
    assert model.lm_head.weight is model.transformer.wte.weight
    params = list(model.parameters())
    assert sum(p is model.transformer.wte.weight for p in params) == 1  # counted once
    # training one affects the other: a gradient through the head lands on the embedding
    idx = torch.randint(0, 500, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert model.transformer.wte.weight.grad is not None
    assert model.transformer.wte.weight.grad.abs().sum() > 0


def test_init_statistics():
    cfg = GPTConfig(block_size=64, vocab_size=1000, padded_vocab_size=1024, n_layer=8, n_head=4, n_embd=256)
    model = make(cfg, seed=3)
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for block in model.transformer.h:
        for lin, std in ((block.attn.c_proj, resid_std), (block.mlp.c_proj, resid_std),
                         (block.attn.c_attn, 0.02), (block.mlp.c_fc, 0.02)):
            w = lin.weight.detach()
            # with >= 65k samples, the sample std is within 2% of the true std with overwhelming odds
            assert w.std().item() == pytest.approx(std, rel=0.02), lin
            assert abs(w.mean().item()) < 4 * std / math.sqrt(w.numel())
            assert (lin.bias == 0).all()
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for ln in [model.transformer.ln_f] + [b.ln_1 for b in model.transformer.h]:
        assert (ln.weight == 1).all() and (ln.bias == 0).all()


@pytest.mark.parametrize("chunks", [[5, 1, 1, 1, 1, 1], [1] * 10, [4, 3, 3], [10]])
def test_kv_cache_matches_full_forward(chunks):
    """GPT.forward with a KVCache: chunks fed one after another give the logits of one full pass."""
    cfg = tiny_cfg(block_size=32)
    model = make(cfg)
    T = sum(chunks)
    idx = torch.randint(0, cfg.vocab_size, (2, T))
    V = cfg.vocab_size
    cache = KVCache.zeros(cfg, 2, T, torch.float32, "cpu")
    slots = torch.arange(T)
    with torch.no_grad():
        full, _ = model(idx)
        pieces, at = [], 0
        for n in chunks:
            # a chunk after cached tokens sees all of them and the earlier tokens of its own chunk
            mask = (slots[None, : at + n] <= slots[at : at + n, None])[None, None]
            logits, _ = model(idx[:, at : at + n], pos=slots[at : at + n], mask=mask if n > 1 else None,
                              cache=cache.at(slots[at : at + n], at + n))
            pieces.append(logits)
            at += n
    inc = torch.cat(pieces, dim=1)
    assert inc.shape == full.shape
    torch.testing.assert_close(inc[..., :V], full[..., :V], atol=1e-5, rtol=0)
    assert torch.isneginf(inc[..., V:]).all()


def test_forward_refuses_too_long_and_unmasked_chunks():
    cfg = tiny_cfg(block_size=8)
    model = make(cfg)
    with torch.no_grad():
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(1, 9, dtype=torch.long))
        cache = KVCache.zeros(cfg, 1, 8, torch.float32, "cpu")
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache.at(torch.arange(4), 4))
        with pytest.raises(ValueError, match="mask"):  # two new tokens after cached ones: which keys see which?
            model(torch.zeros(1, 2, dtype=torch.long), pos=torch.arange(4, 6), cache=cache.at(torch.arange(4, 6), 6))


def test_targets_minus_one_ignored():
    cfg = tiny_cfg()
    model = make(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 12))
    targets = torch.randint(0, cfg.vocab_size, (2, 12))
    keep = torch.rand(2, 12, generator=torch.Generator().manual_seed(0)) < 0.5
    keep[0, 0] = True
    masked = torch.where(keep, targets, torch.full_like(targets, -1))
    with torch.no_grad():
        logits, loss = model(idx, masked)
    expected = F.cross_entropy(logits[keep].float(), targets[keep])
    torch.testing.assert_close(loss, expected)
    # the mean is over the kept positions only (not over all, with zeros for the ignored ones)
    per_token = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), reduction="none")
    assert not torch.allclose(loss, per_token.mean())
    _, summed = model(idx, masked, reduction="sum")
    torch.testing.assert_close(summed, per_token[keep.view(-1)].sum())


@pytest.mark.parametrize("cap", [0.0, 3.0, 100.0], ids=["no-cap", "softcap", "softcap-past-exp-range"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_without_logits_equals_the_loss_with_them(reduction, compiled, cap):
    """return_logits=False (the training step's call) gives the same loss and gradients, padded columns
    (made to win were they counted) and ignored targets included, and no logits. Compiled, it takes
    its own path (the loss over the real columns' view, the soft-cap inside it); aot_eager traces that
    path without inductor's code generation. A cap of 3 bends most logits, so its derivative counts; with a cap of 100
    a sum of exp(capped logits) could overflow fp32, so the loss takes logsumexp's max pass there."""
    cfg = tiny_cfg(vocab_size=100, padded_vocab_size=128, logit_softcap=cap)
    model = padded_rows_rigged_to_win(make(cfg))
    if compiled:
        torch._dynamo.reset()  # each case compiles GPT.forward anew: stay under dynamo's recompile limit
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, cfg.vocab_size, (3, 16), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (3, 16), generator=g)
    targets[1, :5] = -1
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        run = torch.compile(model, backend="aot_eager", fullgraph=True) if compiled else model
        logits, loss = run(idx, targets, reduction=reduction, return_logits=return_logits)
        assert (logits is None) == (not return_logits)
        loss.sum().backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.isfinite(loss_b).all()
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    for name in grads_a:  # to fp32 rounding of the largest entries
        scale = grads_a[name].abs().max().item()
        assert (grads_b[name] - grads_a[name]).abs().max().item() <= 1e-6 * scale, name
    assert model(idx, return_logits=False) == (None, None)


@pytest.mark.parametrize("return_logits", [True, False])
def test_eager_gradients_equal_the_loss_over_the_real_columns_alone(return_logits):
    """The -inf written into the padded columns (outside autograd) gives the gradients of a loss
    that never saw those columns: the padded rows of the tied weight get none, though rigged to win."""
    cfg = tiny_cfg(vocab_size=100, padded_vocab_size=128)
    model = padded_rows_rigged_to_win(make(cfg))
    g = torch.Generator().manual_seed(5)
    idx, targets = (torch.randint(0, cfg.vocab_size, (3, 16), generator=g) for _ in range(2))
    def real_columns_loss():
        logits = model.lm_head(model.hidden(idx))[..., : cfg.vocab_size]
        return F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.view(-1))

    grads = []
    for loss_of in (lambda: model(idx, targets, return_logits=return_logits)[1], real_columns_loss):
        model.zero_grad()
        loss_of().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, ref in grads[1].items():
        torch.testing.assert_close(grads[0][name], ref, rtol=1e-5, atol=1e-7, msg=name)
    assert (grads[0]["transformer.wte.weight"][cfg.vocab_size :] == 0).all()


def test_a_model_rebuilt_from_its_weights_masks_the_padded_columns_alike():
    """The padded columns' -inf bias is not part of the saved weights (old checkpoints load
    strictly), and a model rebuilt from them (on the meta device, then assigned) has it for real."""
    cfg = tiny_cfg(vocab_size=100, padded_vocab_size=128)
    model = padded_rows_rigged_to_win(make(cfg))
    state = model.state_dict()
    assert "vocab_bias" not in state
    rebuilt = GPT.from_state_dict(cfg, state)
    assert not rebuilt.vocab_bias.is_meta
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    losses = []
    for m in (model, rebuilt):
        m.zero_grad()
        _, loss = torch.compile(m, backend="aot_eager", fullgraph=True)(idx, idx, return_logits=False)
        loss.backward()
        losses.append((loss.detach(), m.transformer.wte.weight.grad.clone()))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])
    assert (losses[1][1][cfg.vocab_size :] == 0).all()  # the padded rows get no gradient from the loss


TANH_FORMS = {  # compiled through a sigmoid (ops.py), against aten's tanh in fp32, rounded once (as
    # aten's GELU does inside; eager soft-capping in bf16 rounds three times); inputs reach saturation
    "gelu": (gelu_tanh, lambda t: F.gelu(t, approximate="tanh"), 3.0),
    "softcap": (lambda t: softcap(t, 30.0), lambda t: (30.0 * torch.tanh(t.float() / 30.0)).to(t.dtype), 60.0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", TANH_FORMS)
def test_compiled_tanh_forms_equal_atens_tanh(form, dtype):
    """GPT-2's GELU and the logit soft-cap, compiled (written through sigmoid), equal their eager
    tanh forms: values and gradients to fp32 rounding, and bf16 results within one bf16 rounding;
    traced through aot_eager."""
    fn, reference, scale = TANH_FORMS[form]
    x = (torch.randn(64, 96, generator=torch.Generator().manual_seed(3)) * scale).to(dtype)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    outs = []
    for f in (reference, compiled):
        xi = x.clone().requires_grad_()
        y = f(xi)
        assert y.dtype == dtype and y.shape == x.shape
        y.float().pow(2).sum().backward()
        outs.append((y.detach().float(), xi.grad.float()))
    (y_ref, g_ref), (y, g) = outs
    tol = 1e-6 if dtype == torch.float32 else 2 ** -7
    assert (y - y_ref).abs().max().item() <= tol * y_ref.abs().max().item()
    assert (g - g_ref).abs().max().item() <= tol * g_ref.abs().max().item()


def test_dropout_only_in_training_mode():
    cfg = tiny_cfg(dropout=0.5)
    model = make(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(idx)
        assert torch.equal(a, b)  # eval: deterministic
        model.train()
        torch.manual_seed(0)
        c, _ = model(idx)
        torch.manual_seed(1)
        d, _ = model(idx)
    assert not torch.equal(c[..., :500], d[..., :500])


def _loss_and_grads(model, x, y, autocast: bool, loss_chunk: int):
    model.zero_grad()
    ctx = torch.autocast("cpu", torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        logits, loss = model(x, y, loss_chunk=loss_chunk)
    loss.backward()
    return logits, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("switches", [{}, {"logit_softcap": 30.0, "tie_head": False, "zero_init_proj": False}],
                         ids=["gpt2", "softcap-untied"])
@pytest.mark.parametrize("rows", [7, 37, 4096])
def test_chunked_loss_equals_the_full_logits_loss(switches, rows):
    """loss_chunk computes the same loss and gradients as the full logits: to fp32 rounding in fp32, and
    within bf16 rounding under autocast (2^-8 relative in the largest gradient entries), ignored targets too."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, **switches))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 50257, (3, 40), generator=g)
    y = torch.randint(0, 50257, (3, 40), generator=g)
    y[0, :7] = -1
    for autocast, loss_tol, grad_tol in ((False, 1e-6, 1e-5), (True, 1e-5, 2e-2)):
        _, full, g_full = _loss_and_grads(model, x, y, autocast, 0)
        logits, chunked, g_chunk = _loss_and_grads(model, x, y, autocast, rows)
        assert logits is None and abs(full - chunked) <= loss_tol * full
        for k in g_full:
            scale = g_full[k].abs().max().item()
            assert (g_full[k] - g_chunk[k]).abs().max().item() <= grad_tol * scale + 1e-12, k


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_value_embeddings_and_unet_skips_trace_as_one_graph(autocast):
    """The walk with value embeddings and U-net skips (3 blocks: table 0 in blocks 0 and 2, block 0's output
    into block 2) compiles as one graph (fullgraph; aot_eager traces without inductor's code generation) to the
    eager loss and gradients. Under bf16 autocast a table's fp32 lookup mixed into the bf16 values keeps them bf16."""
    import contextlib

    cfg = tiny_cfg(n_layer=3, value_embeds=1, unet_skips=True)
    model = make(cfg).train()
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    idx, targets = (torch.randint(0, cfg.vocab_size, (3, 16), generator=g) for _ in range(2))
    results = []
    for run in (model, torch.compile(model, backend="aot_eager", fullgraph=True)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            _, loss = run(idx, targets, return_logits=False)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) <= 1e-5 * loss_a and math.isfinite(loss_a)
    assert {"value_embeds.0.weight", "skip_weights", "transformer.h.2.attn.ve_mix"} <= set(grads_a)
    assert "transformer.h.1.attn.ve_mix" not in grads_a
    for name in grads_a:
        scale = grads_a[name].abs().max().item()
        assert scale > 0 and (grads_b[name] - grads_a[name]).abs().max().item() <= (2e-2 if autocast else 1e-5) * scale

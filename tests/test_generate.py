import pytest
import torch

from gpt2lab.generate import Decoder, PackedLinear, generate, sample_next
from gpt2lab.model import GPT, GPTConfig

CFG = GPTConfig(block_size=16, vocab_size=300, padded_vocab_size=320, n_layer=2, n_head=2, n_embd=32)
PROMPT = [5, 17, 42]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CFG)
    with torch.no_grad():  # sharper distributions than at init, so greedy has clear winners
        m.transformer.wte.weight.mul_(10)
    return m.eval()


def greedy_uncached(model, prompt, n):
    """Reference: a full forward over the (last block_size) tokens for every new token, argmax; the prompt and
    the new tokens, as generate returns a sample."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            window = torch.tensor([seq[-model.config.block_size :]])
            logits, _ = model(window)
            seq.append(int(logits[0, -1, : CFG.vocab_size].argmax()))
    return seq


def test_seeded_sampling_is_reproducible(model):
    a = generate(model, PROMPT, 10, num_samples=3, seed=123)
    b = generate(model, PROMPT, 10, num_samples=3, seed=123)
    c = generate(model, PROMPT, 10, num_samples=3, seed=124)
    assert a == b
    assert a != c
    assert len(a) == 3 and all(len(s) == len(PROMPT) + 10 and s[: len(PROMPT)] == PROMPT for s in a)
    assert all(0 <= t < CFG.vocab_size for s in a for t in s)
    assert len({tuple(s) for s in a}) > 1  # the samples of one call differ from each other


def test_temperature_zero_is_greedy_and_matches_uncached(model):
    out = generate(model, PROMPT, 12, num_samples=2, temperature=0.0, seed=1)
    ref = greedy_uncached(model, PROMPT, 12)
    assert out == [ref, ref]
    assert generate(model, PROMPT, 12, temperature=0.0, seed=99) == [ref]  # the seed does not matter


def test_top_k_one_is_greedy(model):
    ref = greedy_uncached(model, PROMPT, 10)
    assert generate(model, PROMPT, 10, num_samples=2, temperature=1.0, top_k=1, seed=7) == [ref, ref]


def test_top_k_and_top_p_restrict_choices():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    picks = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(picks.tolist()) == {0, 1}
    # top_p: probs ~ [.64,.24,.09,.03,.01]; 0.8 keeps the first two (.64 < .8, .88 >= .8 stops after the 2nd)
    picks = sample_next(logits, temperature=1.0, top_p=0.8, generator=g)
    assert set(picks.tolist()) == {0, 1}
    picks = sample_next(logits, temperature=1.0, generator=g)
    assert len(set(picks.tolist())) >= 4


def test_stop_token_ends_samples(model):
    n = len(PROMPT)
    free = [s[n:] for s in generate(model, PROMPT, 12, num_samples=4, seed=5)]
    # stop on a token that some sample produces: that sample is cut just before it
    stop = free[0][3]
    stopped = generate(model, PROMPT, 12, num_samples=4, seed=5, stop_token=stop)
    assert all(s[:n] == PROMPT for s in stopped)  # the prompt, whole, then what came before the stop token
    for full, cut in zip(free, stopped):
        if stop in full:
            assert cut[n:] == full[: full.index(stop)]
        else:
            assert cut[n:] == full
    assert stopped[0][n:] == free[0][: free[0].index(stop)] and len(stopped[0]) <= n + 3
    # greedy with the first greedy token as stop token: the prompt alone, generation ends at once
    ref = greedy_uncached(model, PROMPT, 1)
    calls = []
    out = generate(model, PROMPT, 50, temperature=0, stop_token=ref[-1], on_token=calls.append)
    assert out == [PROMPT] and len(calls) == 1


def test_generation_beyond_block_size_slides(model):
    n = 3 * CFG.block_size
    out = generate(model, PROMPT, n, temperature=0.0)
    assert len(out[0]) == len(PROMPT) + n
    assert out[0] == greedy_uncached(model, PROMPT, n)
    sampled = generate(model, PROMPT, n, num_samples=2, seed=3)
    assert [len(s) for s in sampled] == [len(PROMPT) + n] * 2


def test_prompt_longer_than_block_size_uses_its_tail(model):
    long_prompt = list(range(1, 2 * CFG.block_size + 1))
    out = generate(model, long_prompt, 5, temperature=0.0)
    assert out == [long_prompt + greedy_uncached(model, long_prompt[-CFG.block_size :], 5)[CFG.block_size :]]


def test_on_token_streams_and_training_mode_is_untouched(model):
    model.train()
    seen = []
    out = generate(model, PROMPT, 6, num_samples=2, seed=11, on_token=lambda t: seen.append(t.tolist()))
    assert model.training  # generation neither needs nor changes the mode
    model.eval()
    assert [list(col) for col in zip(*seen)] == [s[len(PROMPT) :] for s in out]


def test_dropout_in_training_mode_does_not_reach_generation():
    import dataclasses

    torch.manual_seed(0)
    m = GPT(dataclasses.replace(CFG, dropout=0.5)).train()
    assert generate(m, PROMPTS, 8, temperature=0.0) == [greedy_uncached(m.eval(), p, 8) for p in PROMPTS]


def test_empty_prompt_rejected(model):
    with pytest.raises(ValueError):
        generate(model, [], 5)


def test_generate_under_bf16_autocast(model):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16)
    out = generate(model, PROMPT, 20, num_samples=2, seed=1, autocast=ctx)
    assert [len(s) for s in out] == [len(PROMPT) + 20] * 2
    assert all(0 <= t < CFG.vocab_size for s in out for t in s)


# --- batches, cache, packing, int8 ------------------------------------------------------
PROMPTS = [[7], [5, 17, 42], [3, 1, 4, 1, 5, 9, 2], [250, 11]]


def test_batch_of_different_lengths_matches_each_alone(model):
    n = 10
    batch = generate(model, PROMPTS, n, temperature=0.0)
    alone = [generate(model, p, n, temperature=0.0)[0] for p in PROMPTS]
    assert batch == alone == [greedy_uncached(model, p, n) for p in PROMPTS]


def test_batch_slides_beyond_block_size_per_row(model):
    n = CFG.block_size + 4  # rows reach the block size at different steps
    batch = generate(model, PROMPTS, n, temperature=0.0)
    assert batch == [greedy_uncached(model, p, n) for p in PROMPTS]


@pytest.mark.parametrize("pack", [False, True])
def test_cached_and_uncached_decoding_agree(model, pack):
    n = 12
    cached = generate(model, PROMPTS, n, temperature=0.0, pack=pack)
    uncached = generate(model, PROMPTS, n, temperature=0.0, use_cache=False, pack=pack)
    assert cached == uncached == [greedy_uncached(model, p, n) for p in PROMPTS]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's own code
def test_compiled_decode_step_gives_the_same_tokens(model):
    n = 10
    assert generate(model, PROMPTS, n, temperature=0.0, compile=True) == [greedy_uncached(model, p, n) for p in PROMPTS]


# --- a Decoder built once and reused ----------------------------------------------------
@pytest.mark.parametrize("batch", [1, 4])  # fp32: (in, out) copies at one row, oneDNN's layout at more
def test_reused_decoder_matches_the_model_across_calls(model, batch):
    dec = Decoder(model, pack=True, batch=batch)
    assert len(dec.packed) == 4 * CFG.n_layer + 1 and all(isinstance(m, PackedLinear) for m in dec.packed)
    assert {m.layout for m in dec.packed} == {"transposed" if batch == 1 else "onednn"}
    # longer, then shorter, then a batch: the cache is reused and must not leak the previous call
    for prompts, n in ((PROMPTS[2], 12), (PROMPTS[0], 5), (PROMPTS, 9)):
        rows = prompts if isinstance(prompts[0], list) else [prompts]
        assert generate(dec, prompts, n, temperature=0.0) == [greedy_uncached(model, p, n) for p in rows]
    assert generate(dec, PROMPTS, 7, seed=3) == generate(model, PROMPTS, 7, seed=3, pack=False)


def _one_step(m, optimizer):
    x = torch.tensor([PROMPTS[2]])
    m(x, torch.roll(x, -1, 1))[1].backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_reused_decoder_follows_weight_changes(model, compile):
    import copy

    from gpt2lab.config import OptimConfig
    from gpt2lab.optim import build_optimizer

    m = copy.deepcopy(model)
    dec = Decoder(m, pack=True, compile=compile)
    before = generate(dec, PROMPTS, 8, temperature=0.0)
    assert dec.sync() == 0  # nothing changed
    # a non-fused optimizer step writes through ordinary in-place ops: generate re-copies by itself
    _one_step(m, torch.optim.AdamW(m.parameters(), lr=0.05, foreach=True))
    after = generate(dec, PROMPTS, 8, temperature=0.0)
    assert after == [greedy_uncached(m, p, 8) for p in PROMPTS] != before
    assert dec.sync() == 0
    m.load_state_dict(model.state_dict())
    assert generate(dec, PROMPTS, 8, temperature=0.0) == before
    # gpt2lab's own optimizer is fused, whose writes tensors do not record: refresh() re-copies all
    _one_step(m, build_optimizer(m, OptimConfig(lr=0.05), "cpu"))
    dec.refresh()
    assert generate(dec, PROMPTS, 8, temperature=0.0) == [greedy_uncached(m, p, 8) for p in PROMPTS]


def test_decoder_refuses_a_moved_model_and_int8_in_bf16(model):
    import copy

    from gpt2lab.quantize import quantize_int8

    m = copy.deepcopy(model)
    dec = Decoder(m)
    m.to(torch.bfloat16)
    with pytest.raises(ValueError, match="build a new Decoder"):
        generate(dec, PROMPT, 3)
    with pytest.raises(ValueError, match="float32 only"):
        generate(quantize_int8(model), PROMPT, 3, autocast=torch.autocast("cpu", dtype=torch.bfloat16))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_reused_compiled_decoder_gives_the_same_tokens(model):
    import dataclasses

    torch.manual_seed(1)
    long = GPT(dataclasses.replace(CFG, block_size=128)).eval()  # room for two cache lengths (64 and 128)
    dec = Decoder(long, compile=True)
    for n in (70, 60, 10):  # cache lengths 128, 128 (reused), 64
        assert generate(dec, PROMPTS, n, temperature=0.0) == [greedy_uncached(long, p, n) for p in PROMPTS]
        for c in dec.cache.k + dec.cache.v:  # whatever a call leaves in the cache must not reach the next one
            c.fill_(float("nan"))
    assert dec.cache_len == 64


def test_generation_inside_and_after_inference_mode(model):
    ref = [greedy_uncached(model, p, 6) for p in PROMPTS]
    with torch.inference_mode():  # a model made here holds inference tensors, which keep no version counter
        m = GPT(CFG)
        m.load_state_dict(model.state_dict())
        assert generate(m, PROMPTS, 6, temperature=0.0, pack=True) == ref
    dec = Decoder(model)
    with torch.inference_mode():  # the cache is allocated here, as inference tensors...
        assert generate(dec, PROMPTS, 6, temperature=0.0) == ref
    assert generate(dec, PROMPTS, 6, temperature=0.0) == ref  # ...and replaced, not written, outside


def test_decoder_options_belong_to_the_decoder(model):
    dec = Decoder(model)
    with pytest.raises(ValueError, match="Decoder"):
        generate(dec, PROMPT, 3, pack=True)
    with pytest.raises(ValueError, match="dtype=torch.bfloat16"):
        generate(dec, PROMPT, 3, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    bf16 = Decoder(model, dtype=torch.bfloat16)
    out = generate(bf16, PROMPTS, 5, seed=1, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert out == generate(model, PROMPTS, 5, seed=1, autocast=torch.autocast("cpu", dtype=torch.bfloat16), pack=True)


def test_batch_rows_are_prompt_major_and_seeded(model):
    out = generate(model, PROMPTS[:2], 8, num_samples=3, seed=5)
    assert len(out) == 6 and out == generate(model, PROMPTS[:2], 8, num_samples=3, seed=5)
    greedy = generate(model, PROMPTS[:2], 8, num_samples=2, temperature=0.0)
    assert greedy[0] == greedy[1] == greedy_uncached(model, PROMPTS[0], 8)
    assert greedy[2] == greedy[3] == greedy_uncached(model, PROMPTS[1], 8)


def test_batch_rows_stop_independently(model):
    refs = [greedy_uncached(model, p, 10) for p in PROMPTS]
    new = [r[len(p) :] for p, r in zip(PROMPTS, refs)]
    stop = new[1][4]
    out = generate(model, PROMPTS, 10, temperature=0.0, stop_token=stop)
    assert out == [p + (n[: n.index(stop)] if stop in n else n) for p, n in zip(PROMPTS, new)]


def test_packed_bf16_autocast_and_bf16_weights(model):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16)
    out = generate(model, PROMPTS, 6, seed=2, autocast=ctx, pack=True)
    assert [len(s) for s in out] == [len(p) + 6 for p in PROMPTS]
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    for pack in (False, True):
        out = generate(bf16, PROMPTS, 6, seed=2, pack=pack)
        assert [len(s) for s in out] == [len(p) + 6 for p in PROMPTS]
        assert all(0 <= t < CFG.vocab_size for s in out for t in s)


def test_int8_quantized_model_generates_close_logits(model):
    from gpt2lab.quantize import quantize_int8

    q = quantize_int8(model)
    assert model.lm_head.weight is model.transformer.wte.weight  # the original is untouched
    x = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        ref, got = model(x)[0][..., : CFG.vocab_size], q(x)[0][..., : CFG.vocab_size]
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    out = generate(q, PROMPTS, 8, temperature=0.0)
    assert [len(s) for s in out] == [len(p) + 8 for p in PROMPTS]
    assert generate(q, PROMPTS, 8, temperature=0.0, use_cache=False) == out


@pytest.mark.parametrize("compile", [False, True])
def test_decoder_of_a_training_model_decodes_without_dropout_and_leaves_it_training(compile):
    """The Decoder runs GPT.hidden over a copy of the module tree: dropout off there, the model untouched."""
    torch.manual_seed(1)
    m = GPT(GPTConfig(**{**CFG.__dict__, "dropout": 0.5}))
    with torch.no_grad():
        m.transformer.wte.weight.mul_(10)
    expected = greedy_uncached(m.eval(), PROMPT, 6)
    m.train()
    dec = Decoder(m, compile=compile)
    assert generate(dec, PROMPT, 6, temperature=0.0)[0] == expected
    assert m.training and all(mod.training for mod in m.modules())
    shared = {id(p) for p in dec.net.parameters()}  # embeddings, LayerNorms: the model's own tensors
    assert shared and shared <= {id(p) for p in m.parameters()}


def test_vocab_keeps_samples_to_ids_the_tokenizer_has(model):
    """A model whose vocabulary is larger than its tokenizer's (model.vocab_size=50304 with GPT-2's
    50,257) draws only ids the tokenizer can decode when given the tokenizer's size."""
    limit = 250
    outs = generate(model, [1, 2, 3], 40, num_samples=8, temperature=2.0, top_k=0, seed=0, vocab=limit)
    assert max(max(o) for o in outs) < limit
    unlimited = generate(model, [1, 2, 3], 40, num_samples=8, temperature=2.0, top_k=0, seed=0)
    assert max(max(o) for o in unlimited) >= limit  # without it the last 50 of 300 ids do come up


@pytest.mark.parametrize("temperature", [1e-40, 1e-30])
def test_a_tiny_temperature_is_greedy_not_nan(temperature):
    logits = torch.randn(4, 300) * 5
    logits[:, 290:] = float("-inf")
    assert torch.equal(sample_next(logits, temperature, generator=torch.Generator().manual_seed(0)), logits.argmax(-1))


def test_python_and_the_cli_sample_alike_and_a_sample_starts_with_its_prompt(model):
    """generate (from Python) and generate_text (`gpt2lab sample`) share one set of sampling defaults (top-k 50), and
    a sample starts with its prompt, so decoding out[0] gives the prompt and its continuation (issue 29 item 10)."""
    import inspect

    from gpt2lab.generate import generate_text

    lib, cli = inspect.signature(generate).parameters, inspect.signature(generate_text).parameters
    assert [lib[k].default for k in ("temperature", "top_k", "top_p")] == [cli[k].default for k in
                                                                            ("temperature", "top_k", "top_p")]
    assert lib["top_k"].default == 50
    out = generate(model, PROMPT, 10, num_samples=2, seed=0)
    assert out == generate(model, PROMPT, 10, num_samples=2, seed=0, top_k=50)
    assert all(s[: len(PROMPT)] == PROMPT and len(s) == len(PROMPT) + 10 for s in out)

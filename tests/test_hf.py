"""Import from / export to Hugging Face transformers (randomly initialised models: no hub access)."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from cli_helpers import gpt2_tokenizer_sha256, gpt2lab  # noqa: E402
from gpt2lab.checkpoint import load_model  # noqa: E402
from gpt2lab.errors import UserError  # noqa: E402
from gpt2lab.generate import generate  # noqa: E402
from gpt2lab.hf import gpt2lab_state_from_hf, hf_state_from_gpt2lab, load_hf, save_hf  # noqa: E402
from gpt2lab.layout import CHECKSUMS_FILE, CONFIG_FILE, MODEL_FILE, STATE_FILE  # noqa: E402
from gpt2lab.model import GPT, GPTConfig  # noqa: E402
from gpt2lab.tokenizer import get_tokenizer  # noqa: E402
from gpt2lab.weights import export_hf, import_hf  # noqa: E402

TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)  # GPT-2's vocabulary, so the tokenizer applies


def hf_model(seed=0, sharpen=True, **kw):
    torch.manual_seed(seed)
    m = GPT2LMHeadModel(GPT2Config(**{**TINY, **kw})).eval()
    if sharpen:  # clear greedy winners, so float rounding cannot flip an argmax
        with torch.no_grad():
            m.transformer.wte.weight.mul_(10)
    return m


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny"
    m = hf_model()
    m.save_pretrained(d)
    return m, d


def hf_logits(m, x):
    with torch.no_grad():
        return m(x).logits


def our_logits(m, x):
    with torch.no_grad():
        return m(x)[0][..., : m.config.vocab_size]


def test_import_tiny_matches_logits_and_loads(tiny_hf, tmp_path):
    hf, d = tiny_hf
    out = import_hf(d, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, CONFIG_FILE, CHECKSUMS_FILE])
    assert not (out / STATE_FILE).exists()
    model, cfg = load_model(out)
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (2, 32, 64)
    assert (cfg.model.vocab_size, cfg.model.padded_vocab_size) == (50257, 50304)
    assert torch.count_nonzero(model.transformer.wte.weight[50257:]) == 0  # pad rows are zero
    assert model.lm_head.weight is model.transformer.wte.weight
    x = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(1))
    assert (our_logits(model, x) - hf_logits(hf, x)).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_import_real_124m_config_matches_logits(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 124M, random weights
    cfg, state = gpt2lab_state_from_hf(hf.state_dict(), hf.config)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.padded_vocab_size) == (12, 12, 768, 1024, 50304)
    model = GPT(cfg)
    model.load_state_dict(state)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())  # 124,439,808: tied, unpadded
    x = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(2))
    assert (our_logits(model.eval(), x) - hf_logits(hf, x)).abs().max().item() <= 1e-5
    # and back: every tensor identical to transformers' own
    back, config = hf_state_from_gpt2lab(model)
    ref = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k]) for k in ref)
    assert GPT2Config(**config).to_dict()["n_embd"] == 768


def test_to_hf_then_from_hf_is_bitwise_identical(tiny_hf, tmp_path):
    hf, d = tiny_hf
    ckpt1 = import_hf(d, tmp_path / "c1")
    exported = export_hf(ckpt1, tmp_path / "hf")
    a, b = load_file(str(d / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same as transformers wrote
    ckpt2 = import_hf(exported, tmp_path / "c2")
    s1, s2 = load_file(str(ckpt1 / MODEL_FILE)), load_file(str(ckpt2 / MODEL_FILE))
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert (ckpt1 / CONFIG_FILE).read_text() == (ckpt2 / CONFIG_FILE).read_text()
    # a gpt2lab model (random padded rows, no biases) goes out and back the same, padding aside
    torch.manual_seed(3)
    own = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False)).eval()
    save_hf(own, tmp_path / "own")
    back = load_hf(tmp_path / "own")
    mine, theirs = own.state_dict(), back.state_dict()
    for k, w in theirs.items():
        if k not in mine:
            assert k.endswith(".bias") and torch.count_nonzero(w) == 0  # transformers' GPT-2 has biases: zeros
        elif k in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(mine[k][:50257], w[:50257]) and torch.count_nonzero(w[50257:]) == 0
        else:
            assert torch.equal(mine[k], w), k
    x = torch.randint(0, 50257, (2, 20))
    assert torch.equal(own(x)[0], back(x)[0])


def test_exported_dir_loads_in_transformers_with_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(4)
    own = GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64)).eval()
    out = save_hf(own, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
            "special_tokens_map.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    x = torch.randint(0, 50257, (2, 30))
    assert (our_logits(own, x) - hf_logits(hf, x)).abs().max().item() <= 1e-5
    tok = AutoTokenizer.from_pretrained(out)
    ours = get_tokenizer()
    for s in ["Hello, world!", "  two spaces\n\nnew lines\ttab", "naïve café — ünïcödé 你好 🤖",
              "I'm 123 years' old", ""]:
        ids = tok(s)["input_ids"]
        assert ids == ours.encode_ordinary(s), s
        assert tok.decode(ids) == s
    assert tok.eos_token_id == 50256


def test_tokenizer_files_equal_openai_files(tmp_path):
    """vocab.json and merges.txt hold what OpenAI's encoder.json and vocab.bpe hold
    (checked by the originals' sha256)."""
    from gpt2lab.hf import write_tokenizer_files

    write_tokenizer_files(tmp_path)
    ref = gpt2_tokenizer_sha256()
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    # encoder.json is this mapping in id order, written by json.dumps with its defaults
    encoder_json = json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1]))).encode()
    assert hashlib.sha256(encoder_json).hexdigest() == ref["encoder.json"]
    ours = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert ours[0].startswith("#version")
    # vocab.bpe's merges, in order, as lines after the version line
    merges = "\n".join(["#version: 0.2", *[line for line in ours[1:] if line]]) + "\n"
    assert hashlib.sha256(merges.encode()).hexdigest() == ref["vocab.bpe"]
    assert len(ours) == 50001


@pytest.mark.slow
def test_greedy_generation_matches_transformers(tiny_hf):
    hf, d = tiny_hf
    model = load_hf(d)
    hf.generation_config.eos_token_id = None  # exactly n tokens on both sides
    hf.generation_config.pad_token_id = 0
    prompts = [[464, 2068, 7586, 21831], [15496, 11], [40, 716, 257, 3303, 2746, 11, 290]]
    n = 24
    ours = generate(model, prompts, n, temperature=0)
    for p, o in zip(prompts, ours):
        ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                          do_sample=False, max_new_tokens=n)
        assert o == ref[0].tolist()  # both: the prompt, then its continuation
    # transformers' own left-padded batch agrees too
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    ref = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n)
    assert [o[len(p):] for p, o in zip(prompts, ours)] == ref[:, L:].tolist()


def test_pytorch_bin_sharded_and_unsafe(tiny_hf, tmp_path):
    hf, d = tiny_hf
    ref = load_hf(d).state_dict()
    # pytorch_model.bin, keys without the "transformer." prefix (as in OpenAI's original upload)
    b = tmp_path / "bin"
    b.mkdir()
    shutil.copy(d / "config.json", b)
    torch.save({k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}, b / "pytorch_model.bin")
    got = load_hf(b).state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # sharded safetensors with an index
    s = tmp_path / "sharded"
    s.mkdir()
    shutil.copy(d / "config.json", s)
    full = load_file(str(d / "model.safetensors"))
    keys = sorted(full)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, ks in shards.items():
        save_file({k: full[k] for k in ks}, str(s / name), metadata={"format": "pt"})
    (s / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    got = load_hf(s).state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # a .bin that needs unpickling code is refused
    torch.save({"w": torch.zeros(1), "x": Evil()}, b / "pytorch_model.bin")
    with pytest.raises(UserError, match="weights_only"):
        load_hf(b)


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("field,value", [
    ("activation_function", "relu"),
    ("tie_word_embeddings", False),
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("layer_norm_epsilon", 1e-6),
    ("model_type", "llama"),
    ("n_inner", 100),
    ("add_cross_attention", True),
    ("resid_pdrop", None),
    ("resid_pdrop", "0.1x"),
    ("resid_pdrop", 1.5),
])
def test_rejects_non_gpt2_configs(tiny_hf, tmp_path, field, value):
    _, d = tiny_hf
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg[field] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=field):
        import_hf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [[1, 2], "gpt2", None, 3])
def test_a_config_that_is_not_a_json_object_is_one_line_error(tiny_hf, tmp_path, content):
    _, d = tiny_hf
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    (bad / "config.json").write_text(json.dumps(content))
    with pytest.raises(UserError, match=r"config.json holds .*, not a JSON object"):
        import_hf(bad, tmp_path / "out")


def test_a_config_json_asking_for_a_huge_model_is_one_line_before_its_weights_are_read(tiny_hf, tmp_path):
    """n_layer=10^7 took 7.4 GB (the list of expected keys) and then a MemoryError: now the size is checked first;
    a count the machine could hold but the weights lack is a short list of missing keys."""
    _, d = tiny_hf
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "n_layer": 10**9}))
    with pytest.raises(UserError, match=rf"^{bad}: config.json: a model of [\d,]+ parameters \(1,000,000,000 layers x "
                                        r"32 wide, 50,304 vocabulary rows\) needs at least 46.2 TiB for its weights, "
                                        r"but .* available; choose a smaller size \(its n_layer, n_embd\)$"):
        import_hf(bad, tmp_path / "out")
    (bad / "config.json").write_text(json.dumps({**cfg, "n_layer": 100_000}))
    with pytest.raises(UserError, match=r"weights do not fit the config \(n_layer=100000\): missing "
                                        r"\[.h.2.ln_1.weight., "
                                        r"'h.2.ln_1.bias', 'h.2.attn.c_attn.weight'\], unexpected \[\]"):
        import_hf(bad, tmp_path / "out")
    hf, _ = tiny_hf
    state = {k.replace("h.1.", "h.01."): v for k, v in hf.state_dict().items()}  # not a layer's key
    with pytest.raises(UserError, match=r"missing \['h.1.ln_1.weight'.* unexpected \['h.01"):
        gpt2lab_state_from_hf(state, hf.config)


def test_rejects_untied_head_and_wrong_shapes(tiny_hf):
    hf, _ = tiny_hf
    state = dict(hf.state_dict())
    state["lm_head.weight"] = state["transformer.wte.weight"] + 1
    with pytest.raises(UserError, match="not tied"):
        gpt2lab_state_from_hf(state, hf.config)
    state = dict(hf.state_dict())
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(UserError, match="h.1.mlp.c_fc.bias"):
        gpt2lab_state_from_hf(state, hf.config)
    with pytest.raises(UserError, match="n_layer"):
        gpt2lab_state_from_hf(hf.state_dict(), {**hf.config.to_dict(), "n_layer": 3})


def test_out_must_be_new_unless_overwrite(tiny_hf, tmp_path):
    _, d = tiny_hf
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="--overwrite"):
        import_hf(d, out)
    import_hf(d, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, CONFIG_FILE, CHECKSUMS_FILE])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left


@pytest.mark.slow
def test_cli_convert_both_ways_and_sample(tiny_hf, tmp_path):
    _, d = tiny_hf
    r = gpt2lab("convert", "from-hf", d, tmp_path / "ckpt")
    assert r.returncode == 0, r.stderr
    r = gpt2lab("sample", tmp_path / "ckpt", "--prompt", "Hello", "--max-new-tokens", 5, "--seed", 0)
    assert r.returncode == 0 and r.stdout.startswith("Hello"), r.stderr
    r = gpt2lab("convert", "to-hf", tmp_path / "ckpt", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "vocab.json").is_file()
    r = gpt2lab("convert", "to-hf", tmp_path / "ckpt", tmp_path / "hf")  # exists: one-line error
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_hub_name_unreachable_is_one_line_error(tmp_path):
    r = gpt2lab("convert", "from-hf", "openai-community/gpt2", tmp_path / "out", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "openai-community/gpt2" in r.stderr and "Traceback" not in r.stderr
    r = gpt2lab("convert", "from-hf", tmp_path / "missing", tmp_path / "out")
    assert r.returncode == 2 and "no such folder" in r.stderr



def test_exported_own_tokenizer_encodes_identically(trained_tokenizer, tmp_path, monkeypatch):
    """convert to-hf of a model with a trained tokenizer: AutoTokenizer loads it offline and encodes as gpt2lab does."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cli_helpers import held_out_texts
    from gpt2lab.tokenizer import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = load_tokenizer(trained_tokenizer)
    torch.manual_seed(5)
    own = GPT(GPTConfig(block_size=64, vocab_size=ours.n_vocab, padded_vocab_size=ours.padded_vocab_size,
                        n_layer=2, n_head=2, n_embd=32)).eval()
    out = save_hf(own, tmp_path / "hf", tokenizer=ours)
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer"} <= {p.name for p in out.iterdir()}
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id == ours.eot_token == 8191
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 8191
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    x = torch.randint(0, ours.n_vocab, (2, 30))
    assert (our_logits(own, x) - hf_logits(hf, x)).abs().max().item() <= 1e-5
    texts = held_out_texts() + ["naïve café — ünïcödé 你好 🤖", "  two spaces\n\nnew lines\ttab",
                                "I'm 123 years' old", ""]
    for s in texts:
        ids = tok(s)["input_ids"]
        assert ids == ours.encode(s), s
        assert tok.decode(ids) == s

    @settings(max_examples=150, deadline=None)
    @given(st.text(max_size=200).filter(lambda s: "<|endoftext|>" not in s))  # transformers makes it the special token
    def same(s):
        assert tok(s)["input_ids"] == ours.encode(s)

    same()
    # gpt2lab finds the tokenizer in the exported folder (its tokenizer/ copy) and back in an imported checkpoint
    from gpt2lab.weights import model_tokenizer

    assert model_tokenizer(out, own.config).sha256 == ours.sha256
    ckpt = import_hf(out, tmp_path / "back")
    assert model_tokenizer(ckpt, own.config).sha256 == ours.sha256


def test_eval_loss_of_a_hugging_face_folder_is_transformers_loss(tiny_hf, small_shards, capsys):
    """`eval loss` scores a Hugging Face GPT-2 on prepared shards (--data): the mean next-token loss
    transformers' own model gives on the same windows; its sequence length defaults to n_positions."""
    import numpy as np
    import torch.nn.functional as F

    from gpt2lab.cli import main
    from gpt2lab.evals.loss import eval_windows

    m, d = tiny_hf
    assert main(["eval", "loss", str(d), "--data", str(small_shards), "--tokens", "640", "--device", "cpu",
                 "--batch-size", "3", "--dtype", "float32"]) == 0
    got = json.loads(capsys.readouterr().out)
    windows = torch.from_numpy(np.stack(eval_windows(small_shards, "val", 64, 640)).astype(np.int64))
    with torch.no_grad():
        logits = m(windows[:, :-1]).logits
    want = F.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)).item()
    assert got["tokens"] == 640 and abs(got["loss"] - want) < 1e-5
    assert main(["eval", "loss", str(d), "--device", "cpu"]) == 2  # no run to take the data folder from
    assert "pass --data" in capsys.readouterr().err

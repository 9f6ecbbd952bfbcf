"""Bits per byte: the validation loss in a unit that does not depend on the tokenizer (evals/loss.py)."""

import math

import numpy as np
import pytest
import torch

from gpt2lab.evals.loss import score_windows
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.tokenizer import load_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. Zoë's café serves crème brûlée: 12 € a plate.\n"


def uniform_model(vocab: int) -> GPT:
    """A model whose logits are all 0: every real token costs ln(vocab) nats, whatever came before."""
    cfg = GPTConfig(block_size=64, vocab_size=vocab, padded_vocab_size=vocab + (-vocab) % 64, n_layer=1, n_head=1,
                    n_embd=8, tie_head=False)
    model = GPT(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def windows_of(ids: list[int], seq_len: int) -> list[np.ndarray]:
    return [np.array(ids[i:i + seq_len + 1]) for i in range(0, len(ids) - seq_len, seq_len)]


def test_a_hand_computed_case():
    """Uniform logits over GPT-2's 50,257 tokens: each target that is text costs ln(50257) nats; the EOT
    targets (no text) count in the loss per token but neither in the bits nor in the bytes."""
    tok = load_tokenizer("gpt2")
    ids = [tok.eot_token] + tok.encode(TEXT) + [tok.eot_token] + tok.encode(TEXT)
    seq_len = 8
    windows = windows_of(ids, seq_len)
    targets = [t for w in windows for t in w[1:]]
    text_targets = [t for t in targets if t != tok.eot_token]
    nbytes = sum(len(tok.enc.decode_single_token_bytes(t)) for t in text_targets)
    r = score_windows(uniform_model(tok.n_vocab), windows, 3, "cpu", token_bytes=tok.token_bytes())
    assert r["tokens"] == len(targets) and r["bytes"] == nbytes
    assert r["loss"] == pytest.approx(math.log(50257), rel=1e-6)
    assert r["bpb"] == pytest.approx(len(text_targets) * math.log(50257) / (math.log(2) * nbytes), rel=1e-6)
    assert "bpb" not in score_windows(uniform_model(tok.n_vocab), windows, 3, "cpu")  # without the byte table


def test_bytes_are_the_texts_for_any_tokenizer(trained_tokenizer):
    """The same text under GPT-2's tokenizer and a trained one: different tokens, the same bytes (the text's
    UTF-8 bytes), so the same formula gives bits per byte that compare; each token's bytes sum to the text's."""
    results = {}
    for spec in ("gpt2", trained_tokenizer):
        tok = load_tokenizer(spec)
        ids = [tok.eot_token] + tok.encode(TEXT)
        table = tok.token_bytes()
        assert sum(table[t] for t in ids) == len(TEXT.encode("utf-8")) and table[tok.eot_token] == 0
        r = score_windows(uniform_model(tok.n_vocab), [np.array(ids)], 1, "cpu", token_bytes=table)
        n_text = len(ids) - 1  # every target is text: the EOT is only the first input
        assert r["bytes"] == len(TEXT.encode("utf-8"))
        assert r["bpb"] == pytest.approx(n_text * math.log(tok.n_vocab) / (math.log(2) * r["bytes"]), rel=1e-6)
        results[spec] = (len(ids), r["bpb"])
    (n_gpt2, bpb_gpt2), (n_own, bpb_own) = results.values()
    assert n_gpt2 != n_own and bpb_gpt2 != bpb_own  # other tokens, other uniform costs: the figures differ


def test_training_records_and_eval_loss_give_bpb(small_shards, tmp_path):
    """The val records of a run and `eval loss` carry bits per byte; the report and runs show them."""
    from cli_helpers import micro_cfg, quiet
    from gpt2lab.evals.loss import run_loss
    from gpt2lab.evals.report import eval_history
    from gpt2lab.metrics import read_metrics
    from gpt2lab.runinfo import run_row
    from gpt2lab.train import train

    cfg = micro_cfg(small_shards, tmp_path / "run", "train.max_steps=2", "eval.every=2")
    train(cfg, log=quiet)
    val = read_metrics(tmp_path / "run", "val")[-1]
    assert 0 < val["val_bpb"] < val["val_loss"] * 3
    assert eval_history(tmp_path / "run")[-1]["val_bpb"] == val["val_bpb"]
    assert run_row(tmp_path / "run")["val_bpb"] == val["val_bpb"]
    summary = run_loss(tmp_path / "run", out=tmp_path / "evals", device="cpu", dtype="float32",
                       tokens=cfg.eval.val_tokens, batch_size=cfg.eval.val_batch or cfg.train.micro_batch)
    assert summary["bpb"] == pytest.approx(val["val_bpb"], rel=1e-5) and summary["bytes"] > summary["tokens"]

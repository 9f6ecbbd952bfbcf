"""Sizes checked before allocation (gpt2lab/sizes.py): a model's memory estimated from its config alone and
compared with the device's, so that a config, a checkpoint's config.yaml or a transformers config.json asking
for a model no machine holds ends in one line instead of a MemoryError traceback or the OOM killer."""

import itertools
import resource
import sys

import pytest
import torch

from cli_helpers import micro_cfg, one_line_error, quiet
from gpt2lab import checkpoint as ckpt
from gpt2lab import sizes
from gpt2lab.errors import UserError
from gpt2lab.layout import CONFIG_FILE
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.sizes import parameter_count
from gpt2lab.train import train

SWITCHES = list(itertools.product([True, False], [True, False], [True, False], ["layernorm", "rmsnorm"],
                                  ["gelu", "relu2"]))


@pytest.mark.parametrize("bias, tie_head, rotary, norm, mlp", SWITCHES)
def test_parameter_count_is_the_built_models(bias, tie_head, rotary, norm, mlp):
    cfg = GPTConfig(block_size=16, vocab_size=100, padded_vocab_size=128, n_layer=3, n_head=2, n_embd=8, bias=bias,
                    tie_head=tie_head, rotary=rotary, norm=norm, mlp=mlp, qk_norm=rotary)
    with torch.device("meta"):
        model = GPT(cfg)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("n_layer", [1, 3, 4])
@pytest.mark.parametrize("value_embeds", [0, 1, 2])
@pytest.mark.parametrize("unet_skips", [True, False])
def test_parameter_count_with_value_embeddings_and_skips(n_layer, value_embeds, unet_skips):
    cfg = GPTConfig(block_size=16, vocab_size=100, padded_vocab_size=128, n_layer=n_layer, n_head=2, n_embd=8,
                    value_embeds=min(value_embeds, n_layer), unet_skips=unet_skips)
    with torch.device("meta"):
        model = GPT(cfg)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())


def test_model_bytes_by_part():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=1000, padded_vocab_size=1024)
    n = parameter_count(cfg)
    assert sizes.model_bytes(cfg) == {"params": n, "weights": 4 * n, "total": 4 * n}
    train_ = sizes.model_bytes(cfg, optimizer="adamw", micro_batch=4, seq_len=32)
    acts = 4 * 32 * 2 * 64 * sizes.ACTIVATION_BYTES
    assert train_ == {"params": n, "state": 16 * n, "activations": acts + 4 * 32 * 1024 * 4, "total": 16 * n + acts
                      + 4 * 32 * 1024 * 4}
    chunked = sizes.model_bytes(cfg, optimizer="muon", micro_batch=4, seq_len=32, loss_chunk=8, shards=4)
    assert (chunked["state"], chunked["activations"]) == (12 * n // 4, acts)  # no whole logits; state over 4
    assert [sizes.fmt_size(b) for b in (512, 2**20 * 5, int(7.4 * 2**30), 2**40 * 183, 10**40)] == [
        "512 B", "5.0 MiB", "7.4 GiB", "183 TiB", "8,271,806,125,530,277 YiB"]


def test_the_device_memory_is_known_here():
    room = sizes.available_memory("cpu")
    assert room is not None and room[0] > 2**26 and room[1] in ("this machine has", "this container has")


@pytest.mark.parametrize("key", ["model.n_layer=1000000000", "model.n_embd=1000000000",
                                 "train.micro_batch=100000000"])
def test_hostile_config_sizes_are_one_line_before_anything_is_built(small_shards, tmp_path, key):
    """The trial's keys: n_layer=10^9 and n_embd=10^9 were RuntimeError tracebacks (the latter trying 201 TB)."""
    cfg = micro_cfg(small_shards, tmp_path / "run", key)
    with pytest.raises(UserError, match=r"^config keys model\.\*: training a model of [\d.,e+]+ parameters \(.*\) "
                                        r"needs at least .* but this (machine|container) has .* available; choose a "
                                        r"smaller"):
        train(cfg, log=quiet)
    assert not (tmp_path / "run").exists()


def test_a_model_larger_than_the_device_is_refused(small_shards, tmp_path, micro_ckpt, monkeypatch):
    """The check compares with the device's memory: a 124M model to train in 1 GiB, a checkpoint in 1 MiB."""
    monkeypatch.setattr(sizes, "available_memory", lambda device: (2**30, "this machine has"))
    with pytest.raises(UserError, match=r"training a model of 124,475,904 parameters \(12 layers x 768 wide, "
                                        r"50,304 vocabulary rows\) needs at least 1.9 GiB: .* but this machine has "
                                        r"1.0 GiB available"):
        train(micro_cfg(small_shards, tmp_path / "run", "model.preset=gpt2"), log=quiet)
    train(micro_cfg(small_shards, tmp_path / "run", "train.max_steps=1"), log=quiet)  # the micro model fits
    monkeypatch.setattr(sizes, "available_memory", lambda device: (2**20, "this machine has"))
    with pytest.raises(UserError, match=rf"{ckpt.list_checkpoints(micro_ckpt)[-1] / CONFIG_FILE}: a model of "
                                        r"[\d,]+ parameters .* needs at least [\d.]+ MiB for its weights"):
        ckpt.load_model(micro_ckpt)


def test_a_checkpoint_config_asking_for_a_huge_model_is_refused(micro_ckpt, tmp_path):
    """A config.yaml edited (and its checksums made anew) to 10^7 layers: one line, nothing built."""
    import shutil

    run = shutil.copytree(micro_ckpt, tmp_path / "run")
    folder = ckpt.list_checkpoints(run)[-1]
    text = (folder / CONFIG_FILE).read_text()
    (folder / CONFIG_FILE).write_text(text.replace("n_layer: 2\n", "n_layer: 10000000\n", 1))
    ckpt.write_checksums(folder)
    with pytest.raises(UserError, match=rf"{folder / CONFIG_FILE}: a model of [\d.,e+]+ parameters \(10,000,000 "
                                        r"layers"):
        ckpt.load_model(run)


def _limit_memory():  # for the command below: 3 GiB of address space, so an allocation past it fails at once
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as Linux has it")
@pytest.mark.parametrize("key", ["model.n_layer=1000000000", "model.n_embd=1000000000"])
def test_the_command_refuses_hostile_sizes_in_one_line(small_shards, tmp_path, key):
    import os
    import subprocess

    cmd = [sys.executable, "-m", "gpt2lab", "train", f"data.dir={small_shards}", f"train.run_dir={tmp_path / 'r'}",
           "model.preset=micro", "train.device=cpu", "train.max_steps=1", key]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=_limit_memory,
                       env={**os.environ, "GPT2LAB_ALLOCATOR": "system"})
    assert "training a model of" in one_line_error(r)

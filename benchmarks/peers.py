"""The models of nanoGPT and build-nanogpt as benchmark peers, fetched at run time, never committed.

    from peers import peer_model
    make = peer_model("nanogpt")                  # downloads model.py at a pinned commit, once
    make = peer_model("nanogpt", "/path/model.py")  # or a copy you have (no network)
    model = make(gpt2lab_model_config)            # the peer's GPT of the same shape

Each source is pinned by commit and sha256; a download goes to ``$GPT2LAB_PEERS`` (default
``~/.cache/gpt2lab/peers``) through a temporary file. nanoGPT's ``model.py`` is a module and is
imported as it is. build-nanogpt's ``train_gpt2.py`` trains when it is run, so only its model
(the imports it needs, ``CausalSelfAttention``, ``MLP``, ``Block``, ``GPTConfig``, ``GPT``) is
taken from it. Both models' ``forward(idx, targets)`` returns ``(logits, loss)``, the call
gpt2lab's training step makes, so the peer trains under exactly gpt2lab's step (autocast,
backward, clip, gpt2lab's AdamW) as gpt2lab's own model does. Both get the padded vocabulary
(50304 for GPT-2), as their training scripts use.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import tempfile
import types
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

# name -> (repository, commit, file, sha256 of the file)
SOURCES = {
    "nanogpt": ("karpathy/nanoGPT", "3adf61e154c3fe3fca428ad6bc3818b27a3b8291", "model.py",
                "7c01703240dbec5d554527dc666e35b3df8391d0b117fddc07afcf325a21d11c"),
    "build-nanogpt": ("karpathy/build-nanogpt", "6104ab1b53920f6e2159749676073ff7d815c1fa", "train_gpt2.py",
                      "6a033ddc2c4d092d291dc8825b75ad9e030659881ab0cd2d2935e392516d9226"),
}
MODEL_NAMES = {"CausalSelfAttention", "MLP", "Block", "GPTConfig", "GPT", "LayerNorm"}
IMPORTS_KEPT = {"math", "inspect", "dataclasses", "torch", "torch.nn"}


def source_url(name: str) -> str:
    repo, commit, path, _ = SOURCES[name]
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def fetch(name: str, cache: Path | None = None) -> Path:
    """The peer's pinned source file, downloaded once into ``cache`` and checked against its sha256."""
    repo, commit, path, sha = SOURCES[name]
    cache = Path(cache or os.environ.get("GPT2LAB_PEERS", Path.home() / ".cache" / "gpt2lab" / "peers"))
    dest = cache / f"{name}-{commit[:12]}-{path}"
    if not dest.exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            data = urllib.request.urlopen(source_url(name), timeout=60).read()
        except OSError as e:
            raise SystemExit(f"error: could not download {source_url(name)} ({e}); "
                             f"pass a copy of {repo}'s {path} with --peer-file {name}=PATH") from None
        _check_sha(name, data, source_url(name))
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    return dest


def _check_sha(name: str, data: bytes, where) -> None:
    repo, commit, path, sha = SOURCES[name]
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise SystemExit(f"error: {where} is not {repo}'s {path} at {commit[:12]} (sha256 {got[:12]}, "
                         f"expected {sha[:12]}); remove it or pass the pinned file")


def load_module(name: str, path: Path) -> types.ModuleType:
    """The peer's model classes as a module, from its (checked) source file."""
    data = Path(path).read_bytes()
    _check_sha(name, data, path)
    tree = ast.parse(data, filename=str(path))
    if name == "build-nanogpt":  # a training script: keep its model, not the training run
        def kept(node) -> bool:
            if isinstance(node, ast.Import):
                return all(a.name in IMPORTS_KEPT for a in node.names)
            if isinstance(node, ast.ImportFrom):
                return node.module in IMPORTS_KEPT
            return isinstance(node, ast.ClassDef) and node.name in MODEL_NAMES
        tree.body = [n for n in tree.body if kept(n)]
    module = types.ModuleType(f"peer_{name.replace('-', '_')}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses look their class's module up there
    exec(compile(tree, str(path), "exec"), module.__dict__)
    return module


def peer_model(name: str, path: str | Path | None = None) -> Callable[[object], torch.nn.Module]:
    """A function making the peer's GPT for a gpt2lab ``GPTConfig`` (same shape, padded vocabulary)."""
    module = load_module(name, Path(path) if path else fetch(name))

    def make(cfg) -> torch.nn.Module:
        fields = dict(block_size=cfg.block_size, vocab_size=cfg.padded_vocab_size, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, n_embd=cfg.n_embd)
        if name == "nanogpt":
            fields.update(dropout=cfg.dropout, bias=cfg.bias)
        return PeerStep(module.GPT(module.GPTConfig(**fields)))

    return make


class PeerStep(torch.nn.Module):
    """A peer's GPT behind gpt2lab's training call ``model(x, y, loss_chunk=..., return_logits=...)``:
    the peer's own ``forward(x, y)``, which ignores gpt2lab's options (it returns its logits, as
    its users train it)."""

    def __init__(self, gpt: torch.nn.Module):
        super().__init__()
        self.gpt = gpt

    def forward(self, x, y, **_gpt2lab_options):
        return self.gpt(x, y)

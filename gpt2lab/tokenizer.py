"""GPT-2 byte-pair encoding through tiktoken, fully offline.

The vocabulary ships inside the package as ``assets/gpt2.tiktoken`` (one line per token:
base64 bytes and rank), built from OpenAI's ``encoder.json``/``vocab.bpe`` by
``tools/build_vocab.py``. It is byte-identical to tiktoken's ``r50k_base.tiktoken``, and its
sha256 is checked every time it is loaded, so a damaged install cannot tokenize silently wrong.
"""

from __future__ import annotations

import functools
from importlib import resources

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from .errors import UserError

VOCAB_FILE = "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = 50256
EOT_STRING = "<|endoftext|>"
VOCAB_SIZE = 50257


def vocab_path() -> str:
    return str(resources.files("gpt2lab").joinpath("assets", VOCAB_FILE))


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str = "gpt2") -> tiktoken.Encoding:
    """Return the GPT-2 tokenizer (ids identical to ``tiktoken.get_encoding("gpt2")``)."""
    if name != "gpt2":
        raise UserError(f"unknown tokenizer {name!r}; only 'gpt2' is available")
    path = vocab_path()
    try:
        ranks = load_tiktoken_bpe(path, expected_hash=VOCAB_SHA256)
    except ValueError as e:  # tiktoken raises ValueError on a hash mismatch
        raise UserError(f"{path}: shipped vocabulary is damaged ({e}); reinstall gpt2lab") from None
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_STRING: EOT_TOKEN},
    )


def encode(text: str) -> list[int]:
    """Encode text as ordinary text: ``<|endoftext|>`` inside it is not a special token."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids) -> str:
    return get_tokenizer().decode(list(ids))

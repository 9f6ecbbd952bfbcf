"""Tokenizers, all encoded through tiktoken: GPT-2's BPE (shipped) or your own byte-level BPE (a folder).

A tokenizer is named by a *spec*: ``"gpt2"`` or the path of a folder written by
``gpt2lab tokenizer train`` (gpt2lab/tokenizer_train.py). Everything that tokenizes (prepare,
training, sample, the evaluations, ``convert to-hf``) takes one, through :func:`load_tokenizer`.

**GPT-2** ships inside the package as ``assets/gpt2.tiktoken`` (one line per token: base64 bytes
and rank), built from OpenAI's ``encoder.json``/``vocab.bpe`` by ``tools/build_vocab.py``. It is
byte-identical to tiktoken's ``r50k_base.tiktoken``, and its sha256 is checked every time it is
loaded, so a damaged install cannot tokenize silently wrong.

**A tokenizer folder** holds two files:

- ``tokenizer.tiktoken``: the mergeable tokens in the same format (``base64(bytes) rank``, ranks
  0..N-2 in order);
- ``gpt2lab-tokenizer.json``: ``format``, ``version``, ``name``, ``pattern`` (its name) and
  ``pat_str`` (the pre-tokenisation regex), ``special_tokens`` (``<|endoftext|>`` = N-1, last, as
  in GPT-2), ``vocab_size`` (N, special token included), ``ranks_sha256`` (of the rank file,
  checked on every load), ``sha256`` (the tokenizer's identity, below; checked on every load too,
  so an edited pattern or special token is refused) and what it was trained on.

A tokenizer's identity (``Tokenizer.sha256``, :func:`identity`) covers everything that changes its
output: the ranks, the pre-tokenisation pattern and the special tokens. With GPT-2's pattern and
``<|endoftext|>`` as the one special token, last, it is the sha256 of the rank file (GPT-2's is the
shipped file's, as before); with any other pattern or special tokens, the sha256 of those together
with the ranks' sha256. The shard manifest records it and training and evaluation compare it, so a
folder whose pattern was edited is another tokenizer. A pattern must also give back every character
of a test text (:data:`PROBE_TEXT`): one that drops text (digits, punctuation) is refused on load.

Text is encoded as ordinary text: ``<|endoftext|>`` inside it is not the special token.
``decode(encode(s)) == s`` for every valid Unicode string. A string that is not valid Unicode
(lone surrogates such as ``"\\ud800"``, which JSON can hold) is encoded as tiktoken does: as
UTF-16 with each lone surrogate replaced by U+FFFD (a surrogate *pair* becomes its character),
so decode gives that text back (:func:`clean_surrogates`). Loading needs only tiktoken.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

from .errors import UserError

VOCAB_FILE = "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = 50256
EOT_STRING = "<|endoftext|>"
VOCAB_SIZE = 50257

RANKS_FILE = "tokenizer.tiktoken"  # in a tokenizer folder
META_FILE = "gpt2lab-tokenizer.json"
COPY_DIR = "tokenizer"  # a model folder's copy of its tokenizer (a checkpoint's, an exported transformers folder's)
FORMAT, FORMAT_VERSION = "gpt2lab-tokenizer", 1
# Named pre-tokenisation patterns (the regex that splits text into pieces before BPE).
PATTERNS = {
    "gpt2": r50k_pat_str,
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
              r"""\s*[\r\n]|\s+(?!\S)|\s""",
}


# Text a pattern must split without losing a character (pieces it does not match are dropped by tiktoken): letters,
# digits, punctuation, spaces, newlines, tabs, other scripts and an emoji.
PROBE_TEXT = ("Hello, world! It's 2024: 3.14 + 42 = 45.14 -- (quoted) 'LL 'Re; x_y/z\\n\n\n  tabs\there\r\n"
              "héllo wörld — ✓ 日本語 🙂 ١٢٣ \"end\".")


def identity(ranks_sha256: str, pat_str: str, special_tokens: dict[str, int], n_ranks: int) -> str:
    """A tokenizer's identity (``Tokenizer.sha256``): the ranks' sha256 when the pattern is GPT-2's and
    ``<|endoftext|>`` is the one special token, right after the ``n_ranks`` ranks (GPT-2's own value, and that
    of every folder with GPT-2's pattern, unchanged); otherwise the sha256 of the three together."""
    if pat_str == r50k_pat_str and special_tokens == {EOT_STRING: n_ranks}:
        return ranks_sha256
    canonical = json.dumps({"ranks_sha256": ranks_sha256, "pat_str": pat_str, "special_tokens": special_tokens},
                           sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def encoding_identity(enc: tiktoken.Encoding) -> str:
    """:func:`identity` of any tiktoken Encoding, from its ranks (as a rank file holds them), pattern and
    special tokens."""
    special = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    h, n_ranks = hashlib.sha256(), 0
    for rank in range(enc.n_vocab):
        if rank in special:
            continue
        try:
            token = enc.decode_single_token_bytes(rank)
        except KeyError:  # a gap in the ranks
            continue
        h.update(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
        n_ranks += 1
    return identity(h.hexdigest(), enc._pat_str, dict(enc._special_tokens), n_ranks)


def onig_pattern(pat_str: str) -> str:
    r"""``pat_str`` as the ``tokenizers`` library's regex engine (Oniguruma) reads it the way tiktoken's does.

    Oniguruma reads ``X{1,3}+`` as ``(?:X{1,3})+`` (any number of X), not as a possessive ``{1,3}``: cl100k's
    ``\p{N}{1,3}+`` would take a whole number instead of three digits. In these patterns the interval ends its
    alternative, so the greedy ``X{1,3}`` matches what the possessive one does. (``?+ *+ ++`` are possessive in both.)
    """
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pat_str)


def vocab_path() -> str:
    return str(resources.files("gpt2lab").joinpath("assets", VOCAB_FILE))


def pad_vocab(n: int, multiple: int = 64) -> int:
    """Rows of the embedding for ``n`` tokens: rounded up to a multiple of 64 (GPT-2: 50257 -> 50304)."""
    return (n + multiple - 1) // multiple * multiple


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (vocab.json, merges.txt, byte-level BPE).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...)
    map to U+0100 onwards, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_surrogates(text: str) -> str:
    """The text tiktoken encodes for ``text``: lone surrogates become U+FFFD (valid text is unchanged)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def ranks_file_bytes(ranks: dict[bytes, int]) -> bytes:
    """A rank file's content: ``base64(token) rank`` per line, in rank order (tiktoken's format)."""
    return b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n"
                    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))


def parse_ranks(data: bytes, path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise UserError(f"{path} line {n}: not 'base64 rank'; the rank file is damaged: train the tokenizer "
                            "again or restore the folder") from None
    return ranks


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A loaded tokenizer: ``enc`` (a tiktoken Encoding) and where it comes from.

    ``name``: "gpt2" or the folder's recorded name; ``folder``: None for GPT-2; ``sha256``: its identity (of
    the ranks, pattern and special tokens: :func:`identity`).
    """

    name: str
    sha256: str
    enc: tiktoken.Encoding
    folder: Path | None = None
    pattern: str = "gpt2"

    @property
    def spec(self) -> str:
        """What names it in a config or on the command line: "gpt2" or the folder's path."""
        return "gpt2" if self.folder is None else str(self.folder)

    @property
    def n_vocab(self) -> int:
        return self.enc.n_vocab

    @property
    def eot_token(self) -> int:
        return self.enc.eot_token

    @property
    def padded_vocab_size(self) -> int:
        return pad_vocab(self.n_vocab)

    def describe(self) -> str:
        return f"{self.spec!r} ({self.n_vocab:,} tokens, sha256 {self.sha256[:12]})"

    def encode(self, text: str) -> list[int]:
        """Ordinary text (``<|endoftext|>`` in it is not special); lone surrogates as :func:`clean_surrogates`."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes of the text each token id stands for (0 for the special token, which is no text): what bits
        per byte divides by (evals/loss.py), the same for any tokenizer of the same text."""
        return _token_bytes(self)


@functools.lru_cache(maxsize=8)
def _token_bytes(tok: Tokenizer) -> list[int]:
    special = {tok.enc.encode_single_token(s) for s in tok.enc.special_tokens_set}
    return [0 if i in special else len(tok.enc.decode_single_token_bytes(i)) for i in range(tok.n_vocab)]


@functools.cache
def _gpt2() -> Tokenizer:
    path = vocab_path()
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise UserError(f"{path}: shipped vocabulary is damaged (sha256 differs); reinstall gpt2lab")
    enc = tiktoken.Encoding(name="gpt2", explicit_n_vocab=VOCAB_SIZE, pat_str=r50k_pat_str,
                            mergeable_ranks=parse_ranks(data, path), special_tokens={EOT_STRING: EOT_TOKEN})
    return Tokenizer("gpt2", VOCAB_SHA256, enc)


def _damaged(path, why: str) -> UserError:
    return UserError(f"{path}: {why}; the tokenizer folder is damaged: train the tokenizer again or restore the folder")


def read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder}: not a tokenizer folder (no {META_FILE}); give 'gpt2' or a folder made by "
                        "`gpt2lab tokenizer train`") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _damaged(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _damaged(path, f"not a {FORMAT} file")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: tokenizer format version {meta.get('version')!r}, this gpt2lab reads "
                        f"{FORMAT_VERSION}; upgrade gpt2lab or train the tokenizer again")
    need = {"name": str, "pat_str": str, "special_tokens": dict, "vocab_size": int, "ranks_sha256": str}
    for key, tp in need.items():
        if not isinstance(meta.get(key), tp):
            raise _damaged(path, f"'{key}' missing or not a {tp.__name__}")
    if meta["special_tokens"] != {EOT_STRING: meta["vocab_size"] - 1}:
        raise _damaged(path, f"'special_tokens' must be {EOT_STRING} alone, mapped to vocab_size - 1")
    named = meta.get("pattern")
    if named in PATTERNS and meta["pat_str"] != PATTERNS[named]:  # what `tokenizer train` wrote is a named pattern
        raise _damaged(path, f"'pat_str' is not the pre-tokenisation pattern {named!r} that 'pattern' names")
    if "sha256" in meta and not isinstance(meta["sha256"], str):
        raise _damaged(path, "'sha256' is not a string")
    return meta


@functools.lru_cache(maxsize=16)
def _load_folder(folder: Path, _stamp) -> Tokenizer:
    meta = read_meta(folder)
    path = folder / RANKS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _damaged(folder, f"{RANKS_FILE} is missing") from None
    if hashlib.sha256(data).hexdigest() != meta["ranks_sha256"]:
        raise _damaged(path, f"sha256 differs from the ranks_sha256 recorded in {META_FILE}")
    ranks = parse_ranks(data, path)
    n = meta["vocab_size"]
    if sorted(ranks.values()) != list(range(n - 1)):
        raise _damaged(path, f"expected ranks 0..{n - 2} once each for vocab_size {n}, found {len(ranks)} tokens")
    special = {EOT_STRING: n - 1}
    try:
        enc = tiktoken.Encoding(name=meta["name"], pat_str=meta["pat_str"], mergeable_ranks=ranks,
                                special_tokens=special, explicit_n_vocab=n)
    except (ValueError, AssertionError) as e:  # a pattern tiktoken cannot compile, inconsistent sizes
        raise _damaged(folder / META_FILE, f"tiktoken refuses it ({str(e).splitlines()[0][:200]})") from None
    sha256 = identity(meta["ranks_sha256"], meta["pat_str"], special, n - 1)
    if meta.get("sha256", sha256) != sha256:  # recorded by `tokenizer train` (folders written before: none)
        raise _damaged(folder / META_FILE, "its recorded identity 'sha256' differs from its pattern, special tokens "
                                           "and ranks: the folder was edited")
    if enc.decode(enc.encode_ordinary(PROBE_TEXT)) != PROBE_TEXT:
        raise _damaged(folder / META_FILE, "'pat_str' loses text (encoding then decoding a test text does not give it "
                                           "back): every character must fall in some piece of the pattern")
    return Tokenizer(meta["name"], sha256, enc, folder, str(meta.get("pattern", "custom")))


def load_tokenizer(spec: str | os.PathLike | Tokenizer = "gpt2") -> Tokenizer:
    """``"gpt2"`` or a tokenizer folder (or a Tokenizer, returned as it is); cached, checked on load."""
    if isinstance(spec, Tokenizer):
        return spec
    s = os.fspath(spec)
    if s == "gpt2":
        return _gpt2()
    folder = Path(s).expanduser()
    if not folder.is_dir():
        what = "a file" if folder.exists() else "no such folder"
        raise UserError(f"unknown tokenizer {s!r} ({what}); give 'gpt2' or a folder made by `gpt2lab tokenizer train`")
    folder = folder.resolve()
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None
                  for p in (folder / META_FILE, folder / RANKS_FILE))
    return _load_folder(folder, stamp)


def get_tokenizer(name: str | os.PathLike = "gpt2") -> tiktoken.Encoding:
    """The tiktoken Encoding of a tokenizer (GPT-2's: ids identical to ``tiktoken.get_encoding("gpt2")``)."""
    return load_tokenizer(name).enc


def write_folder(folder: Path, ranks: dict[bytes, int], *, name: str, pattern: str, pat_str: str,
                 extra: dict | None = None) -> None:
    """Write a tokenizer's two files into ``folder`` (an empty temporary folder: see fileio.atomic_dir)."""
    data = ranks_file_bytes(ranks)
    (folder / RANKS_FILE).write_bytes(data)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "name": name, "type": "byte-level BPE",
            "pattern": pattern, "pat_str": pat_str, "special_tokens": {EOT_STRING: len(ranks)},
            "vocab_size": len(ranks) + 1, "ranks_file": RANKS_FILE, "ranks_sha256": hashlib.sha256(data).hexdigest(),
            "sha256": identity(hashlib.sha256(data).hexdigest(), pat_str, {EOT_STRING: len(ranks)}, len(ranks)),
            **(extra or {})}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def copy_folder(tok: Tokenizer, dest: Path) -> None:
    """Copy a folder tokenizer's files into ``dest`` (created); nothing for GPT-2, which ships with gpt2lab."""
    if tok.folder is None:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, RANKS_FILE):
        shutil.copyfile(tok.folder / name, dest / name)


def check_same(expected: Tokenizer, got: Tokenizer, what_expected: str, what_got: str) -> None:
    """UserError naming both when two tokenizers differ (by their identity: ranks, pattern, special tokens)."""
    if expected.sha256 != got.sha256:
        raise UserError(f"tokenizer mismatch: {what_expected} uses {expected.describe()} but {what_got} is "
                        f"{got.describe()}; use the same tokenizer for both")


def encode(text: str) -> list[int]:
    """GPT-2: encode text as ordinary text (``<|endoftext|>`` inside it is not a special token)."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids) -> str:
    return get_tokenizer().decode(list(ids))

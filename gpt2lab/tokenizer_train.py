"""Train your own byte-level BPE (``gpt2lab tokenizer train``) and compare tokenizers (``tokenizer stats``).

Training runs the Hugging Face ``tokenizers`` library (``pip install 'gpt2lab[tokenizer]'``): the
corpus is read as ``prepare`` reads it (txt/jsonl/parquet, compressed; gpt2lab/data/sources.py),
split by the pre-tokenisation pattern (GPT-2's by default), mapped to GPT-2's byte alphabet and
merged until ``vocab_size - 1`` tokens exist (all 256 bytes first); ``<|endoftext|>`` is added
last, as in GPT-2. The merges are saved as a tiktoken rank file (a token's rank is its id, in
merge order), so gpt2lab encodes through tiktoken and needs only tiktoken to use it.

The BPE model is trained with ``ignore_merges`` (a piece that is a whole token is that token),
which is what tiktoken does; its encodings and tiktoken's of the saved folder are the same ids
(tests/test_tokenizer.py checks this on text the tokenizer was not trained on).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .data.sources import DOC_SPLITS, chunk_texts, expand_inputs, file_chunks
from .errors import UserError
from .fileio import atomic_dir, check_out_dir
from .tokenizer import EOT_STRING, PATTERNS, Tokenizer, bytes_to_unicode, load_tokenizer, onig_pattern, write_folder

MIN_VOCAB = 257  # the 256 bytes and <|endoftext|>
MAX_PIECE = 1 << 16  # characters of a document the trainer splits at once (see split_long)


def _hf():
    try:
        import tokenizers
    except ImportError:
        raise UserError("tokenizer train needs the Hugging Face tokenizers library: pip install 'gpt2lab[tokenizer]' "
                        "(or pip install tokenizers)") from None
    return tokenizers


def resolve_pattern(pattern: str) -> str:
    if pattern not in PATTERNS:
        raise UserError(f"unknown pre-tokenisation pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    return PATTERNS[pattern]


def hf_bpe(pat_str: str):
    """An untrained ``tokenizers`` byte-level BPE that splits text with ``pat_str`` (as tiktoken does)."""
    tk = _hf()
    from tokenizers import Regex, decoders, models, pre_tokenizers

    tok = tk.Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(onig_pattern(pat_str)), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def hf_ranks(hf_tok) -> dict[bytes, int]:
    """The mergeable tokens of a trained byte-level ``tokenizers`` BPE as tiktoken ranks (bytes -> id)."""
    b2u = {c: b for b, c in bytes_to_unicode().items()}
    return {bytes(b2u[c] for c in token): i for token, i in hf_tok.get_vocab(with_added_tokens=False).items()}


def corpus_texts(files: list[Path], doc_split: str, text_key: str, counts: list) -> Iterator[str]:
    """The documents of ``files`` as prepare reads them, a long one in pieces (:func:`split_long`); ``counts``
    gets [kept, empty, invalid_utf8, bytes] added, per document."""
    for chunk in file_chunks(files, doc_split, text_key):
        texts = chunk_texts(chunk, counts)
        counts[3] += sum(len(t.encode("utf-8")) for t in texts)
        for text in texts:
            yield from split_long(text)


def split_long(text: str, limit: int = MAX_PIECE) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` characters, for training: the ``tokenizers`` trainer holds about
    90 bytes per character of a text while it splits it (a 50 MB line took 4.4 GB), so a long document is fed
    piece by piece. A piece ends before a space that starts a word (a non-space, then " ", then a non-space):
    no piece of GPT-2's or cl100k's pattern spans that place, so the counts, and the merges, are the same as
    for the whole text. Only text with no such place in the second half of a window (a 1 MB run without
    spaces) is cut at the limit."""
    start, n = 0, len(text)
    while n - start > limit:
        end = start + limit
        cut = text.rfind(" ", start + limit // 2, end)
        while cut > start and (text[cut - 1].isspace() or text[cut + 1].isspace()):
            cut = text.rfind(" ", start + limit // 2, cut)
        end = cut if cut > start else end
        yield text[start:end]
        start = end
    yield text[start:]


def train_bpe(texts, vocab_size: int, pattern: str = "gpt2"):
    """Train a ``tokenizers`` BPE of ``vocab_size`` tokens (``<|endoftext|>`` = the last) on an iterable of texts."""
    from tokenizers import pre_tokenizers, trainers

    hf_tok = hf_bpe(resolve_pattern(pattern))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf_tok.train_from_iterator(texts, trainer)
    hf_tok.add_special_tokens([EOT_STRING])
    return hf_tok


def train_tokenizer(inputs, vocab_size: int, out, *, pattern: str = "gpt2", doc_split: str = "file",
                    text_key: str = "text", name: str | None = None, overwrite: bool = False,
                    log: Callable[[str], None] = print) -> Tokenizer:
    """Train a byte-level BPE (GPT-2's pre-tokenisation pattern by default, <|endoftext|> as its last token) on
    txt/jsonl/parquet files (compressed too), as prepare reads them; write it to a folder (a tiktoken rank file and
    gpt2lab-tokenizer.json).

    Returns the Tokenizer written. ``gpt2lab tokenizer train`` takes these arguments as its options (``--help``
    shows this text).

    Args:
        inputs: input files or globs (txt/jsonl/parquet, compressed too)
        vocab_size: tokens, <|endoftext|> included (GPT-2: 50257); at least 257
        out: output folder (written atomically; it must not exist yet, unless overwriting)
        pattern: pre-tokenisation pattern: gpt2 or cl100k
        doc_split: .txt files: one document per file, per line, or per blank-line block
        text_key: jsonl key / parquet column holding the text
        name: the tokenizer's name in manifests (default: the folder's name)
        overwrite: replace the output folder if it exists
        log: receives the summary line
    """
    _hf()
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab-size {vocab_size}: a byte-level BPE needs at least {MIN_VOCAB} tokens "
                        "(the 256 bytes and <|endoftext|>); GPT-2 has 50257")
    if doc_split not in DOC_SPLITS:
        raise UserError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    pat_str = resolve_pattern(pattern)
    files = expand_inputs(inputs)
    out = Path(out)
    check_out_dir(out, overwrite)  # before the training, which may be long
    counts = [0, 0, 0, 0]  # documents kept, empty, with invalid UTF-8; bytes
    t0 = time.perf_counter()
    hf_tok = train_bpe(corpus_texts(files, doc_split, text_key, counts), vocab_size, pattern)
    seconds = time.perf_counter() - t0
    if counts[0] == 0:
        raise UserError(f"inputs hold no text ({counts[1]} empty documents); check the files")
    ranks = hf_ranks(hf_tok)
    if len(ranks) + 1 < vocab_size:
        raise UserError(f"the inputs ({counts[3]:,} bytes) only make a vocabulary of {len(ranks) + 1:,} tokens, "
                        f"not {vocab_size:,}: use more text or a --vocab-size of at most {len(ranks) + 1}")
    import tokenizers

    trained_on = {"files": [os.fspath(f) for f in files], "doc_split": doc_split, "text_key": text_key,
                  "documents": counts[0], "bytes": counts[3], "invalid_utf8_documents": counts[2],
                  "tokenizers_version": tokenizers.__version__}  # no wall-clock time: the same inputs, the same folder
    with atomic_dir(out, overwrite) as tmp:
        write_folder(tmp, ranks, name=name or out.name, pattern=pattern, pat_str=pat_str,
                     extra={"trained_on": trained_on})
    log(f"trained a {vocab_size:,}-token BPE on {counts[0]:,} documents ({counts[3] / 1e6:,.1f} MB) in "
        f"{seconds:.1f} s; wrote {out}")
    return load_tokenizer(out)


# --- stats ---------------------------------------------------------------------------------


def tokenizer_stats(inputs, tokenizers: list, *, doc_split: str = "file", text_key: str = "text",
                    repeats: int = 1) -> list[dict]:
    """Encode the documents of text files with each tokenizer as prepare does (tiktoken, one process) and report
    bytes per token and tokens/s.

    Returns a row for each tokenizer. Encoding is gpt2lab's path (prepare's ``tokenize_texts``). ``gpt2lab tokenizer
    stats`` takes these arguments as its options (``--help`` shows this text).

    Args:
        inputs: input files or globs (txt/jsonl/parquet, compressed too)
        tokenizers: gpt2 or tokenizer folders
        doc_split: .txt files: one document per file, per line, or per blank-line block
        text_key: jsonl key / parquet column holding the text
        repeats: timed passes over all the documents; tokens/s is the best
    """
    import numpy as np

    from .data.sources import tokenize_texts

    files = expand_inputs(inputs)
    counts = [0, 0, 0, 0]
    texts = list(corpus_texts(files, doc_split, text_key, counts))
    if not texts:
        raise UserError(f"inputs hold no text ({counts[1]} empty documents); check the files")
    rows = []
    for spec in tokenizers:
        tok = load_tokenizer(spec)
        dtype = np.uint16 if tok.n_vocab <= 1 << 16 else np.uint32
        best = float("inf")
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            ids = tokenize_texts(tok.enc, texts, dtype)
            best = min(best, time.perf_counter() - t0)
        n_tokens = len(ids) - len(texts)  # without the <|endoftext|> before each document
        rows.append({"tokenizer": tok.spec, "name": tok.name, "vocab_size": tok.n_vocab, "documents": len(texts),
                     "bytes": counts[3], "tokens": n_tokens, "bytes_per_token": counts[3] / max(n_tokens, 1),
                     "tokens_per_s": n_tokens / max(best, 1e-9), "seconds": best})
    return rows


def format_stats(rows: list[dict]) -> str:
    base = rows[0]["bytes_per_token"]
    lines = [f"{'tokenizer':<40} {'vocab':>8} {'tokens':>12} {'bytes/token':>11} {'vs first':>9} {'tokens/s':>12}"]
    for r in rows:
        lines.append(f"{r['tokenizer'][-40:]:<40} {r['vocab_size']:>8,} {r['tokens']:>12,} "
                     f"{r['bytes_per_token']:>11.4f} "
                     f"{(r['bytes_per_token'] / base - 1) * 100:>+8.2f}% {r['tokens_per_s']:>12,.0f}")
    return "\n".join(lines)

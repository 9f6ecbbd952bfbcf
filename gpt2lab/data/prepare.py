"""Turn text corpora into train/val token shards (``gpt2lab prepare``).

Every document is tokenized with the GPT-2 tokenizer as ordinary text (``<|endoftext|>``
inside a document is *not* the special token) and preceded by the end-of-text token 50256,
as llm.c and build-nanogpt do: the token stream is ``EOT doc1 EOT doc2 ...`` and starts
with EOT. The first ``round(val_fraction * total)`` tokens of that stream are the
validation split, the rest the training split, each cut into shards of at most
``shard_tokens`` tokens (``val_000000.bin``, ``train_000000.bin``, ``train_000001.bin``...).
``manifest.json`` is written last, so a directory without one is incomplete.

The output depends only on the inputs and the options, never on the number of workers.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import multiprocessing
import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import UserError
from ..tokenizer import EOT_TOKEN, VOCAB_SHA256, get_tokenizer
from .shards import SHARD_SUFFIXES, read_shard, write_shard

MANIFEST = "manifest.json"
DOC_SPLITS = ("file", "line", "blank")
TOKENIZER_NAME = "gpt2"
_CHUNK_DOCS = 512  # documents per tokenization task
_CHUNK_CHARS = 1 << 20  # ... or about this many characters, whichever comes first


class _Stats:
    def __init__(self):
        self.kept = 0
        self.empty = 0
        self.invalid_utf8 = 0


def _format(path: Path) -> str:
    name = path.name.lower()
    for fmt in (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet"):
        if name.endswith(fmt):
            return fmt
    raise UserError(
        f"{path}: unknown input format; use .txt, .txt.gz, .jsonl, .jsonl.gz or .parquet files"
    )


def expand_inputs(inputs) -> list[Path]:
    """Paths and globs -> the list of input files, in the given order (globs sorted)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        s = os.fspath(item)
        if glob.has_magic(s):
            matches = sorted(glob.glob(s, recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise UserError(f"input glob {s!r} matches no files; check the pattern")
            files.extend(Path(m) for m in matches)
        else:
            p = Path(s)
            if p.is_dir():
                raise UserError(f"input {s} is a directory; pass its files or a glob like '{s}/*.txt'")
            if not p.is_file():
                raise UserError(f"input file {s} not found; check the path")
            files.append(p)
    if not files:
        raise UserError("no input files given; pass at least one .txt/.jsonl/.parquet file")
    for f in files:
        _format(f)
    return files


def _decode(data: bytes, stats: _Stats) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8 += 1
        return data.decode("utf-8", errors="replace")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _docs_txt(path: Path, doc_split: str, stats: _Stats) -> Iterator[str]:
    with _open_binary(path) as f:
        if doc_split == "file":
            yield _decode(f.read(), stats)
        elif doc_split == "line":
            for line in f:
                yield _decode(line.rstrip(b"\r\n"), stats)
        else:  # "blank": blocks of lines separated by one or more blank lines
            block: list[bytes] = []
            for line in f:
                if line.strip():
                    block.append(line)
                elif block:
                    yield _decode(b"".join(block).rstrip(b"\r\n"), stats)
                    block = []
            if block:
                yield _decode(b"".join(block).rstrip(b"\r\n"), stats)


def _docs_jsonl(path: Path, text_key: str, stats: _Stats) -> Iterator[str]:
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            bad_before = stats.invalid_utf8
            line = _decode(raw, stats)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix or remove the line") from None
            if not isinstance(obj, dict) or text_key not in obj:
                raise UserError(
                    f"{path}:{lineno}: no {text_key!r} key in the JSON object; "
                    "set text_key to the field that holds the text"
                )
            text = obj[text_key]
            if not isinstance(text, str):
                raise UserError(
                    f"{path}:{lineno}: {text_key!r} is a {type(text).__name__}, not a string"
                )
            text = _clean_surrogates(text, stats, already_counted=stats.invalid_utf8 > bad_before)
            yield text


def _docs_parquet(path: Path, text_key: str, stats: _Stats) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            f"{path}: reading .parquet needs pyarrow; run `pip install pyarrow`"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own exception types
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    if text_key not in pf.schema_arrow.names:
        raise UserError(
            f"{path}: no {text_key!r} column (columns: {', '.join(pf.schema_arrow.names)}); "
            "set text_key to the column that holds the text"
        )
    row = 0
    for batch in pf.iter_batches(columns=[text_key]):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                stats.empty += 1
                continue
            if isinstance(text, bytes):
                text = _decode(text, stats)
            elif not isinstance(text, str):
                raise UserError(f"{path}: row {row}: column {text_key!r} is not text")
            yield _clean_surrogates(text, stats)


def _clean_surrogates(text: str, stats: _Stats, already_counted: bool = False) -> str:
    """JSON may encode lone surrogates (``"\\ud800"``), which are not valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        if not already_counted:
            stats.invalid_utf8 += 1
        return text.encode("utf-8", errors="replace").decode("utf-8")


def iter_documents(files: list[Path], doc_split: str, text_key: str, stats: _Stats) -> Iterator[str]:
    """All non-empty documents of all files, in order; counts go to ``stats``."""
    for path in files:
        fmt = _format(path)
        if fmt in (".txt", ".txt.gz"):
            docs = _docs_txt(path, doc_split, stats)
        elif fmt in (".jsonl", ".jsonl.gz"):
            docs = _docs_jsonl(path, text_key, stats)
        else:
            docs = _docs_parquet(path, text_key, stats)
        try:
            for doc in docs:
                if not doc.strip():
                    stats.empty += 1
                    continue
                stats.kept += 1
                yield doc
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: cannot read ({e}); check the file is not damaged") from None


def _chunks(docs: Iterator[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc)
        if len(chunk) >= _CHUNK_DOCS or chars >= _CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def tokenize_chunk(docs: list[str]) -> np.ndarray:
    """Tokens of a list of documents as uint16, each document preceded by EOT."""
    enc = get_tokenizer(TOKENIZER_NAME)
    encoded = enc.encode_ordinary_batch(docs)
    out = np.empty(sum(len(t) for t in encoded) + len(encoded), dtype=np.uint16)
    i = 0
    for toks in encoded:
        out[i] = EOT_TOKEN
        out[i + 1 : i + 1 + len(toks)] = toks
        i += 1 + len(toks)
    return out


def _tokenize_ordered(chunks: Iterator[list[str]], workers: int) -> Iterator[np.ndarray]:
    """Tokenize chunks in a pool, yielding results in input order with bounded read-ahead."""
    if workers <= 1:
        for chunk in chunks:
            yield tokenize_chunk(chunk)
        return
    with multiprocessing.Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(tokenize_chunk, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _check_out_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """Return the old output files to remove; raise if we may not write here."""
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and (
            old.get("tokenizer") != TOKENIZER_NAME or old.get("vocab_sha256") != VOCAB_SHA256
        ):
            raise UserError(
                f"{manifest}: {out_dir} holds shards made with a different tokenizer "
                f"({old.get('tokenizer')!r}); choose another output directory or delete it"
            )
    old_files = [
        p for p in out_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix in SHARD_SUFFIXES
    ] if out_dir.is_dir() else []
    if manifest.is_file():
        old_files.append(manifest)
    if old_files and not overwrite:
        raise UserError(
            f"{out_dir} already holds shards ({len(old_files)} files); pass --overwrite to "
            "replace them or choose another output directory"
        )
    return old_files


def prepare(
    inputs,
    out_dir,
    *,
    val_fraction: float = 0.1,
    shard_tokens: int = 100_000_000,
    doc_split: str = "file",
    text_key: str = "text",
    workers: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Tokenize ``inputs`` into shards in ``out_dir``; return the manifest (also saved there)."""
    if doc_split not in DOC_SPLITS:
        raise UserError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if int(shard_tokens) < 1:
        raise UserError(f"shard_tokens must be a positive number of tokens, got {shard_tokens}")
    shard_tokens = int(shard_tokens)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    if int(workers) < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    workers = int(workers)
    files = expand_inputs(inputs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a directory; choose another path")
    old_files = _check_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)

    stats = _Stats()
    log(f"tokenizing {len(files)} file(s) with {workers} worker(s)")
    fd, stream_name = tempfile.mkstemp(prefix=".tmp-stream-", suffix=".u16", dir=out_dir)
    stream_path = Path(stream_name)
    try:
        total = 0
        with os.fdopen(fd, "wb") as stream:
            docs = iter_documents(files, doc_split, text_key, stats)
            for toks in _tokenize_ordered(_chunks(docs), workers):
                stream.write(toks.tobytes())
                total += toks.size
        if total == 0:
            raise UserError(
                f"inputs hold no text ({stats.empty} empty documents); check the files"
                + ("" if doc_split == "file" else f" and doc_split={doc_split!r}")
            )
        n_val = int(round(val_fraction * total))
        if val_fraction > 0 and n_val == 0:
            raise UserError(
                f"only {total} tokens: too few for a validation split of {val_fraction}; "
                "use more text or a larger val_fraction"
            )
        if n_val >= total:
            raise UserError(
                f"only {total} tokens: nothing left for training after the validation split "
                f"of {val_fraction}; use more text or a smaller val_fraction"
            )
        if val_fraction == 0:
            log("warning: val_fraction is 0, so no validation shards are written")

        for p in old_files:
            p.unlink(missing_ok=True)
        stream_tokens = np.memmap(stream_path, dtype=np.uint16, mode="r", shape=(total,))
        shards = []
        for split, lo, hi in (("val", 0, n_val), ("train", n_val, total)):
            for i, start in enumerate(range(lo, hi, shard_tokens)):
                end = min(start + shard_tokens, hi)
                name = f"{split}_{i:06d}.bin"
                digest = write_shard(out_dir / name, stream_tokens[start:end])
                shards.append({"name": name, "split": split, "tokens": end - start, "sha256": digest})
                log(f"wrote {name}: {end - start:,} tokens")
        del stream_tokens
    finally:
        stream_path.unlink(missing_ok=True)

    manifest = {
        "format": "gpt2lab-shards",
        "format_version": 1,
        "tokenizer": TOKENIZER_NAME,
        "vocab_sha256": VOCAB_SHA256,
        "eot_token": EOT_TOKEN,
        "eot_position": "before_each_document",
        "inputs": [str(f) for f in files],
        "options": {
            "val_fraction": val_fraction,
            "shard_tokens": shard_tokens,
            "doc_split": doc_split,
            "text_key": text_key,
        },
        "documents": {"kept": stats.kept, "empty": stats.empty, "invalid_utf8": stats.invalid_utf8},
        "tokens": {"val": n_val, "train": total - n_val, "total": total},
        "shards": shards,
    }
    _write_json_atomic(out_dir / MANIFEST, manifest)
    log(
        f"done: {total:,} tokens from {stats.kept:,} documents "
        f"({n_val:,} val, {total - n_val:,} train) in {out_dir}"
    )
    if stats.empty or stats.invalid_utf8:
        log(f"skipped {stats.empty} empty documents; {stats.invalid_utf8} had invalid UTF-8 (replaced)")
    return manifest


def _write_json_atomic(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verify(out_dir) -> dict:
    """Check the shards of ``out_dir`` against its manifest; return the manifest."""
    import hashlib

    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found; run gpt2lab prepare") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); re-run gpt2lab prepare") from None
    for shard in manifest.get("shards", []):
        p = out_dir / shard["name"]
        if len(read_shard(p)) != shard["tokens"]:
            raise UserError(f"{p}: token count differs from {path}; re-run gpt2lab prepare")
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != shard["sha256"]:
            raise UserError(f"{p}: sha256 differs from {path}; the file changed, re-run gpt2lab prepare")
    return manifest


__all__ = ["prepare", "verify", "expand_inputs", "iter_documents", "tokenize_chunk", "MANIFEST"]

"""Where ``gpt2lab prepare`` reads documents from, and how a chunk of them becomes tokens.

A source is read in the main process as a sequence of *chunks*: a few hundred documents in a
raw form (bytes for text files, raw lines for JSONL, strings for parquet and the hub) plus the
source position just after them. Decoding, JSON parsing and tokenizing a chunk happen in the
worker processes (:func:`tokenize_chunk`), so the main process only moves bytes around.

The position lets an interrupted prepare continue where it stopped: for local files it is
``[file index, records read in that file]`` (a record is a text document, a JSONL line, a
parquet row), for a hub dataset the number of rows read.
"""

from __future__ import annotations

import bz2
import dataclasses
import glob
import gzip
import io
import json
import lzma
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError

DOC_SPLITS = ("file", "line", "blank")
FORMATS = (".txt", ".jsonl", ".json", ".parquet")
COMPRESSIONS = ("", ".gz", ".zst", ".bz2", ".xz")
CHUNK_DOCS = 512  # documents per tokenization task
CHUNK_BYTES = 1 << 20  # ... or about this many bytes of text, whichever comes first


@dataclasses.dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub dataset, read in streaming mode through the ``datasets`` library.

    The default is FineWeb-Edu's 10B-token sample, as build-nanogpt uses. ``data_files`` and a
    builder name such as ``"parquet"`` or ``"json"`` read local files through the same path.
    """

    name: str = "HuggingFaceFW/fineweb-edu"
    config: str | None = "sample-10BT"
    split: str = "train"
    data_files: tuple[str, ...] | None = None
    revision: str | None = None

    @classmethod
    def named(cls, name: str | None, inputs, *, config: str | None = None, split: str = "train",
              data_files=None) -> HubSource | None:
        """The dataset ``gpt2lab prepare --hub NAME`` names (None without --hub: ``inputs`` are files), with its
        default config for the default dataset; files and a hub dataset together are an error."""
        if name is None:
            if not inputs:
                raise UserError("no inputs: give files or globs to tokenize, or --hub for a Hugging Face dataset")
            return None
        if inputs:
            raise UserError("give input files or --hub, not both")
        config = cls.config if config is None and name == cls.name else config
        return cls(name, config, split, tuple(data_files) if data_files else None)

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        if d["data_files"] is not None:
            d["data_files"] = list(d["data_files"])
        return d


class Chunk(NamedTuple):
    # "bytes" (text documents), "jsonl" (raw JSON lines) or "str" (a column's values: texts, bytes, None = empty)
    kind: str
    items: list
    text_key: str
    where: str  # file name, for error messages
    lines: list | None  # JSONL: the line number of each item
    position: list  # source position after this chunk


# --- local files ---------------------------------------------------------------------------


def file_format(path: Path) -> tuple[str, str]:
    """``(format, compression)`` from the name, e.g. ``("jsonl", ".zst")``."""
    name = path.name.lower()
    for comp in COMPRESSIONS[1:] + ("",):
        if comp and not name.endswith(comp):
            continue
        stem = name[: len(name) - len(comp)] if comp else name
        for fmt in FORMATS:
            if stem.endswith(fmt) and not (fmt == ".parquet" and comp):
                return fmt, comp
    raise UserError(
        f"{path}: unknown input format; use .txt, .jsonl or .parquet files "
        "(.txt and .jsonl may be compressed: .gz, .zst, .bz2, .xz)"
    )


def expand_inputs(inputs) -> list[Path]:
    """Paths and globs -> the list of input files, in the given order (globs sorted)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        s = os.fspath(item)
        if glob.has_magic(s) and not os.path.exists(s):  # wiki[en].jsonl that exists is that file, not a pattern
            matches = [m for m in sorted(glob.glob(s, recursive=True)) if os.path.isfile(m)]
            if not matches:
                raise UserError(f"input glob {s!r} matches no files; check the pattern")
            files.extend(Path(m) for m in matches)
        else:
            p = Path(s)
            if p.is_dir():
                raise UserError(f"input {s} is a directory; pass its files or a glob like '{s}/*.jsonl'")
            if not p.is_file():
                raise UserError(f"input file {s} not found; check the path")
            files.append(p)
    if not files:
        raise UserError("no input files given; pass at least one .txt/.jsonl/.parquet file")
    for f in files:
        file_format(f)
    return files


def _open_binary(path: Path, comp: str):
    if comp == ".gz":
        return gzip.open(path, "rb")
    if comp == ".bz2":
        return bz2.open(path, "rb")
    if comp == ".xz":
        return lzma.open(path, "rb")
    if comp == ".zst":
        try:
            import zstandard
        except ImportError:
            raise UserError(f"{path}: reading .zst needs zstandard; run `pip install zstandard`") from None
        return io.BufferedReader(_ZstdFrames(path, zstandard), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """The zstd frames of a file, one after another. zstandard's own stream reader ends quietly
    where a file is cut short; this raises EOFError there, as gzip, bz2 and lzma do."""

    def __init__(self, path: Path, zstandard):
        self._file = open(path, "rb")  # noqa: SIM115 - kept open on the reader; close() closes it
        self._new, self._error = zstandard.ZstdDecompressor().decompressobj, zstandard.ZstdError
        self._frame = self._new()
        self._in_frame = False  # bytes of an unfinished frame were fed
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._out:
            chunk = self._file.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd data ends inside a frame (file cut short?)")
                return 0
            out = []
            while chunk:
                if self._frame.eof:
                    self._frame = self._new()
                try:
                    out.append(self._frame.decompress(chunk))
                except self._error as e:  # not zstd data, or a damaged frame
                    raise ValueError(f"zstd: {e}") from None
                chunk = self._frame.unused_data if self._frame.eof else b""
                self._in_frame = not self._frame.eof
            self._out = memoryview(b"".join(out))
        n = min(len(buf), len(self._out))
        buf[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _txt_records(f, doc_split: str) -> Iterator[bytes]:
    if doc_split == "file":
        yield f.read()
    elif doc_split == "line":
        for line in f:
            yield line.rstrip(b"\r\n")
    else:  # "blank": blocks of lines separated by one or more blank lines
        block: list[bytes] = []
        for line in f:
            if line.strip():
                block.append(line)
            elif block:
                yield b"".join(block).rstrip(b"\r\n")
                block = []
        if block:
            yield b"".join(block).rstrip(b"\r\n")


def _parquet_records(path: Path, text_key: str, skip: int) -> Iterator[str | None]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading .parquet needs pyarrow; run `pip install pyarrow`") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own exception types
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if text_key not in names:
        raise UserError(
            f"{path}: no {text_key!r} column (columns: {', '.join(names)}); "
            "set text_key to the column that holds the text"
        )
    for batch in pf.iter_batches(columns=[text_key], batch_size=4096):
        if skip >= batch.num_rows:  # resuming: whole batches are skipped without decoding
            skip -= batch.num_rows
            continue
        column = batch.column(0)
        if skip:
            column, skip = column.slice(skip), 0
        for value in column.to_pylist():  # str, bytes (decoded in chunk_texts) or None
            if not (value is None or isinstance(value, (str, bytes))):
                raise UserError(f"{path}: column {text_key!r} holds {type(value).__name__}, not text; "
                                "set text_key to the column that holds the text")
            yield value


def file_chunks(
    files: list[Path], doc_split: str, text_key: str, start: tuple[int, int] = (0, 0)
) -> Iterator[Chunk]:
    """The documents of ``files`` in order, as chunks, starting at position ``start``."""
    if doc_split not in DOC_SPLITS:
        raise UserError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    first_file, skip = start
    for fi in range(first_file, len(files)):
        path = files[fi]
        fmt, comp = file_format(path)
        n_skip, skip = (skip, 0) if fi == first_file else (0, 0)
        kind = {".txt": "bytes", ".parquet": "str"}.get(fmt, "jsonl")
        items: list = []
        lines: list | None = [] if kind == "jsonl" else None
        size, record = 0, n_skip
        try:
            if fmt == ".parquet":
                records = _parquet_records(path, text_key, n_skip)
                f = None
            else:
                f = _open_binary(path, comp)
                records = f if fmt != ".txt" else _txt_records(f, doc_split)
                for _ in zip(range(n_skip), records):  # resuming: records already tokenized
                    pass
            try:
                for rec in records:
                    record += 1
                    if lines is not None:
                        if not rec.strip():
                            continue
                        lines.append(record)
                    items.append(rec)
                    size += len(rec) if rec is not None else 0
                    if len(items) >= CHUNK_DOCS or size >= CHUNK_BYTES:
                        yield Chunk(kind, items, text_key, str(path), lines, [fi, record])
                        items, size = [], 0
                        lines = [] if lines is not None else None
            finally:
                if f is not None:
                    f.close()
        except UserError:
            raise
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as e:
            # damaged gzip/xz/zstd, unreadable file ...
            raise UserError(f"{path}: cannot read ({e}); check the file is not damaged") from None
        yield Chunk(kind, items, text_key, str(path), lines, [fi + 1, 0])  # may be empty: still a resume point


def file_identity(files: list[Path]) -> list[dict]:
    """Name, size and modification time of each input, to refuse resuming on changed inputs."""
    out = []
    for p in files:
        st = p.stat()
        out.append({"path": str(p), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


# --- Hugging Face hub ----------------------------------------------------------------------


def hub_chunks(hub: HubSource, text_key: str, skip: int = 0) -> Iterator[Chunk]:
    """Rows of a hub dataset streamed through ``datasets``, starting after ``skip`` rows."""
    try:
        import datasets
    except ImportError:
        raise UserError("reading a hub dataset needs the datasets library; run `pip install 'gpt2lab[hub]'`") from None
    where = hub.name + (f"/{hub.config}" if hub.config else "")
    try:
        ds = datasets.load_dataset(
            hub.name, hub.config, split=hub.split, streaming=True, revision=hub.revision,
            data_files=list(hub.data_files) if hub.data_files else None,
        )
    except Exception as e:  # network, unknown name, bad config: datasets raises many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot open hub dataset {where!r} split {hub.split!r} ({first}); "
                        "check the name and your network, or prepare local files") from None
    columns = ds.column_names
    if columns is not None and text_key not in columns:
        raise UserError(f"hub dataset {where!r} has no {text_key!r} column (columns: {', '.join(columns)}); "
                        "set text_key to the column that holds the text")
    if columns is not None:
        ds = ds.select_columns([text_key])
    if skip:
        ds = ds.skip(skip)
    rows = skip
    try:
        for batch in ds.iter(batch_size=CHUNK_DOCS):
            texts = batch[text_key]
            rows += len(texts)
            yield Chunk("str", list(texts), text_key, where, None, [rows])
    except UserError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"reading hub dataset {where!r} failed after {rows} rows ({first}); "
                        "run prepare again to continue from the last complete shard") from None


# --- the worker side -----------------------------------------------------------------------


def _decode(data: bytes, counts: list) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        counts[2] += 1
        return data.decode("utf-8", errors="replace")


def _clean_surrogates(text: str, counts: list) -> str:
    """JSON may hold lone surrogates (``"\\ud800"``), which are not valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        counts[2] += 1
        return text.encode("utf-8", errors="replace").decode("utf-8")


def chunk_texts(chunk: Chunk, counts: list) -> list[str]:
    """The chunk's documents as text; ``counts`` gets [kept, empty, invalid_utf8] added."""
    texts = []
    for i, item in enumerate(chunk.items):
        if item is None:
            text = ""
        elif chunk.kind == "bytes":
            text = _decode(item, counts)
        elif chunk.kind == "jsonl":
            bad = counts[2]
            line = _decode(item, counts)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{chunk.where}:{chunk.lines[i]}: invalid JSON ({e.msg}); "
                                "fix or remove the line") from None
            if not isinstance(obj, dict) or chunk.text_key not in obj:
                raise UserError(f"{chunk.where}:{chunk.lines[i]}: no {chunk.text_key!r} key in the JSON object; "
                                "set text_key to the field that holds the text")
            text = obj[chunk.text_key]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise UserError(f"{chunk.where}:{chunk.lines[i]}: {chunk.text_key!r} is a "
                                f"{type(text).__name__}, not a string")
            text = _clean_surrogates(text, counts if counts[2] == bad else [0, 0, 0])  # a line counts once
        elif isinstance(item, bytes):
            text = _decode(item, counts)
        elif isinstance(item, str):
            text = _clean_surrogates(item, counts)
        else:  # a parquet or hub column of numbers, lists ...
            raise UserError(f"{chunk.where}: column {chunk.text_key!r} holds {type(item).__name__}, not text; "
                            "set text_key to the column that holds the text")
        if text.strip():
            counts[0] += 1
            texts.append(text)
        else:
            counts[1] += 1
    return texts


def tokenize_texts(enc, texts: list[str], dtype) -> np.ndarray:
    """``EOT doc1 EOT doc2 ...`` as one array.

    ``encode_to_numpy`` with no special tokens allowed or disallowed is ordinary encoding
    (``<|endoftext|>`` in a document is plain text), the same ids as ``encode_ordinary``,
    but it skips building a Python list of ints per document: about 15% faster.
    """
    eot = np.array([enc.eot_token], dtype=dtype)
    parts = []
    for text in texts:
        parts.append(eot)
        parts.append(enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=()))
    if not parts:
        return np.empty(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


__all__ = ["HubSource", "Chunk", "expand_inputs", "file_chunks", "hub_chunks", "chunk_texts", "tokenize_texts"]

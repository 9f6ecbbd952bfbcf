"""Turn a corpus into train/val token shards (``gpt2lab prepare``): fast, resumable, verified.

Every document is tokenized as ordinary text (``<|endoftext|>`` inside a document is *not*
the special token) and preceded by the end-of-text token, as llm.c and build-nanogpt do: the
token stream is ``EOT doc1 EOT doc2 ...``. The stream is split into validation and training
tokens in one of two ways:

* ``val_tokens=N``: the first N tokens are validation (build-nanogpt: the first shard of
  FineWeb-Edu, 100M tokens). This is the default for hub datasets.
* ``val_fraction=f``: in every block of :data:`VAL_BLOCK` (about 1M) stream tokens, and in
  the last, shorter block, the first ``round(f * block)`` tokens are validation. For a corpus
  under 1M tokens that is simply its first fraction f; for a large one the validation set is
  spread over the whole corpus. This is the default (f = 0.1) for local files.

Each split is cut into shards of ``shard_tokens`` tokens (the last one shorter):
``val_000000.bin``, ``train_000000.bin``, ``train_000001.bin``... in llm.c's format, uint16
(uint32 for vocabularies over 65,536 tokens). ``manifest.json`` is written last, so a
directory without one is incomplete.

Resumable: the work in progress lives in ``OUT/.prepare/`` (partial shards, appended to, and
``state.json``, saved after every finished shard). Run the same command again after a crash
or a kill and it continues from the last saved state; the output is byte-identical to an
uninterrupted run. The output depends only on the inputs and options, never on the number
of workers or on interruptions. One prepare at a time per output folder: it holds the folder's
lock (lock.py) for its whole run, and a second is refused in one line before it reads the folder.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import UserError
from ..fileio import check_folder_path, file_sha256, replace_dir, write_atomic, write_json_atomic
from ..layout import LOCK_FILE
from ..lock import FolderLock
from ..progress import PrepareStatus, live_wanted
from ..tokenizer import COPY_DIR, VOCAB_SHA256, Tokenizer, copy_folder, encoding_identity, get_tokenizer, load_tokenizer
from .shards import MANIFEST, SHARD_SUFFIXES, VERSION, VERSION_U32, load_manifest, read_shard, write_shard
from .sources import (
    DOC_SPLITS,
    Chunk,
    HubSource,
    chunk_texts,
    expand_inputs,
    file_chunks,
    file_format,
    file_identity,
    hub_chunks,
    tokenize_texts,
)

WORK_DIR = ".prepare"
VAL_BLOCK = 1 << 20  # val_fraction is applied per block of this many stream tokens
_CHECKPOINT_TOKENS = 32 * VAL_BLOCK  # also save the state this often between shards
_STATE_VERSION = 1
STATE_FILE = "state.json"  # in WORK_DIR


# --- tokenizers ----------------------------------------------------------------------------


def resolve_tokenizer(spec):
    """``"gpt2"`` (shipped, offline), a tokenizer folder (``gpt2lab tokenizer train``), a Tokenizer, another
    tiktoken encoding name, or a ``tiktoken.Encoding``: its tiktoken Encoding."""
    return _resolve(spec)[0]


def _resolve(spec):
    """(tiktoken Encoding, the tokenizer folder or None)."""
    import tiktoken

    if isinstance(spec, tiktoken.Encoding):
        return spec, None
    if isinstance(spec, Tokenizer) or spec == "gpt2" or Path(os.fspath(spec)).expanduser().exists():
        tok = load_tokenizer(spec)
        return tok.enc, tok.folder
    try:
        return tiktoken.get_encoding(spec), None
    except Exception as e:  # unknown name, or no network to download its vocabulary
        raise UserError(f"tokenizer {spec!r} is not available ({e}); use 'gpt2' (shipped), a folder made by "
                        "`gpt2lab tokenizer train`, or a tiktoken name") from None


def check_data_tokenizer(data_dir, manifest: dict | None, tok: Tokenizer, what: str) -> None:
    """UserError naming both when ``data_dir`` (its manifest) was prepared with another tokenizer than ``tok``."""
    if not manifest or not isinstance(manifest.get("vocab_sha256"), str) or manifest["vocab_sha256"] == tok.sha256:
        return  # no manifest (build-nanogpt shards): nothing to compare
    made = manifest.get("tokenizer_path") or manifest.get("tokenizer")
    size = manifest.get("vocab_size")
    raise UserError(f"tokenizer mismatch: {data_dir} was prepared with tokenizer {made!r} "
                    f"({size if not isinstance(size, int) else f'{size:,}'} tokens, sha256 "
                    f"{manifest['vocab_sha256'][:12]}) but {what} is {tok.describe()}; use the same tokenizer for "
                    f"both, or prepare the data again with --tokenizer {tok.spec}")


def vocab_sha256(enc) -> str:
    """The tokenizer's identity (tokenizer.identity: its ranks, pattern and special tokens): names it exactly.

    For GPT-2 this is the sha256 of the shipped ``gpt2.tiktoken`` file.
    """
    if enc.name == "gpt2" and enc is get_tokenizer():
        return VOCAB_SHA256
    return encoding_identity(enc)


# --- the job and its state -----------------------------------------------------------------


@dataclasses.dataclass
class DocCounts:
    """Documents read: kept (tokenized), empty (skipped), invalid_utf8 (kept, the bad bytes replaced)."""

    kept: int = 0
    empty: int = 0
    invalid_utf8: int = 0

    def __add__(self, other: DocCounts) -> DocCounts:
        return DocCounts(self.kept + other.kept, self.empty + other.empty, self.invalid_utf8 + other.invalid_utf8)

    def to_list(self) -> list[int]:
        """[kept, empty, invalid_utf8]: the form of state.json (and of sources.chunk_texts' counts)."""
        return [self.kept, self.empty, self.invalid_utf8]


@dataclasses.dataclass(frozen=True)
class PrepareJob:
    """One prepare, its options checked (:meth:`create`), and what follows from them."""

    out_dir: Path
    files: list[Path] | None  # the inputs, globs expanded; None for a hub dataset
    hub: HubSource | None
    enc: Any  # the tiktoken Encoding
    tok_folder: Path | None  # the tokenizer's folder (None for GPT-2's and other tiktoken encodings)
    val_fraction: float | None  # exactly one of val_fraction and val_tokens is set (see the module doc)
    val_tokens: int | None
    shard_tokens: int
    doc_split: str
    text_key: str
    max_docs: int | None
    max_tokens: int | None
    workers: int

    @classmethod
    def create(cls, inputs, out_dir, *, hub, val_fraction, val_tokens, shard_tokens, doc_split, text_key, tokenizer,
               max_docs, max_tokens, workers) -> PrepareJob:
        """prepare()'s arguments checked (a UserError names the first wrong one), with their defaults filled in."""
        if (inputs is None) == (hub is None):
            raise UserError("give either input files or a hub dataset to prepare, not both or neither")
        if doc_split not in DOC_SPLITS:
            raise UserError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
        val_fraction, val_tokens = _val_split(val_fraction, val_tokens, shard_tokens, hub is not None)
        for name, value in (("shard_tokens", shard_tokens), ("max_docs", max_docs), ("max_tokens", max_tokens)):
            if value is not None and int(value) < 1:
                raise UserError(f"{name} must be a positive number, got {value}")
        workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
        if workers < 1:
            raise UserError(f"workers must be at least 1, got {workers}")
        enc, tok_folder = _resolve(tokenizer)
        files = expand_inputs(inputs) if hub is None else None
        out_dir = Path(out_dir)
        check_folder_path(out_dir, "output")
        return cls(out_dir=out_dir, files=files, hub=hub, enc=enc, tok_folder=tok_folder, val_fraction=val_fraction,
                   val_tokens=val_tokens, shard_tokens=int(shard_tokens), doc_split=doc_split, text_key=text_key,
                   max_docs=max_docs, max_tokens=max_tokens, workers=workers)

    @property
    def work_dir(self) -> Path:
        """Where the work in progress lives: partial shards, the pending tokens and state.json."""
        return self.out_dir / WORK_DIR

    @property
    def dtype(self) -> np.dtype:
        """The shards' token type: ids up to 65,535 fit in uint16 (shard version 1), larger ones need uint32."""
        return np.dtype(np.uint16 if self.enc.n_vocab <= 1 << 16 else np.uint32)

    @property
    def options(self) -> dict:
        """The options as the manifest records them (and as state.json's identity compares them)."""
        return {
            "val_fraction": self.val_fraction, "val_tokens": self.val_tokens,
            "shard_tokens": self.shard_tokens, "doc_split": self.doc_split, "text_key": self.text_key,
            "max_docs": self.max_docs, "max_tokens": self.max_tokens,
        }

    @property
    def source(self) -> dict:
        return {"files": [str(f) for f in self.files]} if self.files is not None else {"hub": self.hub.describe()}

    @functools.cached_property
    def identity(self) -> dict:
        """What makes two prepares the same job: only the same job continues an interrupted one."""
        return {
            "tokenizer": self.enc.name, "vocab_sha256": vocab_sha256(self.enc), "source": self.source,
            "options": self.options, "inputs": file_identity(self.files) if self.files is not None else None,
        }


def _val_split(val_fraction, val_tokens, shard_tokens, from_hub: bool) -> tuple[float | None, int | None]:
    """(val_fraction, val_tokens), checked, one of them None: the default is the first shard for a hub dataset
    (as build-nanogpt does with FineWeb-Edu), a tenth for local files."""
    if val_tokens is not None and val_fraction is not None:
        raise UserError("give val_tokens or val_fraction, not both")
    if val_tokens is None and val_fraction is None:
        if from_hub:
            val_tokens = int(shard_tokens)
        else:
            val_fraction = 0.1
    if val_fraction is not None and not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_tokens is not None and int(val_tokens) < 0:
        raise UserError(f"val_tokens must be >= 0, got {val_tokens}")
    return (None if val_fraction is None else float(val_fraction)), (None if val_tokens is None else int(val_tokens))


@dataclasses.dataclass
class PrepareState:
    """How far a prepare got: saved as OUT/.prepare/state.json after every finished shard (and every
    _CHECKPOINT_TOKENS tokens), with the job's identity, so that running the same job again continues it."""

    position: list  # where the next chunk starts: [file index, item in it] (local files) or [rows] (hub)
    docs_read: int  # documents (items) taken from the inputs, for max_docs
    counts: DocCounts
    router_position: int  # stream tokens routed to the two splits
    pending: dict | None  # {"file", "tokens"}: the tokens of the val_fraction block in progress, in work_dir
    writers: dict  # each split's shard writer (_ShardWriter.state)

    def to_json(self, identity: dict) -> dict:
        return {
            "version": _STATE_VERSION, "identity": identity, "position": self.position, "docs_read": self.docs_read,
            "counts": self.counts.to_list(), "router_position": self.router_position, "pending": self.pending,
            "writers": self.writers,
        }

    @classmethod
    def from_json(cls, raw: dict) -> PrepareState:
        return cls(position=raw["position"], docs_read=raw["docs_read"], counts=DocCounts(*raw["counts"]),
                   router_position=raw["router_position"], pending=raw["pending"], writers=raw["writers"])


def _load_state(out_dir: Path, identity: dict) -> PrepareState | None:
    """The saved state of an interrupted prepare of the same job in out_dir, if there is one."""
    path = out_dir / WORK_DIR / STATE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); pass --overwrite to start over") from None
    damaged = UserError(f"{path}: not the state gpt2lab writes; pass --overwrite to start over")
    if not isinstance(raw, dict) or not isinstance(raw.get("identity", {}), dict):
        raise damaged
    old = raw.get("identity", {})
    if old != identity:
        keys = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        raise UserError(
            f"{out_dir} holds an interrupted prepare whose {', '.join(keys)} differ from this command's (an input "
            "file changed since, or other options were given): pass --overwrite to start over with this command"
        )
    try:
        return PrepareState.from_json(raw)
    except (KeyError, TypeError):
        raise damaged from None


# --- the worker side -----------------------------------------------------------------------

_worker: dict = {}  # in each pool process: the encoding and token dtype, set once by the pool initializer


def _init_worker(enc, dtype) -> None:
    _worker["enc"], _worker["dtype"] = enc, dtype
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops the pool


class _Tokenized(NamedTuple):
    """A chunk tokenized (by a worker)."""

    tokens: np.ndarray  # its token stream: EOT doc1 EOT doc2 ...
    counts: DocCounts
    position: list  # where the inputs stand after it
    items: int  # its documents, empty ones included
    nbytes: int  # bytes (str: characters) of text read


def _work(chunk: Chunk, enc, dtype) -> _Tokenized:
    raw = [0, 0, 0]  # chunk_texts adds its documents to [kept, empty, invalid_utf8]
    texts = chunk_texts(chunk, raw)
    nbytes = sum(len(x) for x in chunk.items if x is not None)
    return _Tokenized(tokenize_texts(enc, texts, dtype), DocCounts(*raw), chunk.position, len(chunk.items), nbytes)


def _pool_work(chunk: Chunk) -> _Tokenized:
    return _work(chunk, _worker["enc"], _worker["dtype"])


def _tokenized(chunks: Iterator[Chunk], enc, dtype, workers: int) -> Iterator[_Tokenized]:
    """Tokenize chunks in ``workers`` processes, in input order, with bounded read-ahead."""
    if workers <= 1:
        for chunk in chunks:
            yield _work(chunk, enc, dtype)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(enc, dtype)) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_pool_work, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --- writing -------------------------------------------------------------------------------


class _ShardWriter:
    """Cuts one split's tokens into shards; the shard in progress is a file appended to."""

    def __init__(self, out_dir: Path, work_dir: Path, split: str, shard_tokens: int, dtype, log):
        self.out_dir, self.work_dir, self.split = out_dir, work_dir, split
        self.shard_tokens, self.dtype, self.log = shard_tokens, np.dtype(dtype), log
        self.version = VERSION if self.dtype.itemsize == 2 else VERSION_U32
        self.index, self.count, self.shards = 0, 0, []
        self._file = None
        self.finished = 0  # shards finished since the last checkpoint

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self.count

    def _part(self, index: int) -> Path:
        return self.work_dir / f"{self.split}-{index:06d}.part"

    def add(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._file is None:
                self._file = open(self._part(self.index), "ab")  # noqa: SIM115 (open across calls; closed by close)
            take = min(self.shard_tokens - self.count, len(tokens))
            self._file.write(tokens[:take].tobytes())
            self.count += take
            tokens = tokens[take:]
            if self.count == self.shard_tokens:
                self._finish_shard()

    def _finish_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        tokens = np.fromfile(self._part(self.index), dtype=self.dtype)
        assert len(tokens) == self.count, (self._part(self.index), len(tokens), self.count)
        name = f"{self.split}_{self.index:06d}.bin"
        digest = write_shard(self.out_dir / name, tokens, version=self.version)
        self.shards.append({"name": name, "split": self.split, "tokens": self.count, "sha256": digest})
        self.log(f"wrote {name}: {self.count:,} tokens")
        self.index, self.count = self.index + 1, 0
        self.finished += 1

    def close(self) -> None:
        if self.count:
            self._finish_shard()

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def state(self) -> dict:
        return {"index": self.index, "count": self.count, "shards": list(self.shards)}

    def restore(self, state: dict) -> None:
        self.index, self.count, self.shards = state["index"], state["count"], list(state["shards"])
        part = self._part(self.index)
        if self.count:
            size = part.stat().st_size if part.is_file() else 0
            need = self.count * self.dtype.itemsize
            if size < need:
                raise UserError(f"{part}: holds {size} bytes, the saved state needs {need}; "
                                "the interrupted prepare cannot continue, pass --overwrite to start over")
            with open(part, "r+b") as f:
                f.truncate(need)
        else:
            part.unlink(missing_ok=True)
        # Shards finished after the saved state are made again, identically.
        for p in self.out_dir.glob(f"{self.split}_*.bin"):
            number = p.stem.rsplit("_", 1)[1]
            if number.isdigit() and int(number) >= self.index:
                p.unlink()
        self.drop_old_parts()

    def drop_old_parts(self) -> None:
        _drop_except(self.work_dir, f"{self.split}-*.part", self._part(self.index).name)


class _Router:
    """Sends each stream token to the validation or the training writer (see the module doc)."""

    def __init__(self, val: _ShardWriter, train: _ShardWriter, val_tokens: int | None, val_fraction: float):
        self.val, self.train = val, train
        self.val_tokens, self.val_fraction = val_tokens, val_fraction
        self.position = 0  # stream tokens seen
        self.pending: list[np.ndarray] = []  # the current block (val_fraction mode)
        self.pending_count = 0

    def add(self, tokens: np.ndarray) -> None:
        self.position += len(tokens)
        if self.val_tokens is not None:
            n_val = max(0, min(len(tokens), self.val_tokens - (self.position - len(tokens))))
            self.val.add(tokens[:n_val])
            if n_val and self.position >= self.val_tokens:
                self.val.close()  # the validation split is complete: write its last shard now, not at the end
            self.train.add(tokens[n_val:])
            return
        if self.val_fraction == 0:
            self.train.add(tokens)
            return
        self.pending.append(tokens)
        self.pending_count += len(tokens)
        if self.pending_count >= VAL_BLOCK:
            rest = np.concatenate(self.pending)
            while len(rest) >= VAL_BLOCK:
                self._route(rest[:VAL_BLOCK])
                rest = rest[VAL_BLOCK:]
            self.pending, self.pending_count = ([rest] if len(rest) else []), len(rest)

    def _route(self, block: np.ndarray) -> None:
        n_val = int(round(self.val_fraction * len(block)))
        self.val.add(block[:n_val])
        self.train.add(block[n_val:])

    def finish(self) -> None:
        if self.pending_count:
            self._route(np.concatenate(self.pending))
        self.pending, self.pending_count = [], 0

    def pending_tokens(self, dtype) -> np.ndarray:
        return np.concatenate(self.pending) if self.pending else np.empty(0, dtype=dtype)

    def restore(self, position: int, pending: np.ndarray) -> None:
        """Continue after ``position`` stream tokens, with ``pending`` the tokens of the block in progress."""
        self.position = position
        self.pending, self.pending_count = ([pending] if len(pending) else []), len(pending)


# --- the output directory ------------------------------------------------------------------


def _old_outputs(out_dir: Path) -> list[Path]:
    if not out_dir.is_dir():
        return []
    return [p for p in out_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix in SHARD_SUFFIXES]


def _clear(out_dir: Path) -> None:
    for p in _old_outputs(out_dir):
        p.unlink()
    (out_dir / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)
    shutil.rmtree(out_dir / COPY_DIR, ignore_errors=True)
    for p in out_dir.glob(".tmp-*"):  # left by a write killed half way
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _check_tokenizer(out_dir: Path, identity: dict) -> None:
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        return
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    if isinstance(old, dict) and (old.get("tokenizer"), old.get("vocab_sha256")) != (
        identity["tokenizer"], identity["vocab_sha256"]
    ):
        raise UserError(
            f"{manifest}: {out_dir} holds shards made with a different tokenizer "
            f"({old.get('tokenizer')!r}); choose another output directory or delete it"
        )


# --- prepare -------------------------------------------------------------------------------


def prepare(
    inputs=None,
    out_dir="data",
    *,
    hub: HubSource | None = None,
    val_fraction: float | None = None,
    val_tokens: int | None = None,
    shard_tokens: int = 100_000_000,
    doc_split: str = "file",
    text_key: str = "text",
    tokenizer="gpt2",
    max_docs: int | None = None,
    max_tokens: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Tokenize local .txt/.jsonl/.parquet files (globs allowed; .gz/.zst/.bz2/.xz ok) or a Hugging Face hub dataset
    (streamed) with the GPT-2 BPE (or another tokenizer) into llm.c-compatible .bin shards (val_*.bin, train_*.bin)
    plus manifest.json. An interrupted prepare continues when it is run again with the same inputs and options.

    Returns the manifest; ``log`` gets the progress. ``gpt2lab prepare`` takes these arguments as its options.

    Args:
        inputs: input files or globs (txt/jsonl/parquet, compressed too)
        out_dir: output folder for the shards
        hub: the hub dataset to read instead of files (a HubSource)
        val_fraction: fraction of tokens for validation (default for local files: 0.1)
        val_tokens: the first N tokens are validation (default for a hub dataset: one shard)
        shard_tokens: tokens per shard
        doc_split: .txt files: one document per file, per line, or per blank-line block
        text_key: jsonl key / parquet or hub column holding the text
        tokenizer: gpt2 (shipped), a folder made by `gpt2lab tokenizer train`, or another tiktoken encoding name
            (downloaded by tiktoken)
        max_docs: stop after this many documents
        max_tokens: stop after this many tokens
        workers: tokenizer processes (default: cores, at most 8)
        overwrite: replace shards (or an interrupted prepare) in the output folder
    """
    job = PrepareJob.create(inputs, out_dir, hub=hub, val_fraction=val_fraction, val_tokens=val_tokens,
                            shard_tokens=shard_tokens, doc_split=doc_split, text_key=text_key, tokenizer=tokenizer,
                            max_docs=max_docs, max_tokens=max_tokens, workers=workers)
    # one prepare per folder, from before it reads the folder until its manifest is written (lock.py); a folder
    # the lock made goes again with it when nothing was written
    lock = FolderLock(job.out_dir / LOCK_FILE, "prepare")
    try:
        lock.acquire()
    except OSError as e:
        raise UserError(f"output {job.out_dir}: cannot write {e.filename or job.out_dir} ({e.strerror or e}); "
                        "choose a folder this user can write to") from None
    try:
        return _run_locked(job, overwrite, log)
    finally:
        lock.release()


def _run_locked(job: PrepareJob, overwrite: bool, log: Callable[[str], None]) -> dict:
    """The job, its folder locked: nothing to do when it is complete there, else continued or started anew."""
    if not overwrite and (done := _already_prepared(job)) is not None:
        log(f"{job.out_dir} already holds this prepare, complete ({done['tokens']['total']:,} tokens from the "
            "same inputs, unchanged, with the same options): nothing to do (--overwrite redoes it)")
        return done
    saved = _claim_output(job, overwrite)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    status = _status(job, log)
    try:
        return _Preparation(job, status, saved).run()
    except UserError:  # a bad input: before the first shard there is nothing worth continuing, so nothing is kept
        if saved is None and not _old_outputs(job.out_dir):
            _clear(job.out_dir)
        raise
    finally:
        status.close()


def _already_prepared(job: PrepareJob) -> dict | None:
    """The manifest of the same job finished in its folder before (the same inputs, unchanged, options and
    tokenizer; every shard there, of its size), else None."""
    try:
        manifest = load_manifest(job.out_dir)
        same = manifest is not None and not job.work_dir.exists() and all(
            manifest.get(k) == job.identity[k] for k in ("tokenizer", "vocab_sha256", "source", "options", "inputs"))
        return verify(job.out_dir, hashes=False) if same else None
    except UserError:  # a damaged folder: the usual checks below say what to do
        return None


def _claim_output(job: PrepareJob, overwrite: bool) -> PrepareState | None:
    """Make the output folder this job's: the saved state of this job's interrupted prepare to continue (None: start
    anew), after clearing the folder (``overwrite``) or refusing one that holds other shards."""
    _check_tokenizer(job.out_dir, job.identity)
    saved = None if overwrite else _load_state(job.out_dir, job.identity)
    if overwrite:
        _clear(job.out_dir)
    elif saved is None and (_old_outputs(job.out_dir) or (job.out_dir / MANIFEST).is_file()):
        raise UserError(
            f"{job.out_dir} already holds shards ({len(_old_outputs(job.out_dir))} files); pass --overwrite to "
            "replace them or choose another output directory"
        )
    return saved


def _status(job: PrepareJob, log: Callable[[str], None]) -> PrepareStatus:
    """The status: a live line on a terminal, else a line every 30 s; the ETA when the size is known (plain files)."""
    files = job.files
    plain = files is not None and all(file_format(f)[1] == "" and file_format(f)[0] != ".parquet" for f in files)
    return PrepareStatus(log, live_wanted("auto", log), sum(f.stat().st_size for f in files) if plain else None,
                         job.max_tokens)


class _Preparation:
    """One run of a job: tokenize the inputs, route the tokens into the val and train shard writers, save the
    state as it goes (continuing from ``saved``), then check the splits and write the manifest."""

    def __init__(self, job: PrepareJob, status: PrepareStatus, saved: PrepareState | None):
        self.job, self.status, self.log = job, status, status.write
        self.writers = {s: _ShardWriter(job.out_dir, job.work_dir, s, job.shard_tokens, job.dtype, self.log)
                        for s in ("val", "train")}
        self.router = _Router(self.writers["val"], self.writers["train"], job.val_tokens, job.val_fraction or 0.0)
        self.position: list = [0, 0] if job.files is not None else [0]  # see PrepareState
        self.docs_read = 0
        self.counts = DocCounts()
        if saved is not None:
            self._restore(saved)
        else:
            self._save()  # from now on, this folder holds a prepare that can be continued

    @property
    def shards(self) -> int:
        return sum(len(w.shards) for w in self.writers.values())

    def run(self) -> dict:
        job = self.job
        what = f"{len(job.files)} file(s)" if job.files is not None else f"hub dataset {job.hub.name}"
        self.log(f"tokenizing {what} with {job.workers} worker(s) into {job.out_dir}")
        start_tokens = self.router.position
        if job.max_tokens is None or self.router.position < job.max_tokens:
            self._tokenize(start_tokens)
        return self._finish(start_tokens)

    def _tokenize(self, start_tokens: int) -> None:
        """Tokenize and route the inputs from where the state stands, saving it after every finished shard."""
        job, router = self.job, self.router
        if job.files is not None:
            chunks = file_chunks(job.files, job.doc_split, job.text_key, start=tuple(self.position))
        else:
            chunks = hub_chunks(job.hub, job.text_key, skip=self.position[0])
        if job.max_docs is not None:
            chunks = _limit_docs(chunks, job.max_docs - self.docs_read)
        last_saved = router.position
        for done in _tokenized(chunks, job.enc, job.dtype, job.workers):
            self.position = done.position
            if job.max_tokens is not None and router.position + len(done.tokens) >= job.max_tokens:
                self._take_last(done.tokens[: job.max_tokens - router.position])
                break
            self.counts += done.counts
            self.docs_read += done.items
            router.add(done.tokens)
            if any(w.finished for w in self.writers.values()) or router.position - last_saved >= _CHECKPOINT_TOKENS:
                self._save()
                last_saved = router.position
            self.status.update(self.docs_read, router.position, start_tokens, done.nbytes, self.shards)

    def _take_last(self, part: np.ndarray) -> None:
        """The tokens up to max_tokens. Its documents are those that start in it (each with <|endoftext|>); their
        empty and invalid-UTF-8 counts cannot be split, and are left out."""
        self.router.add(part)
        n_docs = int(np.count_nonzero(part == self.job.enc.eot_token))
        self.counts.kept += n_docs
        self.docs_read += n_docs

    def _finish(self, start_tokens: int) -> dict:
        """The last shards and the manifest, once the splits are checked; the work folder goes."""
        job, total = self.job, self.router.position
        if total == 0:
            _clear(job.out_dir)
            raise UserError(f"inputs hold no text ({self.counts.empty} empty documents); check the files"
                            + ("" if job.doc_split == "file" else f" and --doc-split {job.doc_split}"))
        self.router.finish()
        n_val = self.writers["val"].tokens
        self._check_splits(n_val, total)
        for w in self.writers.values():
            w.close()
        self.status.update(self.docs_read, total, start_tokens, 0, self.shards, force=True)
        manifest = self._manifest(n_val, total)
        if job.tok_folder is not None:  # the data keeps its tokenizer, so training finds it (shards.data_tokenizer)
            tmp = job.out_dir / f".tmp-{COPY_DIR}"
            shutil.rmtree(tmp, ignore_errors=True)
            copy_folder(load_tokenizer(job.tok_folder), tmp)
            replace_dir(tmp, job.out_dir / COPY_DIR, job.out_dir / f".old-{COPY_DIR}")
        write_json_atomic(job.out_dir / MANIFEST, manifest)
        shutil.rmtree(job.work_dir, ignore_errors=True)
        self.log(f"done: {total:,} tokens from {self.counts.kept:,} documents ({n_val:,} val, {total - n_val:,} "
                 f"train) in {job.out_dir}")
        if self.counts.empty or self.counts.invalid_utf8:
            self.log(f"skipped {self.counts.empty} empty documents; {self.counts.invalid_utf8} had invalid UTF-8 "
                     "(replaced)")
        return manifest

    def _check_splits(self, n_val: int, total: int) -> None:
        """Refuse (and clear the folder) when a split asked for is empty; warn when none was asked for."""
        split = self.job.val_fraction or self.job.val_tokens
        problem = None
        if split and n_val == 0:
            problem = f"only {total} tokens: too few for a validation split of {split}; " \
                      "use more text or a larger --val-fraction"
        elif n_val >= total:
            problem = f"only {total} tokens: nothing left for training after the validation split of " \
                      f"{split}; use more text or a smaller --val-fraction or --val-tokens"
        if problem:
            _clear(self.job.out_dir)
            raise UserError(problem)
        if n_val == 0:
            self.log("warning: the validation split is empty (val_fraction/val_tokens 0), so no validation shards "
                     "are written")

    def _manifest(self, n_val: int, total: int) -> dict:
        job = self.job
        return {
            "format": "gpt2lab-shards",
            "format_version": 2,
            "tokenizer": job.enc.name,
            **({"tokenizer_path": str(job.tok_folder)} if job.tok_folder is not None else {}),
            "vocab_sha256": job.identity["vocab_sha256"],
            "vocab_size": job.enc.n_vocab,
            "token_dtype": job.dtype.name,
            "eot_token": job.enc.eot_token,
            "eot_position": "before_each_document",
            "source": job.source,
            "options": job.options,
            "inputs": job.identity["inputs"],  # each input file's name, size and time: a re-run sees they are unchanged
            "documents": dataclasses.asdict(self.counts),  # kept, empty, invalid_utf8
            "tokens": {"val": n_val, "train": total - n_val, "total": total},
            "shards": self.writers["val"].shards + self.writers["train"].shards,
        }

    def _save(self) -> None:
        """Save the state: the partial shards synced, the pending block in a new file (the previous state's stays
        valid until state.json is replaced), then state.json; what the new state no longer names goes."""
        job, router = self.job, self.router
        for w in self.writers.values():
            w.sync()
        tokens, pending = router.pending_tokens(job.dtype), None
        if len(tokens):
            pending = {"file": f"pending-{router.position:015d}.bin", "tokens": len(tokens)}
            write_atomic(job.work_dir / pending["file"], tokens.tobytes())
        state = PrepareState(position=self.position, docs_read=self.docs_read, counts=self.counts,
                             router_position=router.position, pending=pending,
                             writers={s: w.state() for s, w in self.writers.items()})
        write_json_atomic(job.work_dir / STATE_FILE, state.to_json(job.identity))
        _drop_except(job.work_dir, "pending-*.bin", pending and pending["file"])
        for w in self.writers.values():
            w.drop_old_parts()
            w.finished = 0

    def _restore(self, saved: PrepareState) -> None:
        """Continue from ``saved``: the writers, the router and its pending block, the position in the inputs."""
        job = self.job
        for d in (job.out_dir, job.work_dir):  # temp files of writes that were killed half way
            _drop_except(d, ".tmp-*", None)
        for s, w in self.writers.items():
            w.restore(saved.writers[s])
        pending = np.empty(0, job.dtype)
        if saved.pending:
            path = job.work_dir / saved.pending["file"]
            pending = np.fromfile(path, dtype=job.dtype) if path.is_file() else pending
            if len(pending) != saved.pending["tokens"]:
                raise UserError(f"{path} does not match the saved state; pass --overwrite to start over")
        _drop_except(job.work_dir, "pending-*.bin", saved.pending and saved.pending["file"])
        self.router.restore(saved.router_position, pending)
        self.position, self.docs_read, self.counts = saved.position, saved.docs_read, saved.counts
        self.log(f"continuing an interrupted prepare in {job.out_dir}: {self.router.position:,} tokens done, "
                 f"{self.shards} shards written")


def _drop_except(directory: Path, pattern: str, keep: str | None) -> None:
    for p in directory.glob(pattern):
        if p.name != keep:
            p.unlink()


def _limit_docs(chunks: Iterator[Chunk], left: int) -> Iterator[Chunk]:
    for chunk in chunks:
        if left <= 0:
            return
        if len(chunk.items) > left:
            items = chunk.items[:left]
            lines = chunk.lines[:left] if chunk.lines is not None else None
            chunk = chunk._replace(items=items, lines=lines)
        left -= len(chunk.items)
        yield chunk


# --- checking ------------------------------------------------------------------------------



def verify(out_dir, names=None, hashes: bool = True) -> dict:
    """Check shards of ``out_dir`` (all, or those in ``names``) against the manifest; return it.

    Token counts are always checked (cheap); sha256 too unless ``hashes`` is False.
    """
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)
    if manifest is None:
        raise UserError(f"{out_dir / MANIFEST} not found; run gpt2lab prepare")
    listed = {s["name"]: s for s in manifest["shards"]}
    for name in names if names is not None else listed:
        p = out_dir / name
        shard = listed.get(name)
        if shard is None:
            raise UserError(f"{p}: not listed in {out_dir / MANIFEST}; remove it or re-run gpt2lab prepare")
        if len(read_shard(p)) != shard["tokens"]:
            raise UserError(f"{p}: token count differs from {out_dir / MANIFEST}; re-run gpt2lab prepare")
        if hashes and file_sha256(p) != shard["sha256"]:
            raise UserError(f"{p}: sha256 differs from {out_dir / MANIFEST}: the file is damaged or was changed; "
                            "re-run gpt2lab prepare (or skip the check with data.verify=false)")
    return manifest


__all__ = ["prepare", "verify", "load_manifest", "resolve_tokenizer", "check_data_tokenizer", "vocab_sha256",
           "HubSource", "MANIFEST", "VAL_BLOCK", "expand_inputs", "PrepareJob", "PrepareState", "DocCounts"]

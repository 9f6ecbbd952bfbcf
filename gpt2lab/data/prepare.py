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
of workers or on interruptions.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import UserError
from ..fileio import check_folder_path, file_sha256, write_atomic, write_json_atomic
from ..tokenizer import VOCAB_SHA256, Tokenizer, get_tokenizer, load_tokenizer
from .shards import MANIFEST, SHARD_SUFFIXES, VERSION, VERSION_U32, load_manifest, read_shard, write_shard
from .sources import (
    DOC_SPLITS, Chunk, HubSource, chunk_texts, expand_inputs, file_chunks, file_format, file_identity, hub_chunks,
    tokenize_texts,
)
from ..progress import PrepareStatus, live_wanted

WORK_DIR = ".prepare"
VAL_BLOCK = 1 << 20  # val_fraction is applied per block of this many stream tokens
_CHECKPOINT_TOKENS = 32 * VAL_BLOCK  # also save the state this often between shards
_STATE_VERSION = 1


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
    """sha256 of the vocabulary in tiktoken's file format (base64 token, rank): names the tokenizer exactly.

    For GPT-2 this is the sha256 of the shipped ``gpt2.tiktoken`` file.
    """
    if enc.name == "gpt2" and enc is get_tokenizer():
        return VOCAB_SHA256
    import base64

    special = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    h = hashlib.sha256()
    for rank in range(enc.n_vocab):
        if rank in special:
            continue
        try:
            token = enc.decode_single_token_bytes(rank)
        except KeyError:  # a gap in the ranks
            continue
        h.update(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    return h.hexdigest()


# --- the worker side -----------------------------------------------------------------------

_worker: dict = {}  # in each pool process: the encoding and token dtype, set once by the pool initializer


def _init_worker(enc, dtype) -> None:
    _worker["enc"], _worker["dtype"] = enc, dtype
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops the pool


def _work(chunk: Chunk, enc, dtype):
    counts = [0, 0, 0]
    texts = chunk_texts(chunk, counts)
    nbytes = sum(len(x) for x in chunk.items if x is not None)  # bytes (str: characters) of text read
    return tokenize_texts(enc, texts, dtype), counts, chunk.position, len(chunk.items), nbytes


def _pool_work(chunk: Chunk):
    return _work(chunk, _worker["enc"], _worker["dtype"])


def _tokenized(chunks: Iterator[Chunk], enc, dtype, workers: int) -> Iterator[tuple]:
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
                self._file = open(self._part(self.index), "ab")
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
    for p in out_dir.glob(".tmp-*"):  # left by a write killed half way
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


def _load_state(out_dir: Path, identity: dict) -> dict | None:
    """The saved state of an interrupted prepare of the same job in out_dir, if there is one."""
    path = out_dir / WORK_DIR / "state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); pass --overwrite to start over") from None
    old = state.get("identity", {})
    if old != identity:
        keys = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        raise UserError(
            f"{out_dir} holds an interrupted prepare whose {', '.join(keys)} differ from this command's (an input "
            "file changed since, or other options were given): pass --overwrite to start over with this command"
        )
    return state


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
    """Tokenize ``inputs`` (files and globs) or ``hub`` into shards in ``out_dir``; return the manifest.

    A prepare interrupted in ``out_dir`` is continued when the same job is run again.
    """
    if (inputs is None) == (hub is None):
        raise UserError("give either input files or a hub dataset to prepare, not both or neither")
    if doc_split not in DOC_SPLITS:
        raise UserError(f"doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    if val_tokens is not None and val_fraction is not None:
        raise UserError("give val_tokens or val_fraction, not both")
    if val_tokens is None and val_fraction is None:
        if hub is not None:
            val_tokens = int(shard_tokens)  # the first shard, as build-nanogpt does with FineWeb-Edu
        else:
            val_fraction = 0.1
    if val_fraction is not None and not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_tokens is not None and int(val_tokens) < 0:
        raise UserError(f"val_tokens must be >= 0, got {val_tokens}")
    for name, value in (("shard_tokens", shard_tokens), ("max_docs", max_docs), ("max_tokens", max_tokens)):
        if value is not None and int(value) < 1:
            raise UserError(f"{name} must be a positive number, got {value}")
    shard_tokens = int(shard_tokens)
    workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    enc, tok_folder = _resolve(tokenizer)
    dtype = np.uint16 if enc.n_vocab <= 1 << 16 else np.uint32  # ids up to 65,535 fit in uint16 (shard version 1)
    files = expand_inputs(inputs) if hub is None else None
    out_dir = Path(out_dir)
    check_folder_path(out_dir, "output")

    options = {
        "val_fraction": None if val_fraction is None else float(val_fraction),
        "val_tokens": None if val_tokens is None else int(val_tokens),
        "shard_tokens": shard_tokens, "doc_split": doc_split, "text_key": text_key,
        "max_docs": max_docs, "max_tokens": max_tokens,
    }
    source = {"files": [str(f) for f in files]} if files is not None else {"hub": hub.describe()}
    identity = {
        "tokenizer": enc.name, "vocab_sha256": vocab_sha256(enc), "source": source, "options": options,
        "inputs": file_identity(files) if files is not None else None,
    }
    _check_tokenizer(out_dir, identity)
    state = None if overwrite else _load_state(out_dir, identity)
    if overwrite:
        _clear(out_dir)
    elif state is None and (_old_outputs(out_dir) or (out_dir / MANIFEST).is_file()):
        raise UserError(
            f"{out_dir} already holds shards ({len(_old_outputs(out_dir))} files); pass --overwrite to "
            "replace them or choose another output directory"
        )
    work_dir = out_dir / WORK_DIR
    new_dir = not out_dir.exists()
    work_dir.mkdir(parents=True, exist_ok=True)

    # the status: a live line on a terminal, else a line every 30 s; the ETA when the size is known
    plain = files is not None and all(file_format(f)[1] == "" and file_format(f)[0] != ".parquet" for f in files)
    status = PrepareStatus(log, live_wanted("auto", log), sum(f.stat().st_size for f in files) if plain else None,
                           max_tokens)
    log = status.write
    try:
        return _run(status, log, files, hub, out_dir, work_dir, enc, dtype, identity, options, state, source, workers,
                    shard_tokens, doc_split, text_key, max_docs, max_tokens, val_fraction, val_tokens, tok_folder)
    except UserError:  # a bad input: before the first shard there is nothing worth continuing, so nothing is kept
        if state is None and not _old_outputs(out_dir):
            _clear(out_dir)
            if new_dir and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise
    finally:
        status.close()


def _run(status, log, files, hub, out_dir, work_dir, enc, dtype, identity, options, state, source, workers,
         shard_tokens, doc_split, text_key, max_docs, max_tokens, val_fraction, val_tokens, tok_folder) -> dict:
    """prepare()'s work once the options are checked: tokenize, write shards and the manifest."""
    writers = {s: _ShardWriter(out_dir, work_dir, s, shard_tokens, dtype, log) for s in ("val", "train")}
    router = _Router(writers["val"], writers["train"], options["val_tokens"], options["val_fraction"] or 0.0)
    counts, docs_read, position = [0, 0, 0], 0, [0, 0] if files is not None else [0]
    if state is not None:
        for d in (out_dir, work_dir):  # temp files of writes that were killed half way
            _drop_except(d, ".tmp-*", None)
        for s, w in writers.items():
            w.restore(state["writers"][s])
        router.position = state["router_position"]
        pending = np.empty(0, dtype)
        if state["pending"]:
            path = work_dir / state["pending"]["file"]
            pending = np.fromfile(path, dtype=dtype) if path.is_file() else pending
            if len(pending) != state["pending"]["tokens"]:
                raise UserError(f"{path} does not match the saved state; pass --overwrite to start over")
        _drop_except(work_dir, "pending-*.bin", state["pending"] and state["pending"]["file"])
        router.pending, router.pending_count = ([pending] if len(pending) else []), len(pending)
        counts, docs_read, position = state["counts"], state["docs_read"], state["position"]
        log(f"continuing an interrupted prepare in {out_dir}: {router.position:,} tokens done, "
            f"{sum(len(w.shards) for w in writers.values())} shards written")

    def save_state() -> None:
        for w in writers.values():
            w.sync()
        pending, saved = router.pending_tokens(dtype), None
        if len(pending):  # a new file each time: the previous state's one stays valid until the state is replaced
            saved = {"file": f"pending-{router.position:015d}.bin", "tokens": len(pending)}
            write_atomic(work_dir / saved["file"], pending.tobytes())
        write_json_atomic(work_dir / "state.json", {
            "version": _STATE_VERSION, "identity": identity, "position": position, "docs_read": docs_read,
            "counts": counts, "router_position": router.position, "pending": saved,
            "writers": {s: w.state() for s, w in writers.items()},
        })
        _drop_except(work_dir, "pending-*.bin", saved and saved["file"])
        for w in writers.values():
            w.drop_old_parts()
            w.finished = 0

    if state is None:
        save_state()  # from now on, this folder holds a prepare that can be continued
    what = f"{len(files)} file(s)" if files is not None else f"hub dataset {hub.name}"
    log(f"tokenizing {what} with {workers} worker(s) into {out_dir}")
    if files is not None:
        chunks = file_chunks(files, doc_split, text_key, start=tuple(position))
    else:
        chunks = hub_chunks(hub, text_key, skip=position[0])
    if max_docs is not None:
        chunks = _limit_docs(chunks, max_docs - docs_read)
    last_ckpt, start_tokens = router.position, router.position
    done = max_tokens is not None and router.position >= max_tokens
    if not done:
        for tokens, chunk_counts, position, n_docs, nbytes in _tokenized(chunks, enc, dtype, workers):
            if max_tokens is not None and router.position + len(tokens) >= max_tokens:
                part = tokens[: max_tokens - router.position]
                router.add(part)
                # the documents of the part kept: each starts with <|endoftext|> (its empty and
                # invalid-UTF-8 counts cannot be split, and are left out)
                n_docs = int(np.count_nonzero(part == enc.eot_token))
                counts[0] += n_docs
                docs_read += n_docs
                break
            counts = [a + b for a, b in zip(counts, chunk_counts)]
            docs_read += n_docs
            router.add(tokens)
            if any(w.finished for w in writers.values()) or router.position - last_ckpt >= _CHECKPOINT_TOKENS:
                save_state()
                last_ckpt = router.position
            status.update(docs_read, router.position, start_tokens, nbytes,
                          sum(len(w.shards) for w in writers.values()))

    total = router.position
    if total == 0:
        _clear(out_dir)
        raise UserError(
            f"inputs hold no text ({counts[1]} empty documents); check the files"
            + ("" if doc_split == "file" else f" and doc_split={doc_split!r}")
        )
    router.finish()
    n_val = writers["val"].tokens
    problem = None
    if (options["val_fraction"] or options["val_tokens"]) and n_val == 0:
        problem = f"only {total} tokens: too few for a validation split of {val_fraction or val_tokens}; " \
                  "use more text or a larger val_fraction"
    elif n_val >= total:
        problem = f"only {total} tokens: nothing left for training after the validation split of " \
                  f"{val_fraction or val_tokens}; use more text or a smaller val split"
    if problem:
        _clear(out_dir)
        raise UserError(problem)
    if n_val == 0:
        log("warning: the validation split is empty (val_fraction/val_tokens 0), so no validation shards are written")
    for w in writers.values():
        w.close()
    status.update(docs_read, total, start_tokens, 0, sum(len(w.shards) for w in writers.values()), force=True)

    manifest = {
        "format": "gpt2lab-shards",
        "format_version": 2,
        "tokenizer": enc.name,
        **({"tokenizer_path": str(tok_folder)} if tok_folder is not None else {}),
        "vocab_sha256": identity["vocab_sha256"],
        "vocab_size": enc.n_vocab,
        "token_dtype": np.dtype(dtype).name,
        "eot_token": enc.eot_token,
        "eot_position": "before_each_document",
        "source": source,
        "options": options,
        "documents": {"kept": counts[0], "empty": counts[1], "invalid_utf8": counts[2]},
        "tokens": {"val": n_val, "train": total - n_val, "total": total},
        "shards": writers["val"].shards + writers["train"].shards,
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    shutil.rmtree(work_dir, ignore_errors=True)
    log(f"done: {total:,} tokens from {counts[0]:,} documents ({n_val:,} val, {total - n_val:,} train) in {out_dir}")
    if counts[1] or counts[2]:
        log(f"skipped {counts[1]} empty documents; {counts[2]} had invalid UTF-8 (replaced)")
    return manifest


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


__all__ = ["prepare", "verify", "load_manifest", "resolve_tokenizer", "check_data_tokenizer", "vocab_sha256", "HubSource",
           "MANIFEST", "VAL_BLOCK", "expand_inputs"]

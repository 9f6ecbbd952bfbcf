"""Token shards on disk, in the format of llm.c (and readable from build-nanogpt).

A ``.bin`` shard is a header of 256 little-endian int32 followed by the tokens:

* ``header[0] = 20240520`` (:data:`MAGIC`)
* ``header[1] = 1`` (tokens are little-endian uint16) or ``2`` (little-endian uint32, only
  needed for vocabularies larger than 65536 tokens)
* ``header[2]`` = number of tokens; the rest of the header is zero.

build-nanogpt's ``.npy`` shards (a 1-D uint16 array saved with ``np.save``) are read too.
Shards are always memory-mapped read-only, so opening even a huge one costs nothing.
A folder written by ``gpt2lab prepare`` lists its shards in ``manifest.json`` (:func:`load_manifest`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fileio import temp_beside
from ..tokenizer import COPY_DIR, VOCAB_SHA256, load_tokenizer

MAGIC = 20240520
VERSION = 1  # uint16 tokens
VERSION_U32 = 2  # uint32 tokens
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SHARD_SUFFIXES = (".bin", ".npy")
MANIFEST = "manifest.json"  # a prepared folder's list of its shards (names, token counts, sha256)

_DTYPES = {VERSION: np.dtype("<u2"), VERSION_U32: np.dtype("<u4")}
_WRITE_CHUNK = 1 << 22  # tokens per write; bounds the memory of a copy from a memmap


def write_shard(path, tokens, *, version: int = VERSION) -> str:
    """Write ``tokens`` (a 1-D integer array) as a shard at ``path``; return its sha256.

    The file is written under a temporary name in the same directory, fsynced, then renamed
    over ``path``, so a shard never appears half-written under its final name. ``version=1``
    (default) stores uint16 tokens; pass ``version=2`` for uint32.
    """
    path = Path(path)
    if version not in _DTYPES:
        raise ValueError(f"unknown shard version {version!r}; use 1 (uint16) or 2 (uint32)")
    dtype = _DTYPES[version]
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        limit = int(np.iinfo(dtype).max)
        if lo < 0 or hi > limit:
            bad = lo if lo < 0 else hi
            hint = "; write it with version=2 (uint32 tokens)" if version == VERSION else ""
            raise UserError(
                f"{path}: token id {bad} does not fit in a version-{version} shard "
                f"(allowed 0..{limit}){hint}"
            )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, version, arr.size
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            data = header.tobytes()
            digest.update(data)
            f.write(data)
            for start in range(0, arr.size, _WRITE_CHUNK):
                data = np.ascontiguousarray(arr[start : start + _WRITE_CHUNK], dtype=dtype).tobytes()
                digest.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_shard(path) -> np.ndarray:
    """Memory-map the tokens of a ``.bin`` (llm.c) or ``.npy`` (build-nanogpt) shard, read-only.

    Any problem with the file (missing, wrong magic or version, truncated) is a UserError
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: shard file not found; run gpt2lab prepare to create it")
    if path.suffix == ".npy":
        return _read_npy(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(
            f"{path}: not a token shard: file is {size} bytes, shorter than the "
            f"{HEADER_BYTES}-byte header; re-run gpt2lab prepare"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, ntok = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise UserError(
            f"{path}: not a token shard: magic number is {magic}, expected {MAGIC}; "
            "re-run gpt2lab prepare"
        )
    if version not in _DTYPES:
        raise UserError(
            f"{path}: unsupported shard version {version} (known: 1 = uint16, 2 = uint32); "
            "re-run gpt2lab prepare"
        )
    dtype = _DTYPES[version]
    held, rest = divmod(size - HEADER_BYTES, dtype.itemsize)
    if ntok < 0:
        raise UserError(f"{path}: corrupt shard header: token count {ntok}; re-run gpt2lab prepare")
    if held < ntok:
        raise UserError(
            f"{path}: truncated shard: header says {ntok} tokens but file holds {held}; "
            "re-run gpt2lab prepare"
        )
    if held > ntok or rest:
        raise UserError(
            f"{path}: corrupt shard: header says {ntok} tokens but file is "
            f"{size - HEADER_BYTES - ntok * dtype.itemsize} bytes longer than that; "
            "re-run gpt2lab prepare"
        )
    if ntok == 0:  # mmap cannot map zero bytes
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(ntok,))


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npy token shard ({e}); re-create it") from None
    if arr.ndim != 1 or arr.dtype.kind != "u" or arr.dtype.itemsize not in (2, 4):
        raise UserError(
            f"{path}: .npy shard must hold a 1-D uint16 (or uint32) array, "
            f"got {arr.dtype} with shape {arr.shape}; re-create it"
        )
    return arr


def load_manifest(data_dir) -> dict | None:
    """The manifest of a prepared directory; None when there is none (e.g. build-nanogpt shards)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
        _check_manifest_fields(manifest)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{path}: not a valid manifest ({str(e)[:200]}); re-run gpt2lab prepare") from None
    return manifest


def data_tokenizer(data_dir) -> tuple[str, str]:
    """The tokenizer spec that ``data_dir`` was prepared with, and how that was found: the copy of its
    folder that prepare keeps in ``data_dir/tokenizer``, else the folder its manifest names, else
    ``"gpt2"`` (GPT-2's, or no manifest: build-nanogpt shards, or no data yet). A folder tokenizer
    that is in neither place is a one-line error saying to pass ``data.tokenizer``."""
    manifest = load_manifest(data_dir)
    recorded = manifest.get("vocab_sha256") if manifest else None
    if not isinstance(recorded, str) or (recorded == VOCAB_SHA256 and "tokenizer_path" not in manifest):
        return "gpt2", "GPT-2's" + (f", as {Path(data_dir) / MANIFEST} records" if manifest else "")
    where = [Path(data_dir) / COPY_DIR]
    if isinstance(manifest.get("tokenizer_path"), str):
        where.append(Path(manifest["tokenizer_path"]))
    for folder in where:
        if folder.is_dir():
            try:
                if load_tokenizer(folder).sha256 == recorded:
                    return str(folder.resolve()), f"the one {Path(data_dir) / MANIFEST} records"
            except UserError:
                continue
    raise UserError(f"{data_dir} was prepared with tokenizer {manifest.get('tokenizer')!r} "
                    f"(sha256 {recorded[:12]}), which is neither in {where[0]} nor at "
                    f"{manifest.get('tokenizer_path', 'a recorded path')}; "
                    "give its folder as data.tokenizer=FOLDER")


def _check_manifest_fields(manifest) -> None:
    """The fields readers use, with their types: a hand-edited or damaged manifest fails here, in one line."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError("no shard list")
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            raise ValueError(f"shard entry {i} is not an object")
        name, tokens, sha = shard.get("name"), shard.get("tokens"), shard.get("sha256")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"shard entry {i} has no file name")
        if type(tokens) is not int or tokens < 0:
            raise ValueError(f"shard {name} has no token count")
        if not isinstance(sha, str):
            raise ValueError(f"shard {name} has no sha256")
    vocab = manifest.get("vocab_size", 0)
    if type(vocab) is not int or vocab < 0:
        raise ValueError(f"vocab_size {vocab!r} is not a count")


def _of_split(name: str, split: str) -> bool:
    stem, suffix = os.path.splitext(name)
    return not name.startswith(".") and suffix in SHARD_SUFFIXES and split in re.split(r"[_.\-]", stem)


def find_shards(data_dir, split: str, required: bool = True) -> list[Path]:
    """The shard files of ``split`` in ``data_dir``, sorted by name.

    A file belongs to a split when its name ends in ``.bin`` or ``.npy`` and the split name
    is one of the words of its stem separated by ``_`` (or ``-``/``.``): ``train_000000.bin``,
    ``fineweb_train_000001.bin`` and ``edufineweb_val_000000.npy`` all match; ``val`` never
    matches a train file. Hidden files (such as ``.tmp-*`` left by a crash) are ignored.
    A shard of the split that the folder's manifest lists but the folder lacks is an error (the
    rest would train or evaluate on less data without a word); so is finding none, when ``required``.
    """
    data_dir = Path(data_dir)
    if data_dir.is_file():
        raise UserError(f"data directory {data_dir} is a file: the data must be a folder of shards; make one with "
                        f"gpt2lab prepare {data_dir} --out DIR and use DIR")
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} does not exist; run gpt2lab prepare to create it")
    found = sorted((p for p in data_dir.iterdir() if _of_split(p.name, split) and p.is_file()), key=lambda p: p.name)
    manifest = load_manifest(data_dir)
    if manifest is not None:
        present = {p.name for p in found}
        missing = sorted(s["name"] for s in manifest["shards"]
                         if _of_split(s["name"], split) and s["name"] not in present)
        if missing:
            raise UserError(f"{data_dir / missing[0]}: listed in {data_dir / MANIFEST} but missing ({len(missing)} "
                            f"{split!r} shard(s) in all); restore it or re-run gpt2lab prepare")
    if not found and required:
        raise UserError(
            f"no {split!r} shards in {data_dir}; run gpt2lab prepare to write "
            f"{split}_000000.bin and friends there (or point the data directory elsewhere)"
        )
    return found

"""Small files written atomically, and file hashes: the one place that does it for every part.

A file written here goes to a temporary name in the same folder, is fsynced, then renamed over
its final name, so a reader (or a run killed half way) never sees half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file: 0o666 less the umask (0o644 under the usual 022)."""
    umask = os.umask(0)  # the only way to read it before Python 3.13's os.getumask...
    os.umask(umask)  # ...is to set it and set it back
    return 0o666 & ~umask


def temp_beside(dest: Path) -> tuple[int, str]:
    """A new temporary file in ``dest``'s folder (fd, path) with the mode a plain ``open`` would
    give it, so the renamed file is as readable as any other (mkstemp's own mode is 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", dir=dest.parent)
    os.fchmod(fd, file_mode())
    return fd, tmp


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` (parent folders are created) via a temporary name and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")  # one writer per file: a fixed temporary name is safe
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def replace_dir(tmp: Path, dest: Path, aside: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest``. Whatever is at ``dest`` (a file, or a folder that
    is not empty) is first renamed to ``aside`` and removed after, so ``dest`` is never half-written."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(dest, aside)
        os.replace(tmp, dest)
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink()
    else:
        if dest.exists():  # an empty folder
            dest.rmdir()
        os.replace(tmp, dest)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or folder already written (a folder: so that the renames in it last)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in sorted(path.iterdir()):
        fsync_path(f)


def file_in_the_way(folder: Path) -> Path | None:
    """The file (``folder`` itself or the nearest of its parents that exists, when not a folder) that
    stops ``folder`` from being made or written into; None when nothing does."""
    for p in (folder, *folder.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def check_folder_path(folder: Path, what: str) -> None:
    """A one-line error, before any work, when a file stands where ``folder`` (``what``: how the
    user named it) or one of its parents must be a folder."""
    if (bad := file_in_the_way(Path(folder))) is not None:
        raise UserError(f"{what}: {bad} is a file, not a folder; move it or choose another folder")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write over a non-empty folder (or a file) unless ``overwrite``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists and is not empty: choose a new folder, or pass --overwrite")
    check_folder_path(out.parent, str(out))


@contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it is renamed to ``out`` (replacing it if ``overwrite``)."""
    out = Path(out)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_dir(tmp, out, aside=out.with_name(f".old-{out.name}-{os.getpid()}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""One writer per folder: the exclusive lock a command holds on its output folder for its whole run
(``prepare --out``, a training run folder); readers take none.

The lock is an OS file lock (``fcntl.flock``) on a file in the folder, so it dies with its process
(``kill -9`` and out-of-memory kills included). The file names its holder (pid, host, command) for the
one-line refusal of a second writer, and is removed when the holder lets go.

On a shared filesystem flock may not reach other hosts (or may not be supported at all), so the lock
has a heartbeat too: its holder refreshes the file's modification time every HEARTBEAT_S seconds, and a
lock file written by another host whose heartbeat is younger than STALE_S seconds refuses as well. A lock
file left by a process that died is taken over: its flock went with it, and its heartbeat stops.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from pathlib import Path

from .errors import UserError

HEARTBEAT_S = 30.0
STALE_S = 180.0  # as status.json's (runinfo.py): six missed heartbeats
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # a filesystem without flock
_held: set[FolderLock] = set()  # this process's locks: a forked child lets go of its copies (see _after_fork)


class FolderBusy(UserError):
    """Another process holds the folder's lock."""


class FolderLock:
    """The lock file ``path`` of a folder, for the command ``what`` (e.g. "train", "prepare").

    ``acquire()`` takes it or raises FolderBusy naming the holder (OSError when the folder cannot be written);
    ``release()`` lets go: the lock file goes, and so do the folders acquiring made if they are still empty.
    Also a context manager.
    """

    def __init__(self, path: str | os.PathLike, what: str, heartbeat_s: float = HEARTBEAT_S):
        self.path, self.what, self.heartbeat_s = Path(path), what, heartbeat_s
        self._fd: int | None = None
        self._made: list[Path] = []  # the folders acquiring made, deepest first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        folder = self.path.parent
        self._made = [p for p in (folder, *folder.parents) if not p.exists()]
        while True:  # until the file locked is the one at self.path (a holder letting go removes it)
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                flocked = _flock(fd)
                if flocked is None:
                    raise FolderBusy(self._refusal(_read_holder(fd), "holds its lock"))
                if _same_file(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            self._check_heartbeat(fd, flocked)
            _write_holder(fd, self.what)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _held.add(self)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="gpt2lab-lock", daemon=True)
        self._thread.start()

    def _check_heartbeat(self, fd: int, flocked: bool) -> None:
        """Refuse a lock file another process keeps alive that flock could not see: one written by another host
        with a fresh heartbeat (a shared filesystem), or, without flock, by a live process of this host."""
        holder = _read_holder(fd)
        if not holder:
            return
        host, pid = holder.get("host"), holder.get("pid")
        age = time.time() - os.fstat(fd).st_mtime
        if host != socket.gethostname() and age < STALE_S:
            raise FolderBusy(self._refusal(holder, f"kept its lock alive {age:.0f} s ago"))
        if not flocked and host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() \
                and pid_alive(pid):
            raise FolderBusy(self._refusal(holder, "holds its lock"))

    def _refusal(self, holder: dict, how: str) -> str:
        who = (f"gpt2lab {holder.get('what', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')})"
               if holder else "another process")
        return (f"{self.path.parent} is in use: {who} {how} ({self.path}); one writer per folder: wait for it to "
                f"end or stop it, then run this {self.what} again")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            fd = self._fd
            if fd is None:
                return
            with contextlib.suppress(OSError):  # a full or lost disk: the command will say so itself
                os.utime(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        fd, self._fd = self._fd, None
        _held.discard(self)
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):  # still ours: remove it while holding it, then let go
                self.path.unlink()
        os.close(fd)
        for folder in self._made:  # nothing was written into them: leave no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break

    @property
    def held(self) -> bool:
        return self._fd is not None


def _flock(fd: int) -> bool | None:
    """Lock ``fd`` exclusively without waiting: True when locked, None when another process holds it, False
    when the filesystem has no flock (then only the heartbeat guards the folder)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return False
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_holder(fd: int, what: str) -> None:
    """The holder's name in the lock file, written in place (a new file renamed over it would be another lock)."""
    data = json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, data.encode() + b"\n", 0)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def _after_fork() -> None:
    """In a forked child (a multiprocessing worker): close the inherited lock files without unlocking them, so
    that the lock ends with the process that took it, not with the last of its children."""
    for lock in list(_held):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

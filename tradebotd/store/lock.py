"""One daemon per store: an exclusive ``flock`` on ``<store>.lock``, beside the SQLite file.

Two ``tradebotd run`` on one store would each evaluate every strategy and trade beside each other
(twice the orders, with the same client order ids racing for the same cursor rows). SQLite's own
locking cannot prevent that: both processes are allowed to write, one transaction at a time.

Why ``flock`` on a separate file:

* The kernel releases the lock when the holder's process ends, however it ends (``kill -9``, OOM,
  power loss of the process), so there is no stale lock to clean up after a crash: the file may
  still hold a dead pid, but nobody holds the lock and the next daemon simply takes it.
* ``flock`` locks belong to the open file description, not to the process's set of file
  descriptors: unlike POSIX ``fcntl`` record locks, closing some other descriptor of the same file
  (SQLite opens the database, never this file) cannot drop it. The descriptor is opened
  close-on-exec, so evaluation processes (started with ``subprocess``) do not inherit it.
* The file is never deleted. Unlinking a lock file on exit has a race (a second process that
  opened the old inode gets a lock nobody else can see); truncating it is enough to say "free".

The holder writes its pid into the file after taking the lock, so a refused second instance can
name it. ``holder_pid`` reads that pid without touching the lock (a probe that took the lock, even
for a moment, could make a daemon starting at that instant refuse to start); it is a hint for
messages, not a guarantee.

Errors::

    TradebotdError
    └── StoreLocked     another process holds the lock (``pid``: the holder's, when it wrote one)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from ..errors import TradebotdError

__all__ = ["StoreLock", "StoreLocked", "holder_pid", "lock_path"]


class StoreLocked(TradebotdError):
    """Another daemon holds the store's lock."""

    def __init__(self, message: str, *, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def lock_path(store_path: Path | str) -> Path:
    """``tradebotd.db`` -> ``tradebotd.db.lock``."""
    return Path(f"{store_path}.lock")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holder_pid(store_path: Path | str) -> int | None:
    """The pid a daemon wrote into the store's lock file, if that process still exists (a hint for
    the CLI's messages: after a crash the pid may have been reused by an unrelated process)."""
    pid = _read_pid(lock_path(store_path))
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # exists, owned by someone else
        return pid
    return pid


class StoreLock:
    """The exclusive lock on ``<store>.lock``: ``acquire()`` or raise :class:`StoreLocked`;
    ``release()`` (or leaving the ``with`` block) frees it. Exiting the process frees it too."""

    def __init__(self, store_path: Path | str) -> None:
        self.store_path = Path(store_path)
        self.path = lock_path(store_path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _read_pid(self.path)
            who = f"pid {pid}" if pid is not None else "a process that is still starting"
            raise StoreLocked(
                f"another tradebotd is already running on {self.store_path} ({who}, holding {self.path}); "
                "stop it first, or give this one its own store (store.path)",
                pid=pid,
            ) from None
        except OSError:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError:
            os.close(fd)  # closing the only descriptor releases the lock
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # "nobody": before unlocking, so a new holder's pid is never erased
        os.close(fd)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

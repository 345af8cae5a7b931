"""The data-directory lock: one process at a time writes a node's data directory.

:class:`DiskStorage <raftlib.storage.DiskStorage>` takes it when it loads and
releases it when it is closed; the offline admin tools (``python -m raftlib``)
take it before rewriting anything, and probe it to warn that a node is running.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<data_dir>/LOCK``, which
holds the owner's process id for error messages. The kernel drops it when the
process dies, so a crash never leaves a stale lock. POSIX locks belong to the
process and are released when *any* descriptor of the file is closed; a
process-wide table therefore shares one descriptor between every holder in the
same process (tests open one directory several times to simulate restarts)
and closes it when the last holder releases.

Invariant: while any :class:`DataDirLock` of a directory is held in a process,
that process has exactly one open descriptor of its ``LOCK`` file, and holds
the exclusive lock on it.
"""

from __future__ import annotations

import errno as _errno
import os
import threading

from raftlib.storage.base import StorageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no POSIX locks, the lock is advisory only
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "DataDirLock", "DataDirLocked", "lock_holder"]

LOCK_NAME = "LOCK"

_table_lock = threading.Lock()
_held: dict[str, list[int]] = {}
"""realpath of a LOCK file -> [descriptor, number of holders in this process]."""


class DataDirLocked(StorageError):
    """Another process holds the data directory (a running node, or an admin tool).

    ``pid`` is the holder's process id as it recorded it, or ``None`` if unknown.
    """

    def __init__(self, path: str, pid: int | None) -> None:
        self.pid = pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(path, _errno.EAGAIN, f"the data directory is in use by {who}")


def _read_pid(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read(32).strip() or b"x")
    except (OSError, ValueError):
        return None


class DataDirLock:
    """A held lock on a data directory; :meth:`release` (or ``with``) gives it back."""

    def __init__(self, path: str, key: str) -> None:
        self.path = path
        self._key = key
        self._released = False

    @classmethod
    def acquire(cls, data_dir: str | os.PathLike[str]) -> DataDirLock:
        """Take the lock without waiting.

        Raises :class:`DataDirLocked` if another process holds it and
        :class:`StorageError` if the lock file cannot be opened.
        """
        path = os.path.join(os.fspath(data_dir), LOCK_NAME)
        key = os.path.realpath(path)
        with _table_lock:
            held = _held.get(key)
            if held is not None:
                # Never open (and close) the file again here: closing any descriptor of
                # it would drop this process's lock.
                held[1] += 1
                return cls(path, key)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise StorageError(path, e.errno, f"cannot open the lock file: {e}") from e
            if fcntl is not None:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    os.close(fd)
                    if e.errno in (_errno.EACCES, _errno.EAGAIN):
                        raise DataDirLocked(path, _read_pid(path)) from None
                    raise StorageError(path, e.errno, f"cannot lock the data directory: {e}") from e
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass  # the pid is only informational
            _held[key] = [fd, 1]
        return cls(path, key)

    def release(self) -> None:
        """Give the lock back (idempotent); the last holder in the process unlocks the file."""
        with _table_lock:
            if self._released:
                return
            self._released = True
            held = _held.get(self._key)
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                del _held[self._key]
                os.close(held[0])  # closing the descriptor releases the POSIX lock

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(data_dir: str | os.PathLike[str]) -> int | None:
    """The process id holding ``data_dir``'s lock (possibly this one), or ``None`` if it is free.

    Only probes: nothing is created, and a lock this process holds is left alone.
    A holder whose pid is unreadable is reported as ``-1``.
    """
    path = os.path.join(os.fspath(data_dir), LOCK_NAME)
    with _table_lock:
        if os.path.realpath(path) in _held:
            return os.getpid()
        if fcntl is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (_errno.EACCES, _errno.EAGAIN):
                    pid = _read_pid(path)
                    return pid if pid is not None else -1
                raise
            return None
        finally:
            os.close(fd)  # releases the probe's shared lock (this process held no other)

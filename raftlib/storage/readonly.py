"""Open a data directory for reading only: the storage's own recovery, with every write withheld.

Inspection tools (``python -m raftlib wal ...``) must read a data directory
exactly as a starting node would, with the same checks and the same torn-tail
and install rules, and yet leave it untouched: the operator decides what
happens to a damaged directory, and a node may even be running on it.

:class:`ReadOnlyFileOps` is a :class:`~raftlib.storage.files.FileOps` whose
mutating calls (opening for writing, write, truncate, rename, unlink, mkdir)
do nothing on disk and are recorded instead, as :class:`WithheldWrite`s: the
repairs a normal start would have made. :func:`open_read_only` loads a
:class:`~raftlib.storage.DiskStorage` through it.

Invariant: nothing under the data directory is created, modified or removed
through a :class:`ReadOnlyFileOps`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from raftlib.core import PersistentState
from raftlib.storage.files import FileOps
from raftlib.storage.wal import DiskStorage

__all__ = ["ReadOnlyFileOps", "WithheldWrite", "open_read_only"]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@dataclass(frozen=True, slots=True)
class WithheldWrite:
    """A change the storage wanted to make and that was not made."""

    action: str
    """``truncate``, ``write``, ``create``, ``rename``, ``unlink`` or ``mkdir``."""
    path: str
    detail: str = ""

    def describe(self) -> str:
        """One line for a human, e.g. ``truncate .../wal/x.wal to 4096 bytes``."""
        return f"{self.action} {self.path}" + (f" {self.detail}" if self.detail else "")


class ReadOnlyFileOps(FileOps):
    """File operations that read for real and withhold every write (see the module docstring)."""

    def __init__(self) -> None:
        self.withheld: list[WithheldWrite] = []
        self._fake: dict[int, str] = {}
        self._next_fake = -1

    # Descriptors opened for writing are fake (negative) and only remember their path.

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if not flags & _WRITE_FLAGS:
            return super().open(path, flags, mode)
        if flags & os.O_CREAT and not os.path.exists(path):
            self.withheld.append(WithheldWrite("create", path))
        fd = self._next_fake
        self._next_fake -= 1
        self._fake[fd] = path
        return fd

    def _path_of(self, fd: int) -> str:
        return self._fake.get(fd, f"<fd {fd}>")

    def close(self, fd: int) -> None:
        if fd < 0:
            self._fake.pop(fd, None)
            return
        super().close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.withheld.append(WithheldWrite("write", self._path_of(fd), f"({len(data)} bytes appended)"))
        return len(data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self.withheld.append(WithheldWrite("write", self._path_of(fd), f"({len(data)} bytes at {offset})"))
        return len(data)

    def fsync(self, fd: int) -> None:
        if fd >= 0:
            super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if fd >= 0:
            super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self.withheld.append(WithheldWrite("truncate", self._path_of(fd), f"to {length} bytes"))

    def size(self, fd: int) -> int:
        if fd < 0:
            return os.stat(self._fake[fd]).st_size
        return super().size(fd)

    def rename(self, src: str, dst: str) -> None:
        self.withheld.append(WithheldWrite("rename", src, f"to {dst}"))

    def unlink(self, path: str) -> None:
        self.withheld.append(WithheldWrite("unlink", path))

    def makedirs(self, path: str) -> None:
        if not os.path.isdir(path):
            self.withheld.append(WithheldWrite("mkdir", path))

    def listdir(self, path: str) -> list[str]:
        if not os.path.exists(path) and any(w.action == "mkdir" and w.path == path for w in self.withheld):
            return []  # a directory the storage "created" is empty
        return super().listdir(path)

    def fsync_dir(self, path: str) -> None:
        return None


def open_read_only(data_dir: str | os.PathLike[str]) -> tuple[DiskStorage, PersistentState, ReadOnlyFileOps]:
    """Load ``data_dir`` as a starting node would, without changing it.

    Returns the (loaded) storage, what :meth:`DiskStorage.load` returned, and
    the ops whose ``withheld`` list names the repairs a real start would make
    (a torn WAL tail truncated, unfinished snapshot files removed, ...).
    Raises :class:`~raftlib.errors.StorageCorrupted` exactly where a start
    would. The storage takes no lock, so this works beside a running node
    (then the view is a moment's and may end in a write in progress).
    Further reads through the storage (``entries()``) re-check the files and
    fail on an unrepaired torn tail: use the returned state instead.
    """
    ops = ReadOnlyFileOps()
    storage = DiskStorage(data_dir, fileops=ops, lock=False)
    try:
        state = storage.load()
    except BaseException:
        storage.close()
        raise
    return storage, state, ops

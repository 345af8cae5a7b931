"""The file operations storage performs, behind one small object.

:class:`DiskStorage <raftlib.storage.DiskStorage>` never calls ``os``
directly: every open, write, fsync, rename, unlink and directory listing goes
through a :class:`FileOps`. Tests (and the reliability suite) substitute a
subclass that fails with ``ENOSPC``, fails ``fsync``, tears writes, or
forgets what was never fsynced, to check that the storage reacts correctly.
"""

from __future__ import annotations

import os
from typing import BinaryIO

__all__ = ["FileOps"]


class FileOps:
    """Thin wrapper over the ``os`` calls storage needs (one method per call).

    File descriptors are plain ``int``s. Override any method to inject faults;
    keep the signatures.
    """

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        """``os.open``."""
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        """``os.close``."""
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """One ``os.write`` call; may write fewer bytes than given (the caller loops)."""
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """One ``os.pwrite`` call; may write fewer bytes than given."""
        return os.pwrite(fd, data, offset)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """``os.pread``."""
        return os.pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        """``os.fsync``: data and metadata."""
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """``os.fdatasync`` where available (data and the size), else ``os.fsync``."""
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover - macOS, Windows
            os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        """``os.ftruncate``."""
        os.ftruncate(fd, length)

    def size(self, fd: int) -> int:
        """The file's current size (``os.fstat``)."""
        return os.fstat(fd).st_size

    def rename(self, src: str, dst: str) -> None:
        """``os.replace``: atomic, overwrites ``dst``."""
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        """``os.unlink``."""
        os.unlink(path)

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``."""
        return os.listdir(path)

    def makedirs(self, path: str) -> None:
        """``os.makedirs(path, exist_ok=True)``."""
        os.makedirs(path, exist_ok=True)

    def exists(self, path: str) -> bool:
        """``os.path.exists``."""
        return os.path.exists(path)

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (creations, renames, deletions) durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_file(self, path: str) -> bytes:
        """The whole content of a (WAL segment) file."""
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str) -> BinaryIO:
        """A buffered binary file object for streaming reads (snapshots)."""
        return open(path, "rb")

    def rmdir(self, path: str) -> None:
        """``os.rmdir`` (an empty directory)."""
        os.rmdir(path)

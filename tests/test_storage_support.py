"""Fault-injecting FileOps for the storage tests (and self-tests of the power-loss model).

* :class:`CountingFileOps` counts writes and fsyncs (group commit).
* :class:`FaultyFileOps` fails writes with ENOSPC once a byte budget is used up
  (after writing part of the data: a short write), and fails fsync with EIO.
* :class:`PowerLossFileOps` remembers what was fsynced (file contents, and
  directory entries at directory fsyncs); :meth:`PowerLossFileOps.power_loss`
  rewrites the tree to what a power cut could leave: the durable contents
  plus a random prefix of what was written after the last fsync, and only the
  directory entries that were fsynced. It can also cut the power in the middle
  of the k-th mutating call (``crash_at``), raising :class:`PowerCut`.
"""

from __future__ import annotations

import errno
import os
import random

from raftlib.storage import FileOps


class CountingFileOps(FileOps):
    """Counts calls: ``writes``, ``file_syncs`` (fsync + fdatasync), ``dir_syncs``."""

    def __init__(self) -> None:
        self.writes = 0
        self.file_syncs = 0
        self.dir_syncs = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.writes += 1
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.file_syncs += 1
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.file_syncs += 1
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        self.dir_syncs += 1
        super().fsync_dir(path)


class FaultyFileOps(FileOps):
    """``space``: bytes that may still be written (None: unlimited); ``fail_fsync``: fsyncs raise EIO."""

    def __init__(self) -> None:
        self.space: int | None = None
        self.fail_fsync = False

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.space is not None:
            if self.space <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if len(data) > self.space:
                n = super().write(fd, bytes(data[: self.space]))  # a short write, then ENOSPC
                self.space -= n
                return n
            self.space -= len(data)
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if self.fail_fsync:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        if self.fail_fsync:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync_dir(path)


class PowerCut(Exception):
    """Raised by :class:`PowerLossFileOps` when the power goes off mid-call."""


class PowerLossFileOps(FileOps):
    """Tracks durability of files under ``root``; see the module docstring.

    Directories themselves are assumed durable once created (the storage
    creates them once, at its first start).
    """

    def __init__(self, root: str, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.crash_at: int | None = None
        self.mutations = 0
        self._reset()

    def _reset(self) -> None:
        self._next = 0
        self.fd_file: dict[int, int] = {}
        self.path_file: dict[str, int] = {}
        self.durable: dict[int, bytes] = {}
        self.dirs: dict[str, dict[str, int]] = {}
        for d, _subdirs, files in os.walk(self.root):
            listing: dict[str, int] = {}
            for name in files:
                fid = self._new_id()
                path = os.path.join(d, name)
                self.path_file[path] = fid
                with open(path, "rb") as f:
                    self.durable[fid] = f.read()
                listing[name] = fid
            self.dirs[d] = listing

    def _new_id(self) -> int:
        self._next += 1
        return self._next

    def _tick(self) -> bool:
        """Count a mutating call; True when the power should go off now."""
        self.mutations += 1
        return self.crash_at is not None and self.mutations >= self.crash_at

    # -- mutating calls -----------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT and self._tick():
            raise PowerCut(f"open {path}")
        fd = super().open(path, flags, mode)
        if path not in self.path_file:
            self.path_file[path] = self._new_id()
        self.fd_file[fd] = self.path_file[path]
        return fd

    def close(self, fd: int) -> None:
        self.fd_file.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self._tick():
            part = self.rng.choice([len(data), self.rng.randrange(len(data) + 1)])
            super().write(fd, bytes(data[:part]))
            raise PowerCut(f"write ({part} of {len(data)} bytes reached the file)")
        return super().write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self._tick():
            raise PowerCut("pwrite")
        return super().pwrite(fd, data, offset)

    def _sync(self, fd: int) -> None:
        if self._tick():
            raise PowerCut("fsync")
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            self.durable[self.fd_file[fd]] = f.read()

    def fsync(self, fd: int) -> None:
        self._sync(fd)
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd)
        super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        if self._tick():
            raise PowerCut("ftruncate")
        super().ftruncate(fd, length)

    def rename(self, src: str, dst: str) -> None:
        if self._tick():
            raise PowerCut(f"rename {src}")
        super().rename(src, dst)
        self.path_file[dst] = self.path_file.pop(src)

    def unlink(self, path: str) -> None:
        if self._tick():
            raise PowerCut(f"unlink {path}")
        super().unlink(path)
        self.path_file.pop(path, None)

    def makedirs(self, path: str) -> None:
        super().makedirs(path)
        path = os.path.normpath(path)
        while path.startswith(self.root) and path not in self.dirs:
            self.dirs[path] = {}
            path = os.path.dirname(path)

    def fsync_dir(self, path: str) -> None:
        if self._tick():
            raise PowerCut(f"fsync_dir {path}")
        super().fsync_dir(path)
        path = os.path.normpath(path)
        self.dirs[path] = {
            name: self.path_file[os.path.join(path, name)]
            for name in os.listdir(path)
            if os.path.join(path, name) in self.path_file
        }

    # -- the power cut -------------------------------------------------------

    def power_loss(self) -> None:
        """Close every open file and rewrite the tree to what survives a power cut."""
        for fd in list(self.fd_file):
            self.close(fd)
        current: dict[int, bytes] = {}
        for path, fid in self.path_file.items():
            if os.path.exists(path):
                with open(path, "rb") as f:
                    current[fid] = f.read()
        for d, listing in self.dirs.items():
            for name in os.listdir(d):
                path = os.path.join(d, name)
                if os.path.isfile(path):
                    os.unlink(path)
            for name, fid in listing.items():
                data = self.durable.get(fid, b"")
                cur = current.get(fid)
                if cur is not None and cur.startswith(data) and len(cur) > len(data):
                    extra = cur[len(data) :]
                    # all of it reached the disk, none of it, or a prefix
                    keep = self.rng.choice([len(extra), 0, self.rng.randrange(len(extra) + 1)])
                    data += extra[:keep]
                with open(os.path.join(d, name), "wb") as f:
                    f.write(data)
        self.crash_at = None
        self.mutations = 0
        self._reset()


# -- self-tests of the model ---------------------------------------------------------------


def test_power_loss_keeps_only_what_was_synced(tmp_path: os.PathLike[str]) -> None:
    root = os.fspath(tmp_path)
    ops = PowerLossFileOps(root, random.Random(1))
    synced = os.path.join(root, "synced")
    unsynced_dir = os.path.join(root, "not-in-dir")
    fd = ops.open(synced, os.O_WRONLY | os.O_CREAT)
    ops.write(fd, b"durable")
    ops.fsync(fd)
    ops.fsync_dir(root)
    fd2 = ops.open(unsynced_dir, os.O_WRONLY | os.O_CREAT)
    ops.write(fd2, b"x")
    ops.fsync(fd2)  # content synced but the directory entry never was
    ops.power_loss()
    assert sorted(os.listdir(root)) == ["synced"]
    with open(synced, "rb") as f:
        assert f.read() == b"durable"


def test_power_loss_keeps_a_prefix_of_unsynced_appends(tmp_path: os.PathLike[str]) -> None:
    root = os.fspath(tmp_path)
    seen = set()
    for seed in range(20):
        path = os.path.join(root, "f")
        if os.path.exists(path):
            os.unlink(path)
        ops = PowerLossFileOps(root, random.Random(seed))
        fd = ops.open(path, os.O_WRONLY | os.O_CREAT)
        ops.write(fd, b"abc")
        ops.fsync(fd)
        ops.fsync_dir(root)
        ops.write(fd, b"defgh")
        ops.power_loss()
        with open(path, "rb") as f:
            data = f.read()
        assert b"abcdefgh".startswith(data) and data.startswith(b"abc")
        seen.add(len(data))
    assert len(seen) > 2


def test_crash_at_cuts_a_write_short(tmp_path: os.PathLike[str]) -> None:
    root = os.fspath(tmp_path)
    ops = PowerLossFileOps(root, random.Random(3))
    fd = ops.open(os.path.join(root, "f"), os.O_WRONLY | os.O_CREAT)
    ops.crash_at = ops.mutations + 1
    try:
        ops.write(fd, b"0123456789")
    except PowerCut:
        pass
    else:
        raise AssertionError("no power cut")

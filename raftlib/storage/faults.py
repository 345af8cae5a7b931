"""Fault-injecting :class:`~raftlib.storage.FileOps` for your own crash and disk-fault tests.

Pass one of these as ``DiskStorage(data_dir, fileops=...)`` (and the storage to
``RaftNode(..., storage=...)``) to check how your application behaves when the
disk misbehaves:

* :class:`CountingFileOps` counts writes, file syncs and directory syncs.
* :class:`FaultyFileOps` fails on command: ``ENOSPC`` once a byte budget is used
  up (after a short write), ``EIO`` from fsync (at once or after ``n`` more
  successful syncs), a torn write (part of the data reaches the file, then
  ``EIO``), optionally restricted to paths matching a predicate. Every
  injected fault is recorded in ``injected``.
* :class:`PowerLossFileOps` remembers what was made durable: file contents at
  each fsync/fdatasync, and directory entries (creations, renames, deletions)
  at each directory fsync. :meth:`PowerLossFileOps.power_loss` rewrites the
  tree to what a power cut could leave: the durable contents plus all, none or
  a random prefix of what was appended since, and only the directory entries
  that were fsynced. The power can also go off in the middle of the k-th
  mutating call (``crash_at``) or at the first call a predicate picks
  (``cut_when``); from then on every call raises :class:`PowerCut` (the
  machine is off) until :meth:`power_loss` is called. ``lose_renames`` makes
  renames to matching paths never durable, even after a directory fsync (a
  disk that lies about its metadata).

``bitflip(path, offset)`` flips one bit of a file in place (corruption of data
at rest, for ``StorageCorrupted`` tests).

All of them only wrap the real ``os`` calls: the files are real files under a
real directory, so a test can stop the node, rewrite the tree, and start a new
node (with a plain :class:`FileOps`) on the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
from collections.abc import Callable

from raftlib.storage.files import FileOps

__all__ = ["CountingFileOps", "FaultyFileOps", "PowerCut", "PowerLossFileOps", "bitflip"]


def bitflip(path: str | os.PathLike[str], offset: int, bit: int = 0) -> None:
    """Flip bit ``bit`` of the byte at ``offset`` of ``path`` (in place)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        (b,) = f.read(1)
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


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


def _eio(what: str) -> OSError:
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected: {what})")


class FaultyFileOps(FileOps):
    """A FileOps that fails on command. Attributes may be changed at any time (thread-safe enough:
    the storage calls it from one worker thread at a time).

    * ``space``: bytes that may still be written (``None``: unlimited). A write larger than
      what is left writes the part that fits (a short write) and the next one raises ``ENOSPC``.
    * ``fail_fsync``: every fsync, fdatasync and directory fsync raises ``EIO``.
    * ``fsyncs_left``: that many more syncs succeed, then ``fail_fsync`` turns on.
    * ``tear_next_write``: the next write puts that many bytes (clamped to the data) into the file,
      then raises ``EIO`` (the rest never arrives): a torn write.
    * ``only``: a predicate on the file path; faults apply only to matching files (e.g.
      ``lambda p: p.endswith(".wal")``). Directory syncs are matched on the directory path.

    ``injected`` lists a one-line description of every fault raised.
    """

    def __init__(
        self,
        *,
        space: int | None = None,
        fail_fsync: bool = False,
        fsyncs_left: int | None = None,
        only: Callable[[str], bool] | None = None,
    ) -> None:
        self.space = space
        self.fail_fsync = fail_fsync
        self.fsyncs_left = fsyncs_left
        self.tear_next_write: int | None = None
        self.only = only
        self.injected: list[str] = []
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()

    def _applies(self, path: str | None) -> bool:
        return self.only is None or (path is not None and self.only(path))

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self._paths.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        path = self._paths.get(fd)
        if not self._applies(path):
            return super().write(fd, data)
        with self._lock:
            if self.tear_next_write is not None:
                keep = max(0, min(self.tear_next_write, len(data)))
                self.tear_next_write = None
                if keep:
                    super().write(fd, bytes(data[:keep]))
                self.injected.append(f"torn write of {path}: {keep} of {len(data)} bytes")
                raise _eio("torn write")
            if self.space is not None:
                if self.space <= 0:
                    self.injected.append(f"ENOSPC writing {len(data)} bytes to {path}")
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected)")
                if len(data) > self.space:
                    n = super().write(fd, bytes(data[: self.space]))
                    self.space -= n
                    self.injected.append(f"short write to {path}: {n} of {len(data)} bytes")
                    return n
                self.space -= len(data)
        return super().write(fd, data)

    def _sync_fault(self, path: str | None) -> None:
        if not self._applies(path):
            return
        with self._lock:
            if self.fsyncs_left is not None:
                if self.fsyncs_left <= 0:
                    self.fail_fsync = True
                    self.fsyncs_left = None
                else:
                    self.fsyncs_left -= 1
            if self.fail_fsync:
                self.injected.append(f"fsync failed on {path}")
                raise _eio("fsync")

    def fsync(self, fd: int) -> None:
        self._sync_fault(self._paths.get(fd))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._sync_fault(self._paths.get(fd))
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        self._sync_fault(path)
        super().fsync_dir(path)


class PowerCut(OSError):
    """Raised by :class:`PowerLossFileOps` when the power goes off (and by every call after it).

    An ``OSError`` with ``errno`` ``EIO``: to the storage (and the node above it) a dead disk
    looks like an I/O error, so they fail exactly as they would on real hardware.
    """

    def __init__(self, what: str) -> None:
        super().__init__(errno.EIO, what)


class PowerLossFileOps(FileOps):
    """Tracks what is durable under ``root``; see the module docstring.

    * ``crash_at``: the power goes off during the ``crash_at``-th mutating call (counted in
      ``mutations``); a write in progress may land partially.
    * ``cut_when(op, path)``: called before every mutating call (``op`` is ``"open"``,
      ``"write"``, ``"pwrite"``, ``"fsync"``, ``"ftruncate"``, ``"rename"``, ``"unlink"`` or
      ``"fsync_dir"``); returning True cuts the power before the call takes effect.
    * ``lose_renames(dst)``: renames to matching paths are never made durable by a directory
      fsync (after :meth:`power_loss` the source name, if it was durable, is back).

    After the cut (``dead``), every call raises :class:`PowerCut`. Directories are assumed
    durable once created. One instance may serve several storages under ``root``; it is
    thread-safe.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        rng: random.Random | None = None,
        *,
        cut_when: Callable[[str, str], bool] | None = None,
        lose_renames: Callable[[str], bool] | None = None,
    ) -> None:
        self.root = os.path.normpath(os.fspath(root))
        self.rng = rng if rng is not None else random.Random()
        self.crash_at: int | None = None
        self.cut_when = cut_when
        self.lose_renames = lose_renames
        self.mutations = 0
        self.dead = False
        self.cut_reason = ""
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self._next = 0
        self.fd_file: dict[int, int] = {}
        self.path_file: dict[str, int] = {}
        self.durable: dict[int, bytes] = {}
        self.dirs: dict[str, dict[str, int]] = {}
        self._lost: set[int] = set()
        for d, _subdirs, files in os.walk(self.root):
            listing: dict[str, int] = {}
            for name in files:
                fid = self._new_id()
                path = os.path.join(d, name)
                self.path_file[path] = fid
                with open(path, "rb") as f:
                    self.durable[fid] = f.read()
                listing[name] = fid
            self.dirs[os.path.normpath(d)] = listing

    def _new_id(self) -> int:
        self._next += 1
        return self._next

    def _cut(self, op: str, path: str) -> None:
        """Raise PowerCut if the power is (or should now go) off before ``op``."""
        if self.dead:
            raise PowerCut(f"power is off ({op} {path})")
        self.mutations += 1
        if (self.crash_at is not None and self.mutations >= self.crash_at) or (
            self.cut_when is not None and self.cut_when(op, path)
        ):
            self.dead = True
            self.cut_reason = f"{op} {path}"
            raise PowerCut(f"power cut at {op} {path}")

    def _path_of(self, fd: int) -> str:
        fid = self.fd_file.get(fd)
        for p, f in self.path_file.items():
            if f == fid:
                return p
        return f"fd {fd}"

    # -- calls that do not mutate still fail once the power is off --------------------------

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        if self.dead:
            raise PowerCut("power is off (pread)")
        return super().pread(fd, size, offset)

    def read_file(self, path: str) -> bytes:
        if self.dead:
            raise PowerCut(f"power is off (read {path})")
        return super().read_file(path)

    def listdir(self, path: str) -> list[str]:
        if self.dead:
            raise PowerCut(f"power is off (listdir {path})")
        return super().listdir(path)

    # -- mutating calls -----------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        with self._lock:
            if flags & os.O_CREAT:
                self._cut("open", path)
            elif self.dead:
                raise PowerCut(f"power is off (open {path})")
            fd = super().open(path, flags, mode)
            if path not in self.path_file:
                self.path_file[path] = self._new_id()
            self.fd_file[fd] = self.path_file[path]
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self.fd_file.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self._lock:
            try:
                self._cut("write", self._path_of(fd))
            except PowerCut:
                if self.crash_at is not None and self.mutations == self.crash_at and len(data):
                    part = self.rng.choice([len(data), self.rng.randrange(len(data) + 1)])
                    super().write(fd, bytes(data[:part]))
                raise
            return super().write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        with self._lock:
            self._cut("pwrite", self._path_of(fd))
            return super().pwrite(fd, data, offset)

    def _sync(self, fd: int) -> None:
        self._cut("fsync", self._path_of(fd))
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            self.durable[self.fd_file[fd]] = f.read()

    def fsync(self, fd: int) -> None:
        with self._lock:
            self._sync(fd)
            super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            self._sync(fd)
            super().fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            self._cut("ftruncate", self._path_of(fd))
            super().ftruncate(fd, length)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._cut("rename", dst)
            super().rename(src, dst)
            fid = self.path_file.pop(src)
            self.path_file[dst] = fid
            if self.lose_renames is not None and self.lose_renames(dst):
                self._lost.add(fid)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._cut("unlink", path)
            super().unlink(path)
            self.path_file.pop(path, None)

    def makedirs(self, path: str) -> None:
        with self._lock:
            if self.dead:
                raise PowerCut(f"power is off (makedirs {path})")
            super().makedirs(path)
            path = os.path.normpath(path)
            while path.startswith(self.root) and path not in self.dirs:
                self.dirs[path] = {}
                path = os.path.dirname(path)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._cut("fsync_dir", path)
            super().fsync_dir(path)
            path = os.path.normpath(path)
            old = self.dirs.get(path, {})
            listing = {
                name: self.path_file[os.path.join(path, name)]
                for name in os.listdir(path)
                if os.path.join(path, name) in self.path_file
            }
            for fid in self._lost:
                # A lost rename: the entry keeps its durable old name (if it had one).
                for name in [n for n, f in listing.items() if f == fid]:
                    del listing[name]
                for name, f in old.items():
                    if f == fid:
                        listing[name] = fid
            self.dirs[path] = listing

    # -- the power cut --------------------------------------------------------------------------

    def power_loss(self) -> None:
        """Close every open file and rewrite the tree to what survives a power cut.

        Call it once nothing uses the files any more (the node was abandoned or stopped).
        Afterwards the tree is "the disk after reboot" and this object tracks it afresh.
        """
        with self._lock:
            for fd in list(self.fd_file):
                self.fd_file.pop(fd, None)
                with contextlib.suppress(OSError):
                    os.close(fd)
            current: dict[int, bytes] = {}
            for path, fid in self.path_file.items():
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        current[fid] = f.read()
            for d, listing in self.dirs.items():
                if not os.path.isdir(d):
                    os.makedirs(d, exist_ok=True)
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
            self.cut_when = None
            self.mutations = 0
            self.dead = False
            self._reset()

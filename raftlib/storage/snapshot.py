"""Snapshot files: format, streaming checksums, and the on-disk snapshot directory.

A snapshot file is::

    offset  size  field
    0       8     magic b"RAFTSNAP"
    8       4     u32 format version (1)
    12      4     u32 meta_len
    16      8     u64 body_len
    24      4     u32 body_crc   (CRC-32 of the body, zlib.crc32)
    28      4     u32 header_crc (CRC-32 of bytes 0..28 followed by the meta JSON)
    32      ...   meta JSON: {"index": .., "term": .., "membership": Membership.to_dict()}
    32+meta_len   body: the state machine's bytes, body_len of them, up to the end of the file

All integers are little endian. The header is written last (a placeholder
first, the real one once the body's length and CRC are known), then the file
is fsynced and renamed into place, so a file under its final name is always
complete. The body CRC is computed while streaming; no snapshot is ever held
in memory whole.

Snapshots are sent to followers as the raw bytes of this file, so the receiver
checks the header, the meta and the body CRC before installing: transfers are
verified end to end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from raftlib.core import Membership, SnapshotMeta
from raftlib.errors import StorageCorrupted
from raftlib.storage.base import StorageError
from raftlib.storage.files import FileOps

__all__ = [
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "SnapshotHeader",
    "SnapshotStore",
    "encode_header",
    "parse_header",
    "verify_body",
]

log = logging.getLogger("raftlib.storage")

SNAPSHOT_MAGIC = b"RAFTSNAP"
SNAPSHOT_VERSION = 1
_FIXED = struct.Struct("<8sIIQI")  # magic, version, meta_len, body_len, body_crc
_HCRC = struct.Struct("<I")
FIXED_HEADER_SIZE = _FIXED.size + _HCRC.size  # 32
MAX_META_LEN = 16 << 20
STREAM_CHUNK = 256 << 10


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """A parsed snapshot header: its meta, the body's length and CRC, and where the body starts."""

    meta: SnapshotMeta
    body_len: int
    body_crc: int
    header_len: int


def meta_to_json(meta: SnapshotMeta) -> bytes:
    """The meta as canonical JSON bytes."""
    d = {"index": meta.index, "term": meta.term, "membership": meta.membership.to_dict()}
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def meta_from_json(raw: bytes) -> SnapshotMeta:
    """Inverse of :func:`meta_to_json` (raises ``ValueError``/``KeyError``/``TypeError`` on junk)."""
    d = json.loads(raw)
    return SnapshotMeta(int(d["index"]), int(d["term"]), Membership.from_dict(d["membership"]))


def encode_header(meta: SnapshotMeta, body_len: int, body_crc: int) -> bytes:
    """The header bytes for a snapshot with this meta and body."""
    mj = meta_to_json(meta)
    fixed = _FIXED.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(mj), body_len, body_crc)
    return fixed + _HCRC.pack(zlib.crc32(mj, zlib.crc32(fixed))) + mj


def parse_header(f: BinaryIO, path: str) -> SnapshotHeader:
    """Read and check the header at the current position of ``f`` (which must be 0).

    Raises :class:`StorageCorrupted` naming ``path`` and the offending offset.
    """
    raw = f.read(FIXED_HEADER_SIZE)
    if len(raw) < FIXED_HEADER_SIZE:
        raise StorageCorrupted(path, len(raw), "snapshot header truncated")
    magic, version, meta_len, body_len, body_crc = _FIXED.unpack_from(raw)
    if magic != SNAPSHOT_MAGIC:
        raise StorageCorrupted(path, 0, f"bad snapshot magic {magic!r}")
    if version != SNAPSHOT_VERSION:
        raise StorageCorrupted(path, 8, f"unknown snapshot format version {version}")
    if meta_len > MAX_META_LEN:
        raise StorageCorrupted(path, 12, f"implausible meta length {meta_len}")
    mj = f.read(meta_len)
    if len(mj) < meta_len:
        raise StorageCorrupted(path, FIXED_HEADER_SIZE + len(mj), "snapshot meta truncated")
    (hcrc,) = _HCRC.unpack_from(raw, _FIXED.size)
    if zlib.crc32(mj, zlib.crc32(raw[: _FIXED.size])) != hcrc:
        raise StorageCorrupted(path, 0, "snapshot header CRC mismatch")
    try:
        meta = meta_from_json(mj)
    except (ValueError, KeyError, TypeError) as e:
        raise StorageCorrupted(path, FIXED_HEADER_SIZE, f"bad snapshot meta: {e}") from None
    return SnapshotHeader(meta, body_len, body_crc, FIXED_HEADER_SIZE + meta_len)


def verify_body(f: BinaryIO, path: str, header: SnapshotHeader) -> None:
    """Stream the body from the current position (the body start), checking length and CRC."""
    crc = 0
    n = 0
    while True:
        buf = f.read(STREAM_CHUNK)
        if not buf:
            break
        n += len(buf)
        if n > header.body_len:
            raise StorageCorrupted(
                path, header.header_len + header.body_len, "snapshot has bytes after its body"
            )
        crc = zlib.crc32(buf, crc)
    if n < header.body_len:
        raise StorageCorrupted(
            path, header.header_len + n, f"snapshot body truncated ({n} of {header.body_len} bytes)"
        )
    if crc != header.body_crc:
        raise StorageCorrupted(path, header.header_len, "snapshot body CRC mismatch")


def snapshot_name(meta: SnapshotMeta) -> str:
    """File name of a snapshot: ``<index:016x>-<term:016x>.snap``."""
    return f"{meta.index:016x}-{meta.term:016x}.snap"


def _parse_name(name: str) -> tuple[int, int] | None:
    if not name.endswith(".snap") or len(name) != 16 + 1 + 16 + 5:
        return None
    try:
        return int(name[:16], 16), int(name[17:33], 16)
    except ValueError:
        return None


INCOMING_NAME = "incoming.snap.tmp"


class SnapshotStore:
    """The ``snap/`` directory of a :class:`~raftlib.storage.DiskStorage`.

    Files are named ``<index:016x>-<term:016x>.snap``; temporary files end in
    ``.tmp`` and are removed at start. The newest ``keep`` snapshots are kept.
    """

    def __init__(self, directory: str, fileops: FileOps, fsync: bool, keep: int) -> None:
        if keep < 1:
            raise ValueError("keep_snapshots must be at least 1")
        self.dir = directory
        self.ops = fileops
        self.fsync = fsync
        self.keep = keep
        self._metas: dict[int, SnapshotMeta] = {}
        self._paths: dict[int, str] = {}
        self._incoming_fd: int | None = None
        self._incoming_meta: SnapshotMeta | None = None
        self._incoming_size = 0

    # -- start --------------------------------------------------------------

    def scan(self) -> None:
        """Find the stored snapshots, remove leftover temporary files, check the headers.

        A bad header in the newest snapshot raises :class:`StorageCorrupted`;
        a bad older one is logged and ignored (nothing needs it).
        """
        self.ops.makedirs(self.dir)
        removed = False
        found: list[tuple[int, int, str]] = []
        for name in self.ops.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name.endswith(".tmp"):
                log.warning("removing unfinished snapshot file %s", path)
                self.ops.unlink(path)
                removed = True
                continue
            parsed = _parse_name(name)
            if parsed is not None:
                found.append((parsed[0], parsed[1], path))
        if removed:
            self._sync_dir()
        found.sort()
        self._metas.clear()
        self._paths.clear()
        for i, (index, term, path) in enumerate(reversed(found)):
            try:
                with self.ops.open_read(path) as f:
                    h = parse_header(f, path)
                if (h.meta.index, h.meta.term) != (index, term):
                    raise StorageCorrupted(
                        path, FIXED_HEADER_SIZE, "snapshot meta does not match its file name"
                    )
            except StorageCorrupted:
                if i == 0:
                    raise
                log.warning("ignoring damaged older snapshot %s", path, exc_info=True)
                continue
            self._metas[index] = h.meta
            self._paths[index] = path

    # -- queries ------------------------------------------------------------

    def latest(self) -> SnapshotMeta | None:
        """Meta of the newest snapshot."""
        if not self._metas:
            return None
        return self._metas[max(self._metas)]

    def indexes(self) -> list[int]:
        """Indexes of the stored snapshots, oldest first."""
        return sorted(self._metas)

    def path(self, index: int) -> str:
        """Path of the stored snapshot at ``index`` (FileNotFoundError if there is none)."""
        return self._path(index)

    def _path(self, index: int) -> str:
        path = self._paths.get(index)
        if path is None:
            raise FileNotFoundError(f"no snapshot at index {index} in {self.dir}")
        return path

    def open(self, index: int) -> BinaryIO:
        """A file object positioned at the body, after checking the whole file."""
        return self.open_path(self._path(index))

    def open_path(self, path: str) -> BinaryIO:
        """Like :meth:`open` for a path found earlier (reads no shared state)."""
        f = self.ops.open_read(path)
        try:
            h = parse_header(f, path)
            verify_body(f, path, h)
            f.seek(h.header_len)
        except BaseException:
            f.close()
            raise
        return f

    def read_chunk(self, index: int, offset: int, size: int) -> tuple[bytes, bool]:
        """``size`` bytes of the stored file at ``offset``, and whether they reach its end."""
        return self.read_chunk_path(self._path(index), offset, size)

    def read_chunk_path(self, path: str, offset: int, size: int) -> tuple[bytes, bool]:
        """Like :meth:`read_chunk` for a path found earlier (reads no shared state)."""
        if offset < 0 or size <= 0:
            raise ValueError("offset must be >= 0 and size > 0")
        with self.ops.open_read(path) as f:
            f.seek(0, os.SEEK_END)
            total = f.tell()
            f.seek(offset)
            data = f.read(size)
        return data, offset + len(data) >= total

    # -- writing ------------------------------------------------------------

    def _sync_dir(self) -> None:
        if self.fsync:
            self.ops.fsync_dir(self.dir)

    def _write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self.ops.write(fd, view)
            view = view[n:]

    def save(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        """Stream a local snapshot to a temp file, fsync, rename, fsync the directory."""
        tmp = self.write_temp(meta, chunks)
        self.commit_temp(meta, tmp)

    def write_temp(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> str:
        """Phase 1 of :meth:`save`: the durable temp file. Touches no shared state,
        so it may run while the WAL keeps being written."""
        self.ops.makedirs(self.dir)
        final = os.path.join(self.dir, snapshot_name(meta))
        tmp = final + ".tmp"
        fd: int | None = None
        try:
            fd = self.ops.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            self._write_all(fd, encode_header(meta, 0, 0))
            crc = 0
            n = 0
            for chunk in chunks:
                if not chunk:
                    continue
                self._write_all(fd, chunk)
                crc = zlib.crc32(chunk, crc)
                n += len(chunk)
            header = encode_header(meta, n, crc)
            if self.ops.pwrite(fd, header, 0) != len(header):
                raise OSError(5, "short write of the snapshot header")
            if self.fsync:
                self.ops.fsync(fd)
            self.ops.close(fd)
            fd = None
        except OSError as e:
            self._abandon(fd, tmp)
            raise StorageError(tmp, e.errno, f"writing snapshot {meta.index}@{meta.term} failed: {e}") from e
        except BaseException:  # the chunks' producer failed (a state machine's writer): no temp left
            self._abandon(fd, tmp)
            raise
        return tmp

    def commit_temp(self, meta: SnapshotMeta, tmp: str) -> None:
        """Phase 2 of :meth:`save`: rename into place, fsync the directory, apply retention."""
        final = os.path.join(self.dir, snapshot_name(meta))
        try:
            self.ops.rename(tmp, final)
            self._sync_dir()
        except OSError as e:
            self._abandon(None, tmp)
            raise StorageError(tmp, e.errno, f"writing snapshot {meta.index}@{meta.term} failed: {e}") from e
        self._metas[meta.index] = meta
        self._paths[meta.index] = final
        self._retain()

    def _abandon(self, fd: int | None, tmp: str) -> None:
        """Best effort: close and remove a temp file after a failure."""
        try:
            if fd is not None:
                self.ops.close(fd)
        except OSError:
            pass
        try:
            if self.ops.exists(tmp):
                self.ops.unlink(tmp)
        except OSError:
            pass

    def _retain(self) -> None:
        """Delete all but the newest ``keep`` snapshots."""
        old = sorted(self._metas)[: -self.keep]
        if not old:
            return
        for index in old:
            path = self._paths.pop(index)
            del self._metas[index]
            try:
                self.ops.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not delete old snapshot %s: %s", path, e)
        try:
            self._sync_dir()
        except OSError as e:  # deletions are not essential for correctness
            log.warning("fsync of %s after deleting old snapshots failed: %s", self.dir, e)

    # -- incoming -----------------------------------------------------------

    @property
    def incoming_path(self) -> str:
        """Where a snapshot arriving from the leader is assembled."""
        return os.path.join(self.dir, INCOMING_NAME)

    def begin_incoming(self, meta: SnapshotMeta) -> None:
        """Start a fresh incoming file, discarding any partial one."""
        self.discard_incoming()
        path = self.incoming_path
        try:
            self._incoming_fd = self.ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except OSError as e:
            raise StorageError(path, e.errno, f"cannot create incoming snapshot file: {e}") from e
        self._incoming_meta = meta
        self._incoming_size = 0

    def write_incoming(self, offset: int, data: bytes) -> None:
        """Append a chunk; ``offset`` must be the size received so far."""
        if self._incoming_fd is None:
            raise ValueError("no incoming snapshot: call begin_incoming_snapshot first")
        if offset != self._incoming_size:
            raise ValueError(f"incoming snapshot chunk at offset {offset}, expected {self._incoming_size}")
        try:
            self._write_all(self._incoming_fd, data)
        except OSError as e:
            path = self.incoming_path
            self.discard_incoming()
            raise StorageError(path, e.errno, f"writing incoming snapshot chunk failed: {e}") from e
        self._incoming_size += len(data)

    def finish_incoming(self, meta: SnapshotMeta) -> None:
        """fsync, verify against ``meta``, rename into place, fsync the directory."""
        if self._incoming_fd is None or self._incoming_meta is None:
            raise ValueError("no incoming snapshot to install")
        if self._incoming_meta != meta:
            raise ValueError(f"installing {meta} but receiving {self._incoming_meta}")
        tmp = self.incoming_path
        fd = self._incoming_fd
        self._incoming_fd = None
        self._incoming_meta = None
        try:
            if self.fsync:
                self.ops.fsync(fd)
            self.ops.close(fd)
        except OSError as e:
            self._abandon(None, tmp)
            raise StorageError(tmp, e.errno, f"fsync of incoming snapshot failed: {e}") from e
        try:
            with self.ops.open_read(tmp) as f:
                h = parse_header(f, tmp)
                if h.meta != meta:
                    raise StorageCorrupted(
                        tmp, FIXED_HEADER_SIZE, f"received snapshot is {h.meta}, expected {meta}"
                    )
                verify_body(f, tmp, h)
        except StorageCorrupted:
            self._abandon(None, tmp)
            raise
        final = os.path.join(self.dir, snapshot_name(meta))
        try:
            self.ops.rename(tmp, final)
            self._sync_dir()
        except OSError as e:
            self._abandon(None, tmp)
            raise StorageError(final, e.errno, f"installing snapshot failed: {e}") from e
        self._metas[meta.index] = meta
        self._paths[meta.index] = final
        self._retain()

    def discard_incoming(self) -> None:
        """Drop a partial incoming snapshot (if any)."""
        fd = self._incoming_fd
        self._incoming_fd = None
        self._incoming_meta = None
        self._incoming_size = 0
        self._abandon(fd, self.incoming_path)

    def close(self) -> None:
        """Close the incoming file, if any (it is removed at the next start)."""
        fd = self._incoming_fd
        self._incoming_fd = None
        self._incoming_meta = None
        if fd is not None:
            with contextlib.suppress(OSError):
                self.ops.close(fd)

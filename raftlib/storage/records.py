"""WAL record framing and the encodings shared by every write-ahead log in raftlib.

Owns the byte format both :class:`~raftlib.storage.DiskStorage` (one group)
and :class:`~raftlib.storage.SharedLog` (many groups) write: the frame around
a record, the hard-state encoding, the entry-batch encoding, and the scan that
tells valid records, a torn tail and corruption apart. Each log keeps its own
record *types*; this module only needs to know which ones are valid.

Frame (little endian)::

    u32 length | u32 crc | u8 type | payload (length bytes)

``crc`` is CRC-32 (``zlib.crc32``) of the type byte and the payload.

It also owns appending to a segment (:func:`create_segment`,
:func:`append_record`): one write, one fdatasync, and on failure the partial
record cut off again (or the log poisoned when that is impossible).

Invariant kept by :func:`scan_records`: a record is yielded only if its frame
is whole and its CRC matches; a bad record is reported as a :class:`TornTail`
only when it is in the last segment and no valid record of a known type starts
at any later offset; every other bad record raises
:class:`~raftlib.errors.StorageCorrupted` naming the file and the offset.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator

from raftlib.core import Entry, HardState
from raftlib.errors import StorageCorrupted
from raftlib.storage.base import StorageError
from raftlib.storage.files import FileOps

__all__ = [
    "MAX_RECORD",
    "REC_HEADER",
    "TornTail",
    "append_record",
    "create_segment",
    "decode_batch_body",
    "decode_hs",
    "encode_batch_body",
    "encode_hs",
    "frame",
    "scan_records",
    "truncate_file",
    "write_all",
]

MAX_RECORD = 1 << 30

_REC = struct.Struct("<IIB")  # length, crc, type
REC_HEADER = _REC.size  # 9
_LENCRC = struct.Struct("<II")
_HS = struct.Struct("<QQH")  # term, commit, vote length
_NO_VOTE = 0xFFFF
_BATCH = struct.Struct("<QI")  # first index, count
_ENT = struct.Struct("<QBI")  # term, type, data length
_FLAG_HS = 1


# -- encodings --------------------------------------------------------------------


def frame(rtype: int, payload: bytes) -> bytes:
    """``payload`` framed as a record of type ``rtype``."""
    body = bytes((rtype,)) + payload
    return _LENCRC.pack(len(payload), zlib.crc32(body)) + body


def encode_hs(hs: HardState) -> bytes:
    """u64 term, u64 commit, u16 vote length (0xFFFF: no vote), vote as UTF-8."""
    if hs.vote is None:
        return _HS.pack(hs.term, hs.commit, _NO_VOTE)
    vote = hs.vote.encode()
    if len(vote) >= _NO_VOTE:
        raise ValueError("vote (node id) too long")
    return _HS.pack(hs.term, hs.commit, len(vote)) + vote


def decode_hs(buf: memoryview, pos: int) -> tuple[HardState, int]:
    """The hard state at ``pos`` and the offset after it (``ValueError``/``struct.error`` on junk)."""
    term, commit, vlen = _HS.unpack_from(buf, pos)
    pos += _HS.size
    if vlen == _NO_VOTE:
        return HardState(term, None, commit), pos
    if pos + vlen > len(buf):
        raise ValueError("vote runs past the record")
    return HardState(term, bytes(buf[pos : pos + vlen]).decode(), commit), pos + vlen


def encode_batch_body(hs: HardState | None, entries: list[Entry]) -> bytes:
    """u8 flags (bit 0: a hard state follows), [hard state], u64 first index, u32 count,
    then per entry u64 term, u8 type, u32 length, data (entries must be contiguous)."""
    parts: list[bytes] = [bytes((_FLAG_HS if hs is not None else 0,))]
    if hs is not None:
        parts.append(encode_hs(hs))
    first = entries[0].index if entries else 0
    parts.append(_BATCH.pack(first, len(entries)))
    pack = _ENT.pack
    for e in entries:
        data = e.data
        parts.append(pack(e.term, e.type, len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_batch_body(buf: memoryview) -> tuple[HardState | None, list[Entry]]:
    """Inverse of :func:`encode_batch_body`; the whole of ``buf`` must be used."""
    flags = buf[0]
    pos = 1
    hs: HardState | None = None
    if flags & _FLAG_HS:
        hs, pos = decode_hs(buf, pos)
    first, count = _BATCH.unpack_from(buf, pos)
    pos += _BATCH.size
    out: list[Entry] = []
    unpack = _ENT.unpack_from
    size = len(buf)
    for k in range(count):
        term, etype, ln = unpack(buf, pos)
        pos += _ENT.size
        if pos + ln > size:
            raise ValueError("entry data runs past the record")
        out.append(Entry(first + k, term, bytes(buf[pos : pos + ln]), etype))
        pos += ln
    if pos != size:
        raise ValueError(f"{size - pos} stray bytes after the entries")
    return hs, out


# -- scanning ----------------------------------------------------------------------


class TornTail(Exception):
    """Raised by :func:`scan_records` at a bad record that a crash explains (a torn last write)."""

    def __init__(self, pos: int, reason: str) -> None:
        super().__init__(f"torn tail at offset {pos}: {reason}")
        self.pos = pos
        self.reason = reason


def _record_at(buf: memoryview, pos: int, known: frozenset[int]) -> tuple[int, int] | None:
    """(type, length) of a valid record at ``pos``, or None."""
    size = len(buf)
    if size - pos < REC_HEADER:
        return None
    length, crc, rtype = _REC.unpack_from(buf, pos)
    if rtype not in known or length > MAX_RECORD or pos + REC_HEADER + length > size:
        return None
    if zlib.crc32(buf[pos + 8 : pos + REC_HEADER + length]) != crc:
        return None
    return int(rtype), int(length)


def _valid_record_after(buf: memoryview, bad: int, known: frozenset[int]) -> int | None:
    """Offset of some valid record starting after ``bad``, or None (then ``bad`` is a torn tail)."""
    size = len(buf)
    if size - bad >= REC_HEADER:
        # Fast path: the bad record's length field may be intact.
        length: int = _REC.unpack_from(buf, bad)[0]
        nxt = bad + REC_HEADER + length
        if length <= MAX_RECORD and nxt < size and _record_at(buf, nxt, known) is not None:
            return nxt
    for pos in range(bad + 1, size - REC_HEADER + 1):
        if buf[pos + 8] in known and _record_at(buf, pos, known) is not None:
            return pos
    return None


def _bad_reason(buf: memoryview, pos: int, known: frozenset[int]) -> str:
    size = len(buf)
    if size - pos < REC_HEADER:
        return f"record header cut short ({size - pos} of {REC_HEADER} bytes)"
    length, _crc, rtype = _REC.unpack_from(buf, pos)
    if length > MAX_RECORD:
        return f"implausible record length {length}"
    if pos + REC_HEADER + length > size:
        return f"record of {length} bytes runs past the end of the file"
    if rtype not in known:
        return f"unknown record type {rtype}"
    return "CRC mismatch"


def scan_records(
    buf: memoryview, path: str, known: frozenset[int], last_segment: bool
) -> Iterator[tuple[int, int, memoryview]]:
    """Yield ``(offset, type, payload)`` of each record of a segment's bytes, in order.

    At a bad record: if ``last_segment`` and no valid record follows, raise
    :class:`TornTail` (the caller truncates there or refuses); otherwise raise
    :class:`StorageCorrupted` naming ``path`` and the offset.
    """
    size = len(buf)
    pos = 0
    while pos < size:
        rec = _record_at(buf, pos, known)
        if rec is None:
            reason = _bad_reason(buf, pos, known)
            after = _valid_record_after(buf, pos, known)
            if not last_segment or after is not None:
                where = "" if after is None else f" (valid record follows at offset {after})"
                raise StorageCorrupted(path, pos, reason + where)
            raise TornTail(pos, reason)
        rtype, length = rec
        yield pos, rtype, buf[pos + REC_HEADER : pos + REC_HEADER + length]
        pos += REC_HEADER + length


# -- file helpers ------------------------------------------------------------------


def write_all(ops: FileOps, fd: int, data: bytes) -> None:
    """Write all of ``data`` (looping over short writes; a zero-byte write is EIO)."""
    view = memoryview(data)
    while view:
        n = ops.write(fd, view)
        if n <= 0:
            raise OSError(5, "write returned 0")
        view = view[n:]


def truncate_file(ops: FileOps, path: str, size: int, fsync: bool) -> None:
    """Cut a torn WAL tail off ``path`` at ``size`` (durably when ``fsync``)."""
    try:
        fd = ops.open(path, os.O_WRONLY)
        try:
            ops.ftruncate(fd, size)
            if fsync:
                ops.fsync(fd)
        finally:
            ops.close(fd)
    except OSError as e:
        raise StorageError(path, e.errno, f"cannot truncate a torn WAL tail: {e}") from e


# -- appending to a segment --------------------------------------------------------


def create_segment(
    ops: FileOps, wal_dir: str, path: str, header: bytes, fsync: bool, poison: Callable[[str], None]
) -> int:
    """Create segment ``path`` holding ``header`` (file and directory fsynced when ``fsync``).

    Returns the open descriptor (``O_APPEND``). On failure the file is removed
    again and :class:`StorageError` raised; a failed fsync first calls
    ``poison(reason)``: the log must refuse every further write.
    """
    fd: int | None = None
    try:
        fd = ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        write_all(ops, fd, header)
    except OSError as e:
        _discard(ops, fd, path)
        raise StorageError(path, e.errno, f"cannot start a new WAL segment: {e}") from e
    try:
        if fsync:
            ops.fsync(fd)
            ops.fsync_dir(wal_dir)
    except OSError as e:
        poison("fsync failed")
        _discard(ops, fd, path)
        raise StorageError(path, e.errno, f"fsync of a new WAL segment failed: {e}") from e
    return fd


def _discard(ops: FileOps, fd: int | None, path: str) -> None:
    try:
        if fd is not None:
            ops.close(fd)
        ops.unlink(path)
    except OSError:
        pass


def append_record(
    ops: FileOps,
    fd: int,
    path: str,
    size: int,
    record: bytes,
    sync: bool,
    poison: Callable[[str], None],
) -> None:
    """One write of ``record`` at the end of segment ``path`` (``size`` bytes so far) and,
    when ``sync``, one fdatasync. On failure the partial record is cut off again (best
    effort) and :class:`StorageError` raised, after ``poison(reason)`` when the log
    must refuse every further write (a failed fsync, or a partial write that
    could not be cut off)."""
    try:
        write_all(ops, fd, record)
    except OSError as e:
        # Nothing was acknowledged: cut the partial record off again.
        try:
            ops.ftruncate(fd, size)
        except OSError:
            poison("a failed write could not be rolled back")
        raise StorageError(path, e.errno, f"WAL write failed: {e}") from e
    if sync:
        try:
            ops.fdatasync(fd)
        except OSError as e:
            # The page cache may have dropped our dirty pages (or not): never
            # trust this file handle again. Best effort: cut the record off.
            poison("fsync failed")
            with contextlib.suppress(OSError):
                ops.ftruncate(fd, size)
            raise StorageError(path, e.errno, f"WAL fsync failed: {e}") from e

"""WAL record framing and the encodings shared by every write-ahead log in raftlib.

Owns the byte format both :class:`~raftlib.storage.DiskStorage` (one group)
and :class:`~raftlib.storage.SharedLog` (many groups) write: the frame around
a record, the hard-state encoding, the entry-batch encoding, and the scan that
tells valid records, a torn tail and corruption apart. Each log keeps its own
record *types*; this module only needs to know which ones are valid.

Frame (little endian)::

    u32 length | u32 crc | u8 type | payload (length bytes)

``crc`` is CRC-32 (``zlib.crc32``) of the type byte and the payload.

It also owns the segment files as such: appending (:class:`SegmentAppender`:
one write, one fdatasync, on failure the partial record cut off again, or
the log poisoned when that is impossible) and reading them back in order
(:func:`list_segments`, :func:`replay_segment`: seq gaps, torn tails, empty
segments left by an interrupted rollover).

Invariant kept by :func:`scan_records`: a record is yielded only if its frame
is whole and its CRC matches; a bad record is reported as a :class:`TornTail`
only when it is in the last segment and no valid record of a known type starts
at any later offset; every other bad record raises
:class:`~raftlib.errors.StorageCorrupted` naming the file and the offset.
"""

from __future__ import annotations

import contextlib
import logging
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
    "SegmentAppender",
    "TornTail",
    "append_record",
    "create_segment",
    "decode_batch_body",
    "delete_segment",
    "decode_hs",
    "encode_batch_body",
    "encode_hs",
    "frame",
    "list_segments",
    "replay_segment",
    "scan_records",
    "truncate_file",
    "write_all",
]

log = logging.getLogger("raftlib.storage")

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


class SegmentAppender:
    """The append end of a segmented WAL: the active segment's descriptor, path and size.

    Also whether a failure *poisoned* the log (a failed fsync, or a partial
    write that could not be cut off): then every later write is refused until
    a restart recovers from what is really on disk.
    """

    def __init__(self, ops: FileOps, wal_dir: str, fsync: bool) -> None:
        self.ops = ops
        self.wal_dir = wal_dir
        self.fsync = fsync
        self.fd: int | None = None
        self.path = wal_dir
        self.size = 0
        self.failed: str | None = None

    def _poison(self, reason: str) -> None:
        self.failed = reason

    def check_writable(self) -> None:
        """Raise :class:`StorageError` if an earlier failure poisoned the log."""
        if self.failed is not None:
            raise StorageError(self.path, None, f"{self.failed} earlier; restart required")

    def attach(self, path: str, size: int) -> None:
        """Continue appending to the existing segment ``path`` (``size`` valid bytes), after recovery."""
        try:
            fd = self.ops.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise StorageError(path, e.errno, f"cannot open the WAL segment: {e}") from e
        self.close()
        self.fd, self.path, self.size = fd, path, size

    def start(self, path: str, header: bytes) -> None:
        """Seal the active segment and make ``path`` (holding ``header``, fsynced) the active one."""
        fd = create_segment(self.ops, self.wal_dir, path, header, self.fsync, self._poison)
        self.close()
        self.fd, self.path, self.size = fd, path, len(header)

    def append(self, record: bytes, sync: bool) -> None:
        """One write and (when ``sync`` and the log fsyncs) one fdatasync of ``record``."""
        assert self.fd is not None
        append_record(self.ops, self.fd, self.path, self.size, record, self.fsync and sync, self._poison)
        self.size += len(record)

    def close(self) -> None:
        """Close the active segment's descriptor (a failure is only logged)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                self.ops.close(fd)
            except OSError as e:
                log.warning("closing WAL segment %s failed: %s", self.path, e)


# -- reading segments ---------------------------------------------------------------


def list_segments(
    ops: FileOps, wal_dir: str, parse_seq: Callable[[str], int | None]
) -> list[tuple[int, str]]:
    """``(seq, path)`` of the segment files in ``wal_dir``, in seq order.

    ``parse_seq`` gives a file name's seq, or ``None`` if it is not a segment
    name; a ``.wal`` file that does not parse, or a seq missing between two
    others, raises :class:`StorageCorrupted`.
    """
    try:
        names = ops.listdir(wal_dir)
    except FileNotFoundError:
        names = []
    found: list[tuple[int, str]] = []
    for name in names:
        seq = parse_seq(name)
        if seq is None:
            if name.endswith(".wal"):
                raise StorageCorrupted(os.path.join(wal_dir, name), 0, "unexpected WAL file name")
            continue
        found.append((seq, os.path.join(wal_dir, name)))
    found.sort()
    for i in range(1, len(found)):
        if found[i][0] != found[i - 1][0] + 1:
            raise StorageCorrupted(found[i][1], 0, f"WAL segment {found[i - 1][0] + 1:016x} is missing")
    return found


def replay_segment(
    ops: FileOps,
    path: str,
    known: frozenset[int],
    last_segment: bool,
    repair: bool,
    fsync: bool,
    apply: Callable[[int, int, memoryview], None],
) -> int:
    """Feed each record of segment ``path`` to ``apply(offset, type, payload)``; return the size kept.

    ``apply`` raises ``ValueError``/``struct.error``/``UnicodeDecodeError`` for
    a record that does not decode: that becomes :class:`StorageCorrupted` at
    its offset. A torn tail (see :func:`scan_records`) is truncated when
    ``repair`` (with a warning), else :class:`StorageCorrupted`. A segment left
    empty (its creation was torn) is removed when ``repair``; 0 is returned.
    """
    buf = memoryview(ops.read_file(path))
    size = len(buf)
    try:
        for pos, rtype, body in scan_records(buf, path, known, last_segment):
            try:
                apply(pos, rtype, body)
            except (ValueError, struct.error, UnicodeDecodeError) as e:
                raise StorageCorrupted(path, pos, f"undecodable record (type {rtype}): {e}") from None
    except TornTail as t:
        if not repair:
            raise StorageCorrupted(path, t.pos, t.reason + " (unrepaired torn tail)") from None
        log.warning(
            "WAL %s: torn last record at offset %d (%s); truncating %d bytes",
            path,
            t.pos,
            t.reason,
            size - t.pos,
        )
        truncate_file(ops, path, t.pos, fsync)
        size = t.pos
    if size == 0 and repair:
        # The segment's creation was torn: it holds nothing and was never used.
        log.warning("WAL %s: empty segment left by an interrupted rollover; removing it", path)
        try:
            ops.unlink(path)
            if fsync:
                ops.fsync_dir(os.path.dirname(path))
        except OSError as e:
            raise StorageError(path, e.errno, f"cannot remove an empty WAL segment: {e}") from e
    return size


def delete_segment(ops: FileOps, path: str) -> None:
    """Delete a segment nothing needs any more (already gone is fine); the caller fsyncs the directory."""
    try:
        ops.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StorageError(path, e.errno, f"cannot delete a compacted WAL segment: {e}") from e

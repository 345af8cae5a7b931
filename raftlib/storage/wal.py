"""The segmented write-ahead log, and :class:`DiskStorage` built on it.

Layout of a data directory::

    <data_dir>/wal/<seq:016x>-<firstindex:016x>.wal   log segments, replayed in seq order
    <data_dir>/snap/<index:016x>-<term:016x>.snap     snapshots (see raftlib.storage.snapshot)

Record framing (little endian)::

    u32 length | u32 crc | u8 type | payload (length bytes)

``crc`` is CRC-32 (``zlib.crc32``, the IEEE polynomial) of the type byte and
the payload. Record types:

* ``SEGMENT`` (1), first record of every segment: u32 format version, u64 seq,
  u64 first index, then the hard state current when the segment was created
  (so deleting older segments never loses the hard state).
* ``BATCH`` (2), one per :meth:`DiskStorage.save`: u8 flags (bit 0: a hard
  state follows), the hard state if present, u64 first index, u32 count, then
  per entry u64 term, u8 type, u32 length, data. A batch whose first index is
  at or below the last stored index replaces the stored entries from there
  (that is how a truncation is recorded). One save is one record, so after a
  crash it is either wholly present or wholly absent.
* ``SNAPSHOT`` (3), written when a snapshot from the leader is installed: u64
  index, u64 term, u8 keep. Entries up to ``index`` are dropped; later ones
  too unless ``keep``.

Hard state encoding: u64 term, u64 commit, u16 vote length (0xFFFF: no vote),
vote as UTF-8.

Recovery rule: a record is *bad* when its header or body runs past the end
of the file, its length is implausible, or its CRC does not match. A bad
record in the **last** segment with no valid record at any byte offset after
it is a *torn tail* (a write the crash interrupted): the file is truncated
there, with a warning. Any other bad record (in an earlier segment, or
followed by a valid record) raises :class:`~raftlib.errors.StorageCorrupted`
naming the file and the record's offset. A record with a valid CRC that does
not decode is corruption too.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from raftlib.core import Entry, HardState, PersistentState, SnapshotMeta
from raftlib.errors import StorageCorrupted
from raftlib.storage.base import StorageError
from raftlib.storage.files import FileOps
from raftlib.storage.lock import DataDirLock
from raftlib.storage.records import (
    SegmentAppender,
    decode_batch_body,
    decode_hs,
    delete_segment,
    encode_batch_body,
    encode_hs,
    frame,
    list_segments,
    replay_segment,
)
from raftlib.storage.snapshot import SnapshotStore

__all__ = ["DEFAULT_SEGMENT_BYTES", "DiskStorage", "WAL_VERSION"]

log = logging.getLogger("raftlib.storage")

WAL_VERSION = 1
DEFAULT_SEGMENT_BYTES = 64 << 20
REC_SEGMENT = 1
REC_BATCH = 2
REC_SNAPSHOT = 3
_KNOWN_TYPES = frozenset({REC_SEGMENT, REC_BATCH, REC_SNAPSHOT})

_SEG = struct.Struct("<IQQ")  # version, seq, first index
_SNAP = struct.Struct("<QQB")  # index, term, keep


# -- encoding --------------------------------------------------------------


def encode_segment_header(seq: int, first_index: int, hs: HardState) -> bytes:
    """The framed SEGMENT record that starts a segment file."""
    return frame(REC_SEGMENT, _SEG.pack(WAL_VERSION, seq, first_index) + encode_hs(hs))


def encode_batch(hs: HardState | None, entries: list[Entry]) -> bytes:
    """The framed BATCH record of one save (entries must be contiguous)."""
    return frame(REC_BATCH, encode_batch_body(hs, entries))


def encode_snapshot_mark(index: int, term: int, keep: bool) -> bytes:
    """The framed SNAPSHOT record: the install rule applied at ``index``."""
    return frame(REC_SNAPSHOT, _SNAP.pack(index, term, 1 if keep else 0))


def replay_batch(entries: list[Entry], batch: list[Entry], floor: int, strict: bool) -> list[Entry]:
    """The replayed log after a stored batch (non-empty): appended, or replacing from its first index.

    Raises ``ValueError`` on a gap after the stored entries, or (``strict``:
    the floor is known exactly) a first batch that does not start at ``floor + 1``.
    """
    first = batch[0].index
    if entries:
        base = entries[0].index
        if first > entries[-1].index + 1:
            raise ValueError(f"entries start at {first}, after a gap (last stored is {entries[-1].index})")
        if first <= base:
            return batch
        del entries[first - base :]
        entries.extend(batch)
        return entries
    if strict and first > floor + 1:
        raise ValueError(f"entries start at {first} after a snapshot at {floor}")
    return batch


def replay_install(entries: list[Entry], index: int, keep: bool) -> list[Entry]:
    """The replayed log after an install mark at ``index``: later entries survive only if ``keep``."""
    if keep and entries and entries[-1].index > index:
        return entries[max(0, index + 1 - entries[0].index) :]
    return []


def reconcile_with_snapshot(
    path: str, entries: list[Entry], floor: int, snap: SnapshotMeta | None
) -> tuple[list[Entry], int, tuple[int, int] | None]:
    """Check a replayed log against the latest snapshot at recovery.

    Returns the entries to keep, the new floor (index below which the log
    holds nothing) and, when a snapshot from the leader was renamed into place
    but its log record was lost in a crash, the ``(index, term)`` install mark
    the caller must now write. Raises :class:`StorageCorrupted` (naming
    ``path``) when the log starts after what the snapshot covers.
    """
    mark: tuple[int, int] | None = None
    if snap is not None:
        if entries:
            first, last = entries[0].index, entries[-1].index
            if first > snap.index + 1:
                raise StorageCorrupted(
                    path, 0, f"the log starts at {first} but the latest snapshot ends at {snap.index}"
                )
            if last < snap.index or (first <= snap.index and entries[snap.index - first].term != snap.term):
                # A snapshot installed from the leader whose log update did not
                # reach the WAL before a crash: finish the install rule now.
                log.warning(
                    "log does not match snapshot %d@%d: dropping the stored entries", snap.index, snap.term
                )
                entries = []
                mark = (snap.index, snap.term)
        floor = max(floor, snap.index)
    elif entries and entries[0].index > floor + 1:
        raise StorageCorrupted(
            path, 0, f"the log starts at {entries[0].index} and no snapshot covers what precedes it"
        )
    return entries, floor, mark


@dataclass(slots=True)
class _Segment:
    seq: int
    path: str
    size: int
    max_index: int = 0
    """Largest entry index written in this segment (0: none)."""


def _segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def _parse_segment_seq(name: str) -> int | None:
    """The seq of a segment file name ``<seq:016x>-<firstindex:016x>.wal``, or None."""
    if not name.endswith(".wal") or len(name) != 16 + 1 + 16 + 4 or name[16] != "-":
        return None
    try:
        int(name[17:33], 16)
        return int(name[:16], 16)
    except ValueError:
        return None


@dataclass(slots=True)
class _Replay:
    """What replaying the segments produced."""

    hard_state: HardState
    entries: list[Entry]
    floor: int
    """Index below which the log holds nothing (the last SNAPSHOT record's index), 0 if none."""
    segments: list[_Segment]


class DiskStorage:
    """Durable :class:`~raftlib.storage.Storage`: a segmented WAL plus snapshot files.

    ``fsync=False`` skips every fsync (benchmarks and tests only: nothing is
    durable then, and a warning is logged). ``segment_bytes`` bounds a segment
    (a new one starts once it is exceeded). ``keep_snapshots`` is how many
    snapshots are kept. ``fileops`` replaces the file operations (fault
    injection, see :class:`~raftlib.storage.files.FileOps`). ``lock`` takes the
    data directory's lock (:mod:`raftlib.storage.lock`) at load, so a second
    process cannot write it; read-only tools pass ``False``.

    Nothing happens on disk until :meth:`load`; any other method loads first
    if needed.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        keep_snapshots: int = 2,
        fileops: FileOps | None = None,
        lock: bool = True,
    ) -> None:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        self.data_dir = os.fspath(data_dir)
        self.wal_dir = os.path.join(self.data_dir, "wal")
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.ops = fileops if fileops is not None else FileOps()
        self.snapshots = SnapshotStore(os.path.join(self.data_dir, "snap"), self.ops, fsync, keep_snapshots)
        if not fsync:
            log.warning(
                "DiskStorage(%s) with fsync=False: writes are NOT durable (tests/benchmarks only)",
                self.data_dir,
            )
        self._lock = threading.RLock()
        self._snapshot_write_lock = threading.Lock()
        self._take_lock = lock
        self._dir_lock: DataDirLock | None = None
        self._loaded = False
        self._closed = False
        self._segments: list[_Segment] = []
        self._wal = SegmentAppender(self.ops, self.wal_dir, fsync)
        self._hs = HardState()
        # Terms of the stored entries offset+1 .. offset+len(terms).
        self._offset = 0
        self._terms: array[int] = array("Q")

    # -- recovery -----------------------------------------------------------

    def load(self) -> PersistentState:
        """Recover (first call) and return the durable state; see :meth:`Storage.load`."""
        with self._lock:
            self._check_open()
            if not self._loaded:
                return self._recover()
            r = self._replay(repair=False)
            return PersistentState(r.hard_state, r.entries, self.snapshots.latest())

    def _recover(self) -> PersistentState:
        ops = self.ops
        try:
            ops.makedirs(self.data_dir)
            ops.makedirs(self.wal_dir)
        except OSError as e:
            raise StorageError(self.wal_dir, e.errno, f"cannot create the data directory: {e}") from e
        if self._take_lock and self._dir_lock is None:
            self._dir_lock = DataDirLock.acquire(self.data_dir)
        try:
            return self._recover_locked()
        except BaseException:
            if self._dir_lock is not None and not self._loaded:  # a failed start frees the directory
                self._dir_lock.release()
                self._dir_lock = None
            raise

    def _recover_locked(self) -> PersistentState:
        self.snapshots.scan()
        r = self._replay(repair=True)
        snap = self.snapshots.latest()
        entries, floor, mark = reconcile_with_snapshot(self.wal_dir, r.entries, r.floor, snap)
        self._segments = r.segments
        self._hs = r.hard_state
        if entries:
            self._offset = entries[0].index - 1
            self._terms = array("Q", [e.term for e in entries])
        else:
            self._offset = floor
            self._terms = array("Q")
        if self._segments:
            self._wal.attach(self._segments[-1].path, self._segments[-1].size)
        self._loaded = True
        if not self._segments:
            self._roll()
        if mark is not None:
            self._append(encode_snapshot_mark(mark[0], mark[1], False), 0)
        return PersistentState(self._hs, entries, snap)

    def _replay(self, repair: bool) -> _Replay:
        state = _Replay(HardState(), [], 0, [])
        found = list_segments(self.ops, self.wal_dir, _parse_segment_seq)
        for i, (seq, path) in enumerate(found):
            seg = _Segment(seq, path, 0)
            seg.size = replay_segment(
                self.ops,
                path,
                _KNOWN_TYPES,
                i == len(found) - 1,
                repair,
                self.fsync,
                functools.partial(self._apply_record, seg, state),
            )
            if seg.size:
                state.segments.append(seg)
        return state

    def _apply_record(self, seg: _Segment, r: _Replay, pos: int, rtype: int, body: memoryview) -> None:
        """Apply one replayed record to ``r`` (ValueError and friends: it does not decode)."""
        if pos == 0:
            if rtype != REC_SEGMENT:
                raise ValueError("segment does not start with a SEGMENT record")
            version, hseq, _first = _SEG.unpack_from(body)
            if version != WAL_VERSION:
                raise ValueError(f"unknown WAL format version {version}")
            if hseq != seg.seq:
                raise ValueError(f"segment header says seq {hseq}, file name says {seg.seq}")
            seg_hs, end = decode_hs(body, _SEG.size)
            if end != len(body):
                raise ValueError("stray bytes after the segment header")
            r.hard_state = seg_hs  # the hard state current when the segment started
        elif rtype == REC_BATCH:
            bhs, ents = decode_batch_body(body)
            if bhs is not None:
                r.hard_state = bhs
            if ents:
                r.entries = replay_batch(r.entries, ents, r.floor, strict=r.floor > 0)
                seg.max_index = max(seg.max_index, ents[-1].index)
        elif rtype == REC_SNAPSHOT:
            index, _term, keep = _SNAP.unpack_from(body)
            if len(body) != _SNAP.size:
                raise ValueError("bad SNAPSHOT record length")
            r.entries = replay_install(r.entries, index, bool(keep))
            r.floor = index
        else:
            raise ValueError("SEGMENT record in the middle of a segment")

    # -- writing ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("storage is closed")

    def _ensure_loaded(self) -> None:
        self._check_open()
        if not self._loaded:
            self._recover()

    def _check_writable(self) -> None:
        self._ensure_loaded()
        self._wal.check_writable()

    def _roll(self) -> None:
        """Seal the active segment and start a new one (header + hard state, fsynced)."""
        seq = self._segments[-1].seq + 1 if self._segments else 1
        path = os.path.join(self.wal_dir, _segment_name(seq, self.last_index() + 1))
        header = encode_segment_header(seq, self.last_index() + 1, self._hs)
        self._wal.start(path, header)
        self._segments.append(_Segment(seq, path, len(header)))

    def _append(self, record: bytes, max_index: int, sync: bool = True) -> None:
        """One write and (when ``sync``) one fsync of ``record`` at the end of the active segment."""
        if self._wal.size >= self.segment_bytes:
            self._roll()
        self._wal.append(record, sync)
        seg = self._segments[-1]
        seg.size = self._wal.size
        if max_index > seg.max_index:
            seg.max_index = max_index

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Append ``entries`` and ``hard_state`` as one record with one fsync; see :meth:`Storage.save`.

        ``sync=False`` (only for a hard state whose commit index alone changed,
        see ``Ready.must_sync``) writes without the fsync; a later synced save
        makes it durable too.
        """
        with self._lock:
            self._check_writable()
            if hard_state is None and not entries:
                return
            last = self.last_index()
            if entries:
                first = entries[0].index
                if not self._offset < first <= last + 1:
                    raise ValueError(
                        f"entries start at {first}: outside the writable range {self._offset + 1}..{last + 1}"
                    )
                for k, e in enumerate(entries):
                    if e.index != first + k:
                        raise ValueError(f"entries are not contiguous at {e.index}")
            record = encode_batch(hard_state, entries)
            self._append(record, entries[-1].index if entries else 0, sync)
            if hard_state is not None:
                self._hs = hard_state
            if entries:
                del self._terms[first - self._offset - 1 :]
                self._terms.extend(e.term for e in entries)

    # -- queries ------------------------------------------------------------------

    def last_index(self) -> int:
        """Index of the last stored entry (the snapshot's index if none follows it; 0 if empty)."""
        with self._lock:
            self._ensure_loaded()
            return self._offset + len(self._terms)

    def hard_state(self) -> HardState:
        """The last hard state saved."""
        with self._lock:
            self._ensure_loaded()
            return self._hs

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Stored entries in ``[lo, hi)``, read back from the WAL (slow; tests and tools)."""
        with self._lock:
            self._ensure_loaded()
            ents = self._replay(repair=False).entries
            return [e for e in ents if lo <= e.index < hi]

    def segment_paths(self) -> list[str]:
        """Paths of the WAL segments, oldest first (tests and tools)."""
        with self._lock:
            self._ensure_loaded()
            return [s.path for s in self._segments]

    # -- compaction ------------------------------------------------------------------

    def compact(self, first_index: int) -> None:
        """Delete the oldest segments whose entries are all below ``first_index``.

        The active (last) segment is never deleted; since each segment starts
        with the hard state, deleting older ones never loses it.
        """
        with self._lock:
            self._check_writable()
            doomed: list[_Segment] = []
            for seg in self._segments[:-1]:
                if seg.max_index >= first_index:
                    break
                doomed.append(seg)
            for seg in doomed:
                delete_segment(self.ops, seg.path)
                self._segments.remove(seg)
            if doomed and self.fsync:
                try:
                    self.ops.fsync_dir(self.wal_dir)
                except OSError as e:
                    raise StorageError(
                        self.wal_dir, e.errno, f"fsync of the WAL directory failed: {e}"
                    ) from e
            drop = min(first_index - 1 - self._offset, len(self._terms))
            if drop > 0:
                del self._terms[:drop]
                self._offset += drop

    # -- snapshots -----------------------------------------------------------------------

    def save_snapshot(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        """Stream a local snapshot to disk (temp file, fsync, rename, directory fsync).

        The temp file is written without holding the WAL's lock, so appends
        (and the acknowledgements waiting on them) go on while a large
        snapshot is written; only the rename and retention take the lock.
        """
        with self._lock:
            self._check_writable()
        with self._snapshot_write_lock:
            tmp = self.snapshots.write_temp(meta, chunks)
            with self._lock:
                self.snapshots.commit_temp(meta, tmp)

    def begin_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Start receiving a snapshot from the leader (discarding any partial one)."""
        with self._lock:
            self._check_writable()
            self.snapshots.begin_incoming(meta)

    def write_incoming_chunk(self, offset: int, data: bytes) -> None:
        """Write a chunk of the incoming snapshot at ``offset`` (must be the size so far)."""
        with self._lock:
            self._check_writable()
            self.snapshots.write_incoming(offset, data)

    def install_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Verify and install the received snapshot, then apply the install rule to the log."""
        with self._lock:
            self._check_writable()
            self.snapshots.finish_incoming(meta)
            keep = self._offset < meta.index <= self._offset + len(self._terms) and (
                self._terms[meta.index - self._offset - 1] == meta.term
            )
            self._append(encode_snapshot_mark(meta.index, meta.term, keep), 0)
            if keep:
                del self._terms[: meta.index - self._offset]
            else:
                del self._terms[:]
            self._offset = meta.index

    def latest_snapshot(self) -> SnapshotMeta | None:
        """Meta of the newest stored snapshot."""
        with self._lock:
            self._ensure_loaded()
            return self.snapshots.latest()

    def open_snapshot(self, index: int) -> BinaryIO:
        """A checked file object positioned at the state-machine bytes of snapshot ``index``."""
        with self._lock:
            self._ensure_loaded()
            path = self.snapshots.path(index)
        # Checking a large file's CRC must not hold up WAL appends.
        return self.snapshots.open_path(path)

    def read_snapshot_chunk(self, index: int, offset: int, size: int) -> tuple[bytes, bool]:
        """Raw bytes of the stored snapshot file for sending, and whether they reach its end."""
        with self._lock:
            self._ensure_loaded()
            path = self.snapshots.path(index)
        return self.snapshots.read_chunk_path(path, offset, size)

    def close(self) -> None:
        """Close the files (a partial incoming snapshot is discarded at the next start)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._dir_lock is not None:
                self._dir_lock.release()
            self.snapshots.close()
            self._wal.close()

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

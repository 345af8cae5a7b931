"""One write-ahead log shared by many Raft groups: :class:`SharedLog` and its per-group :class:`GroupStorage`.

A process hosting many groups (``raftlib.RaftHost``) keeps them all in one
data directory with **one** segmented WAL: every group's records of a loop
turn go into one record, written with one ``write`` and made durable with one
``fdatasync``, however many groups took part. Snapshots stay per group.

Layout of a data directory::

    <data_dir>/shared-wal/<seq:016x>.wal         log segments, replayed in seq order
    <data_dir>/groups/<escaped id>/snap/         that group's snapshots (raftlib.storage.snapshot)
    <data_dir>/LOCK                              the data-directory lock

Records use the framing of :mod:`raftlib.storage.records` (u32 length, u32
CRC-32 of type+payload, u8 type) with their own types, so a shared log and a
one-group WAL are never mistaken for each other. A group id is written as
``u8 length (1..255) | UTF-8``.

* ``SEGMENT`` (17), first record of every segment: u32 version, u64 seq,
  u32 count, then per live group: id, hard state, u64 floor (the index below
  which the group stores nothing: its compaction point or installed snapshot).
* ``WRITE`` (18), one per :meth:`SharedLog.write`: u32 count, then per group
  section: id, u32 length, a batch body exactly as ``DiskStorage``'s BATCH
  (flags, [hard state], u64 first index, u32 count, entries). Sections apply
  in order; a section whose first index is at or below the group's last
  stored index replaces its entries from there. One call is one record, so
  after a crash it is wholly present or wholly absent, for every group in it.
* ``INSTALL`` (19), a snapshot from the leader was installed: id, u64 index,
  u64 term, u8 keep (the install rule, as ``DiskStorage``'s SNAPSHOT record).
* ``REMOVE`` (20): id. The group's earlier records are garbage from here on;
  the id may be used again later by a fresh group.

Invariants:

* Every segment starts with the hard state and floor of every live group, so
  a segment can be deleted once no group needs its entries: for every group
  incarnation with records in it, the group was removed or compacted past the
  largest index it wrote there. Segments are deleted oldest first only (the
  seq numbers stay gap free) and never the active one.
* Per segment, each group's largest index is kept in memory, and the oldest
  segment remembers which group holds it (a cursor that only moves forward:
  "not needed any more" never becomes false again), so ``compact`` costs O(1)
  while another group holds the oldest segment.
* Recovery follows ``DiskStorage``'s rules per group (torn tail of the last
  segment truncated; any other bad record raises ``StorageCorrupted`` naming
  file and offset; a snapshot renamed into place whose INSTALL record was lost
  is finished at start).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from raftlib.core import Entry, HardState, PersistentState, SnapshotMeta
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
from raftlib.storage.wal import DEFAULT_SEGMENT_BYTES, reconcile_with_snapshot, replay_batch, replay_install

__all__ = ["GroupRemoved", "GroupStorage", "SHARED_WAL_VERSION", "SharedLog", "group_dir_name"]

log = logging.getLogger("raftlib.storage")

SHARED_WAL_VERSION = 1
REC_SEGMENT = 17
REC_WRITE = 18
REC_INSTALL = 19
REC_REMOVE = 20
_KNOWN_TYPES = frozenset({REC_SEGMENT, REC_WRITE, REC_INSTALL, REC_REMOVE})

_SEG = struct.Struct("<IQI")  # version, seq, group count
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INSTALL = struct.Struct("<QQB")  # index, term, keep
MAX_GROUP_ID_BYTES = 255
WAL_DIR = "shared-wal"
GROUPS_DIR = "groups"
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")


class GroupRemoved(ValueError):
    """The group this view belongs to was removed from its :class:`SharedLog`."""


# -- group ids ------------------------------------------------------------------------


def _check_group_id(group_id: object) -> bytes:
    if not isinstance(group_id, str) or not group_id:
        raise ValueError(f"a group id is a non-empty str, not {group_id!r}")
    try:
        raw = group_id.encode()
    except UnicodeEncodeError as e:
        raise ValueError(f"group id {group_id!r} is not valid UTF-8: {e}") from None
    if len(raw) > MAX_GROUP_ID_BYTES:
        raise ValueError(f"group id is {len(raw)} UTF-8 bytes, at most {MAX_GROUP_ID_BYTES} allowed")
    return raw


def group_dir_name(group_id: str) -> str:
    """The directory name of a group under ``groups/``: safe on any file system, one per id.

    Lowercase ASCII letters, digits, ``_`` and ``-`` stay; every other byte of
    the UTF-8 id becomes ``%XX``. A name over 100 characters is cut to 60 and
    followed by ``~`` and 32 hex digits of the id's SHA-256 (``~`` never
    appears otherwise). Case-insensitive file systems and ``.``/``..`` are safe.
    """
    raw = _check_group_id(group_id)
    name = "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)
    if len(name) > 100:
        name = name[:60] + "~" + hashlib.sha256(raw).hexdigest()[:32]
    return name


def _encode_gid(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def _decode_gid(buf: memoryview, pos: int) -> tuple[str, int]:
    n = buf[pos]
    pos += 1
    if n == 0 or pos + n > len(buf):
        raise ValueError("bad group id length")
    return bytes(buf[pos : pos + n]).decode(), pos + n


# -- state -------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Group:
    """One incarnation of a group (a removed id used again is a new object)."""

    gid: str
    raw: bytes
    hs: HardState = field(default_factory=HardState)
    offset: int = 0
    """Index below which nothing is stored; ``entries`` are offset+1 .. offset+len(entries)."""
    entries: list[Entry] = field(default_factory=list)
    """The stored entries after the floor, in memory (bounded by compaction, as the core's log)."""
    durable: bool = False
    """Some record of this incarnation is in the log (it appears in groups() and segment headers)."""
    removed: bool = False
    snapshots: SnapshotStore | None = None
    snapshot_write_lock: threading.Lock = field(default_factory=threading.Lock)
    # replay only
    exact: bool = True
    """The floor is known exactly (else a segment header's lower bound: the log may start later)."""

    def last_index(self) -> int:
        return self.offset + len(self.entries)


@dataclass(eq=False, slots=True)
class _Seg:
    seq: int
    path: str
    size: int
    top: dict[_Group, int] = field(default_factory=dict)
    """Group incarnation -> largest entry (or install) index it wrote here; 0: only a hard state."""
    order: list[_Group] = field(default_factory=list)
    """The keys of ``top`` in insertion order, for the GC cursor."""
    cursor: int = 0
    """order[:cursor] no longer need this segment (garbage collection of the oldest one)."""

    def note(self, g: _Group, index: int) -> None:
        old = self.top.get(g)
        if old is None:
            self.top[g] = index
            self.order.append(g)
        elif index > old:
            self.top[g] = index


def _segment_name(seq: int) -> str:
    return f"{seq:016x}.wal"


def _parse_segment_name(name: str) -> int | None:
    """The seq of a segment file name ``<seq:016x>.wal``, or None."""
    if not name.endswith(".wal") or len(name) != 16 + 4:
        return None
    try:
        return int(name[:16], 16)
    except ValueError:
        return None


class SharedLog:
    """One data directory, one segmented WAL for many groups; one fsync per :meth:`write` call.

    ``fsync=False`` skips every fsync (benchmarks and tests only).
    ``segment_bytes`` bounds a segment. ``file_ops`` replaces the file
    operations (fault injection, see :class:`~raftlib.storage.files.FileOps`).
    :meth:`open` recovers and takes the data-directory lock; every other
    method opens first if needed. Thread-safe: one lock around every method.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        file_ops: FileOps | None = None,
        keep_snapshots: int = 2,
    ) -> None:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be at least 1")
        self.data_dir = os.fspath(data_dir)
        self.wal_dir = os.path.join(self.data_dir, WAL_DIR)
        self.groups_dir = os.path.join(self.data_dir, GROUPS_DIR)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.keep_snapshots = keep_snapshots
        self.ops = file_ops if file_ops is not None else FileOps()
        if not fsync:
            log.warning(
                "SharedLog(%s) with fsync=False: writes are NOT durable (tests/benchmarks only)",
                self.data_dir,
            )
        self.stats: dict[str, int] = {"fsyncs": 0, "writes": 0, "segments": 0, "bytes_written": 0}
        """Counters: ``fsyncs`` (file syncs of the WAL), ``writes`` (records appended),
        ``segments`` (current number of segment files), ``bytes_written``, ``segments_deleted``."""
        self.stats["segments_deleted"] = 0
        self._lock = threading.RLock()
        self._dir_lock: DataDirLock | None = None
        self._opened = False
        self._closed = False
        self._segs: list[_Seg] = []
        self._wal = SegmentAppender(self.ops, self.wal_dir, fsync)
        self._groups: dict[str, _Group] = {}
        self._views: dict[str, GroupStorage] = {}

    # -- recovery -----------------------------------------------------------------------

    def open(self) -> None:
        """Recover from the directory (first call only) and take its lock.

        Raises :class:`~raftlib.errors.StorageCorrupted` on corruption a crash
        cannot explain; a torn last record is truncated with a warning.
        """
        with self._lock:
            if self._closed:
                raise ValueError("shared log is closed")
            if self._opened:
                return
            try:
                self.ops.makedirs(self.wal_dir)
                self.ops.makedirs(self.groups_dir)
            except OSError as e:
                raise StorageError(self.wal_dir, e.errno, f"cannot create the data directory: {e}") from e
            if self._dir_lock is None:
                self._dir_lock = DataDirLock.acquire(self.data_dir)
            try:
                self._recover()
            except BaseException:
                self._dir_lock.release()
                self._dir_lock = None
                self._wal.close()
                raise
            self._opened = True

    def _recover(self) -> None:
        live, segs = self._replay(repair=True)
        marks: list[tuple[_Group, int, int]] = []
        for g in live.values():
            g.durable = True
            g.snapshots = self._snapshot_store(g.gid)
            g.snapshots.scan()
            entries, floor, mark = reconcile_with_snapshot(
                g.snapshots.dir, g.entries, g.offset, g.snapshots.latest()
            )
            # The log may keep entries at or below the latest snapshot (a compaction
            # point is a lower bound); load() returns them as DiskStorage does.
            g.offset = entries[0].index - 1 if entries else floor
            g.entries = entries
            if mark is not None:
                marks.append((g, mark[0], mark[1]))
        self._groups = live
        self._segs = segs
        self._remove_stale_group_dirs()
        self.stats["segments"] = len(segs)
        if segs:
            self._wal.attach(segs[-1].path, segs[-1].size)
        else:
            self._roll()
        for g, index, term in marks:
            self._append(frame(REC_INSTALL, _encode_gid(g.raw) + _INSTALL.pack(index, term, 0)), True)
            self._segs[-1].note(g, index)

    def _snapshot_store(self, gid: str) -> SnapshotStore:
        d = os.path.join(self.groups_dir, group_dir_name(gid), "snap")
        return SnapshotStore(d, self.ops, self.fsync, self.keep_snapshots)

    def _remove_stale_group_dirs(self) -> None:
        """Delete the directories of groups the log does not know (removed, or never made durable)."""
        keep = {group_dir_name(g) for g in self._groups}
        try:
            names = self.ops.listdir(self.groups_dir)
        except FileNotFoundError:
            return
        stale = [n for n in names if n not in keep]
        for name in stale:
            log.warning("removing the directory of a group the log does not hold: %s", name)
            self._remove_tree(os.path.join(self.groups_dir, name))
        if stale and self.fsync:
            self._fsync_dir(self.groups_dir)

    def _remove_tree(self, path: str) -> None:
        ops = self.ops
        try:
            if not os.path.isdir(path):
                ops.unlink(path)
                return
            for name in ops.listdir(path):
                self._remove_tree(os.path.join(path, name))
            if self.fsync:
                ops.fsync_dir(path)
            ops.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(path, e.errno, f"cannot delete a removed group's files: {e}") from e

    def _fsync_dir(self, path: str) -> None:
        try:
            self.ops.fsync_dir(path)
        except OSError as e:
            raise StorageError(path, e.errno, f"fsync of directory failed: {e}") from e

    def _replay(self, repair: bool) -> tuple[dict[str, _Group], list[_Seg]]:
        """Replay every segment: the live groups (hard state, floor, entries) and the segments."""
        live: dict[str, _Group] = {}
        segs: list[_Seg] = []
        found = list_segments(self.ops, self.wal_dir, _parse_segment_name)
        for i, (seq, path) in enumerate(found):
            seg = _Seg(seq, path, 0)
            last = i == len(found) - 1
            apply = functools.partial(self._replay_record, live, seg)
            seg.size = replay_segment(self.ops, path, _KNOWN_TYPES, last, repair, self.fsync, apply)
            if seg.size:
                segs.append(seg)
        return live, segs

    def _replay_record(
        self, live: dict[str, _Group], seg: _Seg, pos: int, rtype: int, body: memoryview
    ) -> None:
        if pos == 0:
            if rtype != REC_SEGMENT:
                raise ValueError("segment does not start with a SEGMENT record")
            version, hseq, count = _SEG.unpack_from(body)
            if version != SHARED_WAL_VERSION:
                raise ValueError(f"unknown shared WAL format version {version}")
            if hseq != seg.seq:
                raise ValueError(f"segment header says seq {hseq}, file name says {seg.seq}")
            p = _SEG.size
            listed: set[str] = set()
            for _ in range(count):
                gid, p = _decode_gid(body, p)
                hs, p = decode_hs(body, p)
                (floor,) = _U64.unpack_from(body, p)
                p += _U64.size
                listed.add(gid)
                g = live.get(gid)
                if g is None:
                    # Its earlier records were deleted: the floor is only a lower bound.
                    live[gid] = _Group(gid, gid.encode(), hs, floor, exact=False)
                    continue
                g.hs = hs
                if floor > g.offset:
                    g.entries = [e for e in g.entries if e.index > floor]
                    g.offset = floor
            if p != len(body):
                raise ValueError("stray bytes after the segment header")
            missing = set(live) - listed
            if missing:
                raise ValueError(
                    f"groups {sorted(missing)[:5]} have records but are not in the segment header"
                )
            return
        if rtype == REC_WRITE:
            (count,) = _U32.unpack_from(body)
            p = _U32.size
            for _ in range(count):
                gid, p = _decode_gid(body, p)
                (n,) = _U32.unpack_from(body, p)
                p += _U32.size
                if p + n > len(body):
                    raise ValueError("group section runs past the record")
                section = body[p : p + n]
                p += n
                g = live.get(gid)
                if g is None:
                    g = live[gid] = _Group(gid, gid.encode())
                bhs, ents = decode_batch_body(section)
                if bhs is not None:
                    g.hs = bhs
                if ents:
                    if ents[0].index <= g.offset:
                        raise ValueError(
                            f"entries of group {gid!r} start at {ents[0].index}, at or below its floor"
                        )
                    g.entries = replay_batch(g.entries, ents, g.offset, strict=g.exact)
                    seg.note(g, ents[-1].index)
                else:
                    seg.note(g, 0)
            if p != len(body):
                raise ValueError("stray bytes after the group sections")
        elif rtype == REC_INSTALL:
            gid, p = _decode_gid(body, 0)
            index, _term, keep = _INSTALL.unpack_from(body, p)
            if p + _INSTALL.size != len(body):
                raise ValueError("bad INSTALL record length")
            g = live.get(gid)
            if g is None:
                g = live[gid] = _Group(gid, gid.encode())
            g.entries = replay_install(g.entries, index, bool(keep))
            g.offset = index
            g.exact = True
            seg.note(g, index)
        elif rtype == REC_REMOVE:
            gid, p = _decode_gid(body, 0)
            if p != len(body):
                raise ValueError("bad REMOVE record length")
            g = live.pop(gid, None)
            if g is None:
                raise ValueError(f"REMOVE of group {gid!r}, which holds nothing")
            g.removed = True
        else:
            raise ValueError("SEGMENT record in the middle of a segment")

    # -- writing ----------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise ValueError("shared log is closed")
        if not self._opened:
            self.open()

    def _check_writable(self) -> None:
        self._ensure_open()
        self._wal.check_writable()

    def _roll(self) -> None:
        """Seal the active segment and start a new one whose header holds every live group's state."""
        seq = self._segs[-1].seq + 1 if self._segs else 1
        path = os.path.join(self.wal_dir, _segment_name(seq))
        parts = [b""]
        n = 0
        for g in self._groups.values():
            if g.durable:
                parts.append(_encode_gid(g.raw) + encode_hs(g.hs) + _U64.pack(g.offset))
                n += 1
        parts[0] = _SEG.pack(SHARED_WAL_VERSION, seq, n)
        header = frame(REC_SEGMENT, b"".join(parts))
        self._wal.start(path, header)
        if self.fsync:
            self.stats["fsyncs"] += 1
        self._segs.append(_Seg(seq, path, len(header)))
        self.stats["segments"] = len(self._segs)
        self.stats["bytes_written"] += len(header)

    def _append(self, record: bytes, sync: bool) -> None:
        """One write and (when ``sync``) one fdatasync of ``record`` at the end of the active segment."""
        if self._wal.size >= self.segment_bytes:
            self._roll()
        self._wal.append(record, sync)
        self._segs[-1].size = self._wal.size
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(record)
        if self.fsync and sync:
            self.stats["fsyncs"] += 1

    def _live(self, gid: str) -> _Group:
        g = self._groups.get(gid)
        if g is None:
            g = _Group(gid, _check_group_id(gid))
            g.snapshots = self._snapshot_store(gid)
            self._groups[gid] = g
        return g

    def write(self, batch: Iterable[tuple[str, HardState | None, list[Entry]]], *, sync: bool = True) -> None:
        """Persist every group's hard state and entries of one loop turn: one record, one fsync.

        Per group the rules of :meth:`Storage.save <raftlib.storage.Storage.save>`
        hold (entries contiguous, starting after the group's floor and at most
        at its last index + 1; an overlap replaces the stored suffix); a group
        may appear several times (applied in order); an unknown id starts a
        new group. Items with neither a hard state nor entries are skipped; an
        empty batch writes nothing. Raises ``ValueError`` (nothing written)
        on bad input and :class:`StorageError` when the record could not be
        made durable: then nothing of the call is acknowledged, and after a
        crash it is wholly present or wholly absent, for every group.
        ``sync=False`` writes without the fsync (only when nothing in the
        batch must be durable before messages go out).
        """
        with self._lock:
            self._check_writable()
            items: list[tuple[_Group, HardState | None, list[Entry]]] = []
            for gid, hs, ents in batch:
                _check_group_id(gid)
                if hs is None and not ents:
                    continue
                items.append((self._live(gid), hs, ents))
            self._write_items(items, sync)

    def _write_items(self, items: list[tuple[_Group, HardState | None, list[Entry]]], sync: bool) -> None:
        if not items:
            return
        last: dict[_Group, int] = {}
        parts = [_U32.pack(len(items))]
        for g, hs, ents in items:
            if g.removed:
                raise GroupRemoved(f"group {g.gid!r} was removed")
            if ents:
                top = last.get(g, g.last_index())
                first = ents[0].index
                if not g.offset < first <= top + 1:
                    raise ValueError(
                        f"group {g.gid!r}: entries start at {first}: outside the writable range "
                        f"{g.offset + 1}..{top + 1}"
                    )
                for k, e in enumerate(ents):
                    if e.index != first + k:
                        raise ValueError(f"group {g.gid!r}: entries are not contiguous at {e.index}")
                last[g] = ents[-1].index
            body = encode_batch_body(hs, ents)
            parts.append(_encode_gid(g.raw) + _U32.pack(len(body)) + body)
        self._append(frame(REC_WRITE, b"".join(parts)), sync)
        seg = self._segs[-1]
        for g, hs, ents in items:
            g.durable = True
            if hs is not None:
                g.hs = hs
            if ents:
                first = ents[0].index
                del g.entries[first - g.offset - 1 :]
                g.entries.extend(ents)
                seg.note(g, ents[-1].index)
            else:
                seg.note(g, 0)

    # -- groups ------------------------------------------------------------------------------

    def groups(self) -> list[str]:
        """Ids of the groups with durable state (not removed), in the order they first wrote."""
        with self._lock:
            self._ensure_open()
            return [gid for gid, g in self._groups.items() if g.durable]

    def group(self, group_id: str) -> GroupStorage:
        """The :class:`GroupStorage` of ``group_id``: the recovered group, or a new (empty) one.

        Raises ``ValueError`` for an invalid id (not a non-empty str of at most
        255 UTF-8 bytes).
        """
        with self._lock:
            self._ensure_open()
            g = self._live(group_id)
            view = self._views.get(group_id)
            if view is None or view._group is not g or view._closed:
                view = self._views[group_id] = GroupStorage(self, g)
            return view

    def remove_group(self, group_id: str) -> None:
        """Durably remove a group: a REMOVE record (fsynced), then its snapshot directory is deleted.

        Its records become garbage (segments are freed once nothing else
        holds them); its views raise :class:`GroupRemoved`; the id may be used
        again later as a fresh group. ``KeyError`` if the log holds no such group.
        """
        with self._lock:
            self._check_writable()
            _check_group_id(group_id)
            g = self._groups.get(group_id)
            if g is None:
                raise KeyError(f"no group {group_id!r} in {self.data_dir}")
            if g.durable:
                self._append(frame(REC_REMOVE, _encode_gid(g.raw)), True)
            g.removed = True
            del self._groups[group_id]
            self._views.pop(group_id, None)
            if g.snapshots is not None:
                g.snapshots.close()
            self._remove_tree(os.path.join(self.groups_dir, group_dir_name(group_id)))
            if self.fsync:
                self._fsync_dir(self.groups_dir)
            g.entries = []
            self._collect()

    # -- compaction ---------------------------------------------------------------------------

    def _compact(self, g: _Group, first_index: int) -> None:
        drop = min(first_index - 1 - g.offset, len(g.entries))
        if drop > 0:
            del g.entries[:drop]
            g.offset += drop
        self._collect()

    def _collect(self) -> None:
        """Delete the oldest segments no group needs any more (never the active one)."""
        deleted = False
        while len(self._segs) > 1:
            seg = self._segs[0]
            while seg.cursor < len(seg.order):
                g = seg.order[seg.cursor]
                if not g.removed and seg.top[g] > g.offset:
                    break  # g still needs this segment
                seg.cursor += 1
            else:
                delete_segment(self.ops, seg.path)
                self._segs.pop(0)
                deleted = True
                self.stats["segments_deleted"] += 1
                continue
            break
        self.stats["segments"] = len(self._segs)
        if deleted and self.fsync:
            self._fsync_dir(self.wal_dir)

    def segment_paths(self) -> list[str]:
        """Paths of the WAL segments, oldest first (tests and tools)."""
        with self._lock:
            self._ensure_open()
            return [s.path for s in self._segs]

    def close(self) -> None:
        """Close the files and release the directory lock (views become unusable)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for g in self._groups.values():
                if g.snapshots is not None:
                    g.snapshots.close()
            self._wal.close()
            if self._dir_lock is not None:
                self._dir_lock.release()
                self._dir_lock = None

    def __enter__(self) -> SharedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GroupStorage:
    """One group's :class:`~raftlib.storage.Storage` inside a :class:`SharedLog`.

    Get it from :meth:`SharedLog.group`. ``save`` is a one-group
    :meth:`SharedLog.write`; ``close`` closes only this view (the log stays
    open; :meth:`SharedLog.group` gives a fresh view). The group's entries
    after its floor are kept in memory (bounded by compaction, like the core's
    own log), so ``load`` and ``entries`` never read the shared WAL back.
    """

    def __init__(self, shared: SharedLog, group: _Group) -> None:
        self._log = shared
        self._group = group
        self._closed = False

    @property
    def group_id(self) -> str:
        """The group's id."""
        return self._group.gid

    def _g(self) -> _Group:
        if self._closed:
            raise ValueError(f"storage of group {self._group.gid!r} is closed")
        self._log._ensure_open()
        if self._group.removed:
            raise GroupRemoved(f"group {self._group.gid!r} was removed")
        return self._group

    def _w(self) -> _Group:
        g = self._g()
        self._log._check_writable()
        return g

    def _store(self, g: _Group) -> SnapshotStore:
        assert g.snapshots is not None
        return g.snapshots

    def load(self) -> PersistentState:
        """The group's durable state; see :meth:`Storage.load <raftlib.storage.Storage.load>`."""
        with self._log._lock:
            g = self._g()
            return PersistentState(g.hs, list(g.entries), self._store(g).latest())

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """One-group :meth:`SharedLog.write` (one record, one fsync unless ``sync=False``)."""
        with self._log._lock:
            g = self._w()
            if hard_state is None and not entries:
                return
            self._log._write_items([(g, hard_state, entries)], sync)

    def last_index(self) -> int:
        """Index of the group's last stored entry (its floor if none follows; 0 if empty)."""
        with self._log._lock:
            return self._g().last_index()

    def hard_state(self) -> HardState:
        """The last hard state saved for the group."""
        with self._log._lock:
            return self._g().hs

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Stored entries in ``[lo, hi)``, read back from the log (slow; tests and tools)."""
        with self._log._lock:
            g = self._g()
            start = max(lo, g.offset + 1) - g.offset - 1
            stop = min(hi, g.last_index() + 1) - g.offset - 1
            return g.entries[start:stop] if stop > start else []

    def compact(self, first_index: int) -> None:
        """The group's log now starts at ``first_index``: segments nobody else needs are deleted."""
        with self._log._lock:
            g = self._w()
            self._log._compact(g, first_index)

    def _make_durable(self, g: _Group) -> None:
        """A snapshot for a group with nothing in the log yet: record the group first."""
        if not g.durable:
            self._log._write_items([(g, g.hs, [])], True)

    def save_snapshot(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        """Stream a local snapshot to the group's snapshot directory (the log stays writable meanwhile)."""
        with self._log._lock:
            g = self._w()
            self._make_durable(g)
            store = self._store(g)
        with g.snapshot_write_lock:
            tmp = store.write_temp(meta, chunks)
            with self._log._lock:
                self._w()
                store.commit_temp(meta, tmp)

    def begin_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Start receiving a snapshot from the leader (discarding any partial one)."""
        with self._log._lock:
            store = self._store(self._w())
            try:
                self._log.ops.makedirs(store.dir)
            except OSError as e:
                raise StorageError(store.dir, e.errno, f"cannot create the snapshot directory: {e}") from e
            store.begin_incoming(meta)

    def write_incoming_chunk(self, offset: int, data: bytes) -> None:
        """Write a chunk of the incoming snapshot at ``offset`` (must be the size so far)."""
        with self._log._lock:
            self._store(self._w()).write_incoming(offset, data)

    def install_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Verify and install the received snapshot, then record the install rule in the log (fsynced)."""
        with self._log._lock:
            g = self._w()
            self._store(g).finish_incoming(meta)
            keep = (
                g.offset < meta.index <= g.last_index()
                and g.entries[meta.index - g.offset - 1].term == meta.term
            )
            record = frame(REC_INSTALL, _encode_gid(g.raw) + _INSTALL.pack(meta.index, meta.term, int(keep)))
            self._log._append(record, True)
            g.durable = True
            self._log._segs[-1].note(g, meta.index)
            if keep:
                del g.entries[: meta.index - g.offset]
            else:
                del g.entries[:]
            g.offset = meta.index
            self._log._collect()  # the group may have held the oldest segment

    def latest_snapshot(self) -> SnapshotMeta | None:
        """Meta of the group's newest stored snapshot."""
        with self._log._lock:
            return self._store(self._g()).latest()

    def open_snapshot(self, index: int) -> BinaryIO:
        """A checked file object positioned at the state-machine bytes of snapshot ``index``."""
        with self._log._lock:
            store = self._store(self._g())
            path = store.path(index)
        return store.open_path(path)

    def read_snapshot_chunk(self, index: int, offset: int, size: int) -> tuple[bytes, bool]:
        """Raw bytes of the stored snapshot file for sending, and whether they reach its end."""
        with self._log._lock:
            store = self._store(self._g())
            path = store.path(index)
        return store.read_chunk_path(path, offset, size)

    def close(self) -> None:
        """Close this view (a partial incoming snapshot is dropped); the shared log stays open."""
        with self._log._lock:
            if self._closed:
                return
            self._closed = True
            g = self._group
            if g.snapshots is not None and not g.removed:
                with contextlib.suppress(OSError):
                    g.snapshots.discard_incoming()

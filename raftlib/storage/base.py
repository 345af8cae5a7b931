"""The storage interface the Raft driver persists through, and its errors.

A :class:`Storage` keeps what a node must not forget across a crash: the hard
state (term, vote, commit), the log entries, and snapshots of the state
machine. Every method is synchronous and blocking; the asyncio driver runs the
slow ones in a worker thread, one call at a time.

Two implementations exist: :class:`raftlib.storage.DiskStorage` (a segmented,
CRC-checked write-ahead log plus snapshot files) and
:class:`raftlib.storage.MemoryStorage` (the same behaviour in memory, for
tests).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterable
from typing import BinaryIO, Protocol, runtime_checkable

from raftlib.core import Entry, HardState, PersistentState, SnapshotMeta
from raftlib.errors import RaftError

__all__ = ["HostLog", "Storage", "StorageError"]


class StorageError(RaftError):
    """Persisting failed (a full disk, an I/O error, a failed fsync).

    The data handed to the failing call is **not** durable and must not be
    acknowledged. ``path`` is the file involved, ``errno`` the operating
    system's error number (``errno.ENOSPC``, ``errno.EIO``, ...) or ``None``.
    After a failed fsync the storage refuses every further write: the state of
    the page cache is unknown, and only a restart (which recovers from what is
    really on disk) is safe.
    """

    def __init__(self, path: str, errno: int | None, detail: str) -> None:
        self.path = path
        self.errno = errno
        self.detail = detail
        name = _errno.errorcode.get(errno, str(errno)) if errno is not None else None
        where = f" ({name})" if name else ""
        super().__init__(f"storage error on {path}{where}: {detail}")


@runtime_checkable
class Storage(Protocol):
    """Durable state of one Raft node.

    The driver calls :meth:`load` once at start, then :meth:`save` once per
    ``Ready`` (before sending ``persisted_messages``), the snapshot methods
    when snapshots are taken or arrive, and :meth:`compact` after the core
    compacted its log.
    """

    def load(self) -> PersistentState:
        """Recover and return what is durable.

        The hard state, the latest snapshot's meta (or ``None``) and every
        stored entry, contiguous. Entries may start at or before
        ``snapshot.index`` when a compaction kept trailing entries; the core
        ignores those. Raises :class:`raftlib.errors.StorageCorrupted` when the
        stored data fails an integrity check that a crash cannot explain.
        """
        ...

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Durably append ``entries`` and record ``hard_state`` (one write, one fsync).

        With ``sync=False`` the record is written but not fsynced: allowed only
        when nothing in it needs to be durable before messages go out (a hard
        state whose commit index alone changed: the commit index can always be
        learned again from the leader).

        If ``entries[0].index`` is at or below :meth:`last_index`, the stored
        entries from that index on are replaced. Returns only when everything
        is durable; raises :class:`StorageError` otherwise (then nothing of
        this call is acknowledged, and after recovery it is either wholly
        present or wholly absent).
        """
        ...

    def last_index(self) -> int:
        """Index of the last stored entry; the latest snapshot's index when no entry
        follows it; 0 for an empty storage."""
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """The stored entries with ``lo <= index < hi`` (for tests and tools)."""
        ...

    def save_snapshot(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        """Durably store a snapshot of the local state machine, streamed from ``chunks``."""
        ...

    def begin_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Start receiving a snapshot from the leader (discarding any partial one)."""
        ...

    def write_incoming_chunk(self, offset: int, data: bytes) -> None:
        """Write one chunk of the incoming snapshot; ``offset`` must equal the bytes received so far."""
        ...

    def install_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Make the received snapshot durable and apply the install rule to the log.

        Stored entries up to ``meta.index`` are dropped; entries after it are
        kept only when the stored entry at ``meta.index`` has ``meta.term``.
        """
        ...

    def latest_snapshot(self) -> SnapshotMeta | None:
        """Meta of the newest stored snapshot, or ``None``."""
        ...

    def open_snapshot(self, index: int) -> BinaryIO:
        """A readable file object positioned at the state-machine bytes of a stored snapshot.

        Reading it to the end yields exactly the bytes given to
        :meth:`save_snapshot`. Raises ``FileNotFoundError`` if the snapshot is
        gone and :class:`raftlib.errors.StorageCorrupted` if it fails its checks.
        """
        ...

    def read_snapshot_chunk(self, index: int, offset: int, size: int) -> tuple[bytes, bool]:
        """Up to ``size`` bytes of a stored snapshot for sending, and whether they end it.

        The bytes are the snapshot's stored form (header, body and checksums),
        which the receiver feeds to :meth:`write_incoming_chunk` unchanged.
        """
        ...

    def compact(self, first_index: int) -> None:
        """The core's log now starts at ``first_index``: release storage holding only older entries."""
        ...

    def close(self) -> None:
        """Release files; further calls are errors."""
        ...


@runtime_checkable
class HostLog(Protocol):
    """Durable state of every group of one :class:`raftlib.RaftHost`: one log shared by them all.

    :class:`raftlib.storage.SharedLog` is the disk implementation (one WAL of group-tagged
    records, one fsync per :meth:`write`); a host without a data directory keeps one
    :class:`raftlib.storage.MemoryStorage` per group. The host calls :meth:`open` once,
    then :meth:`write` from its one write thread with every group's records of a loop turn,
    and hands each group's :meth:`group` view to that group's node as its :class:`Storage`.
    """

    stats: dict[str, int]
    """Counters; at least ``writes`` and ``fsyncs``."""

    def open(self) -> None:
        """Recover what is durable (blocking; called once, in a worker thread)."""
        ...

    def groups(self) -> list[str]:
        """Ids of the groups with durable state."""
        ...

    def group(self, group_id: str) -> Storage:
        """The single-group :class:`Storage` view of ``group_id`` (created when new)."""
        ...

    def write(self, batch: Iterable[tuple[str, HardState | None, list[Entry]]]) -> None:
        """Durably record every ``(group id, hard state, entries)`` of ``batch``: one write, one fsync.

        Returns only when all of it is durable; raises :class:`StorageError` otherwise."""
        ...

    def remove_group(self, group_id: str) -> None:
        """Delete ``group_id``'s state (entries, hard state, snapshots) for good."""
        ...

    def close(self) -> None:
        """Release files; further calls are errors."""
        ...

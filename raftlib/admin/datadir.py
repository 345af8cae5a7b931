"""A node's data directory as the admin tools see it: checked, loaded read-only, summarised.

Everything here reads through the storage layer (``DiskStorage`` loaded with
:func:`raftlib.storage.readonly.open_read_only`, snapshot headers through
:mod:`raftlib.storage.snapshot`); nothing re-parses WAL records by hand and
nothing writes. File *names* are read as docs/storage.md documents them
(``<seq>-<firstindex>.wal``, ``<index>-<term>.snap``).

Invariant: loading a :class:`DataDirView` never changes the directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from raftlib._accel import ENTRY_CONF_CHANGE, ENTRY_NORMAL
from raftlib.admin.errors import AdminError, ExitCode
from raftlib.core import ConfChange, Entry, HardState, Membership, PersistentState, SnapshotMeta
from raftlib.core.confchange import apply_change
from raftlib.errors import ConfChangeError, StorageCorrupted
from raftlib.storage import StorageError
from raftlib.storage.lock import lock_holder
from raftlib.storage.readonly import WithheldWrite, open_read_only
from raftlib.storage.snapshot import parse_header

__all__ = [
    "DataDirView",
    "SegmentInfo",
    "SnapshotFileInfo",
    "check_data_dir",
    "entry_type_name",
    "load_view",
    "membership_after",
    "snapshot_files",
]


def check_data_dir(path: str) -> str:
    """``path`` if it is a readable raftlib data directory, else :class:`AdminError` saying why."""
    if not os.path.exists(path):
        raise AdminError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise AdminError(f"{path}: not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise AdminError(f"{path}: permission denied (cannot read the directory)")
    wal = os.path.join(path, "wal")
    if not os.path.isdir(wal):
        raise AdminError(f"{path}: not a raftlib data directory (it has no wal/ directory)")
    if not os.access(wal, os.R_OK | os.X_OK):
        raise AdminError(f"{wal}: permission denied")
    if not any(n.endswith(".wal") for n in os.listdir(wal)):
        raise AdminError(f"{path}: not a raftlib data directory (wal/ holds no segment)")
    return path


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One WAL segment file."""

    path: str
    seq: int
    first_index: int
    """``last_index() + 1`` when the segment was started (from its name; informational)."""
    size: int


@dataclass(frozen=True, slots=True)
class SnapshotFileInfo:
    """One file of ``snap/``: a snapshot (meta read from its checked header) or a leftover."""

    path: str
    size: int
    meta: SnapshotMeta | None
    body_len: int | None
    problem: str | None
    """Why the header could not be read (damage), or what the file is (``unfinished``); None if sound."""


@dataclass(slots=True)
class DataDirView:
    """What a starting node would load from a data directory, plus the files behind it."""

    path: str
    state: PersistentState
    last_index: int
    segments: list[SegmentInfo]
    snapshots: list[SnapshotFileInfo]
    withheld: list[WithheldWrite]
    """Repairs a real start would make (a torn tail truncated, temp files removed)."""
    holder: int | None
    """Process id holding the directory's lock (a running node), or None."""

    @property
    def hard_state(self) -> HardState:
        return self.state.hard_state

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self.state.snapshot

    def log_entries(self) -> list[Entry]:
        """The stored entries after the latest snapshot (what the restarted log holds)."""
        floor = self.snapshot.index if self.snapshot is not None else 0
        return [e for e in self.state.entries if e.index > floor]

    def last_term(self) -> int:
        """Term of the entry at :attr:`last_index` (the snapshot's term when no entry follows it)."""
        ents = self.state.entries
        if ents and ents[-1].index == self.last_index:
            return ents[-1].term
        return self.snapshot.term if self.snapshot is not None else 0


def _segment_infos(paths: list[str]) -> list[SegmentInfo]:
    out = []
    for p in paths:
        name = os.path.basename(p)
        seq, first = int(name[:16], 16), int(name[17:33], 16)  # checked by the storage's load
        out.append(SegmentInfo(p, seq, first, os.path.getsize(p)))
    return out


def snapshot_files(data_dir: str) -> list[SnapshotFileInfo]:
    """Every file of ``snap/``, oldest snapshot first, each header checked (bodies are not read)."""
    snap_dir = os.path.join(data_dir, "snap")
    try:
        names = sorted(os.listdir(snap_dir))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = os.path.join(snap_dir, name)
        size = os.path.getsize(path)
        if name.endswith(".tmp"):
            out.append(SnapshotFileInfo(path, size, None, None, "unfinished (removed at the next start)"))
            continue
        if not name.endswith(".snap"):
            continue
        try:
            with open(path, "rb") as f:
                h = parse_header(f, path)
        except StorageCorrupted as exc:
            out.append(SnapshotFileInfo(path, size, None, None, f"damaged: {exc}"))
            continue
        except OSError as exc:
            out.append(SnapshotFileInfo(path, size, None, None, f"unreadable: {exc}"))
            continue
        out.append(SnapshotFileInfo(path, size, h.meta, h.body_len, None))
    return out


def load_view(path: str) -> DataDirView:
    """Check ``path`` and load it read-only.

    Raises :class:`AdminError` (``CORRUPT``) naming the file and offset when the
    storage fails a check a crash cannot explain, (``USAGE``) when it is not a
    readable data directory.
    """
    check_data_dir(path)
    try:
        storage, state, ops = open_read_only(path)
    except StorageCorrupted as exc:
        raise AdminError(
            f"storage corrupted: {exc.path} at offset {exc.offset}: {exc.detail}", ExitCode.CORRUPT
        ) from exc
    except (StorageError, OSError) as exc:
        raise AdminError(f"{path}: cannot read the storage: {exc}") from exc
    try:
        last = storage.last_index()
        segments = _segment_infos(storage.segment_paths())
    finally:
        storage.close()
    return DataDirView(
        path=path,
        state=state,
        last_index=last,
        segments=segments,
        snapshots=snapshot_files(path),
        withheld=list(ops.withheld),
        holder=lock_holder(path),
    )


def membership_after(view: DataDirView) -> tuple[Membership | None, set[str]]:
    """The configuration once every stored entry is applied, and every node id the storage names.

    Starts from the latest snapshot's configuration; with no snapshot the
    bootstrap configuration is not stored (nodes are given it at start), so it
    is unknown until a configuration change carrying its result is found.
    Changes that cannot apply are skipped, as the core skips them.
    """
    membership = view.snapshot.membership if view.snapshot is not None else None
    names: set[str] = set(membership.members()) if membership is not None else set()
    for e in view.log_entries():
        if e.type != ENTRY_CONF_CHANGE:
            continue
        try:
            cc = ConfChange.decode(e.data)
        except ConfChangeError:
            continue
        names.update(c.node_id for c in cc.changes)
        if cc.result is not None:
            names.update(cc.result.members())
        if membership is None and cc.result is None:
            continue
        try:
            membership = apply_change(membership if membership is not None else Membership(frozenset()), cc)
        except ConfChangeError:
            continue
    return membership, names


def entry_type_name(etype: int) -> str:
    """``normal``, ``conf_change``, or the number of a type raftlib does not define."""
    if etype == ENTRY_NORMAL:
        return "normal"
    if etype == ENTRY_CONF_CHANGE:
        return "conf_change"
    return f"type{etype}"

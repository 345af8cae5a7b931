"""The Raft log as the core sees it: entries plus the committed/applied/stable marks.

Index bookkeeping and term lookups live in the hot-path ``Log`` (C arrays when
compiled). This wrapper adds the three marks that order everything else::

    snapshot_index <= applied <= applying <= committed <= last_index
                              stable <= in_progress <= last_index

``stable`` is the last index known durable in the driver's storage;
``in_progress`` (>= ``stable``) the last index handed to the driver to write.
``unstable_entries()`` hands out the entries after ``in_progress`` once each;
the driver confirms them with ``stable_to()``. With asynchronous storage
writes several such writes may be in flight at once (thesis §10.2.1).
``applying`` is the last index handed to the driver to apply; ``applied`` the
last one it confirmed.
"""

from __future__ import annotations

from raftlib._accel import Entry, Log, LogIndexError


class RaftLog:
    """Entries with commit/apply/persist progress and their invariants."""

    __slots__ = ("applied", "applying", "committed", "in_progress", "log", "stable")

    def __init__(
        self,
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        entries: list[Entry] | None = None,
        committed: int = 0,
        applied: int = 0,
    ) -> None:
        self.log = Log(snapshot_index, snapshot_term)
        if entries:
            self.log.append(entries)
        last = self.log.last_index()
        if committed > last:
            raise ValueError(
                f"persisted commit index {committed} is beyond the last persisted entry {last}"
            )
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = max(committed, snapshot_index)
        self.applied = min(max(applied, snapshot_index), self.committed)
        self.applying = self.applied
        self.stable = last
        self.in_progress = last

    # -- reading -----------------------------------------------------------

    def first_index(self) -> int:
        return self.log.first_index()

    def last_index(self) -> int:
        return self.log.last_index()

    def last_term(self) -> int:
        return self.log.last_term()

    def term(self, index: int) -> int:
        return self.log.term(index)

    def match_term(self, index: int, term: int) -> bool:
        return self.log.match_term(index, term)

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        return self.log.slice(lo, hi, max_bytes)

    def is_up_to_date(self, index: int, term: int) -> bool:
        """§5.4.1: is a log ending at (index, term) at least as up-to-date as ours?"""
        return self.log.is_up_to_date(index, term)

    def uncommitted_bytes(self) -> int:
        """Bytes of entries appended but not yet committed (back-pressure measure)."""
        return self.log.bytes_between(self.committed + 1, self.log.last_index() + 1)

    # -- writing -----------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        """Leader-side append of new entries after the last one."""
        return self.log.append(entries)

    def maybe_append(self, prev_index: int, prev_term: int, entries: list[Entry]) -> int:
        """Follower-side append (§5.3). Returns the last new index, or -1 on mismatch.

        A conflicting suffix is truncated; entries already present are left in
        place, so a stale or duplicated message never shortens the log.
        """
        if not self.log.match_term(prev_index, prev_term):
            return -1
        conflict = self.log.find_conflict(entries) if entries else 0
        last_new = self.log.maybe_append(prev_index, prev_term, self.committed, entries)
        if conflict and conflict <= self.in_progress:
            # The copy written (or being written) beyond conflict-1 no longer matches the log:
            # the replacement entries are handed out again.
            self.in_progress = conflict - 1
            self.stable = min(self.stable, conflict - 1)
        return last_new

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lower it). Returns True when it moved."""
        if index <= self.committed:
            return False
        last = self.log.last_index()
        if index > last:
            raise ValueError(f"commit index {index} is beyond the last index {last}")
        self.committed = index
        return True

    # -- snapshots ---------------------------------------------------------

    def compact(self, index: int) -> None:
        """Discard entries up to ``index`` (covered by a durable snapshot, already applied)."""
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} is applied")
        if index > self.log.snapshot_index:
            self.log.compact(index)

    def install_snapshot(self, index: int, term: int) -> None:
        """The state machine is being restored to a snapshot ending at (index, term).

        Entries after it that match are kept (the snapshot raced with entries we
        already had); otherwise the whole log is replaced by the snapshot.
        """
        if self.log.match_term(index, term):
            self.log.compact(index)
        else:
            self.log.restore(index, term)
        self.committed = max(self.committed, index)
        # Handed to the driver to restore; ``applied`` moves when it confirms
        # (RawNode.advance of the Ready carrying the snapshot).
        self.applying = index
        last = self.log.last_index()
        self.stable = min(max(self.stable, index), last)
        self.in_progress = min(max(self.in_progress, self.stable), last)

    # -- persistence and application --------------------------------------

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet handed to the driver to write, in order; marks them in progress."""
        last = self.log.last_index()
        if self.in_progress >= last:
            return []
        entries = self.log.slice(self.in_progress + 1, last + 1, 1 << 62)
        self.in_progress = last
        return entries

    def has_unstable_entries(self) -> bool:
        return self.in_progress < self.log.last_index()

    def stable_to(self, index: int, term: int) -> None:
        """The driver made entries up to (index, term) durable.

        Ignored when the log no longer holds that entry (it was replaced while
        the write was in flight); the replacement is handed out again.
        """
        if index > self.stable and self.log.match_term(index, term):
            self.stable = index

    def next_committed_entries(self, max_bytes: int, durable_only: bool = False) -> list[Entry]:
        """Committed entries not yet handed out for application, within a byte budget.

        ``durable_only``: only those also durable here (asynchronous storage writes: an entry
        whose local write is still in flight is applied once it completes).
        """
        lo = self.applying + 1
        hi = (min(self.committed, self.stable) if durable_only else self.committed) + 1
        if lo >= hi:
            return []
        return self.log.slice(lo, hi, max_bytes)

    def has_next_committed_entries(self, durable_only: bool = False) -> bool:
        return self.applying < (min(self.committed, self.stable) if durable_only else self.committed)

    def applying_to(self, index: int) -> None:
        self.applying = max(self.applying, index)

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise ValueError(f"applied index {index} is beyond the commit index {self.committed}")
        self.applied = max(self.applied, index)


__all__ = ["LogIndexError", "RaftLog"]

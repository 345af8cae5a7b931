"""What the leader knows about each follower's log (etcd's tracker/progress).

A follower's progress is in one of three states:

* PROBE: the leader does not know where the follower's log matches its own.
  It sends one AppendEntries at a time and waits for the answer (or a
  heartbeat response) before sending the next, backing ``next`` off on each
  rejection using the follower's conflict hint.
* REPLICATE: the logs match up to ``match``; the leader streams entries
  optimistically, advancing ``next`` as it sends, with at most
  ``max_inflight`` unacknowledged messages (the pipelining window).
* SNAPSHOT: the follower needs a snapshot (its next entry was compacted).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one peer as tracked by the leader."""

    __slots__ = (
        "inflights",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "sent_commit",
        "sent_since_heartbeat",
        "snapshot_meta",
        "snapshot_offset",
        "snapshot_wait",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        """Highest index known to be replicated on the peer (durably)."""
        self.next = next_index
        """Index of the next entry to send."""
        self.state = ProgressState.PROBE
        self.probe_sent = False
        """PROBE only: an AppendEntries is outstanding; send nothing more until it is answered."""
        self.inflights: deque[int] = deque()
        """REPLICATE only: last index of each unacknowledged AppendEntries, oldest first."""
        self.max_inflight = max_inflight
        self.recent_active = False
        """CheckQuorum: heard from this peer during the current election timeout."""
        self.sent_since_heartbeat = False
        """An AppendEntries went to the peer since the leader's last periodic heartbeat."""
        self.sent_commit = 0
        """The commit index carried by the last AppendEntries sent to the peer."""
        self.pending_snapshot = 0
        """SNAPSHOT only: index of the snapshot being sent."""
        self.snapshot_meta: Any = None
        """SNAPSHOT only: the SnapshotMeta being sent."""
        self.snapshot_offset = 0
        """SNAPSHOT only: offset of the chunk last sent (the follower acked everything before it)."""
        self.snapshot_wait = 0
        """SNAPSHOT only: ticks since the last chunk went out (resent after snapshot_retry_ticks)."""

    def reset(self, next_index: int) -> None:
        """Start over in PROBE at ``next_index`` knowing nothing about the peer."""
        self.match = 0
        self.next = next_index
        self.recent_active = False
        self._reset(ProgressState.PROBE)

    def __repr__(self) -> str:
        return (
            f"Progress(state={self.state.value}, match={self.match}, next={self.next}, "
            f"inflight={len(self.inflights)})"
        )

    # -- state transitions -------------------------------------------------

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_meta = None
        self.snapshot_offset = 0
        self.snapshot_wait = 0
        self.inflights.clear()

    def become_probe(self) -> None:
        """Go back to probing from the entry after ``match``.

        Coming out of SNAPSHOT, probing resumes after the snapshot that was sent.
        """
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """The logs match at ``match``: start streaming from the entry after it."""
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """The follower's next entry is compacted: it must install a snapshot."""
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    # -- sending -----------------------------------------------------------

    def is_paused(self) -> bool:
        """True when the leader must not send more entries to this peer now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflights) >= self.max_inflight
        return True

    def sent_entries(self, last_index: int, count: int) -> None:
        """Record that an AppendEntries carrying ``count`` entries up to ``last_index`` went out."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.append(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    # -- acknowledgements --------------------------------------------------

    def maybe_update(self, index: int) -> bool:
        """The peer acknowledged entries up to ``index``. Returns True when ``match`` moved."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        if index + 1 > self.next:
            self.next = index + 1
        # Acknowledged messages leave the pipelining window.
        inflights = self.inflights
        while inflights and inflights[0] <= index:
            inflights.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected an AppendEntries whose prev index was ``rejected``.

        ``match_hint`` is the leader's best guess of the last index where the
        logs may match (from the follower's conflict hint). Returns False for a
        stale rejection, which must be ignored.
        """
        if self.state is ProgressState.REPLICATE:
            # Rejections of entries already known to match are stale.
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        # PROBE: only the answer to the probe just sent (prev index next-1) counts.
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

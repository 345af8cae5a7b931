"""The simulator's clock: a priority queue of events keyed by virtual time.

Virtual time is an integer count of *sub-steps*; a Raft tick lasts
``steps_per_tick`` sub-steps (see :class:`raftlib.testing.SimCluster`). Events
at the same time run in the order they were scheduled (a sequence number breaks
ties), so a run is a pure function of its seed.
"""

from __future__ import annotations

import heapq
from typing import Any

DELIVER = 0
"""A message arrives at its destination; payload ``(message, sender_incarnation)``."""
TICK = 1
"""A node's logical clock ticks; payload ``node_id``."""
PERSIST = 2
"""A node's asynchronous write completes; payload ``(node_id, incarnation, ready)``."""
CALL = 3
"""A scheduled callback (fault schedules); payload ``callable``."""

KIND_NAMES = {DELIVER: "deliver", TICK: "tick", PERSIST: "persist", CALL: "call"}


class EventQueue:
    """Events ordered by ``(time, sequence)``."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Any]] = []
        self._seq = 0

    def push(self, time: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, payload))

    def pop(self) -> tuple[int, int, Any]:
        """Remove and return the earliest event as ``(time, kind, payload)``."""
        time, _seq, kind, payload = heapq.heappop(self._heap)
        return time, kind, payload

    def peek_time(self) -> int | None:
        """Time of the earliest event, or None when the queue is empty."""
        return self._heap[0][0] if self._heap else None

    def pending(self, kind: int | None = None) -> int:
        """Number of queued events (of one kind, when given)."""
        if kind is None:
            return len(self._heap)
        return sum(1 for ev in self._heap if ev[2] == kind)

    def __len__(self) -> int:
        return len(self._heap)

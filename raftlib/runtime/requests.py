"""Requests: every caller waiting on this node, and the rules that make each wait end.

Owns the futures of ``propose()`` (by log index once the entry is placed, by
context while a forwarded proposal waits for the leader's answer), of read
barriers (by context) and of ``wait_applied()`` (by applied index).

Invariant: **every request ends, and leaves nothing behind.** A request is
resolved by exactly one of

* its entry being applied (the proposal's result, or §5.3 ``LeadershipLost``
  when another leader's entry took its index);
* the leader it depends on going away (:meth:`leader_lost`): proposals above
  the commit index fail with ``LeadershipLost(may_still_commit=True)``, read
  barriers with ``LeadershipLost(may_still_commit=False)``;
* a forwarded proposal hearing nothing from the leader within
  ``forward_timeout`` (:meth:`expire_forwards`): ``ProposalDropped("forward_lost",
  may_still_commit=True)``, since the leader may have appended it and only its
  answer was lost;
* its caller's deadline: the default one (``NodeConfig.request_timeout``) is kept in
  the table entry itself and swept once per tick (:meth:`expire_deadlines`; no timer
  per call), an explicit one by a timer (:func:`await_request`);
* its caller's cancellation (the node removes it from the tables it sits in);
* the node stopping or failing (:meth:`fail_all`).

Entries at or below the commit index are never failed on a leader change: they
are committed and will be applied here, whoever leads.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from typing import Any, TypeVar

from raftlib.core import Entry
from raftlib.core.messages import ProposalResult
from raftlib.errors import LeadershipLost, NotLeader, ProposalDropped, RequestTimeout

_T = TypeVar("_T")


def _expire(fut: asyncio.Future[Any], operation: str, timeout: float, index: int) -> None:
    if not fut.done():
        fut.set_exception(RequestTimeout(operation, timeout, index))


async def await_request(fut: asyncio.Future[_T], timeout: float | None, operation: str, index: int = 0) -> _T:
    """``await fut``, failing it with :class:`RequestTimeout` after ``timeout`` seconds (``None``: no limit).

    The hot-path replacement for ``asyncio.wait_for`` on a future the node
    resolves itself: no extra task or wrapper future per call. Whoever resolves
    ``fut`` skips it when it is already done (timed out or cancelled).
    """
    if timeout is None:
        return await fut
    handle = asyncio.get_running_loop().call_later(max(0.0, timeout), _expire, fut, operation, timeout, index)
    try:
        return await fut
    finally:
        handle.cancel()


class AppliedWaiters:
    """Futures waiting for the applied index to reach a value (a heap by index)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, index: int, fut: asyncio.Future[None]) -> None:
        heapq.heappush(self._heap, (index, next(self._seq), fut))

    def release(self, applied: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= applied:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)

    def discard_done(self) -> None:
        """Drop the futures whose callers gave up (timed out or cancelled)."""
        if any(f.done() for _, _, f in self._heap):
            self._heap = [w for w in self._heap if not w[2].done()]
            heapq.heapify(self._heap)

    def fail(self, exc: BaseException) -> None:
        for _, _, fut in self._heap:
            if not fut.done():
                fut.set_exception(exc)
        self._heap.clear()


class Requests:
    """The futures of one Raft group's callers, keyed the way the core answers them."""

    def __init__(self, forward_timeout: float) -> None:
        self.forward_timeout = forward_timeout
        self.by_index: dict[int, tuple[int, asyncio.Future[Any], float]] = {}
        """Proposals placed in the log: index -> (term, future, default deadline or inf). In
        index order, so the default deadlines (one constant timeout) are in order too."""
        self.forwarded: dict[bytes, tuple[float, asyncio.Future[Any], float]] = {}
        """Forwarded proposals awaiting the leader's answer: context -> (forward deadline,
        future, default deadline or inf), in deadline order (insertion order)."""
        self.reads: dict[bytes, asyncio.Future[tuple[int, bool]]] = {}
        self.waiters = AppliedWaiters()
        self.failed = 0
        """Proposals failed by a leader change, a lost forward or a refused forward."""

    def __len__(self) -> int:
        return len(self.by_index) + len(self.forwarded) + len(self.reads) + len(self.waiters)

    # -- registration ---------------------------------------------------------------------

    def add_proposal(
        self, index: int, term: int, fut: asyncio.Future[Any], deadline: float = math.inf
    ) -> None:
        """``deadline``: the loop time at which :meth:`expire_deadlines` fails it (``inf``: the caller
        keeps its own timer)."""
        self.by_index[index] = (term, fut, deadline)

    def add_forwarded(
        self, ctx: bytes, fut: asyncio.Future[Any], now: float, deadline: float = math.inf
    ) -> None:
        self.forwarded[ctx] = (now + self.forward_timeout, fut, deadline)

    def add_read(self, ctx: bytes, fut: asyncio.Future[tuple[int, bool]]) -> None:
        self.reads[ctx] = fut

    def forget_proposal(self, index: int, ctx: bytes | None, fut: asyncio.Future[Any]) -> None:
        """The caller stopped waiting (deadline, cancellation): drop its bookkeeping."""
        if ctx is not None:
            held = self.forwarded.get(ctx)
            if held is not None and held[1] is fut:
                del self.forwarded[ctx]
        if index:
            placed = self.by_index.get(index)
            if placed is not None and placed[1] is fut:
                del self.by_index[index]

    # -- answers from the core ------------------------------------------------------------

    def forward_answered(self, res: ProposalResult, applied: int, leader_address: str | None) -> None:
        """The leader placed (or refused) a forwarded proposal."""
        held = self.forwarded.pop(res.context, None)
        if held is None:
            return
        fut, deadline = held[1], held[2]
        if fut.done():
            return
        if res.error is not None:
            self.failed += 1
            if res.error == "not_leader":
                fut.set_exception(NotLeader(res.leader, leader_address))
            else:
                fut.set_exception(ProposalDropped(res.error))
        elif res.index <= applied:
            self.failed += 1
            fut.set_exception(
                ProposalDropped(
                    "unknown_outcome", f"index {res.index} was applied before its ack arrived",
                    may_still_commit=True,
                )
            )
        else:
            self.by_index[res.index] = (res.term, fut, deadline)

    def read_answered(self, ctx: bytes, index: int, ok: bool) -> None:
        fut = self.reads.pop(ctx, None)
        if fut is not None and not fut.done():
            fut.set_result((index, ok))

    def applied(self, e: Entry, result: Any) -> bool:
        """Resolve the proposal waiting on ``e``; True when it was ours and succeeded."""
        waiting = self.by_index.pop(e.index, None)
        if waiting is None:
            return False
        term, fut, _ = waiting
        if fut.done():
            return False
        if term == e.term:
            fut.set_result(result)
            return True
        # §5.3: another leader's entry took this index: ours was overwritten, never applied.
        self.failed += 1
        fut.set_exception(LeadershipLost(False, f"index {e.index} holds an entry of term {e.term}",
                                         index=e.index, term=term))
        return False

    def covered_by_snapshot(self, index: int) -> None:
        """A snapshot installed up to ``index``: the proposals below it were applied inside it, with
        results this node cannot know."""
        for i in [i for i in self.by_index if i <= index]:
            fut = self.by_index.pop(i)[1]
            if not fut.done():
                self.failed += 1
                fut.set_exception(
                    ProposalDropped("snapshot_installed", f"index {i} is inside a snapshot",
                                    may_still_commit=True)
                )

    # -- the rules that end requests ----------------------------------------------------------

    def leader_lost(self, commit_index: int) -> int:
        """The leader these requests depended on is gone (this node stepped down, or follows
        another leader). Returns how many requests failed."""
        n = 0
        for index in [i for i in self.by_index if i > commit_index]:
            term, fut, _ = self.by_index.pop(index)
            if not fut.done():
                fut.set_exception(LeadershipLost(True, index=index, term=term))
                n += 1
        for _, fut, _ in self.forwarded.values():
            if not fut.done():
                fut.set_exception(LeadershipLost(True, "the leader changed before it answered the forward"))
                n += 1
        self.forwarded.clear()
        for rfut in self.reads.values():
            if not rfut.done():
                rfut.set_exception(LeadershipLost(False, "the leader changed before the read was confirmed"))
        self.reads.clear()
        self.failed += n
        return n

    def expire_forwards(self, now: float) -> int:
        """Fail the forwarded proposals the leader never answered (message or answer lost)."""
        n = 0
        fwd = self.forwarded
        while fwd:
            ctx = next(iter(fwd))
            deadline, fut, _ = fwd[ctx]
            if deadline > now:
                break
            del fwd[ctx]
            if not fut.done():
                fut.set_exception(
                    ProposalDropped(
                        "forward_lost",
                        f"no answer from the leader within {self.forward_timeout:g} s",
                        may_still_commit=True,
                    )
                )
                n += 1
        self.failed += n
        return n

    def expire_deadlines(self, now: float, timeout: float) -> int:
        """Fail the proposals whose default deadline passed (``timeout`` seconds after they began)
        with :class:`RequestTimeout`; once per tick. Returns how many."""
        n = 0
        expired = []
        for index, (_, fut, deadline) in self.by_index.items():
            if deadline > now:
                if deadline != math.inf:
                    break  # default deadlines are in index order: the rest are later
                continue
            expired.append(index)
            if not fut.done():
                fut.set_exception(RequestTimeout("propose", timeout, index))
                n += 1
        for index in expired:
            del self.by_index[index]
        stale = [ctx for ctx, (_, fut, deadline) in self.forwarded.items() if deadline <= now]
        for ctx in stale:
            fut = self.forwarded.pop(ctx)[1]
            if not fut.done():
                fut.set_exception(RequestTimeout("propose", timeout))
                n += 1
        return n

    def fail_all(self, exc: BaseException) -> None:
        for _, fut, _ in self.by_index.values():
            if not fut.done():
                fut.set_exception(exc)
        for _, fut, _ in self.forwarded.values():
            if not fut.done():
                fut.set_exception(exc)
        for rfut in self.reads.values():
            if not rfut.done():
                rfut.set_exception(exc)
        self.by_index.clear()
        self.forwarded.clear()
        self.reads.clear()
        self.waiters.fail(exc)

"""Locks with owners, TTL leases and fencing tokens, and the election helper built on them.

:class:`Locks` holds any number of named locks. Acquiring returns a **fencing token**: the
log index of the entry that granted the lock, so tokens only grow, across leader changes,
restarts and lease expiries; a resource that remembers the highest token it has seen can
refuse a holder whose lease already ended (Kleppmann's fencing).

Leases are decided the way etcd decides them: the grant, each refresh and each release go
through the log; **expiry is the leader's decision, proposed through the log**. Every member
derives a local deadline (its monotonic clock at apply + TTL) for each held lock; the group
clock on the leader proposes ``expire(key, token, epoch)`` once a deadline passed, and apply
removes the holder only if nothing (a refresh, a release, a new grant) happened since, which
``(token, epoch)`` identifies. A member that becomes leader first extends every deadline to a
full TTL from its own clock, as etcd's lessor does on promotion, so an election never expires
a lease whose holder could not reach a leader.

Invariants: at most one holder per key; a holder's token is the index of its grant; the state
replicated is ``{key: (owner, token, ttl, epoch)}`` (local deadlines are never replicated).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from raftlib.errors import NodeStopped
from raftlib.recipes.replicated import RecipeError, Replicated, replicated
from raftlib.runtime.tasks import cancel_and_wait
from raftlib.valuecodec import CommandError

log = logging.getLogger(__name__)

T = TypeVar("T")


class LockNotHeld(CommandError, code="lock_not_held"):
    """The caller does not hold the lock (any more): its lease expired, or the token is stale.

    ``details`` are ``(key, owner, token)`` as the caller sent them.
    """


class InvalidLease(CommandError, code="invalid_lease"):
    """A lock key, owner or TTL is not acceptable (empty, wrong type, TTL out of range)."""


class LockTimeout(TimeoutError):
    """``acquire`` did not get the lock within its timeout (``key``, ``holder`` at that time)."""

    def __init__(self, key: str, holder: LockHolder | None) -> None:
        self.key = key
        self.holder = holder
        who = holder.owner if holder else "nobody"
        super().__init__(f"lock {key!r} not acquired in time (held by {who})")


class LockLost(Exception):
    """The lease of a lock held with :meth:`Locks.hold` was lost while the block ran; the block
    was cancelled. ``reason`` tells why (a refused refresh, a stopped node, ...)."""

    def __init__(self, key: str, owner: str, token: int, reason: str) -> None:
        self.key = key
        self.owner = owner
        self.token = token
        self.reason = reason
        super().__init__(f"{owner} lost lock {key!r} (token {token}): {reason}")


class CampaignLost(Exception):
    """The elected member lost its lease (expired, or its node stopped); its work was cancelled."""

    def __init__(self, candidate: str, token: int, reason: str) -> None:
        self.candidate = candidate
        self.token = token
        self.reason = reason
        super().__init__(f"{candidate} lost the election it won with token {token}: {reason}")


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: ``owner``, its fencing ``token``, the lease ``ttl`` and ``epoch``
    (how many refreshes since the grant)."""

    owner: str
    token: int
    ttl: float
    epoch: int = 0


class Locks(Replicated):
    """Named locks with owners, TTL leases and monotonic fencing tokens.

    ::

        locks = group.add(Locks("locks"))
        token = await locks.acquire("job-42", owner="worker-1", ttl=10.0)
        ...                                   # pass `token` to the resource you write to
        await locks.release("job-42", "worker-1", token)

        async with locks.hold("job-42", owner="worker-1", ttl=10.0) as token:
            ...                               # refreshed in the background, released at exit

    ``owner`` names the holder (unique per holder: a second ``acquire`` by the same owner
    refreshes and returns the same token). ``max_ttl`` must be the same on every member.
    """

    def __init__(self, name: str, *, max_ttl: float = 3600.0) -> None:
        super().__init__(name)
        self.max_ttl = max_ttl
        self._held: dict[str, LockHolder] = {}
        self._deadlines: dict[str, float] = {}
        """Local, never replicated: monotonic time after which the leader expires the lease."""
        self._heap: list[tuple[float, str, int, int]] = []

    # -- local reads --------------------------------------------------------------------------

    def holder(self, key: str) -> LockHolder | None:
        """The holder of ``key`` on this member (None when free)."""
        return self._held.get(key)

    def held(self) -> dict[str, LockHolder]:
        """Every held lock on this member (a copy)."""
        return dict(self._held)

    # -- replicated commands ------------------------------------------------------------------

    def _validate(self, key: Any, owner: Any, ttl: Any = 1.0) -> None:
        if type(key) is not str or not key:
            raise InvalidLease("lock keys are non-empty strings", key)
        if type(owner) is not str or not owner:
            raise InvalidLease("lock owners are non-empty strings", owner)
        if type(ttl) not in (int, float) or not 0 < ttl <= self.max_ttl:
            raise InvalidLease(f"ttl must be a number in (0, {self.max_ttl}] seconds", ttl)

    def _set_deadline(self, key: str, holder: LockHolder, at_least: float = 0.0) -> None:
        deadline = max(time.monotonic() + holder.ttl, at_least)
        self._deadlines[key] = deadline
        heap = self._heap
        heapq.heappush(heap, (deadline, key, holder.token, holder.epoch))
        if len(heap) > 2 * len(self._held) + 64:
            # Entries of released or refreshed leases leave the heap only when the leader's
            # due_commands pops them, and never on a follower: rebuild it from the held locks
            # (amortized O(1) per push), so it stays within twice their number.
            deadlines = self._deadlines
            heap = [(deadlines[k], k, h.token, h.epoch) for k, h in self._held.items() if k in deadlines]
            heapq.heapify(heap)
            self._heap = heap

    @replicated
    def try_acquire(self, key: str, owner: str, ttl: float = 10.0) -> int | None:
        """Take ``key`` if it is free (or refresh it if ``owner`` holds it); returns the fencing
        token, or None when someone else holds it."""
        self._validate(key, owner, ttl)
        current = self._held.get(key)
        if current is None:
            holder = LockHolder(owner, self.index, float(ttl))
        elif current.owner == owner:
            holder = LockHolder(owner, current.token, float(ttl), current.epoch + 1)
        else:
            return None
        self._held[key] = holder
        self._set_deadline(key, holder)
        self.notify(key)
        return holder.token

    @replicated
    def refresh(self, key: str, owner: str, token: int) -> int:
        """Extend the lease by its TTL; returns the token. Raises :class:`LockNotHeld`."""
        current = self._check(key, owner, token)
        holder = LockHolder(owner, token, current.ttl, current.epoch + 1)
        self._held[key] = holder
        self._set_deadline(key, holder)
        return token

    @replicated
    def release(self, key: str, owner: str, token: int) -> None:
        """Release the lock. Raises :class:`LockNotHeld` if the caller no longer holds it."""
        self._check(key, owner, token)
        self._drop(key)

    @replicated
    def expire(self, key: str, token: int, epoch: int) -> bool:
        """The leader's lease expiry (proposed by the group clock): drops the holder only if it
        is still the grant ``token`` at refresh ``epoch``; returns whether it did."""
        current = self._held.get(key)
        if current is None or current.token != token or current.epoch != epoch:
            return False
        log.info("lock %s/%s: lease of %s (token %d) expired", self.name, key, current.owner, token)
        self._drop(key)
        return True

    def _check(self, key: str, owner: str, token: int) -> LockHolder:
        self._validate(key, owner)
        current = self._held.get(key)
        if current is None or current.owner != owner or current.token != token:
            raise LockNotHeld(f"{owner!r} does not hold lock {key!r} with token {token}", key, owner, token)
        return current

    def _drop(self, key: str) -> None:
        del self._held[key]
        self._deadlines.pop(key, None)
        self.notify(key)

    # -- client helpers ---------------------------------------------------------------------------

    async def acquire(self, key: str, owner: str, ttl: float = 10.0, timeout: float | None = 30.0) -> int:
        """Wait until ``owner`` holds ``key``; returns the fencing token.

        Waiters are woken when this member applies a release or an expiry (they then race; the
        lock is not FIFO-fair). Raises :class:`LockTimeout` after ``timeout`` seconds (None:
        wait until cancelled).
        """
        loop = asyncio.get_running_loop()
        deadline = math.inf if timeout is None else loop.time() + timeout
        while True:
            token = await self.try_acquire(key, owner, ttl)
            if token is not None:
                return token
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LockTimeout(key, self.holder(key))
            if self.holder(key) is not None:
                await self.wait_change(key, min(remaining, max(ttl, 0.05), 1.0))
            else:  # free here but not when applied: this member is behind, let it catch up
                await asyncio.sleep(min(remaining, 0.01))

    @contextlib.asynccontextmanager
    async def hold(
        self, key: str, owner: str, ttl: float = 10.0, timeout: float | None = 30.0
    ) -> AsyncIterator[int]:
        """``async with locks.hold(key, owner) as token``: acquire, refresh every ttl/3 in the
        background, release at exit (best effort: the lease expires anyway).

        If the lease is lost while the block runs (a refresh refused, the node stopped, the
        group disconnected, or no refresh succeeded for a whole TTL), the block is cancelled
        and :class:`LockLost` is raised from the ``async with``.
        """
        token = await self.acquire(key, owner, ttl, timeout)
        body = asyncio.current_task()
        lost: list[str] = []

        async def keep() -> None:
            loop = asyncio.get_running_loop()
            last_ok = loop.time()
            while True:
                await asyncio.sleep(ttl / 3)
                left = last_ok + ttl - loop.time()
                try:
                    if left <= 0:
                        raise TimeoutError(f"no refresh succeeded for {ttl} s")
                    await asyncio.wait_for(self.refresh(key, owner, token), left)
                    last_ok = loop.time()
                except (CommandError, RecipeError, NodeStopped, TimeoutError, asyncio.TimeoutError) as exc:
                    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) and loop.time() < last_ok + ttl:
                        continue  # one slow refresh: the lease still runs
                    lost.append(repr(exc))
                    if body is not None:
                        body.cancel()
                    return

        keeper = asyncio.create_task(keep())
        try:
            yield token
        except asyncio.CancelledError:
            if not lost:
                raise
            uncancel = getattr(body, "uncancel", None)  # Python 3.11+: this cancel was ours
            if uncancel is not None:
                uncancel()
            raise LockLost(key, owner, token, lost[0]) from None
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
            if not lost:
                with contextlib.suppress(CommandError, TimeoutError, NodeStopped, RecipeError):
                    await self.release(key, owner, token)

    # -- leader duties ----------------------------------------------------------------------------

    def on_promoted(self) -> None:
        # etcd's lessor.Promote: a new leader gives every lease a full TTL from its own clock.
        self._heap = []
        for key, holder in self._held.items():
            self._set_deadline(key, holder, at_least=self._deadlines.get(key, 0.0))

    def due_commands(self) -> list[tuple[str, list[Any]]]:
        now = time.monotonic()
        due: list[tuple[str, list[Any]]] = []
        keep: list[tuple[float, str, int, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            _, key, token, epoch = entry
            current = self._held.get(key)
            if current is None or current.token != token or current.epoch != epoch:
                continue  # refreshed, released or re-granted since: a stale heap entry
            due.append(("expire", [key, token, epoch]))
            keep.append(entry)  # stays until the expiry is applied (a failed proposal retries)
        for entry in keep:
            heapq.heappush(heap, entry)
        return due

    # -- snapshots --------------------------------------------------------------------------------

    def capture(self) -> Any:
        return [[k, h.owner, h.token, h.ttl, h.epoch] for k, h in self._held.items()]

    def dump(self, view: Any) -> Iterator[Any]:
        yield view

    def load(self, records: Iterator[Any], version: int) -> None:
        held: dict[str, LockHolder] = {}
        for batch in records:
            for key, owner, token, ttl, epoch in batch:
                held[key] = LockHolder(owner, int(token), float(ttl), int(epoch))
        self._held = held
        self._deadlines = {}
        self._heap = []
        for key, holder in held.items():
            self._set_deadline(key, holder)


class Election(Locks):
    """Leader election for application work: "run this coroutine on one member at a time".

    ::

        election = group.add(Election("scheduler"))
        # on every member:
        await election.run(node_id, scheduler_loop, ttl=5.0)   # scheduler_loop(token) runs
                                                             # only on the elected member

    The elected member holds the ``"leader"`` lock of this object; ``run`` refreshes its lease
    every ``ttl / 3`` and **cancels the work** as soon as the lease is lost (a refresh refused,
    its node stopped, or no refresh succeeded for a whole TTL), then raises
    :class:`CampaignLost`. Pass the token to whatever the work writes to, so a deposed leader's
    late writes can be refused.
    """

    KEY = "leader"

    def leader(self) -> LockHolder | None:
        """The elected candidate on this member's state (None: nobody)."""
        return self.holder(self.KEY)

    async def campaign(self, candidate: str, ttl: float = 5.0, timeout: float | None = None) -> int:
        """Wait until ``candidate`` is elected; returns its fencing token."""
        return await self.acquire(self.KEY, candidate, ttl, timeout)

    async def resign(self, candidate: str, token: int) -> None:
        """Give up the leadership won with ``token``."""
        await self.release(self.KEY, candidate, token)

    async def run(
        self,
        candidate: str,
        work: Callable[[int], Awaitable[T]],
        *,
        ttl: float = 5.0,
        timeout: float | None = None,
    ) -> T:
        """Campaign, then run ``work(token)`` while elected; resign when it returns.

        Returns what ``work`` returned; raises :class:`CampaignLost` (after cancelling the
        work) when the lease is lost, :class:`LockTimeout` if not elected within ``timeout``.
        """
        token = await self.campaign(candidate, ttl, timeout)
        task: asyncio.Task[T] = asyncio.ensure_future(work(token))
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        reason = ""
        try:
            while not task.done():
                waker = asyncio.ensure_future(self.wait_change(self.KEY, ttl / 3))
                await asyncio.wait({task, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if task.done():
                    break
                current = self.leader()
                if current is None or current.token != token:
                    reason = "the lease was expired or taken over"
                    break
                if loop.time() - last_ok >= ttl / 3:
                    try:
                        await self.refresh(self.KEY, candidate, token)
                        last_ok = loop.time()
                    except LockNotHeld:
                        reason = "a refresh was refused"
                        break
                    except (NodeStopped, RecipeError):
                        reason = "its node stopped or its group was disconnected"
                        break
                    except (TimeoutError, CommandError) as exc:
                        if loop.time() - last_ok >= ttl:
                            reason = f"no refresh succeeded for a whole TTL ({exc!r})"
                            break
            if task.done():
                try:
                    return task.result()  # or the work's exception
                finally:
                    with contextlib.suppress(CommandError, TimeoutError, NodeStopped, RecipeError):
                        await self.resign(candidate, token)
            raise CampaignLost(candidate, token, reason)
        finally:
            if not task.done():
                await cancel_and_wait((task,))


__all__ = [
    "CampaignLost",
    "Election",
    "InvalidLease",
    "LockHolder",
    "LockLost",
    "LockNotHeld",
    "LockTimeout",
    "Locks",
]

"""Leases: the replicated table and the leader-local expiry clock (contract §3.4).

What is replicated (changed only by applied commands, identical on every member):
:class:`LeaseTable` -- lease ID -> granted TTL. Which keys are attached is derived
from the keys themselves (the MVCC store indexes live keys by lease).

What is local to the leader (never replicated, like etcd 3.4's lessor):
:class:`Lessor` -- one deadline per lease in ``time.monotonic()`` terms. Only the
primary (the leader) expires leases: :meth:`Lessor.expired` lists the leases whose
deadline passed and the server proposes a revoke for each. Keepalives reset the
deadline in memory only. On promotion every lease gets a fresh full TTL (etcd's
``Promote``); on demotion the deadlines stop counting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

#: etcd's MaxLeaseTTL (seconds).
MAX_LEASE_TTL = 9_000_000_000
#: How long a lease reported by :meth:`Lessor.expired` waits before it is reported again
#: (etcd's expiredLeaseRetryInterval), in case the revoke proposal was lost.
EXPIRED_RETRY_INTERVAL = 3.0


def min_lease_ttl(election_timeout: float) -> int:
    """etcd's minimum lease TTL in whole seconds: ``ceil(1.5 * election timeout)`` (2 s for 1 s)."""
    return max(1, math.ceil(1.5 * election_timeout))


class LeaseTable:
    """The replicated leases: ID -> granted TTL (after raising to the minimum)."""

    def __init__(self) -> None:
        self.ttl: dict[int, int] = {}

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self.ttl

    def __len__(self) -> int:
        return len(self.ttl)

    def grant(self, lease_id: int, ttl: int) -> None:
        """Record a lease (the caller has checked that the ID is free)."""
        self.ttl[lease_id] = ttl

    def revoke(self, lease_id: int) -> None:
        """Forget a lease (its keys are deleted by the caller)."""
        self.ttl.pop(lease_id, None)

    def ids(self) -> list[int]:
        """All lease IDs, sorted."""
        return sorted(self.ttl)


class Lessor:
    """The leader-local lease clock: deadlines, keepalives and expiry.

    Every method that reads the clock takes ``now`` (``time.monotonic()`` seconds) so
    it can be tested; :meth:`granted` (called from apply) stamps new leases with
    ``clock()``. A lessor starts as a secondary: :meth:`expired` reports nothing until
    :meth:`promote` is called (the server does so when its member becomes leader).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 retry_interval: float = EXPIRED_RETRY_INTERVAL) -> None:
        self.clock = clock
        self.retry_interval = retry_interval
        self.primary = False
        self._ttl: dict[int, int] = {}
        self._deadline: dict[int, float] = {}
        self._retry_at: dict[int, float] = {}

    # -- fed by apply (replicated changes) ------------------------------------------------------

    def granted(self, lease_id: int, ttl: int) -> None:
        """A lease was granted (applied): its deadline is now + TTL."""
        self._ttl[lease_id] = ttl
        self._deadline[lease_id] = self.clock() + ttl

    def revoked(self, lease_id: int) -> None:
        """A lease was revoked or expired (applied)."""
        self._ttl.pop(lease_id, None)
        self._deadline.pop(lease_id, None)
        self._retry_at.pop(lease_id, None)

    def reset(self, leases: Iterable[tuple[int, int]]) -> None:
        """Replace every lease (after a snapshot restore): all get a full TTL from now."""
        now = self.clock()
        self._ttl = dict(leases)
        self._deadline = {lid: now + ttl for lid, ttl in self._ttl.items()}
        self._retry_at = {}

    # -- leader-local clock ---------------------------------------------------------------------

    def promote(self, now: float, extend: float = 0.0) -> None:
        """Become the primary: every lease gets a fresh full TTL (plus ``extend``) from ``now``."""
        self.primary = True
        self._deadline = {lid: now + ttl + extend for lid, ttl in self._ttl.items()}
        self._retry_at = {}

    def demote(self) -> None:
        """Stop being the primary: nothing expires until the next promotion."""
        self.primary = False

    def remaining(self, lease_id: int, now: float) -> float | None:
        """Seconds left before ``lease_id`` expires (None: unknown lease)."""
        deadline = self._deadline.get(lease_id)
        return None if deadline is None else deadline - now

    def keepalive(self, lease_id: int, now: float) -> int:
        """Renew a lease: its remaining TTL becomes the granted TTL, which is returned.

        -1 for an unknown lease or one already past its deadline (etcd waits for the revoke
        and answers "not found"; the server then omits ``TTL``).
        """
        ttl = self._ttl.get(lease_id)
        deadline = self._deadline.get(lease_id)
        if ttl is None or deadline is None or deadline <= now:
            return -1
        self._deadline[lease_id] = now + ttl
        self._retry_at.pop(lease_id, None)
        return ttl

    def expired(self, now: float) -> list[int]:
        """Leases whose deadline passed (primary only), sorted by deadline then ID.

        Each one is reported again only after ``retry_interval`` if it is still there
        (its revoke proposal may have been lost).
        """
        if not self.primary:
            return []
        retry = self._retry_at
        out = sorted(
            (d, lid) for lid, d in self._deadline.items() if d <= now and retry.get(lid, d) <= now
        )
        for _d, lid in out:
            retry[lid] = now + self.retry_interval
        return [lid for _d, lid in out]

    def by_expiry(self) -> list[int]:
        """Lease IDs ordered by deadline (then ID), as etcd's lease list orders them."""
        return [lid for _d, lid in sorted((d, lid) for lid, d in self._deadline.items())]

"""Linearizable reads without writing to the log: ReadIndex (thesis §6.4).

A leader serves a read at its current commit index once it has confirmed,
after the read arrived, that it is still the leader: a quorum answered a
heartbeat sent after the read was registered. Reads are grouped into
*rounds*: every read registered before a heartbeat broadcast shares that
broadcast's round number, which followers echo back; a round is confirmed
when a quorum has echoed it (or a later one). Many concurrent reads thus cost
one heartbeat round.

Before the leader has committed an entry of its own term, its commit index
may be behind the cluster's, so reads wait until it has.
"""

from __future__ import annotations

from collections import deque


class ReadOnly:
    """Pending read requests of a leader, by round."""

    __slots__ = ("_acked", "_pending", "_unsent", "_waiting_commit", "sent_round")

    def __init__(self) -> None:
        self.sent_round = 0
        """Number of the last round broadcast."""
        self._unsent: list[tuple[bytes, str, int]] = []
        """Reads registered since the last broadcast: (context, requester, index)."""
        self._pending: deque[tuple[int, bytes, str, int]] = deque()
        """Reads waiting for their round to be confirmed: (round, context, requester, index)."""
        self._waiting_commit: list[tuple[bytes, str]] = []
        """Reads that arrived before the leader committed an entry of its term."""
        self._acked: dict[str, int] = {}
        """Highest round each peer has echoed."""

    def wait_for_commit(self, ctx: bytes, requester: str) -> None:
        self._waiting_commit.append((ctx, requester))

    def release_waiting(self) -> list[tuple[bytes, str]]:
        out, self._waiting_commit = self._waiting_commit, []
        return out

    def add(self, ctx: bytes, requester: str, index: int) -> None:
        """Register a read at ``index``; it joins the next round broadcast."""
        self._unsent.append((ctx, requester, index))

    def has_unsent_round(self) -> bool:
        return bool(self._unsent)

    def idle(self) -> bool:
        """No read is waiting for anything."""
        return not (self._unsent or self._pending or self._waiting_commit)

    def send_round(self, always: bool = False) -> int:
        """Round number for the heartbeat about to be broadcast (0: no read pending).

        ``always`` numbers every broadcast (lease mode measures the lease on them)."""
        if self._unsent or always:
            self.sent_round += 1
            for ctx, requester, index in self._unsent:
                self._pending.append((self.sent_round, ctx, requester, index))
            self._unsent = []
        return self.sent_round if self._pending or always else 0

    def ack(self, peer: str, read_round: int) -> None:
        if read_round > self._acked.get(peer, 0):
            self._acked[peer] = read_round

    def acked_rounds(self) -> dict[str, int]:
        return self._acked

    def release(self, confirmed_round: int) -> list[tuple[bytes, str, int]]:
        """Reads whose round a quorum has confirmed: (context, requester, index)."""
        out = []
        pending = self._pending
        while pending and pending[0][0] <= confirmed_round:
            _, ctx, requester, index = pending.popleft()
            out.append((ctx, requester, index))
        return out

    def drop_all(self) -> list[tuple[bytes, str]]:
        """Leadership ended: every read not yet confirmed fails (context, requester)."""
        out = [(ctx, req) for _, ctx, req, _ in self._pending]
        out += [(ctx, req) for ctx, req, _ in self._unsent]
        out += self._waiting_commit
        self._pending.clear()
        self._unsent = []
        self._waiting_commit = []
        self._acked = {}
        return out

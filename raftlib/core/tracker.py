"""The leader's view of the cluster: per-peer progress, votes, and quorum math.

Node ids are mapped to small integer slots so that the match indexes and votes
live in the hot path's ``QuorumTracker`` (C arrays when compiled); the
committed index after each acknowledgement is computed there.
"""

from __future__ import annotations

from raftlib._accel import VOTE_WON, QuorumTracker, joint_committed_index
from raftlib.core.membership import Membership
from raftlib.core.progress import Progress


class ProgressTracker:
    """Progress of every member, and the quorum computations over the voters."""

    __slots__ = ("_quorum", "_slots", "max_inflight", "membership", "progress")

    def __init__(self, membership: Membership, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.progress: dict[str, Progress] = {}
        self._slots: dict[str, int] = {}
        self._quorum = QuorumTracker(max(1, len(membership.members())))
        self.membership = membership
        self.set_membership(membership, next_index=1)

    def set_membership(self, membership: Membership, next_index: int) -> None:
        """Switch to a new configuration; new members start probing at ``next_index``."""
        self.membership = membership
        members = membership.members()
        for node_id in list(self.progress):
            if node_id not in members:
                del self.progress[node_id]
                del self._slots[node_id]
        used = set(self._slots.values())
        free = (s for s in range(len(members) + len(used) + 1) if s not in used)
        for node_id in sorted(members):
            if node_id not in self.progress:
                self.progress[node_id] = Progress(next_index, self.max_inflight)
                self._slots[node_id] = next(free)
        needed = max(self._slots.values(), default=0) + 1
        if needed > self._quorum.n_slots:
            # Room for learners' slots too (set_config grows only for voters).
            self._quorum = QuorumTracker(2 * needed)
        self._quorum.set_config(
            [self._slots[v] for v in sorted(membership.voters)],
            [self._slots[v] for v in sorted(membership.outgoing)],
        )
        for node_id, slot in self._slots.items():
            self._quorum.set_match(slot, self.progress[node_id].match)

    def reset(self, next_index: int, self_id: str, self_match: int) -> None:
        """Forget all progress and votes (on a term or role change).

        Peers start probing at ``next_index``; our own match is what we have
        made durable.
        """
        self._quorum.reset_votes()
        self._quorum.reset_matches()
        for node_id, pr in self.progress.items():
            pr.reset(next_index)
            if node_id == self_id:
                pr.match = self_match
                self._quorum.set_match(self._slots[node_id], self_match)

    # -- replication ---------------------------------------------------------

    def update_match(self, node_id: str, index: int) -> int:
        """Record ``node_id``'s match index; return the index a quorum has now acknowledged."""
        return self._quorum.set_match_and_commit(self._slots[node_id], index)

    def committed(self) -> int:
        """The largest index acknowledged by a quorum (of both sets when joint)."""
        return self._quorum.committed()

    def reset_matches(self) -> None:
        self._quorum.reset_matches()

    def quorum_index(self, values: dict[str, int]) -> int:
        """The largest value a quorum of voters has reached (missing voters count as 0)."""
        m = self.membership
        return joint_committed_index(
            [values.get(v, 0) for v in sorted(m.voters)],
            [values.get(v, 0) for v in sorted(m.outgoing)],
        )

    # -- elections -----------------------------------------------------------

    def reset_votes(self) -> None:
        self._quorum.reset_votes()

    def record_vote(self, node_id: str, granted: bool) -> None:
        """First answer wins; answers from non-voters are ignored."""
        slot = self._slots.get(node_id)
        if slot is not None and self.membership.is_voter(node_id):
            self._quorum.record_vote(slot, granted)

    def vote_result(self) -> int:
        """VOTE_WON, VOTE_LOST or VOTE_PENDING (see ``raftlib._accel``)."""
        return self._quorum.vote_result()

    def votes(self) -> tuple[int, int]:
        """(granted, rejected) so far."""
        return self._quorum.votes()

    # -- CheckQuorum -------------------------------------------------------------

    def quorum_active(self, self_id: str) -> bool:
        """Did a quorum (counting ourselves) talk to us during the last election timeout?"""
        self._quorum.reset_votes()
        for node_id in self.membership.all_voters():
            pr = self.progress[node_id]
            self._quorum.record_vote(self._slots[node_id], node_id == self_id or pr.recent_active)
        won = self._quorum.vote_result() == VOTE_WON
        self._quorum.reset_votes()
        return won

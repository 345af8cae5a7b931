"""Cluster configurations: voters, learners, and joint consensus (§6 of the Raft paper).

A configuration is either simple (one voter set) or joint (``voters`` is
C_new and ``outgoing`` is C_old): while joint, elections and commitment need
a majority of *both* sets. Learners receive the log but never vote and never
count toward a quorum.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Membership:
    """One configuration of the cluster.

    >>> m = Membership(frozenset({"a", "b", "c"}))
    >>> sorted(m.members()), m.is_joint()
    (['a', 'b', 'c'], False)
    """

    voters: frozenset[str]
    outgoing: frozenset[str] = field(default_factory=frozenset)
    learners: frozenset[str] = field(default_factory=frozenset)
    promoting: frozenset[str] = field(default_factory=frozenset)
    """Learners the leader promotes to voters once they have caught up."""

    def is_joint(self) -> bool:
        """True while in C_old,new (outgoing voters still count)."""
        return bool(self.outgoing)

    def all_voters(self) -> frozenset[str]:
        """Everyone whose vote or acknowledgement counts in some quorum."""
        return self.voters | self.outgoing

    def members(self) -> frozenset[str]:
        """Every node the leader replicates to (voters of both sets and learners)."""
        return self.voters | self.outgoing | self.learners

    def is_voter(self, node_id: str) -> bool:
        return node_id in self.voters or node_id in self.outgoing

    def to_dict(self) -> dict[str, list[str]]:
        """A JSON-friendly form (sorted lists), for storage and status output."""
        return {
            "voters": sorted(self.voters),
            "outgoing": sorted(self.outgoing),
            "learners": sorted(self.learners),
            "promoting": sorted(self.promoting),
        }

    @classmethod
    def from_dict(cls, d: dict[str, list[str]]) -> Membership:
        return cls(
            frozenset(d.get("voters", ())),
            frozenset(d.get("outgoing", ())),
            frozenset(d.get("learners", ())),
            frozenset(d.get("promoting", ())),
        )

    def describe(self) -> str:
        """Short human-readable form, e.g. ``voters=[a,b,c] learners=[d]``."""
        parts = [f"voters=[{','.join(sorted(self.voters))}]"]
        if self.outgoing:
            parts.append(f"outgoing=[{','.join(sorted(self.outgoing))}]")
        if self.learners:
            parts.append(f"learners=[{','.join(sorted(self.learners))}]")
        if self.promoting:
            parts.append(f"promoting=[{','.join(sorted(self.promoting))}]")
        return " ".join(parts)

"""Configuration changes: what a CONF_CHANGE log entry says, and how it transforms a configuration.

A change is proposed as a log entry and takes effect on every node when that
entry is applied (as in etcd's raft), so all nodes switch configurations at
the same point of the log.

* A change that adds or removes at most one voter takes the *simple* path:
  any majority of the old configuration overlaps any majority of the new one.
* Anything else goes through *joint consensus* (§6 of the Raft paper): the
  cluster first moves to C_old,new, where elections and commitment need
  majorities of both, and the leader leaves the joint configuration
  automatically (an empty change) once it has been applied.

Only one change may be in flight; the leader refuses a second with
:class:`~raftlib.errors.ConfChangeInProgress`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from raftlib.core.membership import Membership
from raftlib.errors import ConfChangeError


class ChangeKind(enum.Enum):
    ADD_VOTER = "add_voter"
    """Add a voter, or promote a learner to voter."""
    ADD_LEARNER = "add_learner"
    """Add a non-voting member, or demote a voter to learner."""
    ADD_MEMBER = "add_member"
    """Add as a learner and let the leader promote it once it has caught up."""
    REMOVE = "remove"
    """Remove a voter or learner."""


class Transition(enum.Enum):
    AUTO = "auto"
    """Simple when at most one voter changes, otherwise joint with automatic leave."""
    JOINT = "joint"
    """Always joint consensus, left automatically once applied."""


@dataclass(frozen=True, slots=True)
class Change:
    """One member's change. ``context`` is opaque to the core (a node may carry an address)."""

    kind: ChangeKind
    node_id: str
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """The payload of a CONF_CHANGE entry; no changes at all means "leave the joint configuration".

    >>> cc = ConfChange((Change(ChangeKind.ADD_LEARNER, "n4", b"10.0.0.4:7000"),))
    >>> ConfChange.decode(cc.encode()) == cc
    True
    """

    changes: tuple[Change, ...] = ()
    transition: Transition = Transition.AUTO
    result: Membership | None = None
    """The configuration this change produces, computed by the leader when it
    proposes the change (every earlier change is applied by then, so it is the
    same on every node). It lets a node that joined with no configuration learn
    the whole configuration from the entry alone."""

    def is_leave(self) -> bool:
        return not self.changes

    def encode(self) -> bytes:
        obj: dict[str, object] = {
            "v": 1,
            "t": self.transition.value,
            "c": [[c.kind.value, c.node_id, c.context.hex()] for c in self.changes],
        }
        if self.result is not None:
            obj["r"] = self.result.to_dict()
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Parse an entry's payload; ConfChangeError when it is not a valid change."""
        try:
            obj = json.loads(data)
            if obj.get("v") != 1:
                raise ValueError(f"unknown version {obj.get('v')!r}")
            changes = tuple(
                Change(ChangeKind(kind), str(node_id), bytes.fromhex(ctx))
                for kind, node_id, ctx in obj["c"]
            )
            result = Membership.from_dict(obj["r"]) if "r" in obj else None
            return cls(changes, Transition(obj["t"]), result)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfChangeError(f"malformed configuration change entry: {exc}") from exc


def apply_change(current: Membership, cc: ConfChange) -> Membership:
    """The configuration that results from applying ``cc`` to ``current``.

    Raises ConfChangeError for a change that cannot be applied; the leader
    checks this before proposing, and an invalid change that is committed
    anyway is applied by every node as a no-op (see ``Raft.apply_conf_change``).
    """
    if cc.result is not None:
        return cc.result
    if not current.voters:
        # Bootstrapping an empty configuration: no old majority to overlap.
        if any(c.kind is ChangeKind.REMOVE for c in cc.changes):
            raise ConfChangeError("cannot remove members from an empty configuration")
        first = Membership(
            frozenset(c.node_id for c in cc.changes if c.kind is ChangeKind.ADD_VOTER),
            frozenset(),
            frozenset(c.node_id for c in cc.changes if c.kind is not ChangeKind.ADD_VOTER),
            frozenset(c.node_id for c in cc.changes if c.kind is ChangeKind.ADD_MEMBER),
        )
        if not first.voters:
            raise ConfChangeError("a configuration needs at least one voter")
        return first
    if cc.is_leave():
        if not current.is_joint():
            raise ConfChangeError("not in a joint configuration: nothing to leave")
        return Membership(current.voters, frozenset(), current.learners, current.promoting)
    if current.is_joint():
        raise ConfChangeError("the joint configuration must be left before another change")
    voters = set(current.voters)
    learners = set(current.learners)
    promoting = set(current.promoting)
    touched: set[str] = set()
    for ch in cc.changes:
        if not ch.node_id:
            raise ConfChangeError("a change needs a non-empty node id")
        if ch.node_id in touched:
            raise ConfChangeError(f"node {ch.node_id!r} appears twice in one change")
        touched.add(ch.node_id)
        if ch.kind is ChangeKind.ADD_VOTER:
            learners.discard(ch.node_id)
            promoting.discard(ch.node_id)
            voters.add(ch.node_id)
        elif ch.kind in (ChangeKind.ADD_LEARNER, ChangeKind.ADD_MEMBER):
            if ch.node_id in learners and ch.kind is ChangeKind.ADD_LEARNER:
                promoting.discard(ch.node_id)
            voters.discard(ch.node_id)
            learners.add(ch.node_id)
            if ch.kind is ChangeKind.ADD_MEMBER:
                promoting.add(ch.node_id)
        else:  # REMOVE
            if ch.node_id not in voters and ch.node_id not in learners:
                raise ConfChangeError(f"node {ch.node_id!r} is not a member")
            voters.discard(ch.node_id)
            learners.discard(ch.node_id)
            promoting.discard(ch.node_id)
    if not voters:
        raise ConfChangeError("a configuration needs at least one voter")
    changed_voters = len(voters ^ set(current.voters))
    if cc.transition is Transition.AUTO and changed_voters <= 1:
        return Membership(frozenset(voters), frozenset(), frozenset(learners), frozenset(promoting))
    # Joint consensus: the old voters keep counting until the leave is applied.
    # A voter being demoted stays an outgoing voter until then.
    return Membership(
        frozenset(voters), frozenset(current.voters), frozenset(learners), frozenset(promoting)
    )

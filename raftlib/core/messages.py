"""Message, state and entry types exchanged between the core and its driver.

Plain data, no I/O. ``Entry`` comes from the hot path (compiled when
available) so the log can read its fields without Python attribute lookups.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from raftlib._accel import ENTRY_CONF_CHANGE, ENTRY_NORMAL, Entry
from raftlib.core.membership import Membership

__all__ = [
    "ENTRY_CONF_CHANGE",
    "ENTRY_NORMAL",
    "Entry",
    "HardState",
    "Message",
    "MessageType",
    "ProposalResult",
    "ReadState",
    "Role",
    "SnapshotChunk",
    "SnapshotMeta",
    "SoftState",
]


class MessageType(enum.IntEnum):
    """Kinds of messages nodes send each other."""

    VOTE = 1
    """RequestVote (§5.2): ``index``/``log_term`` are the candidate's last entry."""
    VOTE_RESP = 2
    """Answer to VOTE; ``reject`` is False when the vote is granted."""
    PRE_VOTE = 3
    """Thesis §9.6: would you vote for me at ``term``? Changes no durable state."""
    PRE_VOTE_RESP = 4
    """Answer to PRE_VOTE."""
    APPEND = 5
    """AppendEntries (§5.3): ``index``/``log_term`` are prev index/term; ``entries`` follow it."""
    APPEND_RESP = 6
    """Answer to APPEND: ``index`` is the follower's last matching index on success;
    on reject, ``index`` echoes the rejected prev index and ``reject_hint``/``log_term``
    carry the conflict hint for fast backtracking."""
    HEARTBEAT = 7
    """Leader liveness, carries ``commit`` (never beyond what the follower matches)."""
    HEARTBEAT_RESP = 8
    """Answer to HEARTBEAT; echoes the heartbeat's ``index`` (the ReadIndex round)."""
    SNAPSHOT = 9
    """One chunk of a snapshot (``snapshot`` meta, ``offset``; the driver fills ``data``/``done``)."""
    SNAPSHOT_RESP = 10
    """Chunk answer: ``offset`` is the next offset expected; ``reject`` asks to resend from
    there; ``done`` says the snapshot is installed and the log matches up to ``index``."""
    TIMEOUT_NOW = 11
    """Thesis §3.10: the leader asks its chosen successor to start an election now."""
    READ_INDEX = 12
    """Thesis §6.4: a follower asks the leader for a read index (``context`` identifies it)."""
    READ_INDEX_RESP = 13
    """The confirmed read index in ``index`` for the request ``context`` (``reject`` if refused)."""
    PROPOSE = 14
    """A follower forwards a proposal (``entries``, ``context``) to the leader."""
    PROPOSE_RESP = 15
    """(``index``, ``log_term``) of the forwarded proposal's entry,
    or ``reject`` with a reason in ``data``."""
    PROPOSE_CONF_CHANGE = 16
    """A follower forwards a configuration change (one CONF_CHANGE entry, ``context``) to the
    leader; answered with PROPOSE_RESP. A type of its own, so that a node predating it drops
    the message as unknown rather than appending the change as an ordinary command."""


class Role(enum.Enum):
    """The roles of a Raft node (thesis §9.6 adds the pre-candidate)."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class Message:
    """One message between two nodes.

    Field meaning depends on ``type`` (see :class:`MessageType`). ``frm`` is the
    sender (``from`` is a Python keyword).
    """

    type: MessageType
    frm: str
    to: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: SnapshotMeta | None = None
    offset: int = 0
    data: bytes = b""
    done: bool = False
    context: bytes = b""
    force: bool = False
    """VOTE only: the election comes from a leadership transfer; ignore the leader lease."""
    quiet: bool = False
    """APPEND only: an entry-less append telling a follower the leader knows to be up to date
    its new commit index; it is answered only when rejected (the answer would say nothing new)."""

    def __repr__(self) -> str:
        parts = [f"{self.type.name} {self.frm}->{self.to} t{self.term}"]
        if self.type in (MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE):
            parts.append(f"idx={self.index} lt={self.log_term}")
        if self.entries:
            parts.append(f"ents={self.entries[0].index}..{self.entries[-1].index}")
        if self.commit:
            parts.append(f"commit={self.commit}")
        if self.type in (MessageType.APPEND_RESP, MessageType.HEARTBEAT_RESP):
            parts.append(f"idx={self.index}")
        if self.reject:
            parts.append(f"REJECT hint={self.reject_hint} lt={self.log_term}")
        if self.snapshot is not None:
            parts.append(f"snap={self.snapshot.index}@{self.snapshot.term} off={self.offset}")
        if self.done:
            parts.append("done")
        if self.force:
            parts.append("force")
        if self.quiet:
            parts.append("quiet")
        return "Message(" + " ".join(parts) + ")"


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before the node answers anyone: term, vote, commit.

    §5.1/§5.2: the current term and the vote are persisted before a vote is
    granted or any message of the new term is sent.
    """

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts a driver may want to observe: who leads, what role we have."""

    leader: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Identity of a snapshot: the last index and term it covers, and the configuration then."""

    index: int
    term: int
    membership: Membership


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """A piece of an incoming snapshot for the driver to write at ``offset``.

    ``offset == 0`` starts a new incoming snapshot (discard any partial one).
    """

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``.

    ``ok`` is False when the read could not be confirmed (leadership changed
    or no leader): retry it.
    """

    index: int
    context: bytes
    ok: bool = True


@dataclass(frozen=True, slots=True)
class ProposalResult:
    """Where a proposal made with a context landed, or why it was refused.

    The proposal succeeded if the entry applied at ``index`` has ``term``.
    ``error`` is a short reason ("not_leader", "transfer_pending", ...) when
    the proposal was refused; ``leader`` is the leader hint then.
    """

    context: bytes
    index: int = 0
    term: int = 0
    error: str | None = None
    leader: str | None = None

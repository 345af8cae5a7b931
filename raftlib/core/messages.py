"""Message, state and entry types exchanged between the core and its driver.

Plain data, no I/O. ``Entry`` comes from the hot path (compiled when
available) so the log can read its fields without Python attribute lookups.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from raftlib._accel import ENTRY_CONF_CHANGE, ENTRY_NORMAL, Entry

__all__ = [
    "ENTRY_CONF_CHANGE",
    "ENTRY_NORMAL",
    "Entry",
    "HardState",
    "Message",
    "MessageType",
    "Role",
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
    """Answer to HEARTBEAT."""


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

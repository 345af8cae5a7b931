"""The driver-facing face of the core: ``ready()`` / ``advance()``.

A driver (``RaftNode``, the simulator in ``raftlib.testing``, or your own)
loops::

    node.tick()            # every tick interval
    node.step(message)     # for each message from a peer
    node.propose(data)     # for each command (on the leader)

    if node.has_ready():
        rd = node.ready()
        send(rd.messages)                       # may go out at once
        persist(rd.hard_state, rd.entries)      # then fsync
        send(rd.persisted_messages)             # only after the fsync
        apply(rd.committed_entries)             # in order
        node.advance(rd)

Only one Ready is outstanding at a time; stepping and ticking may continue
while it is handled. See docs/core.md for why each rule exists.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from raftlib._accel import Entry
from raftlib.core.config import Config
from raftlib.core.messages import HardState, Message, MessageType, Role, SoftState
from raftlib.core.raft import Raft
from raftlib.core.storage_state import PersistentState


@dataclass(slots=True)
class Ready:
    """Everything the driver must do now, in the order documented above."""

    soft_state: SoftState | None = None
    """Role or leader changed (not persisted; for observers)."""
    hard_state: HardState | None = None
    """Term, vote or commit changed: persist before sending ``persisted_messages``."""
    entries: list[Entry] = field(default_factory=list)
    """Append to stable storage. If ``entries[0].index`` is at or below the stored
    last index, the stored entries from that index on are replaced."""
    messages: list[Message] = field(default_factory=list)
    """May be sent immediately, before or while persisting."""
    persisted_messages: list[Message] = field(default_factory=list)
    """Send only after ``hard_state`` and ``entries`` are durable (vote grants, append acks)."""
    committed_entries: list[Entry] = field(default_factory=list)
    """Apply to the state machine in order, after persisting this Ready."""

    def must_sync(self) -> bool:
        """True when something must be made durable (fsync) before ``persisted_messages``."""
        return self.hard_state is not None or bool(self.entries)


class RawNode:
    """A Raft node without I/O: feed it ticks, messages and proposals; drain Readies.

    >>> import random
    >>> node = RawNode(Config("n1", voters=["n1"]), rng=random.Random(1))
    >>> node.campaign()
    >>> while node.has_ready():
    ...     node.advance(node.ready())   # a single node: nothing to send
    >>> node.role.value, node.commit_index
    ('leader', 1)
    """

    __slots__ = ("raft", "_prev_hard", "_prev_soft", "_outstanding", "_self_msgs")

    def __init__(
        self,
        config: Config,
        state: PersistentState | None = None,
        rng: random.Random | None = None,
        applied: int = 0,
    ) -> None:
        """Create a node from its configuration and, on restart, its durable state.

        ``applied`` is the index the state machine already reflects (for state
        machines that persist themselves); committed entries after it are
        handed out again for application.
        """
        self.raft = Raft(config, state, rng, applied)
        self._prev_hard = self.raft.hard_state()
        self._prev_soft = self.raft.soft_state()
        self._outstanding: Ready | None = None
        self._self_msgs: list[Message] = []

    # -- inputs --------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (drives elections and heartbeats)."""
        self.raft.tick()

    def step(self, message: Message) -> None:
        """Deliver a message from a peer."""
        self.raft.step(message)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Propose a command; returns the (index, term) its entry will have if it commits.

        The proposal succeeded if the entry applied at that index has that
        term; if another term's entry lands there, the proposal was lost.
        Raises :class:`~raftlib.errors.NotLeader` on a non-leader and
        :class:`~raftlib.errors.UncommittedLimitExceeded` under back-pressure.
        """
        return self.raft.propose(data)

    def propose_batch(self, datas: list[bytes]) -> list[tuple[int, int]]:
        """Propose several commands at once (one AppendEntries, one persist)."""
        return self.raft.propose_batch(datas)

    def campaign(self) -> None:
        """Start an election now instead of waiting for the election timeout."""
        self.raft.campaign()

    # -- outputs ---------------------------------------------------------------

    def has_ready(self) -> bool:
        """Is there anything to persist, send or apply?"""
        if self._outstanding is not None:
            return False
        r = self.raft
        r.flush_broadcast()
        return bool(
            r.msgs
            or r.msgs_after_persist
            or r.log.stable < r.log.last_index()
            or r.log.has_next_committed_entries()
            or r.hard_state() != self._prev_hard
            or r.soft_state() != self._prev_soft
        )

    def ready(self) -> Ready:
        """Take the current batch of work. Call :meth:`advance` when it is done."""
        if self._outstanding is not None:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        r = self.raft
        r.flush_broadcast()
        rd = Ready()
        soft = r.soft_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        hard = r.hard_state()
        if hard != self._prev_hard:
            rd.hard_state = hard
            self._prev_hard = hard
        rd.entries = r.log.unstable_entries()
        rd.messages = r.msgs
        r.msgs = []
        after = r.msgs_after_persist
        r.msgs_after_persist = []
        rd.persisted_messages = [m for m in after if m.to != r.id]
        self._self_msgs = [m for m in after if m.to == r.id]
        if rd.entries and r.role is Role.LEADER:
            # The leader counts its own entries only once they are durable.
            last = rd.entries[-1]
            if last.term == r.term:
                self._self_msgs.append(
                    Message(MessageType.APPEND_RESP, r.id, r.id, r.term, index=last.index)
                )
        rd.committed_entries = r.log.next_committed_entries(r.config.max_apply_bytes)
        if rd.committed_entries:
            r.log.applying_to(rd.committed_entries[-1].index)
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver has persisted, sent and applied ``rd`` as documented."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        r = self.raft
        if rd.entries:
            last = rd.entries[-1]
            r.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)
        msgs, self._self_msgs = self._self_msgs, []
        for m in msgs:
            r.step(m)

    # -- introspection -----------------------------------------------------------

    @property
    def id(self) -> str:
        return self.raft.id

    @property
    def role(self) -> Role:
        return self.raft.role

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def leader(self) -> str | None:
        return self.raft.lead

    @property
    def commit_index(self) -> int:
        return self.raft.log.committed

    @property
    def applied_index(self) -> int:
        return self.raft.log.applied

    def first_index(self) -> int:
        return self.raft.log.first_index()

    def last_index(self) -> int:
        return self.raft.log.last_index()

    def term_at(self, index: int) -> int:
        """Term of the entry at ``index`` (LogIndexError if compacted or absent)."""
        return self.raft.log.term(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) of the log (held in memory by the core)."""
        if lo >= hi:
            return []
        return self.raft.log.slice(lo, hi, 1 << 62)

    def status(self) -> dict[str, Any]:
        """A snapshot of the node's state for operators and tests."""
        r = self.raft
        out: dict[str, Any] = {
            "id": r.id,
            "role": r.role.value,
            "term": r.term,
            "vote": r.vote,
            "leader": r.lead,
            "commit": r.log.committed,
            "applied": r.log.applied,
            "first_index": r.log.first_index(),
            "last_index": r.log.last_index(),
            "membership": r.tracker.membership.describe(),
        }
        if r.role is Role.LEADER:
            out["progress"] = {
                peer: {
                    "state": pr.state.value,
                    "match": pr.match,
                    "next": pr.next,
                    "inflight": len(pr.inflights),
                }
                for peer, pr in sorted(r.tracker.progress.items())
            }
        return out

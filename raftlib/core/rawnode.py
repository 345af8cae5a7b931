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

With ``Config.async_storage_writes`` (thesis §10.2.1, etcd's async storage
writes) the write of a Ready may still be in flight when the driver calls
``advance()`` and takes the next Ready::

        rd = node.ready()
        send(rd.messages)
        start_write(rd)                       # in order; may complete later
        apply(rd.committed_entries)           # only entries durable here
        node.advance(rd)
        ...
    # when the write of rd is durable (writes complete in the order started):
        node.persisted(rd)
        send(rd.persisted_messages)

Acknowledgements of ``rd``'s entries (and vote grants) go out only once it is
durable, the leader counts itself toward a quorum only for durable entries
(``persisted()`` steps its own acknowledgement), and committed entries are
handed out for application only once they are durable locally too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from raftlib._accel import Entry
from raftlib.core.confchange import ConfChange
from raftlib.core.config import Config
from raftlib.core.membership import Membership
from raftlib.core.messages import (
    HardState,
    Message,
    MessageType,
    ProposalResult,
    ReadState,
    Role,
    SnapshotChunk,
    SnapshotMeta,
    SoftState,
)
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
    snapshot_chunks: list[SnapshotChunk] = field(default_factory=list)
    """Pieces of a snapshot arriving from the leader: write each at its offset
    into the incoming snapshot (offset 0 starts a new one)."""
    snapshot: SnapshotMeta | None = None
    """Install this snapshot (its last chunk is in ``snapshot_chunks`` or was
    written before): make it durable, restore the state machine from it, and
    drop stored entries up to its index (all of them unless the stored entry at
    its index has its term). Do this before persisting ``entries``."""
    read_states: list[ReadState] = field(default_factory=list)
    """Confirmed read indexes: serve each read once ``index`` is applied (or retry if not ok)."""
    proposal_results: list[ProposalResult] = field(default_factory=list)
    """Where proposals made with ``propose_with_context`` landed, or why they were refused."""

    sync: bool = False
    """Set by ``ready()``: see :meth:`must_sync`."""
    self_messages: list[Message] = field(default_factory=list)
    """Messages to this node itself that need the write to be durable first (the leader's
    acknowledgement of its own entries, a candidate's vote for itself): stepped by
    ``advance()``, or by ``persisted()`` with asynchronous storage writes."""

    def needs_write_order(self) -> bool:
        """True when something of this Ready waits for its write (or, with asynchronous
        writes, for the writes before it): a sync, or acknowledgements to send after it."""
        return self.sync or bool(self.persisted_messages) or bool(self.self_messages)

    def must_sync(self) -> bool:
        """True when something must be made durable (fsync) before ``persisted_messages``.

        Entries, a snapshot, and a new term or vote must be; a hard state in
        which only the commit index moved need not (like etcd's MustSync): a
        lost commit index is learned again from the leader. Such a hard state
        should still be written, without an fsync.
        """
        return self.sync


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

    __slots__ = ("_async", "_outstanding", "_prev_hard", "_prev_soft", "raft")

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
        self._async = config.async_storage_writes

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

    def propose_with_context(self, data: bytes, context: bytes) -> None:
        """Propose from any node; the outcome arrives as a ProposalResult in a later Ready.

        Followers forward to the leader when ``Config.forward_proposals`` is on.
        """
        self.raft.propose_with_context(data, context)

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        """Propose a membership change (leader only; one at a time).

        Raises NotLeader, ConfChangeInProgress, or ConfChangeError for a change
        that cannot apply to the current configuration.
        """
        return self.raft.propose_conf_change(cc)

    def propose_conf_change_with_context(
        self, cc: ConfChange, context: bytes, *, forward: bool | None = None
    ) -> None:
        """Propose a membership change from any node; the outcome arrives as a ProposalResult.

        On a follower the change is forwarded to the leader when ``forward`` (default:
        ``Config.forward_proposals``) is on; see ``Raft.propose_conf_change_with_context``.
        """
        self.raft.propose_conf_change_with_context(cc, context, forward=forward)

    def handover_target(self, cc: ConfChange) -> str | None:
        """The voter this leader should transfer leadership to before proposing ``cc``
        (which removes or demotes it), or None; see ``Raft.handover_target``."""
        return self.raft.handover_target(cc)

    def transfer_leadership(self, target: str) -> None:
        """Thesis §3.10: make ``target`` the leader (abandoned after an election timeout)."""
        self.raft.transfer_leadership(target)

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; a ReadState with ``context`` arrives in a later Ready."""
        self.raft.read_index(context)

    def campaign(self) -> None:
        """Start an election now instead of waiting for the election timeout."""
        self.raft.campaign()

    def quiescable(self) -> bool:
        """Leader only: all replicated, committed, applied and durable, nothing in flight; a
        driver may stop ticking this node (see :meth:`wake`)."""
        return self._outstanding is None and self.raft.quiescable()

    def wake(self) -> None:
        """Call when ticking resumes after a pause the driver chose (quiescence)."""
        self.raft.wake()

    # -- snapshots -------------------------------------------------------------

    def should_snapshot(self) -> bool:
        """True once enough was applied since the last snapshot (Config.snapshot_entries/bytes)."""
        return self.raft.should_snapshot()

    def compact(self, index: int) -> None:
        """The driver made a snapshot of the state machine at ``index`` durable.

        The core records it (sending it to followers that need it) and drops log
        entries older than ``index - Config.snapshot_trailing_entries``; the
        driver may delete stored entries up to ``first_index() - 1``.
        """
        self.raft.compact(index)

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """The identity (term, configuration) a snapshot taken at applied ``index`` has."""
        return self.raft.snapshot_meta_at(index)

    def report_snapshot_failure(self, peer: str) -> None:
        """The driver could not read the snapshot it was sending to ``peer``."""
        self.raft.report_snapshot_failure(peer)

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        """The latest snapshot this node knows it holds."""
        return self.raft.snapshot_meta

    # -- outputs ---------------------------------------------------------------

    def has_ready(self) -> bool:
        """Is there anything to persist, send or apply?"""
        if self._outstanding is not None:
            return False
        r = self.raft
        r.flush()
        if (
            r.msgs
            or r.msgs_after_persist
            or r.read_states
            or r.proposal_results
            or r.snapshot_chunks
            or r.pending_install is not None
            or r.log.has_unstable_entries()
            or r.log.has_next_committed_entries(self._async)
        ):
            return True
        # The hard and soft states compared field by field: called after every message,
        # this must not build two objects to find that nothing changed.
        hard = self._prev_hard
        soft = self._prev_soft
        return (
            r.term != hard.term
            or r.vote != hard.vote
            or r.log.committed != hard.commit
            or r.lead != soft.leader
            or r.role is not soft.role
        )

    def ready(self) -> Ready:
        """Take the current batch of work. Call :meth:`advance` when it is done."""
        if self._outstanding is not None:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        r = self.raft
        r.flush()
        soft_state: SoftState | None = None
        prev_soft = self._prev_soft
        if r.lead != prev_soft.leader or r.role is not prev_soft.role:
            soft_state = self._prev_soft = r.soft_state()
        hard_state: HardState | None = None
        sync = False
        prev_hard = self._prev_hard
        if r.term != prev_hard.term or r.vote != prev_hard.vote or r.log.committed != prev_hard.commit:
            hard_state = self._prev_hard = r.hard_state()
            sync = r.term != prev_hard.term or r.vote != prev_hard.vote
        entries = r.log.unstable_entries()
        snapshot, r.pending_install = r.pending_install, None
        messages, r.msgs = r.msgs, []
        after = r.msgs_after_persist
        persisted: list[Message] = []
        self_messages: list[Message] = []
        if after:
            r.msgs_after_persist = []
            for m in after:
                (self_messages if m.to == r.id else persisted).append(m)
        if entries and r.role is Role.LEADER:
            # The leader counts its own entries only once they are durable.
            last = entries[-1]
            if last.term == r.term:
                self_messages.append(Message(MessageType.APPEND_RESP, r.id, r.id, r.term, index=last.index))
        committed = r.log.next_committed_entries(r.config.max_apply_bytes, self._async)
        if committed:
            r.log.applying_to(committed[-1].index)
        # The rarely used outputs are handed over only when there is something in them.
        chunks: list[SnapshotChunk] = r.snapshot_chunks
        if chunks:
            r.snapshot_chunks = []
        else:
            chunks = []
        read_states: list[ReadState] = r.read_states
        if read_states:
            r.read_states = []
        else:
            read_states = []
        results: list[ProposalResult] = r.proposal_results
        if results:
            r.proposal_results = []
        else:
            results = []
        rd = Ready(
            soft_state,
            hard_state,
            entries,
            messages,
            persisted,
            committed,
            chunks,
            snapshot,
            read_states,
            results,
            sync or bool(entries) or snapshot is not None,
            self_messages,
        )
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver has persisted, sent and applied ``rd`` as documented."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        r = self.raft
        if not self._async:
            self._stable(rd)
        if rd.snapshot is not None:
            r.log.applied_to(max(r.log.applied, rd.snapshot.index))
        if rd.committed_entries:
            r.log.applied_to(max(r.log.applied, rd.committed_entries[-1].index))
            r.apply_conf_entries(rd.committed_entries)
        if not self._async:
            self._step_self(rd)

    def persisted(self, rd: Ready) -> None:
        """Asynchronous storage writes: the write of ``rd`` is durable (and so are the writes of
        every Ready before it). Call once per Ready whose write was started, in Ready order,
        before or after its :meth:`advance`; then send ``rd.persisted_messages``."""
        if not self._async:
            raise RuntimeError("persisted() is for Config.async_storage_writes; advance() covers it")
        self._stable(rd)
        self._step_self(rd)

    def _stable(self, rd: Ready) -> None:
        if rd.entries:
            last = rd.entries[-1]
            self.raft.log.stable_to(last.index, last.term)

    def _step_self(self, rd: Ready) -> None:
        msgs, rd.self_messages = rd.self_messages, []
        for m in msgs:
            self.raft.step(m)

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

    @property
    def membership(self) -> Membership:
        """The configuration in force (as of the applied index)."""
        return self.raft.membership

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
            "snapshot_index": r.snapshot_meta.index if r.snapshot_meta else 0,
        }
        if r.lead_transferee is not None:
            out["transferring_to"] = r.lead_transferee
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

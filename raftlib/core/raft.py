"""The Raft state machine: roles, terms, votes, replication and commitment.

This module is the protocol itself, following the Raft paper (Ongaro and
Ousterhout, 2014) and the thesis (Ongaro, 2014); comments cite the rule being
applied. It performs no I/O: it consumes messages, ticks and proposals and
queues what must be persisted and sent, which ``RawNode`` hands to a driver.

Two outboxes keep durability honest:

* ``msgs`` may be sent at once (AppendEntries, heartbeats, vote requests);
* ``msgs_after_persist`` may be sent only once the state they vouch for is
  durable: vote grants (§5.2: the vote is persisted before it is granted) and
  append acknowledgements (an ack promises the entries are on disk). Messages
  to ourselves in this outbox (our own vote, the leader's own append ack) are
  stepped back in by ``RawNode.advance`` once the driver has persisted: a
  leader counts itself toward a quorum only after its own write is durable.

Snapshots, membership changes, leadership transfer, ReadIndex and proposal
forwarding are handled by the helpers in ``snapshots.py``, ``read_only.py``
and this class's ``*_conf_change`` / ``transfer_*`` methods.
"""

from __future__ import annotations

import random

from raftlib._accel import ENTRY_CONF_CHANGE, ENTRY_OVERHEAD, VOTE_LOST, VOTE_WON, Entry
from raftlib.core.confchange import Change, ChangeKind, ConfChange, apply_change
from raftlib.core.config import Config
from raftlib.core.log import RaftLog
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
from raftlib.core.progress import ProgressState
from raftlib.core.read_only import ReadOnly
from raftlib.core.storage_state import PersistentState
from raftlib.core.tracker import ProgressTracker
from raftlib.errors import (
    ConfChangeError,
    ConfChangeInProgress,
    LeadershipTransferError,
    NotLeader,
    ProposalDropped,
    UncommittedLimitExceeded,
)

_VOTE_REQUESTS = (MessageType.VOTE, MessageType.PRE_VOTE)
_FROM_LEADER = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)
_ANSWERS_TO_US = (MessageType.READ_INDEX_RESP, MessageType.PROPOSE_RESP)


class Raft:
    """One node's Raft protocol state. Drive it through :class:`RawNode`."""

    def __init__(
        self,
        config: Config,
        state: PersistentState | None = None,
        rng: random.Random | None = None,
        applied: int = 0,
    ) -> None:
        config.validate()
        self.config = config
        self.id = config.id
        self.rng = rng if rng is not None else random.Random()
        state = state if state is not None else PersistentState()
        hs = state.hard_state
        self.term = hs.term
        self.vote = hs.vote
        # Lease reads: a restarted node (it had a term) may have heard from a leader
        # whose lease is still running, and must not help replace it too early.
        self._restarted_in_lease_mode = config.read_only == "lease" and hs.term > 0
        snap = state.snapshot
        if snap is not None:
            membership = snap.membership
        elif config.voters or config.join:
            membership = Membership(frozenset(config.voters))
        else:
            raise ValueError(
                f"node {self.id!r} has no configuration: give Config.voters for a new "
                "cluster, Config.join=True to join one, or restart it from a snapshot"
            )
        entries = state.entries
        if snap is not None and entries and entries[0].index <= snap.index:
            # Entries kept behind the snapshot for slow followers: the restarted
            # log starts at the snapshot.
            entries = [e for e in entries if e.index > snap.index]
        self.log = RaftLog(
            snap.index if snap else 0,
            snap.term if snap else 0,
            entries,
            committed=hs.commit,
            applied=applied,
        )
        self.snapshot_meta: SnapshotMeta | None = snap
        """The latest snapshot a driver has (ours, or the one installed from the leader)."""
        # (applied index, configuration) pairs, oldest first, to know the
        # configuration at any snapshot point.
        self.conf_history: list[tuple[int, Membership]] = [(self.log.log.snapshot_index, membership)]
        self.tracker = ProgressTracker(membership, config.max_inflight)
        # A state machine that persists itself starts at `applied`: replay the
        # configuration changes it already reflects.
        for e in self._conf_entries(self.log.log.snapshot_index + 1, self.log.applied + 1):
            self._apply_conf_entry(e)
        self.role = Role.FOLLOWER
        self.lead: str | None = None
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self.read_states: list[ReadState] = []
        self.proposal_results: list[ProposalResult] = []
        self.snapshot_chunks: list[SnapshotChunk] = []
        self.pending_install: SnapshotMeta | None = None
        self.incoming: tuple[SnapshotMeta, int] | None = None
        """Snapshot being received from the leader, and the next offset expected."""
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.pending_conf_index = 0
        self.lead_transferee: str | None = None
        self.transfer_elapsed = 0
        self._handover_to: str | None = None
        """A transfer to start on the next tick (transfer first, for a forwarded change)."""
        self.read_only = ReadOnly()
        self.lease_clock = 0
        """Ticks this node has seen (the leader lease is measured on it)."""
        self._round_sent_at: dict[int, int] = {}
        """Lease mode: heartbeat round -> ``lease_clock`` when it was broadcast."""
        self._became_leader_at = 0
        self._lease_start: int | None = None
        """Lease mode: ``lease_clock`` at which the latest message a quorum acknowledged was sent."""
        self._broadcast_pending = False
        self.become_follower(self.term, None)

    # -- introspection -------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    @property
    def membership(self) -> Membership:
        return self.tracker.membership

    def promotable(self) -> bool:
        """Only voters of the current configuration may campaign."""
        return self.membership.is_voter(self.id)

    # -- role changes ----------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # §5.2: randomized election timeouts make split votes rare.
        et = self.config.election_tick
        self.randomized_election_timeout = self.rng.randrange(et, 2 * et)
        self.tracker.reset(self.log.last_index() + 1, self.id, self.log.stable)
        self.lead_transferee = None
        self.transfer_elapsed = 0
        self._handover_to = None
        self._broadcast_pending = False
        self._round_sent_at.clear()
        self._lease_start = None
        # Reads waiting for this node's leadership can no longer be confirmed.
        for ctx, requester in self.read_only.drop_all():
            self._answer_read(requester, ReadState(0, ctx, ok=False))

    def become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def become_pre_candidate(self) -> None:
        # Thesis §9.6: a pre-candidate changes neither its term nor its vote.
        if self.role is Role.LEADER:
            raise RuntimeError("a leader cannot become a pre-candidate")
        self.tracker.reset_votes()
        self.role = Role.PRE_CANDIDATE
        self.lead = None

    def become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise RuntimeError("a leader cannot become a candidate")
        # §5.2: increment the current term and vote for yourself.
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        if self.role is not Role.CANDIDATE:
            raise RuntimeError(f"only a candidate can become leader (role is {self.role.value})")
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        self._became_leader_at = self.lease_clock
        # We know our own log up to what is durable; followers are probed.
        me = self.tracker.progress.get(self.id)
        if me is not None:
            me.become_replicate()
            self.tracker.update_match(self.id, me.match)
        for pr in self.tracker.progress.values():
            pr.recent_active = True
        # Uncommitted configuration changes may sit in our log; allow no new
        # change until everything up to here has been applied.
        self.pending_conf_index = self.log.last_index()
        # §5.4.2 / thesis §6.4: append a no-op of our own term, so that entries of
        # earlier terms get committed (only through an entry of the current term).
        self._append_entries([Entry(0, 0)])

    # -- quiescence ----------------------------------------------------------------

    def quiescable(self) -> bool:
        """Leader only: every member holds the whole log, it is committed, applied and durable
        here, and nothing is in flight, so ticking (heartbeats, check-quorum) may stop until
        something happens (CockroachDB's quiescence; the driver keeps the rules, docs/host.md)."""
        if self.role is not Role.LEADER or self.lead_transferee is not None or self.incoming is not None:
            return False
        log = self.log
        last = log.last_index()
        if not (log.committed == last == log.applied == log.stable) or log.term(last) != self.term:
            return False
        if self.pending_conf_index > log.applied or not self.read_only.idle():
            return False
        if self.msgs or self.msgs_after_persist or self._broadcast_pending:
            return False
        return all(pr.match == last for pr in self.tracker.progress.values())

    def wake(self) -> None:
        """Ticking resumes after quiescence. A leader starts a fresh check-quorum window (its
        followers count as recently active: they were quiet because it was) and heartbeats at
        the next tick; it assumes no lease (its lease clock stood still while quiescent, so
        §6.4.1's bound would not hold). A follower keeps its election clock: if its leader is
        gone, an election follows within one election timeout."""
        if self.role is Role.LEADER:
            self.election_elapsed = 0
            self.heartbeat_elapsed = self.config.heartbeat_tick
            for pr in self.tracker.progress.values():
                pr.recent_active = True
            self._lease_start = None
            self._round_sent_at.clear()

    # -- time --------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self.lease_clock += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign()

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self._handover_to is not None:
            target, self._handover_to = self._handover_to, None
            if self.lead_transferee is None and self.membership.is_voter(target):
                self.transfer_leadership(target)
        if self.lead_transferee is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.config.election_tick:
                # Thesis §3.10: abandon a transfer that did not happen within an
                # election timeout, and accept proposals again.
                self.lead_transferee = None
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum:
                # CheckQuorum: a leader that has not heard from a quorum within an
                # election timeout steps down, so a partitioned leader stops
                # accepting proposals it could never commit.
                if not self.tracker.quorum_active(self.id):
                    self.become_follower(self.term, None)
                    return
                for node_id, pr in self.tracker.progress.items():
                    pr.recent_active = node_id == self.id
        if not self.promotable() and self.lead_transferee is None:
            # Removed from the voters and the hand-over did not happen: step down.
            self.become_follower(self.term, None)
            return
        self._maybe_leave_joint()
        for peer, pr in self.tracker.progress.items():
            if pr.state is ProgressState.SNAPSHOT and peer != self.id:
                pr.snapshot_wait += 1
                if pr.snapshot_wait >= self.config.snapshot_retry_ticks:
                    # The chunk or its answer was lost: resend from the last acked offset.
                    self._send_snapshot_chunk(peer, pr.snapshot_offset)
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(periodic=True)

    # -- elections ------------------------------------------------------------------

    def campaign(self, force: bool = False) -> None:
        """Start an election now (a pre-vote round first when PreVote is on).

        ``force`` (a leadership transfer) skips the pre-vote and asks voters to
        ignore their leader lease.
        """
        if self.role is Role.LEADER or not self.promotable():
            return
        applied = max(self.log.applied, self.log.log.snapshot_index)
        if self._conf_entries(applied + 1, self.log.committed + 1):
            # A committed configuration change is not applied yet: our view of
            # who votes may be stale, so do not start an election on it.
            return
        if self.config.pre_vote and not force:
            self.become_pre_candidate()
            self._request_votes(MessageType.PRE_VOTE, self.term + 1, False)
        else:
            self.become_candidate()
            self._request_votes(MessageType.VOTE, self.term, force)

    def _request_votes(self, kind: MessageType, term: int, force: bool) -> None:
        last_index, last_term = self.log.last_index(), self.log.last_term()
        resp = MessageType.PRE_VOTE_RESP if kind is MessageType.PRE_VOTE else MessageType.VOTE_RESP
        for node_id in sorted(self.membership.all_voters()):
            if node_id == self.id:
                # Our own vote counts once our term and vote are durable.
                self.msgs_after_persist.append(Message(resp, self.id, self.id, term))
            else:
                self.msgs.append(
                    Message(
                        kind, self.id, node_id, term, log_term=last_term, index=last_index, force=force
                    )
                )

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MessageType.PRE_VOTE
        can_vote = (
            self.vote == m.frm
            or (self.vote is None and self.lead is None)
            # A pre-vote for a future term is granted whatever our vote in this term.
            or (pre and m.term > self.term)
        )
        # §5.4.1: a vote is granted only to a candidate whose log is at least as
        # up-to-date as ours.
        resp = MessageType.PRE_VOTE_RESP if pre else MessageType.VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
            # Answer in the term asked about, so a pre-candidate counts it.
            self.msgs_after_persist.append(Message(resp, self.id, m.frm, m.term))
        else:
            self.msgs_after_persist.append(Message(resp, self.id, m.frm, self.term, reject=True))

    def _handle_vote_response(self, m: Message) -> None:
        self.tracker.record_vote(m.frm, not m.reject)
        result = self.tracker.vote_result()
        if result == VOTE_WON:
            if self.role is Role.PRE_CANDIDATE:
                self.become_candidate()
                self._request_votes(MessageType.VOTE, self.term, False)
            else:
                self.become_leader()
        elif result == VOTE_LOST:
            # §5.2: lost the election; wait for a leader or the next timeout.
            self.become_follower(self.term, None)

    # -- message dispatch ---------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Process one message from a peer (or our own persisted-state echo)."""
        if m.to != self.id:
            raise ValueError(f"message for {m.to!r} delivered to {self.id!r}: {m!r}")
        if not isinstance(m.type, MessageType):
            raise ValueError(f"unknown message type {m.type!r}")
        if m.term > self.term:
            if m.type in _VOTE_REQUESTS and not m.force:
                # Thesis §4.2.3: a node that heard from a live leader within the
                # minimum election timeout ignores disruptive vote requests
                # (sound because CheckQuorum makes a cut-off leader step down).
                in_lease = self.config.check_quorum and (
                    (self.lead is not None and self.election_elapsed < self.config.election_tick)
                    # Lease reads: a node that just (re)started may have heard from a
                    # leader whose lease is still running; it forgot, so it waits out
                    # one election timeout before voting.
                    or (self._restarted_in_lease_mode and self.lease_clock < self.config.election_tick)
                )
                if in_lease:
                    return
            if m.type is MessageType.PRE_VOTE:
                pass  # Thesis §9.6: a pre-vote request never changes our term.
            elif m.type is MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # A granted pre-vote carries the future term; we raise it on winning.
            else:
                # §5.1: a higher term means we are out of date: become a follower.
                self.become_follower(m.term, m.frm if m.type in _FROM_LEADER else None)
        elif m.term < self.term:
            self._step_stale(m)
            return

        if m.type in _VOTE_REQUESTS:
            self._handle_vote_request(m)
        elif m.type is MessageType.PROPOSE:
            self._handle_forwarded_proposal(m)
        elif m.type is MessageType.PROPOSE_CONF_CHANGE:
            self._handle_forwarded_conf_change(m)
        elif m.type is MessageType.READ_INDEX:
            self._handle_read_index_request(m)
        elif m.type in _ANSWERS_TO_US:
            self._handle_answer(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_stale(self, m: Message) -> None:
        """A message from an older term."""
        if m.type in _FROM_LEADER and (self.config.check_quorum or self.config.pre_vote):
            # A leader of an older term (partitioned away while we moved on) would
            # otherwise never learn the new term if we ignore it, since PreVote
            # stops us from raising its term by campaigning: tell it.
            self.msgs.append(Message(MessageType.APPEND_RESP, self.id, m.frm, self.term))
        elif m.type is MessageType.PRE_VOTE:
            # Tell the pre-candidate our term so it can catch up.
            self.msgs_after_persist.append(
                Message(MessageType.PRE_VOTE_RESP, self.id, m.frm, self.term, reject=True)
            )
        elif m.type in (MessageType.PROPOSE, MessageType.PROPOSE_CONF_CHANGE):
            self.msgs.append(self._proposal_refusal(m, "not_leader"))
        elif m.type is MessageType.READ_INDEX:
            self.msgs.append(
                Message(
                    MessageType.READ_INDEX_RESP, self.id, m.frm, self.term,
                    context=m.context, reject=True,
                )
            )
        elif m.type in _ANSWERS_TO_US:
            # A read index confirmed, or a proposal placed, by the leader of an
            # older term is still a valid answer to what we asked then.
            self._handle_answer(m)
        # Anything else from an older term is ignored (§5.1).

    def _step_follower(self, m: Message) -> None:
        if m.type in _FROM_LEADER:
            if self.lead is not None and m.frm != self.lead:
                # §5.2: a term has at most one leader, and we know who it is: a
                # message claiming leadership from anyone else is forged or broken.
                return
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_from_leader(m)
        elif m.type is MessageType.TIMEOUT_NOW:
            # Thesis §3.10: the leader chose us; start an election at once, skipping
            # the pre-vote, and ask voters to ignore their lease.
            self.campaign(force=True)
        # Responses addressed to a former role are stale: ignore them.

    def _step_candidate(self, m: Message) -> None:
        if m.type in _FROM_LEADER:
            # §5.2: a candidate that hears from the leader of its term steps down.
            self.become_follower(m.term, m.frm)
            self._handle_from_leader(m)
        elif (m.type is MessageType.PRE_VOTE_RESP and self.role is Role.PRE_CANDIDATE) or (
            m.type is MessageType.VOTE_RESP and self.role is Role.CANDIDATE
        ):
            self._handle_vote_response(m)

    def _handle_answer(self, m: Message) -> None:
        """The leader answered a read index request or a forwarded proposal of ours."""
        if m.type is MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context, ok=not m.reject))
        else:
            self.proposal_results.append(self._proposal_result_from(m))

    def _handle_from_leader(self, m: Message) -> None:
        if m.type is MessageType.APPEND:
            self._handle_append(m)
        elif m.type is MessageType.HEARTBEAT:
            self._handle_heartbeat(m)
        else:
            self._handle_snapshot_chunk(m)

    # -- follower side of replication ------------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            # Everything up to our commit index matches the leader's log already.
            self.msgs_after_persist.append(
                Message(MessageType.APPEND_RESP, self.id, m.frm, self.term, index=log.committed)
            )
            return
        last_new = log.maybe_append(m.index, m.log_term, m.entries)
        if last_new >= 0:
            # §5.3: commit index = min(leader commit, index of last new entry).
            log.commit_to(min(m.commit, last_new))
            if m.quiet and not m.entries:
                return  # only a commit index, and the leader knows we match it: no answer
            self.msgs_after_persist.append(
                Message(MessageType.APPEND_RESP, self.id, m.frm, self.term, index=last_new)
            )
            return
        # §5.3: reject when we have no entry at prev index with prev term. Give the
        # leader a hint to skip a whole term of conflicting entries per round trip:
        # the last index at or below its prev index whose term is <= its prev term.
        hint_index, hint_term = log.log.conflict_hint(min(m.index, log.last_index()), m.log_term)
        self.msgs_after_persist.append(
            Message(
                MessageType.APPEND_RESP,
                self.id,
                m.frm,
                self.term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        last = self.log.last_index()
        # The leader never sends a commit index beyond what it believes we match.
        self.log.commit_to(min(m.commit, last))
        # Echo the ReadIndex round the heartbeat carries. If the leader believes
        # we hold entries we do not (our log lost its tail, e.g. a damaged last
        # WAL record dropped at restart), say where our log ends so it probes
        # from there instead of waiting for new entries to reveal the gap.
        self.msgs.append(
            Message(
                MessageType.HEARTBEAT_RESP, self.id, m.frm, self.term,
                index=m.index, reject=m.commit > last, reject_hint=last,
            )
        )

    def _handle_snapshot_chunk(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None:
            return  # malformed: a chunk without its snapshot's identity
        if meta.index <= self.log.committed:
            # We already have everything the snapshot covers (it raced with
            # entries we received): tell the leader where we are.
            self.incoming = None
            self.msgs_after_persist.append(
                Message(
                    MessageType.SNAPSHOT_RESP, self.id, m.frm, self.term,
                    index=self.log.committed, done=True, snapshot=meta,
                )
            )
            return
        incoming = self.incoming
        if m.offset == 0:
            incoming = (meta, 0)
        elif incoming is None or incoming[0] != meta or incoming[1] != m.offset:
            # Out of order, duplicated, or we restarted mid-transfer: ask for the
            # offset we expect (0 = start over).
            expect = incoming[1] if incoming is not None and incoming[0] == meta else 0
            self.msgs.append(
                Message(
                    MessageType.SNAPSHOT_RESP, self.id, m.frm, self.term,
                    index=meta.index, offset=expect, reject=True, snapshot=meta,
                )
            )
            return
        offset = incoming[1] + len(m.data)
        self.snapshot_chunks.append(SnapshotChunk(meta, m.offset, m.data, m.done))
        if not m.done:
            self.incoming = (meta, offset)
            self.msgs_after_persist.append(
                Message(
                    MessageType.SNAPSHOT_RESP, self.id, m.frm, self.term,
                    index=meta.index, offset=offset, snapshot=meta,
                )
            )
            return
        # Last chunk: install. The log keeps a suffix that matches the snapshot's
        # last entry; otherwise it is replaced by the snapshot.
        self.incoming = None
        self.log.install_snapshot(meta.index, meta.term)
        self.snapshot_meta = meta
        self.pending_install = meta
        self.conf_history = [(meta.index, meta.membership)]
        self.tracker.set_membership(meta.membership, self.log.last_index() + 1)
        self.msgs_after_persist.append(
            Message(
                MessageType.SNAPSHOT_RESP, self.id, m.frm, self.term,
                index=meta.index, offset=offset, done=True, snapshot=meta,
            )
        )

    # -- leader side of replication ------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return  # not a member (any more)
        if m.type is MessageType.APPEND_RESP:
            pr.recent_active = True
            if m.reject:
                self._handle_append_reject(m.frm, m)
            else:
                self._handle_append_ack(m.frm, m.index)
        elif m.type is MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.is_paused():
                # Let one message through a full window: if appends were lost,
                # its rejection reveals it (like etcd's FreeFirstOne).
                pr.inflights.popleft()
            if m.index:
                self._confirm_read_round(m.frm, m.index)
            if m.reject and pr.state is not ProgressState.SNAPSHOT and m.reject_hint < pr.next - 1:
                # The follower's log ends before where we were sending: probe from there.
                pr.become_probe()
                pr.next = max(min(pr.next, m.reject_hint + 1), self.log.log.snapshot_index)
                self._maybe_send_append(m.frm, send_if_empty=True)
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                # Repeat the nudge: the successor may not have been able to
                # campaign yet (e.g. a committed configuration change to apply first).
                self.msgs.append(Message(MessageType.TIMEOUT_NOW, self.id, m.frm, self.term))
            if pr.match < self.log.last_index():
                # Possibly an empty append at next-1: if the entries sent
                # optimistically were lost, the follower rejects it and the
                # leader probes back to where the logs match.
                self._maybe_send_append(m.frm, send_if_empty=True)
        elif m.type is MessageType.SNAPSHOT_RESP:
            pr.recent_active = True
            self._handle_snapshot_response(m.frm, m)
        # Vote responses after winning, and appends from ourselves, need nothing.

    def _handle_append_reject(self, peer: str, m: Message) -> None:
        pr = self.tracker.progress[peer]
        # Fast backtracking: find our last entry at or below the follower's hint
        # whose term is <= the hint's term; the logs may match there.
        hint = min(m.reject_hint, self.log.last_index())
        if hint < self.log.log.snapshot_index:
            next_probe = hint  # below our compacted prefix: a snapshot will follow
        else:
            next_probe, _ = self.log.log.conflict_hint(hint, m.log_term)
        if pr.maybe_decrease_to(m.index, next_probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._maybe_send_append(peer, send_if_empty=True)

    def _handle_append_ack(self, peer: str, index: int) -> None:
        if index > self.log.last_index():
            return  # acknowledges entries we never sent: ignore
        pr = self.tracker.progress[peer]
        was_paused = pr.is_paused()
        updated = pr.maybe_update(index)
        # A probe answered at exactly our known match also proves where the logs meet.
        if not updated and not (pr.state is ProgressState.PROBE and pr.match == index):
            if was_paused and not pr.is_paused():
                self._maybe_send_append(peer, send_if_empty=False)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
        committed = self.tracker.update_match(peer, pr.match)
        self._maybe_commit(committed)
        if peer == self.id:
            return
        if peer == self.lead_transferee and pr.match == self.log.last_index():
            # Thesis §3.10: the successor has caught up; let it campaign now.
            self.msgs.append(Message(MessageType.TIMEOUT_NOW, self.id, peer, self.term))
        self._maybe_promote(peer)
        # Keep the pipe full while there is more to send.
        while self._maybe_send_append(peer, send_if_empty=False):
            pass

    def _maybe_commit(self, quorum_index: int) -> None:
        log = self.log
        if quorum_index <= log.committed or quorum_index > log.last_index():
            return
        # §5.4.2 (Figure 8): only entries of the current term are committed by
        # counting replicas; earlier ones are committed indirectly with them.
        if log.term(quorum_index) != self.term:
            return
        first_of_term = log.term(log.committed) != self.term
        log.commit_to(quorum_index)
        # Followers learn the new commit index with the next AppendEntries.
        self._broadcast_pending = True
        if first_of_term:
            # A quorum acknowledged appends sent since we became leader: the lease starts then.
            self._lease_start = self._became_leader_at
            # Thesis §6.4: reads wait until the leader has committed an entry of
            # its own term, which proves its commit index is current.
            for ctx, requester in self.read_only.release_waiting():
                self._start_read(ctx, requester)

    def _maybe_send_append(self, peer: str, send_if_empty: bool) -> bool:
        """Send the next AppendEntries to ``peer`` if its progress allows. Returns True if sent."""
        pr = self.tracker.progress[peer]
        if pr.is_paused():
            return False
        log = self.log
        last = log.last_index()
        if pr.next > last and not send_if_empty:
            return False  # nothing new for this peer (and pr.next - 1 >= last is never compacted)
        prev = pr.next - 1
        if prev < log.log.snapshot_index:
            # The entries this follower needs are compacted: send a snapshot.
            return self._start_snapshot(peer)
        prev_term = log.term(prev)
        if pr.next <= last:
            hi = min(last + 1, pr.next + self.config.max_msg_entries)
            entries = log.slice(pr.next, hi, self.config.max_msg_bytes)
        else:
            if not send_if_empty:
                return False
            entries = []
        self.msgs.append(
            Message(
                MessageType.APPEND,
                self.id,
                peer,
                self.term,
                log_term=prev_term,
                index=prev,
                entries=entries,
                commit=log.committed,
                # Nothing in flight and nothing to send: the follower's answer would only
                # repeat its match, so it answers a commit-index update only to reject it.
                quiet=not entries and pr.state is ProgressState.REPLICATE and pr.match == prev,
            )
        )
        pr.sent_entries(entries[-1].index if entries else prev, len(entries))
        pr.sent_since_heartbeat = True
        pr.sent_commit = log.committed
        return True

    def broadcast_append(self) -> None:
        """Send every follower what it is missing (or the commit index if nothing)."""
        self._broadcast_pending = False
        for peer in sorted(self.tracker.progress):
            if peer != self.id and self._maybe_send_append(peer, send_if_empty=True):
                # Pipeline the rest of the backlog up to the inflight window.
                while self._maybe_send_append(peer, send_if_empty=False):
                    pass

    def flush(self) -> None:
        """Send what was deferred so that many proposals or reads share one message."""
        if self.role is Role.LEADER:
            if self._broadcast_pending:
                self.broadcast_append()
            if self.read_only.has_unsent_round():
                self._broadcast_heartbeat()
        self._broadcast_pending = False

    def _broadcast_heartbeat(self, periodic: bool = False) -> None:
        self.heartbeat_elapsed = 0
        lease = self.config.read_only == "lease"
        read_round = self.read_only.send_round(always=lease)
        if lease:
            self._round_sent_at[read_round] = self.lease_clock
        # §5.2: any AppendEntries maintains the leader's authority, so a periodic heartbeat
        # is redundant for a follower that was sent one since the last heartbeat, in steady
        # replication, carrying at least the commit index the heartbeat would. Heartbeats of
        # read rounds (and every heartbeat in lease mode, which extends the lease) always go.
        skip_fresh = periodic and not read_round and self.config.skip_redundant_heartbeats
        for peer in sorted(self.tracker.progress):
            if peer == self.id:
                continue
            pr = self.tracker.progress[peer]
            # Never tell a follower to commit beyond what it is known to match.
            commit = min(pr.match, self.log.committed)
            fresh, pr.sent_since_heartbeat = pr.sent_since_heartbeat, False
            if (
                skip_fresh
                and fresh
                and pr.state is ProgressState.REPLICATE
                and pr.sent_commit >= commit
            ):
                continue
            self.msgs.append(
                Message(MessageType.HEARTBEAT, self.id, peer, self.term, commit=commit, index=read_round)
            )
        if read_round:
            # A single voter (us) confirms its own round.
            self._confirm_read_round(self.id, read_round)

    # -- snapshots (leader side) ----------------------------------------------------------------

    def _start_snapshot(self, peer: str) -> bool:
        snap = self.snapshot_meta
        pr = self.tracker.progress[peer]
        if snap is None or snap.index < self.log.log.snapshot_index:
            raise RuntimeError(
                "log compacted beyond the latest snapshot: compact() only after a snapshot exists"
            )
        pr.become_snapshot(snap.index)
        pr.snapshot_meta = snap
        self._send_snapshot_chunk(peer, 0)
        return True

    def _send_snapshot_chunk(self, peer: str, offset: int) -> None:
        pr = self.tracker.progress[peer]
        meta = pr.snapshot_meta
        if meta is None:
            return
        pr.snapshot_offset = offset
        pr.snapshot_wait = 0
        # The driver fills `data` and `done` from its copy of this snapshot,
        # reading at most Config.snapshot_chunk_bytes at `offset`.
        self.msgs.append(
            Message(
                MessageType.SNAPSHOT, self.id, peer, self.term,
                snapshot=meta, offset=offset, index=meta.index, log_term=meta.term,
            )
        )

    def _handle_snapshot_response(self, peer: str, m: Message) -> None:
        pr = self.tracker.progress[peer]
        if pr.state is not ProgressState.SNAPSHOT:
            if m.done:
                self._handle_append_ack(peer, m.index)
            return
        if pr.snapshot_meta is None or m.snapshot != pr.snapshot_meta:
            if m.done:
                self._handle_append_ack(peer, m.index)
            return
        if m.done:
            # Installed: the follower's log matches ours up to the snapshot.
            pr.maybe_update(m.index)
            pr.become_probe()
            self.tracker.update_match(peer, pr.match)
            self._maybe_commit(self.tracker.committed())
            self._maybe_send_append(peer, send_if_empty=True)
            return
        # Next chunk, or a resend from the offset the follower expects.
        self._send_snapshot_chunk(peer, m.offset)

    def report_snapshot_failure(self, peer: str) -> None:
        """The driver could not read the snapshot being sent to ``peer``: start over."""
        pr = self.tracker.progress.get(peer)
        if pr is not None and pr.state is ProgressState.SNAPSHOT:
            pr.snapshot_meta = None
            pr.pending_snapshot = 0
            pr.become_probe()

    def compact(self, index: int) -> None:
        """The driver holds a durable snapshot of the state machine at ``index``.

        Records it as the latest snapshot and discards log entries up to
        ``index - snapshot_trailing_entries`` (kept for slightly slow followers).
        """
        log = self.log
        if index > log.applied:
            raise ValueError(f"snapshot index {index} is beyond the applied index {log.applied}")
        if self.snapshot_meta is not None and index <= self.snapshot_meta.index:
            return
        if index < log.log.snapshot_index:
            return
        self.snapshot_meta = self.snapshot_meta_at(index)
        keep_from = index - self.config.snapshot_trailing_entries
        if keep_from > log.log.snapshot_index:
            log.compact(keep_from)
        self.conf_history = [
            c for i, c in enumerate(self.conf_history)
            if c[0] > index or i + 1 == len(self.conf_history) or self.conf_history[i + 1][0] > index
        ]

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """Identity of a snapshot of the state machine at applied ``index``."""
        if index > self.log.applied:
            raise ValueError(f"snapshot index {index} is beyond the applied index {self.log.applied}")
        return SnapshotMeta(index, self.log.term(index), self.membership_at(index))

    def membership_at(self, index: int) -> Membership:
        """The configuration in force once entries up to ``index`` are applied."""
        found = self.conf_history[0][1]
        for at, membership in self.conf_history:
            if at <= index:
                found = membership
        return found

    def should_snapshot(self) -> bool:
        """Has enough been applied since the last snapshot to take a new one?"""
        base = self.snapshot_meta.index if self.snapshot_meta is not None else 0
        applied = self.log.applied
        if applied - base >= self.config.snapshot_entries:
            return True
        lo = max(base, self.log.log.snapshot_index) + 1
        return applied >= lo and self.log.log.bytes_between(lo, applied + 1) >= self.config.snapshot_bytes

    # -- membership changes -----------------------------------------------------------------------

    def _conf_entries(self, lo: int, hi: int) -> list[Entry]:
        if lo >= hi:
            return []
        return [e for e in self.log.slice(lo, hi, 1 << 62) if e.type == ENTRY_CONF_CHANGE]

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        """Propose a membership change on the leader; see ``confchange.py``."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee is not None:
            raise ProposalDropped("transfer_pending", f"leadership is moving to {self.lead_transferee}")
        if self.pending_conf_index > self.log.applied:
            raise ConfChangeInProgress(self.pending_conf_index)
        # Every earlier change is applied (pending_conf_index <= applied), so the
        # result computed here is what every node computes when it applies it.
        result = apply_change(self.membership, ConfChange(cc.changes, cc.transition))
        entry = ConfChange(cc.changes, cc.transition, result).encode()
        index, term = self._append_entries([Entry(0, 0, entry, ENTRY_CONF_CHANGE)])
        self.pending_conf_index = index
        return index, term

    def apply_conf_entries(self, entries: list[Entry]) -> None:
        """Apply the configuration changes among entries the driver has just applied."""
        for e in entries:
            # Skip changes already reflected (a snapshot installed meanwhile covers them).
            if e.type == ENTRY_CONF_CHANGE and e.index > self.conf_history[-1][0]:
                self._apply_conf_entry(e)

    def _apply_conf_entry(self, e: Entry) -> None:
        try:
            membership = apply_change(self.membership, ConfChange.decode(e.data))
        except ConfChangeError:
            # A change that cannot apply (it was validated against an older
            # configuration) is a no-op on every node alike.
            return
        was_voter = self.promotable()
        self.conf_history.append((e.index, membership))
        self.tracker.set_membership(membership, self.log.last_index() + 1)
        if self.role is not Role.LEADER:
            return
        if membership.is_joint():
            self._maybe_leave_joint()
        elif was_voter and not membership.is_voter(self.id):
            # A leader that removed itself led until the change committed; now it
            # hands leadership to the most up-to-date voter, or steps down.
            successor = self._most_up_to_date_voter()
            if successor is not None:
                self.transfer_leadership(successor)
            else:
                self.become_follower(self.term, None)
        self._broadcast_pending = True

    def _maybe_leave_joint(self) -> None:
        """§6: leave C_old,new automatically once it is in force (retried every tick)."""
        if (
            self.membership.is_joint()
            and self.pending_conf_index <= self.log.applied
            and self.lead_transferee is None
        ):
            self.propose_conf_change(ConfChange())

    def _most_up_to_date_voter(self) -> str | None:
        best: tuple[int, str] | None = None
        for node_id in sorted(self.membership.all_voters()):
            if node_id == self.id:
                continue
            cand = (self.tracker.progress[node_id].match, node_id)
            if best is None or cand[0] > best[0]:
                best = cand
        return best[1] if best else None

    def handover_target(self, cc: ConfChange) -> str | None:
        """The voter a leader should hand leadership to *before* proposing ``cc``, or None.

        Non-None when this node leads, is a voter of the current configuration and ``cc``
        leaves it out of the final voters (removed, or demoted to learner): the most
        up-to-date voter that stays a voter (ties: the smallest id). The transfer-first rule
        (docs/core-features.md): moving leadership first costs one round trip, where a leader
        stepping down after the change would leave the group to an election timeout if its
        own hand-over failed. None also when no current voter remains a voter (the change is
        then proposed here and the after-commit hand-over applies) or ``cc`` cannot apply.
        """
        if self.role is not Role.LEADER or self.id not in self.membership.voters:
            return None
        try:
            result = apply_change(self.membership, ConfChange(cc.changes, cc.transition))
        except ConfChangeError:
            return None
        if self.id in result.voters:
            return None
        best: tuple[int, str] | None = None
        for node_id in sorted(self.membership.voters & result.voters):
            pr = self.tracker.progress.get(node_id)
            if node_id == self.id or pr is None:
                continue
            if best is None or pr.match > best[0]:
                best = (pr.match, node_id)
        return best[1] if best else None

    def propose_conf_change_with_context(
        self, cc: ConfChange, ctx: bytes, *, forward: bool | None = None
    ) -> None:
        """Propose a membership change from any node; the outcome arrives as a ProposalResult with ``ctx``.

        On the leader it is :meth:`propose_conf_change` (its errors are raised here) and the
        result is immediate. On a follower the change travels to the leader
        (PROPOSE_CONF_CHANGE) when ``forward`` (default: ``Config.forward_proposals``) is on
        and a leader is known, otherwise NotLeader is raised. The leader refuses with a reason
        the proposer decodes (``raftlib/runtime/membership.py`` does): ``not_leader``,
        ``transfer_pending`` (also when the change removes the leader: it hands leadership to
        :meth:`handover_target` first, and the proposer asks the new leader),
        ``conf_change_in_progress:<index>``, ``conf_change_invalid:<why>``.
        """
        if self.role is Role.LEADER:
            index, term = self.propose_conf_change(cc)
            self.proposal_results.append(ProposalResult(ctx, index, term))
            return
        if forward is None:
            forward = self.config.forward_proposals
        if not forward or self.lead is None:
            raise NotLeader(self.lead)
        self.msgs.append(
            Message(
                MessageType.PROPOSE_CONF_CHANGE, self.id, self.lead, self.term,
                entries=[Entry(0, 0, ConfChange(cc.changes, cc.transition).encode(), ENTRY_CONF_CHANGE)],
                context=ctx,
            )
        )

    def _handle_forwarded_conf_change(self, m: Message) -> None:
        if self.role is not Role.LEADER:
            self.msgs.append(self._proposal_refusal(m, "not_leader"))
            return
        if len(m.entries) != 1 or m.entries[0].type != ENTRY_CONF_CHANGE:
            reason = "conf_change_invalid:one configuration change entry expected"
            self.msgs.append(self._proposal_refusal(m, reason))
            return
        try:
            cc = ConfChange.decode(m.entries[0].data)
            if self.pending_conf_index > self.log.applied:
                # Refused as propose_conf_change would: no hand-over for a change that must wait.
                raise ConfChangeInProgress(self.pending_conf_index)
            target = None if self.lead_transferee is not None else self.handover_target(cc)
            if target is not None:
                # Transfer first: the proposer retries with the new leader. The transfer starts
                # on the next tick, so that this refusal reaches the proposer before the election
                # does (were the proposer the target, it would otherwise see its leader go
                # before the answer, and could only report the forward as lost).
                self._handover_to = target
                raise ProposalDropped("transfer_pending", f"leadership is moving to {target}")
            if self._handover_to is not None:
                raise ProposalDropped("transfer_pending", f"leadership is moving to {self._handover_to}")
            index, term = self.propose_conf_change(cc)
        except ProposalDropped as exc:
            self.msgs.append(self._proposal_refusal(m, exc.reason))
            return
        except ConfChangeInProgress as exc:
            self.msgs.append(self._proposal_refusal(m, f"conf_change_in_progress:{exc.pending_index}"))
            return
        except ConfChangeError as exc:
            self.msgs.append(self._proposal_refusal(m, f"conf_change_invalid:{exc}"))
            return
        self.msgs.append(
            Message(
                MessageType.PROPOSE_RESP, self.id, m.frm, self.term,
                index=index, log_term=term, context=m.context,
            )
        )

    def _maybe_promote(self, peer: str) -> None:
        """Promote a member added with ADD_MEMBER once it has caught up."""
        if peer not in self.membership.promoting or self.membership.is_joint():
            return
        if self.pending_conf_index > self.log.applied or self.lead_transferee is not None:
            return
        if self.tracker.progress[peer].match + self.config.promote_max_lag < self.log.committed:
            return
        self.propose_conf_change(ConfChange((Change(ChangeKind.ADD_VOTER, peer),)))

    # -- leadership transfer (thesis §3.10) ---------------------------------------------------------

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to ``target``: bring it up to date, then tell it to campaign."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if target == self.id:
            self.lead_transferee = None
            return
        if not self.membership.is_voter(target):
            raise LeadershipTransferError(f"{target!r} is not a voter of {self.membership.describe()}")
        self.lead_transferee = target
        self.transfer_elapsed = 0
        pr = self.tracker.progress[target]
        if pr.match == self.log.last_index():
            self.msgs.append(Message(MessageType.TIMEOUT_NOW, self.id, target, self.term))
        else:
            self._maybe_send_append(target, send_if_empty=True)

    # -- linearizable reads (thesis §6.4) -------------------------------------------------------------

    def read_index(self, ctx: bytes) -> None:
        """Ask for a read index; the answer comes as a ReadState with ``ctx``."""
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.lead is not None:
            self.msgs.append(Message(MessageType.READ_INDEX, self.id, self.lead, self.term, context=ctx))
        else:
            raise NotLeader(None)

    def _handle_read_index_request(self, m: Message) -> None:
        if self.role is Role.LEADER:
            self._leader_read(m.context, m.frm)
        else:
            self.msgs.append(
                Message(
                    MessageType.READ_INDEX_RESP, self.id, m.frm, self.term,
                    context=m.context, reject=True,
                )
            )

    def _leader_read(self, ctx: bytes, requester: str) -> None:
        if self.log.term(self.log.committed) != self.term:
            self.read_only.wait_for_commit(ctx, requester)
            return
        self._start_read(ctx, requester)

    def _start_read(self, ctx: bytes, requester: str) -> None:
        index = self.log.committed
        if self.membership.all_voters() == {self.id} or (
            self.config.read_only == "lease" and self._lease_holds()
        ):
            self._answer_read(requester, ReadState(index, ctx))
            return
        self.read_only.add(ctx, requester, index)

    def _lease_holds(self) -> bool:
        """Thesis §6.4.1: no other leader can exist yet. A voter that heard from us ignores vote
        requests for an election timeout (the leader lease of §4.2.3), so a quorum that
        acknowledged a message we sent at ``_lease_start`` elects nobody before
        ``_lease_start + election_tick`` (minus a tick of phase difference between clocks, and
        one of margin). Not while a transfer is pending: its target campaigns with ``force``."""
        start = self._lease_start
        return (
            start is not None
            and self.lead_transferee is None
            and self.lease_clock - start < self.config.election_tick - 2
        )

    def _confirm_read_round(self, peer: str, read_round: int) -> None:
        self.read_only.ack(peer, read_round)
        rounds = dict(self.read_only.acked_rounds())
        rounds[self.id] = self.read_only.sent_round
        confirmed = self.tracker.quorum_index(rounds)
        sent_at = self._round_sent_at
        if confirmed in sent_at:
            if self._lease_start is None or sent_at[confirmed] > self._lease_start:
                self._lease_start = sent_at[confirmed]
            for old in [r for r in sent_at if r < confirmed]:
                del sent_at[old]
        for ctx, requester, index in self.read_only.release(confirmed):
            self._answer_read(requester, ReadState(index, ctx))

    def _answer_read(self, requester: str, rs: ReadState) -> None:
        if requester == self.id:
            self.read_states.append(rs)
        else:
            self.msgs.append(
                Message(
                    MessageType.READ_INDEX_RESP, self.id, requester, self.term,
                    index=rs.index, context=rs.context, reject=not rs.ok,
                )
            )

    # -- proposals -------------------------------------------------------------------------------

    def _append_entries(self, entries: list[Entry]) -> tuple[int, int]:
        """Append new entries of the current term after our last one."""
        last = self.log.last_index()
        term = self.term
        stamped = [Entry(last + 1 + i, term, e.data, e.type) for i, e in enumerate(entries)]
        self.log.append(stamped)
        self._broadcast_pending = True
        return stamped[-1].index, term

    def propose(self, data: bytes, entry_type: int = 0) -> tuple[int, int]:
        """Append a command to the leader's log. Returns (index, term) of its entry.

        Raises NotLeader on a non-leader, UncommittedLimitExceeded when the
        leader already holds ``max_uncommitted_bytes`` of uncommitted entries,
        ProposalDropped("transfer_pending") while leadership is being transferred.
        """
        # The per-proposal hot path: one entry, built once, already stamped (no batch lists).
        self._admit(len(data), 1, entry_type)
        index = self.log.last_index() + 1
        term = self.term
        self.log.append([Entry(index, term, data, entry_type)])
        self._broadcast_pending = True
        return index, term

    def propose_batch(self, datas: list[bytes], entry_type: int = 0) -> list[tuple[int, int]]:
        """Append several commands at once; they share AppendEntries and one persist."""
        self._admit(sum(map(len, datas)), len(datas), entry_type)
        if not datas:
            return []
        first = self.log.last_index() + 1
        term = self.term
        self.log.append([Entry(first + i, term, d, entry_type) for i, d in enumerate(datas)])
        self._broadcast_pending = True
        return [(first + i, term) for i in range(len(datas))]

    def _admit(self, nbytes: int, count: int, entry_type: int) -> None:
        """Raise unless the leader may take ``count`` new entries of ``nbytes`` bytes of data."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee is not None:
            # Thesis §3.10: stop accepting proposals while a transfer is pending.
            raise ProposalDropped("transfer_pending", f"leadership is moving to {self.lead_transferee}")
        if entry_type == ENTRY_CONF_CHANGE:
            raise ValueError("use propose_conf_change for configuration changes")
        limit = self.config.max_uncommitted_bytes
        if limit and count:
            pending = self.log.uncommitted_bytes()
            # An idle leader always takes one batch, however large, so progress is possible.
            if pending and pending + nbytes + ENTRY_OVERHEAD * count > limit:
                raise UncommittedLimitExceeded(limit, pending)

    def propose_with_context(self, data: bytes, ctx: bytes) -> None:
        """Propose from any node; the outcome comes back as a ProposalResult with ``ctx``.

        On the leader the result is immediate. On a follower with
        ``forward_proposals`` the proposal travels to the leader; without it,
        or with no leader known, NotLeader is raised.
        """
        if self.role is Role.LEADER:
            index, term = self.propose(data)
            self.proposal_results.append(ProposalResult(ctx, index, term))
            return
        if not self.config.forward_proposals or self.lead is None:
            raise NotLeader(self.lead)
        self.msgs.append(
            Message(
                MessageType.PROPOSE, self.id, self.lead, self.term,
                entries=[Entry(0, 0, data)], context=ctx,
            )
        )

    def _handle_forwarded_proposal(self, m: Message) -> None:
        if self.role is not Role.LEADER:
            self.msgs.append(self._proposal_refusal(m, "not_leader"))
            return
        if any(e.type == ENTRY_CONF_CHANGE for e in m.entries):
            # Configuration changes travel as PROPOSE_CONF_CHANGE; never append one as a command.
            self.msgs.append(self._proposal_refusal(m, "invalid"))
            return
        try:
            placed = self.propose_batch([e.data for e in m.entries])
        except ProposalDropped as exc:
            self.msgs.append(self._proposal_refusal(m, exc.reason))
            return
        except ValueError:
            self.msgs.append(self._proposal_refusal(m, "invalid"))
            return
        index, term = placed[-1] if placed else (0, 0)
        self.msgs.append(
            Message(
                MessageType.PROPOSE_RESP, self.id, m.frm, self.term,
                index=index, log_term=term, context=m.context,
            )
        )

    def _proposal_refusal(self, m: Message, reason: str) -> Message:
        return Message(
            MessageType.PROPOSE_RESP, self.id, m.frm, self.term,
            context=m.context, reject=True, data=reason.encode(),
        )

    def _proposal_result_from(self, m: Message) -> ProposalResult:
        if m.reject:
            reason = m.data.decode(errors="replace") or "rejected"
            return ProposalResult(m.context, error=reason, leader=self.lead)
        return ProposalResult(m.context, m.index, m.log_term)

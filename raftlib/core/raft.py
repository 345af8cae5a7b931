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
"""

from __future__ import annotations

import random

from raftlib._accel import VOTE_LOST, VOTE_WON, Entry
from raftlib.core.config import Config
from raftlib.core.log import RaftLog
from raftlib.core.membership import Membership
from raftlib.core.messages import HardState, Message, MessageType, Role, SoftState
from raftlib.core.progress import ProgressState
from raftlib.core.storage_state import PersistentState
from raftlib.core.tracker import ProgressTracker
from raftlib.errors import NotLeader, UncommittedLimitExceeded

_VOTE_REQUESTS = (MessageType.VOTE, MessageType.PRE_VOTE)
_FROM_LEADER = (MessageType.APPEND, MessageType.HEARTBEAT)


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
        self.log = RaftLog(
            state.snapshot_index,
            state.snapshot_term,
            state.entries,
            committed=hs.commit,
            applied=applied,
        )
        voters = state.voters if state.voters is not None else config.voters
        if not voters:
            raise ValueError(
                f"node {self.id!r} has no configuration: give Config.voters for a new cluster"
            )
        self.tracker = ProgressTracker(Membership(frozenset(voters)), config.max_inflight)
        self.role = Role.FOLLOWER
        self.lead: str | None = None
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self._broadcast_pending = False
        self.become_follower(self.term, None)

    # -- introspection -------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def promotable(self) -> bool:
        """Only voters of the current configuration may campaign."""
        return self.tracker.membership.is_voter(self.id)

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
        self._broadcast_pending = False

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
        # We know our own log up to what is durable; followers are probed.
        me = self.tracker.progress.get(self.id)
        if me is not None:
            me.become_replicate()
            self.tracker.update_match(self.id, me.match)
        for pr in self.tracker.progress.values():
            pr.recent_active = True
        # §5.4.2 / thesis §6.4: append a no-op of our own term, so that entries of
        # earlier terms get committed (only through an entry of the current term).
        self._append_entries([Entry(0, 0)])
        self._broadcast_pending = True

    # -- time --------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
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
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    # -- elections ------------------------------------------------------------------

    def campaign(self) -> None:
        """Start an election now (a pre-vote round first when PreVote is on)."""
        if self.role is Role.LEADER or not self.promotable():
            return
        if self.config.pre_vote:
            self.become_pre_candidate()
            self._request_votes(MessageType.PRE_VOTE, self.term + 1)
        else:
            self.become_candidate()
            self._request_votes(MessageType.VOTE, self.term)

    def _request_votes(self, kind: MessageType, term: int) -> None:
        last_index, last_term = self.log.last_index(), self.log.last_term()
        resp = MessageType.PRE_VOTE_RESP if kind is MessageType.PRE_VOTE else MessageType.VOTE_RESP
        for node_id in sorted(self.tracker.membership.all_voters()):
            if node_id == self.id:
                # Our own vote counts once our term and vote are durable.
                self.msgs_after_persist.append(Message(resp, self.id, self.id, term))
            else:
                self.msgs.append(
                    Message(kind, self.id, node_id, term, log_term=last_term, index=last_index)
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
                self._request_votes(MessageType.VOTE, self.term)
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
            if m.type in _VOTE_REQUESTS:
                # Thesis §4.2.3: a node that heard from a live leader within the
                # minimum election timeout ignores disruptive vote requests
                # (sound because CheckQuorum makes a cut-off leader step down).
                in_lease = (
                    self.config.check_quorum
                    and self.lead is not None
                    and self.election_elapsed < self.config.election_tick
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
            return
        if self.role is Role.LEADER:
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
        # Anything else from an older term is ignored (§5.1).

    def _step_follower(self, m: Message) -> None:
        if m.type is MessageType.APPEND:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif m.type is MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        # Responses addressed to a former role are stale: ignore them.

    def _step_candidate(self, m: Message) -> None:
        if m.type is MessageType.APPEND:
            # §5.2: a candidate that hears from the leader of its term steps down.
            self.become_follower(m.term, m.frm)
            self._handle_append(m)
        elif m.type is MessageType.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif (m.type is MessageType.PRE_VOTE_RESP and self.role is Role.PRE_CANDIDATE) or (
            m.type is MessageType.VOTE_RESP and self.role is Role.CANDIDATE
        ):
            self._handle_vote_response(m)

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
        # The leader never sends a commit index beyond what we match.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self.msgs.append(Message(MessageType.HEARTBEAT_RESP, self.id, m.frm, self.term))

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
            if pr.match < self.log.last_index():
                self._maybe_send_append(m.frm, send_if_empty=False)
        # Vote responses after winning, and appends from ourselves, need nothing.

    def _handle_append_reject(self, peer: str, m: Message) -> None:
        pr = self.tracker.progress[peer]
        # Fast backtracking: find our last entry at or below the follower's hint
        # whose term is <= the hint's term; the logs may match there.
        hint = min(m.reject_hint, self.log.last_index())
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
        if not pr.maybe_update(index):
            if was_paused and not pr.is_paused():
                self._maybe_send_append(peer, send_if_empty=False)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        committed = self.tracker.update_match(peer, pr.match)
        self._maybe_commit(committed)
        if peer != self.id:
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
        log.commit_to(quorum_index)
        # Followers learn the new commit index with the next AppendEntries.
        self._broadcast_pending = True

    def _maybe_send_append(self, peer: str, send_if_empty: bool) -> bool:
        """Send the next AppendEntries to ``peer`` if its progress allows. Returns True if sent."""
        pr = self.tracker.progress[peer]
        if pr.is_paused():
            return False
        log = self.log
        last = log.last_index()
        prev = pr.next - 1
        if prev < log.log.snapshot_index:
            # The entries this follower needs are compacted; a snapshot is required
            # (installed by a later layer of the core).
            return False
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
            )
        )
        pr.sent_entries(entries[-1].index if entries else prev, len(entries))
        return True

    def broadcast_append(self) -> None:
        """Send every follower what it is missing (or the commit index if nothing)."""
        self._broadcast_pending = False
        for peer in sorted(self.tracker.progress):
            if peer != self.id and self._maybe_send_append(peer, send_if_empty=True):
                # Pipeline the rest of the backlog up to the inflight window.
                while self._maybe_send_append(peer, send_if_empty=False):
                    pass

    def flush_broadcast(self) -> None:
        """Send the AppendEntries deferred so that many proposals share one message."""
        if self._broadcast_pending and self.role is Role.LEADER:
            self.broadcast_append()
        self._broadcast_pending = False

    def _broadcast_heartbeat(self) -> None:
        for peer in sorted(self.tracker.progress):
            if peer == self.id:
                continue
            pr = self.tracker.progress[peer]
            # Never tell a follower to commit beyond what it is known to match.
            commit = min(pr.match, self.log.committed)
            self.msgs.append(Message(MessageType.HEARTBEAT, self.id, peer, self.term, commit=commit))

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
        leader already holds ``max_uncommitted_bytes`` of uncommitted entries.
        """
        return self.propose_batch([data], entry_type)[0]

    def propose_batch(self, datas: list[bytes], entry_type: int = 0) -> list[tuple[int, int]]:
        """Append several commands at once; they share AppendEntries and one persist."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if not datas:
            return []
        entries = [Entry(0, 0, d, entry_type) for d in datas]
        limit = self.config.max_uncommitted_bytes
        if limit:
            pending = self.log.uncommitted_bytes()
            size = sum(e.size for e in entries)
            # An idle leader always takes one batch, however large, so progress is possible.
            if pending and pending + size > limit:
                raise UncommittedLimitExceeded(limit, pending)
        last, term = self._append_entries(entries)
        first = last - len(entries) + 1
        return [(i, term) for i in range(first, last + 1)]

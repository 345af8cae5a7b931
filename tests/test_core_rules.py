"""Rule-level tests of the sans-IO core: one rule of the paper per test."""

from __future__ import annotations

import random

import pytest
from core_harness import Harness

from raftlib.core import (
    Config,
    Entry,
    HardState,
    Message,
    MessageType,
    PersistentState,
    RawNode,
    Role,
)
from raftlib.errors import ConfigError, NotLeader, UncommittedLimitExceeded

ABC = ["a", "b", "c"]


def vote_request(frm: str, to: str, term: int, index: int, log_term: int, pre: bool = False) -> Message:
    kind = MessageType.PRE_VOTE if pre else MessageType.VOTE
    return Message(kind, frm, to, term, log_term=log_term, index=index)


def drain(node: RawNode):
    rd = node.ready()
    node.advance(rd)
    return rd


def node_with_log(node_id: str, terms: list[int], hard: HardState, **cfg: object) -> RawNode:
    entries = [Entry(i + 1, t, b"e%d" % (i + 1)) for i, t in enumerate(terms)]
    config = Config(node_id, voters=ABC, **cfg)  # type: ignore[arg-type]
    return RawNode(config, PersistentState(hard, entries), rng=random.Random(7))


# -- §5.2 elections -----------------------------------------------------------


def test_5_2_a_node_grants_at_most_one_vote_per_term() -> None:
    n = node_with_log("a", [], HardState(1))
    n.step(vote_request("b", "a", 2, 0, 0))
    n.step(vote_request("c", "a", 2, 0, 0))
    rd = drain(n)
    answers = {m.to: m.reject for m in rd.persisted_messages}
    assert answers == {"b": False, "c": True}
    assert rd.hard_state == HardState(2, "b", 0)


def test_5_2_vote_grant_is_sent_only_after_the_vote_is_durable() -> None:
    n = node_with_log("a", [], HardState(1))
    n.step(vote_request("b", "a", 2, 0, 0))
    rd = n.ready()
    assert rd.messages == []
    assert [m.type for m in rd.persisted_messages] == [MessageType.VOTE_RESP]
    assert rd.hard_state is not None and rd.hard_state.vote == "b" and rd.must_sync()


def test_5_2_repeated_vote_request_from_the_same_candidate_is_granted_again() -> None:
    n = node_with_log("a", [], HardState(2, "b"))
    n.step(vote_request("b", "a", 2, 0, 0))
    assert [m.reject for m in drain(n).persisted_messages] == [False]


@pytest.mark.parametrize(
    "cand_index, cand_term, granted",
    [
        (3, 2, True),  # same last term, same length
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (1, 3, True),  # higher last term wins even when shorter
        (5, 1, False),  # lower last term loses even when longer
    ],
)
def test_5_4_1_vote_granted_only_to_an_up_to_date_candidate(
    cand_index: int, cand_term: int, granted: bool
) -> None:
    n = node_with_log("a", [1, 2, 2], HardState(2, None, 0))
    n.step(vote_request("b", "a", 3, cand_index, cand_term))
    [resp] = drain(n).persisted_messages
    assert resp.reject is (not granted)


def test_5_2_candidate_counts_its_own_vote_only_after_persisting_it() -> None:
    h = Harness(["a"], pre_vote=False)
    a = h.nodes["a"]
    a.campaign()
    assert a.role is Role.CANDIDATE
    rd = a.ready()
    assert rd.hard_state == HardState(1, "a", 0)
    assert a.role is Role.CANDIDATE  # not yet: the vote is not durable
    a.advance(rd)
    assert a.role is Role.LEADER


def test_5_2_split_vote_retries_with_a_new_term() -> None:
    h = Harness(ABC, pre_vote=False, check_quorum=False)
    # Everyone campaigns at once and nobody hears anybody: nobody wins term 1.
    h.down = {"a", "b", "c"}
    for i in ABC:
        h.nodes[i].campaign()
    h.run()
    h.down = set()
    h.tick(60)
    leader = h.leader()
    assert leader is not None and leader.term >= 2


def test_5_2_candidate_steps_down_on_append_from_leader_of_its_term() -> None:
    n = node_with_log("a", [], HardState(0), pre_vote=False)
    n.campaign()
    assert n.role is Role.CANDIDATE and n.term == 1
    n.step(Message(MessageType.APPEND, "b", "a", 1, log_term=0, index=0))
    assert n.role is Role.FOLLOWER and n.leader == "b"


# -- thesis §9.6 PreVote and §4.2.3 disruption --------------------------------


def test_9_6_pre_vote_does_not_raise_the_term() -> None:
    h = Harness(ABC)
    h.down = {"b", "c"}
    a = h.nodes["a"]
    for _ in range(10):
        a.campaign()
        h.run()
    assert a.term == 0 and a.role is Role.PRE_CANDIDATE


def test_9_6_pre_vote_request_changes_no_durable_state_of_the_voter() -> None:
    n = node_with_log("a", [], HardState(1))
    n.step(vote_request("b", "a", 2, 0, 0, pre=True))
    rd = drain(n)
    assert rd.hard_state is None
    [resp] = rd.persisted_messages
    assert resp.type is MessageType.PRE_VOTE_RESP and not resp.reject and resp.term == 2
    assert n.term == 1


def test_4_2_3_follower_with_a_live_leader_ignores_vote_requests() -> None:
    h = Harness(ABC)
    h.elect("a")
    b = h.nodes["b"]
    term = b.term
    b.step(vote_request("c", "b", term + 1, 100, term, pre=False))
    assert b.term == term
    assert not b.has_ready() or not drain(b).persisted_messages


def test_4_2_3_without_check_quorum_a_vote_request_disrupts_the_term() -> None:
    h = Harness(ABC, check_quorum=False)
    h.elect("a")
    b = h.nodes["b"]
    term = b.term
    b.step(vote_request("c", "b", term + 1, 100, term))
    assert b.term == term + 1


# -- CheckQuorum ----------------------------------------------------------------


def test_check_quorum_leader_steps_down_without_a_quorum() -> None:
    h = Harness(ABC, election_tick=10)
    a = h.elect("a")
    h.down = {"b", "c"}
    for _ in range(20):
        a.tick()
        h.run()
    assert a.role is Role.FOLLOWER and a.leader is None


def test_check_quorum_leader_keeps_leading_with_a_quorum() -> None:
    h = Harness(ABC, election_tick=10)
    a = h.elect("a")
    h.down = {"c"}
    h.tick(50)
    assert a.role is Role.LEADER


# -- §5.3 replication -------------------------------------------------------------


def test_5_3_append_ack_is_sent_only_after_the_entries_are_durable() -> None:
    n = node_with_log("b", [1], HardState(1, "a", 0))
    n.step(
        Message(MessageType.APPEND, "a", "b", 1, log_term=1, index=1, entries=[Entry(2, 1, b"x")])
    )
    rd = n.ready()
    assert [e.index for e in rd.entries] == [2]
    assert rd.messages == []
    [ack] = rd.persisted_messages
    assert ack.type is MessageType.APPEND_RESP and not ack.reject and ack.index == 2


def test_5_3_append_rejected_when_prev_entry_does_not_match() -> None:
    n = node_with_log("b", [1, 1, 2], HardState(3, None, 0))
    n.step(Message(MessageType.APPEND, "a", "b", 3, log_term=3, index=3, entries=[Entry(4, 3)]))
    [resp] = drain(n).persisted_messages
    assert resp.reject and resp.index == 3
    # Hint: our last entry at or below 3 whose term is <= 3 is (3, 2).
    assert (resp.reject_hint, resp.log_term) == (3, 2)
    assert n.last_index() == 3


def test_5_3_conflicting_suffix_is_replaced_but_stale_append_never_truncates() -> None:
    n = node_with_log("b", [1, 1, 1, 1], HardState(2, None, 1))
    n.step(Message(MessageType.APPEND, "a", "b", 2, log_term=1, index=2, entries=[Entry(3, 2, b"new")]))
    assert n.last_index() == 3 and n.term_at(3) == 2
    rd = drain(n)
    assert [(e.index, e.term) for e in rd.entries] == [(3, 2)]
    # A duplicate of an older, shorter message changes nothing.
    n.step(Message(MessageType.APPEND, "a", "b", 2, log_term=1, index=1, entries=[Entry(2, 1, b"e2")]))
    assert n.last_index() == 3


def test_5_3_follower_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    n = node_with_log("b", [], HardState(1, "a", 0))
    n.step(Message(MessageType.APPEND, "a", "b", 1, log_term=0, index=0, entries=[Entry(1, 1)], commit=5))
    assert n.commit_index == 1


def _heartbeats_after_tick(a: RawNode) -> dict[str, int]:
    a.tick()
    rd = a.ready()
    a.advance(rd)
    return {m.to: m.commit for m in rd.messages if m.type is MessageType.HEARTBEAT}


def _leader_while_c_missed_three_entries(h: Harness, settle: bool) -> RawNode:
    a = h.elect("a")
    if settle:
        h.run()
    h.down = {"c"}
    for i in range(3):
        a.propose(b"v%d" % i)
    h.run()
    assert a.commit_index == 4
    h.down = set()
    return a


def test_heartbeat_never_commits_beyond_what_the_follower_matches() -> None:
    h = Harness(ABC, skip_redundant_heartbeats=False)  # etcd's rule: every follower, every interval
    a = _leader_while_c_missed_three_entries(h, settle=False)
    # c missed everything; the heartbeat it receives carries commit <= its match.
    assert _heartbeats_after_tick(a) == {"b": 4, "c": 1}


def test_5_2_no_periodic_heartbeat_to_a_follower_just_sent_an_append() -> None:
    """§5.2: any AppendEntries maintains the leader's authority. A follower in steady
    replication that was sent one since the last heartbeat, carrying the commit index a
    heartbeat would, gets no heartbeat. The appends to c were lost: c gets its heartbeat one
    interval later, with commit <= its match, as after any lost heartbeat."""
    a = _leader_while_c_missed_three_entries(Harness(ABC), settle=True)
    assert _heartbeats_after_tick(a) == {}
    assert _heartbeats_after_tick(a) == {"b": 4, "c": 1}


def test_5_2_heartbeats_resume_after_an_interval_without_appends() -> None:
    h = Harness(ABC)
    a = h.elect("a")
    a.propose(b"x")
    h.run()
    assert _heartbeats_after_tick(a) == {}  # both were just sent appends carrying commit 2
    h.run()
    assert _heartbeats_after_tick(a) == {"b": 2, "c": 2}  # a quiet interval: heartbeats again


def test_6_4_read_rounds_and_leases_keep_every_heartbeat() -> None:
    """A ReadIndex round (§6.4) needs a quorum's answers, and lease mode renews the lease
    with every heartbeat: neither leaves a follower out."""
    h = Harness(ABC)
    a = h.elect("a")
    a.propose(b"x")
    h.run()
    a.read_index(b"ctx")
    assert set(_heartbeats_after_tick(a)) == {"b", "c"}
    h2 = Harness(ABC, read_only="lease")
    a2 = h2.elect("a")
    a2.propose(b"x")
    h2.run()
    assert set(_heartbeats_after_tick(a2)) == {"b", "c"}


def test_leader_counts_itself_only_after_its_own_write_is_durable() -> None:
    h = Harness(ABC)
    a = h.elect("a")
    base = a.commit_index
    index, _ = a.propose(b"x")
    rd = a.ready()  # the leader's write of `index` is now in flight
    h.queue.extend(rd.messages)
    h.queue = [m for m in h.queue if m.to == "b"]
    for m in h.queue:
        h.nodes["b"].step(m)
    h.queue = []
    h.handle_ready("b")
    acks = [m for m in h.queue if m.to == "a"]
    for m in acks:
        a.step(m)
    # b's ack plus a's own would be a quorum, but a's write is not durable yet...
    assert a.commit_index == base
    h.disks["a"].write(rd)
    a.advance(rd)  # ...now it is.
    assert a.commit_index == index


def test_proposals_are_batched_into_one_append_per_follower() -> None:
    h = Harness(ABC)
    a = h.elect("a")
    for i in range(100):
        a.propose(b"%d" % i)
    rd = a.ready()
    appends = [m for m in rd.messages if m.type is MessageType.APPEND]
    assert sorted(m.to for m in appends) == ["b", "c"]
    assert all(len(m.entries) == 100 for m in appends)
    assert len(rd.entries) == 100


def test_append_batches_respect_the_entry_and_byte_bounds() -> None:
    h = Harness(ABC, max_msg_entries=8, max_msg_bytes=10_000, max_inflight=1000)
    a = h.elect("a")
    for i in range(20):
        a.propose(b"%d" % i)
    rd = a.ready()
    to_b = [m for m in rd.messages if m.type is MessageType.APPEND and m.to == "b"]
    a.advance(rd)
    assert [len(m.entries) for m in to_b] == [8, 8, 4]  # split by the entry bound, pipelined
    h.queue.extend(rd.messages)
    h.run()
    assert a.commit_index == 21 and h.nodes["b"].commit_index == 21

    big = Harness(ABC, max_msg_bytes=1000)
    a = big.elect("a")
    for _ in range(10):
        a.propose(b"x" * 300)
    rd = a.ready()
    sizes = [sum(e.size for e in m.entries) for m in rd.messages if m.to == "b"]
    assert sizes and all(s <= 1000 for s in sizes)


def test_pipelining_window_bounds_unacknowledged_appends() -> None:
    h = Harness(ABC, max_inflight=2, max_msg_entries=1)
    a = h.elect("a")
    for i in range(10):
        a.propose(b"%d" % i)
    rd = a.ready()
    to_b = [m for m in rd.messages if m.type is MessageType.APPEND and m.to == "b"]
    assert len(to_b) == 2
    a.advance(rd)
    h.queue.extend(rd.messages)
    h.run()
    assert a.commit_index == 11


def test_fast_backtracking_skips_a_whole_conflicting_term_per_round_trip() -> None:
    # b holds 60 entries of term 2 that the term-3 leader never had.
    leader_terms = [1] * 10 + [3] * 5
    follower_terms = [1] * 10 + [2] * 60
    a = node_with_log("a", leader_terms, HardState(3, "a", 10))
    b = node_with_log("b", follower_terms, HardState(3, "a", 10))
    c = node_with_log("c", leader_terms, HardState(3, "a", 10))
    h = Harness(ABC)
    h.nodes = {"a": a, "b": b, "c": c}
    a.campaign()
    h.run()
    assert a.role is Role.LEADER
    rejects = 0

    def count(m: Message) -> None:
        nonlocal rejects
        if m.type is MessageType.APPEND_RESP and m.reject and m.to == "a":
            rejects += 1

    for _ in range(50):
        h.settle_readies()
        if not h.queue:
            break
        queue, h.queue = h.queue, []
        for m in queue:
            count(m)
            h.deliver(m)
    assert rejects <= 2, rejects
    assert b.last_index() == a.last_index()
    assert [b.term_at(i) for i in range(1, a.last_index() + 1)] == [
        a.term_at(i) for i in range(1, a.last_index() + 1)
    ]


# -- §5.4.2 Figure 8 ----------------------------------------------------------------


def test_5_4_2_entry_of_an_earlier_term_is_not_committed_by_counting_replicas() -> None:
    # a leads term 4 holding (2, term 2) that b also holds: a majority has it.
    a = node_with_log("a", [1, 2], HardState(3, None, 1), pre_vote=False)
    b = node_with_log("b", [1, 2], HardState(3, None, 1), pre_vote=False)
    c = node_with_log("c", [1], HardState(3, None, 1), pre_vote=False)
    h = Harness(ABC)
    h.nodes = {"a": a, "b": b, "c": c}
    a.campaign()
    h.run()
    assert a.role is Role.LEADER and a.term == 4
    # Directly: an ack of index 2 from b alone must not commit it...
    leader = a.raft
    leader._maybe_commit(2)
    assert a.commit_index <= 1 or a.term_at(a.commit_index) == 4
    # ...and it commits together with the leader's no-op of term 4 (index 3).
    assert a.commit_index == 3 and a.term_at(3) == 4


# -- proposals -------------------------------------------------------------------------


def test_proposal_on_a_follower_fails_with_the_leader_hint() -> None:
    h = Harness(ABC)
    h.elect("a")
    with pytest.raises(NotLeader) as err:
        h.nodes["b"].propose(b"x")
    assert err.value.leader_id == "a"
    with pytest.raises(NotLeader) as err:
        RawNode(Config("z", voters=["z", "y"])).propose(b"x")
    assert err.value.leader_id is None


def test_back_pressure_bounds_uncommitted_bytes() -> None:
    h = Harness(ABC, max_uncommitted_bytes=1000)
    a = h.elect("a")
    h.down = {"b", "c"}
    a.propose(b"x" * 2000)  # an idle leader always accepts one proposal
    with pytest.raises(UncommittedLimitExceeded) as err:
        a.propose(b"y")
    assert err.value.limit == 1000 and err.value.pending > 1000
    h.down = set()
    h.tick(3)
    assert a.commit_index == a.last_index()
    a.propose(b"y")  # accepted again once committed


# -- restart -------------------------------------------------------------------------------


def test_restart_restores_term_vote_commit_and_reapplies_committed_entries() -> None:
    h = Harness(ABC)
    a = h.elect("a")
    for i in range(5):
        a.propose(b"v%d" % i)
    h.run()
    h.tick(2)
    before = list(h.applied["b"])
    term, commit = h.nodes["b"].term, h.nodes["b"].commit_index
    b = h.restart("b")
    assert (b.term, b.commit_index, b.role) == (term, commit, Role.FOLLOWER)
    h.settle_readies()
    assert h.applied["b"] == before
    assert before[-5:] == [b"v0", b"v1", b"v2", b"v3", b"v4"]


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"election_tick": 1, "heartbeat_tick": 1},
        {"heartbeat_tick": 0},
        {"max_inflight": 0},
        {"max_msg_bytes": 0},
        {"max_uncommitted_bytes": -1},
        {"voters": ["a", "a"]},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"voters": ["a", "b"]}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        RawNode(Config("a", **args))  # type: ignore[arg-type]


def test_node_without_any_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="no configuration"):
        RawNode(Config("a"))


def test_message_for_another_node_is_refused() -> None:
    n = node_with_log("a", [], HardState(1))
    with pytest.raises(ValueError, match="delivered to"):
        n.step(vote_request("b", "c", 2, 0, 0))


def test_ready_advance_protocol_misuse_is_refused() -> None:
    n = node_with_log("a", [], HardState(1))
    n.campaign()
    rd = n.ready()
    with pytest.raises(RuntimeError):
        n.ready()
    with pytest.raises(RuntimeError):
        n.advance(type(rd)())
    n.advance(rd)


def test_persisted_commit_beyond_persisted_log_is_refused() -> None:
    with pytest.raises(ValueError, match="beyond the last"):
        node_with_log("a", [1], HardState(1, None, 5))


def test_follower_that_lost_its_log_tail_is_repaired_by_the_next_heartbeat() -> None:
    # A follower restarts without its last entries (a damaged last WAL record was
    # dropped): the leader still believes it matches, so only the heartbeat can tell.
    h = Harness(ABC)
    a = h.elect("a")
    for i in range(3):
        a.propose(b"v%d" % i)
    h.run()
    h.tick(1)
    disk = h.disks["b"]
    disk.entries = disk.entries[:-2]
    hs = disk.hard_state
    disk.hard_state = HardState(hs.term, hs.vote, min(hs.commit, len(disk.entries)))
    b = h.restart("b")
    assert b.last_index() == a.last_index() - 2
    assert a.status()["progress"]["b"]["match"] == a.last_index()
    h.tick(2)
    assert b.last_index() == a.last_index() and b.commit_index == a.commit_index
    assert h.applied["b"][-3:] == [b"v0", b"v1", b"v2"]


# -- commit-index announcements to up-to-date followers ----------------------------------


def _announcements(h: Harness, proposer: RawNode) -> list[Message]:
    """Run one proposal to commit; return the entry-less appends that announced the commit."""
    seen: list[Message] = []
    before = h.drop_filter
    h.drop_filter = lambda m: seen.append(m) or before(m)  # type: ignore[func-returns-value]
    try:
        proposer.propose(b"x")
        h.run()
    finally:
        h.drop_filter = before
    return [m for m in seen if m.type is MessageType.APPEND and not m.entries]


def test_commit_announcement_to_an_up_to_date_follower_is_quiet_and_unanswered() -> None:
    h = Harness(ABC)
    a = h.elect("a")
    announced = _announcements(h, a)
    assert {m.to for m in announced} == {"b", "c"}
    assert all(m.quiet and m.commit == a.commit_index for m in announced)
    # The followers learned the commit index (§5.3) and answered nothing.
    for f in ("b", "c"):
        assert h.nodes[f].commit_index == a.commit_index
    b = h.nodes["b"]
    b.step(announced[0] if announced[0].to == "b" else announced[1])
    rd = drain(b)
    assert rd.messages == [] and rd.persisted_messages == []


def test_quiet_announcement_that_does_not_match_is_still_rejected_with_an_answer() -> None:
    # §5.3: the consistency check applies to every append; a quiet one only spares the ack.
    n = node_with_log("b", [1, 1], HardState(1, "a", 1))
    n.step(Message(MessageType.APPEND, "a", "b", 1, log_term=1, index=4, commit=4, quiet=True))
    [resp] = drain(n).persisted_messages
    assert resp.type is MessageType.APPEND_RESP and resp.reject and resp.index == 4
    assert n.commit_index == 1


def test_quiet_flag_never_suppresses_the_ack_of_entries() -> None:
    n = node_with_log("b", [1], HardState(1, "a", 0))
    n.step(
        Message(MessageType.APPEND, "a", "b", 1, log_term=1, index=1, entries=[Entry(2, 1)], quiet=True)
    )
    [ack] = drain(n).persisted_messages
    assert ack.index == 2 and not ack.reject


def test_only_a_replicating_follower_known_to_match_the_last_entry_gets_a_quiet_append() -> None:
    # A follower being probed must answer even an empty append, or the probe never ends; one
    # with entries in flight has not yet proven its match.
    h = Harness(ABC)
    a = h.elect("a")
    a.propose(b"x")
    h.run()
    progress = a.raft.tracker.progress
    progress["b"].become_probe()  # as after a rejection or a restart: match known, not proven
    assert progress["b"].next == a.last_index() + 1 and progress["c"].match == a.last_index()
    a.raft.broadcast_append()
    sent = {m.to: m for m in drain(a).messages if m.type is MessageType.APPEND}
    assert not sent["b"].entries and not sent["b"].quiet
    assert not sent["c"].entries and sent["c"].quiet


def test_probe_and_catch_up_appends_are_never_quiet() -> None:
    # A follower the leader is still probing (it was down) must answer, or the probe never ends.
    h = Harness(ABC)
    a = h.elect("a")
    h.down = {"c"}
    for i in range(3):
        a.propose(b"v%d" % i)
    h.run()
    h.tick(3)
    h.down = set()
    seen: list[Message] = []
    h.drop_filter = lambda m: seen.append(m) or False  # type: ignore[func-returns-value]
    h.tick(2)
    to_c = [m for m in seen if m.type is MessageType.APPEND and m.to == "c"]
    assert to_c and not any(m.quiet for m in to_c if m.entries or m.index < a.last_index())
    assert h.nodes["c"].last_index() == a.last_index()
    assert h.nodes["c"].commit_index == a.commit_index

"""Leadership transfer (thesis §3.10), ReadIndex (thesis §6.4), lease reads, proposal forwarding."""

from __future__ import annotations

import pytest
from core_harness import Harness

from raftlib.core import MessageType, ReadState, Role
from raftlib.errors import ConfigError, LeadershipTransferError, NotLeader, ProposalDropped

ABC = ["a", "b", "c"]


# -- §3.10 leadership transfer -------------------------------------------------------


def test_3_10_transfer_to_an_up_to_date_follower() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    term = a.term
    a.transfer_leadership("b")
    h.run()
    assert h.nodes["b"].role is Role.LEADER and h.nodes["b"].term == term + 1
    assert a.role is Role.FOLLOWER and a.leader == "b"


def test_3_10_proposals_are_refused_while_a_transfer_is_pending() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.down = {"b"}
    a.transfer_leadership("b")
    with pytest.raises(ProposalDropped) as err:
        a.propose(b"x")
    assert err.value.reason == "transfer_pending"


def test_3_10_transfer_to_a_lagging_member_brings_it_up_to_date_first() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.down = {"c"}
    for i in range(20):
        a.propose(b"%d" % i)
    h.run()
    h.down = set()
    sent: list[str] = []
    orig = h.deliver

    def spy(m):  # type: ignore[no-untyped-def]
        sent.append(m.type.name)
        orig(m)

    h.deliver = spy  # type: ignore[method-assign]
    a.transfer_leadership("c")
    h.run()
    c = h.nodes["c"]
    assert c.role is Role.LEADER
    assert sent.index("TIMEOUT_NOW") > sent.index("APPEND")
    assert [c.term_at(i) for i in range(1, 22)] == [a.term_at(i) for i in range(1, 22)]


def test_3_10_transfer_to_a_crashed_member_is_abandoned_after_an_election_timeout() -> None:
    h = Harness(list(ABC), election_tick=10)
    a = h.elect("a")
    h.down = {"c"}
    a.transfer_leadership("c")
    for _ in range(9):
        h.tick(1)
        with pytest.raises(ProposalDropped):
            a.propose(b"x")
    h.tick(1)
    assert a.role is Role.LEADER and "transferring_to" not in a.status()
    index, _ = a.propose(b"accepted-again")
    h.run()
    h.tick(1)
    assert a.commit_index >= index


def test_3_10_transfer_under_load_loses_no_committed_entry() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    committed: list[bytes] = []
    for i in range(50):
        leader = h.leader()
        assert leader is not None
        try:
            leader.propose(b"w%d" % i)
            committed.append(b"w%d" % i)
        except ProposalDropped:
            pass
        if i == 20:
            a.transfer_leadership("b")
        h.tick(1)
    h.tick(3)
    assert h.nodes["b"].role is Role.LEADER
    for node_id in ABC:
        assert [d for d in h.applied[node_id] if d] == committed


def test_3_10_transfer_target_must_be_a_voter() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    with pytest.raises(LeadershipTransferError):
        a.transfer_leadership("zz")
    with pytest.raises(NotLeader):
        h.nodes["b"].transfer_leadership("c")


def test_3_10_forced_election_overrides_the_leader_lease() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.tick(1)
    # c just heard from a, so an ordinary vote request would be ignored; b's
    # transfer-forced one is not.
    a.transfer_leadership("b")
    h.run()
    assert h.nodes["b"].role is Role.LEADER


# -- §6.4 ReadIndex -----------------------------------------------------------------------


def test_6_4_read_index_is_served_after_a_quorum_confirms_leadership() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    a.propose(b"x")
    h.run()
    a.read_index(b"r1")
    assert h.read_states["a"] == []
    h.run()
    assert h.read_states["a"] == [ReadState(a.commit_index, b"r1")]


def test_6_4_many_reads_share_one_heartbeat_round() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    heartbeats: list[int] = []
    orig = h.deliver

    def spy(m):  # type: ignore[no-untyped-def]
        if m.type is MessageType.HEARTBEAT:
            heartbeats.append(m.index)
        orig(m)

    h.deliver = spy  # type: ignore[method-assign]
    for i in range(100):
        a.read_index(b"r%d" % i)
    h.run()
    assert len(h.read_states["a"]) == 100
    assert len(heartbeats) == 2 and len(set(heartbeats)) == 1  # one round to b and c


def test_6_4_a_leader_cut_off_from_the_quorum_cannot_serve_reads() -> None:
    h = Harness(list(ABC), check_quorum=False)
    a = h.elect("a")
    h.down = {"b", "c"}
    a.read_index(b"stale?")
    h.tick(30)
    assert h.read_states["a"] == []


def test_6_4_reads_wait_for_the_leader_to_commit_an_entry_of_its_term() -> None:
    h = Harness(list(ABC))
    a = h.nodes["a"]
    a.campaign()
    # Win the election but hold the no-op's acknowledgements.
    h.drop_filter = lambda m: m.type is MessageType.APPEND_RESP
    h.run()
    assert a.role is Role.LEADER
    assert a.term_at(a.commit_index) != a.term
    a.read_index(b"early")
    h.tick(2)
    assert h.read_states["a"] == []
    h.drop_filter = lambda m: False
    h.tick(2)
    assert [rs.context for rs in h.read_states["a"]] == [b"early"]
    assert h.read_states["a"][0].index >= 1 and a.term_at(h.read_states["a"][0].index) == a.term


def test_6_4_follower_read_index_comes_from_the_leader() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    a.propose(b"x")
    h.run()
    h.nodes["b"].read_index(b"fr")
    h.run()
    assert h.read_states["b"] == [ReadState(a.commit_index, b"fr")]


def test_6_4_read_index_without_a_known_leader_fails_fast() -> None:
    h = Harness(list(ABC))
    with pytest.raises(NotLeader):
        h.nodes["a"].read_index(b"nobody")


def test_6_4_pending_reads_fail_when_leadership_is_lost() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.down = {"b", "c"}
    a.read_index(b"doomed")
    h.tick(25)  # CheckQuorum deposes a
    assert a.role is Role.FOLLOWER
    assert h.read_states["a"] == [ReadState(0, b"doomed", ok=False)]


def test_lease_reads_need_no_round_trip_and_need_check_quorum() -> None:
    h = Harness(list(ABC), read_only="lease")
    a = h.elect("a")
    a.read_index(b"fast")
    rd = a.ready()
    assert [rs.context for rs in rd.read_states] == [b"fast"]
    assert not [m for m in rd.messages if m.type is MessageType.HEARTBEAT]
    a.advance(rd)
    with pytest.raises(ConfigError):
        Harness(list(ABC), read_only="lease", check_quorum=False)


# -- proposal forwarding ---------------------------------------------------------------------


def test_follower_forwards_proposals_when_configured() -> None:
    h = Harness(list(ABC), forward_proposals=True)
    a = h.elect("a")
    h.nodes["b"].propose_with_context(b"via-b", b"ctx-1")
    h.run()
    [res] = h.proposal_results["b"]
    assert res.context == b"ctx-1" and res.error is None and res.term == a.term
    h.tick(1)
    assert h.applied["b"][-1] == b"via-b" and a.entries(res.index, res.index + 1)[0].data == b"via-b"


def test_follower_without_forwarding_fails_fast_with_the_leader_hint() -> None:
    h = Harness(list(ABC))
    h.elect("a")
    with pytest.raises(NotLeader) as err:
        h.nodes["b"].propose_with_context(b"x", b"c")
    assert err.value.leader_id == "a"


def test_forwarded_proposal_refused_by_a_transferring_leader_reports_why() -> None:
    h = Harness(list(ABC), forward_proposals=True)
    a = h.elect("a")
    h.down = {"c"}
    a.transfer_leadership("c")
    h.nodes["b"].propose_with_context(b"x", b"ctx")
    h.run()
    [res] = h.proposal_results["b"]
    assert res.error == "transfer_pending" and res.leader == "a"


def test_6_4_a_read_index_answered_by_an_older_terms_leader_is_still_delivered() -> None:
    # The leader confirmed its leadership for our request before a new term
    # began: the answer is still a valid read index for it.
    h = Harness(list(ABC))
    h.elect("a")
    b = h.nodes["b"]
    b.read_index(b"old")
    rd = b.ready()
    [req] = [m for m in rd.messages if m.type is MessageType.READ_INDEX]
    b.advance(rd)
    a = h.nodes["a"]
    a.step(req)
    h.run()  # the answer reaches b...
    assert [rs.context for rs in h.read_states["b"]] == [b"old"]
    # ...and one that arrives after b moved to a later term is delivered too.
    stale = type(req)(MessageType.READ_INDEX_RESP, "a", "b", 1, index=1, context=b"late")
    b.raft.term = 7
    b.step(stale)
    assert b.raft.read_states[-1] == ReadState(1, b"late")

"""Rule-level regressions for core bugs found by the simulator (tests/test_sim_*.py)."""

from __future__ import annotations

from core_harness import Harness

from raftlib.core import Role

ABC = ["a", "b", "c"]


def test_lease_read_is_not_served_once_the_lease_has_run_out() -> None:
    """Found by tests/test_sim_linearizable_clients.py (lease mode, seed 0 of the first sweep): a
    leader cut off from the quorum kept serving lease reads until CheckQuorum deposed it, up
    to two election timeouts after it last heard from the quorum, while the other side
    elected a leader after one timeout and committed writes: stale reads. A lease now lasts
    from the send time of the latest message a quorum acknowledged, for less than an election
    timeout; after that the read takes a heartbeat round (which a cut-off leader never
    completes)."""
    h = Harness(list(ABC), read_only="lease")
    a = h.elect("a")
    h.tick(3)  # heartbeats acknowledged: the lease is fresh
    a.read_index(b"fresh")
    h.run()
    assert [(rs.context, rs.ok) for rs in h.read_states["a"]] == [(b"fresh", True)]
    h.down.update({"b", "c"})  # the leader hears from nobody any more
    for _ in range(8):
        a.tick()
        h.run()
    assert a.role is Role.LEADER  # CheckQuorum has not deposed it yet
    a.read_index(b"late")
    h.run()
    assert [rs.context for rs in h.read_states["a"]] == [b"fresh"]  # not answered from the lease
    h.down.clear()
    h.tick(2)  # a heartbeat round confirms it: now served
    assert [rs.context for rs in h.read_states["a"]] == [b"fresh", b"late"]


def test_lease_mode_a_restarted_node_waits_an_election_timeout_before_voting() -> None:
    """A follower that restarts forgets it heard from the leader; in lease mode its vote
    could help elect a new leader while the old leader still serves lease reads. It
    ignores vote requests for one election timeout after start (found by review of the
    lease fix above)."""
    from raftlib.core import Message, MessageType

    h = Harness(list(ABC), read_only="lease", election_tick=10)
    a = h.elect("a")
    h.tick(2)
    b = h.restart("b")
    vote = Message(MessageType.VOTE, "c", "b", a.term + 1, index=100, log_term=a.term)
    b.step(vote)
    assert b.term == a.term
    answers = b.ready().persisted_messages if b.has_ready() else []
    assert not [m for m in answers if m.type is MessageType.VOTE_RESP]
    h2 = Harness(list(ABC), election_tick=10)  # without lease reads a restarted node votes at once
    a2 = h2.elect("a")
    b2 = h2.restart("b")
    b2.step(Message(MessageType.VOTE, "c", "b", a2.term + 1, index=100, log_term=a2.term))
    assert b2.term == a2.term + 1


def test_5_2_a_follower_drops_leader_messages_from_anyone_but_the_leader_of_the_term() -> None:
    """Found by tests/test_reliability_fuzz.py: an APPEND at the leader's term "from" another
    member was accepted and its entry later committed on that follower (divergence). A term
    has one leader (§5.2): once a follower knows it, others' leader-only messages are dropped."""
    from raftlib.core import Entry, Message, MessageType

    h = Harness(list(ABC))
    a = h.elect("a")
    h.tick(1)
    b = h.nodes["b"]
    last = b.last_index()
    forged = Message(
        MessageType.APPEND, "c", "b", a.term, log_term=a.term, index=last,
        entries=[Entry(last + 1, a.term, b"forged")], commit=last,
    )
    b.step(forged)
    assert b.last_index() == last and b.leader == "a"
    a.propose(b"real")
    h.run()
    h.tick(1)
    assert h.applied["b"][-1] == b"real" and b"forged" not in h.applied["b"]

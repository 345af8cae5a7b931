"""Membership changes (§6 of the Raft paper): learners, simple changes, joint consensus."""

from __future__ import annotations

import pytest
from core_harness import Harness

from raftlib.core import Change, ChangeKind, ConfChange, Membership, Role, Transition
from raftlib.core.confchange import apply_change
from raftlib.errors import ConfChangeError, ConfChangeInProgress, NotLeader

ABC = ["a", "b", "c"]


def cc(*changes: tuple[ChangeKind, str], transition: Transition = Transition.AUTO) -> ConfChange:
    return ConfChange(tuple(Change(k, n) for k, n in changes), transition)


def settle(h: Harness, ticks: int = 3) -> None:
    h.run()
    h.tick(ticks)


def test_6_conf_change_entry_round_trips_and_rejects_garbage() -> None:
    change = cc((ChangeKind.ADD_VOTER, "d"), (ChangeKind.REMOVE, "a"), transition=Transition.JOINT)
    assert ConfChange.decode(change.encode()) == change
    for junk in (b"", b"{", b'{"v":2,"t":"auto","c":[]}', b'{"v":1,"t":"auto","c":[["zap","d",""]]}'):
        with pytest.raises(ConfChangeError):
            ConfChange.decode(junk)


def test_6_one_voter_change_takes_the_simple_path() -> None:
    m = Membership(frozenset(ABC))
    out = apply_change(m, cc((ChangeKind.ADD_VOTER, "d")))
    assert out.voters == frozenset("abcd") and not out.is_joint()


def test_6_two_voter_changes_go_through_joint_consensus() -> None:
    m = Membership(frozenset(ABC))
    out = apply_change(m, cc((ChangeKind.ADD_VOTER, "d"), (ChangeKind.REMOVE, "a")))
    assert out.is_joint()
    assert out.voters == frozenset("bcd") and out.outgoing == frozenset(ABC)
    left = apply_change(out, ConfChange())
    assert left.voters == frozenset("bcd") and not left.is_joint()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            cc((ChangeKind.REMOVE, "a"), (ChangeKind.REMOVE, "b"), (ChangeKind.REMOVE, "c")),
            "at least one voter",
        ),
        (cc((ChangeKind.REMOVE, "z")), "not a member"),
        (cc((ChangeKind.ADD_VOTER, "d"), (ChangeKind.REMOVE, "d")), "twice"),
        (ConfChange(), "nothing to leave"),
    ],
)
def test_6_invalid_changes_are_refused(change: ConfChange, message: str) -> None:
    with pytest.raises(ConfChangeError, match=message):
        apply_change(Membership(frozenset(ABC)), change)


def test_6_leader_adds_a_voter_and_it_counts_toward_the_quorum() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    d = h.add_node("d")
    a.propose_conf_change(cc((ChangeKind.ADD_VOTER, "d")))
    settle(h)
    assert a.membership.voters == frozenset("abcd")
    assert d.membership.voters == frozenset("abcd")
    assert h.applied["d"] == h.applied["a"]
    # With 4 voters a quorum is 3: b and c down means no commit.
    h.down = {"b", "c"}
    index, _ = a.propose(b"needs-three")
    h.run()
    assert a.commit_index < index
    h.down = {"c"}
    h.tick(2)
    assert a.commit_index >= index


def test_6_learner_receives_the_log_but_never_counts_or_votes() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.add_node("l")
    a.propose_conf_change(cc((ChangeKind.ADD_LEARNER, "l")))
    settle(h)
    assert a.membership.learners == frozenset("l")
    index, _ = a.propose(b"x")
    settle(h)
    assert h.applied["l"][-1] == b"x"
    # Learner acks do not make a quorum: with b and c down nothing commits.
    h.down = {"b", "c"}
    index, _ = a.propose(b"y")
    h.run()
    assert h.nodes["l"].last_index() == index
    assert a.commit_index < index
    # A learner never campaigns, however long it waits.
    h.down = {"a", "b", "c"}
    for _ in range(100):
        h.nodes["l"].tick()
    assert h.nodes["l"].role is Role.FOLLOWER and h.nodes["l"].term == a.term


def test_6_add_member_joins_as_learner_and_is_promoted_once_caught_up() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    for i in range(30):
        a.propose(b"%d" % i)
    settle(h)
    h.add_node("d")
    h.down = {"d"}
    a.propose_conf_change(cc((ChangeKind.ADD_MEMBER, "d")))
    settle(h)
    assert "d" in a.membership.learners and "d" in a.membership.promoting
    assert "d" not in a.membership.voters  # not caught up: not promoted
    h.down = set()
    settle(h, 5)
    assert "d" in a.membership.voters and not a.membership.learners
    assert h.nodes["d"].membership.voters == frozenset("abcd")


def test_6_joint_change_is_entered_and_left_automatically() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.add_node("d")
    h.add_node("e")
    index, _ = a.propose_conf_change(cc((ChangeKind.ADD_VOTER, "d"), (ChangeKind.ADD_VOTER, "e")))
    h.tick(3)
    # The log holds the joint configuration, then the automatic leave.
    changes = [
        ConfChange.decode(e.data).result
        for e in a.entries(index, a.last_index() + 1)
        if e.type == 1
    ]
    assert [m.is_joint() if m else None for m in changes] == [True, False]
    assert changes[0] is not None and changes[0].outgoing == frozenset(ABC)
    assert a.membership == Membership(frozenset("abcde"))
    assert all(h.nodes[i].membership == a.membership for i in "abcde")


def test_6_joint_consensus_needs_both_majorities() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    for new in "def":
        h.add_node(new)
    # Replace b, c by d, e, f: C_old = {a,b,c}, C_new = {a,d,e,f}.
    h.down = {"d", "e", "f"}
    a.propose_conf_change(
        cc((ChangeKind.REMOVE, "b"), (ChangeKind.REMOVE, "c"), (ChangeKind.ADD_VOTER, "d"),
           (ChangeKind.ADD_VOTER, "e"), (ChangeKind.ADD_VOTER, "f"))
    )
    settle(h)
    assert a.membership.is_joint()
    # The new set has no majority: nothing more commits although C_old is all up.
    index, _ = a.propose(b"joint")
    h.run()
    assert a.commit_index < index
    h.down = set()
    settle(h, 5)
    assert a.commit_index >= index
    assert a.membership == Membership(frozenset("adef"))


def test_6_only_one_change_in_flight() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.add_node("d")
    h.down = {"b", "c", "d"}
    index, _ = a.propose_conf_change(cc((ChangeKind.ADD_LEARNER, "d")))
    with pytest.raises(ConfChangeInProgress) as err:
        a.propose_conf_change(cc((ChangeKind.REMOVE, "b")))
    assert err.value.pending_index == index
    with pytest.raises(NotLeader):
        h.nodes["b"].propose_conf_change(cc((ChangeKind.REMOVE, "c")))


def test_6_removed_leader_leads_until_the_change_commits_then_hands_over() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    a.propose_conf_change(cc((ChangeKind.REMOVE, "a")))
    settle(h, 5)
    assert a.role is not Role.LEADER
    new = h.leader()
    assert new is not None and new.id in ("b", "c")
    assert new.membership.voters == frozenset("bc")
    index, _ = new.propose(b"after")
    h.run()
    h.tick(1)
    assert new.commit_index >= index


def test_6_crashed_member_is_removed_and_replaced() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.down = {"c"}
    a.propose_conf_change(cc((ChangeKind.REMOVE, "c")))
    settle(h)
    h.add_node("d")
    a.propose_conf_change(cc((ChangeKind.ADD_VOTER, "d")))
    settle(h)
    assert a.membership.voters == frozenset("abd")
    h.down = {"b"}
    index, _ = a.propose(b"abd")
    h.run()
    h.tick(1)
    assert a.commit_index >= index  # a + d are a majority of {a, b, d}


def test_6_restart_replays_configuration_changes() -> None:
    h = Harness(list(ABC))
    a = h.elect("a")
    h.add_node("d")
    a.propose_conf_change(cc((ChangeKind.ADD_LEARNER, "d")))
    settle(h)
    b = h.restart("b")
    h.settle_readies()
    assert b.membership.learners == frozenset("d")

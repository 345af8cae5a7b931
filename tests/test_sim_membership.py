"""Membership changes (§6) in the simulator, with the configuration-aware invariants checked
after every event: grow and shrink under load and partitions, remove the leader, a partition
during joint consensus, a crashed member replaced, learners never counted."""

from __future__ import annotations

import pytest

from raftlib.core import ChangeKind as K
from raftlib.core import Role
from raftlib.testing import InvariantViolation, SimCluster

FAULTS = dict(drop=0.02, delay=(1, 6), persist_delay=(0, 3))


def load(c: SimCluster, n: int, tag: bytes) -> int:
    index = 0
    for k in range(n):
        index, _ = c.replicate(b"%s-%d" % (tag, k))
    return index


def finish(c: SimCluster) -> None:
    c.heal()
    index, _ = c.replicate(b"final")
    c.wait_applied(index, node_ids=c.members())
    c.check_invariants()
    c.check_agreement(c.members())
    ref = c.state_machine(c.members()[0]).data
    assert all(c.state_machine(i).data == ref for i in c.members())


@pytest.mark.parametrize("seed", range(50))
def test_grow_3_to_5_and_shrink_back_under_load_and_partitions(seed: int) -> None:
    c = SimCluster(3, seed=seed, **FAULTS)  # type: ignore[arg-type]
    c.wait_leader()
    load(c, 3, b"a")
    for new in ("n4", "n5"):
        c.add_node(new)
        c.change_membership((K.ADD_MEMBER, new))  # learner first, promoted once caught up
        load(c, 1, b"busy")
    assert c.voters() == ["n1", "n2", "n3", "n4", "n5"]
    c.isolate(c.rng.choice(c.voters()))  # a minority is cut off: the five still commit
    load(c, 3, b"b")
    c.heal()
    for gone in c.rng.sample(["n1", "n2", "n3", "n4", "n5"], 2):
        c.change_membership((K.REMOVE, gone))
        c.shutdown(gone)
    assert len(c.voters()) == 3
    load(c, 3, b"c")
    finish(c)


@pytest.mark.parametrize("seed", range(50))
def test_removed_leader_leads_until_the_change_commits_then_hands_over(seed: int) -> None:
    c = SimCluster(5, seed=seed, **FAULTS)  # type: ignore[arg-type]
    old = c.wait_leader()
    load(c, 2, b"a")
    index, term = c.change_membership((K.REMOVE, old), settle=False)
    assert c.checker.committed[index][0] == term  # type: ignore[union-attr]
    assert old not in c.membership().voters
    new = c.run_until(lambda: (lambda lead: lead if lead and lead != old else None)(c.leader()), 100)
    assert new in c.voters()
    c.detach(old)
    load(c, 2, b"b")
    finish(c)


@pytest.mark.parametrize("seed", range(50))
def test_partition_during_joint_consensus_then_the_change_completes(seed: int) -> None:
    c = SimCluster(5, seed=seed, **FAULTS)  # type: ignore[arg-type]
    c.wait_leader()
    for new in ("n6", "n7"):
        c.add_node(new)
        c.change_membership((K.ADD_LEARNER, new))
    load(c, 2, b"a")
    out = [i for i in ("n1", "n2", "n3", "n4", "n5") if i != c.leader()][:2]
    index, _ = c.change_membership((K.ADD_VOTER, "n6"), (K.ADD_VOTER, "n7"), (K.REMOVE, out[0]),
                                   (K.REMOVE, out[1]), settle=False)
    assert c.checker.config_at(index).is_joint()  # type: ignore[union-attr]
    ids = list(c.ids)
    c.rng.shuffle(ids)
    c.partition(ids[:3], ids[3:])
    c.run(30)
    c.heal()
    c.run_until(lambda: not c.membership().is_joint() and c.leader() is not None, 300, "joint left")
    for gone in out:
        c.run_until(lambda g=gone: c.leader() != g, 100)
        c.detach(gone)
    assert c.voters() == sorted({"n1", "n2", "n3", "n4", "n5", "n6", "n7"} - set(out))
    finish(c)


@pytest.mark.parametrize("seed", range(50))
def test_crashed_member_is_removed_and_replaced(seed: int) -> None:
    c = SimCluster(3, seed=seed, **FAULTS)  # type: ignore[arg-type]
    lead = c.wait_leader()
    dead = next(i for i in c.ids if i != lead)
    c.crash(dead)
    load(c, 3, b"a")
    c.change_membership((K.REMOVE, dead))
    c.detach(dead)
    c.add_node("n4")
    c.change_membership((K.ADD_MEMBER, "n4"))
    assert sorted(c.voters()) == sorted([i for i in ("n1", "n2", "n3") if i != dead] + ["n4"])
    with pytest.raises(ValueError):
        c.restart(dead)
    load(c, 3, b"b")
    finish(c)


@pytest.mark.parametrize("seed", range(50))
def test_learners_are_never_counted_in_a_quorum_or_a_vote(seed: int) -> None:
    c = SimCluster(3, seed=seed, delay=(1, 4))
    c.wait_leader()
    for new in ("n4", "n5"):
        c.add_node(new)
        c.change_membership((K.ADD_LEARNER, new))
    index = load(c, 2, b"a")
    c.wait_applied(index, node_ids=["n4", "n5"])  # learners have the log and ack it
    lead = c.leader()
    assert lead is not None
    cut = [i for i in ("n1", "n2", "n3") if i != lead]
    for v in cut:
        c.isolate(v)
    committed = len(c.checker.committed)  # type: ignore[union-attr]
    c.propose(b"must-not-commit", lead)  # accepted by the leader, acked by the learners
    c.run(40)
    # Two learners acked, but only one voter of three holds it: nothing new committed,
    # and no learner ever campaigned (the invariant checker would have raised).
    assert len(c.checker.committed) == committed  # type: ignore[union-attr]
    assert all(c.raw(i).role is Role.FOLLOWER for i in ("n4", "n5"))
    finish(c)


def test_checker_flags_a_learner_that_campaigns() -> None:
    c = SimCluster(3, seed=1)
    c.wait_leader()
    c.add_node("n4")
    c.change_membership((K.ADD_LEARNER, "n4"))
    c.wait_applied(c.checker.configs[-1][0], node_ids=["n4"])  # type: ignore[union-attr]
    raw = c.raw("n4").raft
    raw.promotable = lambda: True  # type: ignore[method-assign]  # a broken core
    with pytest.raises(InvariantViolation, match="learner-never-campaigns"):
        c.campaign("n4")

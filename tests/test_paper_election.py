"""Leader election scenarios (Raft §5.2, thesis §9.6 PreVote, §6.2/§9.6 CheckQuorum).

Each randomized test runs over 50 seeds; a failure prints the seed and how to replay it.
"""

from __future__ import annotations

import pytest

from raftlib.core import Role
from raftlib.errors import NotLeader
from raftlib.testing import SimCluster

SEEDS = range(50)
ELECTION_TICK = 10  # the Config default the cluster uses


def terms(c: SimCluster) -> dict[str, int]:
    return {i: c.raw(i).term for i in c.up_ids()}


def agreed_leader(c: SimCluster, ids: list[str] | None = None) -> str | None:
    """The leader every given node follows, if they all agree and it leads."""
    ids = ids or c.up_ids()
    lead = c.raw(ids[0]).leader
    if lead is None or lead not in ids or c.raw(lead).role is not Role.LEADER:
        return None
    return lead if all(c.raw(i).leader == lead and c.raw(i).term == c.raw(lead).term for i in ids) else None


@pytest.mark.parametrize("seed", SEEDS)
def test_initial_election_elects_exactly_one_leader_5_2(seed: int) -> None:
    """§5.2: starting from nothing, one leader is elected within a few election timeouts,
    everyone learns it, and no second leader appears while nothing fails."""
    n = 3 if seed % 2 else 5
    c = SimCluster(n, seed=seed)
    c.run_until(lambda: agreed_leader(c), max_ticks=6 * ELECTION_TICK, what="an agreed leader")
    leader = agreed_leader(c)
    term = c.raw(leader).term
    c.run(5 * ELECTION_TICK)
    assert c.leaders() == [leader]
    assert set(terms(c).values()) == {term}
    assert term <= 3  # pre-vote: a failed round does not raise the term
    assert list(c.checker.leaders) == [term]


@pytest.mark.parametrize("seed", SEEDS)
def test_reelection_after_the_leader_is_cut_off_5_2(seed: int) -> None:
    """§5.2: when followers stop hearing from the leader they elect a new one in a higher term;
    when the old leader rejoins it follows the new one, and a new command commits everywhere."""
    c = SimCluster(5 if seed % 3 == 0 else 3, seed=seed)
    old = c.wait_leader()
    old_term = c.raw(old).term
    c.isolate(old)
    rest = [i for i in c.ids if i != old]
    new = c.run_until(lambda: agreed_leader(c, rest), max_ticks=8 * ELECTION_TICK, what="a new leader")
    assert new != old and c.raw(new).term > old_term
    c.heal()
    c.run_until(lambda: agreed_leader(c) == new, max_ticks=4 * ELECTION_TICK, what="old leader following")
    assert c.raw(old).role is Role.FOLLOWER and c.raw(old).term == c.raw(new).term
    index, _ = c.replicate(b"after-reelection")
    c.wait_applied(index)
    assert all(c.state_machine(i).data == [b"after-reelection"] for i in c.ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_leader_without_a_quorum_5_2(seed: int) -> None:
    """§5.2: a candidate needs votes from a majority: with the five nodes split 2/2/1 no new
    leader is ever elected, and (CheckQuorum) the old leader steps down."""
    c = SimCluster(5, seed=seed)
    old = c.wait_leader()
    old_term = c.raw(old).term
    others = [i for i in c.ids if i != old]
    c.partition([old, others[0]], others[1:3], others[3:])
    c.run(15 * ELECTION_TICK)
    assert c.leaders() == []
    assert max(c.checker.leaders) == old_term  # no leader for any later term, ever
    with pytest.raises(NotLeader):
        c.propose(b"nobody-leads")
    c.heal()
    c.replicate(b"healed")
    assert c.committed_data() == [b"healed"]
    assert max(c.checker.leaders) > old_term


@pytest.mark.parametrize("seed", SEEDS)
def test_many_elections_under_churn_5_2(seed: int) -> None:
    """§5.2 under churn: the leader is repeatedly cut off; every time, a new leader is elected
    by the others, at most one per term, and commands keep committing."""
    c = SimCluster(5, seed=seed, drop=0.02, delay=(1, 6))
    committed = []
    for round_ in range(6):
        lead = c.wait_leader(max_ticks=10 * ELECTION_TICK)
        lead_term = c.raw(lead).term
        c.isolate(lead)
        rest = [i for i in c.ids if i != lead]
        c.run_until(
            lambda lt=lead_term, rest=rest: any(
                c.raw(i).role is Role.LEADER and c.raw(i).term > lt for i in rest
            ),
            10 * ELECTION_TICK,
            "a leader among the others",
        )
        c.heal()
        committed.append(c.replicate(b"r%d" % round_, max_ticks=20 * ELECTION_TICK))
    c.check_invariants()
    assert len(c.checker.leaders) >= 7  # the first leader and one more per round
    assert c.committed_data() == [b"r%d" % i for i in range(6)]
    assert [i for i, _ in committed] == sorted(i for i, _ in committed)


@pytest.mark.parametrize("seed", SEEDS)
def test_prevote_keeps_a_rejoining_node_from_raising_the_term_9_6(seed: int) -> None:
    """Thesis §9.6: a node partitioned away keeps pre-voting but never raises its term, so when it
    rejoins it does not depose the stable leader; terms and leadership stay unchanged."""
    c = SimCluster(3, seed=seed)
    leader = c.wait_leader()
    c.replicate(b"x")
    term = c.raw(leader).term
    follower = next(i for i in c.ids if i != leader)
    c.isolate(follower)
    c.run(10 * ELECTION_TICK)
    assert c.raw(follower).term == term
    assert c.raw(follower).role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    c.heal()
    c.run(5 * ELECTION_TICK)
    assert c.leader() == leader and set(terms(c).values()) == {term}
    assert list(c.checker.leaders) == [term]


@pytest.mark.parametrize("seed", SEEDS)
def test_check_quorum_leader_steps_down_within_two_election_timeouts(seed: int) -> None:
    """CheckQuorum (thesis §6.2): a leader that stops hearing from a majority steps down within
    two election timeouts, so clients stop being served by a stale leader."""
    c = SimCluster(5, seed=seed)
    leader = c.wait_leader()
    c.run(3)
    c.isolate(leader)
    start = c.ticks
    c.run_until(lambda: c.raw(leader).role is not Role.LEADER, 2 * ELECTION_TICK + 1, "the step-down")
    assert c.ticks - start <= 2 * ELECTION_TICK + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_classic_behaviour_without_prevote_and_check_quorum(seed: int) -> None:
    """The flags matter: with pre_vote and check_quorum off, an isolated follower raises its term
    on every election timeout and deposes the stable leader when it rejoins, and an isolated
    leader never steps down."""
    c = SimCluster(3, seed=seed, config={"pre_vote": False, "check_quorum": False})
    leader = c.wait_leader()
    c.replicate(b"x")
    term = c.raw(leader).term
    follower = next(i for i in c.ids if i != leader)
    c.isolate(follower)
    c.run(10 * ELECTION_TICK)
    assert c.raw(follower).term >= term + 3
    assert c.raw(follower).role is Role.CANDIDATE
    c.heal()
    c.run_until(lambda: c.raw(leader).term > term, 3 * ELECTION_TICK, "the leader to see the higher term")
    lead = c.wait_leader()
    assert c.raw(lead).term > term + 2
    # An isolated leader keeps believing it leads.
    c.run(5)
    lead = c.leader()
    c.isolate(lead)
    c.run(10 * ELECTION_TICK)
    assert c.raw(lead).role is Role.LEADER
    assert len(c.leaders()) == 2  # the stale one and the new one, in different terms

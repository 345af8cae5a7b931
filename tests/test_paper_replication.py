"""Log replication scenarios (Raft §5.3 and the log matching property).

Each randomized test runs over 50 seeds; a failure prints the seed and how to replay it.
"""

from __future__ import annotations

import pytest

from raftlib.core import MessageType, Role
from raftlib.errors import NotLeader, ProposalDropped
from raftlib.testing import SimCluster

SEEDS = range(50)
ELECTION_TICK = 10


def settle_leader(c: SimCluster) -> str:
    """Wait for a leader and let it commit its no-op, so proposals land in a stable term."""
    c.wait_leader()
    c.run_until(
        lambda: c.leader() and c.raw(c.leader()).commit_index >= c.raw(c.leader()).last_index(),
        50,
        "the leader's no-op committed",
    )
    return c.leader()


@pytest.mark.parametrize("seed", SEEDS)
def test_basic_agreement_5_3(seed: int) -> None:
    """§5.3: commands proposed to the leader are committed at the indexes it assigned, and every
    state machine applies exactly them, in order."""
    c = SimCluster(5 if seed % 2 else 3, seed=seed, delay=(1, 8), persist_delay=seed % 4)
    lead = settle_leader(c)
    cmds = [b"cmd-%d" % i for i in range(10)]
    placed = []
    for k, cmd in enumerate(cmds):
        placed.append(c.propose(cmd, lead))
        if k % 3 == 2:
            c.run(1)
    term = c.raw(lead).term
    assert [t for _, t in placed] == [term] * 10
    first = placed[0][0]
    assert [i for i, _ in placed] == list(range(first, first + 10))
    c.wait_applied(placed[-1][0], node_ids=c.ids)
    for i in c.ids:
        assert c.state_machine(i).data == cmds
        assert [c.log(i)[idx - 1][2] for idx, _ in placed] == cmds
    assert len({tuple(c.log(i)) for i in c.ids}) == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_agreement_despite_a_cut_off_follower_5_3(seed: int) -> None:
    """§5.3: a majority suffices to commit; a follower cut off meanwhile commits nothing new and,
    once reconnected, receives the missing entries and applies the same commands."""
    c = SimCluster(3, seed=seed)
    lead = settle_leader(c)
    follower = next(i for i in c.ids if i != lead)
    before = c.raw(follower).commit_index
    c.isolate(follower)
    placed = [c.propose(b"p%d" % k, lead) for k in range(5)]
    c.wait_committed(placed[-1][0], node_ids=[i for i in c.ids if i != follower])
    c.run(3)
    assert c.raw(follower).commit_index == before
    c.heal()
    c.wait_applied(placed[-1][0], node_ids=[follower])
    assert c.state_machine(follower).data == [b"p%d" % k for k in range(5)]
    assert c.log(follower) == c.log(lead)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_commit_without_a_majority_5_3(seed: int) -> None:
    """§5.3: an entry is committed only once a majority stores it: a leader that reaches just one
    of four followers never commits; once the partition heals the entry commits at its index."""
    c = SimCluster(5, seed=seed, config={"check_quorum": False})
    lead = settle_leader(c)
    others = [i for i in c.ids if i != lead]
    c.partition([lead, others[0]], others[1:])
    commit = c.raw(lead).commit_index
    index, term = c.propose(b"minority", lead)
    c.run(3 * ELECTION_TICK)
    assert c.raw(lead).role is Role.LEADER  # without CheckQuorum it keeps leading its minority
    assert c.raw(lead).commit_index == commit and c.raw(others[0]).commit_index <= commit
    assert c.log(others[0])[index - 1] == (index, term, b"minority")  # replicated, yet not committed
    c.heal()
    c.replicate(b"after")
    data = c.committed_data()
    # The majority elected a new leader meanwhile (or not); either way the minority's entry
    # never counts as committed before the heal, and whatever is committed is agreed on.
    assert data[-1] == b"after"
    assert b"minority" not in data or c.committed_log()[index - 1] == (index, term, b"minority")


@pytest.mark.parametrize("seed", SEEDS)
def test_concurrent_proposals_5_3(seed: int) -> None:
    """§5.3: many clients propose concurrently (several per tick, through a leader change):
    every proposal the final leader accepted commits at exactly its (index, term), nothing is
    committed twice, and all state machines agree."""
    c = SimCluster(5, seed=seed, delay=(1, 12), persist_delay=(0, 4), drop=0.01)
    settle_leader(c)
    accepted: list[tuple[int, int, bytes]] = []
    k = 0
    for step in range(60):
        if step == 25:
            c.isolate(c.leader())
        if step == 40:
            c.heal()
        for _ in range(c.rng.randint(0, 3)):
            k += 1
            try:
                idx, term = c.propose(b"c%d" % k)
                accepted.append((idx, term, b"c%d" % k))
            except (NotLeader, ProposalDropped):
                pass
        c.run(1)
    last = c.replicate(b"end", max_ticks=300)
    c.wait_applied(last[0], node_ids=c.ids, max_ticks=100)
    log = {i: (t, d) for i, t, d in c.committed_log()}
    final_term = last[1]
    for idx, term, data in accepted:
        if log.get(idx) == (term, data):
            continue
        # Lost only if another leader's entry took its place (never on the final leader's term).
        assert term < final_term and log.get(idx, (None,))[0] != term, (idx, term, data, log.get(idx))
    data = [d for d in c.committed_data()]
    assert len(data) == len(set(data))
    # Liveness: the leader is cut off for 15 of the 60 steps, so what it accepted then is lost,
    # but more than half of all accepted proposals commit.
    assert len(accepted) > 40 and sum(1 for i, t, d in accepted if log.get(i) == (t, d)) > len(accepted) // 2
    ref = c.state_machine(c.ids[0]).data
    assert all(c.state_machine(i).data == ref for i in c.ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_partitioned_old_leader_rejoins_and_its_entries_are_replaced_5_3(seed: int) -> None:
    """§5.3 log matching: a leader cut off from the majority accepts proposals it can never
    commit; the majority elects a new leader and commits other commands at the same indexes;
    when the old leader rejoins its uncommitted entries are overwritten and its log matches."""
    c = SimCluster(5, seed=seed, config={"check_quorum": False})
    old = settle_leader(c)
    c.isolate(old)
    stale = [c.propose(b"stale-%d" % k, old) for k in range(3)]
    rest = [i for i in c.ids if i != old]
    c.run_until(lambda: any(c.raw(i).role is Role.LEADER for i in rest), 10 * ELECTION_TICK, "a new leader")
    fresh = [c.replicate(b"fresh-%d" % k) for k in range(3)]
    assert fresh[0][0] <= stale[-1][0]  # the same indexes are taken by other entries
    c.heal()
    c.run_until(
        lambda: c.raw(old).role is Role.FOLLOWER and c.log(old) == c.log(c.leader()),
        5 * ELECTION_TICK,
        "the old leader's log replaced",
    )
    committed = c.committed_data()
    assert all(b"stale" not in d for d in committed)
    assert committed == [b"fresh-0", b"fresh-1", b"fresh-2"]
    assert all(b"stale" not in d for _, _, d in c.log(old))
    c.wait_applied(fresh[-1][0], node_ids=[old])
    assert c.state_machine(old).data == committed


@pytest.mark.parametrize("seed", SEEDS)
def test_fast_backup_of_a_follower_with_many_conflicting_entries_5_3(seed: int) -> None:
    """§5.3 (end): with the conflict hint a leader backs up over a follower's 60 conflicting
    entries in a few round trips, not one rejected AppendEntries per entry.

    The old leader, cut off, appends 60 entries of its term. The majority elects a second
    leader that commits 60 other entries, then a third leader (the second crashes) whose log
    is as long: its first probe of the old leader lands far above their common prefix.
    """
    c = SimCluster(5, seed=seed, config={"check_quorum": False})
    old = settle_leader(c)
    c.isolate(old)
    for k in range(60):
        c.propose(b"conflict-%d" % k, old)
    c.run(2)
    rest = [i for i in c.ids if i != old]
    c.run_until(
        lambda: any(c.raw(i).role is Role.LEADER for i in rest), 10 * ELECTION_TICK, "a second leader"
    )
    second = next(i for i in rest if c.raw(i).role is Role.LEADER)
    for k in range(60):
        c.propose(b"win-%d" % k, second)
    c.wait_applied(c.raw(second).last_index(), node_ids=rest)
    c.crash(second)
    third = c.run_until(
        lambda: next((i for i in rest if c.is_up(i) and c.raw(i).role is Role.LEADER), None),
        10 * ELECTION_TICK,
        "a third leader",
    )
    c.restart(second)
    assert sum(1 for _, _, d in c.log(old) if d.startswith(b"conflict")) == 60
    rejects = []
    c.observers.append(
        lambda m: (
            rejects.append(m) if m.type == MessageType.APPEND_RESP and m.reject and m.frm == old else None
        )
    )
    c.heal()
    c.run_until(lambda: c.log(old) == c.log(third), 5 * ELECTION_TICK, "the follower's log repaired")
    assert 1 <= len(rejects) <= 5, rejects
    assert not any(d.startswith(b"conflict") for _, _, d in c.log(old))
    assert [d for _, _, d in c.log(old) if d] == [b"win-%d" % k for k in range(60)]


@pytest.mark.parametrize("seed", SEEDS)
def test_message_count_at_idle_is_heartbeats_only(seed: int) -> None:
    """Once a cluster settles, an idle leader sends only heartbeats (one per follower per
    heartbeat interval) and followers only answer them: no AppendEntries, no elections."""
    n = 3 if seed % 2 else 5
    c = SimCluster(n, seed=seed)
    settle_leader(c)
    c.replicate(b"warm-up")
    c.run(2 * ELECTION_TICK)
    c.reset_stats()
    idle = 50
    c.run(idle)
    stats = c.stats()
    assert set(stats) == {"HEARTBEAT", "HEARTBEAT_RESP"}, stats
    assert idle * (n - 1) - (n - 1) <= stats["HEARTBEAT"] <= idle * (n - 1) + (n - 1)
    assert stats["HEARTBEAT_RESP"] == pytest.approx(stats["HEARTBEAT"], abs=n - 1)

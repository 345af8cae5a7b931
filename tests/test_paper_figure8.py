"""Figure 8 of the Raft paper (§5.4.2): a leader must not commit an entry of an earlier term
by counting replicas, only by committing an entry of its own term on top of it.

The scripted tests replay the figure step by step on five nodes (n1..n5 are S1..S5), with
elections started by hand (no ticks, no PreVote/CheckQuorum so campaigns are immediate) and
one entry per AppendEntries so that an old entry can reach a majority on its own.
"""

from __future__ import annotations

import pytest

from raftlib.core import Role
from raftlib.errors import NotLeader, ProposalDropped
from raftlib.testing import SimCluster

SCRIPT_CONFIG = {"pre_vote": False, "check_quorum": False, "max_msg_entries": 1}
X = b"x-from-term-1"


def durable(c: SimCluster, node: str) -> list[tuple[int, int, bytes]]:
    return c.log(node, durable=True)


def figure8_until_c(c: SimCluster, *, stop_before_own_term_entry: bool) -> None:
    """Steps (a)..(c) of Figure 8; returns with n1 leading term 3 and X (index 2, term 1)
    stored on n1, n2, n3: a majority."""
    # Before (a): n1 leads term 1; its no-op (index 1) reaches everyone.
    c.campaign("n1")
    c.settle()
    assert c.leader() == "n1" and c.raw("n1").term == 1
    # (a) n1 replicates X (index 2, term 1) to n2 only.
    c.partition(["n1", "n2"], ["n3", "n4", "n5"])
    assert c.propose(X, "n1") == (2, 1)
    c.settle()
    assert durable(c, "n2")[1] == (2, 1, X) and c.raw("n1").commit_index == 1
    # (b) n1 crashes; n5 wins term 2 with votes from n3 and n4, appends its no-op at index 2,
    #     and crashes before replicating it.
    c.crash("n1")
    c.campaign("n5")
    c.run_until(lambda: c.raw("n5").role is Role.LEADER, what="n5 leading term 2")
    assert c.raw("n5").term == 2
    c.crash("n5")
    assert durable(c, "n5") == [(1, 1, b""), (2, 2, b"")]
    assert durable(c, "n3") == durable(c, "n4") == [(1, 1, b"")]
    # (c) n1 restarts and, with n2 and n3, wins term 3 (its term-2 attempt fails: n3 voted n5).
    c.restart("n1")
    c.partition(["n1", "n2", "n3"], ["n4", "n5"])
    c.campaign("n1")
    c.settle()
    assert c.raw("n1").role is not Role.LEADER and c.raw("n1").term == 2
    c.campaign("n1")
    if stop_before_own_term_entry:
        # n1 now sends X to n3; cut n1->n3 as soon as n3 stores it, before n3 gets index 3.
        c.run_until(lambda: len(durable(c, "n3")) >= 2, what="n3 storing X")
        c.cut("n1", "n3", both=False)
    c.settle()
    assert c.raw("n1").role is Role.LEADER and c.raw("n1").term == 3
    assert durable(c, "n1")[1] == durable(c, "n2")[1] == durable(c, "n3")[1] == (2, 1, X)


def test_figure8_old_term_entry_on_a_majority_is_not_committed_5_4_2() -> None:
    """§5.4.2, Figure 8 (c)-(d): X (term 1) is stored on a majority by the term-3 leader, yet it
    is not committed; so when that leader crashes, n5 (term 2 entry at index 2) can still win
    and overwrite X everywhere, and no state machine ever applied X."""
    c = SimCluster(5, seed=0, auto_tick=False, config=SCRIPT_CONFIG)
    figure8_until_c(c, stop_before_own_term_entry=True)
    # The paper's point: on a majority, but from an earlier term, so not committed.
    assert c.raw("n1").commit_index == 1
    assert all(c.raw(i).commit_index <= 1 for i in ("n1", "n2", "n3"))
    assert len(durable(c, "n3")) == 2  # n3 never got the term-3 entry
    # (d) n1 crashes; n5 restarts and wins term 4 with n3 and n4 (n2 holds a term-3 entry and refuses).
    c.crash("n1")
    c.heal()
    c.restart("n5")
    c.campaign("n5")
    c.settle()
    assert c.raw("n5").role is not Role.LEADER  # term 3: n2 and n3 already voted for n1
    c.campaign("n5")
    c.settle()
    assert c.raw("n5").role is Role.LEADER and c.raw("n5").term == 4
    assert c.committed_log()[:3] == [(1, 1, b""), (2, 2, b""), (3, 4, b"")]
    for i in ("n2", "n3", "n4", "n5"):
        assert X not in [d for _, _, d in c.log(i)]
        assert c.state_machine(i).data == []
    # n1 comes back and learns the same history.
    c.restart("n1")
    c.tick()
    c.settle()
    assert c.log("n1") == c.log("n5")
    c.check_invariants()


def test_figure8_entry_of_own_term_commits_the_earlier_one_5_4_2() -> None:
    """§5.4.2, Figure 8 (e): once the term-3 leader replicates an entry of its own term to a
    majority, X below it commits too, and n5 can no longer be elected to overwrite it."""
    c = SimCluster(5, seed=0, auto_tick=False, config=SCRIPT_CONFIG)
    figure8_until_c(c, stop_before_own_term_entry=False)
    assert c.raw("n1").commit_index == 3
    assert c.committed_log()[:3] == [(1, 1, b""), (2, 1, X), (3, 3, b"")]
    c.crash("n1")
    c.heal()
    c.restart("n5")
    for _ in range(3):
        c.campaign("n5")
        c.settle()
        assert c.raw("n5").role is not Role.LEADER  # n2 and n3 hold term 3: n5 is behind
    c.campaign("n2")
    c.settle()
    assert c.leader() == "n2"
    c.tick()
    c.settle()
    for i in ("n2", "n3", "n4", "n5"):
        assert c.log(i)[1] == (2, 1, X)
        assert c.state_machine(i).data == [X]


@pytest.mark.parametrize("seed", range(50))
def test_figure8_unreliable_network_5_4_2(seed: int) -> None:
    """§5.4.2 under an unreliable network: 10% loss, reordering, occasional long delays,
    duplicates, slow disks, leaders and followers crashing and restarting while commands are
    proposed. No safety rule is ever broken (checked after every event), and once the faults
    stop a leader is elected and a new command commits everywhere."""
    c = SimCluster(
        5,
        seed=seed,
        drop=0.1,
        duplicate=0.02,
        delay=(1, 10),
        long_delay_prob=0.05,
        long_delay=(20, 80),
        persist_delay=(0, 5),
        full_check_every=300,
    )
    rng = c.rng
    down: list[str] = []
    proposed = 0
    for _ in range(25):
        r = rng.random()
        lead = c.leader()
        if r < 0.3 and lead is not None and len(down) < 2:
            c.crash(lead)
            down.append(lead)
        elif r < 0.45 and len(down) < 2:
            victim = rng.choice(c.up_ids())
            c.crash(victim)
            down.append(victim)
        elif r < 0.7 and down:
            c.restart(down.pop(rng.randrange(len(down))))
        for _ in range(rng.randint(0, 3)):
            try:
                c.propose(b"s%d-%d" % (seed, proposed))
                proposed += 1
            except (NotLeader, ProposalDropped):
                pass
        c.run(rng.randint(3, 15))
    for i in down:
        c.restart(i)
    c.network.set_faults(drop=0.0, duplicate=0.0, long_delay_prob=0.0)
    c.heal()
    index, _ = c.replicate(b"final", max_ticks=200)
    c.wait_applied(index, node_ids=c.ids, max_ticks=100)
    c.check_invariants()
    ref = c.state_machine("n1").data
    assert ref[-1] == b"final" or b"final" in ref
    assert all(c.state_machine(i).data == ref for i in c.ids)
    assert len(set(ref)) == len(ref)
    assert ref == [d for d in c.committed_data()][: len(ref)]

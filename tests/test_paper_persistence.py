"""Crashes and restarts (Raft §5.1/§5.2 durable state, §5.4 safety across failures).

Each randomized test runs over 50 seeds; a failure prints the seed and how to replay it.
"""

from __future__ import annotations

import contextlib

import pytest

from raftlib.errors import NotLeader, ProposalDropped
from raftlib.testing import SimCluster

SEEDS = range(50)


@pytest.mark.parametrize("seed", SEEDS)
def test_whole_cluster_crash_and_restart_loses_nothing_committed(seed: int) -> None:
    """§5.1: term, vote and log are durable before anyone is told; if every node crashes at once
    (some writes still in progress, messages in flight) and restarts, every command committed
    before the crash is still committed, at the same index, and re-applied to fresh state
    machines; the cluster then elects a leader and commits new commands."""
    c = SimCluster(3 if seed % 2 else 5, seed=seed, persist_delay=(1, 6), delay=(1, 8))
    c.wait_leader()
    for k in range(8):
        c.replicate(b"before-%d" % k)
    for k in range(3):  # in flight when the lights go out
        with contextlib.suppress(NotLeader, ProposalDropped):
            c.propose(b"inflight-%d" % k)
    c.run(c.rng.random() * 2)
    committed_before = c.committed_log()
    assert [d for _, _, d in committed_before if d][:8] == [b"before-%d" % k for k in range(8)]
    for i in c.ids:
        c.crash(i)
    for i in c.ids:
        c.restart(i)
    index, _ = c.replicate(b"after", max_ticks=300)
    c.wait_applied(index, node_ids=c.ids)
    for i in c.ids:
        log = c.log(i)
        assert log[: len(committed_before)] == committed_before
        data = c.state_machine(i).data
        assert data[:8] == [b"before-%d" % k for k in range(8)]
        assert data[-1] == b"after"
        assert set(data[8:-1]) <= {b"inflight-0", b"inflight-1", b"inflight-2"}


@pytest.mark.parametrize("seed", SEEDS)
def test_churn_with_crashes_and_restarts_5_4(seed: int) -> None:
    """§5.4 across failures: nodes (leaders included) crash and restart at random while commands
    are proposed and the network loses messages; every command ever reported committed survives
    at its index, and all state machines end identical."""
    c = SimCluster(5, seed=seed, persist_delay=(0, 4), drop=0.05, delay=(1, 6))
    rng = c.rng
    acked: list[tuple[int, int, bytes]] = []
    for round_ in range(8):
        up = c.up_ids()
        if len(up) > 3 and rng.random() < 0.7:
            c.crash(rng.choice(up))
        down = [i for i in c.ids if not c.is_up(i)]
        if down and rng.random() < 0.6:
            c.restart(rng.choice(down))
        if rng.random() < 0.3 and c.leader():
            c.crash(c.leader())
        if len(c.up_ids()) >= 3:
            data = b"churn-%d" % round_
            idx, term = c.replicate(data, max_ticks=300)
            acked.append((idx, term, data))
        c.run(rng.randint(1, 20))
    for i in c.ids:
        if not c.is_up(i):
            c.restart(i)
    index, _ = c.replicate(b"end", max_ticks=300)
    c.wait_applied(index, node_ids=c.ids)
    committed = c.committed_log()
    for idx, term, data in acked:
        assert committed[idx - 1] == (idx, term, data)
    ref = c.state_machine("n1").data
    assert all(c.state_machine(i).data == ref for i in c.ids)
    assert [d for _, _, d in acked] == [d for d in ref if d.startswith(b"churn")]
    assert sum(n.restarts for n in c.nodes.values()) >= 1 or seed % 7 == 0

"""The issue's §4: simulated clients issuing reads, writes and compare-and-set against the
simulated cluster under partitions, crashes and leader changes produce linearizable histories;
a deliberately stale read mode (a node's local state, no ReadIndex) produces violations the
checker catches, which shows the test has teeth.

Default run: 50 seeds per mode; ``-m slow``: 250 seeds per mode. Each seed's number of checked
operations is summed into ``OPS`` (printed with ``-s``).
"""

from __future__ import annotations

from collections import Counter

import pytest

from raftlib.testing import SimCluster
from raftlib.testing.clients import RegisterMachine, Workload
from raftlib.testing.linearizability import CheckResult, check

OPS: Counter[str] = Counter()

MODES = {
    # name: (cluster config, forward proposals through the client's node)
    "read_index": ({}, False),
    "read_index_forwarded": ({"forward_proposals": True}, True),
    # The simulator has no clock drift: every node ticks at the same rate, so the leader
    # lease (read_only="lease") must be as linearizable as ReadIndex here.
    "lease": ({"read_only": "lease"}, False),
}


def run_history(seed: int, mode: str, *, read_mode: str = "read_index", rounds: int = 10) -> tuple[
    CheckResult, Workload
]:
    config, forward = MODES[mode]
    c = SimCluster(
        3 if seed % 2 else 5,
        seed=seed,
        state_machine_factory=RegisterMachine,
        config=dict(config),
        drop=0.03,
        delay=(1, 8),
        persist_delay=(0, 3),
    )
    w = Workload(c, clients=4, read_mode=read_mode, forward=forward)
    rng = c.rng
    c.wait_leader()
    for _ in range(rounds):
        r = rng.random()
        lead = c.leader()
        if r < 0.25 and lead:
            c.isolate(lead)
        elif r < 0.45:
            ids = list(c.ids)
            rng.shuffle(ids)
            k = rng.randint(1, len(ids) - 1)
            c.partition(ids[:k], ids[k:])
        elif r < 0.65 and len(c.up_ids()) == len(c.ids):
            c.crash(lead or rng.choice(c.ids))
        elif r < 0.75 and lead:
            c.campaign(rng.choice([i for i in c.ids if c.is_up(i)]))  # a leader change
        else:
            c.heal()
            for i in c.ids:
                if not c.is_up(i):
                    c.restart(i)
        w.run(10)
    c.heal()
    for i in c.ids:
        if not c.is_up(i):
            c.restart(i)
    # A healed phase long enough for an election (up to two election timeouts) and
    # some work, so that every seed checks completed reads and writes.
    w.run(60)
    w.finish()
    res = check(w.history, time_budget=30.0)
    OPS[f"{mode}/{read_mode}"] += res.ops_checked
    return res, w


def assert_linearizable(seed: int, mode: str) -> None:
    res, w = run_history(seed, mode)
    assert res.status == "ok", f"seed {seed}: {res}"
    # The run did something: completed writes and reads were checked.
    assert w.stats.ok >= 5, w.stats
    assert w.stats.reads_ok >= 1, w.stats
    assert res.ops_checked >= 5


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("seed", range(50))
def test_client_histories_are_linearizable(seed: int, mode: str) -> None:
    assert_linearizable(seed, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("seed", range(50, 300))
def test_client_histories_are_linearizable_sweep(seed: int, mode: str) -> None:
    assert_linearizable(seed, mode)


def test_stale_local_reads_are_caught() -> None:
    """Teeth: the same workload reading a node's state machine directly (no ReadIndex) is not
    linearizable, and the checker says so on most seeds."""
    caught = []
    for seed in range(12):
        res, _ = run_history(seed, "read_index", read_mode="stale")
        assert res.status in ("ok", "violation"), res
        if res.status == "violation":
            caught.append(seed)
            assert "not linearizable" in res.detail
    assert len(caught) >= 6, caught


def test_operation_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this module: prints how many operations were checked per mode."""
    with capsys.disabled():
        print("\nlinearizability: operations checked", dict(OPS))

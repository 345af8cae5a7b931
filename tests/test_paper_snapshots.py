"""Log compaction and InstallSnapshot (Raft §7) in the simulator.

A node snapshots its state machine once ``Config.snapshot_entries`` entries were applied and
drops its log prefix; a follower too far behind receives the leader's snapshot in chunks and
rebuilds its state machine from it; a restart restores the latest durable snapshot first.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from raftlib.testing import SimCluster

SNAP = {"snapshot_entries": 20, "snapshot_trailing_entries": 5, "snapshot_chunk_bytes": 64}


class Sum:
    """A state machine with real snapshots: the running total and how many commands it saw."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0
        self.restored_from: int | None = None

    def apply(self, command: bytes, index: int) -> Any:
        self.total += int(command)
        self.count += 1
        return self.total

    def snapshot(self) -> bytes:
        return json.dumps({"total": self.total, "count": self.count, "pad": "x" * 100}).encode()

    def restore(self, data: bytes) -> None:
        d = json.loads(data)
        self.total, self.count = d["total"], d["count"]
        self.restored_from = self.count


def test_leader_compacts_its_log_after_snapshot_entries() -> None:
    c = SimCluster(3, seed=1, config=SNAP, state_machine_factory=Sum)
    lead = c.wait_leader()
    for k in range(30):
        c.replicate(b"%d" % k)
    c.run(5)
    assert all(c.raw(i).snapshot_meta is not None for i in c.ids)
    assert c.raw(lead).first_index() > 1
    st = c.nodes[lead].storage
    assert st.snapshot is not None and st.first > 1
    assert json.loads(st.snapshot_data)["count"] <= 30
    assert all(c.state_machine(i).total == sum(range(30)) for i in c.ids)


@pytest.mark.parametrize("seed", range(50))
def test_lagging_follower_catches_up_by_snapshot_7(seed: int) -> None:
    """§7: a follower cut off while the leader compacts past what it has receives the leader's
    snapshot (in several chunks), installs it, and then follows the log; its state machine ends
    identical, rebuilt from the snapshot rather than by replaying every entry."""
    c = SimCluster(3, seed=seed, config=SNAP, state_machine_factory=Sum, drop=0.02, persist_delay=seed % 3)
    lead = c.wait_leader()
    c.replicate(b"1")
    c.run(3)
    lagger = next(i for i in c.ids if i != c.leader())
    c.isolate(lagger)
    for k in range(60):
        c.replicate(b"%d" % k)
    lead = c.leader()
    assert c.raw(lead).first_index() > c.raw(lagger).last_index() + 1  # the log cannot help it
    c.heal()
    last, _ = c.replicate(b"1000")
    c.wait_applied(last, node_ids=c.ids)
    want = 1 + sum(range(60)) + 1000
    assert [c.state_machine(i).total for i in c.ids] == [want] * 3
    assert c.state_machine(lagger).restored_from is not None
    assert c.nodes[lagger].storage.snapshot is not None


@pytest.mark.parametrize("seed", range(50))
def test_restart_restores_the_snapshot_then_the_log_7(seed: int) -> None:
    """§7: after a crash, a node restores its latest durable snapshot and re-applies only the
    log after it; the whole cluster crashing loses nothing committed."""
    c = SimCluster(3, seed=seed, config=SNAP, state_machine_factory=Sum, persist_delay=(0, 3))
    c.wait_leader()
    for k in range(45):
        c.replicate(b"%d" % k)
    c.run(3)
    for i in c.ids:
        c.crash(i)
    for i in c.ids:
        c.restart(i)
        assert c.state_machine(i).restored_from is not None
    last, _ = c.replicate(b"100", max_ticks=300)
    c.wait_applied(last, node_ids=c.ids)
    assert [c.state_machine(i).total for i in c.ids] == [sum(range(45)) + 100] * 3
    c.check_invariants()


def test_compact_on_demand_and_a_state_machine_without_restore() -> None:
    c = SimCluster(3, seed=2)  # RecordingStateMachine: snapshot() and restore() exist
    c.wait_leader()
    for k in range(5):
        c.replicate(b"r%d" % k)
    c.run(3)
    c.compact("n1")
    assert c.raw("n1").snapshot_meta.index == c.raw("n1").applied_index
    assert c.nodes["n1"].storage.snapshot is not None
    c.crash("n1")
    c.restart("n1")
    c.run(5)
    assert c.state_machine("n1").data == [b"r%d" % k for k in range(5)]


def test_core_applied_index_does_not_run_ahead_of_an_installing_snapshot() -> None:
    """RawNode.applied_index is "the index the state machine already reflects" (RawNode's
    ``applied`` argument). While the Ready that installs a snapshot is still being written,
    the driver has not restored its state machine yet, so the core must not already report
    the snapshot's index as applied (a driver serving reads or answering clients from it
    would read a state machine that is far behind)."""
    c = SimCluster(3, seed=0, config=SNAP, state_machine_factory=Sum, persist_delay=5)
    c.wait_leader()
    c.replicate(b"1")
    c.run(3)
    lagger = next(i for i in c.ids if i != c.leader())
    c.isolate(lagger)
    for k in range(60):
        c.replicate(b"%d" % k)
    ahead: list[tuple[float, int, int]] = []
    node = c.nodes[lagger]
    c.heal()
    deadline = c.ticks + 100
    while node.applied < c.raw(c.leader()).commit_index and c.ticks < deadline:
        c.step()  # check after every event
        if node.raw.applied_index > node.applied:
            ahead.append((c.ticks, node.raw.applied_index, node.applied))
    assert c.state_machine(lagger).restored_from is not None  # it did install a snapshot
    assert ahead == [], f"core applied index ahead of the state machine: {ahead[:3]}"

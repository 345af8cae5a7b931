"""InstallSnapshot under faults, in the deterministic simulator (Raft §7).

A follower partitioned while the cluster commits many entries and compacts its log rejoins and
catches up by installing the leader's snapshot; the transfer survives chunk loss, duplication and
reordering, a crash of the receiver in the middle of the transfer, and new entries (and new
snapshots) racing with it. SimCluster checks the safety invariants after every event; each test
also asserts the concrete outcome: an install happened on the follower, every node applied the
same commit index, and the state machines are identical.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from raftlib.core import MessageType
from raftlib.errors import NotLeader, ProposalDropped
from raftlib.testing import SimCluster

SEEDS = range(10)


class Journal:
    """A state machine with real snapshots that keeps every command (so a snapshot is large and
    travels in many chunks, and tests can check which commands a node holds)."""

    def __init__(self, node_id: str, restores: dict[str, list[int]]) -> None:
        self.node_id = node_id
        self.commands: list[bytes] = []
        self.last_index = 0
        self.restored_from: int | None = None
        self._restores = restores

    def apply(self, command: bytes, index: int) -> Any:
        assert index > self.last_index, f"{self.node_id}: index {index} applied after {self.last_index}"
        self.commands.append(command)
        self.last_index = index
        return len(self.commands)

    def snapshot(self) -> bytes:
        return json.dumps({"last": self.last_index, "cmds": [c.decode() for c in self.commands]}).encode()

    def restore(self, data: bytes) -> None:
        d = json.loads(data)
        self.commands = [c.encode() for c in d["cmds"]]
        self.last_index = d["last"]
        self.restored_from = self.last_index
        self._restores[self.node_id].append(self.last_index)


def make_cluster(seed: int, config: dict[str, Any], **kw: Any) -> tuple[SimCluster, dict[str, list[int]]]:
    restores: dict[str, list[int]] = defaultdict(list)

    def factory(node_id: str) -> Journal:
        return Journal(node_id, restores)

    return SimCluster(3, seed=seed, config=config, state_machine_factory=factory, **kw), restores


def commit_many(c: SimCluster, n: int, prefix: str, batch: int = 50) -> list[bytes]:
    """Commit ``n`` distinct commands through the leader, ``batch`` proposals at a time."""
    done: list[bytes] = []
    k = 0
    while k < n:
        cmds = [f"{prefix}{j}".encode() for j in range(k, min(n, k + batch))]
        try:
            lead = c.wait_leader()
            last = term = 0
            for cmd in cmds:
                last, term = c.propose(cmd, lead)
            c.wait_committed(last, term, max_ticks=300)
        except (NotLeader, ProposalDropped):
            for cmd in cmds:  # a leader change: make sure each one commits (maybe twice: fine)
                c.replicate(cmd)
        done.extend(cmds)
        k += len(cmds)
    return done


def isolate_follower(c: SimCluster) -> str:
    c.wait_leader()
    c.replicate(b"first")
    c.run(3)
    lagger = next(i for i in c.ids if i != c.leader())
    assert c.raw(lagger).snapshot_meta is None  # it has no snapshot of its own yet
    c.isolate(lagger)
    return lagger


def count_snapshot_chunks(c: SimCluster, to: str) -> list[int]:
    """Count the SNAPSHOT messages delivered to ``to`` (index 0) and those ending a transfer (1)."""
    seen = [0, 0]

    def obs(m: Any) -> None:
        if m.type == MessageType.SNAPSHOT and m.to == to:
            seen[0] += 1
            if m.done:
                seen[1] += 1

    c.observers.append(obs)
    return seen


def assert_converged(c: SimCluster, expected: list[bytes], max_ticks: float = 600) -> None:
    """Every node applies the leader's commit index; the state machines are identical and hold
    every command in ``expected``."""
    lead = c.wait_leader()
    last, _ = c.replicate(b"final", max_ticks=max_ticks)
    c.wait_applied(last, node_ids=c.ids, max_ticks=max_ticks)
    c.run(5)
    commits = {i: c.raw(i).commit_index for i in c.ids}
    assert len(set(commits.values())) == 1, commits
    applied = {i: c.nodes[i].applied for i in c.ids}
    assert set(applied.values()) == {commits[lead]}, applied
    sms = [c.state_machine(i) for i in c.ids]
    ref = sms[0].commands
    for i, sm in zip(c.ids, sms, strict=True):
        assert sm.commands == ref, f"{i} differs from {c.ids[0]}"
        assert sm.last_index == last
    have = set(ref)
    missing = [x for x in expected if x not in have]
    assert not missing, f"{len(missing)} committed commands missing, e.g. {missing[:3]}"
    assert ref[-1] == b"final"
    c.check_agreement()
    c.check_invariants()


def partition_scenario(
    seed: int, entries: int, every: int, chunk: int, **kw: Any
) -> tuple[SimCluster, str, dict[str, list[int]], list[bytes], list[int]]:
    config = {
        "snapshot_entries": every,
        "snapshot_trailing_entries": max(every // 10, 1),
        "snapshot_chunk_bytes": chunk,
    }
    c, restores = make_cluster(seed, config, **kw)
    lagger = isolate_follower(c)
    cmds = commit_many(c, entries, "e")
    c.run(3)
    lead = c.leader()
    assert lead is not None and lead != lagger
    assert c.raw(lead).first_index() > c.raw(lagger).last_index() + 1  # the log can no longer help it
    assert c.raw(lead).snapshot_meta.index >= entries - every  # compacted all along
    chunks = count_snapshot_chunks(c, lagger)
    return c, lagger, restores, cmds, chunks


# ------------------------------------------------------------------------------ the full version
@pytest.mark.slow
def test_follower_partitioned_during_10k_entries_catches_up_by_snapshot() -> None:
    c, lagger, restores, cmds, chunks = partition_scenario(7, 10_000, 1_000, 16 * 1024)
    c.heal()
    assert_converged(c, cmds, max_ticks=2000)
    assert restores[lagger], "the lagging follower never installed a snapshot"
    assert restores[lagger][0] >= 9_000
    assert chunks[0] > 1 and chunks[1] >= 1  # several chunks, and a complete transfer
    assert c.nodes[lagger].storage.snapshot is not None


# ------------------------------------------------------------------------------ scaled down
@pytest.mark.parametrize("seed", SEEDS)
def test_partitioned_follower_catches_up_by_snapshot(seed: int) -> None:
    c, lagger, restores, cmds, chunks = partition_scenario(seed, 1_000, 100, 1024, persist_delay=seed % 3)
    c.heal()
    assert_converged(c, cmds)
    assert restores[lagger], "the lagging follower never installed a snapshot"
    assert restores[lagger][0] >= 900
    assert chunks[0] > 1 and chunks[1] >= 1
    for i in c.ids:
        if i != lagger:
            assert not restores[i]  # only the lagger was rebuilt from a snapshot


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_transfer_with_chunk_loss_duplication_and_reordering(seed: int) -> None:
    c, lagger, restores, cmds, chunks = partition_scenario(seed, 500, 100, 128)
    # Faults while the snapshot (tens of chunks) travels: loss, duplicates, and variable and
    # occasionally long delays, so chunks and acknowledgements arrive late, twice and out of order.
    c.network.set_faults(drop=0.2, duplicate=0.1, delay=(1, 12), long_delay_prob=0.05, long_delay=(20, 60))
    c.heal()
    c.run_until(lambda: restores[lagger], 3000, "the lagger installed a snapshot")
    assert chunks[0] > 20
    c.network.set_faults(drop=0.0, duplicate=0.0, delay=(1, 3), long_delay_prob=0.0)
    assert_converged(c, cmds)
    assert restores[lagger][0] >= 400
    dropped = c.network.dropped.get(MessageType.SNAPSHOT, 0)
    assert dropped + c.network.dropped.get(MessageType.SNAPSHOT_RESP, 0) > 0  # the faults did bite


@pytest.mark.parametrize("seed", SEEDS)
def test_receiver_crashes_in_the_middle_of_a_snapshot_transfer(seed: int) -> None:
    c, lagger, restores, cmds, chunks = partition_scenario(seed, 500, 100, 128, persist_delay=seed % 2)
    c.heal()
    target = 3 + seed % 7
    c.run_until(lambda: chunks[0] >= target, 300, f"{target} snapshot chunks delivered")
    # Mid-transfer: some chunks were received, the snapshot is not installed yet.
    assert chunks[1] == 0 and not restores[lagger]
    assert c.nodes[lagger].storage.snapshot is None
    assert len(c.nodes[lagger].storage.incoming) > 0  # part of the snapshot was received
    c.crash(lagger)
    c.run(5 + seed % 10)
    c.restart(lagger)
    assert c.state_machine(lagger).restored_from is None  # nothing durable to restore yet
    c.run_until(lambda: restores[lagger], 600, "the restarted lagger installed a snapshot")
    assert_converged(c, cmds)
    assert c.nodes[lagger].restarts == 1
    assert restores[lagger][0] >= 400


@pytest.mark.parametrize("seed", SEEDS)
def test_receiver_crashes_twice_during_transfers_with_loss(seed: int) -> None:
    c, lagger, restores, cmds, chunks = partition_scenario(seed, 300, 50, 96, drop=0.0)
    c.network.set_faults(drop=0.1, delay=(1, 6))
    c.heal()
    for n in (4, 12):
        c.run_until(lambda n=n: chunks[0] >= n or restores[lagger], 600, f"{n} chunks delivered")
        if restores[lagger]:
            break
        c.crash(lagger)
        c.run(3)
        c.restart(lagger)
    c.run_until(lambda: restores[lagger], 1000, "the lagger installed a snapshot")
    c.network.set_faults(drop=0.0, delay=(1, 3))
    assert_converged(c, cmds)
    assert c.nodes[lagger].restarts >= 1


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_racing_with_new_entries(seed: int) -> None:
    """Proposals keep flowing while the follower receives the snapshot. Even seeds: a trickle.
    Odd seeds: a flood, so the leader applies more than ``snapshot_entries`` new entries and
    compacts again in the middle of the transfer (a newer snapshot replaces the one being sent)."""
    every = 100
    c, lagger, restores, cmds, chunks = partition_scenario(seed, 500, every, 128)
    c.heal()
    c.run_until(lambda: chunks[0] >= 1, 300, "the transfer started")
    lead = c.leader()
    first_meta = c.raw(lead).snapshot_meta.index
    flood = seed % 2 == 1
    quota, burst = (3 * every, 10) if flood else (40, 1)
    during: list[bytes] = []
    before_install: int | None = None
    meta_at_install = first_meta
    while not restores[lagger] or len(during) < quota:
        assert c.ticks < 5000, "the follower never installed a snapshot while entries kept coming"
        for _ in range(burst if len(during) < quota else 0):
            cmd = b"r%d" % len(during)
            c.propose(cmd, lead)  # the leader stays: no faults but the past partition
            during.append(cmd)
        c.run(0.3)
        if restores[lagger] and before_install is None:
            before_install = len(during)
            meta_at_install = c.raw(lead).snapshot_meta.index
    assert c.leader() == lead
    assert chunks[1] >= 1
    assert before_install is not None and before_install > 0  # entries did race with the transfer
    installed = restores[lagger][0]
    assert installed >= first_meta
    assert_converged(c, cmds)
    # Everything proposed during the transfer was committed and reached the follower, whether
    # through the snapshot or through the log after it, in order.
    assert c.state_machine(lagger).commands[-len(during) - 1 : -1] == during
    if flood:
        assert meta_at_install > first_meta  # the leader compacted again before the install


def test_racing_entries_reach_the_follower_through_the_log_after_the_snapshot() -> None:
    """Entries proposed while the follower is installing lie past the snapshot's index: the
    follower must get them from the log after the install (the leader kept them)."""
    c, lagger, restores, cmds, chunks = partition_scenario(3, 500, 100, 128)
    c.heal()
    c.run_until(lambda: chunks[0] >= 2, 300, "the transfer started")
    sent_meta = c.raw(c.leader()).snapshot_meta.index
    racing = [b"x%d" % k for k in range(20)]
    indexes = [c.propose(cmd, c.leader())[0] for cmd in racing]
    assert min(indexes) > sent_meta
    c.run_until(lambda: restores[lagger], 600, "the lagger installed a snapshot")
    assert restores[lagger][0] < min(indexes)  # the snapshot does not cover them
    assert_converged(c, cmds + racing)
    sm = c.state_machine(lagger)
    assert sm.commands[-len(racing) - 1 : -1] == racing

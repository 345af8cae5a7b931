"""Thesis §10.2.1 / etcd's async storage writes, checked by the simulator.

With ``Config(async_storage_writes=True)`` a node takes its next Ready while earlier writes
are still in flight (they complete in order, after a random delay, and a crash loses the
ones in flight). The simulator's invariant checker runs after every event: no entry is
committed without a quorum holding it durably, no durable commit index beyond the durable
log, election safety, log matching, state machine safety. The rules the pipelining itself
must keep are checked directly: acknowledgements leave only after their write, the leader
counts itself only for durable entries, and entries are applied only once durable locally.
"""

from __future__ import annotations

import pytest

from raftlib.core import Config, Entry, MessageType, RawNode
from raftlib.testing import SimCluster
from raftlib.testing.chaos import chaos

RECOVERY_TICKS = 300


def run_chaos(seed: int) -> None:
    n = (3, 5)[seed % 2]
    c = SimCluster(
        n,
        seed=seed,
        drop=0.05 * (seed % 3),
        duplicate=0.02,
        delay=(1, 12),
        long_delay_prob=0.02,
        persist_delay=(1, 25),  # writes slower than messages: several in flight at once
        full_check_every=1000,
        config={"async_storage_writes": True}
        | ({"snapshot_entries": 8, "snapshot_trailing_entries": 2, "snapshot_chunk_bytes": 64}
           if seed % 3 == 0 else {}),
    )
    rep = chaos(c, rounds=20, recovery_ticks=RECOVERY_TICKS)
    assert rep.recovery_ticks <= RECOVERY_TICKS
    assert c.state_machine(c.ids[0]).data[-1] == b"after-chaos"
    assert all(c.state_machine(i).data == c.state_machine(c.ids[0]).data for i in c.ids)


@pytest.mark.parametrize("seed", range(40))
def test_async_writes_keep_raft_safe_under_random_faults(seed: int) -> None:
    """§5 safety (checked after every event) and progress once healed, with writes in flight."""
    run_chaos(20_000 + seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40, 400))
def test_async_writes_keep_raft_safe_under_random_faults_sweep(seed: int) -> None:
    run_chaos(20_000 + seed)


def leader_of_one() -> RawNode:
    node = RawNode(Config("a", voters=["a"], async_storage_writes=True))
    node.campaign()
    rd = node.ready()
    node.advance(rd)
    node.persisted(rd)
    while node.has_ready():
        rd = node.ready()
        node.advance(rd)
        node.persisted(rd)
    return node


def test_the_next_ready_is_taken_while_a_write_is_in_flight() -> None:
    node = leader_of_one()
    node.propose(b"x")
    first = node.ready()
    node.advance(first)  # its write still in flight
    node.propose(b"y")
    assert node.has_ready()
    second = node.ready()
    assert [e.data for e in first.entries] == [b"x"] and [e.data for e in second.entries] == [b"y"]
    node.advance(second)


def test_a_single_leader_commits_and_applies_only_what_is_durable() -> None:
    # One voter: its own acknowledgement is the quorum, and it comes only at persisted().
    node = leader_of_one()
    index, _ = node.propose(b"x")
    rd = node.ready()
    node.advance(rd)
    assert node.commit_index < index, "counted itself before its write was durable"
    node.persisted(rd)
    assert node.commit_index == index
    rd = node.ready()
    assert [e.data for e in rd.committed_entries] == [b"x"]
    node.advance(rd)


def test_a_follower_acknowledges_only_after_its_write_and_applies_only_durable_entries() -> None:
    from raftlib.core import Message

    f = RawNode(Config("b", voters=["a", "b", "c"], async_storage_writes=True))
    # The leader of term 1 sends two entries and a commit index covering them.
    f.step(Message(MessageType.APPEND, "a", "b", 1, index=0, log_term=0,
                   entries=[Entry(1, 1, b"x"), Entry(2, 1, b"y")], commit=2))
    rd = f.ready()
    assert [m.type for m in rd.messages if m.type is MessageType.APPEND_RESP] == []
    assert [m.type for m in rd.persisted_messages] == [MessageType.APPEND_RESP]
    assert rd.committed_entries == [], "committed but not yet durable here: not applied"
    f.advance(rd)
    assert not f.has_ready() or not f.ready().committed_entries
    f.persisted(rd)
    rd2 = f.ready()
    assert [e.data for e in rd2.committed_entries] == [b"x", b"y"]


def test_persisted_is_refused_in_the_classic_contract() -> None:
    node = RawNode(Config("a", voters=["a"]))
    node.campaign()
    rd = node.ready()
    with pytest.raises(RuntimeError, match="async_storage_writes"):
        node.persisted(rd)

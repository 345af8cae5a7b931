"""Snapshots and log compaction (§7 of the Raft paper), chunked transfer, rule by rule."""

from __future__ import annotations

import pytest
from core_harness import Harness

from raftlib.core import Config, MessageType, RawNode, Role
from raftlib.core.progress import ProgressState

ABC = ["a", "b", "c"]


def grow(h: Harness, leader: str, n: int, prefix: bytes = b"v") -> list[bytes]:
    datas = [prefix + b"%d" % i for i in range(n)]
    for d in datas:
        h.nodes[leader].propose(d)
        h.run()
    return datas


def lagging_cluster(trailing: int = 2, **cfg: object) -> tuple[Harness, list[bytes]]:
    """c is down while 40 entries commit and the leader compacts past them."""
    h = Harness(list(ABC), snapshot_trailing_entries=trailing, **cfg)
    h.elect("a")
    h.down = {"c"}
    datas = grow(h, "a", 40)
    h.tick(1)
    meta = h.snapshot("a")
    assert meta.index == h.nodes["a"].applied_index
    assert h.nodes["a"].first_index() == meta.index - trailing + 1
    return h, datas


def test_7_follower_behind_the_compacted_prefix_catches_up_by_snapshot() -> None:
    h, datas = lagging_cluster()
    h.down = set()
    h.tick(5)
    a, c = h.nodes["a"], h.nodes["c"]
    assert ("c", a.snapshot_meta.index) in h.installs  # type: ignore[union-attr]
    assert c.commit_index == a.commit_index
    assert h.applied["c"] == h.applied["a"]
    assert h.applied["c"][-40:] == datas
    assert a.status()["progress"]["c"]["state"] == "replicate"
    # New entries flow normally afterwards.
    a.propose(b"after")
    h.run()
    h.tick(1)
    assert h.applied["c"][-1] == b"after"


def test_7_snapshot_is_sent_in_bounded_chunks() -> None:
    h, _ = lagging_cluster()
    h.chunk_bytes = 50
    sizes: list[int] = []
    h.drop_filter = lambda m: (
        m.type is MessageType.SNAPSHOT and sizes.append(len(m.data)) is not None and False
    )
    h.down = set()
    h.tick(5)
    total = len(h.disks["a"].snapshots[h.nodes["a"].snapshot_meta.index])  # type: ignore[union-attr]
    assert len(sizes) >= total // 50
    assert max(sizes) <= 50
    assert h.applied["c"] == h.applied["a"]


def test_7_lost_chunks_are_resent() -> None:
    h, _ = lagging_cluster()
    counter = {"n": 0}

    def drop_every_third_chunk(m):  # type: ignore[no-untyped-def]
        if m.type is MessageType.SNAPSHOT:
            counter["n"] += 1
            return counter["n"] % 3 == 0
        return False

    h.drop_filter = drop_every_third_chunk
    h.down = set()
    h.tick(200)
    assert any(m.type is MessageType.SNAPSHOT for m in h.dropped)
    assert h.applied["c"] == h.applied["a"]


def test_7_reordered_and_duplicated_chunks_are_answered_with_the_expected_offset() -> None:
    h, _ = lagging_cluster()
    h.down = set()
    held: list = []
    h.drop_filter = lambda m: m.type is MessageType.SNAPSHOT and (held.append(m) or True)
    h.tick(1)
    assert held and held[0].offset == 0
    first = held[0]
    c = h.nodes["c"]
    c.step(first)
    c.step(first)  # a duplicate of chunk 0 restarts the incoming snapshot: harmless
    # A chunk at an offset the follower does not expect is refused with the offset it expects.
    later = type(first)(
        MessageType.SNAPSHOT, "a", "c", first.term, snapshot=first.snapshot,
        offset=len(first.data) + 5, data=b"zz", index=first.index, log_term=first.log_term,
    )
    c.step(later)
    rd = c.ready()
    rejects = [m for m in rd.messages if m.type is MessageType.SNAPSHOT_RESP and m.reject]
    assert [m.offset for m in rejects] == [len(first.data)]
    h.disks["c"].write(rd)
    c.advance(rd)
    h.drop_filter = lambda m: False
    h.queue.extend(rd.messages + rd.persisted_messages)
    h.tick(50)
    assert h.applied["c"] == h.applied["a"]


def test_7_crash_in_the_middle_of_receiving_a_snapshot_restarts_the_transfer() -> None:
    h, _ = lagging_cluster()
    h.chunk_bytes = 30
    h.down = set()
    got = {"n": 0}

    def crash_after_three(m):  # type: ignore[no-untyped-def]
        if m.type is MessageType.SNAPSHOT and m.to == "c":
            got["n"] += 1
        return got["n"] > 3 and "c" in (m.to, m.frm)

    h.drop_filter = crash_after_three
    h.tick(1)
    assert got["n"] > 3 and not h.installs
    h.restart("c")  # what c received of the snapshot was never installed: lost
    h.drop_filter = lambda m: False
    h.tick(200)
    assert h.installs and h.installs[-1][0] == "c"
    assert h.applied["c"] == h.applied["a"]


def test_7_snapshot_racing_with_entries_keeps_the_matching_suffix() -> None:
    h = Harness(list(ABC), snapshot_trailing_entries=0)
    a = h.elect("a")
    grow(h, "a", 10)
    h.tick(1)
    c = h.nodes["c"]
    # c already holds everything; a stale snapshot below its commit changes nothing.
    meta = h.snapshot("a")
    h.chunk_bytes = 10_000
    pr = a.raft.tracker.progress["c"]
    pr.become_snapshot(meta.index)
    pr.snapshot_meta = meta
    a.raft._send_snapshot_chunk("c", 0)
    h.run()
    assert c.last_index() == a.last_index() and c.commit_index == a.commit_index
    assert not [i for i in h.installs if i[0] == "c"]
    assert a.status()["progress"]["c"]["state"] in ("probe", "replicate")


def test_7_install_keeps_entries_after_the_snapshot_that_match_it() -> None:
    h = Harness(list(ABC), snapshot_trailing_entries=0)
    h.elect("a")
    grow(h, "a", 5)
    h.tick(1)
    c = h.nodes["c"]
    last = c.last_index()
    c.raft.log.committed = 2  # pretend c only knew of an early commit
    c.raft.log.applied = c.raft.log.applying = 2
    c.raft.log.install_snapshot(4, c.term_at(4))
    assert c.first_index() == 5 and c.last_index() == last


def test_compact_refuses_an_index_beyond_applied() -> None:
    n = RawNode(Config("a", voters=["a"]))
    with pytest.raises(ValueError, match="beyond the applied"):
        n.compact(5)


def test_should_snapshot_follows_the_entry_policy() -> None:
    h = Harness(["a"], snapshot_entries=5)
    a = h.elect("a")
    assert not a.should_snapshot()
    grow(h, "a", 5)
    assert a.should_snapshot()
    h.snapshot("a")
    assert not a.should_snapshot()


def test_restart_from_a_snapshot_restores_state_and_configuration() -> None:
    h, _ = lagging_cluster()
    h.down = set()
    h.tick(3)
    a_applied = list(h.applied["a"])
    a = h.restart("a")
    h.settle_readies()
    assert a.first_index() == h.disks["a"].snapshot.index + 1  # type: ignore[union-attr]
    assert h.applied["a"] == a_applied
    assert a.role is Role.FOLLOWER
    h.tick(40)
    assert h.leader() is not None


def test_snapshot_progress_state_is_reported() -> None:
    h, _ = lagging_cluster()
    h.drop_filter = lambda m: m.type is MessageType.SNAPSHOT_RESP
    h.down = set()
    h.tick(2)
    assert h.nodes["a"].raft.tracker.progress["c"].state is ProgressState.SNAPSHOT

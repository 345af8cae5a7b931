"""SharedLog: many Raft groups in one WAL, one fsync per write() for all of them.

Scenarios for each rule of docs/storage.md "Shared log (many groups)": round trips, group commit,
per-group truncation, snapshots, garbage collection of segments, removal, torn tails, corruption,
power cuts at random points, a model-based property test, and RaftNodes running on it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_node import FAST, KV, put
from test_storage_faults import Model as GModel  # one group's model: hs, entries, lo, snapshot

from raftlib import NodeConfig, RaftNode
from raftlib.core import Entry, HardState, Membership, SnapshotMeta
from raftlib.errors import StorageCorrupted
from raftlib.storage import GroupRemoved, SharedLog, StorageError
from raftlib.storage.faults import CountingFileOps, FaultyFileOps, PowerCut, PowerLossFileOps, bitflip
from raftlib.storage.shared import group_dir_name
from raftlib.transport.memory import MemoryNetwork, MemoryTransport

MEMBERS = Membership(frozenset({"n1", "n2", "n3"}))


def ents(lo: int, hi: int, term: int, tag: bytes = b"") -> list[Entry]:
    return [Entry(i, term, tag + b"entry %d" % i) for i in range(lo, hi)]


def key(entries: list[Entry]) -> list[tuple[int, int, int, bytes]]:
    return [(e.index, e.term, e.type, e.data) for e in entries]


def reopen(log: SharedLog, **kw: object) -> SharedLog:
    log.close()
    new = SharedLog(log.data_dir, **kw)  # type: ignore[arg-type]
    new.open()
    return new


# -- round trips and group commit --------------------------------------------------------------


def test_many_groups_round_trip_through_close_and_open(tmp_path: Path) -> None:
    log = SharedLog(tmp_path, segment_bytes=4096)
    log.open()
    gids = [f"group-{k}" for k in range(40)]
    for turn in range(1, 11):
        log.write(
            [(g, HardState(turn, "n1", turn - 1), ents(turn, turn + 1, turn, g.encode())) for g in gids]
        )
    assert len(log.segment_paths()) > 1  # the groups' records span several segments
    log = reopen(log)
    assert sorted(log.groups()) == sorted(gids)
    for g in gids:
        s = log.group(g)
        state = s.load()
        assert state.hard_state == HardState(10, "n1", 9)
        assert key(state.entries) == key([e for t in range(1, 11) for e in ents(t, t + 1, t, g.encode())])
        assert s.last_index() == 10
        assert key(s.entries(3, 5)) == key(state.entries[2:4])
        assert key(s.entries(0, 3)) == key(state.entries[:2]) and key(s.entries(9, 99)) == key(
            state.entries[8:]
        )
        assert s.entries(5, 2) == [] and s.entries(0, 0) == [] and s.entries(11, 20) == []
    log.close()


def test_one_fsync_per_write_however_many_groups_take_part(tmp_path: Path) -> None:
    ops = CountingFileOps()
    log = SharedLog(tmp_path, file_ops=ops)
    log.open()
    for n in (1, 10, 500):
        gids = [f"n{n}-{k}" for k in range(n)]
        for batch in (
            [(g, HardState(1, None, 0), ents(1, 3, 1)) for g in gids],  # n new groups
            [(g, None, ents(3, 4, 1)) for g in gids],  # entries only
            [(g, HardState(2, "n1", 2), []) for g in gids],  # hard states only
        ):
            syncs, writes, stats = ops.file_syncs, ops.writes, dict(log.stats)
            log.write(batch)
            assert ops.file_syncs - syncs == 1
            assert ops.writes - writes == 1
            assert log.stats["fsyncs"] - stats["fsyncs"] == 1
            assert log.stats["writes"] - stats["writes"] == 1
            assert log.stats["bytes_written"] > stats["bytes_written"]
    assert ops.dir_syncs >= 1  # the first segment's creation
    # sync=False (a commit-index-only hard state) writes but does not sync
    syncs = ops.file_syncs
    log.write([("n1-0", HardState(2, "n1", 3), [])], sync=False)
    assert ops.file_syncs == syncs
    log.close()


def test_an_empty_write_touches_nothing(tmp_path: Path) -> None:
    ops = CountingFileOps()
    log = SharedLog(tmp_path, file_ops=ops)
    log.open()
    before = (ops.writes, ops.file_syncs)
    log.write([])
    log.write([("g", None, [])])
    assert (ops.writes, ops.file_syncs) == before
    assert log.groups() == []
    log.close()


def test_a_view_alone_creates_no_durable_group(tmp_path: Path) -> None:
    log = SharedLog(tmp_path)
    log.open()
    view = log.group("quiet")
    assert view.load().entries == [] and log.groups() == []
    view.close()  # closing a view leaves the log open
    log.write([("loud", HardState(1, None, 0), [])])
    assert log.groups() == ["loud"]
    assert log.group("quiet") is not view
    log = reopen(log)
    assert log.groups() == ["loud"] and log.group("loud").load().hard_state == HardState(1, None, 0)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.group("loud")


def test_each_group_replaces_its_own_conflicting_suffix(tmp_path: Path) -> None:
    log = SharedLog(tmp_path)
    log.open()
    log.write([("a", HardState(1, "n1", 0), ents(1, 11, 1)), ("b", HardState(1, "n2", 0), ents(1, 6, 1))])
    # a new leader in group a overwrites 6..10; group b only appends; then a second section of a
    # in the same call (two Readies of one group in one loop turn) appends after the overwrite
    log.write(
        [
            ("a", HardState(2, "n3", 0), ents(6, 8, 2, b"new")),
            ("b", None, ents(6, 8, 1)),
            ("a", None, ents(8, 9, 2, b"new")),
        ]
    )
    assert log.group("a").last_index() == 8
    log = reopen(log)
    a, b = log.group("a").load(), log.group("b").load()
    assert key(a.entries) == key(ents(1, 6, 1) + ents(6, 9, 2, b"new"))
    assert a.hard_state == HardState(2, "n3", 0)
    assert key(b.entries) == key(ents(1, 8, 1))
    log.close()


def test_a_bad_section_rejects_the_whole_write(tmp_path: Path) -> None:
    log = SharedLog(tmp_path)
    log.open()
    log.write([("a", None, ents(1, 3, 1))])
    size = os.path.getsize(log.segment_paths()[-1])
    with pytest.raises(ValueError, match="group 'b'"):
        log.write([("a", None, ents(3, 5, 1)), ("b", None, ents(2, 3, 1))])  # b has a gap
    with pytest.raises(ValueError, match="not contiguous"):
        log.write([("a", None, [Entry(3, 1), Entry(5, 1)])])
    assert os.path.getsize(log.segment_paths()[-1]) == size
    assert log.group("a").last_index() == 2
    log.close()


@pytest.mark.parametrize("bad", ["", "x" * 256, "é" * 128, "\udc80", 7, None])
def test_invalid_group_ids_are_refused(tmp_path: Path, bad: object) -> None:
    with SharedLog(tmp_path) as log:
        with pytest.raises(ValueError):
            log.group(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            log.write([(bad, HardState(1, None, 0), [])])  # type: ignore[list-item]


def test_group_directory_names_are_safe_and_distinct() -> None:
    ids = ["a", "A", ".", "..", "a/b", "a%2Fb", "é", "x" * 255, "x" * 254 + "y", "with space", "-_"]
    names = [group_dir_name(g) for g in ids]
    assert len(set(names)) == len(ids)
    for n in names:
        assert n not in (".", "..") and "/" not in n and len(n) <= 100
        assert n == n.lower() or "%" in n  # upper case is escaped: safe on case-insensitive file systems


def test_ids_that_need_escaping_round_trip(tmp_path: Path) -> None:
    odd = ["../etc", "Ünïcode ✓", "UPPER", "upper", "x" * 255]
    with SharedLog(tmp_path) as log:
        for k, g in enumerate(odd):
            log.write([(g, HardState(1, None, 0), ents(1, 2 + k, 1))])
            log.group(g).save_snapshot(SnapshotMeta(1, 1, MEMBERS), [g.encode()])
    with SharedLog(tmp_path) as log:
        assert log.groups() == odd
        for k, g in enumerate(odd):
            assert log.group(g).last_index() == 1 + k
            assert log.group(g).open_snapshot(1).read() == g.encode()


# -- snapshots --------------------------------------------------------------------------------------


def _transfer(src_view: object, index: int, dst_view: object) -> SnapshotMeta:
    from raftlib.storage import Storage

    assert isinstance(src_view, Storage) and isinstance(dst_view, Storage)
    meta = src_view.latest_snapshot()
    assert meta is not None and meta.index == index
    dst_view.begin_incoming_snapshot(meta)
    offset = 0
    while True:
        data, done = src_view.read_snapshot_chunk(index, offset, 100)
        dst_view.write_incoming_chunk(offset, data)
        offset += len(data)
        if done:
            return meta


def test_snapshots_are_per_group_and_an_incoming_one_installs(tmp_path: Path) -> None:
    leader = SharedLog(tmp_path / "leader")
    follower = SharedLog(tmp_path / "follower")
    leader.open()
    follower.open()
    leader.write([(g, HardState(2, "n1", 20), ents(1, 21, 2, g.encode())) for g in ("a", "b")])
    leader.group("a").save_snapshot(SnapshotMeta(20, 2, MEMBERS), [b"state of a"])
    leader.group("b").save_snapshot(SnapshotMeta(15, 2, MEMBERS), [b"state of b"])
    assert leader.group("a").latest_snapshot() == SnapshotMeta(20, 2, MEMBERS)
    assert leader.group("b").open_snapshot(15).read() == b"state of b"
    with pytest.raises(FileNotFoundError):
        leader.group("a").open_snapshot(15)
    # the follower's group a has a stale log: the install drops it; group b is untouched
    follower.write([("a", HardState(1, "n2", 3), ents(1, 8, 1)), ("b", HardState(1, "n2", 3), ents(1, 4, 1))])
    meta = _transfer(leader.group("a"), 20, follower.group("a"))
    follower.group("a").install_incoming_snapshot(meta)
    assert follower.group("a").last_index() == 20
    follower.group("a").save(HardState(2, "n1", 20), ents(21, 23, 2))
    # a brand-new group can start from an incoming snapshot alone
    meta_b = _transfer(leader.group("b"), 15, follower.group("c"))
    follower.group("c").install_incoming_snapshot(meta_b)
    follower = reopen(follower)
    assert sorted(follower.groups()) == ["a", "b", "c"]
    a = follower.group("a").load()
    assert a.snapshot == meta and key(a.entries) == key(ents(21, 23, 2))
    assert follower.group("a").open_snapshot(20).read() == b"state of a"
    assert key(follower.group("b").load().entries) == key(ents(1, 4, 1))
    c = follower.group("c").load()
    assert c.snapshot == meta_b and c.entries == [] and follower.group("c").last_index() == 15
    leader.close()
    follower.close()


def test_a_snapshot_renamed_in_place_without_its_log_record_is_finished_at_open(tmp_path: Path) -> None:
    """Crash between the snapshot's rename and its INSTALL record: open applies the install rule."""
    src = SharedLog(tmp_path / "src")
    src.open()
    src.write([("g", HardState(3, "n1", 10), ents(1, 11, 3))])
    src.group("g").save_snapshot(SnapshotMeta(10, 3, MEMBERS), [b"ten"])
    log = SharedLog(tmp_path / "dst")
    log.open()
    log.write([("g", HardState(1, "n2", 2), ents(1, 5, 1)), ("h", HardState(1, None, 0), ents(1, 2, 1))])
    view = log.group("g")
    meta = _transfer(src.group("g"), 10, view)
    view._store(view._g()).finish_incoming(meta)  # the rename happened, the crash came before the record
    log = reopen(log)
    state = log.group("g").load()
    assert state.snapshot == meta and state.entries == [] and log.group("g").last_index() == 10
    log = reopen(log)  # and the finished rule is durable
    assert log.group("g").load().entries == [] and log.group("g").last_index() == 10
    assert key(log.group("h").load().entries) == key(ents(1, 2, 1))
    src.close()
    log.close()


# -- compaction and removal ------------------------------------------------------------------------


def _snap_and_compact(log: SharedLog, gid: str, index: int) -> None:
    view = log.group(gid)
    view.save_snapshot(SnapshotMeta(index, 1, MEMBERS), [b"%s@%d" % (gid.encode(), index)])
    view.compact(index + 1)


def test_a_segment_is_deleted_only_when_every_group_moved_past_it(tmp_path: Path) -> None:
    log = SharedLog(tmp_path, segment_bytes=1500)
    log.open()
    log.write([("idle", HardState(1, None, 0), ents(1, 3, 1))])
    for i in range(1, 61):
        log.write([("fast", HardState(1, None, i), ents(i, i + 1, 1)), ("lagging", None, ents(i, i + 1, 1))])
    first = log.segment_paths()[0]
    assert len(log.segment_paths()) >= 4
    _snap_and_compact(log, "fast", 60)
    assert log.segment_paths()[0] == first  # 'lagging' and 'idle' still need the oldest segment
    _snap_and_compact(log, "idle", 2)
    assert log.segment_paths()[0] == first  # 'lagging' still does
    _snap_and_compact(log, "lagging", 30)
    remaining = log.segment_paths()
    assert first not in remaining and not os.path.exists(first)
    assert len(remaining) >= 2  # the segments holding lagging's entries after 30 stay
    log.remove_group("lagging")  # removing the laggard frees everything but the active segment
    assert len(log.segment_paths()) == 1 and log.segment_paths()[0] >= remaining[-1]
    assert log.stats["segments"] == 1
    log = reopen(log)
    assert sorted(log.groups()) == ["fast", "idle"]
    fast = log.group("fast").load()
    assert fast.hard_state == HardState(1, None, 60) and fast.snapshot is not None
    assert [e.index for e in fast.entries if e.index > 60] == []
    assert log.group("fast").last_index() == 60 and log.group("idle").last_index() == 2
    log.write([("fast", None, ents(61, 62, 1))])
    log = reopen(log)
    assert key(log.group("fast").load().entries) == key(ents(61, 62, 1))
    log.close()


def test_compaction_with_a_thousand_groups_frees_segments(tmp_path: Path) -> None:
    log = SharedLog(tmp_path, segment_bytes=64 << 10, fsync=False)
    log.open()
    gids = [f"g{k:04d}" for k in range(1000)]
    for i in range(1, 6):
        log.write([(g, HardState(1, None, i), ents(i, i + 1, 1, b"x" * 20)) for g in gids])
    before = len(log.segment_paths())
    assert before >= 3
    for g in gids[:-1]:
        log.group(g).compact(6)  # no segment can go while the last group holds the oldest ones
    assert len(log.segment_paths()) == before
    log.group(gids[-1]).compact(6)
    assert len(log.segment_paths()) == 1
    log.close()


def test_remove_group_then_add_it_again_as_a_fresh_group(tmp_path: Path) -> None:
    log = SharedLog(tmp_path, segment_bytes=2000)
    log.open()
    log.write(
        [("g", HardState(5, "n1", 30), ents(1, 31, 5)), ("other", HardState(1, None, 0), ents(1, 2, 1))]
    )
    old_view = log.group("g")
    old_view.save_snapshot(SnapshotMeta(30, 5, MEMBERS), [b"old state"])
    gdir = tmp_path / "groups" / group_dir_name("g")
    assert gdir.exists()
    log.remove_group("g")
    assert not gdir.exists()
    assert log.groups() == ["other"]
    with pytest.raises(GroupRemoved):
        old_view.load()
    with pytest.raises(KeyError):
        log.remove_group("g")
    fresh = log.group("g")
    state = fresh.load()
    assert state.hard_state == HardState() and state.entries == [] and state.snapshot is None
    assert fresh.last_index() == 0
    fresh.save(HardState(1, "n2", 0), ents(1, 3, 1, b"fresh"))
    log = reopen(log)
    assert log.groups() == ["other", "g"]
    state = log.group("g").load()
    assert state.hard_state == HardState(1, "n2", 0) and state.snapshot is None
    assert key(state.entries) == key(ents(1, 3, 1, b"fresh"))
    log.remove_group("g")
    log = reopen(log)
    assert log.groups() == ["other"]
    log.close()


def test_a_removed_groups_leftover_directory_is_deleted_at_open(tmp_path: Path) -> None:
    """A crash after the REMOVE record but before the directory was deleted."""
    log = SharedLog(tmp_path)
    log.open()
    log.write([("g", HardState(1, None, 3), ents(1, 4, 1))])
    log.group("g").save_snapshot(SnapshotMeta(3, 1, MEMBERS), [b"s"])
    log.close()
    stray = tmp_path / "groups" / "never-logged" / "snap"
    stray.mkdir(parents=True)
    (stray / "junk.snap").write_bytes(b"junk")
    with SharedLog(tmp_path) as log:
        assert log.groups() == ["g"]
        assert not (tmp_path / "groups" / "never-logged").exists()
        assert log.group("g").latest_snapshot() == SnapshotMeta(3, 1, MEMBERS)


# -- crashes and corruption ------------------------------------------------------------------------


def test_torn_last_write_is_truncated_and_earlier_batches_survive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = SharedLog(tmp_path)
    log.open()
    gids = ["a", "b", "c", "d"]
    for t in (1, 2, 3):
        log.write([(g, HardState(t, None, t - 1), ents(t, t + 1, t)) for g in gids])
    seg = log.segment_paths()[-1]
    log.close()
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:
        f.truncate(size - 7)  # the third write was torn by the crash
    with caplog.at_level(logging.WARNING, logger="raftlib.storage"):
        log = SharedLog(tmp_path)
        log.open()
    assert "torn last record" in caplog.text
    for g in gids:
        state = log.group(g).load()
        assert state.hard_state == HardState(2, None, 1)
        assert key(state.entries) == key(ents(1, 2, 1) + ents(2, 3, 2))
    log.write([("a", None, ents(3, 4, 9))])
    log = reopen(log)
    assert key(log.group("a").load().entries)[-1] == (3, 9, 0, b"entry 3")
    log.close()


def test_a_corrupt_record_in_an_earlier_segment_fails_loudly_with_file_and_offset(tmp_path: Path) -> None:
    log = SharedLog(tmp_path, segment_bytes=600)
    log.open()
    for t in range(1, 20):
        log.write([(g, HardState(1, None, 0), ents(t, t + 1, 1)) for g in ("a", "b")])
    first = log.segment_paths()[0]
    assert len(log.segment_paths()) >= 3
    log.close()
    with open(first, "rb") as f:
        data = f.read()
    second_record = 9 + int.from_bytes(data[0:4], "little")
    bitflip(first, second_record + 20)
    with pytest.raises(StorageCorrupted) as info:
        SharedLog(tmp_path).open()
    assert info.value.path == first and info.value.offset == second_record
    # the lock was released: a fixed directory opens again in this process
    bitflip(first, second_record + 20)
    SharedLog(tmp_path).open()


def test_a_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    log = SharedLog(tmp_path, segment_bytes=400)
    log.open()
    for t in range(1, 20):
        log.write([("a", HardState(1, None, 0), ents(t, t + 1, 1))])
    paths = log.segment_paths()
    log.close()
    os.unlink(paths[1])
    with pytest.raises(StorageCorrupted, match="missing"):
        SharedLog(tmp_path).open()


def test_fsync_failure_fails_the_write_and_refuses_later_ones(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    log = SharedLog(tmp_path, file_ops=ops)
    log.open()
    log.write([("a", HardState(1, None, 0), ents(1, 3, 1)), ("b", HardState(1, None, 0), ents(1, 2, 1))])
    ops.fail_fsync = True
    with pytest.raises(StorageError):
        log.write([("a", None, ents(3, 4, 1)), ("b", None, ents(2, 3, 1))])
    ops.fail_fsync = False
    with pytest.raises(StorageError, match="restart required"):
        log.write([("a", None, ents(3, 4, 1))])
    with pytest.raises(StorageError, match="restart required"):
        log.group("b").save(None, ents(2, 3, 1))
    log.close()
    log = SharedLog(tmp_path)
    log.open()
    assert log.group("a").last_index() == 2 and log.group("b").last_index() == 1
    log.close()


def test_enospc_mid_write_cuts_the_partial_record_off_and_the_log_goes_on(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    log = SharedLog(tmp_path, file_ops=ops)
    log.open()
    log.write([(g, HardState(1, None, 0), ents(1, 3, 1)) for g in ("a", "b", "c")])
    seg = log.segment_paths()[-1]
    size = os.path.getsize(seg)
    ops.space = 50  # the next write is bigger: a short write, then ENOSPC
    with pytest.raises(StorageError) as info:
        log.write([(g, HardState(1, None, 2), ents(3, 9, 1)) for g in ("a", "b", "c")])
    assert info.value.errno == errno.ENOSPC and info.value.path == seg
    assert os.path.getsize(seg) == size
    assert all(log.group(g).last_index() == 2 for g in ("a", "b", "c"))
    ops.space = None  # space freed: writing goes on
    log.write([("b", None, ents(3, 4, 2))])
    log = reopen(log)
    assert [log.group(g).last_index() for g in ("a", "b", "c")] == [2, 3, 2]
    assert log.group("a").load().hard_state == HardState(1, None, 0)
    log.close()


_WRITER = """
import sys
from raftlib.core import Entry, HardState
from raftlib.storage import SharedLog

log = SharedLog(sys.argv[1], segment_bytes=8192)
log.open()
turn = 0
while True:
    turn += 1
    hs = HardState(turn, None, turn - 1)
    log.write([(f"g{k}", hs, [Entry(turn, turn, b"t%d" % turn)]) for k in range(30)])
    print(turn, flush=True)  # acknowledged
"""


def test_kill_9_while_writing_loses_no_acknowledged_write_of_any_group(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    acked = 0
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 150:
                break
    finally:
        proc.kill()  # SIGKILL: no cleanup in the writer
        proc.wait(timeout=30)
    assert acked >= 150
    with SharedLog(tmp_path) as log:
        assert sorted(log.groups()) == sorted(f"g{k}" for k in range(30))
        lasts = {log.group(g).last_index() for g in log.groups()}
        assert len(lasts) == 1  # every write() is all or nothing, for all 30 groups
        (last,) = lasts
        assert last >= acked  # a write acknowledged before the kill survives it
        for g in log.groups():
            st = log.group(g).load()
            assert [e.index for e in st.entries] == list(range(1, last + 1))
            assert st.hard_state == HardState(last, None, last - 1)


# -- power cut at random points --------------------------------------------------------------------


def last_of(gm: GModel) -> int:
    """The last index a group's model holds (its snapshot's when no entry follows)."""
    return gm.entries[-1].index if gm.entries else (gm.snapshot.index if gm.snapshot else 0)


Models = dict[str, GModel]
GIDS = [f"grp{k}" for k in range(8)]


def _view(m: Models) -> dict[str, tuple[HardState, list[tuple[int, int, int, bytes]]]]:
    return {g: (gm.hs, key([e for e in gm.entries if e.index >= gm.lo])) for g, gm in m.items()}


def _recovered(log: SharedLog, m: Models) -> dict[str, tuple[HardState, list[tuple[int, int, int, bytes]]]]:
    out = {}
    for g in log.groups():
        st = log.group(g).load()
        lo = m[g].lo if g in m else 1
        out[g] = (st.hard_state, key([e for e in st.entries if e.index >= lo]))
    return out


def _plan(rng: random.Random, log: SharedLog, m: Models, term: int) -> tuple[Models, Callable[[], None]]:
    after = {g: gm.copy() for g, gm in m.items()}
    roll = rng.random()
    if roll < 0.7 or not m:
        batch: list[tuple[str, HardState | None, list[Entry]]] = []
        for g in rng.sample(GIDS, rng.randint(1, 5)):
            gm = after.setdefault(g, GModel())
            last = last_of(gm)
            lo = last + 1
            committed = gm.hs.commit
            if rng.random() < 0.15 and last > committed + 1:  # a new leader overwrites uncommitted entries
                lo = rng.randint(committed + 1, last)
            new = ents(lo, lo + rng.randint(0, 6), term, bytes([rng.randrange(256)]))
            hs = (
                HardState(term, "n1", min(committed + rng.randint(0, 3), lo - 1))
                if rng.random() < 0.7
                else None
            )
            if not new and hs is None:
                hs = HardState(term, None, committed)
            if new:
                gm.entries = [e for e in gm.entries if e.index < lo] + new
            if hs is not None:
                gm.hs = hs
            batch.append((g, hs, new))
        return after, lambda: log.write(batch)
    g = rng.choice(sorted(m))
    gm = after[g]
    if roll < 0.82 and gm.hs.commit >= 1 and gm.entries and gm.entries[0].index <= gm.hs.commit:
        idx = gm.hs.commit
        meta = SnapshotMeta(idx, next(e.term for e in gm.entries if e.index == idx), MEMBERS)
        gm.snapshot = meta
        return after, lambda: log.group(g).save_snapshot(meta, [b"%s %d" % (g.encode(), idx)])
    if roll < 0.94 and gm.snapshot is not None:
        first = gm.snapshot.index + 1
        gm.lo = max(gm.lo, first)
        return after, lambda: log.group(g).compact(first)
    del after[g]
    return after, lambda: log.remove_group(g)


def test_power_cut_at_random_points_over_many_groups_loses_no_acknowledged_write(tmp_path: Path) -> None:
    outcomes = {"before": 0, "after": 0}
    for trial in range(100):
        rng = random.Random(trial)
        root = tmp_path / f"t{trial}"
        root.mkdir()
        ops = PowerLossFileOps(str(root), rng)
        seg_bytes = rng.choice([300, 1000, 1 << 20])
        log = SharedLog(root / "data", file_ops=ops, segment_bytes=seg_bytes)
        log.open()
        model: Models = {}
        term = 1
        for _ in range(rng.randint(0, 40)):
            model, action = _plan(rng, log, model, term)
            action()
            term += rng.random() < 0.1
        ops.crash_at = ops.mutations + rng.randint(1, 30)
        pending = model
        try:
            while True:
                pending, action = _plan(rng, log, model, term)
                action()
                model = pending  # the call returned: acknowledged
                term += rng.random() < 0.1
        except (PowerCut, StorageError):  # a storage wraps the cut in a StorageError
            assert ops.dead, f"trial {trial}: failed without a power cut"
        ops.power_loss()
        log2 = SharedLog(root / "data", file_ops=ops)
        log2.open()
        got_before, got_after = _recovered(log2, model), _recovered(log2, pending)
        assert got_before == _view(model) or got_after == _view(pending), f"trial {trial}"
        outcomes["before" if got_before == _view(model) else "after"] += 1
        for g in log2.groups():
            snap = log2.group(g).latest_snapshot()
            allowed = {m[g].snapshot for m in (model, pending) if g in m}
            assert snap in allowed | {None} if not any(allowed) else snap in allowed, f"trial {trial} {g}"
            if snap is not None:
                assert log2.group(g).open_snapshot(snap.index).read() == b"%s %d" % (g.encode(), snap.index)
        # the recovered log keeps working, for every group at once
        nxt = {g: log2.group(g).last_index() + 1 for g in log2.groups()}
        log2.write([(g, HardState(term + 1, "n1", 0), ents(n, n + 2, term + 1)) for g, n in nxt.items()])
        log2.close()
        with SharedLog(root / "data") as log3:
            for g, n in nxt.items():
                assert log3.group(g).last_index() == n + 1
    assert outcomes["before"] > 5 and outcomes["after"] > 0, outcomes


# -- model-based property test -------------------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "write", "snapshot", "compact", "remove", "reopen"]),
        st.lists(st.integers(0, 4), min_size=1, max_size=4, unique=True),
        st.integers(0, 5),  # how many entries
        st.integers(0, 4),  # how far back an overwrite reaches
        st.booleans(),  # with a hard state
    ),
    min_size=3,
    max_size=35,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_shared_log_matches_a_simple_model(ops: list[tuple[str, list[int], int, int, bool]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        log = SharedLog(d, segment_bytes=350, fsync=False)
        log.open()
        model: dict[str, GModel] = {}
        for step, (op, which, n, back, with_hs) in enumerate(ops):
            gids = [f"g{k}" for k in which]
            if op == "write":
                batch: list[tuple[str, HardState | None, list[Entry]]] = []
                for g in gids:
                    gm = model.setdefault(g, GModel())
                    last = last_of(gm)
                    floor = max(gm.hs.commit, gm.snapshot.index if gm.snapshot else 0, gm.lo - 1)
                    lo = max(floor + 1, last + 1 - back)
                    new = ents(lo, lo + n, step, g.encode())
                    if new:
                        gm.entries = [e for e in gm.entries if e.index < lo] + new
                    # the commit index never passes the last entry, nor goes back
                    hs = (
                        HardState(step, g, min(last_of(gm), gm.hs.commit + 2)) if with_hs or not new else None
                    )
                    if hs is not None:
                        gm.hs = hs
                    batch.append((g, hs, new))
                log.write(batch)
            elif op == "snapshot":
                for g in gids:
                    gm = model.get(g)
                    if (
                        gm is None
                        or gm.hs.commit == 0
                        or not gm.entries
                        or gm.entries[0].index > gm.hs.commit
                    ):
                        continue
                    idx = gm.hs.commit
                    gm.snapshot = SnapshotMeta(
                        idx, next(e.term for e in gm.entries if e.index == idx), MEMBERS
                    )
                    log.group(g).save_snapshot(gm.snapshot, [b"%d" % idx])
            elif op == "compact":
                for g in gids:
                    gm = model.get(g)
                    if gm is not None and gm.snapshot is not None:
                        gm.lo = max(gm.lo, gm.snapshot.index + 1)
                        log.group(g).compact(gm.snapshot.index + 1)
            elif op == "remove":
                for g in gids:
                    if g in model:
                        del model[g]
                        log.remove_group(g)
            else:
                log = reopen(log, segment_bytes=350, fsync=False)
                assert _recovered(log, model) == _view(model)
            assert sorted(log.groups()) == sorted(model)
            for g, gm in model.items():
                assert log.group(g).last_index() == last_of(gm)
                assert log.group(g).latest_snapshot() == gm.snapshot
        log = reopen(log, segment_bytes=350, fsync=False)
        assert _recovered(log, model) == _view(model)
        for g, gm in model.items():
            assert log.group(g).hard_state() == gm.hs
            assert key(log.group(g).entries(gm.lo, 10**9)) == key([e for e in gm.entries if e.index >= gm.lo])
        log.close()


# -- RaftNodes on shared logs ------------------------------------------------------------------------


async def test_two_raft_groups_of_three_nodes_share_one_log_per_host(tmp_path: Path) -> None:
    """Hosts h1..h3 each keep one SharedLog; groups "alpha" and "beta" each have a node on every host.

    With snapshots, compaction, a node that falls behind and catches up by snapshot, and restarts
    of every node (views closed and re-opened on the same log; then whole logs re-opened)."""
    hosts = ["n1", "n2", "n3"]
    groups = ["alpha", "beta"]
    cfg = NodeConfig(**{**FAST, "snapshot_entries": 30, "snapshot_trailing_entries": 3})
    logs = {h: SharedLog(tmp_path / h, segment_bytes=4096) for h in hosts}
    for lg in logs.values():
        lg.open()
    nets = {g: MemoryNetwork() for g in groups}
    members = {h: f"mem://{h}" for h in hosts}
    sms: dict[tuple[str, str], KV] = {}
    nodes: dict[tuple[str, str], RaftNode] = {}

    def make(h: str, g: str) -> RaftNode:
        sm = sms[h, g] = KV()
        node = RaftNode(
            h, members, sm, config=cfg, transport=MemoryTransport(h, nets[g]), storage=logs[h].group(g)
        )
        nodes[h, g] = node
        return node

    async def leader(g: str) -> RaftNode:
        async def find() -> RaftNode:
            while True:
                ls = [n for (h, gg), n in nodes.items() if gg == g and n.running and n.is_leader]
                if len(ls) == 1:
                    return ls[0]
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(find(), 10)

    try:
        for h in hosts:
            for g in groups:
                await make(h, g).start()
        lagger: dict[str, str] = {}
        for g in groups:  # a different lagging host per group: every host keeps one group's full history
            ld = await leader(g)
            lagger[g] = next(h for h in hosts if nodes[h, g] is not ld and h not in lagger.values())
            await nodes[lagger[g], g].stop()
        for i in range(100):
            leaders = [await leader(g) for g in groups]
            await asyncio.gather(
                *(ld.propose(put(f"{g}{i}", str(i))) for ld, g in zip(leaders, groups, strict=True))
            )
        for g in groups:
            ld = await leader(g)
            assert ld.metrics["snapshots_taken"] >= 2
            node = make(lagger[g], g)
            await node.start()
            await node.read_barrier(timeout=10)
            assert node.metrics["snapshots_installed"] >= 1
        # compaction (and, on a lagger's host, the installed snapshot) freed old segments everywhere
        stats = {h: dict(lg.stats) for h, lg in logs.items()}
        for h in hosts:
            if h not in lagger.values():
                assert stats[h]["segments_deleted"] >= 1, stats
        for key_ in list(nodes):
            await nodes[key_].stop()
        for h in hosts:  # restart everything on re-opened logs
            logs[h].close()
            logs[h] = SharedLog(tmp_path / h, segment_bytes=4096)
            logs[h].open()
            assert sorted(logs[h].groups()) == groups
        for h in hosts:
            for g in groups:
                await make(h, g).start()
        for g in groups:
            ld = await leader(g)
            await ld.propose(put(f"{g}-after", "restart"), timeout=10)
            for h in hosts:
                await nodes[h, g].read_barrier(timeout=10)
            datas = [sms[h, g].data for h in hosts]
            assert datas[0] == datas[1] == datas[2]
            assert datas[0][f"{g}99"] == "99" and datas[0][f"{g}-after"] == "restart"
            assert not any(k.startswith("beta" if g == "alpha" else "alpha") for k in datas[0])
    finally:
        for node in nodes.values():
            await node.stop()
        for lg in logs.values():
            lg.close()

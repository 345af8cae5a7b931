"""DiskStorage under failing disks: ENOSPC, fsync errors, and power cuts at random points."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_storage_support import FaultyFileOps, PowerCut, PowerLossFileOps

from raftlib.core import Entry, HardState, Membership, SnapshotMeta
from raftlib.storage import DiskStorage, StorageError

MEMBERS = Membership(frozenset({"n1", "n2", "n3"}))


def ents(lo: int, hi: int, term: int, tag: bytes = b"") -> list[Entry]:
    return [Entry(i, term, tag + b"entry %d " % i * 3) for i in range(lo, hi)]


def key(entries: list[Entry]) -> list[tuple[int, int, bytes]]:
    return [(e.index, e.term, e.data) for e in entries]


def test_enospc_mid_write_fails_the_save_and_leaves_previous_data(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    s = DiskStorage(tmp_path, fileops=ops)
    s.load()
    s.save(HardState(1, "n1", 0), ents(1, 11, 1))
    seg = Path(s.segment_paths()[-1])
    size = seg.stat().st_size
    ops.space = 100  # the next batch is bigger: a short write, then ENOSPC
    with pytest.raises(StorageError) as info:
        s.save(HardState(1, "n1", 10), ents(11, 21, 1))
    assert info.value.errno == errno.ENOSPC and info.value.path == str(seg)
    assert seg.stat().st_size == size  # the partial record was cut off again
    assert s.last_index() == 10
    ops.space = None  # space freed: the storage works again
    s.save(HardState(1, "n1", 10), ents(11, 13, 1, b"retry"))
    s.close()
    st = DiskStorage(tmp_path).load()
    assert key(st.entries) == key(ents(1, 11, 1) + ents(11, 13, 1, b"retry"))
    assert st.hard_state == HardState(1, "n1", 10)


def test_enospc_without_cleanup_recovers_without_the_failed_entries(tmp_path: Path) -> None:
    """Even if the process dies right after the short write, recovery drops the torn record."""

    class NoTruncate(FaultyFileOps):
        def ftruncate(self, fd: int, length: int) -> None:
            raise OSError(errno.EIO, "cannot truncate")

    ops = NoTruncate()
    s = DiskStorage(tmp_path, fileops=ops)
    s.load()
    s.save(HardState(1, "n1", 0), ents(1, 6, 1))
    ops.space = 30
    with pytest.raises(StorageError):
        s.save(None, ents(6, 20, 1))
    with pytest.raises(StorageError, match="restart required"):
        s.save(None, ents(6, 7, 1))
    st = DiskStorage(tmp_path).load()
    assert key(st.entries) == key(ents(1, 6, 1))


def test_enospc_when_starting_a_segment(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    s = DiskStorage(tmp_path, fileops=ops, segment_bytes=200)
    s.load()
    s.save(HardState(1, "n1", 0), ents(1, 6, 1))  # over 200 bytes: the next save starts a segment
    ops.space = 0
    with pytest.raises(StorageError) as info:
        s.save(None, ents(6, 7, 1))
    assert info.value.errno == errno.ENOSPC
    assert len(os.listdir(tmp_path / "wal")) == 1
    ops.space = None
    s.save(None, ents(6, 7, 1))
    assert len(s.segment_paths()) == 2
    s.close()
    assert key(DiskStorage(tmp_path).load().entries) == key(ents(1, 7, 1))


def test_fsync_failure_fails_the_save_and_refuses_later_writes(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    s = DiskStorage(tmp_path, fileops=ops)
    s.load()
    s.save(HardState(1, "n1", 0), ents(1, 6, 1))
    ops.fail_fsync = True
    with pytest.raises(StorageError) as info:
        s.save(HardState(2, "n1", 5), ents(6, 9, 2))
    assert info.value.errno == errno.EIO
    ops.fail_fsync = False  # even though fsync would work again now
    with pytest.raises(StorageError, match="fsync failed earlier; restart required"):
        s.save(None, ents(6, 7, 1))
    with pytest.raises(StorageError, match="restart required"):
        s.save_snapshot(SnapshotMeta(5, 1, MEMBERS), [b"x"])
    s.close()
    st = DiskStorage(tmp_path).load()  # a restart recovers from what is on disk
    assert key(st.entries) == key(ents(1, 6, 1))
    assert st.hard_state == HardState(1, "n1", 0)


def test_enospc_while_saving_a_snapshot_keeps_the_previous_one(tmp_path: Path) -> None:
    ops = FaultyFileOps()
    s = DiskStorage(tmp_path, fileops=ops)
    s.load()
    s.save(HardState(1, "n1", 20), ents(1, 21, 1))
    s.save_snapshot(SnapshotMeta(10, 1, MEMBERS), [b"ten"])
    ops.space = 5000
    with pytest.raises(StorageError) as info:
        s.save_snapshot(SnapshotMeta(20, 1, MEMBERS), (b"z" * 1000 for _ in range(100)))
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path / "snap")) == [f"{10:016x}-{1:016x}.snap"]
    assert s.latest_snapshot() == SnapshotMeta(10, 1, MEMBERS)
    ops.space = None
    s.close()
    s = DiskStorage(tmp_path)
    assert s.load().snapshot == SnapshotMeta(10, 1, MEMBERS)
    assert s.open_snapshot(10).read() == b"ten"


# -- power loss at random points --------------------------------------------------------------------------


@dataclass
class Model:
    """What the storage must contain: hard state, entries from ``lo`` on, latest snapshot."""

    hs: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    lo: int = 1
    snapshot: SnapshotMeta | None = None

    def copy(self) -> Model:
        return Model(self.hs, list(self.entries), self.lo, self.snapshot)

    def view(self) -> tuple[HardState, list[tuple[int, int, bytes]]]:
        return self.hs, key([e for e in self.entries if e.index >= self.lo])


def _plan(rng: random.Random, s: DiskStorage, m: Model, term: int) -> tuple[Model, Callable[[], None]]:
    """One random operation on ``s`` (not run yet), and the model as it is once it completes."""
    after = m.copy()
    last = m.entries[-1].index if m.entries else 0
    committed = m.hs.commit
    roll = rng.random()
    if roll < 0.75 or last < 5:
        lo = last + 1
        if roll < 0.15 and last > committed + 1:  # overwrite uncommitted entries (a new leader)
            lo = rng.randint(committed + 1, last)
        new = ents(lo, lo + rng.randint(0, 12), term, bytes([rng.randrange(256)]))
        hs = HardState(term, "n1", min(committed + rng.randint(0, 3), lo - 1)) if rng.random() < 0.7 else None
        if new:  # an empty batch truncates nothing
            after.entries = [e for e in m.entries if e.index < lo] + new
        if hs is not None:
            after.hs = hs
        return after, lambda: s.save(hs, new)
    elif roll < 0.9 and committed >= 1:
        idx = committed
        t = next(e.term for e in m.entries if e.index == idx)
        meta = SnapshotMeta(idx, t, MEMBERS)
        after.snapshot = meta
        return after, lambda: s.save_snapshot(meta, [b"state %d" % idx])
    elif m.snapshot is not None:
        first = m.snapshot.index + 1
        after.lo = max(m.lo, first)
        return after, lambda: s.compact(first)
    return after, lambda: None


def _step(rng: random.Random, s: DiskStorage, m: Model, term: int) -> Model:
    after, action = _plan(rng, s, m, term)
    action()
    return after


def test_power_cut_at_100_random_points_loses_no_acknowledged_save(tmp_path: Path) -> None:
    outcomes = {"before": 0, "after": 0}
    for trial in range(100):
        rng = random.Random(trial)
        root = tmp_path / f"t{trial}"
        root.mkdir()
        ops = PowerLossFileOps(str(root), rng)
        s = DiskStorage(root / "data", fileops=ops, segment_bytes=rng.choice([300, 1000, 1 << 20]))
        s.load()
        model = Model()
        term = 1
        # run for a while without faults, then cut the power at a random mutating call
        warmup = rng.randint(0, 30)
        ops.crash_at = None
        for _ in range(warmup):
            model = _step(rng, s, model, term)
            if rng.random() < 0.1:
                term += 1
        ops.crash_at = ops.mutations + rng.randint(1, 40)
        pending = model
        try:
            while True:
                pending, action = _plan(rng, s, model, term)
                action()
                model = pending  # the call returned: acknowledged
                if rng.random() < 0.1:
                    term += 1
        except PowerCut:
            pass
        ops.power_loss()
        s2 = DiskStorage(root / "data", fileops=ops)
        st = s2.load()
        got = (st.hard_state, key([e for e in st.entries if e.index >= model.lo]))
        assert got in (model.view(), pending.view()), f"trial {trial}"
        outcome = "before" if got == model.view() else "after"
        outcomes[outcome] += 1
        # the latest snapshot is either the acknowledged one or the one being written
        assert st.snapshot in (model.snapshot, pending.snapshot), f"trial {trial}"
        if st.snapshot is not None:
            assert s2.open_snapshot(st.snapshot.index).read() == b"state %d" % st.snapshot.index
        if st.entries and st.snapshot is None:
            assert st.entries[0].index == 1
        # and the recovered storage keeps working
        nxt = s2.last_index() + 1
        s2.save(HardState(term + 1, "n1", st.hard_state.commit), ents(nxt, nxt + 2, term + 1))
        s2.close()
        assert DiskStorage(root / "data").load().entries[-1].index == nxt + 1
    assert outcomes["before"] > 10 and outcomes["after"] > 0, outcomes

"""DiskStorage's write-ahead log: group commit, segments, compaction, recovery rules."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import pytest
from test_storage_support import CountingFileOps, FaultyFileOps

from raftlib.core import Entry, HardState, Membership, SnapshotMeta
from raftlib.errors import StorageCorrupted
from raftlib.storage import DiskStorage, MemoryStorage, StorageError

MEMBERS = Membership(frozenset({"n1", "n2", "n3"}))


def ents(lo: int, hi: int, term: int, size: int = 10) -> list[Entry]:
    return [Entry(i, term, (b"%d:" % i).ljust(size, b".")) for i in range(lo, hi)]


def key(entries: list[Entry]) -> list[tuple[int, int, int, bytes]]:
    return [(e.index, e.term, e.type, e.data) for e in entries]


def fill(s: DiskStorage, saves: int, per_save: int = 5, term: int = 1, size: int = 10) -> int:
    """``saves`` saves of ``per_save`` entries after the last index; returns the new last index."""
    for _ in range(saves):
        lo = s.last_index() + 1
        s.save(HardState(term, "n1", lo - 1), ents(lo, lo + per_save, term, size))
    return s.last_index()


# -- group commit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 64, 1024])
def test_one_write_and_one_fsync_per_save(tmp_path: Path, batch: int) -> None:
    ops = CountingFileOps()
    s = DiskStorage(tmp_path, fileops=ops)
    s.load()
    s.save(HardState(1, "n1", 0), ents(1, 2, 1))
    for k in range(5):
        ops.writes = ops.file_syncs = ops.dir_syncs = 0
        lo = s.last_index() + 1
        s.save(HardState(1, "n1", lo - 1), ents(lo, lo + batch, 1, 100))
        assert (ops.writes, ops.file_syncs, ops.dir_syncs) == (1, 1, 0), k


def test_empty_save_does_nothing(tmp_path: Path) -> None:
    ops = CountingFileOps()
    s = DiskStorage(tmp_path, fileops=ops)
    s.load()
    ops.writes = ops.file_syncs = 0
    s.save(None, [])
    assert (ops.writes, ops.file_syncs) == (0, 0)


def test_fsync_off_warns_and_never_syncs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ops = CountingFileOps()
    with caplog.at_level(logging.WARNING, logger="raftlib.storage"):
        s = DiskStorage(tmp_path, fsync=False, fileops=ops, segment_bytes=512)
    assert "NOT durable" in caplog.text
    s.load()
    fill(s, 50)
    assert ops.file_syncs == 0 and ops.dir_syncs == 0
    s.close()
    assert DiskStorage(tmp_path).load().entries[-1].index == 250


def test_save_from_another_thread(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.load()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            fill(s, 10)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors
    s.close()
    assert len(DiskStorage(tmp_path).load().entries) == 50


# -- segments -------------------------------------------------------------------------------------------


def test_rollover_and_replay_across_many_segments(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=1024)
    s.load()
    last = fill(s, 200, per_save=3, size=30)
    s.save(HardState(2, "n2", last - 20), ents(last - 10, last - 5, 2))  # an overwrite in a late segment
    paths = s.segment_paths()
    assert len(paths) > 20
    names = [os.path.basename(p) for p in paths]
    assert [int(n[:16], 16) for n in names] == list(range(1, len(names) + 1))
    firsts = [int(n[17:33], 16) for n in names]
    assert firsts == sorted(firsts) and firsts[0] == 1
    assert all(os.path.getsize(p) <= 1024 + 200 for p in paths)
    s.close()
    st = DiskStorage(tmp_path, segment_bytes=1024).load()
    assert key(st.entries) == key(ents(1, last - 10, 1, 30) + ents(last - 10, last - 5, 2))
    assert st.hard_state == HardState(2, "n2", last - 20)


def test_compact_deletes_exactly_the_covered_segments(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=1024)
    s.load()
    last = fill(s, 100, per_save=4, size=30)
    s.save_snapshot(SnapshotMeta(200, 1, MEMBERS), [b"state"])
    before = s.segment_paths()
    firsts = [int(os.path.basename(p)[17:33], 16) for p in before]
    # segment k holds entries firsts[k] .. firsts[k+1]-1: covered when firsts[k+1]-1 < 201
    expected_gone = [p for p, nxt in zip(before, firsts[1:], strict=False) if nxt - 1 < 201]
    assert 0 < len(expected_gone) < len(before) - 1
    s.compact(201)
    after = s.segment_paths()
    assert after == before[len(expected_gone) :]
    assert sorted(os.listdir(tmp_path / "wal")) == sorted(os.path.basename(p) for p in after)
    s.save(HardState(1, "n1", last), ents(last + 1, last + 3, 1, 30))
    s.close()
    st = DiskStorage(tmp_path, segment_bytes=1024).load()
    first_kept = int(os.path.basename(after[0])[17:33], 16)
    assert st.entries[0].index == first_kept <= 201
    assert key(st.entries) == key(ents(first_kept, last + 1, 1, 30) + ents(last + 1, last + 3, 1, 30))
    assert st.hard_state == HardState(1, "n1", last)
    assert st.snapshot == SnapshotMeta(200, 1, MEMBERS)


def test_compact_never_deletes_the_active_segment_and_keeps_the_hard_state(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=256)
    s.load()
    last = fill(s, 30, per_save=2)
    s.save(HardState(7, "n3", last), [])
    s.save_snapshot(SnapshotMeta(last, 1, MEMBERS), [b"all"])
    s.compact(last + 1)
    assert len(s.segment_paths()) == 1
    s.close()
    st = DiskStorage(tmp_path, segment_bytes=256).load()
    assert st.hard_state == HardState(7, "n3", last)
    assert all(e.index <= last for e in st.entries)


# -- recovery: torn tail vs corruption ------------------------------------------------------------------


def _last_save_bounds(tmp_path: Path) -> tuple[Path, int, int, list[Entry]]:
    """A WAL ending with one more save: (segment, start and end of its record, entries before it)."""
    s = DiskStorage(tmp_path / "orig")
    s.load()
    fill(s, 5, per_save=3)
    before = s.load().entries
    seg = Path(s.segment_paths()[-1])
    start = seg.stat().st_size
    s.save(HardState(1, "n1", 16), ents(16, 19, 1))
    end = seg.stat().st_size
    s.close()
    return seg, start, end, before


def test_torn_tail_at_every_offset_recovers_the_previous_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seg, start, end, before = _last_save_bounds(tmp_path)
    assert end - start > 40
    for cut in range(start + 1, end):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "orig", work)
        wseg = work / "wal" / seg.name
        os.truncate(wseg, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftlib.storage"):
            s = DiskStorage(work)
            st = s.load()
        assert key(st.entries) == key(before), cut
        assert "torn" in caplog.text and f"offset {start}" in caplog.text, cut
        assert wseg.stat().st_size == start
        s.save(None, ents(16, 17, 2))  # appends cleanly after the cut
        s.close()
        assert DiskStorage(work).load().entries[-1].term == 2
        shutil.rmtree(work)


def test_bad_crc_in_the_last_record_is_a_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seg, _start, end, before = _last_save_bounds(tmp_path)
    data = bytearray(seg.read_bytes())
    data[end - 3] ^= 0x01
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="raftlib.storage"):
        st = DiskStorage(tmp_path / "orig").load()
    assert key(st.entries) == key(before)
    assert "CRC mismatch" in caplog.text


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    seg, _start, end, _before = _last_save_bounds(tmp_path)
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    st = DiskStorage(tmp_path / "orig").load()
    assert st.entries[-1].index == 18
    assert seg.stat().st_size == end


def test_bad_crc_before_a_valid_record_is_corruption(tmp_path: Path) -> None:
    seg, start, end, _before = _last_save_bounds(tmp_path)
    data = bytearray(seg.read_bytes())
    data[start - 5] ^= 0x10  # inside the second-to-last record: the last one is intact
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted) as info:
        DiskStorage(tmp_path / "orig").load()
    err = info.value
    assert err.path == str(seg)
    assert 0 < err.offset < start
    assert "valid record follows" in err.detail
    assert seg.stat().st_size == end  # nothing was truncated


def test_corrupt_length_field_before_valid_records_is_corruption(tmp_path: Path) -> None:
    seg, start, _end, _before = _last_save_bounds(tmp_path)
    s = DiskStorage(tmp_path / "orig")
    s.save(None, ents(19, 20, 1))
    s.close()
    data = bytearray(seg.read_bytes())
    data[start + 2] = 0x7F  # the length of the second-to-last record now runs past the end of the file
    seg.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupted) as info:
        DiskStorage(tmp_path / "orig").load()
    assert info.value.offset == start


def test_any_bad_record_in_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=512)
    s.load()
    fill(s, 30)
    paths = s.segment_paths()
    s.close()
    assert len(paths) >= 3
    seg = Path(paths[1])
    size = seg.stat().st_size
    os.truncate(seg, size - 1)  # even its very last record
    with pytest.raises(StorageCorrupted) as info:
        DiskStorage(tmp_path, segment_bytes=512).load()
    assert info.value.path == str(seg)
    assert 0 < info.value.offset < size


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=512)
    s.load()
    fill(s, 30)
    paths = s.segment_paths()
    s.close()
    os.unlink(paths[1])
    with pytest.raises(StorageCorrupted, match="missing"):
        DiskStorage(tmp_path).load()


def test_an_interrupted_rollover_leaves_an_empty_segment_that_is_removed(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=512)
    s.load()
    fill(s, 30)
    before = s.load()
    paths = s.segment_paths()
    s.close()
    seq = len(paths) + 1
    partial = tmp_path / "wal" / f"{seq:016x}-{before.entries[-1].index + 1:016x}.wal"
    partial.write_bytes(b"\x20\x00\x00")  # a header record cut short
    st = DiskStorage(tmp_path, segment_bytes=512).load()
    assert key(st.entries) == key(before.entries)
    assert not partial.exists()


def test_a_crash_between_snapshot_install_and_the_log_update(tmp_path: Path) -> None:
    """The snapshot file is in place but the WAL never learned of it: load finishes the install rule."""
    leader = MemoryStorage()
    leader.save(HardState(2, "n1", 10), [Entry(i, 2) for i in range(1, 11)])
    meta = SnapshotMeta(10, 2, MEMBERS)
    leader.save_snapshot(meta, [b"leader state"])
    ops = FaultyFileOps()
    s = DiskStorage(tmp_path, fileops=ops)
    s.load()
    s.save(HardState(1, "n2", 3), ents(1, 16, 1))  # entry 10 has term 1: must all go
    s.begin_incoming_snapshot(meta)
    data, done = leader.read_snapshot_chunk(10, 0, 1 << 20)
    assert done
    s.write_incoming_chunk(0, data)
    ops.space = 0  # the WAL record of the install cannot be written
    with pytest.raises(StorageError):
        s.install_incoming_snapshot(meta)
    del s
    s2 = DiskStorage(tmp_path)
    st = s2.load()
    assert st.snapshot == meta and st.entries == []
    assert s2.last_index() == 10
    s2.save(HardState(2, "n2", 10), [Entry(11, 2, b"after")])
    s2.close()
    st = DiskStorage(tmp_path).load()  # the new entry must not be dropped by the old mismatch
    assert key(st.entries) == [(11, 2, 0, b"after")]

"""Snapshot files on disk: streaming in bounded memory, retention, corruption detection."""

from __future__ import annotations

import hashlib
import logging
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftlib.core import Entry, HardState, Membership, SnapshotMeta
from raftlib.errors import StorageCorrupted
from raftlib.storage import DiskStorage

MEMBERS = Membership(frozenset({"n1", "n2"}), learners=frozenset({"n3"}))
BODY = 8 << 20  # 8 MiB
CHUNK = 64 << 10


def body(size: int = BODY, chunk: int = CHUNK) -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        yield (off // chunk).to_bytes(4, "little") + block[4:n]


def digest(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def storage_with_log(path: Path, last: int = 100) -> DiskStorage:
    s = DiskStorage(path)
    s.load()
    s.save(HardState(3, "n1", last), [Entry(i, 3, b"x") for i in range(1, last + 1)])
    return s


def test_multi_megabyte_snapshot_streams_in_small_memory(tmp_path: Path) -> None:
    src = storage_with_log(tmp_path / "a")
    dst = storage_with_log(tmp_path / "b", last=10)
    meta = SnapshotMeta(100, 3, MEMBERS)
    expected = digest(body())
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        src.save_snapshot(meta, body())
        _, peak_save = tracemalloc.get_traced_memory()

        tracemalloc.reset_peak()
        dst.begin_incoming_snapshot(meta)
        offset = 0
        while True:
            data, done = src.read_snapshot_chunk(100, offset, CHUNK)
            dst.write_incoming_chunk(offset, data)
            offset += len(data)
            if done:
                break
        dst.install_incoming_snapshot(meta)
        _, peak_send = tracemalloc.get_traced_memory()

        tracemalloc.reset_peak()
        with dst.open_snapshot(100) as f:
            got = digest(iter(lambda: f.read(CHUNK), b""))
        _, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == expected
    assert offset > BODY
    limit = 2 << 20  # the body is 8 MiB; nothing may hold a quarter of it
    assert peak_save < limit and peak_send < limit and peak_read < limit, (peak_save, peak_send, peak_read)
    dst.close()
    st = DiskStorage(tmp_path / "b").load()
    assert st.snapshot == meta and st.entries == []


def test_snapshot_file_layout_and_retention(tmp_path: Path) -> None:
    s = storage_with_log(tmp_path, last=40)
    for i in (10, 20, 30, 40):
        s.save_snapshot(SnapshotMeta(i, 3, MEMBERS), [b"s%d" % i])
    names = sorted(os.listdir(tmp_path / "snap"))
    assert names == sorted([f"{30:016x}-{3:016x}.snap", f"{40:016x}-{3:016x}.snap"])
    raw = (tmp_path / "snap" / names[-1]).read_bytes()
    assert raw.startswith(b"RAFTSNAP") and raw.endswith(b"s40")


def test_keep_snapshots_is_configurable(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, keep_snapshots=1)
    s.load()
    s.save(HardState(1, "n1", 5), [Entry(i, 1) for i in range(1, 6)])
    s.save_snapshot(SnapshotMeta(3, 1, MEMBERS), [b"a"])
    s.save_snapshot(SnapshotMeta(5, 1, MEMBERS), [b"b"])
    assert os.listdir(tmp_path / "snap") == [f"{5:016x}-{1:016x}.snap"]


def _one_snapshot(tmp_path: Path) -> Path:
    s = storage_with_log(tmp_path)
    s.save_snapshot(SnapshotMeta(100, 3, MEMBERS), body(1 << 20))
    s.close()
    return tmp_path / "snap" / f"{100:016x}-{3:016x}.snap"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_flipped_body_bit_is_detected_on_open(tmp_path: Path) -> None:
    path = _one_snapshot(tmp_path)
    _flip(path, path.stat().st_size - 1000)
    s = DiskStorage(tmp_path)
    assert s.load().snapshot == SnapshotMeta(100, 3, MEMBERS)  # the header is fine
    with pytest.raises(StorageCorrupted) as info:
        s.open_snapshot(100)
    assert info.value.path == str(path) and "CRC" in info.value.detail


def test_a_truncated_snapshot_is_detected_on_open(tmp_path: Path) -> None:
    path = _one_snapshot(tmp_path)
    os.truncate(path, path.stat().st_size - 1)
    s = DiskStorage(tmp_path)
    s.load()
    with pytest.raises(StorageCorrupted, match="truncated"):
        s.open_snapshot(100)


def test_a_damaged_header_of_the_latest_snapshot_stops_the_load(tmp_path: Path) -> None:
    path = _one_snapshot(tmp_path)
    _flip(path, 40)  # inside the meta JSON
    with pytest.raises(StorageCorrupted) as info:
        DiskStorage(tmp_path).load()
    assert info.value.path == str(path)


def test_a_damaged_older_snapshot_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = storage_with_log(tmp_path)
    s.save_snapshot(SnapshotMeta(50, 3, MEMBERS), [b"old"])
    s.save_snapshot(SnapshotMeta(100, 3, MEMBERS), [b"new"])
    s.close()
    _flip(tmp_path / "snap" / f"{50:016x}-{3:016x}.snap", 0)
    with caplog.at_level(logging.WARNING, logger="raftlib.storage"):
        s = DiskStorage(tmp_path)
        assert s.load().snapshot == SnapshotMeta(100, 3, MEMBERS)
    assert "damaged older snapshot" in caplog.text
    with pytest.raises(FileNotFoundError):
        s.open_snapshot(50)


def test_leftover_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    s = storage_with_log(tmp_path)
    s.save_snapshot(SnapshotMeta(50, 3, MEMBERS), [b"kept"])
    s.begin_incoming_snapshot(SnapshotMeta(90, 4, MEMBERS))
    s.write_incoming_chunk(0, b"partial")
    (tmp_path / "snap" / f"{99:016x}-{3:016x}.snap.tmp").write_bytes(b"half a local snapshot")
    del s  # crash: nothing finalized
    s2 = DiskStorage(tmp_path)
    assert s2.load().snapshot == SnapshotMeta(50, 3, MEMBERS)
    assert os.listdir(tmp_path / "snap") == [f"{50:016x}-{3:016x}.snap"]


def test_install_checks_the_meta_it_is_given(tmp_path: Path) -> None:
    src = storage_with_log(tmp_path / "a")
    src.save_snapshot(SnapshotMeta(100, 3, MEMBERS), [b"abc"])
    data, done = src.read_snapshot_chunk(100, 0, 1 << 20)
    assert done
    dst = storage_with_log(tmp_path / "b", last=5)
    wrong = SnapshotMeta(100, 4, MEMBERS)
    dst.begin_incoming_snapshot(wrong)
    dst.write_incoming_chunk(0, data)
    with pytest.raises(StorageCorrupted, match="expected"):
        dst.install_incoming_snapshot(wrong)
    assert dst.latest_snapshot() is None and dst.last_index() == 5
    assert os.listdir(tmp_path / "b" / "snap") == []

"""Behaviour every Storage must have: DiskStorage, MemoryStorage and a SharedLog group alike."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftlib.core import Entry, HardState, Membership, SnapshotMeta
from raftlib.errors import StorageCorrupted
from raftlib.storage import DiskStorage, MemoryStorage, SharedLog, Storage

MEMBERS = Membership(frozenset({"n1", "n2", "n3"}))


class Backend:
    """Opens and re-opens (after close or a crash) one kind of storage."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.dir = tmp_path / "data"
        self._mem: MemoryStorage | None = None
        self._shared: SharedLog | None = None

    def open(self) -> Storage:
        if self.kind == "disk":
            return DiskStorage(self.dir, segment_bytes=4096)
        if self.kind == "shared":
            # The group under test shares its log with another group that has data of its own.
            if self._shared is not None:
                self._shared.close()
            self._shared = SharedLog(self.dir, segment_bytes=4096)
            self._shared.open()
            if "other" not in self._shared.groups():
                self._shared.write([("other", HardState(7, "n9", 2), ents(1, 4, 7, b"other"))])
            return self._shared.group("g1")
        if self._mem is None:
            self._mem = MemoryStorage()
        else:
            self._mem.crash()
        return self._mem

    def reopen(self, s: Storage) -> Storage:
        s.close()
        return self.open()


@pytest.fixture(params=["disk", "memory", "shared"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path)


def ents(lo: int, hi: int, term: int, tag: bytes = b"") -> list[Entry]:
    return [Entry(i, term, tag + b"e%d" % i) for i in range(lo, hi)]


def key(entries: list[Entry]) -> list[tuple[int, int, int, bytes]]:
    return [(e.index, e.term, e.type, e.data) for e in entries]


def body_chunks(size: int, chunk: int = 1000) -> Iterator[bytes]:
    for off in range(0, size, chunk):
        yield bytes((off // chunk + k) % 251 for k in range(min(chunk, size - off)))


def test_empty_storage_loads_empty(backend: Backend) -> None:
    s = backend.open()
    st = s.load()
    assert st.hard_state == HardState() and st.entries == [] and st.snapshot is None
    assert s.last_index() == 0


def test_round_trip_across_reopen(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 0), ents(1, 4, 1))
    s.save(HardState(2, None, 3), [Entry(4, 2, b"conf", type=1), *ents(5, 8, 2)])
    s.save(HardState(2, "n2", 7), [])
    s = backend.reopen(s)
    st = s.load()
    assert st.hard_state == HardState(2, "n2", 7)
    assert key(st.entries) == key([*ents(1, 4, 1), Entry(4, 2, b"conf", type=1), *ents(5, 8, 2)])
    assert s.last_index() == 7
    assert key(s.entries(3, 6)) == key(st.entries[2:5])


def test_overwrite_replays_as_truncate_then_append(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 0), ents(1, 11, 1))
    s.save(HardState(2, "n2", 0), ents(6, 8, 2, b"new"))  # replaces 6..10
    assert s.last_index() == 7
    s.save(None, ents(8, 9, 2, b"new"))
    s = backend.reopen(s)
    st = s.load()
    assert key(st.entries) == key(ents(1, 6, 1) + ents(6, 9, 2, b"new"))
    assert st.hard_state == HardState(2, "n2", 0)


def test_save_rejects_gaps_and_non_contiguous_batches(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(None, ents(1, 3, 1))
    with pytest.raises(ValueError):
        s.save(None, ents(5, 6, 1))
    with pytest.raises(ValueError):
        s.save(None, [Entry(3, 1), Entry(5, 1)])
    assert s.last_index() == 2


def test_snapshot_round_trip_in_chunks(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 10), ents(1, 11, 1))
    meta = SnapshotMeta(8, 1, MEMBERS)
    body = b"".join(body_chunks(50_000))
    s.save_snapshot(meta, body_chunks(50_000))
    assert s.latest_snapshot() == meta
    with s.open_snapshot(8) as f:
        assert f.read() == body
    # the stored form, sent in chunks, installs on another storage of either kind
    sent = bytearray()
    offset = 0
    while True:
        data, done = s.read_snapshot_chunk(8, offset, 4096)
        sent += data
        offset += len(data)
        if done:
            break
    assert len(sent) > len(body)
    s = backend.reopen(s)
    st = s.load()
    assert st.snapshot == meta
    assert [e.index for e in st.entries][-1] == 10


def test_open_missing_snapshot_raises_file_not_found(backend: Backend) -> None:
    s = backend.open()
    s.load()
    with pytest.raises(FileNotFoundError):
        s.open_snapshot(5)
    with pytest.raises(FileNotFoundError):
        s.read_snapshot_chunk(5, 0, 10)


def test_keeps_the_newest_two_snapshots(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 30), ents(1, 31, 1))
    for i in (10, 20, 30):
        s.save_snapshot(SnapshotMeta(i, 1, MEMBERS), [b"state at %d" % i])
    with pytest.raises(FileNotFoundError):
        s.open_snapshot(10)
    assert s.open_snapshot(20).read() == b"state at 20"
    assert s.latest_snapshot() == SnapshotMeta(30, 1, MEMBERS)


def _send(src: Storage, index: int, dst: Storage, chunk: int = 777) -> SnapshotMeta:
    meta = src.latest_snapshot()
    assert meta is not None and meta.index == index
    dst.begin_incoming_snapshot(meta)
    offset = 0
    while True:
        data, done = src.read_snapshot_chunk(index, offset, chunk)
        dst.write_incoming_chunk(offset, data)
        offset += len(data)
        if done:
            return meta


def _leader_with_snapshot(index: int, term: int) -> MemoryStorage:
    leader = MemoryStorage()
    leader.save(
        HardState(term, "n1", index), [Entry(i, 1 if i < index else term) for i in range(1, index + 1)]
    )
    leader.save_snapshot(SnapshotMeta(index, term, MEMBERS), body_chunks(20_000))
    return leader


def test_install_keeps_the_suffix_when_the_entry_at_the_index_matches(backend: Backend) -> None:
    leader = _leader_with_snapshot(10, 2)
    s = backend.open()
    s.load()
    s.save(HardState(2, "n1", 5), ents(1, 10, 1) + ents(10, 16, 2))  # entry 10 has term 2
    meta = _send(leader, 10, s)
    s.install_incoming_snapshot(meta)
    assert s.latest_snapshot() == meta and s.last_index() == 15
    s = backend.reopen(s)
    st = s.load()
    assert st.snapshot == meta
    assert key([e for e in st.entries if e.index > 10]) == key(ents(11, 16, 2))
    assert s.open_snapshot(10).read() == b"".join(body_chunks(20_000))


def test_install_drops_everything_when_the_entry_at_the_index_differs(backend: Backend) -> None:
    leader = _leader_with_snapshot(10, 2)
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 5), ents(1, 16, 1))  # entry 10 has term 1
    meta = _send(leader, 10, s)
    s.install_incoming_snapshot(meta)
    assert s.last_index() == 10
    s.save(HardState(2, "n1", 10), ents(11, 13, 2))
    s = backend.reopen(s)
    st = s.load()
    assert st.snapshot == meta
    assert key(st.entries) == key(ents(11, 13, 2))
    assert st.hard_state == HardState(2, "n1", 10)


def test_install_drops_everything_when_the_log_is_shorter(backend: Backend) -> None:
    leader = _leader_with_snapshot(10, 2)
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 3), ents(1, 6, 1))
    s.install_incoming_snapshot(_send(leader, 10, s))
    assert s.last_index() == 10
    s = backend.reopen(s)
    assert s.load().entries == []
    assert s.last_index() == 10


def test_chunks_must_arrive_in_order(backend: Backend) -> None:
    s = backend.open()
    s.load()
    with pytest.raises(ValueError):
        s.write_incoming_chunk(0, b"x")  # nothing begun
    s.begin_incoming_snapshot(SnapshotMeta(5, 1, MEMBERS))
    s.write_incoming_chunk(0, b"abc")
    with pytest.raises(ValueError):
        s.write_incoming_chunk(10, b"def")


def test_interrupted_incoming_snapshot_leaves_the_previous_one(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 10), ents(1, 11, 1))
    old = SnapshotMeta(5, 1, MEMBERS)
    s.save_snapshot(old, [b"old state"])
    leader = _leader_with_snapshot(20, 2)
    meta = leader.latest_snapshot()
    assert meta is not None
    s.begin_incoming_snapshot(meta)
    data, done = leader.read_snapshot_chunk(20, 0, 1000)
    assert not done
    s.write_incoming_chunk(0, data)
    s = backend.reopen(s)  # crash before the last chunk
    st = s.load()
    assert st.snapshot == old
    assert s.open_snapshot(5).read() == b"old state"
    assert key(st.entries) == key(ents(1, 11, 1))
    with pytest.raises(ValueError):
        s.write_incoming_chunk(1000, b"more")  # the partial one is gone


def test_a_damaged_transfer_is_refused(backend: Backend) -> None:
    leader = _leader_with_snapshot(10, 2)
    meta = leader.latest_snapshot()
    assert meta is not None
    blob = bytearray()
    off = 0
    while True:
        data, done = leader.read_snapshot_chunk(10, off, 5000)
        blob += data
        off += len(data)
        if done:
            break
    blob[len(blob) // 2] ^= 0x40
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 3), ents(1, 6, 1))
    s.begin_incoming_snapshot(meta)
    s.write_incoming_chunk(0, bytes(blob))
    with pytest.raises(StorageCorrupted):
        s.install_incoming_snapshot(meta)
    assert s.latest_snapshot() is None
    assert s.last_index() == 5


def test_compact_keeps_everything_from_first_index(backend: Backend) -> None:
    s = backend.open()
    s.load()
    for i in range(1, 201, 10):
        s.save(HardState(1, "n1", i), ents(i, i + 10, 1, b"x" * 50))
    s.save_snapshot(SnapshotMeta(150, 1, MEMBERS), [b"s"])
    s.compact(151)
    s.save(None, ents(201, 205, 1))
    s = backend.reopen(s)
    st = s.load()
    assert st.entries[0].index <= 151
    assert key([e for e in st.entries if e.index >= 151]) == key(
        ents(151, 201, 1, b"x" * 50) + ents(201, 205, 1)
    )
    assert st.hard_state == HardState(1, "n1", 191)


def test_snapshot_reader_is_a_binary_file(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(HardState(1, "n1", 3), ents(1, 4, 1))
    s.save_snapshot(SnapshotMeta(3, 1, MEMBERS), [b"hello ", b"world"])
    f = s.open_snapshot(3)
    assert f.read(6) == b"hello "
    assert f.read() == b"world"
    f.close()
    assert isinstance(s.open_snapshot(3), io.IOBase)


def test_hard_state_vote_none_and_empty_string_differ(backend: Backend) -> None:
    s = backend.open()
    s.load()
    s.save(HardState(3, "", 0), [])
    s = backend.reopen(s)
    assert s.load().hard_state == HardState(3, "", 0)
    s.save(HardState(4, None, 0), [])
    s = backend.reopen(s)
    assert s.load().hard_state == HardState(4, None, 0)


def test_both_kinds_satisfy_the_protocol() -> None:
    assert isinstance(MemoryStorage(), Storage)
    assert isinstance(DiskStorage(os.devnull + "-never-created"), Storage)


def test_group_storage_satisfies_the_protocol(tmp_path: Path) -> None:
    with SharedLog(tmp_path) as shared:
        assert isinstance(shared.group("g"), Storage)

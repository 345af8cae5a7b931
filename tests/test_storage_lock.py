"""The data-directory lock (raftlib/storage/lock.py) and the read-only view (raftlib/storage/readonly.py).

Rules checked:

* DiskStorage holds ``<data_dir>/LOCK`` from load to close; another process
  cannot take it (DataDirLocked with the holder's pid) and can after close;
* inside one process the lock is shared (tests reopen a directory to
  simulate a restart) and only the last release unlocks;
* ``lock_holder`` probes without taking or breaking anything;
* a process that dies never leaves a stale lock;
* ``open_read_only`` loads exactly what a start loads and changes nothing,
  listing the repairs a start would make instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raftlib.core import Entry, HardState
from raftlib.errors import StorageCorrupted
from raftlib.storage import DiskStorage
from raftlib.storage.lock import DataDirLock, DataDirLocked, lock_holder
from raftlib.storage.readonly import open_read_only

TRY_LOCK = textwrap.dedent(
    """
    import sys
    from raftlib.storage.lock import DataDirLock, DataDirLocked
    try:
        DataDirLock.acquire(sys.argv[1]).release()
    except DataDirLocked as exc:
        print("locked", exc.pid)
    else:
        print("free")
    """
)


def other_process_try(path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout.strip()


def digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_disk_storage_holds_the_lock_from_load_to_close(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    assert lock_holder(tmp_path) is None
    s.load()
    assert lock_holder(tmp_path) == os.getpid()
    assert other_process_try(tmp_path) == f"locked {os.getpid()}"
    s.close()
    assert lock_holder(tmp_path) is None
    assert other_process_try(tmp_path) == "free"


def test_reopening_in_the_same_process_shares_the_lock_until_the_last_release(tmp_path: Path) -> None:
    a = DiskStorage(tmp_path)
    a.load()
    b = DiskStorage(tmp_path)  # a simulated restart while the old instance is still open
    b.load()
    a.close()
    assert other_process_try(tmp_path) == f"locked {os.getpid()}"  # b still holds it
    b.close()
    assert other_process_try(tmp_path) == "free"


def test_a_lock_held_elsewhere_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from raftlib.storage.lock import DataDirLock;"
            "DataDirLock.acquire(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirLocked) as info:
            DataDirLock.acquire(tmp_path)
        assert info.value.pid == holder.pid
        assert lock_holder(tmp_path) == holder.pid
        with pytest.raises(DataDirLocked):
            DiskStorage(tmp_path).load()
    finally:
        holder.kill()  # a dead process leaves no stale lock
        holder.wait(timeout=30)
    assert lock_holder(tmp_path) is None
    DataDirLock.acquire(tmp_path).release()


def test_a_start_that_fails_leaves_the_directory_free(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=64)
    for i in range(1, 4):
        s.save(HardState(1, None, i - 1), [Entry(i, 1, b"x" * 40)])
    s.close()
    first = sorted((tmp_path / "wal").iterdir())[0]
    first.write_bytes(first.read_bytes()[:-1] + b"\x00")  # an earlier segment damaged: corruption
    broken = DiskStorage(tmp_path)
    with pytest.raises(StorageCorrupted):
        broken.load()
    assert lock_holder(tmp_path) is None  # not left held until close()
    assert other_process_try(tmp_path) == "free"


def test_release_is_idempotent(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path)
    other = DataDirLock.acquire(tmp_path)
    lock.release()
    lock.release()  # must not release ``other``'s share
    assert lock_holder(tmp_path) == os.getpid()
    other.release()
    assert lock_holder(tmp_path) is None


def test_read_only_open_loads_what_a_start_loads_and_changes_nothing(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.save(HardState(3, "a", 2), [Entry(1, 3, b"one"), Entry(2, 3, b"two")])
    s.close()
    seg = next((tmp_path / "wal").iterdir())
    with open(seg, "ab") as f:
        f.write(b"\x10\x00\x00")  # a torn tail
    (tmp_path / "snap" / "x.snap.tmp").write_bytes(b"unfinished")
    before = digest(tmp_path)
    storage, state, ops = open_read_only(tmp_path)
    storage.close()
    assert state.hard_state == HardState(3, "a", 2)
    assert [e.data for e in state.entries] == [b"one", b"two"]
    assert digest(tmp_path) == before
    actions = {(w.action, os.path.basename(w.path)) for w in ops.withheld}
    assert ("truncate", seg.name) in actions and ("unlink", "x.snap.tmp") in actions
    assert lock_holder(tmp_path) is None  # read-only opens take no lock


def test_read_only_open_raises_where_a_start_would(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=64)
    for i in range(1, 6):
        s.save(HardState(1, None, i - 1), [Entry(i, 1, b"x" * 40)])
    s.close()
    first = sorted((tmp_path / "wal").iterdir())[0]
    raw = bytearray(first.read_bytes())
    raw[-1] ^= 0xFF  # an earlier segment's tail is never torn: corruption
    first.write_bytes(bytes(raw))
    with pytest.raises(StorageCorrupted) as info:
        open_read_only(tmp_path)
    assert info.value.path == str(first)

"""``python -m raftlib wal inspect | verify | dump`` on data directories written by DiskStorage.

Rules checked (docs/admin.md):

* inspect reports the hard state, the log range, segments, snapshots and the
  configuration, as text and as JSON, and changes nothing on disk;
* verify exits 0 on sound storage, 0 with a note on a torn tail (a crash
  artifact the next start truncates), and 1 naming the file and byte offset
  of a damaged WAL record or snapshot;
* dump lists entries (index, term, type, size, preview) within --from/--to,
  decodes configuration changes, and emits JSON lines with the whole data;
* every command gives a clear error and exit status 2 for a missing, plain or
  foreign directory, and --help works everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from raftlib._accel import ENTRY_CONF_CHANGE
from raftlib.admin import ExitCode, main
from raftlib.core import Change, ChangeKind, ConfChange, Entry, HardState, Membership, SnapshotMeta
from raftlib.storage import DiskStorage

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` and a hash of its content (to prove nothing changed)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def write_dir(
    path: Path, *, n: int = 30, snapshot_at: int | None = None, segment_bytes: int = 1 << 20
) -> None:
    """A data directory: ``n`` entries in term 2 (commit n-2), one conf change at 5, maybe a snapshot."""
    s = DiskStorage(path, segment_bytes=segment_bytes)
    s.load()
    add = Change(ChangeKind.ADD_VOTER, "n4", b"10.0.0.4:7000")
    cc = ConfChange((add,), result=Membership(frozenset({"n1", "n4"})))
    entries = []
    for i in range(1, n + 1):
        if i == 5:
            entries.append(Entry(i, 2, cc.encode(), ENTRY_CONF_CHANGE))
        elif i == 7:
            entries.append(Entry(i, 2, bytes(range(200, 256))))  # not UTF-8
        else:
            entries.append(Entry(i, 2, f"put k{i}=v{i}".encode()))
    for k in range(0, n, 5):
        s.save(HardState(2, "n1", max(0, k - 2)), entries[k : k + 5])
    s.save(HardState(2, "n1", n - 2), [])
    if snapshot_at is not None:
        meta = SnapshotMeta(snapshot_at, 2, Membership(frozenset({"n1", "n4"})))
        s.save_snapshot(meta, [b"state-machine-bytes" * 100])
        s.compact(snapshot_at)
    s.close()


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    d = tmp_path / "n1"
    write_dir(d, snapshot_at=10, segment_bytes=300)
    return d


def test_inspect_reports_hard_state_log_segments_snapshots_and_changes_nothing(datadir: Path) -> None:
    before = tree_digest(datadir)
    code, out, err = run("wal", "inspect", str(datadir))
    assert code == ExitCode.OK, err
    assert "hard state    term=2 vote=n1 commit=28" in out
    assert "last index 30 term 2" in out
    assert "snapshot      index 10 term 2, voters=[n1,n4]" in out
    assert "membership    voters=[n1,n4]" in out
    assert re.search(r"\.wal  seq \d+  first index \d+  \d+ bytes", out)
    assert tree_digest(datadir) == before


def test_inspect_json_has_the_same_facts(datadir: Path) -> None:
    code, out, _ = run("wal", "inspect", "--json", str(datadir))
    assert code == ExitCode.OK
    d = json.loads(out)
    assert d["hard_state"] == {"term": 2, "vote": "n1", "commit": 28}
    assert d["log"]["last_index"] == 30 and d["log"]["uncommitted_entries"] == 2
    assert d["snapshot"]["index"] == 10 and d["membership"]["voters"] == ["n1", "n4"]
    assert len(d["segments"]) > 1  # small segments: the log rolled over
    assert d["wal_bytes"] == sum(os.path.getsize(s["file"]) for s in d["segments"])
    assert [s["index"] for s in d["snapshots"]] == [10] and d["snapshots"][0]["problem"] is None
    assert d["pending_repairs"] == []


def test_inspect_without_snapshot_says_the_bootstrap_configuration_is_not_stored(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    s = DiskStorage(d)
    s.save(HardState(1, "n1", 1), [Entry(1, 1, b"x")])
    s.close()
    code, out, _ = run("wal", "inspect", str(d))
    assert code == ExitCode.OK
    assert "membership    unknown (from bootstrap (not stored" in out


def test_verify_passes_sound_storage(datadir: Path) -> None:
    code, out, _ = run("wal", "verify", str(datadir))
    assert code == ExitCode.OK
    assert "OK:" in out and "1 snapshot(s)" in out


def test_verify_names_file_and_offset_of_a_damaged_record_followed_by_valid_ones(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    write_dir(d)
    seg = sorted((d / "wal").iterdir())[0]
    raw = bytearray(seg.read_bytes())
    # The second record (the first BATCH) starts right after the SEGMENT record.
    first_len = int.from_bytes(raw[0:4], "little")
    second = 9 + first_len
    raw[second + 20] ^= 0xFF
    seg.write_bytes(bytes(raw))
    before = tree_digest(d)
    code, out, _ = run("wal", "verify", str(d))
    assert code == ExitCode.CORRUPT
    assert f"DAMAGED {seg}: offset {second}: CRC mismatch" in out
    assert tree_digest(d) == before


def test_verify_reports_a_torn_tail_as_repairable_and_leaves_it(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    write_dir(d)
    seg = sorted((d / "wal").iterdir())[-1]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # a record header cut short by a crash
    code, out, _ = run("wal", "verify", str(d))
    assert code == ExitCode.OK
    assert f"note: torn tail, a start would truncate {seg} to {size} bytes" in out
    assert seg.stat().st_size == size + 6
    code, out, _ = run("wal", "inspect", str(d))
    assert f"a start would repair:\n  truncate {seg} to {size} bytes" in out


def test_verify_finds_a_damaged_snapshot_body(datadir: Path) -> None:
    snap = next((datadir / "snap").glob("*.snap"))
    raw = bytearray(snap.read_bytes())
    raw[-10] ^= 0x01
    snap.write_bytes(bytes(raw))
    code, out, _ = run("wal", "verify", str(datadir))
    assert code == ExitCode.CORRUPT
    assert f"DAMAGED {snap}: offset" in out and "snapshot body CRC mismatch" in out


def test_dump_lists_entries_in_range_with_previews_and_decoded_conf_changes(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    write_dir(d)
    code, out, err = run("wal", "dump", str(d), "--from", "4", "--to", "8")
    assert code == ExitCode.OK
    lines = out.splitlines()
    assert [int(line.split()[0]) for line in lines] == [4, 5, 6, 7, 8]
    assert lines[0].split()[1:4] == ["2", "normal", "9"] and '"put k4=v4"' in lines[0]
    assert "conf_change" in lines[1] and "add_voter n4@10.0.0.4:7000 -> voters=[n1,n4]" in lines[1]
    assert "0xc8c9" in lines[3]  # binary data shown as hex
    assert "5 entries shown (stored: 1..30)" in err
    code, out, _ = run("wal", "dump", str(d), "--from", "29")
    assert [line.split()[0] for line in out.splitlines()] == ["29", "30"]
    assert all("(not known committed)" in line for line in out.splitlines())


def test_dump_json_lines_carry_the_whole_data(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    write_dir(d)
    code, out, _ = run("wal", "dump", "--json", str(d), "--from", "6", "--to", "7")
    assert code == ExitCode.OK
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0] == {
        "index": 6,
        "term": 2,
        "type": "normal",
        "size": 9,
        "committed": True,
        "data_hex": b"put k6=v6".hex(),
        "data_utf8": "put k6=v6",
    }
    assert bytes.fromhex(rows[1]["data_hex"]) == bytes(range(200, 256)) and "data_utf8" not in rows[1]


def test_dump_refuses_an_empty_range(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    write_dir(d)
    code, _, err = run("wal", "dump", str(d), "--from", "9", "--to", "3")
    assert code == ExitCode.USAGE and "--from 9 is after --to 3" in err


@pytest.mark.parametrize("command", ["inspect", "verify", "dump"])
def test_clear_errors_for_missing_plain_and_foreign_directories(tmp_path: Path, command: str) -> None:
    code, _, err = run("wal", command, str(tmp_path / "nope"))
    assert code == ExitCode.USAGE and "no such directory" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run("wal", command, str(tmp_path / "file"))
    assert code == ExitCode.USAGE and "not a directory" in err
    code, _, err = run("wal", command, str(tmp_path))
    assert code == ExitCode.USAGE and "not a raftlib data directory (it has no wal/ directory)" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directory(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    write_dir(d)
    d.chmod(0)
    try:
        code, _, err = run("wal", "inspect", str(d))
    finally:
        d.chmod(0o755)
    assert code == ExitCode.USAGE and "permission denied" in err


def test_help_everywhere_through_python_dash_m() -> None:
    for argv in ([], ["wal"], ["wal", "inspect"], ["wal", "verify"], ["wal", "dump"], ["recover"]):
        proc = subprocess.run(
            [sys.executable, "-m", "raftlib", *argv, "--help"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (argv, proc.stderr)
        assert proc.stdout.startswith("usage: python -m raftlib"), proc.stdout
    proc = subprocess.run([sys.executable, "-m", "raftlib"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "required: COMMAND" in proc.stderr

"""``wal inspect | verify | dump``: read a node's data directory offline, never changing it.

* ``inspect``: hard state, log range, segments, snapshots, configuration, pending repairs.
* ``verify``: every WAL record's CRC and decoding (through the storage's own
  recovery) and every snapshot file's header and body CRC; exit 0 when sound
  (a torn tail, which the next start truncates, is not damage), 1 with the
  file and offset of each damage found.
* ``dump``: the stored entries, as text or JSON lines.

All three work beside a running node (with a warning: they see a moment's
state, possibly ending in a write in progress).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, TextIO

from raftlib._accel import ENTRY_CONF_CHANGE
from raftlib.admin.datadir import (
    DataDirView,
    check_data_dir,
    entry_type_name,
    load_view,
    membership_after,
    snapshot_files,
)
from raftlib.admin.errors import AdminError, ExitCode
from raftlib.core import ConfChange, Entry
from raftlib.errors import ConfChangeError, StorageCorrupted
from raftlib.storage.snapshot import parse_header, verify_body

__all__ = ["describe_conf_change", "preview", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``wal`` command group to the top-level subparsers."""
    wal = sub.add_parser(
        "wal",
        help="inspect, verify or dump a node's write-ahead log and snapshots (offline, read-only)",
        description="Read a node's data directory without changing it.",
    )
    wsub = wal.add_subparsers(dest="wal_command", metavar="COMMAND", required=True)

    p = wsub.add_parser(
        "inspect",
        help="hard state, log range, segments, snapshots, configuration",
        description="Summarise a data directory: hard state, log range, WAL segments, snapshots, the "
        "configuration after the stored log, and the repairs a start would make.",
    )
    p.add_argument("data_dir", metavar="DIR", help="the node's data directory")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=cmd_inspect)

    p = wsub.add_parser(
        "verify",
        help="check every WAL record and snapshot (exit 0 sound, 1 damaged)",
        description="Check the CRC of every WAL record and every snapshot file (header and body). "
        "Exit status 0: sound (a torn last record, cut at the next start, is not damage); "
        "1: damage found, each reported with its file and byte offset.",
    )
    p.add_argument("data_dir", metavar="DIR", help="the node's data directory")
    p.set_defaults(func=cmd_verify)

    p = wsub.add_parser(
        "dump",
        help="list the stored log entries",
        description="List the stored entries: index, term, type, size and a preview of the data "
        "(UTF-8 text when it is, hex otherwise; configuration changes decoded).",
    )
    p.add_argument("data_dir", metavar="DIR", help="the node's data directory")
    p.add_argument(
        "--from", dest="lo", type=_index, default=None, metavar="I", help="first index (inclusive)"
    )
    p.add_argument("--to", dest="hi", type=_index, default=None, metavar="J", help="last index (inclusive)")
    p.add_argument(
        "--json", action="store_true", help="JSON lines: one object per entry, the whole data in hex"
    )
    p.add_argument(
        "--width",
        type=int,
        default=60,
        metavar="N",
        help="characters of data shown per text line (default 60)",
    )
    p.set_defaults(func=cmd_dump)


def _index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an index: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"an index is >= 0, not {value}")
    return value


def _warn_if_running(view: DataDirView, err: TextIO) -> None:
    if view.holder is not None:
        err.write(
            f"warning: process {view.holder} holds {view.path} (a running node?): this is a moment's "
            "view, and its end may be a write in progress\n"
        )


# -- inspect ------------------------------------------------------------------------------------------


def inspect_dict(view: DataDirView) -> dict[str, Any]:
    """Everything ``wal inspect`` reports, JSON-ready."""
    hs = view.hard_state
    stored = view.state.entries
    membership, names = membership_after(view)
    conf_changes = sum(1 for e in view.log_entries() if e.type == ENTRY_CONF_CHANGE)
    snap = view.snapshot
    return {
        "data_dir": view.path,
        "lock_holder_pid": view.holder,
        "hard_state": {"term": hs.term, "vote": hs.vote, "commit": hs.commit},
        "log": {
            "first_index": stored[0].index if stored else None,
            "last_index": view.last_index,
            "last_term": view.last_term(),
            "stored_entries": len(stored),
            "uncommitted_entries": max(0, view.last_index - max(hs.commit, snap.index if snap else 0)),
            "conf_changes_after_snapshot": conf_changes,
        },
        "snapshot": None
        if snap is None
        else {"index": snap.index, "term": snap.term, "membership": snap.membership.to_dict()},
        "membership": None if membership is None else membership.to_dict(),
        "membership_source": (
            "snapshot and log"
            if snap is not None
            else ("log" if membership is not None else "bootstrap (not stored: given to the node at start)")
        ),
        "node_ids_seen": sorted(names),
        "segments": [
            {"file": s.path, "seq": s.seq, "first_index": s.first_index, "bytes": s.size}
            for s in view.segments
        ],
        "wal_bytes": sum(s.size for s in view.segments),
        "snapshots": [
            {
                "file": f.path,
                "index": f.meta.index if f.meta else None,
                "term": f.meta.term if f.meta else None,
                "bytes": f.size,
                "body_bytes": f.body_len,
                "problem": f.problem,
            }
            for f in view.snapshots
        ],
        "snapshot_bytes": sum(f.size for f in view.snapshots),
        "pending_repairs": [w.describe() for w in view.withheld],
    }


def cmd_inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``wal inspect DIR [--json]``."""
    view = load_view(args.data_dir)
    _warn_if_running(view, err)
    d = inspect_dict(view)
    if args.json:
        out.write(json.dumps(d, indent=2) + "\n")
        return ExitCode.OK
    hs, lg = d["hard_state"], d["log"]
    w = out.write
    w(f"data dir      {d['data_dir']}\n")
    holder = d["lock_holder_pid"]
    w(f"in use        {'by process ' + str(holder) if holder else 'no'}\n")
    w(f"hard state    term={hs['term']} vote={hs['vote']} commit={hs['commit']}\n")
    rng = f"{lg['first_index']}..{lg['last_index']}" if lg["stored_entries"] else "none"
    w(
        f"log           entries {rng} ({lg['stored_entries']} stored, {lg['uncommitted_entries']} not known "
        f"committed), last index {lg['last_index']} term {lg['last_term']}\n"
    )
    snap = view.snapshot
    if snap is not None:
        w(f"snapshot      index {snap.index} term {snap.term}, {snap.membership.describe()}\n")
    else:
        w("snapshot      none\n")
    membership, _ = membership_after(view)
    shown = membership.describe() if membership is not None else "unknown"
    w(
        f"membership    {shown} (from {d['membership_source']}; "
        f"{lg['conf_changes_after_snapshot']} change(s) after the snapshot)\n"
    )
    w(f"segments      {len(d['segments'])} file(s), {d['wal_bytes']} bytes\n")
    for s in d["segments"]:
        w(f"  {s['file']}  seq {s['seq']}  first index {s['first_index']}  {s['bytes']} bytes\n")
    w(f"snapshots     {len(d['snapshots'])} file(s), {d['snapshot_bytes']} bytes\n")
    for f in d["snapshots"]:
        what = f"index {f['index']} term {f['term']}" if f["index"] is not None else ""
        w(f"  {f['file']}  {what}  {f['bytes']} bytes{'  ' + f['problem'] if f['problem'] else ''}\n")
    if d["pending_repairs"]:
        w("a start would repair:\n")
        for r in d["pending_repairs"]:
            w(f"  {r}\n")
    return ExitCode.OK


# -- verify -------------------------------------------------------------------------------------------


def check_snapshot_bodies(data_dir: str) -> tuple[list[str], list[str], int]:
    """(damage, notes, sound count) over every file of ``snap/``, bodies streamed and CRC-checked."""
    damage: list[str] = []
    notes: list[str] = []
    sound = 0
    for info in snapshot_files(data_dir):
        if info.path.endswith(".tmp"):
            notes.append(f"{info.path}: unfinished snapshot file (removed at the next start)")
            continue
        try:
            with open(info.path, "rb") as f:
                header = parse_header(f, info.path)
                verify_body(f, info.path, header)
        except StorageCorrupted as exc:
            damage.append(f"{exc.path}: offset {exc.offset}: {exc.detail}")
            continue
        except OSError as exc:
            damage.append(f"{info.path}: unreadable: {exc}")
            continue
        sound += 1
    return damage, notes, sound


def cmd_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``wal verify DIR``: 0 sound, 1 damaged (each damage with its file and offset)."""
    path = check_data_dir(args.data_dir)
    damage: list[str] = []
    notes: list[str] = []
    view: DataDirView | None = None
    try:
        view = load_view(path)
    except AdminError as exc:
        if exc.code != ExitCode.CORRUPT:
            raise
        cause = exc.__cause__
        if isinstance(cause, StorageCorrupted):
            damage.append(f"{cause.path}: offset {cause.offset}: {cause.detail}")
        else:
            damage.append(exc.message)
    if view is not None:
        _warn_if_running(view, err)
        notes.extend(
            f"torn tail, a start would {w.describe()}" for w in view.withheld if w.action == "truncate"
        )
    snap_damage, snap_notes, sound = check_snapshot_bodies(path)
    damage.extend(snap_damage)
    notes.extend(snap_notes)
    for n in notes:
        out.write(f"note: {n}\n")
    if damage:
        for d in damage:
            out.write(f"DAMAGED {d}\n")
        out.write(f"{path}: {len(damage)} damaged location(s)\n")
        return ExitCode.CORRUPT
    assert view is not None
    out.write(
        f"{path}: OK: {len(view.segments)} WAL segment(s), {len(view.state.entries)} entries up to index "
        f"{view.last_index}, {sound} snapshot(s); every record and snapshot checked\n"
    )
    return ExitCode.OK


# -- dump ---------------------------------------------------------------------------------------------


def preview(data: bytes, width: int) -> str:
    """Printable UTF-8 as a quoted string, anything else as hex; at most about ``width`` characters."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        shown = json.dumps(text[:width], ensure_ascii=False)
        return shown + ("..." if len(text) > width else "")
    n = max(1, width // 2)
    return "0x" + data[:n].hex() + ("..." if len(data) > n else "")


def describe_conf_change(data: bytes) -> str:
    """A configuration change entry in one line, e.g. ``add_voter n4@10.0.0.4:7000 -> voters=[..]``."""
    try:
        cc = ConfChange.decode(data)
    except ConfChangeError as exc:
        return f"<undecodable configuration change: {exc}>"
    if cc.is_leave():
        parts = ["leave joint"]
    else:
        parts = [
            c.kind.value + " " + c.node_id + (f"@{c.context.decode(errors='replace')}" if c.context else "")
            for c in cc.changes
        ]
    text = ", ".join(parts)
    if cc.result is not None:
        text += f" -> {cc.result.describe()}"
    return text


def _entry_dict(e: Entry, commit: int) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": e.index,
        "term": e.term,
        "type": entry_type_name(e.type),
        "size": len(e.data),
        "committed": e.index <= commit,
        "data_hex": e.data.hex(),
    }
    with contextlib.suppress(UnicodeDecodeError):
        d["data_utf8"] = e.data.decode("utf-8")
    if e.type == ENTRY_CONF_CHANGE:
        d["conf_change"] = describe_conf_change(e.data)
    return d


def cmd_dump(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``wal dump DIR [--from I] [--to J] [--json] [--width N]``."""
    if args.lo is not None and args.hi is not None and args.lo > args.hi:
        raise AdminError(f"--from {args.lo} is after --to {args.hi}")
    if args.width < 1:
        raise AdminError("--width must be at least 1")
    view = load_view(args.data_dir)
    _warn_if_running(view, err)
    commit = max(view.hard_state.commit, view.snapshot.index if view.snapshot else 0)
    lo = args.lo if args.lo is not None else 0
    hi = args.hi if args.hi is not None else sys.maxsize
    shown = 0
    for e in view.state.entries:
        if not lo <= e.index <= hi:
            continue
        shown += 1
        if args.json:
            out.write(json.dumps(_entry_dict(e, commit)) + "\n")
            continue
        data = describe_conf_change(e.data) if e.type == ENTRY_CONF_CHANGE else preview(e.data, args.width)
        mark = "" if e.index <= commit else "  (not known committed)"
        out.write(f"{e.index:>10} {e.term:>6} {entry_type_name(e.type):<11} {len(e.data):>7}  {data}{mark}\n")
    if not args.json:
        first = view.state.entries[0].index if view.state.entries else None
        held = f"{first}..{view.last_index}" if first is not None else "none"
        err.write(f"{shown} entries shown (stored: {held})\n")
    return ExitCode.OK

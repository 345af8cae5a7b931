"""``recover``: restart a surviving member as a new cluster after a permanent loss of quorum.

When a majority of the members is gone for good (disks lost, machines
destroyed), no leader can ever be elected again and the cluster is stuck.
This rewrites the configuration of **one** surviving member so that it
restarts as a cluster of the given members (often just itself), as
hashicorp/raft's ``peers.json`` and etcd's ``--force-new-cluster`` do.

How: one configuration-change entry is appended at ``last_index + 1`` whose
``result`` is the new configuration (``ConfChange.result`` makes every node
adopt it as is, whatever came before), with ``ADD_VOTER`` changes carrying
the new members' addresses (``RaftNode`` learns addresses from them) and
``REMOVE`` changes for every other node the storage names. It is written
with a term one above any the node has seen and a hard state whose commit
index covers it, in one WAL record (one ``DiskStorage.save``), so it is
applied at the next start before the node may campaign. Every stored entry
becomes committed: entries the survivor held but did not know committed
may have been acknowledged to clients, so they are kept, not dropped.

Rules it enforces: the directory must not be in use (its lock free), the
storage must pass every check (``wal verify``), ``--node-id`` must be one of
``--members``, and nothing is written without ``--yes-i-know``.

Invariant: either the one record is durably appended, or the directory is
left byte for byte as it was (apart from the repairs any start makes).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import TextIO

from raftlib._accel import ENTRY_CONF_CHANGE
from raftlib.admin.datadir import DataDirView, check_data_dir, load_view, membership_after
from raftlib.admin.errors import AdminError, ExitCode
from raftlib.admin.wal import check_snapshot_bodies
from raftlib.core import Change, ChangeKind, ConfChange, Entry, HardState, Membership, Transition
from raftlib.errors import StorageCorrupted
from raftlib.storage import DiskStorage, StorageError
from raftlib.storage.lock import DataDirLock, DataDirLocked, lock_holder

__all__ = ["RecoveryPlan", "parse_members", "plan_recovery", "register"]

_ID = re.compile(r"^[^\s=,]+$")

BANNER = """\
******************************************************************************
WARNING: DISASTER RECOVERY. This makes this member the start of a NEW cluster.
 * Use it only when a majority of the members is lost FOR GOOD. If they can
   come back, bring them back instead: nothing is lost then.
 * Recover ONE member only. Every other member of the new cluster must start
   with an EMPTY data directory and join it; never restart a lost member with
   its old data, and never run recover on two members' directories.
 * Every entry this member stored becomes committed; writes acknowledged by a
   majority that did not include this member (never stored here) are lost.
******************************************************************************
"""


def parse_members(text: str) -> dict[str, str]:
    """``n1=host:port[,n2=host:port...]`` as a dict (argparse type: clear errors on bad input)."""
    members: dict[str, str] = {}
    for part in text.split(","):
        node_id, sep, address = part.strip().partition("=")
        if not sep or not node_id or not address:
            raise argparse.ArgumentTypeError(f"expected ID=ADDRESS, got {part.strip()!r}")
        if not _ID.match(node_id) or any(c.isspace() for c in address):
            raise argparse.ArgumentTypeError(f"bad member {part.strip()!r} (no spaces, '=' or ',' in ids)")
        if node_id in members:
            raise argparse.ArgumentTypeError(f"member {node_id!r} is given twice")
        members[node_id] = address
    return members


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``recover`` to the top-level subparsers."""
    p = sub.add_parser(
        "recover",
        help="DISASTER RECOVERY: restart a surviving member as a new cluster of the given members",
        description=(
            "After a permanent loss of quorum: rewrite the configuration of ONE surviving member "
            "so it restarts as a cluster of the given members (usually itself alone; add others "
            "afterwards). Without --yes-i-know it only prints what it would do. The node must be "
            "stopped and its storage sound. See docs/admin.md before using it."
        ),
    )
    p.add_argument("data_dir", metavar="DIR", help="the surviving member's data directory")
    p.add_argument("--node-id", required=True, metavar="ID", help="the id of the member DIR belongs to")
    p.add_argument(
        "--members",
        required=True,
        type=parse_members,
        metavar="ID=ADDR[,ID=ADDR...]",
        help="the members of the new cluster (peer addresses); must include --node-id",
    )
    p.add_argument(
        "--yes-i-know",
        action="store_true",
        help="confirm: a majority is lost for good and this member becomes a new cluster",
    )
    p.set_defaults(func=cmd_recover)


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """What ``recover`` appends, and what it changes."""

    last_index: int
    """The stored log's last index before recovery."""
    commit_before: int
    term: int
    """Term of the new entry and of the new hard state."""
    before: Membership | None
    """The configuration after the stored log (None: the unstored bootstrap one)."""
    after: Membership
    members: dict[str, str]
    removed: tuple[str, ...]
    entry: Entry

    @property
    def newly_committed(self) -> int:
        """Stored entries that were not known committed and now are."""
        return max(0, self.last_index - self.commit_before)

    def hard_state(self) -> HardState:
        """The hard state written with the entry: new term, no vote, everything committed."""
        return HardState(self.term, None, self.entry.index)


def plan_recovery(view: DataDirView, node_id: str, members: dict[str, str]) -> RecoveryPlan:
    """The entry and hard state that make ``view``'s node the start of a cluster of ``members``."""
    if node_id not in members:
        raise AdminError(f"--node-id {node_id} is not one of --members ({', '.join(members)})")
    before, names = membership_after(view)
    after = Membership(frozenset(members))
    removed = tuple(sorted(names - set(members)))
    changes = [Change(ChangeKind.ADD_VOTER, m, members[m].encode()) for m in sorted(members)]
    changes += [Change(ChangeKind.REMOVE, m) for m in removed]
    cc = ConfChange(tuple(changes), Transition.AUTO, after)
    term = max(view.hard_state.term, view.last_term()) + 1
    entry = Entry(view.last_index + 1, term, cc.encode(), ENTRY_CONF_CHANGE)
    commit_before = max(view.hard_state.commit, view.snapshot.index if view.snapshot else 0)
    return RecoveryPlan(view.last_index, commit_before, term, before, after, dict(members), removed, entry)


def _describe(plan: RecoveryPlan, node_id: str, path: str) -> str:
    before = plan.before.describe() if plan.before is not None else "unknown (bootstrap, not stored)"
    lines = [
        f"data dir        {path} (member {node_id})",
        f"configuration   {before}",
        f"           ->   {plan.after.describe()}",
        "addresses       " + ", ".join(f"{k}={v}" for k, v in sorted(plan.members.items())),
        f"removed         {', '.join(plan.removed) if plan.removed else '(none named in the storage)'}",
        f"log             last index {plan.last_index}; {plan.newly_committed} stored entries not known "
        "committed become committed",
        f"writes          a configuration entry at index {plan.entry.index}, term {plan.term}; "
        f"hard state term={plan.term} vote=None commit={plan.entry.index}",
    ]
    return "\n".join(lines) + "\n"


def _refuse_if_in_use(path: str) -> None:
    holder = lock_holder(path)
    if holder is not None:
        raise AdminError(
            f"{path} is in use by process {holder} (a running node?): stop it first; recover never "
            "touches a running node's storage",
            ExitCode.REFUSED,
        )


def _check_sound(path: str) -> DataDirView:
    try:
        view = load_view(path)
    except AdminError as exc:
        if exc.code == ExitCode.CORRUPT:
            raise AdminError(
                f"refusing to recover from damaged storage ({exc.message}); run `wal verify` for details",
                ExitCode.CORRUPT,
            ) from exc
        raise
    damage, _notes, _sound = check_snapshot_bodies(path)
    if damage:
        raise AdminError("refusing to recover from damaged storage: " + "; ".join(damage), ExitCode.CORRUPT)
    return view


def cmd_recover(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``recover DIR --node-id ID --members ID=ADDR[,...] [--yes-i-know]``."""
    path = check_data_dir(args.data_dir)
    members: dict[str, str] = args.members
    if args.node_id not in members:
        raise AdminError(f"--node-id {args.node_id} is not one of --members ({', '.join(members)})")
    _refuse_if_in_use(path)
    try:
        lock = DataDirLock.acquire(path)
    except DataDirLocked as exc:
        raise AdminError(f"{path} is in use by process {exc.pid}: stop it first", ExitCode.REFUSED) from exc
    except StorageError as exc:
        raise AdminError(f"{path}: cannot lock the data directory: {exc}") from exc
    with lock:
        view = _check_sound(path)
        plan = plan_recovery(view, args.node_id, members)
        err.write(BANNER)
        if plan.before is not None and args.node_id not in plan.before.members():
            err.write(f"warning: {args.node_id} is not a member of the stored configuration: wrong DIR?\n")
        if len(members) > 1:
            err.write(
                "warning: the new cluster has several members: all but this one must start with an EMPTY "
                "data directory (join=True); the simplest is to recover as a single member and add the "
                "others afterwards\n"
            )
        out.write(_describe(plan, args.node_id, path))
        if not args.yes_i_know:
            out.write("nothing was changed: add --yes-i-know to do it\n")
            return ExitCode.REFUSED
        _apply(path, plan)
    check = load_view(path)
    after, _ = membership_after(check)
    if check.last_index != plan.entry.index or after != plan.after:
        raise AdminError(f"{path}: recovery written but not read back as expected", ExitCode.CORRUPT)
    out.write(
        f"recovered: {path} now starts as a cluster of {', '.join(sorted(members))}.\n"
        f"Next: start {args.node_id} (members={{{', '.join(f'{k!r}: {v!r}' for k, v in members.items())}}}); "
        "it elects itself once the others (if any) answer. Add new members with add_member (they "
        "start with an empty data directory and join=True).\n"
    )
    return ExitCode.OK


def _apply(path: str, plan: RecoveryPlan) -> None:
    """Append the plan's entry and hard state in one durable save (this process holds the lock)."""
    storage = DiskStorage(path)
    try:
        try:
            storage.load()  # the repairs any start makes (a torn tail), then the same view
            if storage.last_index() != plan.last_index:
                raise AdminError(
                    f"{path} changed while recovering (last index {storage.last_index()}, planned "
                    f"{plan.last_index}); nothing written",
                    ExitCode.REFUSED,
                )
            storage.save(plan.hard_state(), [plan.entry])
        except StorageCorrupted as exc:
            raise AdminError(f"storage corrupted: {exc}", ExitCode.CORRUPT) from exc
        except (StorageError, OSError) as exc:
            raise AdminError(
                f"{path}: writing the recovery record failed (nothing of it is durable): {exc}",
                ExitCode.FAILED,
            ) from exc
    finally:
        storage.close()

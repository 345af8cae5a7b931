"""``python -m examples.kvstore.operator``: keep a kvstore cluster matching a declarative spec.

    apply SPEC [--until-converged] [--timeout S] [--stop-on-exit]   reconcile (foreground loop)
    status SPEC [--json]                                              desired vs observed, as a table
    destroy SPEC [--purge]                                            stop the loop and every member
    backup SPEC                                                       take a backup now
    restore SPEC BACKUP [--until-converged] ...                       a new cluster from a backup
    restart-stopped SPEC                                              start stopped members on their data
    plan SPEC                                                         what apply would do next (dry run)

Exit status: 0 ok, 1 failure (or not converged), 2 bad usage/spec, 3 quorum lost (status/plan).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.kvstore.operator import reconcile as rc
from examples.kvstore.operator.backend import BackendError, OperatorState
from examples.kvstore.operator.backup import BackupError, verify
from examples.kvstore.operator.controller import Operator, OperatorError
from examples.kvstore.operator.spec import ClusterSpec, SpecError, load_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.kvstore.operator", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)

    def loop_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--until-converged", action="store_true", help="exit 0 once the cluster matches the spec"
        )
        q.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
        q.add_argument("--stop-on-exit", action="store_true", help="stop every member when the loop ends")

    q = sub.add_parser("apply", help="make the cluster match the spec, and keep it so")
    q.add_argument("spec")
    loop_flags(q)
    q = sub.add_parser("status", help="desired vs observed")
    q.add_argument("spec")
    q.add_argument("--json", action="store_true")
    q = sub.add_parser("destroy", help="stop the apply loop and every member")
    q.add_argument("spec")
    q.add_argument(
        "--purge", action="store_true", help="also delete the members' data and the operator state"
    )
    q = sub.add_parser("backup", help="take a backup now")
    q.add_argument("spec")
    q = sub.add_parser("restore", help="bring up a new cluster from a backup, then reconcile")
    q.add_argument("spec")
    q.add_argument("backup")
    loop_flags(q)
    q = sub.add_parser("restart-stopped", help="start members whose process is gone, on their data dirs")
    q.add_argument("spec")
    q = sub.add_parser("plan", help="print what apply would do next")
    q.add_argument("spec")
    return p


def _loop(op: Operator, args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    op.lock()
    op.log("apply", f"reconciling {op.spec.source} ({op.spec.size} members, data root {op.spec.data_root})")
    try:
        converged = op.run(stop, until_converged=args.until_converged, timeout=args.timeout)
    finally:
        if args.stop_on_exit:
            for rec in op.state.members.values():
                op.backend.stop(rec)
            op.log("stopped", "--stop-on-exit: members stopped")
        op.unlock()
    if args.until_converged or args.timeout is not None:
        return 0 if converged else 1
    return 0


def _role(report: Any, leader: str | None) -> str:
    if report.status is None:
        return "-"
    if report.name == leader:
        return "leader"
    return "learner" if report.is_learner else "follower"


def status_data(op: Operator) -> dict[str, Any]:
    obs = op.observe()
    actions = rc.plan(op.spec, obs.observed)
    o = obs.observed
    members = []
    for r in obs.reports:
        st = r.status or {}
        applied = int(st.get("raftAppliedIndex", 0) or 0)
        members.append(
            {
                "name": r.name,
                "id": r.member_id,
                "pid": r.pid,
                "process": None if r.process_alive is None else ("running" if r.process_alive else "dead"),
                "client_url": r.client_url,
                "role": _role(r, obs.leader_name),
                "healthy": bool(st.get("leader")),
                "in_membership": r.in_membership,
                "managed": r.managed,
                "lag": max(0, o.commit - applied) if st else None,
                "revision": int(st.get("header", {}).get("revision", 0) or 0) if st else None,
                "config": "current"
                if r.config_hash == op.spec.config_hash
                else ("stale" if r.managed else "-"),
            }
        )
    voters = [m for m in members if m["in_membership"] and m["role"] != "learner"]
    return {
        "cluster": op.spec.name,
        "desired_size": op.spec.size,
        "observed_voters": len(voters),
        "leader": obs.leader_name,
        "members": members,
        "last_backup": op.state.last_backup,
        "next": [{"kind": a.kind, "member": a.member, "reason": a.reason} for a in actions],
        "converged": not actions,
        "quorum_lost": any(a.kind == rc.REFUSE for a in actions),
        "operator_pid": op.state.operator_pid,
    }


def print_status(data: dict[str, Any]) -> None:
    print(
        f"cluster {data['cluster']}: desired {data['desired_size']} members, "
        f"observed {data['observed_voters']} "
        f"voter(s), leader {data['leader'] or '(none)'}"
    )
    cols = ["name", "id", "pid", "process", "role", "healthy", "lag", "revision", "config", "client_url"]
    rows = [
        [("-" if m[c] is None else str(m[c]).lower() if isinstance(m[c], bool) else str(m[c])) for c in cols]
        for m in data["members"]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=False)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)))
    b = data["last_backup"]
    if b:
        age = time.time() - b["time"]
        print(
            f"last backup: {b['path']} ({age:.0f} s ago, revision {b['revision']}, sha256 {b['sha256'][:12]})"
        )
    else:
        print("last backup: none")
    print(f"operator loop: {'pid ' + str(data['operator_pid']) if data['operator_pid'] else 'not running'}")
    if data["converged"]:
        print("state: converged (observed matches the spec)")
    for a in data["next"]:
        who = f" {a['member']}" if a["member"] else ""
        print(f"next: {a['kind']}{who}: {a['reason']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec: ClusterSpec = load_spec(args.spec)
    except SpecError as exc:
        print(f"operator: spec error: {exc}", file=sys.stderr)
        return 2
    try:
        op = Operator(spec)
        if args.command == "apply":
            return _loop(op, args)
        if args.command in ("status", "plan"):
            data = status_data(op)
            if args.command == "plan":
                for a in data["next"] or [{"kind": "none", "member": None, "reason": "converged"}]:
                    print(f"{a['kind']}{' ' + a['member'] if a['member'] else ''}: {a['reason']}")
            elif args.json:
                print(json.dumps(data, indent=2))
            else:
                print_status(data)
            return 3 if data["quorum_lost"] else 0
        if args.command == "destroy":
            stopped = op.destroy(purge=args.purge)
            print(f"stopped {len(stopped)} member(s){'; data deleted' if args.purge else ''}")
            return 0
        if args.command == "backup":
            info = op.backup_now()
            print(f"{info.path}  sha256 {info.sha256}  revision {info.revision}")
            return 0
        if args.command == "restart-stopped":
            print("started: " + (", ".join(op.restart_stopped()) or "nothing"))
            return 0
        if args.command == "restore":
            path = Path(args.backup).resolve()
            verify(path)
            if OperatorState.load(spec.state_file, spec.name).members:
                print(
                    f"operator: {spec.data_root} still has members; run `destroy {args.spec} --purge` first "
                    "(restore always builds a new cluster)",
                    file=sys.stderr,
                )
                return 1
            op.state.restore_from = str(path)
            op.save()
            return _loop(op, args)
    except (OperatorError, BackendError, BackupError) as exc:
        print(f"operator: {exc}", file=sys.stderr)
        return 1
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())

"""Many PySyncObj groups in one OS process, with the control channel of raftlib.testing.hostnode.

PySyncObj's counterpart of ``python -m raftlib.testing.hostnode`` for ``bench_multiraft.py``:
one process per host, hosting ``--groups`` ``SyncObj`` instances (the replicated dict of
``pysyncobj_node.py``, log in memory, nothing fsynced). PySyncObj has no multiplexing: every
instance needs its own TCP port and runs its own tick thread, so group ``i`` of host ``h``
listens on ``layout[h][i]``; ``--layout`` is a JSON file ``{"hosts": {"h1": [port, ...], ...}}``
shared by every host::

    python benchmarks/pysyncobj_multi.py --id h1 --layout layout.json --groups 100 \\
        --control 127.0.0.1:8001 [--no-batch] [--append-entries-period 0.1] [--auto-tick-period 0.05]

Control requests (newline-delimited JSON, one answer per line), as hostnode's:

* ``{"op": "status"}``: ``groups``, ``leading``, ``leads`` (per host, as seen here),
  ``leaderless``, ``threads``, ``pid``, ``fsyncs`` (always 0: nothing is fsynced).
* ``{"op": "wait_balanced", "timeout": 60}``: waits until every group has a leader (there is
  no balancer: ``balanced`` says whether the spread happens to be within ``ceil(groups/hosts)``).
* ``{"op": "bench", "seconds", "writers", "value_bytes", "prefix", "start_at"}``: writer ``i``
  writes to group ``i % groups`` when this host leads it; writers are chained through
  PySyncObj callbacks as in ``pysyncobj_node.py``.
* ``{"op": "dump"}``: per group ``[applied index, key count, sha256 of the sorted items]``.

The process prints ``READY <control address>`` on stdout once every instance is created and
the control channel serves, or exits with a message on stderr if it cannot create them
(ports, threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObjConf
from pysyncobj_node import ReplicatedDict, _percentile, digest

from raftlib.testing.hostnode import MAX_SAMPLES, thin


class MultiNode:
    """The ``SyncObj`` instances of one host and the answers to its control requests."""

    def __init__(self, host_id: str, layout: dict[str, list[int]], groups: int, conf: dict[str, Any]) -> None:
        self.host_id = host_id
        self.layout = layout
        self.n = groups
        self.by_address = {f"127.0.0.1:{ports[i]}": h for h, ports in layout.items() for i in range(groups)}
        self.objs: list[ReplicatedDict] = []
        for i in range(groups):
            me = f"127.0.0.1:{layout[host_id][i]}"
            partners = [f"127.0.0.1:{ports[i]}" for h, ports in layout.items() if h != host_id]
            self.objs.append(ReplicatedDict(me, partners, SyncObjConf(**conf)))

    def destroy(self) -> None:
        for obj in self.objs:
            obj.destroy()

    def leader_host(self, obj: ReplicatedDict) -> str | None:
        leader = obj._getLeader()
        if leader is None:
            return None
        return self.by_address.get(str(getattr(leader, "address", leader)))

    def leads(self) -> tuple[dict[str, int], int]:
        leads = dict.fromkeys(self.layout, 0)
        leaderless = 0
        for obj in self.objs:
            h = self.leader_host(obj)
            if h is None:
                leaderless += 1
            else:
                leads[h] += 1
        return leads, leaderless

    def status(self) -> dict[str, Any]:
        leads, leaderless = self.leads()
        return {
            "id": self.host_id,
            "groups": self.n,
            "leading": sum(1 for obj in self.objs if obj._isLeader()),
            "leads": leads,
            "leaderless": leaderless,
            "quiesced": 0,
            "threads": threading.active_count(),
            "fsyncs": 0,
            "pid": os.getpid(),
        }

    def wait_balanced(self, timeout: float) -> dict[str, Any]:
        share = math.ceil(self.n / len(self.layout))
        started = time.monotonic()
        while True:
            leads, leaderless = self.leads()
            waited = time.monotonic() - started
            if leaderless == 0 or waited >= timeout:
                return {"ok": True, "balanced": leaderless == 0 and max(leads.values()) <= share,
                        "leads": leads, "leaderless": leaderless, "share": share, "waited": waited}
            time.sleep(0.1)

    def bench(self, seconds: float, writers: int, value_bytes: int, prefix: str,
              start_at: float | None, max_samples: int) -> dict[str, Any]:
        if seconds <= 0 or writers < 1 or value_bytes < 0 or max_samples < 2:
            raise ValueError("bench needs seconds > 0, writers >= 1, value_bytes >= 0, max_samples >= 2")
        mine = [(w, self.objs[w % self.n]) for w in range(writers) if self.objs[w % self.n]._isLeader()]
        if start_at is not None:
            time.sleep(max(0.0, min(30.0, float(start_at) - time.time())))
        value = "v" * value_bytes
        latencies: list[float] = []
        errors: dict[str, int] = {}
        lock = threading.Lock()
        done = threading.Event()
        active = [len(mine)]
        perf = time.perf_counter
        stop_at = perf() + seconds

        def finish() -> None:
            with lock:
                active[0] -= 1
                last = active[0] == 0
            if last:
                done.set()

        def issue(w: int, obj: ReplicatedDict, count: int) -> None:
            t0 = perf()
            obj.set(f"{prefix}-{w}-{count}", value,
                    callback=lambda res, err: on_done(w, obj, count, t0, err))

        def on_done(w: int, obj: ReplicatedDict, count: int, t0: float, err: int) -> None:
            t1 = perf()
            if err != FAIL_REASON.SUCCESS:
                with lock:
                    errors[str(err)] = errors.get(str(err), 0) + 1
                finish()
                return
            latencies.append(t1 - t0)
            if t1 < stop_at:
                issue(w, obj, count + 1)
            else:
                finish()

        started = perf()
        if not mine:  # no writer here: still a window as long as the others'
            time.sleep(seconds)
            done.set()
        for w, obj in mine:
            issue(w, obj, 1)
        if not done.wait(seconds + 30):
            return {"ok": False, "error": "Timeout", "detail": f"{active[0]} writers still waiting"}
        elapsed = perf() - started
        latencies.sort()
        return {
            "ok": True,
            "host": self.host_id,
            "writers": len(mine),
            "writes": len(latencies),
            "failed": sum(errors.values()),
            "errors": errors,
            "elapsed": elapsed,
            "p50_ms": _percentile(latencies, 0.50) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
            "latency_ms": [round(x * 1000, 4) for x in thin(latencies, max_samples)],
            "fsyncs": 0,
            "write_batches": 0,
        }

    def dump(self) -> dict[str, Any]:
        groups: dict[str, list[Any]] = {}
        for i, obj in enumerate(self.objs):
            for _ in range(100):
                try:
                    data = dict(obj.data)
                    break
                except RuntimeError:  # changed size during iteration (its tick thread applied)
                    time.sleep(0.01)
            else:
                raise RuntimeError(f"could not copy group g{i}'s dict")
            groups[f"g{i}"] = [obj.raftLastApplied, len(data), digest(data)]
        return {"ok": True, "groups": groups}

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return {"ok": True, "status": self.status()}
        if op == "wait_balanced":
            return self.wait_balanced(float(req.get("timeout", 60.0)))
        if op == "bench":
            return self.bench(
                float(req.get("seconds", 5)),
                int(req.get("writers", 64)),
                int(req.get("value_bytes", 100)),
                str(req.get("prefix", "m")),
                req.get("start_at"),
                int(req.get("max_samples", MAX_SAMPLES)),
            )
        if op == "dump":
            return self.dump()
        raise ValueError(f"unknown op {op!r}")


def serve(node: MultiNode, control: str) -> socketserver.ThreadingTCPServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("a request is a JSON object")
                    resp = node.handle(req)
                except Exception as exc:
                    resp = {"ok": False, "error": type(exc).__name__, "detail": str(exc)}
                self.wfile.write(json.dumps(resp).encode() + b"\n")
                self.wfile.flush()

    address, _, port = control.rpartition(":")
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((address, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="many PySyncObj groups in one process, with a control channel")
    p.add_argument("--id", required=True)
    p.add_argument("--layout", type=Path, required=True, help='JSON {"hosts": {"h1": [port, ...], ...}}')
    p.add_argument("--groups", type=int, required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--no-batch", action="store_true", help="appendEntriesUseBatch=False")
    p.add_argument("--append-entries-period", type=float, default=0.1)
    p.add_argument("--auto-tick-period", type=float, default=0.05)
    args = p.parse_args(argv)
    layout: dict[str, list[int]] = json.loads(args.layout.read_text())["hosts"]
    if args.id not in layout:
        p.error(f"--id {args.id!r} is not in the layout's hosts {sorted(layout)}")
    if args.groups < 1 or any(len(ports) < args.groups for ports in layout.values()):
        p.error(f"--groups must be between 1 and the layout's ports per host ({args.groups})")
    min_timeout = max(0.4, 4 * args.append_entries_period)
    conf: dict[str, Any] = {
        "appendEntriesUseBatch": not args.no_batch,
        "appendEntriesPeriod": args.append_entries_period,
        "autoTickPeriod": args.auto_tick_period,
        "raftMinTimeout": min_timeout,
        "raftMaxTimeout": max(1.4, 3.5 * min_timeout),
        "connectionTimeout": max(3.5, 3.5 * min_timeout),
        "commandsQueueSize": 1_000_000,
        "logCompactionMinEntries": 10_000_000,
        "logCompactionMinTime": 3600,
    }
    # An instance holds a listening socket, peer connections and a wake-up pipe: lift the
    # soft open-files limit to the hard one so the descriptors are not what stops it first.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        node = MultiNode(args.id, layout, args.groups, conf)
    except (OSError, RuntimeError) as exc:  # a port taken, no more threads
        print(f"cannot create {args.groups} SyncObj instances: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(3)
    serve(node, args.control)
    print(f"READY {args.control}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy()
        sys.exit(0)


if __name__ == "__main__":
    main()

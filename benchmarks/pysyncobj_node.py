"""A PySyncObj node in its own OS process, with a control channel mirroring procnode's.

Used by ``bench_cluster.py`` to run PySyncObj under the same load as raftlib::

    python benchmarks/pysyncobj_node.py --self 127.0.0.1:7001 \\
        --partners 127.0.0.1:7002,127.0.0.1:7003 --control 127.0.0.1:8001 \\
        [--no-batch] [--append-entries-period 0.01] [--auto-tick-period 0.005]

The replicated state machine is a dict (``@replicated def set(self, key, value)``).  PySyncObj keeps
its Raft log in memory (no ``journalFile``): nothing is written to disk, let alone fsynced.

Control requests (newline-delimited JSON on a loopback TCP port, one answer per line):

* ``{"op": "status"}`` -> role, leader, commit/applied index, pid, the configuration
* ``{"op": "put", "key": "k", "value": "v"}`` (synchronous replicated write)
* ``{"op": "dump"}`` -> key count, a digest of the sorted items, the applied index
  (``"full": true`` also returns the items)
* ``{"op": "bench", "seconds": 3, "concurrency": 64, "value_bytes": 100, "prefix": "r1"}``: a closed-loop
  write load generated inside this (leader) process: ``concurrency`` writers, each issuing one
  ``set(key, value, callback=...)`` and issuing its next write only from that write's callback.  The
  latency of a write runs from the call to its callback.  Chaining writers through callbacks (rather
  than one blocked OS thread per writer) is the cheapest way to drive PySyncObj: the next write is
  queued from the tick thread right where the previous one is applied, with no thread wake-up.

The process prints ``READY <control address>`` on stdout once it serves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socketserver
import sys
import threading
import time
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated


class ReplicatedDict(SyncObj):
    """The same state machine as procnode's DictMachine: ``set(key, value)``."""

    def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_address, partners, conf)
        self.data: dict[str, str] = {}

    @replicated
    def set(self, key: str, value: str) -> None:
        self.data[key] = value


def _percentile(sorted_values: list[float], q: float) -> float:
    """Same definition as raftlib.testing.procnode's."""
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def digest(items: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(items):
        h.update(k.encode() + b"\0" + items[k].encode() + b"\n")
    return h.hexdigest()


class Node:
    def __init__(self, obj: ReplicatedDict, conf_desc: dict[str, Any]) -> None:
        self.obj = obj
        self.conf_desc = conf_desc

    def status(self) -> dict[str, Any]:
        st = self.obj.getStatus()
        leader = st["leader"]
        return {
            "role": {0: "follower", 1: "candidate", 2: "leader"}.get(st["state"], str(st["state"])),
            "leader": None if leader is None else str(getattr(leader, "address", leader)),
            "self": str(self.obj.selfNode.address),
            "term": st["raft_term"],
            "commit": st["commit_idx"],
            "applied": st["last_applied"],
            "has_quorum": st["has_quorum"],
            "pid": os.getpid(),
            "conf": self.conf_desc,
        }

    def snapshot_data(self) -> dict[str, str]:
        for _ in range(100):
            try:
                return dict(self.obj.data)
            except RuntimeError:  # changed size during iteration (the tick thread applied)
                time.sleep(0.01)
        raise RuntimeError("could not copy the dict")

    def put(self, key: str, value: str, timeout: float) -> dict[str, Any]:
        self.obj.set(key, value, sync=True, timeout=timeout)
        return {"ok": True}

    def bench(self, seconds: float, concurrency: int, value_bytes: int, prefix: str) -> dict[str, Any]:
        obj = self.obj
        value = "v" * value_bytes
        latencies: list[float] = []
        errors: list[int] = []
        lock = threading.Lock()
        done = threading.Event()
        state = {"counter": 0, "active": concurrency}
        perf = time.perf_counter
        stop_at = perf() + seconds

        def issue(w: int) -> None:
            with lock:
                state["counter"] += 1
                n = state["counter"]
            t0 = perf()
            obj.set(f"{prefix}-{w}-{n}", value, callback=lambda res, err: on_done(w, t0, err))

        def finish() -> None:
            with lock:
                state["active"] -= 1
                last = state["active"] == 0
            if last:
                done.set()

        def on_done(w: int, t0: float, err: int) -> None:
            t1 = perf()
            if err != FAIL_REASON.SUCCESS:
                errors.append(err)
                finish()
                return
            latencies.append(t1 - t0)
            if t1 < stop_at:
                issue(w)
            else:
                finish()

        started = perf()
        for w in range(concurrency):
            issue(w)
        if not done.wait(seconds + 30):
            return {"ok": False, "error": "Timeout", "detail": f"{state['active']} writers still waiting"}
        elapsed = perf() - started
        if errors:
            detail = f"{len(errors)} writes failed: {errors[:5]}"
            return {"ok": False, "error": "WriteFailed", "detail": detail}
        latencies.sort()
        return {
            "ok": True,
            "writes": len(latencies),
            "elapsed": elapsed,
            "writes_per_s": len(latencies) / elapsed if elapsed else 0.0,
            "p50_ms": _percentile(latencies, 0.50) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
        }

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return {"ok": True, "status": self.status()}
        if op == "put":
            return self.put(req["key"], req["value"], float(req.get("timeout", 5.0)))
        if op == "dump":
            data = self.snapshot_data()
            ans: dict[str, Any] = {
                "ok": True,
                "keys": len(data),
                "digest": digest(data),
                "applied": self.obj.raftLastApplied,
            }
            if req.get("full"):
                ans["data"] = data
            return ans
        if op == "bench":
            if not self.obj._isLeader():
                return {"ok": False, "error": "NotLeader", "leader": self.status()["leader"]}
            return self.bench(
                float(req.get("seconds", 3)),
                int(req.get("concurrency", 1)),
                int(req.get("value_bytes", 100)),
                str(req.get("prefix", "bench")),
            )
        raise ValueError(f"unknown op {op!r}")


def serve(node: Node, control: str) -> socketserver.ThreadingTCPServer:
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

    host, _, port = control.rpartition(":")
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="a PySyncObj node with a control channel")
    p.add_argument("--self", dest="self_address", required=True, help="host:port of this node")
    p.add_argument("--partners", required=True, help="comma-separated host:port of the others")
    p.add_argument("--control", required=True)
    p.add_argument("--no-batch", action="store_true", help="appendEntriesUseBatch=False")
    p.add_argument("--append-entries-period", type=float, default=0.1)
    p.add_argument("--auto-tick-period", type=float, default=0.05)
    p.add_argument("--raft-min-timeout", type=float, default=None)
    args = p.parse_args(argv)

    min_timeout = args.raft_min_timeout or max(0.4, 4 * args.append_entries_period)
    conf_kw: dict[str, Any] = {
        "appendEntriesUseBatch": not args.no_batch,
        "appendEntriesPeriod": args.append_entries_period,
        "autoTickPeriod": args.auto_tick_period,
        "raftMinTimeout": min_timeout,
        "raftMaxTimeout": max(1.4, 3.5 * min_timeout),
        "connectionTimeout": max(3.5, 3.5 * min_timeout),
        "commandsQueueSize": 1_000_000,
        # The log lives in memory; compact rarely enough that it does not interfere with a run.
        "logCompactionMinEntries": 10_000_000,
        "logCompactionMinTime": 3600,
    }
    obj = ReplicatedDict(args.self_address, args.partners.split(","), SyncObjConf(**conf_kw))
    node = Node(obj, {k: v for k, v in conf_kw.items() if isinstance(v, bool | int | float)})
    serve(node, args.control)
    print(f"READY {args.control}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        obj.destroy()
        sys.exit(0)


if __name__ == "__main__":
    main()

"""A RaftHost with many groups in its own OS process, with a control channel, for benchmarks.

Owns one :class:`~raftlib.RaftHost` of a 3-host (or n-host) cluster on 127.0.0.1 and the
groups ``g0`` .. ``g<N-1>`` on it, each a replicated dict
(:class:`raftlib.testing.procnode.DictMachine`), and answers newline-delimited JSON on a
control address (loopback only), like :mod:`raftlib.testing.procnode`::

    python -m raftlib.testing.hostnode --id h1 \\
        --hosts h1=127.0.0.1:7001,h2=127.0.0.1:7002,h3=127.0.0.1:7003 \\
        --data-dir /tmp/m/h1 --groups 100 --control 127.0.0.1:8001 [--memory] [--no-quiesce]

Every host of the cluster is started with the same ``--hosts`` and ``--groups``; each adds
every group with every host as a member, then prints ``READY <control address>`` on stdout.

Requests (one JSON object per line; one JSON answer per line, in order):

* ``{"op": "status"}``: ``host.status()`` plus ``pid``, ``compiled``, ``leads`` (how many
  groups each host leads, as this host sees it) and ``leaderless`` (groups with no known
  leader here).
* ``{"op": "wait_balanced", "timeout": 60}``: waits until every group has a leader (as seen
  here) and no host leads more than its share (``ceil(groups / hosts)``); answers
  ``balanced`` (false on timeout), ``leads``, ``leaderless``, ``waited``.
* ``{"op": "bench", "seconds": 5, "writers": 64, "value_bytes": 100, "prefix": "m",
  "start_at": <epoch s>}``: closed-loop writer ``i`` writes to group ``g<i % N>``; this host
  runs the writers of the groups it leads when the call starts (after ``start_at``; with none,
  it waits ``seconds`` so the counts cover the same window). Answers
  ``writes``, ``elapsed``, ``writers`` run here, ``failed`` (writes that ended in an error:
  the writer stops), ``errors`` by type, ``latency_ms`` (sorted; at most ``max_samples``
  evenly spaced over the sorted latencies, so percentiles are kept), ``fsyncs`` and
  ``write_batches`` (deltas of the host's shared write queue over the call).
* ``{"op": "groups"}``: per group ``[role, leader, term, commit, applied, quiesced]`` here.
* ``{"op": "dump"}``: per group ``[applied index, key count, sha256 of the sorted items]``.

Errors come back as ``{"ok": false, "error": "<type>", "detail": ...}``.

Invariant: a bench answer counts only acknowledged writes as ``writes``; a write that failed
may still have been committed (``failed`` bounds how many).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import os
import sys
import time
from typing import Any

import raftlib
from raftlib.node import NodeConfig
from raftlib.runtime.host import RaftHost
from raftlib.testing.procnode import (
    _KEYLEN,
    DictMachine,
    _parse_members,
    _percentile,
    serve_until_signalled,
    start_control,
)

MAX_SAMPLES = 200_000
"""Latency samples returned by one bench call at most (evenly spaced over the sorted list)."""


def group_ids(n: int) -> list[str]:
    """The ids of a cluster's ``n`` benchmark groups."""
    return [f"g{i}" for i in range(n)]


def thin(sorted_values: list[float], cap: int) -> list[float]:
    """At most ``cap`` values evenly spaced over ``sorted_values`` (keeps its percentiles)."""
    n = len(sorted_values)
    if n <= cap:
        return sorted_values
    step = (n - 1) / (cap - 1)
    return [sorted_values[round(i * step)] for i in range(cap)]


def dict_digest(data: dict[bytes, bytes]) -> str:
    """sha256 of a replica's sorted items: equal on every replica that applied the same log."""
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k)
        h.update(b"\0")
        h.update(data[k])
        h.update(b"\n")
    return h.hexdigest()


class HostControl:
    """Serves the control channel of one host and its groups."""

    def __init__(self, host: RaftHost, machines: dict[str, DictMachine]) -> None:
        self.host = host
        self.machines = machines
        self.gids = list(machines)

    def leads(self) -> tuple[dict[str, int], int]:
        """How many groups each host leads as seen here, and how many have no known leader."""
        leads = dict.fromkeys(self.host.hosts, 0)
        leaderless = 0
        for node in self.host.groups.values():
            lead = node.leader
            if lead in leads:
                leads[lead] += 1
            else:
                leaderless += 1
        return leads, leaderless

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            st = self.host.status()
            leads, leaderless = self.leads()
            st.update(pid=os.getpid(), compiled=raftlib.COMPILED, leads=leads, leaderless=leaderless)
            return {"ok": True, "status": st}
        if op == "wait_balanced":
            return await self.wait_balanced(float(req.get("timeout", 60.0)))
        if op == "bench":
            return await self.bench(
                float(req.get("seconds", 5)),
                int(req.get("writers", 64)),
                int(req.get("value_bytes", 100)),
                str(req.get("prefix", "m")),
                req.get("start_at"),
                int(req.get("max_samples", MAX_SAMPLES)),
            )
        if op == "groups":
            return {"ok": True, "groups": {gid: self.group_brief(gid) for gid in self.gids}}
        if op == "dump":
            return {
                "ok": True,
                "groups": {
                    gid: [self.host.group(gid).status().get("applied", 0), len(sm.data), dict_digest(sm.data)]
                    for gid, sm in self.machines.items()
                },
            }
        raise ValueError(f"unknown op {op!r}")

    def group_brief(self, gid: str) -> list[Any]:
        """``[role, leader, term, commit, applied, quiesced]`` of this host's member of ``gid``."""
        node = self.host.group(gid)
        st = node.status()
        return [str(st.get("role")), st.get("leader"), st.get("term"), st.get("commit"), st.get("applied"),
                node.quiesced]

    async def wait_balanced(self, timeout: float) -> dict[str, Any]:
        """Every group led, and no host leading more than ``ceil(groups / hosts)`` (as seen here)."""
        share = math.ceil(len(self.gids) / len(self.host.hosts))
        started = time.monotonic()
        while True:
            leads, leaderless = self.leads()
            balanced = leaderless == 0 and max(leads.values()) <= share
            waited = time.monotonic() - started
            if balanced or waited >= timeout:
                return {"ok": True, "balanced": balanced, "leads": leads, "leaderless": leaderless,
                        "share": share, "waited": waited}
            await asyncio.sleep(0.1)

    async def bench(self, seconds: float, writers: int, value_bytes: int, prefix: str,
                    start_at: float | None, max_samples: int) -> dict[str, Any]:
        """Closed-loop writers of the groups this host leads now, for ``seconds``."""
        if seconds <= 0 or writers < 1 or value_bytes < 0 or max_samples < 2:
            raise ValueError("bench needs seconds > 0, writers >= 1, value_bytes >= 0, max_samples >= 2")
        host = self.host
        n = len(self.gids)
        mine = [(w, host.group(self.gids[w % n])) for w in range(writers)
                if host.group(self.gids[w % n]).is_leader]
        if start_at is not None:
            await asyncio.sleep(max(0.0, min(30.0, float(start_at) - time.time())))
        value = b"v" * value_bytes
        latencies: list[float] = []
        errors: dict[str, int] = {}
        q0 = host.status()
        perf = time.perf_counter
        stop_at = perf() + seconds
        timeout = max(10.0, 4 * host.config.election_timeout())

        async def writer(w: int, node: raftlib.RaftNode) -> None:
            count = 0
            while perf() < stop_at:
                count += 1
                key = f"{prefix}-{w}-{count}".encode()
                t0 = perf()
                try:
                    await node.propose(_KEYLEN.pack(len(key)) + key + value, timeout=timeout)
                except (raftlib.RaftError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return  # leadership moved or the write timed out: this writer stops
                latencies.append(perf() - t0)

        started = perf()
        await asyncio.gather(*(writer(w, node) for w, node in mine))
        if not mine:  # no writer here: still a window as long, for the fsync and batch counts
            await asyncio.sleep(max(0.0, stop_at - perf()))
        elapsed = perf() - started
        q1 = host.status()
        latencies.sort()
        return {
            "ok": True,
            "host": host.id,
            "writers": len(mine),
            "writes": len(latencies),
            "failed": sum(errors.values()),
            "errors": errors,
            "elapsed": elapsed,
            "p50_ms": _percentile(latencies, 0.50) * 1000,
            "p99_ms": _percentile(latencies, 0.99) * 1000,
            "latency_ms": [round(x * 1000, 4) for x in thin(latencies, max_samples)],
            "fsyncs": q1["fsyncs"] - q0["fsyncs"],
            "write_batches": q1["write_batches"] - q0["write_batches"],
        }


async def run(args: argparse.Namespace) -> None:
    config = NodeConfig(
        tick_interval=args.tick,
        cluster_id=args.cluster_id,
        fsync=not args.no_fsync,
        snapshot_entries=args.snapshot_entries,
    )
    if not args.memory:
        os.makedirs(args.data_dir, exist_ok=True)
    host = RaftHost(
        args.id,
        args.hosts,
        None if args.memory else args.data_dir,
        config,
        quiesce=not args.no_quiesce,
        balance_interval=args.balance_interval or None,
    )
    await host.start()
    machines: dict[str, DictMachine] = {}
    try:
        for gid in group_ids(args.groups):
            sm = machines[gid] = DictMachine()
            await host.add_group(gid, list(args.hosts), sm)
        control = HostControl(host, machines)
        server = await start_control(args.control, control.handle)
    except BaseException:
        await host.stop()
        raise
    try:
        await serve_until_signalled(server, args.control)
    finally:
        await host.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a RaftHost process with many groups and a control channel")
    parser.add_argument("--id", required=True)
    parser.add_argument("--hosts", type=_parse_members, required=True, help="id=host:port,... of every host")
    parser.add_argument("--data-dir", help="the host's shared log directory (required unless --memory)")
    parser.add_argument("--groups", type=int, required=True, help="groups g0..g<N-1> on every host")
    parser.add_argument("--control", required=True, help="host:port of the control channel")
    parser.add_argument("--memory", action="store_true", help="keep every group in memory (no data dir)")
    parser.add_argument("--no-quiesce", action="store_true", help="tick idle groups too")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--balance-interval", type=float, default=0.5,
                        help="seconds between leader balancer rounds (0: no balancer)")
    parser.add_argument("--cluster-id", default="raftlib")
    parser.add_argument("--tick", type=float, default=0.05)
    parser.add_argument("--snapshot-entries", type=int, default=10_000)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.groups < 1:
        parser.error("--groups must be at least 1")
    if not args.memory and not args.data_dir:
        parser.error("--data-dir is required unless --memory")
    if args.id not in args.hosts:
        parser.error(f"--id {args.id!r} is not in --hosts")
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.uvloop:
        raftlib.install_uvloop()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()

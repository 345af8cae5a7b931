"""Batteries throughput: raftlib.recipes vs PySyncObj's batteries, in the same run.

Two recipes, each on 3-process clusters on 127.0.0.1:

* ``dict``: puts of ``--value-bytes`` values into a replicated dict (raftlib ``ReplDict.put``,
  exactly-once through the group's session; PySyncObj ``ReplDict.set``);
* ``lock``: acquire + release cycles, each client on its own lock (raftlib ``Locks.acquire`` +
  ``release``, with a fencing token and a TTL lease; PySyncObj ``ReplLockManager.tryAcquire`` +
  ``release``). One cycle is two replicated commands; the figures count cycles.

The load is generated inside the leader's process (PySyncObj has no network client):
``concurrency`` closed-loop clients, each starting its next operation when the previous one is
answered. raftlib runs with fsync on (disk storage, ``--uvloop`` when importable); PySyncObj keeps
its log in memory and fsyncs nothing, in the configurations of ``bench_cluster.py``'s
``VARIANTS`` (``--pso-variants``), the best one per case being compared against.

After each run the three replicas are compared (same number of dict keys, no lock left held);
a difference fails the run loudly.

Output: a table on stderr; one JSON object per line on stdout with ``recipe``, ``system``,
``concurrency``, ``ops_per_s``, ``p50_ms``, ``p99_ms``, and on raftlib's lines ``ratio`` =
raftlib ops/s / the best PySyncObj ops/s and ``compiled`` (whether the nodes ran raftlib's
compiled core; a pure-Python run is warned about on stderr).

    .venv/bin/python benchmarks/bench_recipes.py [--seconds 3] [--rounds 1] [--concurrency 1,64]

The same file is the node program of both systems (``raft-node`` and ``pso-node`` subcommands).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_cluster import VARIANTS, machine  # noqa: E402

from raftlib.testing.proccluster import ProcError, control_request, free_ports  # noqa: E402

DEFAULT_VARIANTS = "nobatch,batch-1ms"


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def _summary(latencies: list[float], elapsed: float) -> dict[str, Any]:
    latencies.sort()
    return {
        "ok": True,
        "ops": len(latencies),
        "elapsed": elapsed,
        "ops_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


# -- the raftlib node process ----------------------------------------------------------------------


def raft_node(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench_recipes.py raft-node")
    p.add_argument("--id", required=True)
    p.add_argument("--members", required=True, help="id=host:port,...")
    p.add_argument("--control", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args(argv)
    import raftlib
    from raftlib.recipes import Locks, ReplDict, ReplicatedStateMachine

    if args.uvloop:
        raftlib.install_uvloop()
    members = dict(x.split("=", 1) for x in args.members.split(","))

    async def main() -> None:
        group = ReplicatedStateMachine()
        d = group.add(ReplDict("d"))
        locks = group.add(Locks("l"))
        # No snapshots during a run (PySyncObj's log compaction is off too), as in bench_cluster.
        cfg = raftlib.NodeConfig(forward_proposals=True, snapshot_entries=10**9)
        node = raftlib.RaftNode(args.id, members, group, data_dir=args.data_dir, config=cfg)
        await node.start()

        async def bench(recipe: str, seconds: float, concurrency: int, value_bytes: int, prefix: str) -> Any:
            if not node.is_leader:
                return {"ok": False, "error": "NotLeader", "leader": node.leader}
            value = "v" * value_bytes
            latencies: list[float] = []
            perf = time.perf_counter
            stop_at = perf() + seconds

            async def client(w: int) -> None:
                n = 0
                key = f"{prefix}-lock-{w}"
                owner = f"client-{w}"
                while perf() < stop_at:
                    n += 1
                    t0 = perf()
                    if recipe == "dict":
                        await d.put(f"{prefix}-{w}-{n}", value)
                    else:
                        token = await locks.acquire(key, owner, ttl=30.0, timeout=10.0)
                        await locks.release(key, owner, token)
                    latencies.append(perf() - t0)

            started = perf()
            await asyncio.gather(*(client(w) for w in range(concurrency)))
            return _summary(latencies, perf() - started)

        async def handle(req: dict[str, Any]) -> Any:
            op = req.get("op")
            if op == "status":
                st = node.status()
                return {"ok": True, "status": {"role": str(st["role"]).rsplit(".", 1)[-1].lower(),
                                               "leader": st["leader"], "applied": st["applied"],
                                               "commit": st["commit"], "pid": os.getpid(),
                                               "compiled": raftlib.COMPILED}}
            if op == "connect":
                await group.connect(node)
                return {"ok": True}
            if op == "bench":
                return await bench(str(req["recipe"]), float(req["seconds"]), int(req["concurrency"]),
                                   int(req.get("value_bytes", 100)), str(req.get("prefix", "b")))
            if op == "dump":
                await group.read_barrier()
                return {"ok": True, "keys": len(d), "locks_held": len(locks.held())}
            raise ValueError(f"unknown op {op!r}")

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    try:
                        resp = await handle(json.loads(line))
                    except Exception as exc:
                        resp = {"ok": False, "error": type(exc).__name__, "detail": str(exc)}
                    writer.write(json.dumps(resp).encode() + b"\n")
                    await writer.drain()
            finally:
                writer.close()

        host, _, port = args.control.rpartition(":")
        server = await asyncio.start_server(serve, host, int(port))
        print(f"READY {args.control}", flush=True)
        async with server:
            await asyncio.Event().wait()

    asyncio.run(main())


# -- the PySyncObj node process --------------------------------------------------------------------


def pso_node(argv: list[str]) -> None:
    import socketserver

    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict, ReplLockManager

    p = argparse.ArgumentParser(prog="bench_recipes.py pso-node")
    p.add_argument("--self", dest="self_address", required=True)
    p.add_argument("--partners", required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--no-batch", action="store_true")
    p.add_argument("--append-entries-period", type=float, default=0.1)
    p.add_argument("--auto-tick-period", type=float, default=0.05)
    args = p.parse_args(argv)
    min_timeout = max(0.4, 4 * args.append_entries_period)
    conf = SyncObjConf(
        appendEntriesUseBatch=not args.no_batch,
        appendEntriesPeriod=args.append_entries_period,
        autoTickPeriod=args.auto_tick_period,
        raftMinTimeout=min_timeout,
        raftMaxTimeout=max(1.4, 3.5 * min_timeout),
        connectionTimeout=max(3.5, 3.5 * min_timeout),
        commandsQueueSize=1_000_000,
        logCompactionMinEntries=10_000_000,
        logCompactionMinTime=3600,
    )
    d = ReplDict()
    locks = ReplLockManager(autoUnlockTime=30.0, selfID=args.self_address)
    obj = SyncObj(args.self_address, args.partners.split(","), conf, consumers=[d, locks])

    def bench(recipe: str, seconds: float, concurrency: int, value_bytes: int, prefix: str) -> dict[str, Any]:
        value = "v" * value_bytes
        latencies: list[float] = []
        errors: list[Any] = []
        mutex = threading.Lock()
        done = threading.Event()
        state = {"counter": 0, "active": concurrency}
        perf = time.perf_counter
        stop_at = perf() + seconds

        def finish() -> None:
            with mutex:
                state["active"] -= 1
                if state["active"] == 0:
                    done.set()

        def completed(w: int, t0: float) -> None:
            t1 = perf()
            latencies.append(t1 - t0)
            if t1 < stop_at:
                issue(w)
            else:
                finish()

        def issue(w: int) -> None:
            t0 = perf()
            if recipe == "dict":
                with mutex:
                    state["counter"] += 1
                    n = state["counter"]

                def on_set(res: Any, err: Any) -> None:
                    if err != FAIL_REASON.SUCCESS:
                        errors.append(err)
                        finish()
                    else:
                        completed(w, t0)

                d.set(f"{prefix}-{w}-{n}", value, callback=on_set)
                return
            lock_id = f"{prefix}-lock-{w}"

            def on_release(res: Any, err: Any) -> None:
                if err != FAIL_REASON.SUCCESS:
                    errors.append(err)
                    finish()
                else:
                    completed(w, t0)

            def on_acquire(res: Any, err: Any) -> None:
                if err != FAIL_REASON.SUCCESS or not res:
                    errors.append((err, res))
                    finish()
                else:
                    locks.release(lock_id, callback=on_release)

            locks.tryAcquire(lock_id, callback=on_acquire)

        started = perf()
        for w in range(concurrency):
            issue(w)
        if not done.wait(seconds + 30):
            return {"ok": False, "error": "Timeout"}
        if errors:
            return {"ok": False, "error": "OpFailed", "detail": f"{len(errors)} failed: {errors[:5]}"}
        return _summary(latencies, perf() - started)

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            st = obj.getStatus()
            leader = st["leader"]
            return {"ok": True, "status": {
                "role": {0: "follower", 1: "candidate", 2: "leader"}.get(st["state"], "?"),
                "leader": None if leader is None else str(getattr(leader, "address", leader)),
                "self": args.self_address, "applied": st["last_applied"], "commit": st["commit_idx"],
                "pid": os.getpid()}}
        if op == "connect":
            return {"ok": True}
        if op == "bench":
            if not obj._isLeader():
                return {"ok": False, "error": "NotLeader"}
            return bench(str(req["recipe"]), float(req["seconds"]), int(req["concurrency"]),
                         int(req.get("value_bytes", 100)), str(req.get("prefix", "b")))
        if op == "dump":
            impl = locks._consumer()  # PySyncObj exposes no count of held locks
            return {"ok": True, "keys": len(d), "locks_held": len(impl._ReplLockManagerImpl__locks)}
        raise ValueError(f"unknown op {op!r}")

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                try:
                    resp = handle(json.loads(line))
                except Exception as exc:
                    resp = {"ok": False, "error": type(exc).__name__, "detail": str(exc)}
                self.wfile.write(json.dumps(resp).encode() + b"\n")
                self.wfile.flush()

    host, _, port = args.control.rpartition(":")
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"READY {args.control}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        locks.destroy()
        obj.destroy()


# -- the driver --------------------------------------------------------------------------------------


class Cluster:
    """Three node processes of either system, with their control channels."""

    def __init__(self, system: str, base: Path, extra: list[str]) -> None:
        self.base = base
        self.system = system
        self.ids = ["a", "b", "c"]
        ports = free_ports(6)
        self.peer = {i: f"127.0.0.1:{ports[k]}" for k, i in enumerate(self.ids)}
        self.control = {i: f"127.0.0.1:{ports[3 + k]}" for k, i in enumerate(self.ids)}
        self.extra = extra
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, i: str) -> list[str]:
        me = [sys.executable, str(Path(__file__).resolve())]
        if self.system == "raftlib":
            members = ",".join(f"{j}={self.peer[j]}" for j in self.ids)
            return [*me, "raft-node", "--id", i, "--members", members, "--control", self.control[i],
                    "--data-dir", str(self.base / i), *self.extra]
        partners = ",".join(self.peer[j] for j in self.ids if j != i)
        return [*me, "pso-node", "--self", self.peer[i], "--partners", partners,
                "--control", self.control[i], *self.extra]

    def __enter__(self) -> Cluster:
        self.base.mkdir(parents=True, exist_ok=True)
        for i in self.ids:
            with open(self.base / f"{i}.log", "ab") as log:
                self.procs[i] = subprocess.Popen(self.command(i), stdout=subprocess.PIPE, stderr=log)
        for i, proc in self.procs.items():
            assert proc.stdout is not None
            if not proc.stdout.readline().startswith(b"READY"):
                raise ProcError(f"{self.system} node {i} did not start: "
                                f"{(self.base / f'{i}.log').read_text()[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=20)
            if proc.stdout is not None:
                proc.stdout.close()

    def request(self, i: str, timeout: float = 30.0, **req: Any) -> dict[str, Any]:
        ans = control_request(self.control[i], timeout, **req)
        if not ans.get("ok"):
            raise ProcError(f"{self.system} node {i}: {req.get('op')} failed: {ans}")
        return ans

    def wait_leader(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            roles = {}
            for i in self.ids:
                with contextlib.suppress(OSError, ProcError, ValueError):
                    roles[i] = self.request(i, timeout=2.0, op="status")["status"]["role"]
            leaders = [i for i, r in roles.items() if r == "leader"]
            if len(leaders) == 1 and len(roles) == 3:
                return leaders[0]
            time.sleep(0.05)
        raise ProcError(f"no single {self.system} leader within {timeout}s")


def run(system: str, extra: list[str], base: Path, recipe: str, concurrency: int, seconds: float,
        warmup: float, value_bytes: int) -> dict[str, Any]:
    with Cluster(system, base, extra) as c:
        leader = c.wait_leader()
        for i in c.ids:
            c.request(i, op="connect")
        bench = dict(op="bench", recipe=recipe, concurrency=concurrency, value_bytes=value_bytes)
        if warmup > 0:
            c.request(leader, timeout=warmup + 60, seconds=warmup, prefix="w", **bench)
        res = c.request(leader, timeout=seconds + 60, seconds=seconds, prefix="m", **bench)
        deadline = time.monotonic() + 30
        while True:  # the replicas agree once every member applied the last write
            dumps = {i: c.request(i, op="dump") for i in c.ids}
            views = {(x["keys"], x["locks_held"]) for x in dumps.values()}
            if len(views) == 1:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"CONSISTENCY CHECK FAILED: {system} replicas differ: {dumps}")
            time.sleep(0.1)
        (keys, held), = views
        if held:
            raise SystemExit(f"CONSISTENCY CHECK FAILED: {system} left {held} locks held")
        if recipe == "dict" and system == "raftlib" and keys < res["ops"]:
            raise SystemExit(f"CONSISTENCY CHECK FAILED: {keys} keys for {res['ops']} acknowledged puts")
        res["checked_keys"] = keys
        res["compiled"] = c.request(leader, op="status")["status"].get("compiled")
        return res


def report(recipe: str, conc: int, r: int, system: str, res: dict[str, Any]) -> None:
    print(f"  {recipe:<4} c={conc:<4} round {r} {system:<20}{res['ops_per_s']:>8.0f} op/s "
          f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:8.2f} ms", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["raft-node"]:
        raft_node(argv[1:])
        return 0
    if argv[:1] == ["pso-node"]:
        pso_node(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=1, help="rounds per configuration; best is reported")
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--recipes", default="dict,lock")
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--pso-variants", default=DEFAULT_VARIANTS)
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    concs = [int(x) for x in args.concurrency.split(",") if x]
    recipes = [r for r in args.recipes.split(",") if r]
    variants = [v for v in args.pso_variants.split(",") if v]
    for r in recipes:
        if r not in ("dict", "lock"):
            p.error(f"unknown recipe {r!r}")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown PySyncObj variant {v!r}")
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        p.error("pysyncobj is not installed (pip install -e '.[bench]')")
    raft_extra: list[str] = []
    if not args.no_uvloop:
        try:
            import uvloop  # noqa: F401

            raft_extra = ["--uvloop"]
        except ImportError:
            pass
    info = machine()
    err = sys.stderr
    print(f"machine: nproc={info['nproc']} python={info['python']} loadavg={info['loadavg']}; "
          f"raftlib fsync on (uvloop={'yes' if raft_extra else 'no'}), PySyncObj in-memory log; "
          f"variants {variants}", file=err)
    tmp = Path(tempfile.mkdtemp(prefix="bench_recipes-"))
    lines = []
    try:
        for recipe in recipes:
            for conc in concs:
                raft_runs, pso_runs = [], {v: [] for v in variants}
                for r in range(args.rounds):
                    res = run("raftlib", raft_extra, tmp / f"raft-{recipe}-{conc}-{r}", recipe, conc,
                              args.seconds, args.warmup, args.value_bytes)
                    raft_runs.append(res)
                    report(recipe, conc, r, "raftlib", res)
                    for v in variants:
                        res = run("pysyncobj", VARIANTS[v], tmp / f"pso-{v}-{recipe}-{conc}-{r}", recipe,
                                  conc, args.seconds, args.warmup, args.value_bytes)
                        pso_runs[v].append(res)
                        report(recipe, conc, r, f"pysyncobj {v}", res)
                rb = max(raft_runs, key=lambda x: x["ops_per_s"])
                per_variant = {v: max(runs, key=lambda x: x["ops_per_s"]) for v, runs in pso_runs.items()}
                bv = max(per_variant, key=lambda v: per_variant[v]["ops_per_s"])
                pb = per_variant[bv]
                ratio = rb["ops_per_s"] / pb["ops_per_s"] if pb["ops_per_s"] else float("inf")
                common = {"recipe": recipe, "concurrency": conc}
                lines.append({**common, "system": "raftlib", "ops_per_s": round(rb["ops_per_s"], 1),
                              "p50_ms": round(rb["p50_ms"], 3), "p99_ms": round(rb["p99_ms"], 3),
                              "ratio": round(ratio, 3), "durable": True,
                              "compiled": all(x["compiled"] for x in raft_runs)})
                lines.append({**common, "system": "pysyncobj", "ops_per_s": round(pb["ops_per_s"], 1),
                              "p50_ms": round(pb["p50_ms"], 3), "p99_ms": round(pb["p99_ms"], 3),
                              "config": bv, "durable": False})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    compiled = all(x["compiled"] for x in lines if x["system"] == "raftlib")
    print(f"raftlib compiled core: {compiled}", file=err)
    if not compiled:
        print("!" * 78 + "\nWARNING: raftlib's compiled core is NOT in use (pure Python): these are not "
              "the figures to compare (run `make build` first)\n" + "!" * 78, file=err)
    for line in lines:
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The example KV store (examples/kvstore) vs etcd 3.4, through the same HTTP/JSON gateway, in one run.

Both systems run as 3-member clusters of separate OS processes on 127.0.0.1, started by
tests/kvcluster.py with the same etcd flags (default heartbeat 100 ms, election timeout 1000 ms,
data dirs on the same file system; etcd fsyncs its WAL, as the store does).  The load generator is
this process: one asyncio/aiohttp client (uvloop when importable), identical for both systems, with
``concurrency`` closed-loop workers, each sending its next request when the previous one answered,
over keep-alive connections to the gateway of the cluster's leader (found via
``/v3/maintenance/status``).

Operations (``--ops``):

* ``put``:   ``POST /v3/kv/put`` of a 100-byte value (``--value-bytes``) to one of 1000 keys;
* ``range``: ``POST /v3/kv/range`` of one pre-written key with a 100-byte value, linearizable (the
  default: no ``serializable``), so every read costs a quorum round trip (ReadIndex) on both systems.

For each (op, concurrency) the systems alternate (etcd, store, store, etcd, ... for ``--rounds``
rounds), each for ``--warmup`` seconds unmeasured and then ``--seconds`` measured, on clusters
started once at the beginning; the best round (highest ops/s, with its latencies) is reported, as
the machine may be shared.  Every request must answer 200; errors are counted and reported.

Output: a table on stderr; one JSON object per line on stdout with ``system``, ``op``,
``concurrency``, ``ops_per_s``, ``p50_ms``, ``p99_ms``, ``errors``, ``client_cpu``, ``leader_cpu`` and
``cluster_cpu`` (CPU seconds per second used by the load generator, the leader, and all three members
together, from /proc: a value near 1.0 for one process means it was CPU-bound), and on the store's lines
``ratio`` (its ops/s / etcd's) and ``p50_ratio`` (its p50 / etcd's: below 1 is better).  Without an
``etcd`` binary the etcd side is skipped with a message (no ratios); ``--plot PATH`` writes a PNG
(needs matplotlib).

    .venv/bin/python benchmarks/bench_kv.py [--seconds 4] [--warmup 1] [--rounds 2] [--concurrency 1,16,256]
        [--ops put,range] [--systems etcd,raftlib] [--plot docs/img/kv_vs_etcd.png]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from kvcluster import KVCluster, backend_unavailable_reason  # noqa: E402

LABEL = {"etcd": "etcd", "raftlib": "raftlib kvstore"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def b64(x: bytes) -> str:
    return base64.b64encode(x).decode()


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def request_bodies(op: str, value_bytes: int) -> list[bytes]:
    """Pre-encoded request bodies the workers cycle through, built before the clock starts."""
    if op == "put":  # 1000 keys, 100-byte values
        return [
            json.dumps(
                {"key": b64(b"/bench/put/%d" % i), "value": b64((b"v%d-" % i).ljust(value_bytes, b"x"))}
            ).encode()
            for i in range(1000)
        ]
    if op == "range":  # the 64 keys written by prepare()
        return [json.dumps({"key": b64(b"/bench/range/%d" % k)}).encode() for k in range(64)]
    raise ValueError(op)


OP_PATH = {"put": "/v3/kv/put", "range": "/v3/kv/range"}


async def run_load(
    url: str,
    op: str,
    concurrency: int,
    warmup: float,
    seconds: float,
    value_bytes: int,
    profile: tuple[int, str] | None = None,
    pids: list[int] | None = None,
) -> dict[str, Any]:
    """Closed-loop load: returns ops/s and latency percentiles of the measured window."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    bodies = request_bodies(op, value_bytes)
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds
    target = url + OP_PATH[op]

    cpu_marks: dict[str, float] = {}
    server_cpu: list[float] = []

    async def cpu_probe() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        cpu_marks["start"] = time.process_time()
        server_start = [proc_cpu_seconds(p) for p in pids or []]
        spy = None
        if profile is not None:  # sample the server process for the measured window
            pid, out = profile
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [exe, "record", "-p", str(pid), "-f", "raw", "-r", "100", "-d", str(int(seconds)), "-o", out],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu_marks["end"] = time.process_time()
        server_cpu.extend(proc_cpu_seconds(p) - t for p, t in zip(pids or [], server_start, strict=True))
        if spy is not None:
            await asyncio.get_running_loop().run_in_executor(None, spy.wait)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(w: int) -> None:
            nonlocal errors
            i = w * 31
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                body = bodies[i % len(bodies)]
                i += 1
                try:
                    async with session.post(target, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                t1 = time.perf_counter()
                if t_measure <= t1 <= t_end:  # completions inside the measured window
                    if ok:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1

        await asyncio.gather(cpu_probe(), *(worker(w) for w in range(concurrency)))

    latencies.sort()
    return {
        "ops_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "errors": errors,
        "ops": len(latencies),
        # CPU seconds the load generator used per measured second: near 1.0 means it was saturated
        "client_cpu": round((cpu_marks["end"] - cpu_marks["start"]) / seconds, 2),
        # the same for the leader (first pid) and for all three members together
        "leader_cpu": round(server_cpu[0] / seconds, 2) if server_cpu else None,
        "cluster_cpu": round(sum(server_cpu) / seconds, 2) if server_cpu else None,
    }


async def prepare(url: str, value_bytes: int) -> None:
    """Write the keys the range benchmark reads."""
    async with aiohttp.ClientSession() as session:
        for k in range(64):
            body = {"key": b64(b"/bench/range/%d" % k), "value": b64(b"r".ljust(value_bytes, b"x"))}
            async with session.post(url + "/v3/kv/put", json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"prepare put failed: {resp.status} {await resp.text()}")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    return {
        "loadavg": load,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "date": time.strftime("%F"),
    }


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in results}, key=["put", "range"].index)
    systems = [s for s in ("etcd", "raftlib") if any(r["system"] == s for r in results)]
    concs = sorted({r["concurrency"] for r in results})
    fig, axes = plt.subplots(2, len(ops), figsize=(5.5 * len(ops), 7), squeeze=False)
    width = 0.8 / max(1, len(systems))
    for col, op in enumerate(ops):
        for row, (metric, ylabel) in enumerate((("ops_per_s", "ops/s"), ("p50_ms", "p50 latency (ms)"))):
            ax = axes[row][col]
            for si, system in enumerate(systems):
                vals = []
                for c in concs:
                    key = (system, op, c)
                    hit = [r[metric] for r in results if (r["system"], r["op"], r["concurrency"]) == key]
                    vals.append(hit[0] if hit else 0)
                xs = [x + si * width - 0.4 + width / 2 for x in range(len(concs))]
                bars = ax.bar(xs, vals, width, label=LABEL[system])
                ax.bar_label(bars, fmt="%.0f" if metric == "ops_per_s" else "%.1f", fontsize=7)
            ax.set_xticks(range(len(concs)), [str(c) for c in concs])
            ax.set_xlabel("concurrency (closed-loop clients)")
            ax.set_ylabel(ylabel)
            kind = "linearizable range" if op == "range" else "put (100-byte value)"
            ax.set_title(f"{kind}: {ylabel.split(' ')[0]}")
            if metric == "p50_ms":
                ax.set_yscale("log")
            ax.legend(fontsize=8)
    info = machine_info()
    fig.suptitle(
        f"3-member clusters on 127.0.0.1 via the HTTP/JSON gateway; nproc={info['nproc']}, "
        f"Python {info['python']}, {info['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log(f"plot written to {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per configuration")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    ap.add_argument("--concurrency", default="1,16,256", help="comma-separated closed-loop client counts")
    ap.add_argument("--ops", default="put,range", help="comma-separated: put, range")
    ap.add_argument("--systems", default="etcd,raftlib", help="comma-separated: etcd, raftlib")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2, help="repeat every configuration; report the best round")
    ap.add_argument("--plot", metavar="PNG", help="write a plot of the results (needs matplotlib)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the clusters' data dirs and logs")
    ap.add_argument(
        "--py-spy",
        metavar="DIR",
        help="record the store's leader with py-spy (-f raw) during its first measured round of every "
        "configuration, into DIR/<op>-c<concurrency>.txt",
    )
    args = ap.parse_args()
    concs = [int(c) for c in args.concurrency.split(",") if c]
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OP_PATH:
            ap.error(f"unknown op {o!r}")

    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"

    base = Path(tempfile.mkdtemp(prefix="bench_kv-"))
    clusters: dict[str, KVCluster] = {}
    urls: dict[str, str] = {}
    leader_pids: dict[str, int] = {}
    for system in [s for s in args.systems.split(",") if s]:
        reason = backend_unavailable_reason(system)
        if reason:
            log(f"skipping {system}: {reason}")
            continue
        cluster = KVCluster(system, base / system)
        try:
            cluster.start(timeout=60)
            leader = cluster.leader()
            urls[system] = cluster.members[leader].client_url
            asyncio.run(prepare(urls[system], args.value_bytes))
        except Exception as e:  # report it and go on with the other system
            log(f"skipping {system}: its cluster did not start or serve ({str(e).splitlines()[0]})")
            cluster.stop()
            continue
        clusters[system] = cluster
        lm = cluster.members[leader]
        leader_pids[system] = lm.pid or 0
        log(f"{system}: leader {lm.name} at {urls[system]} (pid {lm.pid})")
    if not clusters:
        log("nothing to benchmark")
        return 1

    info = machine_info()
    log(
        f"machine: nproc={info['nproc']}, {info['cpu']}, Python {info['python']}, "
        f"load average {info['loadavg']}, load generator on {loop_name}; "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s per configuration"
    )
    results: list[dict[str, Any]] = []
    flip = False
    try:
        for op in ops:
            for conc in concs:
                order = [s for s in ("etcd", "raftlib") if s in clusters]
                if flip:
                    order.reverse()
                flip = not flip
                row: dict[str, dict[str, Any]] = {}
                for rnd in range(args.rounds):
                    for system in order if rnd % 2 == 0 else order[::-1]:
                        profile = None
                        if args.py_spy and system == "raftlib" and rnd == 0:
                            Path(args.py_spy).mkdir(parents=True, exist_ok=True)
                            profile = (leader_pids[system], f"{args.py_spy}/{op}-c{conc}.txt")
                        pids = [leader_pids[system]] + [
                            m.pid or 0 for m in clusters[system].members if m.pid != leader_pids[system]
                        ]
                        load = run_load(
                            urls[system], op, conc, args.warmup, args.seconds, args.value_bytes, profile, pids
                        )
                        res = asyncio.run(load)
                        if system not in row or res["ops_per_s"] > row[system]["ops_per_s"]:
                            row[system] = {"system": system, "op": op, "concurrency": conc, **res}
                        log(f"  (round {rnd + 1}: {system} {op} c={conc}: {res['ops_per_s']:.0f} ops/s)")
                if "etcd" in row and "raftlib" in row:
                    e, r = row["etcd"], row["raftlib"]
                    r["ratio"] = round(r["ops_per_s"] / e["ops_per_s"], 3) if e["ops_per_s"] else None
                    r["p50_ratio"] = round(r["p50_ms"] / e["p50_ms"], 3) if e["p50_ms"] else None
                for system in ("etcd", "raftlib"):
                    if system in row:
                        out = row[system]
                        results.append(out)
                        print(json.dumps(out), flush=True)
                        extra = f"  ratio {out['ratio']:.2f}x" if out.get("ratio") else ""
                        log(
                            f"{LABEL[system]:>16} {op:>5} c={conc:<4} {out['ops_per_s']:>9.0f} ops/s  "
                            f"p50 {out['p50_ms']:>8.2f} ms  p99 {out['p99_ms']:>8.2f} ms  "
                            f"cpu: client {out['client_cpu']:.2f} leader {out['leader_cpu']:.2f} "
                            f"cluster {out['cluster_cpu']:.2f}  errors {out['errors']}{extra}"
                        )
    finally:
        for cluster in clusters.values():
            cluster.stop()
        if args.keep_dir:
            log(f"data dirs and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    if args.plot:
        try:
            plot(results, args.plot)
        except ImportError:
            log("matplotlib is not installed: no plot (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

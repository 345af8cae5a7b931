"""The example KV store (examples/kvstore) vs etcd, over gRPC and the HTTP/JSON gateway, in one run.

Both systems run as 3-member clusters of separate OS processes on 127.0.0.1, started by
tests/kvcluster.py with the same etcd flags (default heartbeat 100 ms, election timeout 1000 ms,
data dirs on the same file system; etcd fsyncs its WAL, as the store does).  Both serve gRPC and the
gateway on one client URL (etcd's default); the load goes to the cluster's leader (found via
``/v3/maintenance/status``).

Load generators (``--generator``), the same for both systems, closed-loop: ``concurrency`` clients,
each sending its next request when the previous one answered:

* ``native`` (the default): compiled generators, so the client's CPU does not cap the servers:
  ``h2load`` (Debian's nghttp2-client) for gRPC unary calls, one HTTP/2 connection per client with
  one stream at a time; ``wrk`` (one thread, one keep-alive connection per client) for the gateway.
  Both are installed by ``scripts/install-loadgen.sh``.  h2load cannot read gRPC trailers, so gRPC
  errors are counted from the leader's ``grpc_server_handled_total{grpc_code="OK"}`` (both systems
  export it): every request h2load saw answered must appear there, else it counts as an error.
* ``python``: one asyncio client in this process (uvloop when importable): aiohttp for the gateway,
  grpc.aio for gRPC.  It costs 80-90 us of CPU per request and caps any server on a small machine.

APIs (``--apis``) and operations (``--ops``):

* ``put``: a 100-byte value (``--value-bytes``); the gateway and the Python generator cycle over
  1000 keys, h2load sends one pre-encoded request (one key) per operation;
* ``range``: one pre-written key with a 100-byte value, linearizable (no ``serializable``), so
  every read costs a quorum round trip (ReadIndex) on both systems.

For each (api, op, concurrency) the systems alternate (etcd, store, store, etcd, ... for ``--rounds``
rounds), each for ``--warmup`` seconds unmeasured and then ``--seconds`` measured, on clusters
started once at the beginning; the best round (highest ops/s, with its latencies) is reported, as
the machine may be shared.

Output: a table on stderr; one JSON object per line on stdout with ``system``, ``api``, ``op``,
``concurrency``, ``generator``, ``ops_per_s``, ``p50_ms``, ``p99_ms``, ``errors``, ``client_cpu``,
``leader_cpu`` and ``cluster_cpu`` (CPU seconds per second used by the load generator, the leader,
and all three members together, from /proc: near 1.0 for one process means it was CPU-bound),
``leader_cpu_us_per_op`` (the leader's CPU per request) and, on the store's lines, ``ratio`` (its
ops/s / etcd's) and ``p50_ratio`` (its p50 / etcd's: below 1 is better).  Without an ``etcd``
binary the etcd side is skipped with a message (no ratios); ``--plot PATH`` writes a PNG (needs
matplotlib).  The first line on stderr says which raftlib build ran (compiled or pure).

    .venv/bin/python benchmarks/bench_kv.py [--seconds 4] [--warmup 1] [--rounds 2] [--concurrency 1,16,256]
        [--apis grpc,gateway] [--ops put,range] [--generator native|python] [--systems etcd,raftlib]
        [--plot docs/img/kv_vs_etcd.png]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))  # examples.kvstore.proto (the gRPC requests), raftlib

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
GRPC_METHOD = {"put": "Put", "range": "Range"}


def grpc_requests(op: str, value_bytes: int) -> list[bytes]:
    """Serialized protobuf requests for the gRPC runs (the same keys as the gateway's)."""
    from examples.kvstore.proto.stubs import rpc_pb2

    if op == "put":
        return [
            rpc_pb2.PutRequest(
                key=b"/bench/put/%d" % i, value=(b"v%d-" % i).ljust(value_bytes, b"x")
            ).SerializeToString()
            for i in range(1000)
        ]
    if op == "range":
        return [rpc_pb2.RangeRequest(key=b"/bench/range/%d" % k).SerializeToString() for k in range(64)]
    raise ValueError(op)


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag byte 0 (uncompressed), 4-byte big-endian length."""
    return b"\0" + len(message).to_bytes(4, "big") + message


class Measure:
    """The measured window of one run: the servers' CPU (and optionally a py-spy profile of the
    leader) between ``t_measure`` and ``t_end`` (perf_counter times)."""

    def __init__(self, pids: list[int], seconds: float, profile: tuple[int, str] | None) -> None:
        self.pids = pids
        self.seconds = seconds
        self.profile = profile
        self.t_measure = 0.0
        self.t_end = 0.0
        self.server_cpu: list[float] = []

    def start_at(self, t_measure: float) -> None:
        self.t_measure = t_measure
        self.t_end = t_measure + self.seconds

    async def run(self) -> None:
        await asyncio.sleep(max(0.0, self.t_measure - time.perf_counter()))
        start = [proc_cpu_seconds(p) for p in self.pids]
        spy = None
        if self.profile is not None:
            pid, out = self.profile
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen(
                [
                    exe,
                    "record",
                    "-p",
                    str(pid),
                    "-f",
                    "raw",
                    "-r",
                    "100",
                    "-d",
                    str(int(self.seconds)),
                    "-o",
                    out,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        await asyncio.sleep(max(0.0, self.t_end - time.perf_counter()))
        self.server_cpu = [proc_cpu_seconds(p) - t for p, t in zip(self.pids, start, strict=True)]
        if spy is not None:
            await asyncio.get_running_loop().run_in_executor(None, spy.wait)

    def figures(self, ops: int, latencies_s: list[float], errors: int, client_cpu_s: float) -> dict[str, Any]:
        latencies_s.sort()
        s = self.seconds
        leader = self.server_cpu[0] if self.server_cpu else None
        return {
            "ops_per_s": round(ops / s, 1),
            "p50_ms": round(percentile(latencies_s, 0.50) * 1000, 3),
            "p99_ms": round(percentile(latencies_s, 0.99) * 1000, 3),
            "errors": errors,
            "ops": ops,
            # CPU seconds per measured second: near 1.0 means that process was saturated
            "client_cpu": round(client_cpu_s / s, 2),
            "leader_cpu": round(leader / s, 2) if leader is not None else None,
            "cluster_cpu": round(sum(self.server_cpu) / s, 2) if self.server_cpu else None,
            "leader_cpu_us_per_op": round(leader / ops * 1e6, 1) if leader is not None and ops else None,
        }


async def closed_loop(
    concurrency: int,
    measure: Measure,
    send: Callable[[int, int], Awaitable[bool]],
) -> dict[str, Any]:
    """``concurrency`` workers in this process, each awaiting ``send(worker, i)`` (True when the
    request succeeded) in a loop until the measured window ends."""
    latencies: list[float] = []
    errors = 0
    cpu: dict[str, float] = {}

    async def worker(w: int) -> None:
        nonlocal errors
        i = w * 31
        while True:
            t0 = time.perf_counter()
            if t0 >= measure.t_end:
                return
            ok = await send(w, i)
            i += 1
            t1 = time.perf_counter()
            if measure.t_measure <= t1 <= measure.t_end:  # completions inside the measured window
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    async def own_cpu() -> None:
        await asyncio.sleep(max(0.0, measure.t_measure - time.perf_counter()))
        cpu["start"] = time.process_time()
        await asyncio.sleep(max(0.0, measure.t_end - time.perf_counter()))
        cpu["end"] = time.process_time()

    await asyncio.gather(measure.run(), own_cpu(), *(worker(w) for w in range(concurrency)))
    return measure.figures(len(latencies), latencies, errors, cpu["end"] - cpu["start"])


async def run_python_gateway(
    url: str, op: str, concurrency: int, warmup: float, value_bytes: int, measure: Measure, workdir: Path
) -> dict[str, Any]:
    """Closed-loop load from this process over the gateway (aiohttp keep-alive connections)."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "application/json"}
    bodies = request_bodies(op, value_bytes)
    target = url + OP_PATH[op]
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def send(w: int, i: int) -> bool:
            try:
                async with session.post(target, data=bodies[i % len(bodies)], headers=headers) as resp:
                    await resp.read()
                    return resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        measure.start_at(time.perf_counter() + warmup)
        return await closed_loop(concurrency, measure, send)


async def run_python_grpc(
    url: str, op: str, concurrency: int, warmup: float, value_bytes: int, measure: Measure, workdir: Path
) -> dict[str, Any]:
    """Closed-loop load from this process over gRPC (grpc.aio, one connection per client)."""
    import grpc

    method = "/etcdserverpb.KV/" + GRPC_METHOD[op]
    bodies = grpc_requests(op, value_bytes)
    # a local subchannel pool per channel: grpc would otherwise share one connection among them
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(url.split("://", 1)[1], options=options) for _ in range(concurrency)
    ]
    calls = [ch.unary_unary(method) for ch in channels]  # bytes in, bytes out: no (de)serializing
    try:

        async def send(w: int, i: int) -> bool:
            try:
                await calls[w](bodies[i % len(bodies)], timeout=30)
                return True
            except grpc.aio.AioRpcError:
                return False

        measure.start_at(time.perf_counter() + warmup)
        return await closed_loop(concurrency, measure, send)
    finally:
        for ch in channels:
            await ch.close()


WRK_SCRIPT = """
-- generated by benchmarks/bench_kv.py: cycle over pre-formatted POSTs, print a JSON summary
local bodies = {%(bodies)s}
local reqs = {}
local n = 0
init = function(args)
  for i, body in ipairs(bodies) do
    reqs[i] = wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, body)
  end
end
request = function()
  n = n + 1
  return reqs[(n %% #reqs) + 1]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50.0), latency:percentile(99.0)))
end
"""


def children_cpu_seconds() -> float:
    """CPU seconds of every child process this one has reaped so far (getrusage RUSAGE_CHILDREN)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def run_command(argv: list[str], timeout: float) -> tuple[str, float]:
    """Run a load generator to its end: its output and the CPU seconds it used."""
    before = children_cpu_seconds()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {text[-500:]}")
    return text, children_cpu_seconds() - before


async def run_wrk(
    url: str, op: str, concurrency: int, warmup: float, value_bytes: int, measure: Measure, workdir: Path
) -> dict[str, Any]:
    """wrk (one thread, ``concurrency`` keep-alive connections) against the gateway: an unmeasured
    warm-up invocation, then the measured one."""
    script = workdir / f"wrk-{op}.lua"
    lua_bodies = ", ".join(
        "[[" + b.decode() + "]]" for b in request_bodies(op, value_bytes)
    )  # no ']]' in JSON of base64
    script.write_text(WRK_SCRIPT % {"bodies": lua_bodies, "path": OP_PATH[op]})
    wrk = shutil.which("wrk") or "wrk"

    def argv(duration: float) -> list[str]:
        return [
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{duration:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]

    if warmup > 0:
        await run_command(argv(max(1.0, warmup)), warmup + 30)
    measure.start_at(time.perf_counter())
    (out, cpu), _ = await asyncio.gather(
        run_command(argv(measure.seconds), measure.seconds + 30), measure.run()
    )
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out[-500:]}")
    res = json.loads(line[len("WRKJSON ") :])
    window = res["duration_us"] / 1e6
    ok = max(0, res["requests"] - res["errors"])
    ops = round(ok * measure.seconds / window) if window else 0  # scaled to the measured seconds
    fig = measure.figures(ops, [], res["errors"], cpu)
    fig.update(p50_ms=round(res["p50_us"] / 1000, 3), p99_ms=round(res["p99_us"] / 1000, 3))
    return fig


def grpc_ok_count(url: str, method: str) -> int:
    """``grpc_server_handled_total{grpc_code="OK", grpc_method=method}`` for etcdserverpb.KV at the
    member at ``url`` (etcd and the store both export it on the client URL's /metrics)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{"):
            labels, value = line.rsplit(" ", 1)
            if (
                'grpc_code="OK"' in labels
                and f'grpc_method="{method}"' in labels
                and "etcdserverpb.KV" in labels
            ):
                total += float(value)
    return int(total)


H2LOAD_SUMMARY = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)


async def run_h2load(
    url: str, op: str, concurrency: int, warmup: float, value_bytes: int, measure: Measure, workdir: Path
) -> dict[str, Any]:
    """h2load (one thread, ``concurrency`` HTTP/2 connections with one stream each) sending gRPC
    unary calls: an unmeasured warm-up invocation, then the measured one, whose per-request log
    gives the latencies.  Errors: HTTP-level failures, plus answers the leader did not count as OK
    (a gRPC error is an HTTP 200 whose trailers h2load does not read)."""
    body = workdir / f"grpc-{op}.bin"
    body.write_bytes(grpc_frame(grpc_requests(op, value_bytes)[0]))
    logfile = workdir / f"h2load-{op}-{concurrency}.log"
    h2load = shutil.which("h2load") or "h2load"
    method = GRPC_METHOD[op]

    def argv(duration: float, log_to: Path | None) -> list[str]:
        # -N: a connection silent for 10 s is closed and its requests count as failed (no hang)
        cmd = [h2load, "-t1", f"-c{concurrency}", "-m1", f"-D{duration:g}", "-N10", "-d", str(body)]
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        cmd += [f"--log-file={log_to}"] if log_to is not None else []
        return [*cmd, f"{url}/etcdserverpb.KV/{method}"]

    if warmup > 0:
        await run_command(argv(max(1.0, warmup), None), warmup + 60)
    loop = asyncio.get_running_loop()
    ok_before = await loop.run_in_executor(None, grpc_ok_count, url, method)
    logfile.unlink(missing_ok=True)
    measure.start_at(time.perf_counter())
    (out, cpu), _ = await asyncio.gather(
        run_command(argv(measure.seconds, logfile), measure.seconds + 60), measure.run()
    )
    ok_after = await loop.run_in_executor(None, grpc_ok_count, url, method)
    m = H2LOAD_SUMMARY.search(out)
    if m is None:
        raise RuntimeError(f"h2load printed no summary: {out[-500:]}")
    succeeded = int(m.group(3))
    http_errors = int(m.group(4)) + int(m.group(5)) + int(m.group(6))
    grpc_errors = max(0, succeeded - (ok_after - ok_before))
    latencies = []
    for line in logfile.read_text().splitlines():  # start time (us), HTTP status, elapsed (us)
        _, status, elapsed = line.split("\t")
        if status == "200":
            latencies.append(int(elapsed) / 1e6)
    return measure.figures(succeeded - grpc_errors, latencies, http_errors + grpc_errors, cpu)


GENERATORS: dict[tuple[str, str], Callable[..., Awaitable[dict[str, Any]]]] = {
    ("python", "gateway"): run_python_gateway,
    ("python", "grpc"): run_python_grpc,
    ("native", "gateway"): run_wrk,
    ("native", "grpc"): run_h2load,
}
NATIVE_TOOL = {"gateway": "wrk", "grpc": "h2load"}


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

    panels = sorted(
        {(r["api"], r["op"]) for r in results}, key=lambda p: (API_ORDER.index(p[0]), p[1] != "put")
    )
    systems = [s for s in ("etcd", "raftlib") if any(r["system"] == s for r in results)]
    concs = sorted({r["concurrency"] for r in results})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7), squeeze=False)
    width = 0.8 / max(1, len(systems))
    for col, (api, op) in enumerate(panels):
        for row, (metric, ylabel) in enumerate((("ops_per_s", "ops/s"), ("p50_ms", "p50 latency (ms)"))):
            ax = axes[row][col]
            for si, system in enumerate(systems):
                vals = []
                for c in concs:
                    key = (system, api, op, c)
                    hit = [
                        r[metric]
                        for r in results
                        if (r["system"], r["api"], r["op"], r["concurrency"]) == key
                    ]
                    vals.append(hit[0] if hit else 0)
                xs = [x + si * width - 0.4 + width / 2 for x in range(len(concs))]
                bars = ax.bar(xs, vals, width, label=LABEL[system])
                ax.bar_label(bars, fmt="%.0f" if metric == "ops_per_s" else "%.2f", fontsize=7)
            ax.set_xticks(range(len(concs)), [str(c) for c in concs])
            ax.set_xlabel("closed-loop clients")
            ax.set_ylabel(ylabel)
            kind = "linearizable range" if op == "range" else "put"
            ax.set_title(f"{api}: {kind}, {ylabel.split(' ')[0]}", fontsize=10)
            if metric == "p50_ms":
                ax.set_yscale("log")
            ax.legend(fontsize=8)
    info = machine_info()
    gens = ", ".join(sorted({r["generator"] for r in results}))
    fig.suptitle(
        f"3-member clusters on 127.0.0.1, load generator: {gens}; nproc={info['nproc']}, "
        f"Python {info['python']}, {info['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log(f"plot written to {path}")


API_ORDER = ["grpc", "gateway"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per configuration")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    ap.add_argument("--concurrency", default="1,16,256", help="comma-separated closed-loop client counts")
    ap.add_argument("--apis", default="grpc,gateway", help="comma-separated: grpc, gateway")
    ap.add_argument("--ops", default="put,range", help="comma-separated: put, range")
    ap.add_argument(
        "--generator",
        choices=["native", "python"],
        default="native",
        help="native: h2load (gRPC) and wrk (gateway), the default; python: this process (aiohttp, grpc.aio)",
    )
    ap.add_argument("--systems", default="etcd,raftlib", help="comma-separated: etcd, raftlib")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2, help="repeat every configuration; report the best round")
    ap.add_argument("--plot", metavar="PNG", help="write a plot of the results (needs matplotlib)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the clusters' data dirs and logs")
    ap.add_argument(
        "--py-spy",
        metavar="DIR",
        help="record the store's leader with py-spy (-f raw) during its first measured round of every "
        "configuration, into DIR/<api>-<op>-c<concurrency>.txt",
    )
    args = ap.parse_args()
    try:
        concs = [int(c) for c in args.concurrency.split(",") if c]
    except ValueError:
        ap.error(f"--concurrency takes comma-separated integers, not {args.concurrency!r}")
    if not concs or min(concs) < 1:
        ap.error("--concurrency needs client counts of at least 1")
    if args.seconds <= 0 or args.warmup < 0:
        ap.error("--seconds must be positive and --warmup not negative")
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OP_PATH:
            ap.error(f"unknown op {o!r} (put, range)")
    apis = [a for a in args.apis.split(",") if a]
    for a in apis:
        if a not in API_ORDER:
            ap.error(f"unknown api {a!r} (grpc, gateway)")
    if args.generator == "native":
        missing = [NATIVE_TOOL[a] for a in apis if shutil.which(NATIVE_TOOL[a]) is None]
        if missing:
            ap.error(
                f"--generator native needs {', '.join(missing)} (scripts/install-loadgen.sh); "
                "or use --generator python"
            )

    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"

    import raftlib

    build = (
        "compiled (Cython)" if raftlib.COMPILED else "pure Python (run `make build` for the compiled core)"
    )
    log(f"raftlib build: {build}; the store's members import the same tree")
    base = Path(tempfile.mkdtemp(prefix="bench_kv-"))
    workdir = base / "load"
    workdir.mkdir()
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
        f"load average {info['loadavg']}; load generator: {args.generator}"
        + (
            f" (this process, {loop_name})"
            if args.generator == "python"
            else " (h2load for gRPC, wrk for the gateway)"
        )
        + f"; {args.warmup:g} s warm-up + {args.seconds:g} s per configuration"
    )
    results: list[dict[str, Any]] = []
    flip = False
    try:
        for api in apis:
            run = GENERATORS[(args.generator, api)]
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
                                profile = (leader_pids[system], f"{args.py_spy}/{api}-{op}-c{conc}.txt")
                            pids = [leader_pids[system]] + [
                                m.pid or 0 for m in clusters[system].members if m.pid != leader_pids[system]
                            ]
                            measure = Measure(pids, args.seconds, profile)
                            load = run(
                                urls[system], op, conc, args.warmup, args.value_bytes, measure, workdir
                            )
                            try:
                                res = asyncio.run(load)
                            except RuntimeError as exc:
                                raise RuntimeError(f"{system} {api} {op} c={conc}: {exc}") from exc
                            if system not in row or res["ops_per_s"] > row[system]["ops_per_s"]:
                                row[system] = {
                                    "system": system,
                                    "api": api,
                                    "op": op,
                                    "concurrency": conc,
                                    "generator": args.generator,
                                    **res,
                                }
                            log(
                                f"  (round {rnd + 1}: {system} {api} {op} c={conc}: "
                                f"{res['ops_per_s']:.0f} ops/s)"
                            )
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
                                f"{LABEL[system]:>16} {api:>7} {op:>5} c={conc:<4} "
                                f"{out['ops_per_s']:>9.0f} ops/s  "
                                f"p50 {out['p50_ms']:>7.2f} ms  p99 {out['p99_ms']:>7.2f} ms  "
                                f"cpu: client {out['client_cpu']:.2f} leader {out['leader_cpu']:.2f} "
                                f"({out['leader_cpu_us_per_op']} us/op) cluster {out['cluster_cpu']:.2f}  "
                                f"errors {out['errors']}{extra}"
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

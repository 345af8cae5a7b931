"""Cluster write throughput: raftlib vs PySyncObj, in the same run.

Both systems run as 3-node clusters of separate OS processes on 127.0.0.1 with the same replicated
dict state machine.  The writes are generated inside the leader's process (PySyncObj has no network
client): ``concurrency`` closed-loop writers, each issuing its next write when the previous one has
been applied, with ``--value-bytes`` values.

* raftlib: ``python -m raftlib.testing.procnode`` (``raftlib.testing.proccluster``), its ``bench``
  control op; disk storage with fsync on (``durable: true``); ``--uvloop`` when uvloop is importable.
* PySyncObj: ``benchmarks/pysyncobj_node.py``; its log is kept in memory, nothing is fsynced
  (``durable: false``).  It is run in several configurations (``--pso-variants``, see ``VARIANTS``),
  and the best one for each concurrency is the one compared against.

For each concurrency, the systems alternate: raftlib, every PySyncObj variant, raftlib, ... for
``--rounds`` rounds.  Each run starts a fresh cluster, waits for a leader, runs a ``--warmup`` second
load, then the measured ``--seconds`` load, then checks that the leader committed exactly the writes
it acknowledged and that all three replicas hold identical data (the run fails loudly otherwise).
The figure reported per system and configuration is the best round (highest writes/s, with that
round's p50/p99).

Output: a table on stderr; one JSON object per line on stdout (``system``, ``concurrency``,
``value_bytes``, ``durable``, ``writes_per_s``, ``p50_ms``, ``p99_ms``, and on raftlib's lines
``ratio`` = raftlib writes/s / the best PySyncObj writes/s); ``--plot PATH`` writes a PNG.

Run it with the project's virtualenv (the node processes use ``sys.executable``)::

    .venv/bin/python benchmarks/bench_cluster.py [--seconds 3] [--rounds 2] [--concurrency 1,64,1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raftlib.testing.proccluster import ProcCluster, ProcError, control_request, free_ports

HERE = Path(__file__).resolve().parent

# PySyncObj configurations (name -> pysyncobj_node.py arguments); the best one per concurrency is
# compared against.  Chosen by a sweep of appendEntriesPeriod (1-100 ms) x autoTickPeriod (0.5-50 ms),
# with and without batching (docs/performance.md):
#  * batch-default: the shipped defaults (appendEntriesUseBatch=True, appendEntriesPeriod=0.1 s,
#    autoTickPeriod=0.05 s): a command waits for the next append-entries period (~10 writes/s at
#    concurrency 1); not run by default.
#  * batch-1ms / batch-5ms: batching, with a 1 ms / 5 ms append-entries period and a 1 ms tick
#    (raftMinTimeout stays 0.4 s): the best at concurrency 64 and 1024.
#  * nobatch: appendEntriesUseBatch=False: one AppendEntries per command, sent at once (a pipe wakes
#    the tick thread); the best at concurrency 1.
VARIANTS: dict[str, list[str]] = {
    "batch-default": [],
    "batch-1ms": ["--append-entries-period", "0.001", "--auto-tick-period", "0.001"],
    "batch-5ms": ["--append-entries-period", "0.005", "--auto-tick-period", "0.001"],
    "nobatch": ["--no-batch"],
}
DEFAULT_VARIANTS = "nobatch,batch-1ms,batch-5ms"
PY_SPY_EXTRA: list[str] = ["--nonblocking"]


# -- PySyncObj cluster ---------------------------------------------------------------------------


class PsoCluster:
    """Three pysyncobj_node.py processes (same surface as ProcCluster where the benchmark needs it)."""

    def __init__(self, n: int, base_dir: Path, extra_args: list[str]) -> None:
        self.base = base_dir
        self.ids = [f"p{i}" for i in range(1, n + 1)]
        ports = free_ports(2 * n)
        self.peer = {i: f"127.0.0.1:{ports[k]}" for k, i in enumerate(self.ids)}
        self.control = {i: f"127.0.0.1:{ports[n + k]}" for k, i in enumerate(self.ids)}
        self.extra_args = extra_args
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> PsoCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        for i in self.ids:
            partners = ",".join(self.peer[j] for j in self.ids if j != i)
            with open(self.base / f"{i}.log", "ab") as log:
                self.procs[i] = subprocess.Popen(
                    [sys.executable, str(HERE / "pysyncobj_node.py"), "--self", self.peer[i],
                     "--partners", partners, "--control", self.control[i], *self.extra_args],
                    stdout=subprocess.PIPE, stderr=log,
                )
        for i, proc in self.procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(b"READY"):
                raise ProcError(f"{i} did not start: {(self.base / f'{i}.log').read_text()[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=20)
            if proc.stdout is not None:
                proc.stdout.close()

    def request(self, node_id: str, timeout: float = 10.0, **req: Any) -> dict[str, Any]:
        return control_request(self.control[node_id], timeout, **req)

    def status(self, node_id: str) -> dict[str, Any] | None:
        try:
            ans = self.request(node_id, op="status", timeout=2.0)
        except (OSError, ProcError, ValueError):
            return None
        return ans["status"] if ans.get("ok") else None

    def wait_leader(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sts = {i: self.status(i) for i in self.ids}
            leaders = [i for i, st in sts.items() if st and st["role"] == "leader"]
            if len(leaders) == 1:
                addr = sts[leaders[0]]["self"]
                if all(st and st["leader"] == addr for st in sts.values()):
                    return leaders[0]
            time.sleep(0.05)
        raise ProcError(f"no single PySyncObj leader within {timeout}s")


# -- one measured run ----------------------------------------------------------------------------


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"CONSISTENCY CHECK FAILED: {what}")


def _bench(cluster: Any, leader: str, seconds: float, concurrency: int, value_bytes: int,
           prefix: str) -> dict[str, Any]:
    ans: dict[str, Any] = cluster.request(
        leader, op="bench", seconds=seconds, concurrency=concurrency, value_bytes=value_bytes,
        prefix=prefix, timeout=seconds + 60,
    )
    if not ans.get("ok"):
        raise ProcError(f"bench failed on {leader}: {ans}")
    return ans


def _wait_applied(cluster: Any, index: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sts = [cluster.status(i) for i in cluster.ids]
        if all(st and st["applied"] >= index for st in sts):
            return
        time.sleep(0.05)
    raise SystemExit(f"CONSISTENCY CHECK FAILED: replicas did not apply index {index} within {timeout}s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(cluster: Any, leader: str, pids: dict[str, int], seconds: float, concurrency: int,
             value_bytes: int) -> dict[str, Any]:
    """The measured bench call, with the CPU time each node process used during it."""
    before = {i: _cpu_seconds(pid) for i, pid in pids.items()}
    res = _bench(cluster, leader, seconds, concurrency, value_bytes, "m")
    used = {i: _cpu_seconds(pid) - before[i] for i, pid in pids.items()}
    n = max(1, res["writes"])
    res["leader_cpu_us_per_write"] = used[leader] / n * 1e6
    res["followers_cpu_us_per_write"] = sum(v for i, v in used.items() if i != leader) / n * 1e6
    res["cpu_util"] = sum(used.values()) / res["elapsed"]  # in CPUs, all three processes
    return res


def _py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(exe):
        print("py-spy not found; not profiling", file=sys.stderr)
        return None
    return subprocess.Popen(
        [exe, "record", "-p", str(pid), "-f", "raw", "-d", str(max(1, int(seconds))), "-r", "200",
         *PY_SPY_EXTRA, "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def run_raftlib(base: Path, concurrency: int, seconds: float, warmup: float, value_bytes: int,
                uvloop: bool, profile_dir: Path | None, tag: str,
                snapshot_entries: int = 10**9, fsync: bool = True) -> dict[str, Any]:
    # No snapshots during a run (PySyncObj's log compaction is off too): see docs/performance.md.
    extra = ["--snapshot-entries", str(snapshot_entries)] + (["--uvloop"] if uvloop else [])
    if not fsync:
        extra.append("--no-fsync")
    with ProcCluster(3, base, extra_args=extra) as c:
        leader = c.wait_leader()
        st = c.status(leader) or {}
        pids = {i: (c.status(i) or {})["pid"] for i in c.ids}
        i0 = c.put(leader, "sentinel-start", "x")["index"]
        warm = _bench(c, leader, warmup, concurrency, value_bytes, "w") if warmup > 0 else None
        n_warm = warm["writes"] if warm else 0
        prof = None
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            prof = _py_spy(st["pid"], seconds, profile_dir / f"raftlib-c{concurrency}-{tag}.txt")
        res = _measure(c, leader, pids, seconds, concurrency, value_bytes)
        if prof is not None:
            prof.wait(timeout=seconds + 60)
        i1 = c.put(leader, "sentinel-end", "x")["index"]
        # procnode's bench keys are bench-<writer>-<n>, n = 1..writes of that call; each call
        # restarts n, so the warm-up's keys may be overwritten by the measured run's.
        n_meas = res["writes"]
        _check(i1 == i0 + n_warm + n_meas + 1,
               f"raftlib leader log grew by {i1 - i0 - 1} entries for {n_warm + n_meas} acknowledged writes")
        _wait_applied(c, i1)
        dumps = {i: c.dump(i) for i in c.ids}
        ref = dumps[leader]
        for i, d in dumps.items():
            _check(d == ref, f"raftlib replica {i} differs from the leader {leader}")
        counters = set()
        for k in ref:
            m = re.fullmatch(r"bench-(\d+)-(\d+)", k)
            if m:
                _check(int(m.group(1)) < concurrency, f"raftlib key {k} from an unknown writer")
                counters.add(int(m.group(2)))
        top = max(n_warm, n_meas)
        _check(counters == set(range(1, top + 1)), "raftlib keys do not match the writes acknowledged")
        _check(top + 2 <= len(ref) <= n_warm + n_meas + 2, f"raftlib holds {len(ref)} keys")
        fsyncs = res["fsyncs"] - (warm["fsyncs"] if warm else 0)
        res.update(durable=fsync, compiled=st.get("compiled"), checked_keys=len(ref),
                   writes_per_fsync=n_meas / fsyncs if fsyncs else None)
        return res


def run_pysyncobj(base: Path, variant: str, concurrency: int, seconds: float, warmup: float,
                  value_bytes: int) -> dict[str, Any]:
    with PsoCluster(3, base, VARIANTS[variant]) as c:
        leader = c.wait_leader()
        pids = {i: (c.status(i) or {})["pid"] for i in c.ids}
        c.request(leader, op="put", key="sentinel-start", value="x")
        n_warm = _bench(c, leader, warmup, concurrency, value_bytes, "w")["writes"] if warmup > 0 else 0
        res = _measure(c, leader, pids, seconds, concurrency, value_bytes)
        c.request(leader, op="put", key="sentinel-end", value="x")
        st = c.status(leader) or {}
        _wait_applied(c, st["commit"])
        dumps = {i: c.request(i, op="dump", timeout=60) for i in c.ids}
        ref = dumps[leader]
        for i, d in dumps.items():
            _check((d["digest"], d["applied"]) == (ref["digest"], ref["applied"]),
                   f"PySyncObj replica {i} differs from the leader {leader}: {d} vs {ref}")
        expect = n_warm + res["writes"] + 2
        _check(ref["keys"] == expect, f"PySyncObj holds {ref['keys']} keys, expected {expect}")
        res.update(durable=False, checked_keys=ref["keys"])
        return res


# -- reporting -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }


def _cpu(res: dict[str, Any]) -> str:
    return (f"cpu/write: leader {res['leader_cpu_us_per_write']:.0f} us, followers "
            f"{res['followers_cpu_us_per_write']:.0f} us ({res['cpu_util']:.2f} CPUs busy)")


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rounds, key=lambda r: r["writes_per_s"])


def plot(path: Path, concs: list[int], raft: dict[int, dict[str, Any]],
         pso: dict[int, dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, data, style in (("raftlib (fsync)", raft, "o-"), ("PySyncObj best (no fsync)", pso, "s--")):
        ax1.plot(concs, [data[c]["writes_per_s"] for c in concs], style, label=name)
        ax2.plot(concs, [data[c]["p99_ms"] for c in concs], style, label=name)
    ax1.set(xscale="log", yscale="log", xlabel="concurrent writers", ylabel="writes/s", title="throughput")
    ax2.set(xscale="log", yscale="log", xlabel="concurrent writers", ylabel="p99 latency (ms)",
            title="p99 latency")
    for ax in (ax1, ax2):
        ax.set_xticks(concs)
        ax.set_xticklabels([str(c) for c in concs])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run (default 1)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per configuration; best is reported")
    p.add_argument("--concurrency", default="1,64,1024", help="comma-separated (default 1,64,1024)")
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--pso-variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated, of {','.join(VARIANTS)} (default {DEFAULT_VARIANTS})")
    p.add_argument("--no-uvloop", action="store_true", help="run raftlib on the default asyncio loop")
    p.add_argument("--no-fsync", action="store_true",
                   help="also run raftlib with fsync off (equal durability with PySyncObj) and report it")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput and p99 vs concurrency")
    p.add_argument("--profile-dir", type=Path,
                   help="py-spy record (raw format) raftlib's leader during each measured run")
    p.add_argument("--keep", action="store_true", help="keep the clusters' data directories and logs")
    args = p.parse_args(argv)

    concs = [int(x) for x in args.concurrency.split(",") if x]
    variants = [v for v in args.pso_variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown PySyncObj variant {v!r}")
    use_uvloop = False
    if not args.no_uvloop:
        try:
            import uvloop  # noqa: F401

            use_uvloop = True
        except ImportError:
            pass
    try:
        import pysyncobj

        pso_version = getattr(pysyncobj, "__version__", None)
        if pso_version is None:
            from pysyncobj.version import VERSION as pso_version
    except ImportError:
        p.error("pysyncobj is not installed (pip install -e '.[bench]')")

    info = machine()
    err = sys.stderr
    print(f"machine: nproc={info['nproc']} cpu={info['cpu']!r} python={info['python']} "
          f"loadavg={info['loadavg']}", file=err)
    print(f"raftlib: fsync on, uvloop={'yes' if use_uvloop else 'no'}; PySyncObj {pso_version}: "
          f"in-memory log, no fsync; variants {variants}", file=err)
    print(f"{args.rounds} round(s) x {args.warmup:g}s warm-up + {args.seconds:g}s measured per run; "
          f"value {args.value_bytes} B; best round reported", file=err)

    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster-"))
    raft_rounds: dict[int, list[dict[str, Any]]] = {c: [] for c in concs}
    nofsync_rounds: dict[int, list[dict[str, Any]]] = {c: [] for c in concs}
    pso_rounds: dict[int, dict[str, list[dict[str, Any]]]] = {c: {v: [] for v in variants} for c in concs}
    compiled = None
    t_start = time.monotonic()
    try:
        for conc in concs:
            for r in range(args.rounds):
                res = run_raftlib(tmp / f"raft-c{conc}-r{r}", conc, args.seconds, args.warmup,
                                  args.value_bytes, use_uvloop, args.profile_dir, f"r{r}")
                compiled = res.get("compiled")
                raft_rounds[conc].append(res)
                print(f"  c={conc:<5} round {r}  raftlib            {res['writes_per_s']:>9.0f} w/s  "
                      f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:8.2f} ms  "
                      f"{_cpu(res)} [{res['checked_keys']} keys identical on 3 replicas]", file=err)
                if args.no_fsync:
                    res = run_raftlib(tmp / f"raftnf-c{conc}-r{r}", conc, args.seconds, args.warmup,
                                      args.value_bytes, use_uvloop, None, f"nf{r}", fsync=False)
                    nofsync_rounds[conc].append(res)
                    print(f"  c={conc:<5} round {r}  raftlib no fsync   {res['writes_per_s']:>9.0f} w/s  "
                          f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:8.2f} ms  {_cpu(res)}", file=err)
                for v in variants:
                    res = run_pysyncobj(tmp / f"pso-{v}-c{conc}-r{r}", v, conc, args.seconds, args.warmup,
                                        args.value_bytes)
                    pso_rounds[conc][v].append(res)
                    print(f"  c={conc:<5} round {r}  pysyncobj {v:<14}{res['writes_per_s']:>9.0f} w/s  "
                          f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:8.2f} ms  "
                          f"{_cpu(res)} [{res['checked_keys']} keys identical on 3 replicas]", file=err)
    finally:
        if args.keep:
            print(f"data and logs kept in {tmp}", file=err)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    raft_best = {c: best(raft_rounds[c]) for c in concs}
    pso_best: dict[int, dict[str, Any]] = {}
    print(f"\nraftlib compiled core: {compiled}; total wall time {time.monotonic() - t_start:.0f} s",
          file=err)
    header = (f"{'conc':>5} {'system':<26} {'durable':>7} {'writes/s':>10} {'p50 ms':>8} {'p99 ms':>9} "
              f"{'ratio':>7}")
    print(header, file=err)
    print("-" * len(header), file=err)
    lines = []
    for c in concs:
        per_variant = {v: best(pso_rounds[c][v]) for v in variants}
        bv = max(per_variant, key=lambda v: per_variant[v]["writes_per_s"])
        pb = pso_best[c] = dict(per_variant[bv], config=bv)
        rb = raft_best[c]
        ratio = rb["writes_per_s"] / pb["writes_per_s"] if pb["writes_per_s"] else float("inf")
        print(f"{c:>5} {'raftlib':<26} {'yes':>7} {rb['writes_per_s']:>10.0f} {rb['p50_ms']:>8.2f} "
              f"{rb['p99_ms']:>9.2f} {ratio:>6.2f}x", file=err)
        if args.no_fsync:
            nb = best(nofsync_rounds[c])
            nratio = nb["writes_per_s"] / pb["writes_per_s"] if pb["writes_per_s"] else float("inf")
            print(f"{c:>5} {'raftlib (no fsync)':<26} {'no':>7} {nb['writes_per_s']:>10.0f} "
                  f"{nb['p50_ms']:>8.2f} {nb['p99_ms']:>9.2f} {nratio:>6.2f}x", file=err)
        for v in variants:
            pv = per_variant[v]
            mark = " *" if v == bv else ""
            print(f"{c:>5} {'pysyncobj ' + v + mark:<26} {'no':>7} {pv['writes_per_s']:>10.0f} "
                  f"{pv['p50_ms']:>8.2f} {pv['p99_ms']:>9.2f}", file=err)
        common = {"concurrency": c, "value_bytes": args.value_bytes}
        lines.append({"system": "raftlib", **common, "durable": True,
                      "writes_per_s": round(rb["writes_per_s"], 1), "p50_ms": round(rb["p50_ms"], 3),
                      "p99_ms": round(rb["p99_ms"], 3), "ratio": round(ratio, 3),
                      "uvloop": use_uvloop, "compiled": compiled})
        if args.no_fsync:
            lines.append({"system": "raftlib-nofsync", **common, "durable": False,
                          "writes_per_s": round(nb["writes_per_s"], 1), "p50_ms": round(nb["p50_ms"], 3),
                          "p99_ms": round(nb["p99_ms"], 3), "ratio": round(nratio, 3),
                          "uvloop": use_uvloop, "compiled": compiled})
        lines.append({"system": "pysyncobj", **common, "durable": False,
                      "writes_per_s": round(pb["writes_per_s"], 1), "p50_ms": round(pb["p50_ms"], 3),
                      "p99_ms": round(pb["p99_ms"], 3), "config": bv,
                      "variants": {v: round(per_variant[v]["writes_per_s"], 1) for v in variants}})
    print("(* = the PySyncObj configuration compared against; ratio = raftlib / that)", file=err)
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.plot:
        title = (f"3 nodes on 127.0.0.1, {args.value_bytes} B values, writes from the leader's process; "
                 f"{info['nproc']} CPUs, Python {info['python']}; raftlib fsync on, PySyncObj in-memory")
        plot(args.plot, concs, raft_best, pso_best, title)
        print(f"plot written to {args.plot}", file=err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

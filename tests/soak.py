"""Soak driver: mixed load on a 3-member `python -m examples.kvstore` cluster with leader changes.

    python tests/soak.py --minutes 10            # make soak
    python tests/soak.py --minutes 2 --json out.json

Load (threads, plain HTTP through tests/kvcluster.py's helper): writers putting 100..300-byte values
over a fixed key space (so compaction can keep the store bounded), linearizable ranges, watch
streams reopened every few seconds, lease churn (grant, put with the lease, keepalive, revoke),
and a compactor (client-side, like etcd's --auto-compaction) every 10 s. Every
`--leader-change-every` seconds the current leader is frozen with SIGSTOP for 3 s (the others elect
a new one; the old one steps down on SIGCONT) or, with `--kill`, killed with SIGKILL and restarted.
A small `--snapshot-count` makes the members snapshot and compact their raft log.

Every 2 s it samples each member's RSS (/proc/PID/status VmRSS) and the bytes under its WAL and
snapshot directories. At the end it checks: no error other than the expected retries (503/
"unavailable"/"timed out"/"leader changed", connection refused or reset while a member is frozen or
dead, client timeouts), WAL use bounded, and RSS after warm-up flat: the change between samples
under steady load (drift, where a leak shows) within `--rss-tolerance` (10%) of the value at the
end of warm-up, and the growth it keeps (the last sample; the steps in the `--settle-seconds` (20 s)
after each leader change included) within `--rss-step-tolerance` (40%). A member that was frozen
catches up on a 3 s backlog when it resumes and keeps that burst's high-water mark (measured:
0-10.7 MiB on a 50 MiB member, once per burst size; see docs/reliability.md). A transient peak that
is given back (bounded buffers filling for a while: a slow watch stream's queue, a peer's send
queue) is bounded apart, at `--rss-peak-tolerance` (100%). Exit status 0 when everything holds; the figures
are printed (and written as JSON with --json).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kvcluster import KVCluster, http_json

EXPECTED_MESSAGES = ("unavailable", "timed out", "leader", "no leader", "stopped", "timeout", "retry")


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def dir_bytes(path: Path, suffixes: tuple[str, ...]) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(suffixes):
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(root, name))
    return total


def judge_rss(series: list[tuple[float, int]], disturbances: list[float], settle: float) -> dict[str, Any]:
    """Split a member's RSS change after warm-up into steps and drift.

    A step is the change between two samples when a leader change began within ``settle``
    seconds before the later one: the member that was frozen catches up on a backlog (or a new
    leader takes over) and its allocators keep that burst's high-water mark, once. Drift is the
    change everywhere else, under steady load: a leak shows there, sample after sample.
    """
    base = series[0][1]
    step = drift = 0
    for (_, before), (t, now) in itertools.pairwise(series):
        if any(d <= t <= d + settle for d in disturbances):
            step += now - before
        else:
            drift += now - before
    peak = max(r for _, r in series)
    final = series[-1][1]
    return {
        "warm_kib": base,
        "peak_kib": peak,
        "final_kib": final,
        "growth": round((final - base) / base, 3),
        "peak_growth": round((peak - base) / base, 3),
        "step_kib": step,
        "drift_kib": drift,
        "drift": round(drift / base, 3),
    }


class Soak:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.cluster = KVCluster(
            "raftlib",
            base,
            heartbeat_ms=100,
            election_ms=1000,
            extra_args=["--snapshot-count", str(args.snapshot_count), "--log-level", "warn"],
        )
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.errors: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.frozen: set[int] = set()
        self.leader_changes = 0
        self.disturbances: list[float] = []  # when each freeze (or kill) began, in elapsed seconds
        self.rng = random.Random(args.seed)

    # ------------------------------------------------------------------------------ requests

    def live_members(self) -> list[int]:
        return [i for i, m in enumerate(self.cluster.members) if m.alive() and i not in self.frozen]

    def call(
        self, kind: str, path: str, body: dict[str, Any], timeout: float = 10.0
    ) -> dict[str, Any] | None:
        """One request to a random live member; None after an expected failure (counted as a retry)."""
        members = self.live_members()
        if not members:
            time.sleep(0.1)
            return None
        i = random.choice(members)
        try:
            code, resp = http_json(self.cluster.url(i, path), body, timeout=timeout)
        except (OSError, urllib.error.URLError, TimeoutError) as e:
            with self.lock:
                self.retries[f"{kind}: {type(e).__name__}"] += 1
            time.sleep(0.05)
            return None
        if code == 200 and isinstance(resp, dict):
            with self.lock:
                self.ops[kind] += 1
            return resp
        msg = json.dumps(resp)[:200] if not isinstance(resp, str) else resp[:200]
        if code in (503, 504, 408) or any(s in msg.lower() for s in EXPECTED_MESSAGES):
            with self.lock:
                self.retries[f"{kind}: {code}"] += 1
            time.sleep(0.05)
            return None
        if kind == "lease" and code == 404:  # revoked/expired during a leader change: fine
            with self.lock:
                self.retries["lease: 404"] += 1
            return None
        if kind == "compact" and "compacted" in msg:
            return None
        with self.lock:
            self.errors.append(f"{kind} {path} -> {code} {msg}")
        return None

    # ------------------------------------------------------------------------------- workers

    def writer(self, n: int) -> None:
        rng = random.Random(n)
        while not self.stop.is_set():
            key = f"soak/k{rng.randrange(self.args.keys)}"
            self.call(
                "put", "/v3/kv/put", {"key": b64(key), "value": b64(os.urandom(rng.randint(50, 150)).hex())}
            )

    def reader(self) -> None:
        while not self.stop.is_set():
            self.call(
                "range", "/v3/kv/range", {"key": b64("soak/"), "range_end": b64("soak0"), "count_only": True}
            )

    def leases(self) -> None:
        while not self.stop.is_set():
            resp = self.call("lease", "/v3/lease/grant", {"TTL": 5})
            if resp is None:
                continue
            lid = resp.get("ID")
            self.call("lease", "/v3/kv/put", {"key": b64(f"lease/{lid}"), "value": b64("x"), "lease": lid})
            self.call("lease", "/v3/lease/keepalive", {"ID": lid})
            if random.random() < 0.7:
                self.call("lease", "/v3/lease/revoke", {"ID": lid})  # the rest expire on their own
            time.sleep(0.05)

    def watcher(self) -> None:
        while not self.stop.is_set():
            members = self.live_members()
            if not members:
                time.sleep(0.2)
                continue
            url = self.cluster.url(random.choice(members), "/v3/watch")
            body = json.dumps({"create_request": {"key": b64("soak/"), "range_end": b64("soak0")}}).encode()
            req = urllib.request.Request(url, data=body, method="POST")
            deadline = time.monotonic() + 5
            try:
                with urllib.request.urlopen(req, timeout=3) as resp:
                    while time.monotonic() < deadline and not self.stop.is_set():
                        line = resp.readline()
                        if not line:
                            break
                        msg = json.loads(line)
                        if "error" in msg:
                            with self.lock:
                                self.retries[f"watch: {msg['error'].get('message', '')[:40]}"] += 1
                            break
                        with self.lock:
                            self.ops["watch_events"] += len(msg.get("result", {}).get("events", []))
            except (OSError, urllib.error.URLError, TimeoutError, ValueError) as e:
                with self.lock:
                    self.retries[f"watch: {type(e).__name__}"] += 1
            with self.lock:
                self.ops["watch_streams"] += 1

    def compactor(self) -> None:
        while not self.stop.wait(10):
            resp = self.call("status", "/v3/kv/range", {"key": b64("soak/k0")})
            if resp is None:
                continue
            rev = int(resp["header"]["revision"])
            if rev > 1000:
                self.call("compact", "/v3/kv/compaction", {"revision": rev - 500})

    def leader_changer(self) -> None:
        while not self.stop.wait(self.args.leader_change_every):
            try:
                lead = self.cluster.leader(timeout=10)
            except Exception as e:  # no leader for 10 s: an unexpected error
                with self.lock:
                    self.errors.append(f"no leader: {e!s:.200}")
                continue
            m = self.cluster.members[lead]
            self.disturbances.append(self.elapsed())
            if self.args.kill:
                self.frozen.add(lead)
                self.cluster.kill(lead)
                time.sleep(3)
                self.cluster.restart(lead)
            else:
                assert m.proc is not None
                self.frozen.add(lead)
                os.kill(m.proc.pid, signal.SIGSTOP)
                time.sleep(3)
                os.kill(m.proc.pid, signal.SIGCONT)
            self.frozen.discard(lead)
            self.leader_changes += 1
            try:
                new = self.cluster.leader(timeout=10, exclude=set())
                print(
                    f"[{self.elapsed():6.0f}s] leader change #{self.leader_changes}: {m.name} -> "
                    f"{self.cluster.members[new].name}",
                    flush=True,
                )
            except Exception as e:
                with self.lock:
                    self.errors.append(f"no leader after change: {e!s:.200}")

    def sampler(self) -> None:
        while not self.stop.is_set():
            row: dict[str, Any] = {"t": round(self.elapsed(), 1)}
            for m in self.cluster.members:
                row[m.name] = {
                    "pid": m.pid,
                    "rss_kib": rss_kib(m.pid) if m.pid and m.alive() else None,
                    "wal_bytes": dir_bytes(m.data_dir, (".wal",)),
                    "snap_bytes": dir_bytes(m.data_dir, (".snap",)),
                }
            with self.lock:
                row["ops"] = dict(self.ops)
                self.samples.append(row)
            if self.args.verbose:
                print(json.dumps(row), flush=True)
            self.stop.wait(2)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # ----------------------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        self.cluster.start(timeout=60)
        self.started = time.monotonic()
        workers = [
            *(threading.Thread(target=self.writer, args=(n,)) for n in range(self.args.writers)),
            threading.Thread(target=self.reader),
            threading.Thread(target=self.leases),
            threading.Thread(target=self.watcher),
            threading.Thread(target=self.compactor),
            threading.Thread(target=self.leader_changer),
            threading.Thread(target=self.sampler),
        ]
        for t in workers:
            t.daemon = True
            t.start()
        try:
            self.stop.wait(self.args.minutes * 60)
        finally:
            self.stop.set()
            for t in workers:
                t.join(20)
            for m in self.cluster.members:  # never leave a member frozen
                if m.alive() and m.proc is not None:
                    os.kill(m.proc.pid, signal.SIGCONT)
            report = self.report()
            self.cluster.stop()
        return report

    def report(self) -> dict[str, Any]:
        duration = self.elapsed()
        warmup = max(30.0, self.args.warmup_fraction * duration)
        rss: dict[str, Any] = {}
        wal: dict[str, Any] = {}
        ok = True
        problems: list[str] = []
        for m in self.cluster.members:
            series = [
                (s["t"], s[m.name]["rss_kib"], s[m.name]["pid"])
                for s in self.samples
                if s[m.name]["rss_kib"] is not None
            ]
            last_pid = series[-1][2] if series else None
            # One process incarnation (with --kill a member restarts: judge its last incarnation).
            after = [(t, r) for t, r, pid in series if pid == last_pid]
            start_t = after[0][0] if after else 0.0
            after = [(t, r) for t, r in after if t >= start_t + warmup]
            if len(after) >= 3:
                figures = judge_rss(after, self.disturbances, self.args.settle_seconds)
                rss[m.name] = figures
                base = figures["warm_kib"]
                if figures["drift"] > self.args.rss_tolerance:
                    ok = False
                    problems.append(
                        f"{m.name} RSS drifted {figures['drift']:.0%} in steady load after warm-up "
                        f"({base} KiB at warm-up, {figures['drift_kib']:+d} KiB outside leader changes)"
                    )
                if figures["growth"] > self.args.rss_step_tolerance:
                    ok = False
                    problems.append(
                        f"{m.name} RSS grew {figures['growth']:.0%} after warm-up and kept it "
                        f"({base} -> {figures['final_kib']} KiB, {figures['step_kib']:+d} KiB of it "
                        "right after leader changes)"
                    )
                if figures["peak_growth"] > self.args.rss_peak_tolerance:
                    ok = False
                    problems.append(
                        f"{m.name} RSS peaked {figures['peak_growth']:.0%} above its warm-up value "
                        f"({base} -> {figures['peak_kib']} KiB, {figures['final_kib']} KiB at the end)"
                    )
            else:
                rss[m.name] = {"note": "too few samples after warm-up"}
            wals = [s[m.name]["wal_bytes"] for s in self.samples]
            snaps = [s[m.name]["snap_bytes"] for s in self.samples]
            wal[m.name] = {
                "max_wal_bytes": max(wals, default=0),
                "final_wal_bytes": wals[-1] if wals else 0,
                "max_snap_bytes": max(snaps, default=0),
            }
            if max(wals, default=0) > self.args.max_wal_bytes:
                ok = False
                problems.append(f"{m.name} WAL reached {max(wals)} bytes (> {self.args.max_wal_bytes})")
        if self.errors:
            ok = False
            problems.append(f"{len(self.errors)} unexpected errors, first: {self.errors[:5]}")
        if self.leader_changes < max(1, int(duration // self.args.leader_change_every) - 1):
            ok = False
            problems.append(f"only {self.leader_changes} leader changes")
        if self.ops["put"] < 10 * duration / 60:
            ok = False
            problems.append(f"too little load: {dict(self.ops)}")
        return {
            "ok": ok,
            "problems": problems,
            "seconds": round(duration, 1),
            "warmup_seconds": round(warmup, 1),
            "ops": dict(self.ops),
            "ops_per_second": round(sum(v for k, v in self.ops.items() if k != "watch_events") / duration, 1),
            "expected_retries": dict(self.retries),
            "unexpected_errors": self.errors[:20],
            "leader_changes": self.leader_changes,
            "rss": rss,
            "disk": wal,
            # The raw figures behind the judgement, for a failure to be read afterwards.
            "leader_change_times": [round(d, 1) for d in self.disturbances],
            "rss_series_kib": {
                m.name: [[s["t"], s[m.name]["rss_kib"]] for s in self.samples] for m in self.cluster.members
            },
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--leader-change-every", type=float, default=60.0, help="seconds")
    p.add_argument(
        "--kill", action="store_true", help="leader changes by SIGKILL + restart (default SIGSTOP)"
    )
    p.add_argument("--snapshot-count", type=int, default=500)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--keys", type=int, default=500)
    p.add_argument(
        "--rss-tolerance",
        type=float,
        default=0.10,
        help="bound on RSS drift after warm-up outside leader changes (fraction of the warm value)",
    )
    p.add_argument(
        "--rss-step-tolerance",
        type=float,
        default=0.40,
        help="bound on the RSS growth a member keeps after warm-up (its last sample), steps after "
        "leader changes included",
    )
    p.add_argument(
        "--rss-peak-tolerance",
        type=float,
        default=1.00,
        help="bound on a member's RSS peak after warm-up, transients it gives back included",
    )
    p.add_argument(
        "--settle-seconds",
        type=float,
        default=20.0,
        help="RSS change this long after a leader change began counts as a step, not drift",
    )
    p.add_argument("--warmup-fraction", type=float, default=0.25)
    p.add_argument(
        "--max-wal-bytes",
        type=int,
        default=3 * 64 * 1024 * 1024,
        help="bound on each member's WAL bytes (3 segments of 64 MiB)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--base", default=None, help="directory for data and logs (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    base = Path(args.base or tempfile.mkdtemp(prefix="raftlib-soak-"))
    print(f"soak: {args.minutes} min, data and logs in {base}", flush=True)
    report = Soak(args, base).run()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run one Jepsen-style test: a namespaced ``examples.kvstore`` cluster, a workload, a nemesis, checks.

    sudo .venv/bin/python -m tests.jepsen.runner --members 3 --duration 60 --seed 1
    sudo .venv/bin/python -m tests.jepsen.runner --serializable-reads --faults isolate-follower  # control
    sudo .venv/bin/python -m tests.jepsen.runner --cleanup           # remove leftovers of crashed runs

Prints progress and one JSON summary (``--json FILE`` also writes it).  Exit status 0 when the
history is linearizable, the cluster recovered within the bound after every heal and the final
reads saw every key; 1 otherwise; 2 when the machine cannot run it (not root, no iptables...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftlib.testing.linearizability import History, check

from . import netns
from .nemesis import ALL_FAULTS, DEFAULT_FAULTS, Nemesis
from .workload import Workload, b64

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_PORT, PEER_PORT = 2379, 2380


def http_json(url: str, body: Any, timeout: float) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class NsCluster:
    """`size` kvstore members, member i in namespace net.namespaces[i] at net.addresses[i]."""

    def __init__(self, net: netns.Network, base: Path, *, heartbeat_ms: int = 50, election_ms: int = 500,
                 python: str = sys.executable, log=print) -> None:
        self.net = net
        self.size = net.size
        self.base = base
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.python = python
        self.log = log
        self.names = [f"m{i}" for i in range(self.size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * self.size
        self.paused: set[int] = set()
        self.removed: set[int] = set()
        self.member_ids: dict[int, str] = {}
        self.token = f"jepsen-{net.sfx}"
        self.starts = [0] * self.size
        self.probe_counter = 0

    def client_url(self, i: int) -> str:
        return f"http://{self.net.addresses[i]}:{CLIENT_PORT}"

    def peer_url(self, i: int) -> str:
        return f"http://{self.net.addresses[i]}:{PEER_PORT}"

    def data_dir(self, i: int) -> Path:
        return self.base / f"{self.names[i]}.data"

    def initial_cluster(self, members: Sequence[int] | None = None) -> str:
        members = range(self.size) if members is None else members
        return ",".join(f"{self.names[i]}={self.peer_url(i)}" for i in members)

    # ------------------------------------------------------------------------------ processes

    def spawn(self, i: int, state: str = "new", members: Sequence[int] | None = None) -> None:
        if self.alive(i):
            raise RuntimeError(f"m{i} already running")
        d = self.data_dir(i)
        d.mkdir(parents=True, exist_ok=True)
        argv = [
            "ip", "netns", "exec", self.net.namespaces[i],
            self.python, "-m", "examples.kvstore",
            "--name", self.names[i], "--data-dir", str(d),
            "--listen-client-urls", self.client_url(i), "--advertise-client-urls", self.client_url(i),
            "--listen-peer-urls", self.peer_url(i), "--initial-advertise-peer-urls", self.peer_url(i),
            "--initial-cluster", self.initial_cluster(members), "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
        ]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.starts[i] += 1
        with open(self.base / f"{self.names[i]}.log", "ab") as logf:
            logf.write(f"\n=== start #{self.starts[i]}: {' '.join(argv)}\n".encode())
            logf.flush()
            self.procs[i] = subprocess.Popen(argv, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL, stdout=logf,
                                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.paused.discard(i)

    def verify_exec(self, i: int) -> None:
        """`ip netns exec` execs the command: the PID we signal must become the Python process."""
        p = self.procs[i]
        assert p is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
                if b"examples.kvstore" in cmd and not cmd[0].endswith(b"ip"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"pid {p.pid} of m{i} never became the kvstore process (ip netns exec forks?)")

    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs[i]
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
                if i in self.paused and sig != signal.SIGKILL:
                    p.send_signal(signal.SIGCONT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.paused.discard(i)

    def restart(self, i: int) -> None:
        self.kill(i)
        self.spawn(i, "existing")

    def pause(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGSTOP)
            self.paused.add(i)

    def resume(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGCONT)
        self.paused.discard(i)

    def stop(self, grace: float = 3.0) -> None:
        for i in range(self.size):
            self.resume(i)
            p = self.procs[i]
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        deadline = time.monotonic() + grace
        for p in self.procs:
            if p is None:
                continue
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    # -------------------------------------------------------------------------------- network

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        self.net.partition(groups)

    def connectivity(self, sees: dict[int, set[int]]) -> None:
        self.net.connectivity(sees)

    def heal_network(self) -> None:
        self.net.heal()

    # -------------------------------------------------------------------------------- queries

    def status(self, i: int, timeout: float = 1.0) -> dict[str, Any] | None:
        if not self.alive(i) or i in self.paused:
            return None
        try:
            code, body = http_json(self.client_url(i) + "/v3/maintenance/status", {}, timeout)
        except (OSError, ValueError):
            return None
        if code != 200 or not isinstance(body, dict):
            return None
        mid = body.get("header", {}).get("member_id")
        if mid:
            self.member_ids[i] = mid
        return body

    def leader(self, timeout: float = 5.0) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.size):
                st = self.status(i)
                lid = (st or {}).get("leader")
                by_id = {v: k for k, v in self.member_ids.items()}
                if lid and lid in by_id:
                    return by_id[lid]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(self.size):
                if self.procs[i] is not None and not self.alive(i):
                    raise RuntimeError(f"m{i} exited with {self.procs[i].returncode}\n" + self.describe())
            sts = [self.status(i) for i in range(self.size)]
            leaders = {(st or {}).get("leader") for st in sts}
            if all(sts) and len(leaders) == 1 and None not in leaders and "0" not in leaders \
                    and leaders <= set(self.member_ids.values()):
                return
            time.sleep(0.1)
        raise RuntimeError("cluster not ready\n" + self.describe())

    def probe_write(self, timeout: float) -> bool:
        """A put of a probe key (outside the checked keys) through every running member at once;
        True if any member acknowledged it (the cluster accepts writes)."""
        self.probe_counter += 1
        body = {"key": b64(b"jepsen-probe"), "value": b64(str(self.probe_counter).encode())}
        targets = [i for i in range(self.size) if self.alive(i) and i not in self.paused]

        def put(i: int) -> bool:
            try:
                code, _ = http_json(self.client_url(i) + "/v3/kv/put", body, timeout)
            except (OSError, ValueError):
                return False
            return code == 200

        if not targets:
            return False
        pool = ThreadPoolExecutor(len(targets))
        try:
            futures = [pool.submit(put, i) for i in targets]
            return any(f.result() for f in as_completed(futures))  # stops at the first success
        finally:
            pool.shutdown(wait=False)  # slower answers are not waited for

    # ----------------------------------------------------------------------------- membership

    def remove_member(self, i: int) -> None:
        """Remove member i through another member, then stop it (etcd: a removed member exits)."""
        if len(self.removed) + 1 > (self.size - 1) // 2:
            raise RuntimeError("refusing to remove more members than the cluster can lose")
        mid = self.member_ids.get(i) or (self.status(i) or {}).get("header", {}).get("member_id")
        if not mid:
            raise RuntimeError(f"member id of m{i} unknown")
        # Through the leader first (a freshly re-added member may not have applied the member list yet).
        lead = self.leader(timeout=2.0)
        vias = [j for j in range(self.size) if j != i and self.alive(j) and j not in self.paused]
        vias.sort(key=lambda j: j != lead)
        for via in vias:
            code, body = http_json(self.client_url(via) + "/v3/cluster/member/remove", {"ID": mid}, 10.0)
            if code == 200:
                break
        else:
            raise RuntimeError(f"member remove of m{i} via {vias}: HTTP {code} {body}")
        self.removed.add(i)
        self.kill(i)

    def add_member_back(self, i: int) -> None:
        """Add member i again (new identity, empty data dir), run with --initial-cluster-state existing."""
        if i not in self.removed:
            return
        via = next(j for j in range(self.size) if j != i and self.alive(j) and j not in self.paused)
        deadline = time.monotonic() + 15
        while True:
            code, body = http_json(self.client_url(via) + "/v3/cluster/member/add",
                                   {"peerURLs": [self.peer_url(i)]}, 10.0)
            if code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        if code != 200:
            raise RuntimeError(f"member add of m{i} via m{via}: HTTP {code} {body}")
        shutil.rmtree(self.data_dir(i), ignore_errors=True)
        self.removed.discard(i)
        self.member_ids.pop(i, None)
        self.spawn(i, "existing")

    def describe(self, lines: int = 20) -> str:
        out = []
        for i in range(self.size):
            try:
                tail = (self.base / f"{self.names[i]}.log").read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            out.append(f"--- m{i} ({'running' if self.alive(i) else 'down'}) log tail:\n" + "\n".join(tail))
        return "\n".join(out)


# --------------------------------------------------------------------------------------- run


@dataclass
class RunConfig:
    seed: int = 1
    members: int = 3
    duration: float = 60.0
    clients: int = 10
    keys: int = 5
    timeout: float = 1.0
    faults: Sequence[str] = DEFAULT_FAULTS
    serializable_reads: bool = False
    quiet: tuple[float, float] = (2.0, 4.0)
    hold: tuple[float, float] = (3.0, 6.0)
    recovery_bound: float = 10.0
    check_budget: float = 120.0
    heartbeat_ms: int = 50
    election_ms: int = 500
    keep_dir: str | None = None


@dataclass
class RunResult:
    config: dict[str, Any]
    ops: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    final_recovery_s: float | None = None
    max_recovery_s: float | None = None
    all_members_ready_s: float | None = None
    check_status: str = "not run"
    check_detail: str = ""
    check_elapsed_s: float = 0.0
    final_reads: dict[str, Any] = field(default_factory=dict)
    final_reads_missing: list[str] = field(default_factory=list)
    lost_writes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["passed"] = self.passed
        return d


async def _drive(cfg: RunConfig, cluster: NsCluster, history: History, log) -> tuple[Workload, Nemesis]:
    rng = random.Random(cfg.seed)
    urls = [cluster.client_url(i) for i in range(cluster.size)]
    wl = Workload(urls, history, random.Random(rng.random()), clients=cfg.clients, keys=cfg.keys,
                  timeout=cfg.timeout, serializable_reads=cfg.serializable_reads)
    nem = Nemesis(cluster, random.Random(rng.random()), faults=list(cfg.faults), quiet=cfg.quiet,
                  hold=cfg.hold, recovery_bound=cfg.recovery_bound, log=log)
    wl_task = asyncio.create_task(wl.run(cfg.seed))
    try:
        await nem.run(cfg.duration)
    finally:
        wl.stop()
        await asyncio.wait_for(wl_task, cfg.timeout * 3 + 5)
    return wl, nem


def run_once(cfg: RunConfig, log=print) -> RunResult:
    """One complete run; never leaves namespaces, links or processes behind."""
    res = RunResult(config={k: list(v) if isinstance(v, tuple | list) else v for k, v in vars(cfg).items()})
    t_start = time.monotonic()
    base = Path(cfg.keep_dir) if cfg.keep_dir else Path(tempfile.mkdtemp(prefix="raftlib-jepsen-"))
    base.mkdir(parents=True, exist_ok=True)
    net = netns.Network(cfg.members)
    cluster: NsCluster | None = None
    old_handlers = {}

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread
            old_handlers[s] = signal.signal(s, on_signal)
    try:
        net.create()
        log(f"[run] seed {cfg.seed}: {cfg.members} members in {net.namespaces[0]}..{net.namespaces[-1]} "
            f"({net.addresses[0]}..), data in {base}")
        cluster = NsCluster(net, base, heartbeat_ms=cfg.heartbeat_ms, election_ms=cfg.election_ms, log=log)
        for i in range(cfg.members):
            cluster.spawn(i)
        for i in range(cfg.members):
            cluster.verify_exec(i)
        cluster.wait_ready(60)
        history = History()
        wl, nem = asyncio.run(_drive(cfg, cluster, history, log))
        res.faults = [r.as_dict() for r in nem.records]
        # Final recovery: everything healed and resumed; time until the cluster takes a write.
        for i in range(cluster.size):
            if i not in cluster.removed and not cluster.alive(i):
                cluster.spawn(i, "existing")
        res.final_recovery_s = nem.measure_recovery()
        recs = [r.recovery for r in nem.records if r.recovery is not None]
        res.max_recovery_s = max(recs + ([res.final_recovery_s] if res.final_recovery_s is not None else []),
                                 default=None)
        if res.final_recovery_s is None:
            res.problems.append(f"no write accepted within {cfg.recovery_bound} s of the final heal")
        late = [r for r in nem.records if r.end is not None and r.recovery is None and not r.error]
        if late:
            res.problems.append(f"{len(late)} heal(s) not followed by an accepted write within "
                                f"{cfg.recovery_bound} s: {[r.as_dict() for r in late]}")
        # Every member (a member restarted by the last heal may still be replaying its log) must
        # be back and agree on a leader before the final reads.
        t_ready = time.monotonic()
        try:
            cluster.wait_ready(30)
            res.all_members_ready_s = round(time.monotonic() - t_ready, 2)
        except RuntimeError as e:
            res.problems.append(f"members not all ready 30 s after the final heal: {e}")
        # Final reads (recorded in the history, linearizable, through every member).
        res.final_reads = asyncio.run(wl.final_reads(rounds=5))
        for key, per_member in res.final_reads.items():
            for m, v in per_member.items():
                if v == "(no answer)":
                    res.final_reads_missing.append(f"{key}@{m}")
        if res.final_reads_missing:
            res.problems.append(f"final reads not answered: {res.final_reads_missing}")
        # Every acknowledged write must be readable: a key with acknowledged writes has a value now.
        for key, acked in wl.acked.items():
            vals = {v for v in res.final_reads.get(key.decode(), {}).values() if v != "(no answer)"}
            if acked and None in vals:
                res.lost_writes.append(f"{key.decode()}: {len(acked)} acknowledged writes, final read empty")
        if res.lost_writes:
            res.problems.append(f"acknowledged writes not readable: {res.lost_writes}")
        res.ops = dict(sorted(wl.stats.outcomes.items()))
        res.errors = dict(wl.stats.errors.most_common(12))
        t_check = time.monotonic()
        verdict = check(history, time_budget=cfg.check_budget)
        res.check_elapsed_s = round(time.monotonic() - t_check, 2)
        res.check_status = verdict.status
        if verdict.status != "ok":
            res.check_detail = str(verdict)[:6000]
            res.problems.append(f"linearizability: {verdict.status}")
        with open(base / "history.txt", "w") as f:
            for op in history.ops:
                f.write(f"{op}\n")
        log(f"[run] seed {cfg.seed}: {len(history.ops)} ops, check {verdict.status} "
            f"in {res.check_elapsed_s} s; history in {base / 'history.txt'}")
    except BaseException as e:
        if cluster is not None:
            res.problems.append(f"run aborted: {type(e).__name__}: {e}\n{cluster.describe()}")
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        if not isinstance(e, Exception):
            raise
        if not res.problems:
            res.problems.append(f"run aborted: {type(e).__name__}: {e}")
    finally:
        if cluster is not None:
            cluster.stop()
        net.destroy()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if not cfg.keep_dir and not res.problems:
            shutil.rmtree(base, ignore_errors=True)
        res.wall_s = round(time.monotonic() - t_start, 1)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.jepsen.runner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--timeout", type=float, default=1.0, help="client request timeout (s)")
    p.add_argument("--faults", default=",".join(DEFAULT_FAULTS),
                   help=f"comma-separated subset of {', '.join(ALL_FAULTS)}")
    p.add_argument("--serializable-reads", action="store_true", help="local reads (the stale-read control)")
    p.add_argument("--quiet", default="2,4", help="min,max seconds between faults")
    p.add_argument("--hold", default="3,6", help="min,max seconds a fault lasts")
    p.add_argument("--recovery-bound", type=float, default=10.0)
    p.add_argument("--keep-dir", default=None, help="keep data dirs, logs and history here")
    p.add_argument("--json", default=None, help="also write the summary to this file")
    p.add_argument("--cleanup", action="store_true", help="remove leftovers (rlj* namespaces/links) and exit")
    a = p.parse_args(argv)
    if a.cleanup:
        removed = netns.cleanup_leftovers()
        print("removed: " + (", ".join(removed) if removed else "nothing"))
        return 0
    reason = netns.unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    cfg = RunConfig(seed=a.seed, members=a.members, duration=a.duration, clients=a.clients, keys=a.keys,
                    timeout=a.timeout, faults=[f for f in a.faults.split(",") if f],
                    serializable_reads=a.serializable_reads,
                    quiet=tuple(float(x) for x in a.quiet.split(",")),  # type: ignore[arg-type]
                    hold=tuple(float(x) for x in a.hold.split(",")),  # type: ignore[arg-type]
                    recovery_bound=a.recovery_bound, keep_dir=a.keep_dir)
    try:
        res = run_once(cfg)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e}); namespaces, links and members removed", file=sys.stderr)
        return 130
    summary = json.dumps(res.as_dict(), indent=2, default=str)
    print(summary)
    if a.json:
        Path(a.json).write_text(summary + "\n")
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())

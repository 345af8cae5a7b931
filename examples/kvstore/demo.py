"""``make demo``: a guided tour of a 3-member examples.kvstore cluster, as real processes.

Starts three ``python -m examples.kvstore`` members on free loopback ports in a
temporary directory, then: put/get/txn through different members, a watch
receiving events, ``kill -9`` of the leader, a new leader elected with no
acknowledged write lost, the old member restarted and catching up, and the
unmodified etcdctl (when installed) talking to the same cluster. Every
process is stopped on exit, on error and on Ctrl-C. Takes about 15 seconds.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from raftlib.testing.proccluster import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str | None) -> str:
    return base64.b64decode(s or "").decode()


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say()
    say(f"== {text}")


class Member:
    def __init__(self, name: str, client_port: int, peer_port: int, base: Path) -> None:
        self.name = name
        self.client = f"http://127.0.0.1:{client_port}"
        self.peer = f"http://127.0.0.1:{peer_port}"
        self.data_dir = base / f"{name}.etcd"
        self.log = base / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.id = ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class DemoCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        ports = free_ports(2 * size)
        self.members = [Member(f"infra{i}", ports[2 * i], ports[2 * i + 1], base) for i in range(size)]
        self.token = f"demo-{os.getpid()}"

    def command(self, m: Member, state: str) -> list[str]:
        return [
            sys.executable, "-m", "examples.kvstore",
            "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client, "--advertise-client-urls", m.client,
            "--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
            "--initial-cluster", ",".join(f"{x.name}={x.peer}" for x in self.members),
            "--initial-cluster-state", state, "--initial-cluster-token", self.token,
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self, m: Member, state: str = "new") -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(
                self.command(m, state), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def stop_all(self) -> None:
        for m in self.members:
            if m.alive():
                assert m.proc is not None
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()


def call(m: Member, path: str, body: Any, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(m.client + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{m.name} {path}: {exc.code} {exc.read().decode()}") from None


def status(m: Member) -> dict[str, Any] | None:
    try:
        st = call(m, "/v3/maintenance/status", {}, timeout=1.0)
    except (OSError, RuntimeError, ValueError):
        return None
    m.id = st["header"]["member_id"]
    return st  # type: ignore[no-any-return]


def wait_leader(c: DemoCluster, timeout: float = 20.0, exclude: Member | None = None) -> Member:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [m for m in c.members if m.alive() and m is not exclude]
        sts = [status(m) for m in live]
        leaders = {st.get("leader") for st in sts if st}
        if all(sts) and len(leaders) == 1:
            lead = leaders.pop()
            for m in live:
                if m.id == lead:
                    return m
        time.sleep(0.1)
    raise RuntimeError("no leader elected (see the member logs)")


def published_members(m: Member, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The member list once every member has published its name and client URLs through
    raft (as etcd members do right after they start; until then a member has no name)."""
    deadline = time.monotonic() + timeout
    while True:
        rows: list[dict[str, Any]] = call(m, "/v3/cluster/member/list", {})["members"]
        if all(row.get("name") for row in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def put(m: Member, key: str, value: str) -> int:
    return int(call(m, "/v3/kv/put", {"key": b64(key), "value": b64(value)})["header"]["revision"])


def get(m: Member, key: str, **extra: Any) -> dict[str, Any]:
    return call(m, "/v3/kv/range", {"key": b64(key), **extra})  # type: ignore[no-any-return]


QUIET = threading.Event()
"""Set while the watch thread should count events without printing them."""


def watch_in_background(m: Member, prefix: str, events: list[str], ready: threading.Event) -> None:
    """Print every event of a prefix watch (etcd's /v3/watch stream, one JSON message per chunk)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    host, port = m.client.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    try:
        conn.request(
            "POST", "/v3/watch", json.dumps({"create_request": {"key": b64(prefix), "range_end": b64(end)}})
        )
        resp = conn.getresponse()
        while True:
            line = resp.readline()
            if not line:
                return
            result = json.loads(line)["result"]
            if result.get("created"):
                ready.set()
            for ev in result.get("events", []):
                kind = ev.get("type", "PUT")
                text = f"{kind} {unb64(ev['kv']['key'])}"
                if kind == "PUT":
                    text += f" = {unb64(ev['kv'].get('value'))}"
                text += f"  (revision {ev['kv']['mod_revision']})"
                events.append(text)
                if not QUIET.is_set():
                    say(f"   [watch on {m.name}] {text}")
    except (OSError, http.client.HTTPException, ValueError):
        return
    finally:
        conn.close()


def tour(c: DemoCluster) -> None:
    t0 = time.monotonic()
    step("Starting 3 members (python -m examples.kvstore with etcd's flags)")
    for m in c.members:
        c.start(m)
        say(f"   {m.name}: clients {m.client}, peers {m.peer}")
    leader = wait_leader(c)
    say(
        f"   leader elected: {leader.name} (member ID {int(leader.id):x}) after {time.monotonic() - t0:.1f} s"
    )
    for row in published_members(leader):
        say(
            f"   member {int(row['ID']):x} {row.get('name', '?'):7} peer {row['peerURLs'][0]}"
            f"  clients {','.join(row.get('clientURLs', ['?']))}"
        )

    followers = [m for m in c.members if m is not leader]
    step(f"A watch on prefix 'demo/' through follower {followers[1].name}")
    events: list[str] = []
    ready = threading.Event()
    threading.Thread(
        target=watch_in_background, args=(followers[1], "demo/", events, ready), daemon=True
    ).start()
    ready.wait(5)

    step(f"put demo/greeting=hello through follower {followers[0].name} (forwarded to the leader)")
    rev = put(followers[0], "demo/greeting", "hello")
    say(f"   acknowledged at revision {rev}")
    out = get(followers[1], "demo/greeting")
    say(f"   linearizable get on {followers[1].name}: {unb64(out['kvs'][0]['value'])!r} at revision "
        f"{out['header']['revision']}")  # fmt: skip
    step("A transaction: if demo/greeting == 'hello' then put demo/greeting=bonjour, demo/count=1")
    txn = {
        "compare": [{"key": b64("demo/greeting"), "result": "EQUAL", "target": "VALUE",
                     "value": b64("hello")}],
        "success": [{"request_put": {"key": b64("demo/greeting"), "value": b64("bonjour")}},
                    {"request_put": {"key": b64("demo/count"), "value": b64("1")}}],
    }  # fmt: skip
    res = call(leader, "/v3/kv/txn", txn)
    rev = res["header"]["revision"]
    say(f"   succeeded={res.get('succeeded', False)}: both keys changed in one revision {rev}")
    time.sleep(0.3)

    step("Writing 30 keys through all members; every one is acknowledged")
    acked: dict[str, str] = {}
    before = len(events)
    QUIET.set()
    for i in range(30):
        key, value = f"demo/acked/{i:02d}", f"v{i}"
        put(c.members[i % 3], key, value)
        acked[key] = value
    deadline = time.monotonic() + 5
    while len(events) < before + len(acked) and time.monotonic() < deadline:
        time.sleep(0.05)
    QUIET.clear()
    say(f"   {len(acked)} writes acknowledged; the watch received {len(events) - before} events for them,")
    say(f"   the last one: {events[-1] if events else '-'}")

    step(f"kill -9 the leader {leader.name}")
    assert leader.proc is not None
    killed_at = time.monotonic()
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait()
    new_leader = wait_leader(c, exclude=leader)
    say(f"   new leader: {new_leader.name} after {time.monotonic() - killed_at:.1f} s")
    survivor = next(m for m in c.members if m.alive() and m is not new_leader)
    missing = [
        k for k, v in acked.items() if unb64((get(survivor, k).get("kvs") or [{}])[0].get("value")) != v
    ]
    say(f"   read back all {len(acked)} acknowledged keys from {survivor.name}: {len(missing)} missing")
    if missing:
        raise RuntimeError(f"acknowledged writes lost: {missing}")
    rev = put(survivor, "demo/after-failover", "still serving")
    say(f"   the 2 survivors keep serving: put demo/after-failover at revision {rev}")

    step(f"Restart {leader.name} on its data directory (--initial-cluster-state existing)")
    c.start(leader, "existing")
    deadline = time.monotonic() + 30
    while True:
        st = status(leader)
        out = get(leader, "demo/after-failover", serializable=True) if st and st.get("leader") else {}
        if out.get("kvs"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{leader.name} did not catch up (see {leader.log})")
        time.sleep(0.2)
    value, rev = unb64(out["kvs"][0]["value"]), out["header"]["revision"]
    say(f"   {leader.name} is back as a follower of {new_leader.name} and caught up:")
    say(f"   its local (serializable) read of demo/after-failover gives {value!r} at revision {rev}")
    etcdctl_tour(c)
    step("Status of every member")
    for m in c.members:
        st = status(m) or {}
        role = "leader" if st.get("leader") == m.id else "follower"
        say(f"   {m.name}: {role:8} term {st.get('raftTerm')}, raft index {st.get('raftIndex')}, "
            f"revision {st.get('header', {}).get('revision')}")  # fmt: skip
    say()
    say(f"Tour finished in {time.monotonic() - t0:.1f} s; the watch printed {len(events)} events.")


def etcdctl_tour(c: DemoCluster) -> None:
    """The same cluster through the unmodified etcdctl (etcd's gRPC API on the client URLs)."""
    etcdctl = shutil.which("etcdctl")
    step("The unmodified etcdctl against the store (gRPC on the same client URLs)")
    if etcdctl is None:
        say("   etcdctl is not installed (scripts/install-etcd.sh installs Debian's etcd-client): skipped")
        return
    endpoints = ",".join(m.client for m in c.members if m.alive())
    for args in (
        ["put", "demo/etcdctl", "written by etcdctl"],
        ["get", "demo/etcdctl"],
        ["get", "demo/acked/", "--prefix", "--keys-only", "--limit", "3"],
        ["member", "list", "-w", "table"],
        ["endpoint", "status", "-w", "table"],
    ):
        cmd = [etcdctl, "--endpoints", endpoints, "--command-timeout", "10s", *args]
        say(f"   $ etcdctl {' '.join(args)}")
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "ETCDCTL_API": "3"})  # fmt: skip
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"etcdctl {' '.join(args)} did not answer within 30 s") from None
        if out.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {out.stderr.strip()}")
        for line in out.stdout.strip().splitlines():
            if line.strip():
                say(f"     {line}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kvstore-demo-") as tmp:
        cluster = DemoCluster(Path(tmp))

        def on_signal(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_signal)
        try:
            tour(cluster)
            return 0
        except KeyboardInterrupt:
            say("\ninterrupted: stopping the members")
            return 130
        except (RuntimeError, OSError) as exc:
            say(f"\ndemo failed: {exc}")
            for m in cluster.members:
                with contextlib.suppress(OSError):
                    say(f"--- {m.name} log tail:\n" + "\n".join(m.log.read_text().splitlines()[-10:]))
            return 1
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    sys.exit(main())

"""3-member clusters of real `etcd` or of `python -m examples.kvstore`, on free loopback ports.

Both backends are started with the same etcd flags (--name, --data-dir, --listen-client-urls,
--advertise-client-urls, --listen-peer-urls, --initial-advertise-peer-urls, --initial-cluster,
--initial-cluster-state, --initial-cluster-token, --heartbeat-interval, --election-timeout), so the
compatibility suite and the benchmark drive them identically:

    with KVCluster("etcd", tmp_path) as c:          # or "raftlib"
        c.wait_ready()
        leader = c.leader()                           # index into c.members, via /v3/maintenance/status
        c.kill(leader)                                # SIGKILL
        c.restart(leader)                             # same data dir, --initial-cluster-state existing

Each member's stdout/stderr go to `<base>/<name>.log`; `describe()` returns their tails for failure
messages.  Only the standard library is used, so the benchmark can import this module too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raftlib.testing.proccluster import free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("etcd", "raftlib")


class ClusterError(RuntimeError):
    pass


def etcd_binary() -> str | None:
    """Path of the `etcd` binary (PATH, or $ETCD_BINARY), or None when absent."""
    env = os.environ.get("ETCD_BINARY")
    if env and os.access(env, os.X_OK):
        return env
    return shutil.which("etcd")


def raftlib_store_present() -> bool:
    return (REPO_ROOT / "examples" / "kvstore" / "__main__.py").exists()


def backend_unavailable_reason(backend: str) -> str | None:
    """Why `backend` cannot run on this machine, or None when it can."""
    if backend == "etcd":
        if etcd_binary() is None:
            return "etcd binary not found on PATH (run scripts/install-etcd.sh, or set ETCD_BINARY)"
        return None
    if backend == "raftlib":
        return None  # a missing store must fail loudly, not skip
    return f"unknown backend {backend!r}"


def prefix_end(p: str) -> str:
    """etcd's range_end for every key starting with ``p`` (its last character plus one)."""
    return p[:-1] + chr(ord(p[-1]) + 1)


def http_json(
    url: str, body: Any = None, timeout: float = 5.0, method: str | None = None
) -> tuple[int, Any]:
    """POST `body` as JSON (GET when body is None and method unset); (status, decoded JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("GET" if data is None else "POST"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    member_id: str | None = None  # decimal string, learned from a response header
    starts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KVCluster:
    """A cluster of `size` members of `backend` ("etcd" or "raftlib") rooted at `base_dir`."""

    def __init__(
        self,
        backend: str,
        base_dir: Path | str,
        size: int = 3,
        *,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        token: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.backend = backend
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.token = token or f"kvcluster-{backend}-{os.getpid()}-{time.monotonic_ns()}"
        self.extra_args = list(extra_args or [])
        self.env = env
        self.python = python
        ports = free_ports(2 * size)
        self.members = [
            Member(
                name=f"{backend}{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.base_dir / f"{backend}{i}.data",
                log_path=self.base_dir / f"{backend}{i}.log",
            )
            for i in range(size)
        ]

    # ----------------------------------------------------------------------------------- set-up

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def command(self, i: int, state: str = "new") -> list[str]:
        m = self.members[i]
        if self.backend == "etcd":
            exe = etcd_binary()
            if exe is None:
                raise ClusterError(backend_unavailable_reason("etcd") or "etcd missing")
            argv = [exe]
        else:
            argv = [self.python, "-m", "examples.kvstore"]
        return [
            *argv,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            *self.extra_args,
        ]  # fmt: skip

    def _spawn(self, i: int, state: str) -> None:
        m = self.members[i]
        if m.alive():
            raise ClusterError(f"{m.name} is already running (pid {m.pid})")
        m.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(m.data_dir, 0o700)  # etcd warns about wider permissions
        env = dict(os.environ)
        if self.backend == "raftlib":
            env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        if self.env:
            env.update(self.env)
        m.starts += 1
        with open(m.log_path, "ab") as log:
            log.write(f"\n=== start #{m.starts}: {' '.join(self.command(i, state))}\n".encode())
            log.flush()
            m.proc = subprocess.Popen(
                self.command(i, state),
                cwd=str(REPO_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C of the test run does not reach the members
            )

    def start(self, timeout: float = 30.0) -> KVCluster:
        """Start every member and wait until all answer and agree on a leader."""
        try:
            for i in range(len(self.members)):
                self._spawn(i, "new")
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> KVCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- lifecycle

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (default SIGKILL) to member i and reap it."""
        m = self.members[i]
        if m.proc is None:
            return
        if m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(sig)
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=10)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member i again on its old data dir (--initial-cluster-state existing)."""
        if self.members[i].alive():
            self.kill(i)
        self._spawn(i, "existing")
        self.wait_member(i, timeout)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM every member, then SIGKILL the ones still running after `grace` seconds."""
        for m in self.members:
            if m.alive():
                assert m.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    m.proc.terminate()
        deadline = time.monotonic() + grace
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=10)

    # --------------------------------------------------------------------------------- queries

    def url(self, i: int, path: str) -> str:
        return self.members[i].client_url + path

    def status(self, i: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """Member i's /v3/maintenance/status answer, or None if it does not answer with JSON."""
        try:
            code, body = http_json(self.url(i, "/v3/maintenance/status"), {}, timeout=timeout)
        except (OSError, ValueError):
            return None
        if code != 200 or not isinstance(body, dict):
            return None
        member_id = body.get("header", {}).get("member_id")
        if member_id:
            self.members[i].member_id = member_id
        return body

    def _check_alive(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is not None:
            raise ClusterError(
                f"{self.backend} member {m.name} exited with status {m.proc.returncode}\n" + self.describe()
            )

    def wait_member(self, i: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until member i answers status and knows a leader."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(i)
            st = self.status(i, timeout=1.0)
            if st is not None and st.get("leader"):
                return st
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{self.backend} member {self.members[i].name} not ready after {timeout:.0f} s "
                    f"(last status: {st})\n" + self.describe()
                )
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every running member answers status and all name the same leader, a running member."""
        deadline = time.monotonic() + timeout
        while True:
            leaders = set()
            for i, m in enumerate(self.members):
                if m.proc is None:
                    continue
                st = self.wait_member(i, max(0.5, deadline - time.monotonic()))
                leaders.add(st["leader"])
            running_ids = {m.member_id for m in self.members if m.alive()}
            if len(leaders) == 1 and leaders <= running_ids and self._published():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"members disagree on the leader: {leaders}\n" + self.describe())
            time.sleep(0.1)

    def _published(self) -> bool:
        """Every running member lists every member with its name and client URLs.

        A member publishes its attributes through the log after it starts (etcd does the same); until
        then the member list shows it with its peer URLs only.
        """
        for i, m in enumerate(self.members):
            if not m.alive():
                continue
            try:
                code, body = http_json(self.url(i, "/v3/cluster/member/list"), {}, timeout=1.0)
            except (OSError, ValueError):
                return False
            if code != 200 or not isinstance(body, dict):
                return False
            listed = body.get("members", [])
            if len(listed) != len(self.members):
                return False
            if not all(x.get("name") and x.get("clientURLs") for x in listed):
                return False
        return True

    def leader(self, timeout: float = 15.0, exclude: set[int] | None = None) -> int:
        """Index of the member that running members report as leader (via /v3/maintenance/status)."""
        exclude = exclude or set()
        deadline = time.monotonic() + timeout
        last: list[Any] = []
        while time.monotonic() < deadline:
            statuses = {i: self.status(i, timeout=1.0) for i, m in enumerate(self.members) if m.alive()}
            last = [(self.members[i].name, (st or {}).get("leader")) for i, st in statuses.items()]
            ids = {m.member_id: i for i, m in enumerate(self.members) if m.member_id}
            for st in statuses.values():
                lid = (st or {}).get("leader")
                if lid and lid in ids and ids[lid] not in exclude and self.members[ids[lid]].alive():
                    return ids[lid]
            time.sleep(0.1)
        raise ClusterError(f"no leader within {timeout} s (members said {last})\n" + self.describe())

    def followers(self) -> list[int]:
        lead = self.leader()
        return [i for i, m in enumerate(self.members) if i != lead and m.alive()]

    def describe(self, lines: int = 25) -> str:
        out = []
        for m in self.members:
            try:
                tail = m.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            state = "running" if m.alive() else f"exit {m.proc.returncode}" if m.proc else "not started"
            out.append(f"--- {m.name} ({state}, {m.client_url}) log tail:\n" + "\n".join(tail))
        return "\n".join(out)

"""Clusters of real OS processes on 127.0.0.1, each a :mod:`raftlib.testing.procnode`.

For tests that need real sockets, real fsync and real ``kill -9``::

    with ProcCluster(3, base_dir=tmp_path) as c:
        leader = c.wait_leader()
        c.request(leader, op="put", key="k", value="v")
        c.kill(leader)                 # SIGKILL: nothing is flushed
        new = c.wait_leader(exclude={leader})
        c.restart(leader)

Every process is killed when the context exits, also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound briefly, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ProcError(RuntimeError):
    """A node process failed to start or answer."""


def control_request(address: str, timeout: float = 10.0, /, **req: Any) -> dict[str, Any]:
    """One JSON-lines request/answer on a control channel at ``host:port``."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ProcError(f"{address} closed the control connection")
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


class ProcCluster:
    """N procnode processes with their control channels."""

    def __init__(
        self,
        n: int,
        base_dir: str | os.PathLike[str],
        *,
        cluster_id: str = "raftlib",
        tick: float = 0.05,
        extra_args: list[str] | None = None,
        tls: dict[str, tuple[str, str, str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.base = Path(base_dir)
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        ports = free_ports(2 * n)
        self.peer = {i: f"127.0.0.1:{ports[k]}" for k, i in enumerate(self.ids)}
        self.control = {i: f"127.0.0.1:{ports[n + k]}" for k, i in enumerate(self.ids)}
        self.cluster_id = cluster_id
        self.tick = tick
        self.extra_args = extra_args or []
        self.tls = tls or {}
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    # -- processes ---------------------------------------------------------------

    def __enter__(self) -> ProcCluster:
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def data_dir(self, node_id: str) -> Path:
        return self.base / node_id

    def args(self, node_id: str, join: bool = False, members: dict[str, str] | None = None) -> list[str]:
        members = members or self.peer
        args = [
            sys.executable, "-m", "raftlib.testing.procnode",
            "--id", node_id,
            "--members", ",".join(f"{k}={v}" for k, v in members.items()),
            "--data-dir", str(self.data_dir(node_id)),
            "--control", self.control[node_id],
            "--cluster-id", self.cluster_id,
            "--tick", str(self.tick),
            *self.extra_args,
        ]
        if join:
            args.append("--join")
        if node_id in self.tls:
            cert, key, ca = self.tls[node_id]
            args += ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]
        return args

    def start(self, node_id: str, join: bool = False, members: dict[str, str] | None = None,
              wait: bool = True) -> None:
        if node_id in self.procs and self.procs[node_id].poll() is None:
            raise ProcError(f"{node_id} is already running")
        self.base.mkdir(parents=True, exist_ok=True)
        log_path = self.logs[node_id] = self.base / f"{node_id}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
        env = dict(os.environ, **(self.env or {}))
        self.procs[node_id] = subprocess.Popen(
            self.args(node_id, join, members),
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=env,
        )
        log_file.close()
        if wait:
            self._wait_ready(node_id)

    def _wait_ready(self, node_id: str, timeout: float = 20.0) -> None:
        proc = self.procs[node_id]
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith(b"READY"):
                return
            if not line and proc.poll() is not None:
                raise ProcError(f"{node_id} exited with {proc.returncode}: {self.tail(node_id)}")
        raise ProcError(f"{node_id} did not become ready: {self.tail(node_id)}")

    def start_all(self) -> None:
        for i in self.ids:
            self.start(i, wait=False)
        for i in self.ids:
            self._wait_ready(i)

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(timeout=20)

    def restart(self, node_id: str, **kw: Any) -> None:
        self.kill(node_id)
        self.start(node_id, **kw)

    def alive(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        for node_id in list(self.procs):
            self.kill(node_id, signal.SIGKILL)
        for proc in self.procs.values():
            if proc.stdout is not None:
                proc.stdout.close()

    def tail(self, node_id: str, lines: int = 30) -> str:
        path = self.logs.get(node_id)
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- control channel -------------------------------------------------------------

    def request(self, node_id: str, timeout: float = 10.0, **req: Any) -> dict[str, Any]:
        """Send one request to ``node_id``'s control channel and return its answer."""
        return control_request(self.control[node_id], timeout, **req)

    def try_request(self, node_id: str, **req: Any) -> dict[str, Any] | None:
        """Like :meth:`request`, but None when the process cannot be reached."""
        try:
            return self.request(node_id, **req)
        except (OSError, ProcError, ValueError):
            return None

    def status(self, node_id: str) -> dict[str, Any] | None:
        ans = self.try_request(node_id, op="status", timeout=2.0)
        return ans["status"] if ans and ans.get("ok") else None

    def wait_leader(self, exclude: set[str] = frozenset(), timeout: float = 20.0) -> str:  # type: ignore[assignment]
        """The id of the leader that the running members (minus ``exclude``) agree on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = set()
            for i in self.ids:
                if i in exclude or not self.alive(i):
                    continue
                st = self.status(i)
                if st and st.get("role") == "leader":
                    seen.add(i)
            if len(seen) == 1:
                return seen.pop()
            time.sleep(0.05)
        raise ProcError(f"no single leader within {timeout}s")

    def put(self, node_id: str, key: str, value: str, timeout: float = 5.0) -> dict[str, Any]:
        return self.request(node_id, op="put", key=key, value=value, timeout=timeout)

    def dump(self, node_id: str) -> dict[str, str]:
        ans = self.request(node_id, op="dump")
        data: dict[str, str] = ans["data"]
        return data

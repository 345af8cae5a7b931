"""The local process backend: members are ``python -m examples.kvstore`` processes on this machine.

The operator's own state (member name <-> ID <-> pid <-> data dir <-> ports) is a JSON file under the
data root, written atomically, so that ``status``/``destroy`` from another process and a restarted
``apply`` see the same members. A running member is re-adopted by pid, checked against
``/proc/<pid>/cmdline`` (it must be the kvstore with that data dir) so a recycled pid is not mistaken
for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import examples
from examples.kvstore.operator.spec import ClusterSpec

STATE_VERSION = 1


class BackendError(RuntimeError):
    pass


@dataclass
class MemberRecord:
    name: str
    index: int
    host: str
    client_port: int
    peer_port: int
    data_dir: str
    member_id: str = ""
    """etcd member ID, decimal (as the gateway spells it)."""
    pid: int | None = None
    config_hash: str = ""
    created: float = 0.0
    client_scheme: str = "http"
    peer_scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.client_scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.peer_scheme}://{self.host}:{self.peer_port}"


@dataclass
class OperatorState:
    cluster: str
    token: str = ""
    members: dict[str, MemberRecord] = field(default_factory=dict)
    next_index: int = 0
    last_backup: dict[str, Any] | None = None
    restore_from: str | None = None
    operator_pid: int | None = None
    down_since: dict[str, float] = field(default_factory=dict)
    """Member name -> wall-clock time it was first seen unreachable (shared with ``status``)."""
    version: int = STATE_VERSION

    @classmethod
    def load(cls, path: Path, cluster: str) -> OperatorState:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(cluster=cluster)
        except ValueError as exc:
            raise BackendError(
                f"{path}: corrupt operator state ({exc}); move it away to start over"
            ) from None
        if raw.get("cluster") != cluster:
            raise BackendError(f"{path} belongs to cluster {raw.get('cluster')!r}, not {cluster!r}")
        members = {name: MemberRecord(**m) for name, m in raw.pop("members", {}).items()}
        return cls(members=members, **raw)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_pair(host: str) -> tuple[int, int]:
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return socks[0].getsockname()[1], socks[1].getsockname()[1]
    finally:
        for s in socks:
            s.close()


class LocalBackend:
    """Starts, stops and checks members as local processes."""

    def __init__(self, spec: ClusterSpec, python: str = sys.executable) -> None:
        self.spec = spec
        self.python = python
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.code_root = str(Path(examples.__file__).resolve().parent.parent)

    # -- addresses and records ---------------------------------------------------------------------

    def allocate(self, state: OperatorState) -> tuple[str, int, int]:
        """A (host, client port, peer port) no member of ``state`` uses and nothing listens on."""
        spec = self.spec
        used = {(m.host, m.client_port) for m in state.members.values()}
        used |= {(m.host, m.peer_port) for m in state.members.values()}
        if spec.addresses:
            # Prefer slots that were never used by this state (a re-used peer URL re-uses a member ID).
            for a in spec.addresses:
                if (a.host, a.client_port) in used or (a.host, a.peer_port) in used:
                    continue
                if _port_free(a.host, a.client_port) and _port_free(a.host, a.peer_port):
                    return a.host, a.client_port, a.peer_port
            raise BackendError("no free address slot in the spec's addresses")
        if spec.client_ports and spec.peer_ports:
            lo_c, hi_c = spec.client_ports
            lo_p = spec.peer_ports[0]
            span = min(hi_c - lo_c, spec.peer_ports[1] - lo_p) + 1
            start = state.next_index % span
            for k in range(span):
                off = (start + k) % span
                c, p = lo_c + off, lo_p + off
                if (spec.host, c) in used or (spec.host, p) in used:
                    continue
                if _port_free(spec.host, c) and _port_free(spec.host, p):
                    return spec.host, c, p
            raise BackendError(
                f"no free port pair in client_ports {spec.client_ports} / peer_ports {spec.peer_ports}"
            )
        c, p = free_port_pair(spec.host)
        return spec.host, c, p

    def new_record(self, state: OperatorState) -> MemberRecord:
        host, client, peer = self.allocate(state)
        index = state.next_index
        state.next_index += 1
        name = f"{self.spec.name}-{index}"
        return MemberRecord(
            name=name,
            index=index,
            host=host,
            client_port=client,
            peer_port=peer,
            data_dir=str(self.spec.data_root / "members" / f"{name}.etcd"),
            created=time.time(),
            client_scheme=self.spec.client_scheme,
            peer_scheme=self.spec.peer_scheme,
        )

    def log_path(self, rec: MemberRecord) -> Path:
        return self.spec.data_root / "logs" / f"{rec.name}.log"

    # -- processes ---------------------------------------------------------------------------------

    def command(
        self,
        state: OperatorState,
        rec: MemberRecord,
        cluster_state: str,
        initial_cluster: str,
        restore: str | None = None,
    ) -> list[str]:
        argv = [
            self.python, "-m", "examples.kvstore",
            "--name", rec.name,
            "--data-dir", rec.data_dir,
            "--listen-client-urls", rec.client_url,
            "--advertise-client-urls", rec.client_url,
            "--listen-peer-urls", rec.peer_url,
            "--initial-advertise-peer-urls", rec.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", cluster_state,
            "--initial-cluster-token", state.token,
            *self.spec.member_args(),
        ]  # fmt: skip
        if restore:
            argv += ["--restore-snapshot", restore]
        return argv

    def start(
        self,
        state: OperatorState,
        rec: MemberRecord,
        cluster_state: str = "existing",
        initial_cluster: str | None = None,
        restore: str | None = None,
    ) -> int:
        """Start ``rec``'s process (records its pid and configuration); returns the pid."""
        if self.alive(rec):
            raise BackendError(f"{rec.name} is already running (pid {rec.pid})")
        Path(rec.data_dir).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(rec.data_dir, 0o700)
        log = self.log_path(rec)
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command(
            state, rec, cluster_state, initial_cluster or f"{rec.name}={rec.peer_url}", restore
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = self.code_root + os.pathsep + env.get("PYTHONPATH", "")
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                cwd=self.code_root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # members outlive the operator (and its Ctrl-C)
            )
        self.procs[proc.pid] = proc
        rec.pid = proc.pid
        rec.config_hash = self.spec.config_hash
        return proc.pid

    def alive(self, rec: MemberRecord) -> bool:
        """Is ``rec``'s process running (and really the kvstore with its data dir)?"""
        pid = rec.pid
        if not pid:
            return False
        proc = self.procs.get(pid)
        if proc is not None:
            return proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return True  # no /proc: trust the pid
        if b"examples.kvstore" not in cmdline or rec.data_dir.encode() not in cmdline:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except (OSError, IndexError):
            pass
        return True

    def stop(self, rec: MemberRecord, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
        """Stop ``rec``'s process: ``sig``, then SIGKILL after ``grace`` seconds."""
        if not self.alive(rec):
            self._reap(rec)
            return
        assert rec.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, sig)
        deadline = time.monotonic() + grace
        while self.alive(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.alive(rec) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._reap(rec)

    def _reap(self, rec: MemberRecord) -> None:
        proc = self.procs.pop(rec.pid or -1, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)

    def delete_data(self, rec: MemberRecord) -> None:
        root = self.spec.data_root.resolve()
        path = Path(rec.data_dir).resolve()
        if root not in path.parents:
            raise BackendError(f"refusing to delete {path}: not under the data root {root}")
        shutil.rmtree(path, ignore_errors=True)

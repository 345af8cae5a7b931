"""The reconcile loop: observe, ``plan``, execute one action, log every decision with its reason."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from examples.kvstore.operator import backup as backups
from examples.kvstore.operator import reconcile as rc
from examples.kvstore.operator.backend import BackendError, LocalBackend, MemberRecord, OperatorState
from examples.kvstore.operator.observe import ApiError, Observation, call, observe, ssl_context
from examples.kvstore.operator.spec import ClusterSpec, SpecError, load_spec


class OperatorError(RuntimeError):
    pass


def member_id_for(peer_url: str, token: str) -> str:
    from examples.kvstore.server import member_id_for as mid

    return str(mid([peer_url], token))


class Operator:
    def __init__(
        self, spec: ClusterSpec, out: IO[str] | None = None, backend: LocalBackend | None = None
    ) -> None:
        self.spec = spec
        self.out = out or sys.stderr
        self.backend = backend or LocalBackend(spec)
        self.state = OperatorState.load(spec.state_file, spec.name)
        self.down_since: dict[str, float] = dict(self.state.down_since)
        self._last_note: tuple[str, str | None] | None = None
        self._last_note_at = 0.0
        self._lock_file: IO[str] | None = None
        self.ctx = ssl_context(spec)
        self.last_observation: Observation | None = None
        self._spec_mtime: int | None = None
        self._saved_mtime: int | None = None

    # -- bookkeeping -------------------------------------------------------------------------------

    def lock(self) -> None:
        """One apply loop per data root."""
        self.spec.data_root.mkdir(parents=True, exist_ok=True)
        f = open(self.spec.data_root / "operator.lock", "w")  # noqa: SIM115 - held for the process life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise OperatorError(
                f"another operator is already reconciling {self.spec.data_root} "
                f"(pid {self.state.operator_pid})"
            ) from None
        self._lock_file = f
        self.state = OperatorState.load(self.spec.state_file, self.spec.name)
        self.state.operator_pid = os.getpid()
        self.down_since = dict(self.state.down_since)
        self.save()

    def unlock(self) -> None:
        if self._lock_file is not None:
            self.state.operator_pid = None
            self.save()
            self._lock_file.close()
            self._lock_file = None

    def save(self) -> None:
        self.state.save(self.spec.state_file)
        self._saved_mtime = os.stat(self.spec.state_file).st_mtime_ns

    def _adopt_external_changes(self) -> None:
        """Another command (``restart-stopped``) rewrote the state file: take its records over."""
        try:
            mtime = os.stat(self.spec.state_file).st_mtime_ns
        except FileNotFoundError:
            return
        if self._saved_mtime is not None and mtime != self._saved_mtime:
            self.state = OperatorState.load(self.spec.state_file, self.spec.name)
            self.state.operator_pid = os.getpid()
            self.log("state", f"{self.spec.state_file} changed outside this loop; re-read it")
            self.save()

    def log(self, kind: str, message: str, **fields: Any) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} operator[{self.spec.name}] {kind}: {message}", file=self.out, flush=True)
        self.spec.data_root.mkdir(parents=True, exist_ok=True)
        with open(self.spec.data_root / "operator.log", "a") as f:
            f.write(json.dumps({"time": time.time(), "kind": kind, "message": message, **fields}) + "\n")

    def note(self, action: rc.Action) -> None:
        """Log a decision; waits and refusals only when they change (or every 30 s)."""
        key = (action.kind, action.member)
        if action.mutating or key != self._last_note or time.monotonic() - self._last_note_at > 30:
            self.log(
                action.kind,
                action.reason if not action.member else f"[{action.member}] {action.reason}",
                member=action.member,
            )
            self._last_note, self._last_note_at = key, time.monotonic()

    # -- one round ---------------------------------------------------------------------------------

    def observe(self) -> Observation:
        obs = observe(self.spec, self.state, self.backend, self.down_since)
        self.last_observation = obs
        if self._lock_file is not None and self.down_since != self.state.down_since:
            self.state.down_since = dict(self.down_since)
            self.save()
        return obs

    def step(self) -> list[rc.Action]:
        """Observe, plan, execute the first mutating action; returns the plan."""
        if self._lock_file is not None:
            self._adopt_external_changes()
        obs = self.observe()
        actions = rc.plan(self.spec, obs.observed)
        if not actions:
            if self._last_note != ("converged", None):
                self.log("converged", f"{self.spec.size} members, all up, nothing to do")
                self._last_note = ("converged", None)
            return actions
        for a in actions:
            self.note(a)
            if a.mutating:
                try:
                    self.execute(a, obs)
                except (ApiError, OSError, BackendError, backups.BackupError) as exc:
                    self.log(
                        "error", f"{a.kind} {a.member or ''} failed: {exc}; will re-plan", member=a.member
                    )
                break
        return actions

    def run(self, stop: threading.Event, until_converged: bool = False, timeout: float | None = None) -> bool:
        """Reconcile until ``stop`` is set (or converged / timed out); True when converged at exit."""
        deadline = None if timeout is None else time.monotonic() + timeout
        converged = False
        while not stop.is_set():
            self.reload_spec()
            actions = self.step()
            converged = not actions
            if until_converged and converged:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return converged
            stop.wait(self.spec.reconcile_interval if not any(a.mutating for a in actions) else 0.2)
        return converged

    def reload_spec(self) -> None:
        """Pick up edits of the spec file (resize, new configuration, backup policy) between rounds."""
        if not self.spec.source:
            return
        try:
            mtime = os.stat(self.spec.source).st_mtime_ns
        except OSError:
            return
        if self._spec_mtime is None:
            self._spec_mtime = mtime
            return
        if mtime == self._spec_mtime:
            return
        self._spec_mtime = mtime
        try:
            new = load_spec(self.spec.source)
        except SpecError as exc:
            self.log("error", f"spec {self.spec.source} changed but is invalid, keeping the old one: {exc}")
            return
        if new.name != self.spec.name or new.data_root != self.spec.data_root:
            self.log("error", "spec changed name or data_root; restart the operator for that")
            return
        if new != self.spec:
            self.log(
                "spec",
                f"{self.spec.source} changed: size {self.spec.size} -> {new.size}, "
                f"configuration {self.spec.config_hash} -> {new.config_hash}",
            )
            self.spec = new
            self.backend.spec = new

    # -- actions -----------------------------------------------------------------------------------

    def _leader_url(self, obs: Observation) -> str:
        if obs.leader_name and obs.leader_name in self.state.members:
            return self.state.members[obs.leader_name].client_url
        for r in obs.reports:
            if r.status is not None and r.client_url:
                return r.client_url
        raise OperatorError("no member answers")

    def _initial_cluster(self, rec: MemberRecord, obs: Observation) -> str:
        parts = [f"{rec.name}={rec.peer_url}"]
        for r in self.state.members.values():
            if r.name != rec.name and any(x.name == r.name and x.in_membership for x in obs.reports):
                parts.append(f"{r.name}={r.peer_url}")
        return ",".join(parts)

    def execute(self, a: rc.Action, obs: Observation) -> None:
        st = self.state
        if a.kind == rc.BOOTSTRAP:
            if not st.token:
                st.token = f"{self.spec.name}-{int(time.time() * 1000):x}"
            rec = self.backend.new_record(st)
            rec.member_id = member_id_for(rec.peer_url, st.token)
            st.members[rec.name] = rec
            self.save()
            self.backend.start(st, rec, "new", restore=a.target)
            st.restore_from = None
            self.save()
            self.log(
                "started",
                f"{rec.name} (pid {rec.pid}) at {rec.client_url}, a new cluster"
                + (f" restored from {a.target}" if a.target else ""),
                member=rec.name,
            )
        elif a.kind == rc.ADD_LEARNER:
            leader = self._leader_url(obs)
            rec = self.backend.new_record(st)
            rec.member_id = member_id_for(rec.peer_url, st.token)
            st.members[rec.name] = rec  # recorded before the change: an interrupted add is cleaned up
            self.save()
            answer = call(
                leader + "/v3/cluster/member/add",
                {"peerURLs": [rec.peer_url], "isLearner": True},
                timeout=10,
                ctx=self.ctx,
            )
            rec.member_id = str(answer.get("member", {}).get("ID") or rec.member_id)
            self.save()
            self.backend.start(st, rec, "existing", initial_cluster=self._initial_cluster(rec, obs))
            self.save()
            self.log(
                "started",
                f"{rec.name} (pid {rec.pid}, ID {rec.member_id}) at {rec.client_url} as a learner",
                member=rec.name,
            )
        elif a.kind == rc.PROMOTE:
            try:
                call(
                    self._leader_url(obs) + "/v3/cluster/member/promote",
                    {"ID": a.member_id},
                    timeout=10,
                    ctx=self.ctx,
                )
            except ApiError as exc:
                self.log("wait", f"[{a.member}] not promoted yet: {exc}", member=a.member)
                return
            self.log("promoted", f"{a.member} is a voter", member=a.member)
        elif a.kind == rc.REMOVE:
            call(
                self._leader_url(obs) + "/v3/cluster/member/remove",
                {"ID": a.member_id},
                timeout=10,
                ctx=self.ctx,
            )
            rec = next((r for r in st.members.values() if r.member_id == a.member_id), None)
            if rec is not None:
                self.backend.stop(rec)
                self.backend.delete_data(rec)
                del st.members[rec.name]
                self.down_since.pop(rec.name, None)
                self.save()
            self.log("removed", f"{a.member} (ID {a.member_id}) left the membership", member=a.member)
        elif a.kind == rc.FORGET:
            rec = st.members.get(a.member or "")
            if rec is not None:
                self.backend.stop(rec)
                self.backend.delete_data(rec)
                del st.members[rec.name]
                self.save()
        elif a.kind == rc.TRANSFER_LEADER:
            target = a.details.get("target_id")
            call(
                self._leader_url(obs) + "/v3/maintenance/transfer-leadership",
                {"targetID": target},
                timeout=15,
                ctx=self.ctx,
            )
            self.log("transferred", f"leadership {a.member} -> {a.target}", member=a.member)
        elif a.kind == rc.RESTART:
            rec = st.members[a.member or ""]
            self.backend.stop(rec)
            self.backend.start(st, rec, "existing", initial_cluster=self._initial_cluster(rec, obs))
            self.down_since.pop(rec.name, None)
            self.save()
            self.log(
                "restarted",
                f"{rec.name} (pid {rec.pid}) with configuration {rec.config_hash}",
                member=rec.name,
            )
        elif a.kind == rc.BACKUP:
            self.backup_now(obs)
        else:  # pragma: no cover
            raise OperatorError(f"unknown action {a.kind}")

    def backup_now(self, obs: Observation | None = None) -> backups.BackupInfo:
        obs = obs or self.observe()
        info = backups.take_backup(
            self._leader_url(obs),
            self.spec.backup.directory,
            self.spec.name,
            self.spec.backup.retention,
            self.ctx,
        )
        self.state.last_backup = {
            "time": info.time,
            "path": str(info.path),
            "sha256": info.sha256,
            "revision": info.revision,
            "size": info.size,
        }
        self.save()
        self.log(
            "backed-up",
            f"{info.path} (revision {info.revision}, {info.size} bytes, sha256 {info.sha256[:12]})",
        )
        return info

    # -- whole-cluster commands --------------------------------------------------------------------

    def restart_stopped(self) -> list[str]:
        """Start every recorded member whose process is not running, on its data dir (quorum recovery)."""
        started = []
        for rec in self.state.members.values():
            if not self.backend.alive(rec) and Path(rec.data_dir, "kvstore-member.json").exists():
                self.backend.start(self.state, rec, "existing", initial_cluster=f"{rec.name}={rec.peer_url}")
                started.append(rec.name)
                self.log("started", f"{rec.name} (pid {rec.pid}) on its existing data dir", member=rec.name)
        self.save()
        return started

    def destroy(self, purge: bool = False) -> list[str]:
        """Stop the apply loop (if any) and every member; with ``purge`` delete the data root too."""
        pid = self.state.operator_pid
        if pid and pid != os.getpid() and _is_operator(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            deadline = time.monotonic() + 15
            while _is_operator(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.state = OperatorState.load(self.spec.state_file, self.spec.name)
        stopped = []
        for rec in self.state.members.values():
            if self.backend.alive(rec):
                stopped.append(rec.name)
            self.backend.stop(rec)
        self.log(
            "destroyed", f"stopped {', '.join(stopped) or 'nothing'}" + ("; data deleted" if purge else "")
        )
        if purge:
            import shutil

            shutil.rmtree(self.spec.data_root / "members", ignore_errors=True)
            self.spec.state_file.unlink(missing_ok=True)
        else:
            for rec in self.state.members.values():
                rec.pid = None
            self.save()
        return stopped


def _is_operator(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return True
    return b"examples.kvstore.operator" in cmd

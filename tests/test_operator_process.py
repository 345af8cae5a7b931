"""The operator against real processes (examples/kvstore/operator, docs/operator.md).

Also the two store extensions it needs: ``--restore-snapshot`` and the transfer-leadership route.
The long under-load scenarios (self-heal, resize 3 -> 5 -> 3) are marked slow.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kvcluster import REPO_ROOT, KVCluster, http_json

FAST = ["--heartbeat-interval", "50", "--election-timeout", "500"]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def put(url: str, key: str, value: str, timeout: float = 5.0) -> bool:
    try:
        code, _ = http_json(url + "/v3/kv/put", {"key": b64(key), "value": b64(value)}, timeout=timeout)
    except OSError:
        return False
    return code == 200


def get(url: str, key: str, timeout: float = 5.0) -> str | None:
    code, body = http_json(url + "/v3/kv/range", {"key": b64(key)}, timeout=timeout)
    assert code == 200, body
    kvs = body.get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def keys_with_prefix(url: str, prefix: str) -> dict[str, str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    code, body = http_json(url + "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)}, timeout=10)
    assert code == 200, body
    kvs = body.get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode() for kv in kvs}


# ------------------------------------------------------------------------------ store extensions


def test_restore_snapshot_flag_seeds_a_new_member(tmp_path: Path) -> None:
    with KVCluster("raftlib", tmp_path / "old", size=1, heartbeat_ms=50, election_ms=500) as old:
        url = old.members[0].client_url
        for i in range(20):
            assert put(url, f"k{i}", f"v{i}")
        req_code, _ = http_json(url + "/v3/maintenance/status", {})
        assert req_code == 200
        from examples.kvstore.operator.backup import fetch_snapshot

        data, revision = fetch_snapshot(url)
    assert revision >= 21
    snap = tmp_path / "backup.snap"
    snap.write_bytes(data)
    c = KVCluster("raftlib", tmp_path / "new", size=1, heartbeat_ms=50, election_ms=500,
                  extra_args=["--restore-snapshot", str(snap)])  # fmt: skip
    with c:
        url = c.members[0].client_url
        assert keys_with_prefix(url, "k") == {f"k{i}": f"v{i}" for i in range(20)}
        assert put(url, "after", "restore")
        # The seed is sealed in a raft snapshot: a restart (the flag is then ignored) keeps everything,
        # even once the backup file is gone.
        deadline = time.monotonic() + 10
        while (c.members[0].data_dir / "restore-pending.snap").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (c.members[0].data_dir / "restore-pending.snap").exists()
        c.kill(0)
        c.extra_args = []
        snap.unlink()
        c.restart(0)
        assert get(url, "k7") == "v7"
        assert get(url, "after") == "restore"
        _, body = http_json(url + "/v3/cluster/member/list", {})
        assert [m["name"] for m in body["members"]] == [c.members[0].name]


def test_transfer_leadership_route(tmp_path: Path) -> None:
    with KVCluster("raftlib", tmp_path, size=3, heartbeat_ms=50, election_ms=500) as c:
        lead = c.leader()
        target = next(i for i in range(3) if i != lead)
        other = next(i for i in range(3) if i not in (lead, target))
        c.status(target)
        # Asked through a follower: forwarded to the leader.
        code, body = http_json(c.url(other, "/v3/maintenance/transfer-leadership"),
                               {"targetID": c.members[target].member_id})  # fmt: skip
        assert code == 200, body
        assert c.leader() == target
        code, body = http_json(c.url(other, "/v3/maintenance/transfer-leadership"), {"targetID": "12345"})
        assert code != 200 and "bad leader transferee" in json.dumps(body)


# ------------------------------------------------------------------------------------ operator


def write_spec(path: Path, size: int = 3, grace: float = 2.0, **extra: Any) -> Path:
    lines = [
        'name = "t"',
        f"size = {size}",
        'data_root = "cluster"',
        f"grace_period = {grace}",
        "heartbeat_interval = 50",
        "election_timeout = 500",
        "reconcile_interval = 0.2",
        "max_lag = 200",
    ]
    backup = extra.pop("backup", None)
    for k, v in extra.items():
        lines.append(f"{k} = {json.dumps(v)}")
    if backup:
        lines.append("[backup]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in backup.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def operator(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.kvstore.operator", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class OperatorProcess:
    """`operator apply SPEC` running in the background (its output in <dir>/apply.log)."""

    def __init__(self, spec: Path) -> None:
        self.spec = spec
        self.log = spec.parent / "apply.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        out = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "examples.kvstore.operator", "apply", str(self.spec)],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        out.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def status(spec: Path) -> dict[str, Any]:
    r = operator("status", str(spec), "--json", timeout=60)
    assert r.returncode in (0, 3), r.stderr
    return json.loads(r.stdout)


def wait_converged(
    spec: Path, size: int, timeout: float, op: OperatorProcess | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = status(spec)
        members = st["members"]
        if (
            all(a["kind"] == "backup" for a in st["next"])
            and len(members) == size
            and all(m["healthy"] and m["process"] == "running" for m in members)
        ):
            return st
        time.sleep(0.5)
    raise AssertionError(
        f"not converged to {size} within {timeout} s: {json.dumps(st, indent=1)}\n"
        + (op.output()[-6000:] if op else "")
    )


@pytest.fixture
def cluster_dir() -> Any:
    # Not tmp_path: a concurrent pytest run (same user) may prune old numbered base temp dirs while
    # these minutes-long tests still use theirs.
    path = Path(tempfile.mkdtemp(prefix="kv-operator-test-"))
    yield path
    spec = path / "spec.toml"
    if spec.exists():
        operator("destroy", str(spec), "--purge", timeout=60)
    shutil.rmtree(path, ignore_errors=True)


class Writer(threading.Thread):
    """Writes keys through any member; remembers the acknowledged ones."""

    def __init__(self, spec: Path, prefix: str = "w/") -> None:
        super().__init__(daemon=True)
        self.spec = spec
        self.prefix = prefix
        self.acked: dict[str, str] = {}
        self.failed = 0
        self.stop_event = threading.Event()

    def urls(self) -> list[str]:
        state = json.loads((self.spec.parent / "cluster" / "operator-state.json").read_text())
        return [f"http://{m['host']}:{m['client_port']}" for m in state["members"].values()]

    def run(self) -> None:
        i = 0
        urls: list[str] = []
        while not self.stop_event.is_set():
            if i % 20 == 0:
                with contextlib.suppress(OSError, ValueError):
                    urls = self.urls()
            if not urls:
                time.sleep(0.05)
                continue
            key, value = f"{self.prefix}{i:06d}", f"v{i}"
            if put(urls[i % len(urls)], key, value, timeout=3.0):
                self.acked[key] = value
            else:
                self.failed += 1
                time.sleep(0.02)
            i += 1

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)

    def check(self, urls: list[str]) -> None:
        assert len(self.acked) > 50, f"only {len(self.acked)} writes acknowledged"
        for url in urls:
            seen = keys_with_prefix(url, self.prefix)  # a linearizable range on every member
            missing = [k for k in self.acked if seen.get(k) != self.acked[k]]
            assert not missing, f"{url} lost {len(missing)} acknowledged writes, e.g. {missing[:5]}"


def running(pid: int) -> bool:
    """Alive and not a zombie (members outlive the operator that started them and may go unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def member_urls(st: dict[str, Any]) -> list[str]:
    return [m["client_url"] for m in st["members"]]


def test_apply_status_readopt_destroy(cluster_dir: Path) -> None:
    spec = write_spec(cluster_dir / "spec.toml")
    op = OperatorProcess(spec).start()
    try:
        st = wait_converged(spec, 3, 60, op)
        assert st["leader"] and st["observed_voters"] == 3
        table = operator("status", str(spec))
        assert table.returncode == 0
        assert "desired 3 members, observed 3 voter(s)" in table.stdout
        assert "converged" in table.stdout
        pids = {m["name"]: m["pid"] for m in st["members"]}
        out = op.output()
        for reason in ("bootstrap", "add-learner", "promote"):
            assert reason in out, out
        # A second apply on the same data root is refused.
        second = operator("apply", str(spec), "--until-converged", "--timeout", "5")
        assert second.returncode == 1 and "already reconciling" in second.stderr
        # The loop stops, the members stay; a new loop re-adopts them (same pids, nothing started).
        op.stop()
        assert all(m["process"] == "running" for m in status(spec)["members"])
        again = operator("apply", str(spec), "--until-converged", "--timeout", "30")
        assert again.returncode == 0, again.stderr
        st = status(spec)
        assert {m["name"]: m["pid"] for m in st["members"]} == pids
        assert "started" not in again.stderr
    finally:
        op.stop()
    r = operator("destroy", str(spec))
    assert r.returncode == 0 and "stopped 3 member(s)" in r.stdout
    for pid in pids.values():
        assert not running(pid)


def test_backup_destroy_restore(cluster_dir: Path) -> None:
    spec = write_spec(cluster_dir / "spec.toml", backup={"interval": 1.0, "retention": 2, "directory": "bk"})
    r = operator("apply", str(spec), "--until-converged", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    st = status(spec)
    url = member_urls(st)[0]
    for i in range(30):
        assert put(url, f"data/{i:03d}", f"value-{i}")
    # Periodic backups with retention: run the loop a little longer.
    time.sleep(1.0)
    r = operator("apply", str(spec), "--timeout", "4")
    assert "backed-up" in r.stderr, r.stderr
    snaps = sorted((cluster_dir / "bk").glob("t-*.snap"))
    assert 1 <= len(snaps) <= 2
    b = operator("backup", str(spec))
    assert b.returncode == 0, b.stderr
    latest = Path(b.stdout.split()[0])
    assert (latest.parent / (latest.name + ".sha256")).exists()
    assert len(sorted((cluster_dir / "bk").glob("t-*.snap"))) == 2  # retention
    assert operator("destroy", str(spec), "--purge").returncode == 0
    assert not (cluster_dir / "cluster" / "members").exists()
    # A corrupted copy is refused.
    bad = cluster_dir / "bad.snap"
    bad.write_bytes(latest.read_bytes()[:-1] + b"X")
    (cluster_dir / "bad.snap.sha256").write_text((latest.parent / (latest.name + ".sha256")).read_text())
    r = operator("restore", str(spec), str(bad), "--until-converged", "--timeout", "5")
    assert r.returncode == 1 and "checksum mismatch" in r.stderr
    r = operator("restore", str(spec), str(latest), "--until-converged", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    st = wait_converged(spec, 3, 30)
    want = {f"data/{i:03d}": f"value-{i}" for i in range(30)}
    for url in member_urls(st):
        assert keys_with_prefix(url, "data/") == want


def test_refuses_to_act_without_quorum(cluster_dir: Path) -> None:
    spec = write_spec(cluster_dir / "spec.toml", grace=1.0)
    op = OperatorProcess(spec).start()
    try:
        st = wait_converged(spec, 3, 60, op)
        victims = [m for m in st["members"] if m["role"] != "leader"] + [
            m for m in st["members"] if m["role"] == "leader"
        ]
        for m in victims[:2]:
            os.kill(m["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while "quorum lost" not in op.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # well past the grace period: still nothing removed or added
        out = op.output()
        assert "quorum lost: 1 of 3 voters answer, 2 needed" in out, out
        assert "Manual recovery" in out and "restart-stopped" in out and "restore" in out
        r = operator("status", str(spec))
        assert r.returncode == 3 and "quorum lost" in r.stdout
        state = json.loads((cluster_dir / "cluster" / "operator-state.json").read_text())
        assert sorted(state["members"]) == sorted(m["name"] for m in st["members"])
        assert "removed" not in out and out.count("add-learner") == 2
        # The manual step the message gives brings the cluster back; the loop carries on.
        r = operator("restart-stopped", str(spec))
        assert r.returncode == 0 and r.stdout.count("t-") == 2, r.stdout
        wait_converged(spec, 3, 40, op)
    finally:
        op.stop()


@pytest.mark.slow
def test_self_heal_under_load(cluster_dir: Path) -> None:
    spec = write_spec(cluster_dir / "spec.toml", grace=2.0)
    op = OperatorProcess(spec).start()
    writer = Writer(spec)
    try:
        st = wait_converged(spec, 3, 60, op)
        writer.start()
        time.sleep(2)
        victim = next(m for m in st["members"] if m["role"] == "leader")  # the hardest case
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = status(spec)
            names = {m["name"] for m in st["members"]}
            if victim["name"] not in names and st["converged"] and len(names) == 3:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"{victim['name']} not replaced: {st}\n{op.output()[-5000:]}")
        time.sleep(2)
        writer.finish()
        out = op.output()
        assert f"remove: [{victim['name']}]" in out and "down for" in out
        st = wait_converged(spec, 3, 30, op)
        writer.check(member_urls(st))
    finally:
        writer.finish()
        op.stop()


@pytest.mark.slow
def test_resize_3_5_3_under_load(cluster_dir: Path) -> None:
    spec = write_spec(cluster_dir / "spec.toml")
    op = OperatorProcess(spec).start()
    writer = Writer(spec)
    try:
        wait_converged(spec, 3, 60, op)
        writer.start()
        write_spec(spec, size=5)
        wait_converged(spec, 5, 60, op)
        write_spec(spec, size=3)
        st = wait_converged(spec, 3, 60, op)
        time.sleep(1)
        writer.finish()
        out = op.output()
        assert "size 3 -> 5" in out and "size 5 -> 3" in out
        assert out.count("shrinking by one") + out.count("shrinking 5") >= 2
        st = wait_converged(spec, 3, 30, op)
        writer.check(member_urls(st))
    finally:
        writer.finish()
        op.stop()

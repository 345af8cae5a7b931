"""3-node clusters of real OS processes on 127.0.0.1: kill -9, restarts, WAL damage, TLS, membership.

Every acknowledged write must survive: it was fsynced on a majority before
the client heard "ok".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raftlib.testing.proccluster import ProcCluster, ProcError, free_ports


def put_anywhere(c: ProcCluster, key: str, value: str, deadline: float) -> bool:
    """Write through whoever leads now; True once acknowledged."""
    while time.monotonic() < deadline:
        for node_id in c.ids:
            if not c.alive(node_id):
                continue
            ans = c.try_request(node_id, op="put", key=key, value=value, timeout=2.0)
            if ans and ans.get("ok"):
                return True
        time.sleep(0.05)
    return False


class Writer(threading.Thread):
    """Writes k0, k1, ... through the current leader and records what was acknowledged."""

    def __init__(self, c: ProcCluster) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.acked: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            key = f"k{i}"
            if put_anywhere(self.c, key, str(i), time.monotonic() + 10):
                self.acked.append(key)
            i += 1


def converged_dump(c: ProcCluster, node_id: str, min_keys: set[str], timeout: float = 20.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    data: dict[str, str] = {}
    while time.monotonic() < deadline:
        ans = c.try_request(node_id, op="get", key="__barrier__", timeout=2.0)
        if ans and ans.get("ok"):
            data = c.dump(node_id)
            if min_keys <= set(data):
                return data
        time.sleep(0.1)
    missing = sorted(min_keys - set(data))[:10]
    raise AssertionError(f"{node_id} lacks acknowledged keys, e.g. {missing}")


def test_kill_9_the_leader_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path) as c:
        leader = c.wait_leader()
        w = Writer(c)
        w.start()
        time.sleep(1.0)
        c.kill(leader)  # SIGKILL in the middle of the stream
        time.sleep(1.5)
        w.stop_flag.set()
        w.join(30)
        acked = set(w.acked)
        assert len(acked) > 20
        survivors = [i for i in c.ids if i != leader]
        for node_id in survivors:
            data = converged_dump(c, node_id, acked)
            assert all(data[k] == k[1:] for k in acked)
        c.start(leader)
        data = converged_dump(c, leader, acked)
        assert acked <= set(data)


def test_kill_all_three_and_restart_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path) as c:
        c.wait_leader()
        w = Writer(c)
        w.start()
        time.sleep(1.0)
        for node_id in c.ids:
            c.kill(node_id)
        w.stop_flag.set()
        w.join(30)
        acked = set(w.acked)
        assert acked
        c.start_all()
        c.wait_leader()
        for node_id in c.ids:
            converged_dump(c, node_id, acked)


def _wal_files(c: ProcCluster, node_id: str) -> list[Path]:
    return sorted((c.data_dir(node_id) / "wal").glob("*.wal"))


def test_torn_wal_tail_is_truncated_and_the_node_rejoins(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path) as c:
        leader = c.wait_leader()
        for i in range(50):
            assert put_anywhere(c, f"t{i}", str(i), time.monotonic() + 10)
        victim = next(i for i in c.ids if i != leader)
        c.kill(victim)
        wal = _wal_files(c, victim)[-1]
        size = wal.stat().st_size
        with open(wal, "r+b") as f:
            f.truncate(size - 7)  # a partial last record, as after a crash mid-write
        c.start(victim)
        data = converged_dump(c, victim, {f"t{i}" for i in range(50)})
        assert data["t49"] == "49"


def test_corrupt_wal_record_in_the_middle_stops_the_node_with_file_and_offset(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path) as c:
        leader = c.wait_leader()
        for i in range(50):
            assert put_anywhere(c, f"c{i}", "x" * 50, time.monotonic() + 10)
        victim = next(i for i in c.ids if i != leader)
        c.kill(victim)
        wal = _wal_files(c, victim)[0]
        raw = bytearray(wal.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # a bit flip well before the tail
        wal.write_bytes(bytes(raw))
        with pytest.raises(ProcError):
            c.start(victim)
        log = c.tail(victim, 60)
        assert "StorageCorrupted" in log and str(wal.name) in log and "offset" in log


def test_wrong_cluster_id_is_refused(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path) as c:
        leader = c.wait_leader()
        victim = next(i for i in c.ids if i != leader)
        c.kill(victim)
        shutil.rmtree(c.data_dir(victim))
        # Same address, same id, another cluster: its messages must be refused.
        other = ProcCluster(3, tmp_path / "other", cluster_id="intruder")
        other.peer, other.control = c.peer, c.control
        other.start(victim)
        try:
            time.sleep(2.0)
            st = other.status(victim)
            # It learned nothing from the real cluster: no leader, no entries, no term.
            assert st is not None and st["leader"] is None and st["commit"] == 0 and st["term"] == 0
            # The real members refused its connections and said why.
            refusals = [c.tail(i, 400) for i in c.ids if i != victim]
            assert any("refusing connection" in t and "cluster" in t for t in refusals), refusals
            assert put_anywhere(c, "still", "serving", time.monotonic() + 10)
        finally:
            other.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not available")
def test_tls_cluster_replicates_and_refuses_a_foreign_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()

    def ca(name: str) -> None:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=pki)

    def cert(name: str, ca_name: str) -> tuple[str, str, str]:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca_name}.pem", "-CAkey", f"{ca_name}.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", cwd=pki)
        return str(pki / f"{name}.pem"), str(pki / f"{name}.key"), str(pki / f"{ca_name}.pem")

    ca("clusterca")
    ca("evilca")
    tls = {f"n{i}": cert(f"n{i}", "clusterca") for i in (1, 2, 3)}
    with ProcCluster(3, tmp_path / "c", tls=tls) as c:
        leader = c.wait_leader()
        assert put_anywhere(c, "secure", "yes", time.monotonic() + 10)
        for node_id in c.ids:
            assert converged_dump(c, node_id, {"secure"})["secure"] == "yes"
        victim = next(i for i in c.ids if i != leader)
        c.kill(victim)
        shutil.rmtree(c.data_dir(victim))
        c.tls[victim] = cert(f"{victim}-evil", "evilca")
        c.start(victim)
        time.sleep(2.0)
        st = c.status(victim)
        assert st is not None and st["commit"] == 0  # it never received the log
        assert put_anywhere(c, "still", "works", time.monotonic() + 10)


def test_membership_change_and_leadership_transfer_over_tcp(tmp_path: Path) -> None:
    with ProcCluster(3, tmp_path) as c:
        leader = c.wait_leader()
        assert put_anywhere(c, "m", "1", time.monotonic() + 10)
        # Transfer to another member.
        target = next(i for i in c.ids if i != leader)
        assert c.request(leader, op="transfer", to=target)["ok"]
        assert c.wait_leader() == target
        # Add n4 (joins as learner, promoted once caught up), then remove n1.
        ports = free_ports(2)
        c.ids.append("n4")
        c.peer["n4"] = f"127.0.0.1:{ports[0]}"
        c.control["n4"] = f"127.0.0.1:{ports[1]}"
        c.start("n4", join=True)
        ans = c.request(target, op="add_member", id="n4", address=c.peer["n4"], timeout=30)
        assert ans["ok"], ans
        st = c.status(target)
        assert st is not None and "n4" in st["membership"]
        assert converged_dump(c, "n4", {"m"})["m"] == "1"
        remove = next(i for i in c.ids if i not in (target, "n4"))
        assert c.request(target, op="remove_member", id=remove, timeout=30)["ok"]
        c.kill(remove)
        assert put_anywhere(c, "after", "removal", time.monotonic() + 10)
        for node_id in [i for i in c.ids if i != remove]:
            converged_dump(c, node_id, {"m", "after"})


def test_counter_example_runs_as_three_processes(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    procs = []
    try:
        for node_id in ("n1", "n2", "n3"):
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(repo / "examples" / "counter.py"), node_id,
                     "--data-dir", str(tmp_path / node_id), "--rounds", "3", "--linger", "4"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=dict(os.environ, PYTHONPATH=str(repo)),
                )
            )
        outs = [p.communicate(timeout=60)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    values = [int(line.split("counter=")[1].split()[0]) for out in outs for line in out.splitlines()
              if "counter=" in line]
    assert len(values) >= 9, outs
    assert max(values) >= 9  # three members, three increments each

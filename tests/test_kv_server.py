"""examples.kvstore as real processes: etcd's flags, a 3-member cluster surviving kill -9, the ctl CLI.

The cluster harness is tests/kvcluster.py (shared with the etcd compatibility suite), started
with the same flags etcd takes.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")
from kvcluster import REPO_ROOT, KVCluster, http_json, prefix_end
from prometheus_client.parser import text_string_to_metric_families

from examples.kvstore.__main__ import FlagError, config_from_args

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def run_store(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.kvstore", *args],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def ctl(endpoints: list[str], *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.kvstore.ctl", "--endpoints", ",".join(endpoints), *args],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=30, input=stdin,
    )  # fmt: skip
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


# ======================================================================================= flags


def test_etcd_flags_map_onto_the_config() -> None:
    cfg, level = config_from_args(
        [
            "--name", "infra1", "-data-dir=/tmp/x.etcd",
            "--listen-client-urls", "http://127.0.0.1:12379",
            "--advertise-client-urls=http://127.0.0.1:12379",
            "--listen-peer-urls", "http://127.0.0.1:12380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:12380",
            "--initial-cluster", "infra0=http://127.0.0.1:2380,infra1=http://127.0.0.1:12380",
            "--initial-cluster-state", "existing", "--initial-cluster-token", "tok",
            "--heartbeat-interval", "50", "--election-timeout", "500", "--snapshot-count", "1000",
            "--client-cert-auth=false", "--log-level", "warn",
        ]
    )  # fmt: skip
    assert cfg.name == "infra1" and cfg.data_dir == "/tmp/x.etcd" and level == "warn"
    assert cfg.initial_cluster == {"infra0": ["http://127.0.0.1:2380"], "infra1": ["http://127.0.0.1:12380"]}
    assert cfg.initial_cluster_state == "existing" and cfg.initial_cluster_token == "tok"
    assert (cfg.heartbeat_interval_ms, cfg.election_timeout_ms, cfg.snapshot_count) == (50, 500, 1000)
    assert cfg.min_lease_ttl == 1  # ceil(1.5 * 0.5 s)
    default, _ = config_from_args([])
    assert default.name == "default" and default.data_dir == "default.etcd"
    assert default.listen_client_urls == ["http://127.0.0.1:2379"]
    assert default.initial_cluster == {"default": ["http://127.0.0.1:2380"]}
    assert default.min_lease_ttl == 2
    with pytest.raises(FlagError, match="no entry for --name"):
        config_from_args(["--name", "x", "--initial-cluster", "y=http://127.0.0.1:1"])
    with pytest.raises(FlagError, match="5 times"):
        config_from_args(["--heartbeat-interval", "300"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--heartbeat-interval", "abc"], "invalid integer"),
        (["--initial-cluster-state", "bogus"], "invalid choice"),
        (["--election-timeout", "200", "--heartbeat-interval", "100"], "5 times"),
        (["--listen-client-urls", "ftp://127.0.0.1:1"], "scheme"),
        (["--listen-peer-urls", "http://127.0.0.1"], "host:port"),
        (["--initial-cluster", "a=http://127.0.0.1:9"], "no entry for --name"),
        (["--no-such-flag"], "unrecognized"),
        (["--listen-client-urls", "https://127.0.0.1:1"], "--cert-file"),
        (["--peer-cert-file", "c.pem"], "mutual"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str) -> None:
    proc = run_store(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_no_flags_is_a_single_member_on_2379(tmp_path: Path) -> None:
    if not (_port_free(2379) and _port_free(2380)):
        pytest.skip("ports 2379/2380 are in use")
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.kvstore"], cwd=tmp_path, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                code, body = http_json(
                    "http://127.0.0.1:2379/v3/kv/put", {"key": b64("a"), "value": b64("b")}
                )
                if code == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.1)
        code, body = http_json("http://127.0.0.1:2379/version")
        assert body == {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}
        # A member publishes its name through raft once it runs (like etcd, whose member list
        # shows a not-yet-published member without a name): wait for that entry to apply.
        while True:
            code, body = http_json("http://127.0.0.1:2379/v3/cluster/member/list", {})
            if all("name" in m for m in body["members"]) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [m.get("name") for m in body["members"]] == ["default"]
        assert body["members"][0]["peerURLs"] == ["http://127.0.0.1:2380"]
        assert (tmp_path / "default.etcd").is_dir()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM: a clean stop


# ================================================================================ the cluster


def kv_put(c: KVCluster, i: int, key: str, value: str) -> int:
    code, body = http_json(c.url(i, "/v3/kv/put"), {"key": b64(key), "value": b64(value)}, timeout=10)
    assert code == 200, body
    return int(body["header"]["revision"])


def kv_get(c: KVCluster, i: int, key: str, **extra: Any) -> dict[str, Any]:
    code, body = http_json(c.url(i, "/v3/kv/range"), {"key": b64(key), **extra}, timeout=10)
    assert code == 200, body
    return body  # type: ignore[no-any-return]


def test_three_member_cluster_survives_kill_9_of_the_leader(tmp_path: Path) -> None:
    """Acknowledged writes survive kill -9 of the leader; the restarted member catches up by snapshot."""
    with KVCluster("raftlib", tmp_path, extra_args=["--snapshot-count", "20"]) as c:
        leader = c.leader()
        f1, f2 = c.followers()
        rev = kv_put(c, f1, "k", "on-a-follower")
        got = kv_get(c, f2, "k")  # linearizable read on the other follower
        assert base64.b64decode(got["kvs"][0]["value"]) == b"on-a-follower"
        assert int(got["header"]["revision"]) >= rev
        _code, members = http_json(c.url(f2, "/v3/cluster/member/list"), {})
        assert sorted(m["name"] for m in members["members"]) == sorted(m.name for m in c.members)
        assert all(m["clientURLs"] == [c.members[i].client_url] for i in range(3) for m in members["members"]
                   if m["name"] == c.members[i].name)  # fmt: skip
        acknowledged = {f"ack/{i}": str(i) for i in range(20)}
        for i, (k, v) in enumerate(acknowledged.items()):
            kv_put(c, [leader, f1, f2][i % 3], k, v)
        c.kill(leader)  # SIGKILL
        new_leader = c.leader(exclude={leader})
        assert new_leader != leader
        for i in range(60):  # far more than --snapshot-count: the log it misses gets compacted away
            kv_put(c, f1, "after", f"kill-{i}")
        for k, v in acknowledged.items():
            assert base64.b64decode(kv_get(c, f2, k)["kvs"][0]["value"]) == v.encode()
        c.restart(leader)  # same data dir, --initial-cluster-state existing
        last = kv_put(c, new_leader, "after-restart", "x")
        deadline = time.monotonic() + 20
        while True:
            out = kv_get(c, leader, "after-restart", serializable=True)  # local state of the restarted one
            if out.get("kvs"):
                break
            assert time.monotonic() < deadline, "the restarted member did not catch up"
            time.sleep(0.1)
        assert int(out["header"]["revision"]) >= last
        assert base64.b64decode(kv_get(c, leader, "ack/7", serializable=True)["kvs"][0]["value"]) == b"7"
        got = kv_get(c, leader, "after", serializable=True)
        assert base64.b64decode(got["kvs"][0]["value"]) == b"kill-59"
        _, metrics = http_json(c.url(leader, "/metrics"))
        installed = [ln for ln in metrics.splitlines() if ln.startswith("raftlib_snapshots_installed_total")]
        assert float(installed[0].split()[1]) >= 1  # it caught up by snapshot
        _, members = http_json(c.url(leader, "/v3/cluster/member/list"), {})  # attributes came in it too
        assert sorted(m["name"] for m in members["members"]) == sorted(m.name for m in c.members)


def test_ctl_against_a_cluster(tmp_path: Path) -> None:
    with KVCluster("raftlib", tmp_path) as c:
        eps = c.endpoints
        assert ctl(eps, "put", "foo", "bar") == "OK\n"
        assert ctl(eps[1:], "get", "foo") == "foo\nbar\n"
        ctl(eps, "put", "dir/a", "1")
        ctl(eps, "put", "dir/b", "2")
        assert ctl(eps, "get", "dir/", "--prefix", "--keys-only") == "dir/a\ndir/b\n"
        txn = 'value("foo") = "bar"\n\nput foo baz\nget dir/a\n\nget foo\n'
        assert ctl(eps, "txn", stdin=txn) == "SUCCESS\n\nOK\n\ndir/a\n1\n"
        assert ctl(eps, "txn", stdin=txn) == "FAILURE\n\nfoo\nbaz\n"
        out = ctl(eps, "lease", "grant", "60")
        lease = out.split()[1]
        assert out == f"lease {lease} granted with TTL(60s)\n"
        ctl(eps, "put", "leased", "x", "--lease", lease)
        assert "attached keys([leased])" in ctl(eps, "lease", "timetolive", lease, "--keys")
        assert ctl(eps, "lease", "keep-alive", lease, "--once") == f"lease {lease} keepalived with TTL(60)\n"
        assert ctl(eps, "lease", "revoke", lease) == f"lease {lease} revoked\n"
        assert ctl(eps, "get", "leased") == ""
        assert ctl(eps, "del", "dir/", "--prefix") == "2\n"
        watch = subprocess.Popen(
            [sys.executable, "-m", "examples.kvstore.ctl", "--endpoints", eps[2],
             "watch", "w", "--max-events", "2"],
            cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)
        ctl(eps, "put", "w", "1")
        ctl(eps, "del", "w")
        assert watch.communicate(timeout=20)[0] == "PUT\nw\n1\nDELETE\nw\n"
        members = ctl(eps, "member", "list").splitlines()
        assert len(members) == 3 and all(", started, " in line for line in members)
        status = ctl(eps, "endpoint", "status").splitlines()
        assert len(status) == 3 and sum(", true, false, " in line for line in status) == 1  # one leader
        assert ctl(eps, "endpoint", "health").count("is healthy") == 3
        snap = tmp_path / "snap.db"
        assert "Snapshot saved at" in ctl(eps, "snapshot", "save", str(snap))
        data = snap.read_bytes()
        assert data[:4] == b"KVS1" and b'"mvcc"' in data
        assert json.loads(ctl(eps, "-w", "json", "get", "foo"))["kvs"][0]["value"] == b64("baz")


class WatchStream:
    """A raw ``/v3/watch`` stream read by a thread: every event as (type, key, mod_revision)."""

    def __init__(self, client_url: str, prefix: str, start_revision: int) -> None:
        host, port = client_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        end = prefix_end(prefix)
        create = {"key": b64(prefix), "range_end": b64(end), "start_revision": str(start_revision)}
        self.conn.request("POST", "/v3/watch", json.dumps({"create_request": create}))
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        self.events: list[tuple[str, str, int]] = []
        self.results: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while line := self.resp.readline():
                result = json.loads(line)["result"]
                self.results.append(result)
                for ev in result.get("events", []):
                    kv = ev["kv"]
                    key = base64.b64decode(kv["key"]).decode()
                    self.events.append((ev.get("type", "PUT"), key, int(kv["mod_revision"])))
        except (OSError, http.client.HTTPException):
            return

    def wait_for_revision(self, revision: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.events and self.events[-1][2] >= revision):
            assert time.monotonic() < deadline, f"watch stopped at {self.events[-1:]} (< {revision})"
            assert self.thread.is_alive(), f"watch stream ended: {self.results[-1:]}"
            time.sleep(0.05)

    def close(self) -> None:
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread (close() would wait on it)
        self.thread.join(10)
        self.conn.close()


def put_retrying(c: KVCluster, members: list[int], key: str, value: str, deadline: float) -> int | None:
    """Put through the first member that answers 200; None if nobody acknowledged it in time."""
    while time.monotonic() < deadline:
        for i in members:
            if not c.members[i].alive():
                continue
            try:
                code, body = http_json(
                    c.url(i, "/v3/kv/put"), {"key": b64(key), "value": b64(value)}, timeout=3
                )
            except OSError:
                continue
            if code == 200:
                return int(body["header"]["revision"])
        time.sleep(0.1)
    return None


def test_watch_on_a_follower_gets_every_event_once_in_order_across_leader_kill_and_compaction(
    tmp_path: Path,
) -> None:
    """etcd's watch guarantee (every event of the range, once, in revision order) holds for a
    watcher whose member stays up while the leader is killed, a new one elected and the history
    compacted; a watch created afterwards from an old revision replays exactly the same events."""
    with KVCluster("raftlib", tmp_path, extra_args=["--snapshot-count", "20"]) as c:
        leader = c.leader()
        watcher, other = c.followers()
        start = kv_put(c, leader, "before", "x") + 1
        stream = WatchStream(c.members[watcher].client_url, "w/", start)
        deadline = time.monotonic() + 60
        acked: dict[str, int] = {}
        for i in range(30):
            rev = put_retrying(c, [leader, other, watcher][i % 3 :] + [leader, other, watcher][: i % 3],
                               f"w/{i:03}", str(i), deadline)  # fmt: skip
            assert rev is not None
            acked[f"w/{i:03}"] = rev
        c.kill(leader)  # SIGKILL, writes continue through whoever answers
        for i in range(30, 70):
            rev = put_retrying(c, [other, watcher], f"w/{i:03}", str(i), deadline)
            assert rev is not None, "no acknowledged write after the leader's kill"
            acked[f"w/{i:03}"] = rev
            if i == 50:
                code, body = http_json(c.url(other, "/v3/kv/compaction"), {"revision": str(rev)})
                assert code == 200, body
        new_leader = c.leader(exclude={leader})
        assert new_leader in (watcher, other)
        last = max(acked.values())
        stream.wait_for_revision(last)
        stream.close()

        revisions = [rev for _, _, rev in stream.events]
        assert revisions == sorted(set(revisions)), "events out of order or repeated"
        assert all(kind == "PUT" for kind, _, _ in stream.events)
        seen = {key: rev for _, key, rev in stream.events}
        assert {k: seen.get(k) for k in acked} == acked, "an acknowledged write is missing from the watch"
        code, body = http_json(c.url(watcher, "/v3/kv/range"),
                               {"key": b64("w/"), "range_end": b64("w0"), "keys_only": True})  # fmt: skip
        stored = {base64.b64decode(kv["key"]).decode(): int(kv["mod_revision"]) for kv in body["kvs"]}
        assert seen == stored, "the watch and the store disagree on what was written"

        # A watch from a revision after the compaction replays the same events from history.
        replay_from = min(rev for rev in revisions if rev > acked["w/050"])
        replay = WatchStream(c.members[other].client_url, "w/", replay_from)
        replay.wait_for_revision(last)
        replay.close()
        assert replay.events == [ev for ev in stream.events if ev[2] >= replay_from]
        # ... and one from before it is refused as compacted, as etcd does.
        old = WatchStream(c.members[other].client_url, "w/", start)
        deadline = time.monotonic() + 10
        while not any(r.get("canceled") for r in old.results) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(r.get("canceled") and r.get("compact_revision") for r in old.results), old.results
        old.close()


def gc_collections(metrics_text: str) -> dict[str, float]:
    """python_gc_collections_total per generation, read with prometheus-client's own parser."""
    return {
        sample.labels["generation"]: sample.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "python_gc_collections"
        for sample in family.samples
    }


def test_member_collects_young_objects_in_large_batches(tmp_path: Path) -> None:
    """`python -m examples.kvstore` raises CPython's young-generation threshold (tune_gc): 4,000
    writes cause a handful of young collections, not one per 700 objects kept. /metrics shows the
    collections per generation (python_gc_*), as etcd shows go_gc_*."""
    with KVCluster("raftlib", tmp_path, size=1) as c:
        c.leader()
        _, before = http_json(c.url(0, "/metrics"))
        for i in range(4000):
            kv_put(c, 0, f"gc/{i}", "x" * 100)
        _, after = http_json(c.url(0, "/metrics"))
    start, end = gc_collections(before), gc_collections(after)
    assert set(end) == {"0", "1", "2"}, after
    young = end["0"] - start["0"]
    assert young <= 4, f"{young} young collections for 4,000 writes: the threshold is not raised"

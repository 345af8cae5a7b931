"""The unmodified etcdctl against the store's gRPC API (and against real etcd, the same script).

Every scenario runs once per backend (`raftlib`: 3 processes of ``python -m examples.kvstore``;
`etcd`: the real binary, when installed) on a 3-member cluster shared by the module; each test uses
its own key prefix. etcdctl is Debian's ``etcd-client`` (scripts/install-etcd.sh installs it); the
module skips, saying so, when it is absent. A second part drives the gRPC API with Python's grpc
client: the v3lock/v3election services, and bad input (malformed protobuf, an oversized message, a
cancelled watch stream, many watches on one stream) after which the member still serves.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from kvcluster import BACKENDS, KVCluster, backend_unavailable_reason, http_json

ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl not found on PATH (Debian's etcd-client: run scripts/install-etcd.sh)"
)


class Ctl:
    """etcdctl bound to one cluster."""

    def __init__(self, cluster: KVCluster) -> None:
        self.cluster = cluster
        self.backend = cluster.backend

    def endpoints(self, member: int | None = None) -> str:
        urls = self.cluster.endpoints if member is None else [self.cluster.endpoints[member]]
        return ",".join(u.removeprefix("http://") for u in urls)

    def argv(self, *args: str, member: int | None = None) -> list[str]:
        assert ETCDCTL is not None
        return [ETCDCTL, "--endpoints", self.endpoints(member), "--dial-timeout=3s",
                "--command-timeout=10s", *args]  # fmt: skip

    def run(
        self, *args: str, member: int | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(self.argv(*args, member=member), input=stdin, capture_output=True, text=True,
                              timeout=30, env=env)  # fmt: skip

    def ok(self, *args: str, member: int | None = None, stdin: str | None = None) -> str:
        out = self.run(*args, member=member, stdin=stdin)
        assert out.returncode == 0, f"[{self.backend}] etcdctl {' '.join(args)} failed: {out.stderr}"
        return out.stdout

    def fails(self, *args: str, member: int | None = None) -> str:
        out = self.run(*args, member=member)
        assert out.returncode != 0, f"[{self.backend}] etcdctl {' '.join(args)} should fail: {out.stdout}"
        return out.stderr

    def json(self, *args: str, member: int | None = None) -> dict[str, object]:
        return json.loads(self.ok("-w", "json", *args, member=member))  # type: ignore[no-any-return]

    def spawn(self, *args: str, member: int | None = None) -> subprocess.Popen[str]:
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.Popen(self.argv(*args, member=member), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 10.0) -> tuple[str, str]:
    """End a background etcdctl (SIGINT, like Ctrl-C) and return its (stdout, stderr)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    err = proc.stderr.read() if proc.stderr is not None else ""
    if proc.pid in _READERS:  # its stdout belongs to the reader thread
        return "", err
    out = proc.stdout.read() if proc.stdout is not None else ""
    return out, err


_READERS: dict[int, queue.Queue[str]] = {}


def wait_for_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """The next stdout line of ``proc``, waiting at most ``timeout`` (a thread reads the pipe)."""
    lines = _READERS.get(proc.pid)
    if lines is None:
        lines = _READERS[proc.pid] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no output within {timeout} s from {proc.args}") from None


def no_line_within(proc: subprocess.Popen[str], seconds: float) -> bool:
    try:
        wait_for_line(proc, seconds)
    except AssertionError:
        return True
    return False


@pytest.fixture(scope="module", params=BACKENDS)
def ctl(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctl]:
    reason = backend_unavailable_reason(request.param)
    if reason:
        pytest.skip(reason)
    cluster = KVCluster(request.param, tmp_path_factory.mktemp(f"etcdctl-{request.param}"))
    cluster.start(timeout=30)
    try:
        yield Ctl(cluster)
    finally:
        cluster.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return f"/ctl/{request.node.originalname}/"


# ----------------------------------------------------------------------------------- KV


def test_put_get_delete_through_any_member(ctl: Ctl, ns: str) -> None:
    assert ctl.ok("put", ns + "a", "1", member=0).strip() == "OK"
    assert ctl.ok("put", ns + "b", "2", member=1).strip() == "OK"
    assert ctl.ok("get", ns, "--prefix", member=2).split() == [ns + "a", "1", ns + "b", "2"]
    answer = ctl.json("get", ns + "a", member=2)
    header = answer["header"]
    assert isinstance(header, dict) and {"cluster_id", "member_id", "revision", "raft_term"} <= set(header)
    assert ctl.ok("del", ns, "--prefix").strip() == "2"
    assert ctl.ok("get", ns, "--prefix") == ""


def test_txn_takes_the_branch_its_compare_selects(ctl: Ctl, ns: str) -> None:
    ctl.ok("put", ns + "k", "v1")
    script = f'value("{ns}k") = "v1"\n\nput {ns}k v2\n\nput {ns}k nope\n\n'
    assert ctl.ok("txn", stdin=script).split() == ["SUCCESS", "OK"]
    assert ctl.ok("txn", stdin=script).split() == ["FAILURE", "OK"]
    assert ctl.ok("get", ns + "k", "--print-value-only").strip() == "nope"


def test_compacted_revision_is_out_of_range_with_etcds_message(ctl: Ctl, ns: str) -> None:
    ctl.ok("put", ns + "c", "old")
    rev = int(ctl.json("get", ns + "c")["header"]["revision"])  # type: ignore[index]
    ctl.ok("put", ns + "c", "new")
    assert ctl.ok("compaction", str(rev + 1)).strip() == f"compacted revision {rev + 1}"
    assert "etcdserver: mvcc: required revision has been compacted" in ctl.fails(
        "get", ns + "c", f"--rev={rev}"
    )
    assert ctl.ok("get", ns + "c", f"--rev={rev + 1}", "--print-value-only").strip() == "new"


def test_watch_streams_puts_and_deletes_in_order(ctl: Ctl, ns: str) -> None:
    watch = ctl.spawn("watch", ns, "--prefix", member=1)
    try:
        time.sleep(0.8)  # the watch is created before the writes (a created watch has no output)
        ctl.ok("put", ns + "x", "1", member=0)
        ctl.ok("put", ns + "y", "2", member=2)
        ctl.ok("del", ns + "x", member=0)
        lines = [wait_for_line(watch).strip() for _ in range(8)]
    finally:
        stop(watch)
    assert lines == ["PUT", ns + "x", "1", "PUT", ns + "y", "2", "DELETE", ns + "x"]


# -------------------------------------------------------------------------------- leases


def test_lease_grant_keepalive_timetolive_revoke(ctl: Ctl, ns: str) -> None:
    lease = ctl.ok("lease", "grant", "60").split()[1]
    ctl.ok("put", ns + "leased", "v", f"--lease={lease}")
    for member in range(3):  # followers relay to the leader's lease clock
        out = ctl.ok("lease", "keep-alive", "--once", lease, member=member)
        assert f"lease {lease} keepalived with TTL(60)" in out
        ttl = ctl.ok("lease", "timetolive", lease, "--keys", member=member)
        assert f"lease {lease} granted with TTL(60s)" in ttl and f"attached keys([{ns}leased])" in ttl
    assert lease in ctl.ok("lease", "list").split()
    assert ctl.ok("lease", "revoke", lease).strip() == f"lease {lease} revoked"
    assert ctl.ok("get", ns + "leased") == ""
    assert ctl.ok("lease", "timetolive", lease).strip() == f"lease {lease} already expired"
    assert "etcdserver: requested lease not found" in ctl.fails("lease", "revoke", lease)


# ----------------------------------------------------------------------- cluster, maintenance


def test_member_list_endpoint_status_and_health(ctl: Ctl) -> None:
    members = ctl.ok("member", "list").strip().splitlines()
    assert len(members) == 3 and all(", started, " in m for m in members)
    names = sorted(m.split(", ")[2] for m in members)
    assert names == sorted(m.name for m in ctl.cluster.members)
    status = ctl.json("endpoint", "status")
    assert isinstance(status, list) and len(status) == 3
    leaders = {s["Status"]["leader"] for s in status}
    assert len(leaders) == 1 and sum(s["Status"]["header"]["member_id"] in leaders for s in status) == 1
    health = ctl.run("endpoint", "health")
    assert health.returncode == 0 and (health.stdout + health.stderr).count("is healthy") == 3


def test_member_add_learner_promote_refused_then_remove(ctl: Ctl) -> None:
    from raftlib.testing.proccluster import free_ports

    peer = f"http://127.0.0.1:{free_ports(1)[0]}"
    deadline = time.monotonic() + 15
    while True:  # etcd refuses reconfiguration until its members have been connected for 5 s
        add = ctl.run("member", "add", "extra", f"--peer-urls={peer}", "--learner", member=1)
        if add.returncode == 0 or "unhealthy cluster" not in add.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert add.returncode == 0, add.stderr
    added = add.stdout
    assert "Member" in added and "added to cluster" in added
    new_id = added.split()[1]
    listed = [m for m in ctl.ok("member", "list").splitlines() if m.startswith(new_id)]
    assert listed and listed[0].endswith(", true") and ", unstarted, " in listed[0]
    refused = ctl.fails("member", "promote", new_id, member=2)
    assert "etcdserver: can only promote a learner member which is in sync with leader" in refused
    assert "etcdserver: member not found" in ctl.fails("member", "remove", "1234abcd")
    # etcdctl prints the id of a removed member as %16x: padded with spaces when it has leading zero digits
    assert f"Member {int(new_id, 16):16x} removed" in ctl.ok("member", "remove", new_id, member=0)
    assert len(ctl.ok("member", "list").strip().splitlines()) == 3


def test_member_update_moves_a_members_peer_url_and_the_others_follow(ctl: Ctl, ns: str) -> None:
    """etcd's runbook for a member that moves: ``member update ID --peer-urls=NEW`` (every member
    lists NEW), then restart the member listening on NEW: the others dial it there, so it catches
    up with writes made while it was away. Unknown IDs and another member's URL are refused."""
    from raftlib.testing.proccluster import free_ports

    cluster = ctl.cluster
    moving = cluster.followers()[0]
    others = [i for i in range(len(cluster.members)) if i != moving]
    listed = {line.split(", ")[2]: line.split(", ")[0] for line in ctl.ok("member", "list").splitlines()}
    mid = listed[cluster.members[moving].name]
    taken = cluster.members[others[0]].peer_url
    assert "etcdserver: member not found" in ctl.fails("member", "update", "1234abcd", f"--peer-urls={taken}")
    assert "etcdserver: Peer URLs already exists" in ctl.fails(
        "member", "update", mid, f"--peer-urls={taken}", member=others[1]
    )
    port = free_ports(1)[0]
    new_url = f"http://127.0.0.1:{port}"
    out = ctl.ok("member", "update", mid, f"--peer-urls={new_url}", member=moving)
    cid = int(ctl.json("member", "list")["header"]["cluster_id"])  # type: ignore[index]
    assert out.strip() == f"Member {int(mid, 16):16x} updated in cluster {cid:16x}"

    def lists_new_url(members: list[int]) -> None:
        deadline = time.monotonic() + 10
        for i in members:
            while True:  # member list is answered from each member's applied state
                rows = ctl.ok("member", "list", member=i).splitlines()
                lines = [x for x in rows if x.startswith(mid + ",")]
                if lines and lines[0].split(", ")[3] == new_url:
                    break
                assert time.monotonic() < deadline, f"member {i} still lists {lines}"
                time.sleep(0.1)

    # The moved member itself may miss the update: the others already send to the new URL.
    lists_new_url(others)
    cluster.kill(moving)
    ctl.ok("put", ns + "while-away", "1", member=others[0])
    cluster.members[moving].peer_port = port  # --listen-peer-urls and --initial-advertise-peer-urls
    cluster.restart(moving)
    got = ctl.ok("get", ns + "while-away", "--consistency=s", "--print-value-only", member=moving)
    deadline = time.monotonic() + 10
    while got.strip() != "1":  # serializable: the member's own state, filled by the leader over raft
        assert time.monotonic() < deadline, "the moved member did not catch up"
        time.sleep(0.1)
        got = ctl.ok("get", ns + "while-away", "--consistency=s", "--print-value-only", member=moving)
    ctl.ok("put", ns + "after", "2", member=moving)
    assert ctl.ok("get", ns + "after", "--print-value-only", member=others[1]).strip() == "2"
    lists_new_url([moving])
    cluster.wait_ready(30)


def test_snapshot_save_writes_a_checksummed_file(ctl: Ctl, tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    out = ctl.run("snapshot", "save", str(path), member=0)
    assert out.returncode == 0 and "Snapshot saved at" in out.stdout, out.stderr
    import hashlib

    data = path.read_bytes()
    assert len(data) % 512 == 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]
    if ctl.backend == "raftlib":
        assert data[:4] == b"KVS1"  # this store's own format (docs/kvstore.md: what restore reads)


# ------------------------------------------------------------------------------------ auth


def test_auth_reader_cannot_write_root_can_then_auth_disable(ctl: Ctl, ns: str) -> None:
    """etcd's RBAC from etcdctl: root user, a role reading the test's prefix, ``auth enable``
    (etcdctl adds the root role itself on etcd's 'root user does not have root role'), a reader's
    put is refused, root's works, then ``auth disable`` leaves the shared cluster as it was."""
    root = ("--user", "root:rootpw")
    try:
        assert "User root created" in ctl.ok("user", "add", "root:rootpw")
        assert "Role ctlreader created" in ctl.ok("role", "add", "ctlreader")
        ctl.ok("role", "grant-permission", "ctlreader", "read", ns, "--prefix=true")
        ctl.ok("user", "add", "ctlreader:rpw")
        assert "granted" in ctl.ok("user", "grant-role", "ctlreader", "ctlreader")
        assert "Authentication Enabled" in ctl.ok("auth", "enable")
        assert "etcdserver: user name is empty" in ctl.fails("put", ns + "x", "1")
        assert "etcdserver: permission denied" in ctl.fails("--user", "ctlreader:rpw", "put", ns + "x", "1")
        assert ctl.ok(*root, "put", ns + "x", "1").strip() == "OK"
        assert ctl.ok("--user", "ctlreader:rpw", "get", ns + "x", member=2).split() == [ns + "x", "1"]
        assert "etcdserver: authentication failed, invalid user ID or password" in ctl.fails(
            "--user", "ctlreader:wrong", "get", ns + "x"
        )
        assert ctl.ok(*root, "user", "list").split() == ["ctlreader", "root"]
        assert ctl.ok(*root, "user", "get", "ctlreader").split() == [
            "User:",
            "ctlreader",
            "Roles:",
            "ctlreader",
        ]
        role = ctl.ok(*root, "role", "get", "ctlreader")
        assert role.startswith("Role ctlreader\nKV Read:\n") and f"(prefix {ns})" in role, role
        assert "etcdserver: role name not found" in ctl.fails(*root, "role", "get", "nosuchrole")
        assert "Authentication Disabled" in ctl.ok(*root, "auth", "disable")
        assert ctl.ok("put", ns + "x", "2").strip() == "OK"
    finally:
        ctl.run(*root, "auth", "disable")
        for args in (("user", "delete", "ctlreader"), ("role", "delete", "ctlreader"),
                     ("user", "delete", "root"), ("role", "delete", "root")):  # fmt: skip
            ctl.run(*args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jwt_auth_token_interoperates_with_etcds_tokens(backend: str, tmp_path: Path, stubs: object) -> None:
    """``--auth-token jwt,sign-method=HS256,priv-key=FILE,ttl=10m`` on a 2-member cluster of each
    backend: etcdctl authenticates on one member and uses the token on the other; the token
    Authenticate answers has etcd's claims (exp = now + ttl, revision, username) and verifies with
    the store's JWT code and the same key; a token that code signs is accepted by the member (by
    real etcd too), a token signed with another key is ``invalid auth token``."""
    import grpc

    from examples.kvstore import auth
    from examples.kvstore.proto.stubs import rpc_pb2, rpc_pb2_grpc

    reason = backend_unavailable_reason(backend)
    if reason:
        pytest.skip(reason)
    key = tmp_path / "jwt.key"
    key.write_bytes(b"an HMAC secret shared by the cluster\n")
    option = f"jwt,sign-method=HS256,priv-key={key},ttl=10m"
    cluster = KVCluster(backend, tmp_path / backend, size=2, extra_args=["--auth-token", option])
    cluster.start(timeout=30)
    try:
        ctl = Ctl(cluster)
        root = ("--user", "root:rootpw")
        ctl.ok("user", "add", "root:rootpw")
        assert "Authentication Enabled" in ctl.ok("auth", "enable")
        assert ctl.ok(*root, "put", "/jwt/k", "v", member=0).strip() == "OK"
        assert ctl.ok(*root, "get", "/jwt/k", "--print-value-only", member=1).strip() == "v"
        assert "etcdserver: user name is empty" in ctl.fails("get", "/jwt/k", member=1)
        with _channel(ctl, 0) as ch:
            before = time.time()
            token = (
                rpc_pb2_grpc.AuthStub(ch)
                .Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"), timeout=10)
                .token
            )
        header, claims, _ = token.split(".")
        decoded = [json.loads(auth._b64url_decode(part)) for part in (header, claims)]
        assert decoded[0] == {"alg": "HS256", "typ": "JWT"}
        assert sorted(decoded[1]) == ["exp", "revision", "username"] and decoded[1]["username"] == "root"
        assert int(before) + 599 <= decoded[1]["exp"] <= time.time() + 601
        ours = auth.JWTTokens(auth.parse_auth_token(option))  # type: ignore[arg-type]
        assert ours.info(token, 0) == ("root", decoded[1]["revision"])
        minted = ours.assign("root", decoded[1]["revision"])
        foreign = auth.JWTTokens(auth.JWTOptions("HS256", b"another secret")).assign("root", 99)
        with _channel(ctl, 1) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            got = kv.Range(rpc_pb2.RangeRequest(key=b"/jwt/k"), metadata=(("token", minted),), timeout=10)
            assert got.kvs[0].value == b"v"
            with pytest.raises(grpc.RpcError) as forged:
                kv.Range(rpc_pb2.RangeRequest(key=b"/jwt/k"), metadata=(("token", foreign),), timeout=10)
            assert (forged.value.code(), forged.value.details()) == (
                grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")  # fmt: skip
        assert "Authentication Disabled" in ctl.ok(*root, "auth", "disable")
    finally:
        cluster.stop()


# ------------------------------------------------------------------------ lock and election


def test_lock_serialises_two_contenders(ctl: Ctl, ns: str, tmp_path: Path) -> None:
    first = ctl.spawn("lock", ns + "L", member=0)
    assert wait_for_line(first).startswith(ns + "L/")  # holds the lock (its key is printed)
    second = ctl.spawn("lock", ns + "L", member=1)
    assert no_line_within(second, 1.0), "the second contender got the lock while the first held it"
    assert second.poll() is None
    stop(first)  # Ctrl-C releases the lock
    assert wait_for_line(second).startswith(ns + "L/")
    stop(second)


def test_elect_second_candidate_leads_after_the_first_resigns(ctl: Ctl, ns: str) -> None:
    first = ctl.spawn("elect", ns + "E", "p1", member=0)
    assert wait_for_line(first).startswith(ns + "E/")
    assert wait_for_line(first).strip() == "p1"
    second = ctl.spawn("elect", ns + "E", "p2", member=2)
    time.sleep(0.8)
    leader = ctl.ok("get", ns + "E/", "--prefix", "--sort-by=CREATE", "--order=ASCEND", "--limit=1",
                    "--print-value-only")  # fmt: skip
    assert leader.strip() == "p1"
    stop(first)
    assert wait_for_line(second).startswith(ns + "E/")
    assert wait_for_line(second).strip() == "p2"
    stop(second)


# -------------------------------------------------------------- the gRPC API from Python


@pytest.fixture(scope="module")
def stubs() -> object:
    pytest.importorskip("grpc")
    from examples.kvstore.proto import stubs as generated

    return generated


def _channel(ctl: Ctl, member: int = 0):  # type: ignore[no-untyped-def]
    import grpc

    return grpc.insecure_channel(ctl.cluster.endpoints[member].removeprefix("http://"))


def test_lock_and_election_services_answer_like_etcd(ctl: Ctl, ns: str, stubs: object) -> None:
    import grpc

    from examples.kvstore.proto.stubs import (
        rpc_pb2,
        rpc_pb2_grpc,
        v3election_pb2,
        v3election_pb2_grpc,
        v3lock_pb2,
        v3lock_pb2_grpc,
    )

    with _channel(ctl) as ch:
        lease_stub = rpc_pb2_grpc.LeaseStub(ch)
        l1 = lease_stub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=10).ID
        l2 = lease_stub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=10).ID
        lock = v3lock_pb2_grpc.LockStub(ch)
        held = lock.Lock(v3lock_pb2.LockRequest(name=(ns + "lk").encode(), lease=l1), timeout=10)
        assert held.key == f"{ns}lk/{l1:x}".encode() and held.header.revision > 0
        with pytest.raises(grpc.RpcError) as waited:
            lock.Lock(v3lock_pb2.LockRequest(name=(ns + "lk").encode(), lease=l2), timeout=0.7)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        kv = rpc_pb2_grpc.KVStub(ch)
        prefix = rpc_pb2.RangeRequest(key=(ns + "lk/").encode(), range_end=(ns + "lk0").encode())
        deadline = time.monotonic() + 5
        while len(kv.Range(prefix, timeout=10).kvs) != 1:  # the abandoned contender's key goes
            assert time.monotonic() < deadline, "the abandoned Lock left its key behind"
            time.sleep(0.05)
        lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=10)
        second = lock.Lock(v3lock_pb2.LockRequest(name=(ns + "lk").encode(), lease=l2), timeout=10)
        assert second.key == f"{ns}lk/{l2:x}".encode()

        election = v3election_pb2_grpc.ElectionStub(ch)
        name = (ns + "el").encode()
        with pytest.raises(grpc.RpcError) as none:
            election.Leader(v3election_pb2.LeaderRequest(name=name), timeout=10)
        assert none.value.details() == "election: no leader"
        won = election.Campaign(v3election_pb2.CampaignRequest(name=name, lease=l1, value=b"a"), timeout=10)
        assert won.leader.key == f"{ns}el/{l1:x}".encode() and won.leader.lease == l1
        election.Proclaim(v3election_pb2.ProclaimRequest(leader=won.leader, value=b"b"), timeout=10)
        now = election.Leader(v3election_pb2.LeaderRequest(name=name), timeout=10)
        assert now.kv.value == b"b" and now.kv.key == won.leader.key
        election.Resign(v3election_pb2.ResignRequest(leader=won.leader), timeout=10)
        with pytest.raises(grpc.RpcError) as stale:
            election.Proclaim(v3election_pb2.ProclaimRequest(leader=won.leader, value=b"c"), timeout=10)
        assert stale.value.details() == "election: not leader"
        for lease in (l1, l2):
            lease_stub.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease), timeout=10)


def _raftlib_only(ctl: Ctl) -> None:
    if ctl.backend != "raftlib":
        pytest.skip("bad-input checks target the store (etcd's own answers differ in wording)")


def test_malformed_and_oversized_requests_get_clear_errors(ctl: Ctl, ns: str, stubs: object) -> None:
    import grpc

    from examples.kvstore.proto.stubs import rpc_pb2, rpc_pb2_grpc

    _raftlib_only(ctl)
    with _channel(ctl) as ch:
        raw = ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as bad:
            raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)  # field 1 claims ~4 GiB: truncated protobuf
        assert bad.value.code() == grpc.StatusCode.INTERNAL  # what grpc-go (etcd) answers
        assert (bad.value.details() or "").startswith("grpc: error unmarshalling request: ")
        watch = ch.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=None,
                                 response_deserializer=rpc_pb2.WatchResponse.FromString)  # fmt: skip
        created = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=(ns + "w").encode()))
        stream = watch(iter([created.SerializeToString(), b"\x0a\xff\xff\xff\xff\x0f"]), timeout=10)
        with pytest.raises(grpc.RpcError) as bad_stream:
            assert next(stream).created
            next(stream)
        assert bad_stream.value.code() == grpc.StatusCode.INTERNAL  # mid-stream too, not a hang
        assert (bad_stream.value.details() or "").startswith("grpc: error unmarshalling request: ")
        kv = rpc_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.RpcError) as big:
            kv.Put(rpc_pb2.PutRequest(key=(ns + "big").encode(), value=b"x" * (3 * 1024 * 1024)), timeout=10)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (big.value.details() or "")
        with pytest.raises(grpc.RpcError) as too_big:  # under gRPC's limit, over --max-request-bytes
            kv.Put(rpc_pb2.PutRequest(key=(ns + "big").encode(), value=b"x" * (1600 * 1024)), timeout=10)
        assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert too_big.value.details() == "etcdserver: request is too large"
        with pytest.raises(grpc.RpcError) as empty:
            kv.Range(rpc_pb2.RangeRequest(), timeout=10)
        assert (empty.value.code(), empty.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")  # fmt: skip
        # Unknown enum values (proto3 keeps them) are accepted as etcd does: no sort, no filter.
        kv.Put(rpc_pb2.PutRequest(key=(ns + "e").encode(), value=b"1"), timeout=10)
        odd = rpc_pb2.RangeRequest(key=(ns + "e").encode(), sort_order=99, sort_target=42)
        assert kv.Range(odd, timeout=10).count == 1
        after = kv.Put(rpc_pb2.PutRequest(key=(ns + "after").encode(), value=b"ok"), timeout=10)
        assert after.header.revision > 0


def _rss_mib(pid: int | None) -> float | None:
    """The resident set size of process ``pid`` in MiB (Linux's /proc), or None when unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, TypeError):
        pass
    return None


def _watchers_on(ctl: Ctl, member: int) -> float:
    _, text = http_json(ctl.cluster.endpoints[member] + "/metrics", method="GET")
    line = [x for x in str(text).splitlines() if x.startswith("etcd_debugging_mvcc_watcher_total")]
    return float(line[0].split()[1]) if line else -1.0


WATCH_RSS_PER_WATCH_KIB = 12
"""The member's RSS may grow by at most this much per watch (plus WATCH_RSS_SLACK_MIB) while a
stream holds them. Measured for 10,000 watches on a follower (2 shared CPUs): the store +38-41 MiB
(about 4 KiB a watch: watcher, pump task, queue), etcd 3.4.23 +47 MiB (about 4.8 KiB a watch);
12 KiB leaves 2.5 times the worst of them."""
WATCH_RSS_SLACK_MIB = 20


WATCHES_ON_ONE_STREAM = 10_000
"""Issue 14, part 3. About 2-3 s against the store (1 s against etcd) on 2 shared CPUs, so it runs
in the default suite; before the store's watch fixes (one read barrier per create, every write
offered to every watcher) the same test took 13 s."""


def test_many_watches_on_one_stream_then_cancel_mid_stream(ctl: Ctl, ns: str, stubs: object) -> None:
    """Rules (issue 14, part 3): ten thousand watches on one gRPC Watch stream are each answered
    ``created`` with IDs from 0; a put reaches exactly the watches covering its key; the member's
    memory grows by a bounded amount per watch; cancelling one watch, a progress request and then
    the whole stream mid-stream work; afterwards the member has no watcher left and still serves."""
    import grpc

    from examples.kvstore.proto.stubs import rpc_pb2, rpc_pb2_grpc

    count = WATCHES_ON_ONE_STREAM
    member = 1
    pid = ctl.cluster.members[member].pid
    prefix = f"{ns}p/"
    # Every 1000th watch covers the whole prefix; the others watch one key each.
    ranged = {i for i in range(count) if i % 1000 == 999}

    def create(i: int) -> object:
        if i in ranged:
            end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            cr = rpc_pb2.WatchCreateRequest(key=prefix.encode(), range_end=end.encode())
        else:
            cr = rpc_pb2.WatchCreateRequest(key=f"{prefix}w{i}".encode())
        return rpc_pb2.WatchRequest(create_request=cr)

    rss_before = _rss_mib(pid)
    with _channel(ctl, member=member) as ch:
        import queue

        outbox: queue.Queue[object] = queue.Queue()
        for i in range(count):
            outbox.put(create(i))

        def feed() -> Iterator[object]:
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        started = time.monotonic()
        call = rpc_pb2_grpc.WatchStub(ch).Watch(feed(), timeout=120)
        ids = set()
        for resp in call:
            assert resp.created and not resp.canceled, resp
            ids.add(resp.watch_id)
            if len(ids) == count:
                break
        created_in = time.monotonic() - started
        assert ids == set(range(count))  # etcd numbers automatic watch IDs from 0
        rss_with = _rss_mib(pid)
        if rss_before is not None and rss_with is not None:
            bound = WATCH_RSS_SLACK_MIB + count * WATCH_RSS_PER_WATCH_KIB / 1024
            assert rss_with - rss_before < bound, (
                f"[{ctl.backend}] RSS grew {rss_with - rss_before:.1f} MiB for {count} watches "
                f"(bound {bound:.0f} MiB; {rss_before:.1f} -> {rss_with:.1f})"
            )
        kv = rpc_pb2_grpc.KVStub(ch)
        kv.Put(rpc_pb2.PutRequest(key=f"{prefix}w7".encode(), value=b"seven"), timeout=10)
        covering = {7} | ranged
        got = {}
        for _ in covering:
            event = next(call)
            assert event.watch_id in covering and event.watch_id not in got, event
            got[event.watch_id] = event.events[0].kv
        assert {kv.key for kv in got.values()} == {f"{prefix}w7".encode()}
        assert {kv.value for kv in got.values()} == {b"seven"}
        outbox.put(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=7)))
        cancelled = next(call)  # no event for a watch not covering the key came in between
        assert cancelled.watch_id == 7 and cancelled.canceled, cancelled
        outbox.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        progress = next(call)
        assert progress.watch_id == -1 and progress.header.revision > 0, progress
        call.cancel()  # the client goes away mid-stream
        with pytest.raises(grpc.RpcError):
            next(call)
        outbox.put(None)
    deadline = time.monotonic() + 10
    while (left := _watchers_on(ctl, member)) != 0:  # every watcher of the cancelled stream is gone
        assert time.monotonic() < deadline, f"[{ctl.backend}] {left} watchers left after the cancel"
        time.sleep(0.2)
    assert ctl.ok("put", ns + "still", "serving", member=member).strip() == "OK"
    assert ctl.ok("get", ns + "still", "--print-value-only", member=0).strip() == "serving"
    print(
        f"[{ctl.backend}] {count} watches created in {created_in:.2f} s; member RSS "
        f"{rss_before} -> {rss_with} -> {_rss_mib(pid)} MiB (before, with the watches, after the cancel)"
    )

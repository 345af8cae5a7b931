"""The online admin commands against a running cluster (issue 13, section 3).

Three RaftNodes over TCP, each with an admin endpoint (``NodeConfig.admin_address``),
authenticated by the cluster's peer secret. The CLI's ``main()`` runs in a worker thread
(its own event loop, a real TCP connection), as an operator's ``python -m raftlib`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_transport_helpers import free_ports, wait_until

from raftlib import NodeConfig, RaftNode, StateMachine
from raftlib.admin import ExitCode, main
from raftlib.admin.endpoint import MAX_LINE_BYTES, PROTOCOL, admin_proof
from raftlib.codec import AUTH_NONCE_BYTES
from raftlib.errors import ConfigError
from raftlib.storage import MemoryStorage
from raftlib.transport import TlsConfig
from raftlib.transport.base import parse_address
from raftlib.transport.peerauth import DIALLER, PeerSecret

SECRET = "correct horse battery staple 2026"
OTHER = "a different secret of some length"
FAST: dict[str, Any] = dict(tick_interval=0.01, election_tick=10, heartbeat_tick=1)


class Log(StateMachine):
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, command: bytes, index: int) -> Any:
        self.items.append(command)
        return len(self.items)

    def snapshot(self) -> bytes:
        return json.dumps([x.decode() for x in self.items]).encode()

    def restore(self, data: bytes) -> None:
        self.items = [x.encode() for x in json.loads(data)]


def make_node(node_id: str, members: dict[str, str], secret: str | None = SECRET, **kw: Any) -> RaftNode:
    join = kw.pop("join", False)
    cfg = NodeConfig(**FAST, peer_secret=secret, admin_address="127.0.0.1:0", **kw)
    return RaftNode(node_id, members, Log(), config=cfg, storage=MemoryStorage(), join=join)


class Cluster:
    def __init__(self, nodes: dict[str, RaftNode], members: dict[str, str]) -> None:
        self.nodes = nodes
        self.members = members

    async def leader(self) -> RaftNode:
        found: list[RaftNode] = []

        def one() -> bool:
            found[:] = [n for n in self.nodes.values() if n.running and n.is_leader]
            return len(found) == 1

        await wait_until(one, timeout=10.0)
        return found[0]

    async def follower(self) -> RaftNode:
        lead = await self.leader()
        await wait_until(lambda: all(n.leader == lead.id for n in self.nodes.values() if n.running))
        return next(n for n in self.nodes.values() if n is not lead and n.running)


@contextlib.asynccontextmanager
async def cluster(secret: str | None = SECRET, **kw: Any) -> AsyncIterator[Cluster]:
    ports = free_ports(3)
    members = {f"n{i}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    nodes = {i: make_node(i, members, secret, **kw) for i in members}
    try:
        for n in nodes.values():
            await n.start()
        c = Cluster(nodes, members)
        lead = await c.leader()
        await lead.propose(b"hello", timeout=5.0)
        yield c
    finally:
        for n in nodes.values():
            await n.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    return str(path)


async def cli(*argv: str) -> tuple[int, str, str]:
    """``python -m raftlib ARGV`` in a worker thread (the CLI runs its own event loop)."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def admin_of(node: RaftNode) -> str:
    assert node.admin is not None
    return node.admin.address


# ---------------------------------------------------------------------------------- status


async def test_status_shows_role_term_leader_indexes_and_each_peers_progress(secret_file: str) -> None:
    async with cluster() as c:
        lead = await c.leader()
        code, out, err = await cli("status", "--admin", admin_of(lead), "--secret-file", secret_file)
        assert code == 0, err
        assert f"node:       {lead.id} (leader, term {lead.status()['term']})" in out
        assert f"leader:     {lead.id} at {c.members[lead.id]}" in out
        assert "applied:" in out and "commit:" in out
        for peer in c.members:
            assert f"  {peer} " in out  # one progress line per member

        follower = await c.follower()
        conn = ("--admin", admin_of(follower), "--secret-file", secret_file)
        code, out, err = await cli("status", "--json", *conn)
        assert code == 0, err
        st = json.loads(out)
        assert st["role"] == "follower" and st["leader"] == lead.id and st["applied"] >= 1
        assert "progress" not in st  # only the leader tracks its peers


# --------------------------------------------------------------------------------- members


async def test_members_add_then_remove_a_fourth_node_through_the_leaders_endpoint(secret_file: str) -> None:
    async with cluster() as c:
        lead = await c.leader()
        port = free_ports(1)[0]
        n3_addr = f"127.0.0.1:{port}"
        n3 = make_node("n3", {**c.members, "n3": n3_addr}, join=True)
        await n3.start()
        try:
            conn = ("--admin", admin_of(lead), "--secret-file", secret_file)
            code, out, err = await cli("members", "add", "n3", n3_addr, *conn)
            assert code == 0, err
            rows = [line.split() for line in out.splitlines()]
            assert ["n3", "voter", n3_addr] in rows
            assert "n3" in lead.membership().voters
            await wait_until(lambda: n3.status().get("applied", 0) >= 1)

            code, out, err = await cli("members", "list", "--json", *conn)
            assert code == 0, err
            listed = json.loads(out)
            assert sorted(listed["voters"]) == ["n0", "n1", "n2", "n3"]
            assert listed["addresses"]["n3"] == n3_addr and listed["leader"] == lead.id

            code, out, err = await cli("members", "remove", "n3", *conn)
            assert code == 0, err
            assert "n3" not in out
            assert "n3" not in lead.membership().members()
        finally:
            await n3.stop()


async def test_a_follower_without_forwarding_answers_not_leader_with_the_leaders_address(
    secret_file: str,
) -> None:
    async with cluster() as c:
        follower = await c.follower()
        lead_id = follower.leader
        assert lead_id is not None
        code, out, err = await cli("members", "remove", "n0", "--admin", admin_of(follower),
                                   "--secret-file", secret_file)  # fmt: skip
        assert code == ExitCode.NOT_LEADER
        assert f"leader: {lead_id} at {c.members[lead_id]}" in err
        assert out == ""


async def test_with_forward_proposals_a_follower_forwards_demote_and_promote_to_the_leader(
    secret_file: str,
) -> None:
    async with cluster(forward_proposals=True) as c:
        follower = await c.follower()
        lead = await c.leader()
        other = next(i for i in c.members if i not in (lead.id, follower.id))
        conn = ("--admin", admin_of(follower), "--secret-file", secret_file, "--json")
        code, out, err = await cli("members", "demote", other, *conn)
        assert code == 0, err
        assert other in json.loads(out)["learners"] and other in lead.membership().learners
        code, out, err = await cli("members", "promote", other, *conn)
        assert code == 0, err
        assert other in json.loads(out)["voters"]


async def test_a_bad_membership_change_is_a_failed_operation_with_the_nodes_reason(secret_file: str) -> None:
    async with cluster() as c:
        lead = await c.leader()
        code, _, err = await cli("members", "promote", "nobody", "--admin", admin_of(lead),
                                 "--secret-file", secret_file)  # fmt: skip
        assert code == ExitCode.FAILED
        assert "UnknownMember" in err and "nobody" in err
        code, _, err = await cli("members", "add", "n9", "no-port", "--admin", admin_of(lead),
                                 "--secret-file", secret_file)  # fmt: skip
        assert code == ExitCode.USAGE
        assert "BadRequest" in err and "host:port" in err


# ------------------------------------------------------------------- transfer and snapshot


async def test_transfer_leader_hands_leadership_to_the_named_member(secret_file: str) -> None:
    async with cluster() as c:
        lead = await c.leader()
        target = next(i for i in c.members if i != lead.id)
        code, out, err = await cli("transfer-leader", target, "--admin", admin_of(lead),
                                   "--secret-file", secret_file)  # fmt: skip
        assert code == 0, err
        assert out.startswith(f"leader: {target} ")
        assert c.nodes[target].is_leader


async def test_snapshot_now_compacts_the_nodes_log_up_to_what_it_applied(secret_file: str) -> None:
    async with cluster() as c:
        lead = await c.leader()
        for i in range(5):
            await lead.propose(f"x{i}".encode(), timeout=5.0)
        applied = lead.status()["applied"]
        code, out, err = await cli("snapshot", "--admin", admin_of(lead), "--secret-file", secret_file)
        assert code == 0, err
        index = int(out.split("index ")[1].split(",")[0])
        assert index >= applied
        assert lead.status()["snapshot_index"] == index


# -------------------------------------------------------------------------- authentication


async def test_a_wrong_or_missing_secret_is_refused_before_any_request(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text(OTHER)
    async with cluster() as c:
        lead = await c.leader()
        assert lead.admin is not None and lead.admin.auth == "secret"
        code, out, err = await cli("status", "--admin", admin_of(lead), "--secret-file", str(wrong))
        assert code == ExitCode.REFUSED and out == ""
        assert "wrong secret" in err
        assert lead.admin.refused == {"secret_mismatch": 1}

        code, out, err = await cli("status", "--admin", admin_of(lead))
        assert code == ExitCode.REFUSED and out == ""
        assert "requires the cluster's shared secret" in err


async def read_json(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), 5.0)
    assert line, "connection closed"
    msg = json.loads(line)
    assert isinstance(msg, dict)
    return msg


async def test_a_request_instead_of_the_secret_proof_is_refused_and_the_connection_closed() -> None:
    async with cluster() as c:
        lead = await c.leader()
        reader, writer = await asyncio.open_connection(*parse_address(admin_of(lead)))
        try:
            hello = await read_json(reader)
            assert hello["protocol"] == PROTOCOL and hello["node"] == lead.id and hello["auth"] == "secret"
            writer.write(b'{"id": 1, "op": "status"}\n')
            answer = await read_json(reader)
            assert answer["ok"] is False and answer["error"]["type"] == "AuthFailed"
            assert await asyncio.wait_for(reader.read(), 5.0) == b""
        finally:
            writer.close()


async def authenticated(address: str, node_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*parse_address(address), limit=1 << 20)
    hello = await read_json(reader)
    mine = os.urandom(AUTH_NONCE_BYTES)
    proof = admin_proof(PeerSecret(SECRET), DIALLER, "raftlib", node_id, mine, bytes.fromhex(hello["nonce"]))
    writer.write(json.dumps({"auth": {"nonce": mine.hex(), "proof": proof.hex()}}).encode() + b"\n")
    assert (await read_json(reader))["ok"] is True
    return reader, writer


async def test_an_oversized_request_is_refused_and_the_connection_closed() -> None:
    async with cluster() as c:
        lead = await c.leader()
        reader, writer = await authenticated(admin_of(lead), lead.id)
        try:
            writer.write(b'{"id": 1, "op": "status"}\n')
            assert (await read_json(reader))["result"]["id"] == lead.id
            pad = "x" * (MAX_LINE_BYTES + 10)
            writer.write(json.dumps({"id": 2, "op": "status", "args": {"pad": pad}}).encode() + b"\n")
            answer = await read_json(reader)
            assert answer["ok"] is False and answer["error"]["type"] == "RequestTooLarge"
            assert await asyncio.wait_for(reader.read(), 5.0) == b""
            assert lead.admin is not None and lead.admin.refused == {"too_large": 1}
        finally:
            writer.close()


async def test_malformed_and_unknown_requests_get_bad_request_and_the_connection_stays() -> None:
    async with cluster() as c:
        lead = await c.leader()
        reader, writer = await authenticated(admin_of(lead), lead.id)
        try:
            writer.write(b"not json\n")
            assert (await read_json(reader))["error"]["type"] == "BadRequest"
            writer.write(b'{"id": 7, "op": "format_disk"}\n')
            answer = await read_json(reader)
            assert answer["id"] == 7 and answer["error"]["type"] == "BadRequest"
            assert "unknown op" in answer["error"]["message"]
            writer.write(b'{"id": 8, "op": "status", "args": {"timeout": -1}}\n')
            assert (await read_json(reader))["error"]["type"] == "BadRequest"
            writer.write(b'{"id": 9, "op": "status"}\n')
            assert (await read_json(reader))["ok"] is True
        finally:
            writer.close()


async def test_without_secret_or_tls_the_endpoint_serves_loopback_clients_only() -> None:
    async with cluster(secret=None) as c:
        lead = await c.leader()
        assert lead.admin is not None and lead.admin.auth == "loopback"
        code, out, err = await cli("status", "--admin", admin_of(lead))
        assert code == 0, err
        assert f"node:       {lead.id}" in out


def test_python_m_raftlib_lists_the_online_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "raftlib", "--help"], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    for command in ("status", "members", "transfer-leader", "snapshot", "wal", "recover"):
        assert command in done.stdout


def test_a_bad_admin_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="admin_address"):
        RaftNode("n0", {"n0": "127.0.0.1:0"}, Log(), config=NodeConfig(admin_address="no-port"),
                 storage=MemoryStorage())  # fmt: skip


# ------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command-line tool")
    from test_transport_peer_identity import make_cert
    from test_transport_tls import _make_ca

    d = tmp_path_factory.mktemp("admin-certs")
    _make_ca(d, "ca")
    make_cert(d, "n0", "n0", "DNS:n0")
    make_cert(d, "operator", "operator", "DNS:operator")
    other = d / "other"
    other.mkdir()
    _make_ca(other, "ca")
    make_cert(other, "operator", "operator", "DNS:operator")
    return d


async def test_with_tls_a_client_certificate_of_the_cluster_ca_is_required(certs: Path) -> None:
    tls = TlsConfig(str(certs / "n0.crt"), str(certs / "n0.key"), str(certs / "ca.crt"))
    node = make_node("n0", {"n0": f"127.0.0.1:{free_ports(1)[0]}"}, secret=None, tls=tls)
    await node.start()
    try:
        assert node.admin is not None and node.admin.auth == "tls"
        ca = str(certs / "ca.crt")
        ours = ("--tls-cert", str(certs / "operator.crt"), "--tls-key", str(certs / "operator.key"),
                "--tls-ca", ca)  # fmt: skip
        code, out, err = await cli("status", "--admin", admin_of(node), *ours)
        assert code == 0, err
        assert out.startswith("node:       n0 (")

        foreign = certs / "other"
        theirs = ("--tls-cert", str(foreign / "operator.crt"), "--tls-key", str(foreign / "operator.key"),
                  "--tls-ca", ca)  # fmt: skip
        code, out, err = await cli("status", "--admin", admin_of(node), "--timeout", "5", *theirs)
        assert code == ExitCode.REFUSED and out == "", err
    finally:
        await node.stop()


# ------------------------------------------------------------------------------ life cycle


async def test_stop_closes_the_endpoint_and_its_open_connections() -> None:
    ports = free_ports(1)
    node = make_node("n0", {"n0": f"127.0.0.1:{ports[0]}"})
    await node.start()
    address = admin_of(node)
    reader, writer = await authenticated(address, "n0")
    try:
        await asyncio.wait_for(node.stop(), 5.0)
        assert node.admin is None
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # the idle connection was closed
        with pytest.raises(OSError):
            await asyncio.open_connection(*parse_address(address))
        code, _, err = await cli("status", "--admin", address, "--timeout", "3")
        assert code == ExitCode.UNAVAILABLE and "cannot connect" in err
    finally:
        writer.close()
        await node.stop()

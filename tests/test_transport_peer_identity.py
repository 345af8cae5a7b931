"""Peer identity at the TCP transport's handshake (issue 12, section 4).

Without TLS: a shared secret proven by HMAC challenge/response in both directions (the secret
never travels; a captured handshake cannot be replayed). With mutual TLS: the certificate must
name the member the connection is with. Every refusal is counted by reason and logged once per peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_transport_helpers import close_writer, free_ports, hb, host_port, wait_until

from raftlib import NodeConfig, RaftNode, StateMachine
from raftlib.codec import (
    ANSWER_ACCEPT,
    ANSWER_ACCEPT_PROVEN,
    ANSWER_CHALLENGE,
    ANSWER_PROOF,
    ANSWER_REFUSE,
    AUTH_HMAC_SHA256,
    HEADER_SIZE,
    CodecError,
    Handshake,
    decode_handshake,
    decode_handshake_ack,
    decode_handshake_answer,
    encode,
    encode_handshake,
    encode_handshake_answer,
)
from raftlib.core.messages import Message
from raftlib.errors import ConfigError
from raftlib.storage import MemoryStorage
from raftlib.transport import TcpTransport, TlsConfig
from raftlib.transport.peerauth import ACCEPTOR, DIALLER, PeerSecret, check_peer_secret
from raftlib.transport.tcp import REFUSAL_REASONS

SECRET = "correct horse battery staple 2026"
OTHER = "a different secret of some length"
LOGGER = "raftlib.transport.tcp"
FAST_RETRY: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.04}


# ------------------------------------------------------------------------------------ helpers


async def pair(
    secret_a: str | bytes | None, secret_b: str | bytes | None, **kw: Any
) -> tuple[TcpTransport, TcpTransport, list[Message], list[Message]]:
    got_a: list[Message] = []
    got_b: list[Message] = []
    a = TcpTransport("a", "127.0.0.1:0", cluster_id="c1", peer_secret=secret_a, **kw)
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="c1", peer_secret=secret_b, **kw)
    await a.start(got_a.append)
    await b.start(got_b.append)
    a.set_peers({"b": b.address})
    b.set_peers({"a": a.address})
    return a, b, got_a, got_b


async def keep_sending(ts: list[TcpTransport], until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Every transport heartbeats its peers every 5 ms (each send after a back-off re-dials)."""
    seq = 0

    def step() -> bool:
        nonlocal seq
        for t in ts:
            t.send([hb(t.node_id, p, seq) for p in t.peers])
        seq += 1
        return until()

    await wait_until(step, timeout=timeout, interval=0.005)


def warnings_of(caplog: pytest.LogCaptureFixture, node: str, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and r.getMessage().startswith(f"{node}: ")
        and text in r.getMessage()
    ]  # fmt: skip


class Recorder:
    """A TCP proxy in front of ``target`` that records each connection's bytes, per direction."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.sessions: list[dict[str, bytearray]] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _handle(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        rec = {"up": bytearray(), "down": bytearray()}
        self.sessions.append(rec)
        r2, w2 = await asyncio.open_connection(*host_port(self.target))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, buf: bytearray) -> None:
            try:
                while data := await r.read(65536):
                    buf += data
                    w.write(data)
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(r1, w2, rec["up"]), pipe(r2, w1, rec["down"]))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def split_frames(data: bytes) -> list[bytes]:
    """Cut a recorded byte stream into whole frames (header + body)."""
    out, pos = [], 0
    while pos + HEADER_SIZE <= len(data):
        (length,) = struct.unpack_from("<I", data, pos + 4)
        out.append(bytes(data[pos : pos + HEADER_SIZE + length]))
        pos += HEADER_SIZE + length
    return out


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), 5)
    (length,) = struct.unpack_from("<I", header, 4)
    return await asyncio.wait_for(reader.readexactly(length), 5)


async def stop_all(*ts: TcpTransport) -> None:
    for t in ts:
        await t.stop()


# ------------------------------------------------------------------------------- wire format


def test_authenticating_hello_and_answers_round_trip_and_plain_hello_is_unchanged() -> None:
    plain = Handshake("c1", "a", "b")
    assert (
        encode_handshake(plain)
        == bytes.fromhex("5246") + bytes([1, 1]) + struct.pack("<IHHHH", 8 + 4, 1, 2, 1, 1) + b"c1ab"
    )  # the version-1 hello, byte for byte: peers without a secret interoperate
    hs = Handshake("c1", "a", "b", auth=AUTH_HMAC_SHA256, nonce=b"\x07" * 32)
    assert decode_handshake(encode_handshake(hs)[HEADER_SIZE:]) == hs
    assert decode_handshake(encode_handshake(plain)[HEADER_SIZE:]).auth == 0
    for status, data in [
        (ANSWER_ACCEPT, b""),
        (ANSWER_REFUSE, b"secret_mismatch: no"),
        (ANSWER_CHALLENGE, b"n" * 32),
        (ANSWER_PROOF, b"p" * 32),
        (ANSWER_ACCEPT_PROVEN, b"q" * 32),
    ]:
        assert decode_handshake_answer(encode_handshake_answer(status, data)[HEADER_SIZE:]) == (status, data)
    # the accept/refuse reader refuses the shared-secret steps rather than misreading them
    with pytest.raises(CodecError):
        decode_handshake_ack(encode_handshake_answer(ANSWER_CHALLENGE, b"n" * 32)[HEADER_SIZE:])
    # sizes are fixed per step: a short MAC, an accept with data, an unknown status are refused
    for status, data in [(ANSWER_PROOF, b"p" * 31), (ANSWER_ACCEPT, b"x"), (9, b"")]:
        with pytest.raises(CodecError):
            encode_handshake_answer(status, data)
        body = struct.pack("<BH", status, len(data)) + data
        with pytest.raises(CodecError):
            decode_handshake_answer(body)
    with pytest.raises(CodecError):  # an auth extension with scheme 0 is malformed
        decode_handshake(encode_handshake(plain)[HEADER_SIZE:] + b"\x00\x01x")


@given(st.binary(max_size=200))
def test_handshake_decoders_raise_only_codec_error(data: bytes) -> None:
    for fn in (decode_handshake, decode_handshake_answer, decode_handshake_ack):
        with contextlib.suppress(CodecError):  # anything else fails the test
            fn(data)


def test_proofs_bind_role_cluster_ids_and_both_nonces() -> None:
    s = PeerSecret(SECRET)
    base = (DIALLER, "c1", "a", "b", b"1" * 32, b"2" * 32)
    mac = s.proof(*base)
    assert s.verify(mac, *base)
    variants = [
        (ACCEPTOR, *base[1:]),  # reflected back to its sender
        (DIALLER, "c2", "a", "b", b"1" * 32, b"2" * 32),
        (DIALLER, "c1", "x", "b", b"1" * 32, b"2" * 32),
        (DIALLER, "c1", "a", "x", b"1" * 32, b"2" * 32),
        (DIALLER, "c1", "a", "b", b"3" * 32, b"2" * 32),
        (DIALLER, "c1", "a", "b", b"1" * 32, b"3" * 32),  # another connection's challenge
    ]
    for v in variants:
        assert not s.verify(mac, *v), v
    assert not PeerSecret(OTHER).verify(mac, *base)
    assert PeerSecret(SECRET.encode()).verify(mac, *base)  # str and its UTF-8 bytes are one secret
    assert SECRET not in repr(s)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "empty"),
        (b"", "empty"),
        ("short", "at least 16"),
        (b"x" * 5000, "at most 4096"),
        (12345, "must be bytes, str or None"),
        (["secret"], "must be bytes, str or None"),
    ],
)
def test_bad_peer_secrets_are_config_errors(bad: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_peer_secret(bad)
    with pytest.raises(ConfigError, match=message):
        TcpTransport("a", "127.0.0.1:0", cluster_id="c", peer_secret=bad)


# --------------------------------------------------------------------------- shared secret


async def test_right_secret_connects_both_ways_and_messages_flow_in_order() -> None:
    a, b, got_a, got_b = await pair(SECRET, SECRET.encode())
    try:
        assert a.authenticates_with_secret and b.authenticates_with_secret
        for seq in range(100):
            a.send([hb("a", "b", seq)])
            b.send([hb("b", "a", seq)])
        await wait_until(lambda: len(got_a) == 100 and len(got_b) == 100)
        assert [m.commit for m in got_b] == list(range(100))
        assert [m.commit for m in got_a] == list(range(100))
        for t in (a, b):
            assert t.stats["rejected_handshakes"] == 0 and t.stats["dropped"] == 0
            assert set(t.metrics["handshake_refused"]) == set(REFUSAL_REASONS)
            assert not any(t.metrics["handshake_refused"].values())
            assert not any(t.metrics["handshake_refused_by_peer"].values())
    finally:
        await stop_all(a, b)


async def test_the_secret_never_travels_and_every_connection_uses_fresh_nonces() -> None:
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="c1", peer_secret=SECRET)
    await b.start(got.append)
    proxy = Recorder(b.address)
    a = TcpTransport("a", "127.0.0.1:0", {"b": await proxy.start()}, cluster_id="c1", peer_secret=SECRET)
    await a.start(lambda m: None)
    b.set_peers({"a": a.address})
    try:
        via_proxy = a.peers
        for round_ in range(2):  # two connections: set_peers({}) closes the first, a send redials
            a.send([hb("a", "b", round_)])
            await wait_until(lambda n=round_ + 1: len(got) == n)
            a.set_peers({})
            a.set_peers(via_proxy)
        assert len(proxy.sessions) >= 2
        hellos, challenges = [], []
        for rec in proxy.sessions[:2]:
            wire = bytes(rec["up"] + rec["down"])
            assert SECRET.encode() not in wire
            up, down = split_frames(bytes(rec["up"])), split_frames(bytes(rec["down"]))
            hello = decode_handshake(up[0][HEADER_SIZE:])
            assert hello.auth == AUTH_HMAC_SHA256 and len(hello.nonce) == 32
            hellos.append(hello.nonce)
            status, nonce = decode_handshake_answer(down[0][HEADER_SIZE:])
            assert status == ANSWER_CHALLENGE
            challenges.append(nonce)
            assert decode_handshake_answer(up[1][HEADER_SIZE:])[0] == ANSWER_PROOF
            assert decode_handshake_answer(down[1][HEADER_SIZE:])[0] == ANSWER_ACCEPT_PROVEN
        assert hellos[0] != hellos[1] and challenges[0] != challenges[1]
    finally:
        await stop_all(a, b)
        await proxy.stop()


async def test_wrong_secret_is_refused_both_ways_counted_by_reason_and_logged_once_per_peer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    a, b, got_a, got_b = await pair(SECRET, OTHER, **FAST_RETRY)
    try:
        # many retries in both directions: a dials b (b refuses a) and b dials a (a refuses b)
        await keep_sending(
            [a, b],
            lambda: (
                all(t.metrics["handshake_refused"]["secret_mismatch"] >= 8 for t in (a, b))
                and all(t.metrics["handshake_refused_by_peer"]["secret_mismatch"] >= 8 for t in (a, b))
            ),
        )
        assert got_a == [] and got_b == []
        for t in (a, b):
            refused = t.metrics["handshake_refused"]
            assert refused["secret_mismatch"] == sum(refused.values()) == t.stats["rejected_handshakes"]
            assert t.stats["sent"] == 0
            # one WARNING for the peer it refuses, one for the peer that refuses it; the retries at DEBUG
            assert len(warnings_of(caplog, t.node_id, "refusing connection")) == 1
            assert len(warnings_of(caplog, t.node_id, "handshake failed with peer")) == 1
        line = warnings_of(caplog, "b", "refusing connection")[0]
        assert "secret_mismatch" in line and "did not prove the cluster's shared secret" in line
        debug = [
            r
            for r in caplog.records
            if r.levelno == logging.DEBUG and "refusing connection" in r.getMessage()
        ]
        assert len(debug) >= 14
    finally:
        await stop_all(a, b)


@pytest.mark.parametrize("side_with_secret", ["a", "b"])
async def test_a_node_without_secret_and_a_node_with_one_refuse_each_other_with_a_clear_reason(
    caplog: pytest.LogCaptureFixture, side_with_secret: str
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    secrets = {"a": None, "b": None, side_with_secret: SECRET}
    a, b, got_a, got_b = await pair(secrets["a"], secrets["b"], **FAST_RETRY)
    try:
        with_secret, without = (a, b) if side_with_secret == "a" else (b, a)
        await keep_sending(
            [a, b],
            lambda: (
                with_secret.metrics["handshake_refused"]["secret_missing"] >= 3
                and without.metrics["handshake_refused"]["secret_unexpected"] >= 3
            ),
        )
        assert got_a == [] and got_b == []
        assert with_secret.metrics["handshake_refused_by_peer"]["secret_unexpected"] >= 3
        assert without.metrics["handshake_refused_by_peer"]["secret_missing"] >= 3
        (w,) = warnings_of(caplog, with_secret.node_id, "refusing connection")
        assert f"did not authenticate, and {with_secret.node_id!r} requires the cluster's shared secret" in w
        (w,) = warnings_of(caplog, without.node_id, "refusing connection")
        assert f"authenticates with a shared secret, and {without.node_id!r} has none configured" in w
    finally:
        await stop_all(a, b)


async def test_replayed_dialler_handshake_bytes_are_refused() -> None:
    """A passive observer records a genuine dialler's bytes and plays them to the listener again."""
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="c1", peer_secret=SECRET)
    await b.start(got.append)
    proxy = Recorder(b.address)
    a = TcpTransport("a", "127.0.0.1:0", {"b": await proxy.start()}, cluster_id="c1", peer_secret=SECRET)
    await a.start(lambda m: None)
    b.set_peers({"a": a.address})
    try:
        a.send([hb("a", "b", 1)])
        await wait_until(lambda: len(got) == 1)
        up = split_frames(bytes(proxy.sessions[0]["up"]))
        hello, proof, message = up[0], up[1], up[2]
        await a.stop()  # the genuine dialler is gone; the attacker has its bytes
        # 1. step by step: a fresh challenge comes back, the recorded proof does not answer it
        reader, writer = await asyncio.open_connection(*host_port(b.address))
        writer.write(hello)
        status, _nonce = decode_handshake_answer(await read_frame(reader))
        assert status == ANSWER_CHALLENGE
        writer.write(proof + message)
        status, reason = decode_handshake_answer(await read_frame(reader))
        assert status == ANSWER_REFUSE and reason.startswith(b"secret_mismatch: ")
        await close_writer(writer)
        # 2. the whole recorded stream at once
        reader, writer = await asyncio.open_connection(*host_port(b.address))
        writer.write(bytes(proxy.sessions[0]["up"]))
        assert decode_handshake_answer(await read_frame(reader))[0] == ANSWER_CHALLENGE
        assert decode_handshake_answer(await read_frame(reader))[0] == ANSWER_REFUSE
        await close_writer(writer)
        assert len(got) == 1  # nothing replayed was delivered
        assert b.metrics["handshake_refused"]["secret_mismatch"] == 2
    finally:
        await stop_all(a, b)
        await proxy.stop()


async def test_replayed_acceptor_answers_do_not_fool_a_dialler() -> None:
    """An impostor listener replays a genuine acceptor's recorded answers to a new dial."""
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="c1", peer_secret=SECRET)
    await b.start(got.append)
    proxy = Recorder(b.address)
    a = TcpTransport("a", "127.0.0.1:0", {"b": await proxy.start()}, cluster_id="c1", peer_secret=SECRET)
    await a.start(lambda m: None)
    b.set_peers({"a": a.address})
    received: list[bytes] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        down = split_frames(bytes(proxy.sessions[0]["down"]))
        await read_frame(reader)  # the hello
        writer.write(down[0])  # the recorded challenge
        await read_frame(reader)  # the proof
        writer.write(down[1])  # the recorded "accepted + acceptor's proof"
        while data := await reader.read(65536):
            received.append(data)
        await close_writer(writer)

    fake = await asyncio.start_server(impostor, "127.0.0.1", 0)
    try:
        a.send([hb("a", "b", 1)])
        await wait_until(lambda: len(got) == 1)
        host, port = fake.sockets[0].getsockname()[:2]
        a.set_peers({"b": f"{host}:{port}"})
        sent = a.stats["sent"]
        a.send([hb("a", "b", 2)])
        await wait_until(lambda: a.metrics["handshake_refused"]["secret_mismatch"] == 1)
        await asyncio.sleep(0.05)
        assert received == [] and a.stats["sent"] == sent  # no message ever went to the impostor
    finally:
        await stop_all(a, b)
        await proxy.stop()
        fake.close()
        await fake.wait_closed()


async def test_a_client_speaking_the_documented_protocol_is_accepted_unless_removed_meanwhile() -> None:
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1"}, cluster_id="c1", peer_secret=SECRET)
    await b.start(got.append)
    key = PeerSecret(SECRET)

    async def handshake(
        remove_before_proof: bool,
    ) -> tuple[asyncio.StreamWriter, int, bytes]:
        reader, writer = await asyncio.open_connection(*host_port(b.address))
        nd = PeerSecret.new_nonce()
        writer.write(encode_handshake(Handshake("c1", "a", "b", auth=AUTH_HMAC_SHA256, nonce=nd)))
        status, na = decode_handshake_answer(await read_frame(reader))
        assert status == ANSWER_CHALLENGE and len(na) == 32
        if remove_before_proof:
            b.set_peers({})
        writer.write(encode_handshake_answer(ANSWER_PROOF, key.proof(DIALLER, "c1", "a", "b", nd, na)))
        status, data = decode_handshake_answer(await read_frame(reader))
        if status == ANSWER_ACCEPT_PROVEN:
            assert key.verify(data, ACCEPTOR, "c1", "a", "b", nd, na)  # b proved the secret to us
        return writer, status, data

    try:
        writer, status, _ = await handshake(remove_before_proof=False)
        assert status == ANSWER_ACCEPT_PROVEN
        writer.write(encode(hb("a", "b", 7)))
        await wait_until(lambda: [m.commit for m in got] == [7])
        await close_writer(writer)
        writer, status, reason = await handshake(remove_before_proof=True)
        assert status == ANSWER_REFUSE and reason.startswith(b"unknown_sender: ")
        await close_writer(writer)
    finally:
        await b.stop()


async def test_refusals_of_unknown_ids_share_one_log_entry(caplog: pytest.LogCaptureFixture) -> None:
    """Claimed ids of strangers cannot make the refusal log (or its bookkeeping) grow per id."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1"}, cluster_id="c1", peer_secret=SECRET)
    await b.start(lambda m: None)
    try:
        for i in range(20):
            reader, writer = await asyncio.open_connection(*host_port(b.address))
            writer.write(encode_handshake(Handshake("c1", f"stranger-{i}", "b")))
            status, reason = decode_handshake_answer(await read_frame(reader))
            assert status == ANSWER_REFUSE and reason.startswith(b"unknown_sender: ")
            await close_writer(writer)
        assert b.metrics["handshake_refused"]["unknown_sender"] == 20
        assert len(warnings_of(caplog, "b", "refusing connection")) == 1
    finally:
        await b.stop()


# ------------------------------------------------------------------------------ RaftNode


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


async def test_node_config_peer_secret_keeps_a_member_with_another_secret_out() -> None:
    ports = free_ports(3)
    members = {f"n{i}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    fast = dict(tick_interval=0.01, election_tick=10, heartbeat_tick=1)
    secrets = {"n0": SECRET, "n1": SECRET, "n2": OTHER}
    sms = {i: Log() for i in members}
    nodes = {
        i: RaftNode(
            i, members, sms[i], config=NodeConfig(**fast, peer_secret=secrets[i]), storage=MemoryStorage()
        )
        for i in members
    }
    try:
        for n in nodes.values():
            await n.start()

        async def leader() -> RaftNode:
            while True:
                for n in nodes.values():
                    if n.is_leader:
                        return n
                await asyncio.sleep(0.01)

        lead = await asyncio.wait_for(leader(), 5)
        assert lead.id in ("n0", "n1")
        assert await asyncio.wait_for(lead.propose(b"x"), 5) == 1
        await wait_until(lambda: sms["n0"].items == sms["n1"].items == [b"x"])
        await asyncio.sleep(0.1)
        assert sms["n2"].items == []
        assert nodes["n2"].transport_stats["rejected_handshakes"] > 0
        # The members refuse the stranger and say why (exported by the KV store's /metrics).
        refusals = [nodes[i].handshake_refusals for i in ("n0", "n1")]
        assert any(r.get("secret_mismatch", 0) > 0 for r in refusals), refusals
        assert "peer_secret" not in repr(NodeConfig(peer_secret=SECRET)) and SECRET not in repr(
            NodeConfig(peer_secret=SECRET)
        )
    finally:
        for n in nodes.values():
            await n.stop()


def test_a_bad_node_config_peer_secret_is_a_config_error_at_construction() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        RaftNode("n0", {"n0": "127.0.0.1:0"}, Log(), config=NodeConfig(peer_secret="short"),
                 storage=MemoryStorage())


# ---------------------------------------------------------------------------- mutual TLS

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command-line tool")


def make_cert(d: Path, name: str, cn: str, san: str | None) -> None:
    """A key + certificate ``name`` signed by ``ca`` in ``d`` (``san``: an openssl SAN list, or none)."""
    from test_transport_tls import _run

    ext = f"subjectAltName={san}\n" if san else ""
    (d / f"{name}.ext").write_text(ext + "extendedKeyUsage=serverAuth,clientAuth\n")
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if OPENSSL is None:
        pytest.skip("needs the openssl command-line tool")
    from test_transport_tls import _make_ca

    d = tmp_path_factory.mktemp("identity-certs")
    _make_ca(d, "ca")
    make_cert(d, "a", "a", "DNS:a")
    make_cert(d, "b", "b", "DNS:b,IP:127.0.0.1")
    make_cert(d, "c", "c", "DNS:c")
    make_cert(d, "cn-only-a", "a", None)  # no SAN: the CN names the member
    make_cert(d, "ip-only", "a", "IP:127.0.0.1")  # a SAN without names: the CN "a" no longer counts
    return d


def tls(d: Path, cert: str, **kw: Any) -> TlsConfig:
    return TlsConfig(str(d / f"{cert}.crt"), str(d / f"{cert}.key"), str(d / "ca.crt"), **kw)


async def tls_pair(
    d: Path, cert_a: str, cert_b: str, **kw: Any
) -> tuple[TcpTransport, TcpTransport, list[Message], list[Message]]:
    got_a: list[Message] = []
    got_b: list[Message] = []
    a = TcpTransport("a", "127.0.0.1:0", cluster_id="c1", ssl=tls(d, cert_a, **kw), **FAST_RETRY)
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="c1", ssl=tls(d, cert_b, **kw), **FAST_RETRY)
    await a.start(got_a.append)
    await b.start(got_b.append)
    a.set_peers({"b": b.address})
    b.set_peers({"a": a.address})
    return a, b, got_a, got_b


async def exchange(a: TcpTransport, b: TcpTransport, got_a: list[Message], got_b: list[Message]) -> None:
    a.send([hb("a", "b", 1)])
    b.send([hb("b", "a", 1)])
    await wait_until(lambda: len(got_a) == 1 and len(got_b) == 1)


@needs_openssl
async def test_tls_certificate_naming_another_member_is_refused_while_the_right_one_works(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    a, b, got_a, got_b = await tls_pair(certs, "a", "b")
    try:
        await exchange(a, b, got_a, got_b)  # the right certificates: both directions work
    finally:
        await stop_all(a, b)
    # "a" presents c's certificate (signed by the same CA, SAN DNS:c): refused both ways
    a, b, got_a, got_b = await tls_pair(certs, "c", "b")
    try:
        await keep_sending(
            [a, b],
            lambda: (
                b.metrics["handshake_refused"]["peer_identity"] >= 6
                and a.metrics["handshake_refused_by_peer"]["peer_identity"] >= 3
            ),
        )
        assert got_a == [] and got_b == []
        # b refuses in both roles (as acceptor of a's dial, and as dialler meeting a's certificate)
        assert b.stats["rejected_handshakes"] == b.metrics["handshake_refused"]["peer_identity"]
        assert a.metrics["handshake_refused"] == dict.fromkeys(REFUSAL_REASONS, 0)
        (w,) = warnings_of(caplog, "b", "refusing connection")
        assert "peer_identity" in w and "(DNS:c) does not name node 'a'" in w
        # the dialler side: b dialled "a" and met a certificate for c, so b refused it
        (w,) = warnings_of(caplog, "b", "handshake failed with peer a")
        assert "refusing it: peer_identity" in w
    finally:
        await stop_all(a, b)


@needs_openssl
async def test_tls_cn_counts_only_without_a_subject_alt_name(certs: Path) -> None:
    a, b, got_a, got_b = await tls_pair(certs, "cn-only-a", "b")
    try:
        await exchange(a, b, got_a, got_b)
    finally:
        await stop_all(a, b)
    a, b, got_a, got_b = await tls_pair(certs, "ip-only", "b")
    try:
        await keep_sending([a], lambda: b.metrics["handshake_refused"]["peer_identity"] >= 1)
        assert got_b == []
    finally:
        await stop_all(a, b)


@needs_openssl
async def test_tls_address_rule_and_none_rule_and_tls_with_a_secret(certs: Path) -> None:
    # "address" (the kvstore's rule): b's certificate names 127.0.0.1, a's does not
    a, b, got_a, got_b = await tls_pair(certs, "b", "b", peer_identity="address")
    try:
        await exchange(a, b, got_a, got_b)
    finally:
        await stop_all(a, b)
    a, b, got_a, got_b = await tls_pair(certs, "a", "b", peer_identity="address")
    try:
        await keep_sending([a, b], lambda: b.metrics["handshake_refused"]["peer_identity"] >= 1)
    finally:
        await stop_all(a, b)
    # "none": any certificate of the cluster CA, as before this check existed
    a, b, got_a, got_b = await tls_pair(certs, "c", "b", peer_identity="none")
    try:
        await exchange(a, b, got_a, got_b)
    finally:
        await stop_all(a, b)
    # TLS and a shared secret together: both checks pass
    a = TcpTransport("a", "127.0.0.1:0", cluster_id="c1", ssl=tls(certs, "a"), peer_secret=SECRET)
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="c1", ssl=tls(certs, "b"), peer_secret=SECRET)
    got_a, got_b = [], []
    await a.start(got_a.append)
    await b.start(got_b.append)
    a.set_peers({"b": b.address})
    b.set_peers({"a": a.address})
    try:
        await exchange(a, b, got_a, got_b)
    finally:
        await stop_all(a, b)


def cert_dict(san: list[tuple[str, str]], cn: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"subject": ((("commonName", cn),),) if cn else ()}
    if san:
        d["subjectAltName"] = tuple(san)
    return d


def test_peer_identity_rules_exactly() -> None:
    node_id = TlsConfig("c", "k", "ca")
    check = node_id.check_peer_certificate
    assert check(cert_dict([("DNS", "n1")]), "n1", "10.0.0.1:2380") is None
    assert check(cert_dict([("URI", "spiffe://prod/n1")]), "spiffe://prod/n1", "h:1") is None
    assert check(cert_dict([("DNS", "N1")]), "n1", "h:1") is not None  # exact, case-sensitive
    assert check(cert_dict([("DNS", "*.n1")]), "x.n1", "h:1") is not None  # no wildcards
    assert check(cert_dict([], cn="n1"), "n1", "h:1") is None  # no SAN: the CN
    assert check(cert_dict([("IP Address", "10.0.0.1")], cn="n1"), "n1", "h:1") is not None
    assert check({}, "n1", "h:1") == "the peer presented no verified certificate"
    assert check(None, "n1", "h:1") is not None
    address = TlsConfig("c", "k", "ca", peer_identity="address").check_peer_certificate
    assert address(cert_dict([("IP Address", "10.0.0.1")]), "x", "10.0.0.1:2380") is None
    assert address(cert_dict([("IP Address", "10.0.0.2")]), "x", "10.0.0.1:2380") is not None
    assert address(cert_dict([("IP Address", "0:0:0:0:0:0:0:1\n")]), "x", "[::1]:2380") is None
    assert address(cert_dict([("DNS", "Node1.Example")]), "x", "node1.example:2380") is None
    assert (
        address(cert_dict([("DNS", "10.0.0.1")]), "x", "10.0.0.1:2380") is not None
    )  # an IP needs an IP entry
    assert address(cert_dict([], cn="node1.example"), "x", "node1.example:2380") is None
    none = TlsConfig("c", "k", "ca", peer_identity="none").check_peer_certificate
    assert none(cert_dict([("DNS", "other")]), "n1", "h:1") is None
    unverified = TlsConfig("c", "k", "ca", verify_peer=False)
    assert unverified.check_peer_certificate({}, "n1", "h:1") is None  # nothing verified to check
    with pytest.raises(ConfigError, match="peer_identity must be one of"):
        TlsConfig("c", "k", "ca", peer_identity="cn")


# ------------------------------------------------------------------------------- the store


def test_store_flag_reads_the_shared_secret_from_a_file(tmp_path: Path) -> None:
    from examples.kvstore.__main__ import FlagError, config_from_args

    f = tmp_path / "peer-secret"
    f.write_text(SECRET + "\n")
    cfg, _ = config_from_args(["--peer-shared-secret-file", str(f)])
    assert cfg.peer_secret == SECRET.encode()  # the final newline is not part of it
    assert SECRET not in repr(cfg)
    assert config_from_args([])[0].peer_secret is None
    with pytest.raises(FlagError, match="cannot read"):
        config_from_args(["--peer-shared-secret-file", str(tmp_path / "missing")])
    f.write_text("tiny\n")
    with pytest.raises(FlagError, match="at least 16"):
        config_from_args(["-peer-shared-secret-file=" + str(f)])
    f.write_text("\n")
    with pytest.raises(FlagError, match="empty"):
        config_from_args(["--peer-shared-secret-file", str(f)])


async def test_store_members_with_the_shared_secret_form_a_cluster() -> None:
    pytest.importorskip("aiohttp")
    from test_kv_api import Cluster, b64

    c = Cluster(3, peer_secret=SECRET.encode())
    await c.start()
    try:
        await c.ok("/v3/kv/put", {"key": b64("k"), "value": b64("v")})
        for s in c.servers:
            assert s.node is not None
            transport = s.node._transport
            assert transport.authenticates_with_secret
            assert transport.stats["rejected_handshakes"] == 0
    finally:
        await c.stop()

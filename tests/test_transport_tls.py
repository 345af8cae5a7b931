"""TcpTransport with mutual TLS: certificates from a throwaway CA made at test time with openssl."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from test_transport_helpers import close_writer, closed_by_peer, hb, host_port, wait_until

from raftlib.codec import Handshake, encode_handshake
from raftlib.core.messages import Message
from raftlib.transport import TcpTransport, TlsConfig

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command-line tool")


def _run(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip


def _make_cert(d: Path, ca: str, node: str) -> None:
    (d / f"{node}.ext").write_text(f"subjectAltName=DNS:{node}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{node}.key", "-out", f"{node}.csr", "-subj", f"/CN={node}",
        cwd=d,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", f"{node}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{node}.crt", "-days", "1", "-extfile", f"{node}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca")
    _make_ca(d, "evil-ca")
    for node in ("a", "b", "c"):
        _make_cert(d, "ca", node)
    _make_cert(d, "evil-ca", "mallory")
    return d


def tls(d: Path, node: str, ca: str = "ca") -> TlsConfig:
    return TlsConfig(str(d / f"{node}.crt"), str(d / f"{node}.key"), str(d / f"{ca}.crt"))


async def test_tls_contexts_require_certificates_both_ways(certs: Path) -> None:
    cfg = tls(certs, "a")
    server = cfg.server_context()
    client = cfg.client_context()
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname is False
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    # the cluster CA is the only trust root
    assert [c["subject"] for c in client.get_ca_certs()] == [((("commonName", "ca"),),)]


async def test_mutual_tls_cluster_exchanges_messages(certs: Path) -> None:
    ids = ["a", "b", "c"]
    got: dict[str, list[Message]] = {i: [] for i in ids}
    ts = {i: TcpTransport(i, "127.0.0.1:0", cluster_id="tls", ssl=tls(certs, i)) for i in ids}
    for i in ids:
        await ts[i].start(got[i].append)
    members = {i: ts[i].address for i in ids}
    for t in ts.values():
        t.set_peers(members)
    try:
        for seq in range(50):
            for i in ids:
                ts[i].send([hb(i, j, seq) for j in ids if j != i])
        await wait_until(lambda: all(len(got[i]) == 100 for i in ids))
        for i in ids:
            for j in ids:
                if j != i:
                    assert [m.commit for m in got[i] if m.frm == j] == list(range(50))
    finally:
        for t in ts.values():
            await t.stop()


async def test_client_with_a_cert_from_another_ca_is_refused(certs: Path) -> None:
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1"}, cluster_id="tls", ssl=tls(certs, "b"))
    await b.start(got.append)
    # mallory trusts our CA (so it accepts b's certificate) but its own cert is from another CA
    m_cfg = TlsConfig(str(certs / "mallory.crt"), str(certs / "mallory.key"), str(certs / "ca.crt"))
    a = TcpTransport("a", "127.0.0.1:0", {"b": b.address}, cluster_id="tls", ssl=m_cfg)
    await a.start(lambda m: None)
    good = TcpTransport("c", "127.0.0.1:0", {"b": b.address}, cluster_id="tls", ssl=tls(certs, "c"))
    await good.start(lambda m: None)
    b.set_peers({"a": a.address, "c": good.address})
    try:
        for i in range(10):
            a.send([hb("a", "b", i)])
            await asyncio.sleep(0.02)
        assert got == []
        assert a.stats["sent"] == 0 and a.stats["dropped"] == 10
        # b keeps serving properly authenticated peers
        good.send([hb("c", "b", 1)])
        await wait_until(lambda: len(got) == 1)
    finally:
        await a.stop()
        await b.stop()
        await good.stop()


async def test_server_with_a_cert_from_another_ca_is_refused_by_the_client(certs: Path) -> None:
    got: list[Message] = []
    m_cfg = TlsConfig(str(certs / "mallory.crt"), str(certs / "mallory.key"), str(certs / "ca.crt"))
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1"}, cluster_id="tls", ssl=m_cfg)
    await b.start(got.append)
    a = TcpTransport("a", "127.0.0.1:0", {"b": b.address}, cluster_id="tls", ssl=tls(certs, "a"))
    await a.start(lambda m: None)
    try:
        for i in range(5):
            a.send([hb("a", "b", i)])
            await asyncio.sleep(0.02)
        assert got == [] and a.stats["sent"] == 0
    finally:
        await a.stop()
        await b.stop()


async def test_plaintext_client_to_a_tls_listener_is_refused(certs: Path) -> None:
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1"}, cluster_id="tls", ssl=tls(certs, "b"))
    await b.start(got.append)
    plain = TcpTransport("a", "127.0.0.1:0", {"b": b.address}, cluster_id="tls")
    await plain.start(lambda m: None)
    try:
        for i in range(5):
            plain.send([hb("a", "b", i)])
            await asyncio.sleep(0.02)
        assert got == [] and plain.stats["sent"] == 0
        # a raw plaintext handshake is dropped by the TLS layer too
        host, port = host_port(b.address)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(encode_handshake(Handshake("tls", "a", "b")))
        assert await closed_by_peer(reader)
        await close_writer(writer)
        assert got == []
    finally:
        await plain.stop()
        await b.stop()


async def test_tls_listener_rejects_wrong_cluster_even_with_a_valid_cert(certs: Path) -> None:
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="tls", ssl=tls(certs, "b"))
    await b.start(got.append)
    a = TcpTransport("a", "127.0.0.1:0", {"b": b.address}, cluster_id="other", ssl=tls(certs, "a"))
    await a.start(lambda m: None)
    b.set_peers({"a": a.address})
    try:
        a.send([hb("a", "b", 1)])
        await wait_until(lambda: b.stats["rejected_handshakes"] == 1)
        assert got == []
    finally:
        await a.stop()
        await b.stop()

"""Helpers shared by the transport tests (loopback only, ephemeral ports)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable

from raftlib.codec import HEADER_SIZE, Handshake, decode_handshake_ack, encode_handshake
from raftlib.core.messages import Entry, Message, MessageType
from raftlib.transport import TcpTransport


def hb(frm: str, to: str, seq: int, term: int = 1) -> Message:
    """A small message whose ``commit`` carries a sequence number (to check ordering)."""
    return Message(MessageType.HEARTBEAT, frm, to, term, commit=seq)


def append(frm: str, to: str, seq: int, n: int = 4, size: int = 100) -> Message:
    ents = [Entry(seq * n + i + 1, 1, bytes([i % 256]) * size) for i in range(n)]
    return Message(MessageType.APPEND, frm, to, 1, log_term=1, index=seq * n, entries=ents, commit=seq)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Poll ``cond`` on the loop until it holds; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def dead_address() -> str:
    """A loopback address with nothing listening (a port just released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def open_sockets() -> int:
    """Number of socket file descriptors this process holds (Linux /proc)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free at the time of the call."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def raw_connect(
    address: str, handshake: Handshake | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[bool, str] | None]:
    """Open a plain connection; optionally send a handshake and read the answer."""
    host, port = host_port(address)
    reader, writer = await asyncio.open_connection(host, port)
    answer = None
    if handshake is not None:
        writer.write(encode_handshake(handshake))
        header = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), 5)
        (length,) = struct.unpack_from("<I", header, 4)
        answer = decode_handshake_ack(await reader.readexactly(length))
    return reader, writer, answer


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the other side closes the connection (EOF or reset) within ``timeout``."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return True
    except (ConnectionError, OSError):
        return True
    except asyncio.TimeoutError:
        return False


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def start_pair(
    cluster_a: str = "c1", cluster_b: str = "c1", **kw: object
) -> tuple[TcpTransport, TcpTransport, list[Message], list[Message]]:
    """Two started transports "a" and "b" that know each other."""
    got_a: list[Message] = []
    got_b: list[Message] = []
    a = TcpTransport("a", "127.0.0.1:0", cluster_id=cluster_a, **kw)  # type: ignore[arg-type]
    b = TcpTransport("b", "127.0.0.1:0", cluster_id=cluster_b, **kw)  # type: ignore[arg-type]
    await a.start(got_a.append)
    await b.start(got_b.append)
    a.set_peers({"b": b.address})
    b.set_peers({"a": a.address})
    return a, b, got_a, got_b


def test_parse_address() -> None:
    from raftlib.transport import parse_address

    assert parse_address("127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("7001", ":7001", "host:", "host:x", "host:70000"):
        try:
            parse_address(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")

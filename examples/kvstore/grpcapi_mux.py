"""One client URL for gRPC and the JSON gateway: a listener that sniffs the HTTP/2 preface.

etcd serves both protocols on ``--listen-client-urls`` (cmux). Here each accepted connection (TLS
already terminated by the listener when the URL is ``https``) is looked at before anything is
answered:

* it starts with HTTP/2's client preface ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n`` (every gRPC
  client does): the connection is relayed, bytes both ways with flow control, to the member's
  grpc.aio server on a loopback port;
* anything else is HTTP/1.x: the connection is handed, with the bytes read so far, to the aiohttp
  server of the gateway (its protocol object takes over the same transport).

So TLS, ``--client-cert-auth`` and the address apply to both. (With ``--listen-client-http-urls``
the server does not use this listener: grpc listens on the client URLs itself, without relay.)
With ``http_factory=None`` HTTP/1 connections are closed.

Invariants: a connection that sends nothing decidable within ``SNIFF_TIMEOUT`` is closed; the
relay pauses reading on one side while the other side's write buffer is full, so memory per
connection stays bounded; closing either side closes the other.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kvstore.mux")

_RELAYED_CN: dict[int, str] = {}
"""Local port of a relay's loopback connection -> the client certificate CN of its client."""


def common_name(peercert: Any) -> str | None:
    """The subject CN of an ``SSLObject.getpeercert()`` dict (None without a certificate)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def relayed_common_name(peer: str) -> str | None:
    """The client certificate CN behind a relayed gRPC connection (grpc's ``context.peer()``,
    ``ipv4:127.0.0.1:PORT``), or None."""
    port = peer.rpartition(":")[2]
    return _RELAYED_CN.get(int(port)) if port.isdigit() else None


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SNIFF_TIMEOUT = 10.0


class _Relay(asyncio.Protocol):
    """One direction's receiving end: what arrives is written to ``peer`` (back-pressure aware)."""

    def __init__(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.cn_port: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)

    def eof_received(self) -> bool | None:
        if self.peer.can_write_eof():
            self.peer.write_eof()
            return True  # keep our side open for the other direction
        self.peer.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cn_port is not None:
            _RELAYED_CN.pop(self.cn_port, None)
        self.peer.close()

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.resume_reading()


class SniffProtocol(asyncio.Protocol):
    """Decides per connection: gRPC (relay to ``grpc_port``) or HTTP/1 (hand to ``http_factory``)."""

    def __init__(self, http_factory: Callable[[], asyncio.Protocol] | None, grpc_port: int) -> None:
        self.http_factory = http_factory
        self.grpc_port = grpc_port
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.decided = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(SNIFF_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.decided:  # bytes that raced the hand-over to the relay
            self.buffer += data
            return
        self.buffer += data
        n = min(len(self.buffer), len(PREFACE))
        if self.buffer[:n] != PREFACE[:n]:
            self._decide()
            self._to_http()
        elif len(self.buffer) >= len(PREFACE):
            self._decide()
            self._to_grpc()

    def _decide(self) -> None:
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _to_http(self) -> None:
        assert self.transport is not None
        if self.http_factory is None:
            self.transport.close()
            return
        proto = self.http_factory()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(self.buffer)
        self.buffer = b""

    def _to_grpc(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        down = self.transport
        assert down is not None
        loop = asyncio.get_running_loop()
        try:
            up, _ = await loop.create_connection(lambda: _Relay(down), "127.0.0.1", self.grpc_port)
        except OSError as exc:
            log.warning("gRPC relay: cannot reach the local gRPC server: %r", exc)
            down.close()
            return
        if down.is_closing():
            up.close()
            return
        cn = common_name(down.get_extra_info("peercert"))
        if cn is not None:
            port = int(up.get_extra_info("sockname")[1])
            _RELAYED_CN[port] = cn
            relay_up = up.get_protocol()
            if isinstance(relay_up, _Relay):
                relay_up.cn_port = port
        down.set_protocol(_Relay(up))
        up.write(self.buffer)
        self.buffer = b""
        down.resume_reading()


async def serve(
    host: str,
    port: int,
    *,
    http_factory: Callable[[], asyncio.Protocol] | None,
    grpc_port: int,
    ssl_context: ssl.SSLContext | None,
) -> asyncio.Server:
    """Listen on ``host:port`` and route each connection (see the module docstring)."""
    if ssl_context is not None:
        # gRPC clients need ALPN "h2"; HTTP/1 clients that also offer h2 (curl) get http/1.1,
        # because OpenSSL picks the server's first protocol the client offers.
        ssl_context.set_alpn_protocols(["http/1.1", "h2"])
    loop = asyncio.get_running_loop()
    server: Any = await loop.create_server(
        lambda: SniffProtocol(http_factory, grpc_port), host, port, ssl=ssl_context, reuse_address=True
    )
    return server  # type: ignore[no-any-return]


__all__ = ["PREFACE", "SniffProtocol", "serve"]

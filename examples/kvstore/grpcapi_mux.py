"""One client URL for gRPC and the JSON gateway: a listener that sniffs the HTTP/2 preface.

etcd serves both protocols on ``--listen-client-urls`` (cmux). Here each accepted connection (TLS
already terminated by the listener when the URL is ``https``) is looked at before anything is
answered:

* it starts with HTTP/2's client preface ``PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`` (every gRPC
  client does): the connection, with the bytes read so far, is handed to the member's gRPC server
  (:mod:`examples.kvstore.h2grpc`: its protocol object takes over the same transport);
* anything else is HTTP/1.x: it is handed the same way to the aiohttp server of the gateway.

So TLS, ``--client-cert-auth`` and the address apply to both, and a call costs no relay.  With
``--listen-client-http-urls`` (etcd 3.5's split) the client URLs are served with
``http_factory=None``: HTTP/1 connections are closed there, and TLS offers ALPN ``h2`` only.

Invariant: a connection that sends nothing decidable within ``SNIFF_TIMEOUT`` is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from examples.kvstore.h2grpc.connection import PREFACE  # the one definition of the preface

log = logging.getLogger("kvstore.mux")


def common_name(peercert: Any) -> str | None:
    """The subject CN of an ``SSLObject.getpeercert()`` dict (None without a certificate)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


SNIFF_TIMEOUT = 10.0
LISTEN_BACKLOG = 4096
"""The accept queue (the kernel caps it at net.core.somaxconn), as Go's listeners (etcd) use:
asyncio's default of 100 drops the SYNs of a burst of new clients (256 at once in bench_kv.py),
and a dropped SYN is retried after 1, 3, 7... seconds."""


class SniffProtocol(asyncio.Protocol):
    """Decides per connection: HTTP/2 (to ``grpc_factory``'s protocol) or HTTP/1 (``http_factory``)."""

    def __init__(
        self,
        http_factory: Callable[[], asyncio.Protocol] | None,
        grpc_factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.http_factory = http_factory
        self.grpc_factory = grpc_factory
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.decided = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(SNIFF_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
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
        self._hand_over(self.http_factory)

    def _to_grpc(self) -> None:
        self._hand_over(self.grpc_factory)

    def _hand_over(self, factory: Callable[[], asyncio.Protocol] | None) -> None:
        """The connection's protocol from now on, given the bytes read so far."""
        assert self.transport is not None
        if factory is None:
            self.transport.close()
            return
        proto = factory()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(self.buffer)
        self.buffer = b""


async def serve(
    host: str,
    port: int,
    *,
    http_factory: Callable[[], asyncio.Protocol] | None,
    grpc_factory: Callable[[], asyncio.Protocol],
    ssl_context: ssl.SSLContext | None,
) -> asyncio.Server:
    """Listen on ``host:port`` and route each connection (see the module docstring)."""
    if ssl_context is not None:
        # gRPC clients need ALPN "h2"; HTTP/1 clients that also offer h2 (curl) get http/1.1,
        # because OpenSSL picks the server's first protocol the client offers.
        ssl_context.set_alpn_protocols(["http/1.1", "h2"] if http_factory is not None else ["h2"])
    loop = asyncio.get_running_loop()
    server: Any = await loop.create_server(
        lambda: SniffProtocol(http_factory, grpc_factory), host, port, ssl=ssl_context, reuse_address=True,
        backlog=LISTEN_BACKLOG,
    )
    return server  # type: ignore[no-any-return]


__all__ = ["PREFACE", "SniffProtocol", "serve"]

"""The interface every transport implements, and small helpers they share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from raftlib.core.messages import Message

__all__ = ["STAT_NAMES", "OnMessage", "Transport", "new_stats", "parse_address"]

OnMessage = Callable[[Message], None]
"""Callback a transport calls, on the event loop, for every message it receives."""

STAT_NAMES = (
    "sent",
    "received",
    "dropped",
    "reconnects",
    "bad_frames",
    "rejected_handshakes",
    "bytes_sent",
    "bytes_received",
)
"""Counters every transport keeps in its ``stats`` dict."""


def new_stats() -> dict[str, int]:
    """A fresh ``stats`` dict with every counter of :data:`STAT_NAMES` at zero."""
    return dict.fromkeys(STAT_NAMES, 0)


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6addr]:port"``) into ``(host, port)``.

    >>> parse_address("127.0.0.1:7001")
    ('127.0.0.1', 7001)
    >>> parse_address("[::1]:7001")
    ('::1', 7001)
    """
    host, sep, port_s = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address must be 'host:port', got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad port in address {address!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in address {address!r}")
    return host, port


@runtime_checkable
class Transport(Protocol):
    """Moves :class:`~raftlib.core.messages.Message` objects between nodes.

    * ``start(on_message)`` begins listening (or registering); ``on_message`` is
      called on the event loop for each received message, in order per connection.
    * ``send(messages)`` never blocks and never raises for network errors. It
      coalesces per peer per loop iteration and drops (and counts) messages to
      unknown or unreachable peers: Raft retransmits.
    * ``set_peers({id: "host:port"})`` replaces the peer set at runtime.
    * ``stop()`` closes everything and awaits every task the transport started;
      it is idempotent.
    * ``stats`` holds the counters named in :data:`STAT_NAMES`.
    * Optionally ``flush()`` writes what ``send`` queued right away; the node calls
      it, when present, before it blocks the loop on an fsync.
    """

    @property
    def stats(self) -> dict[str, int]:
        """The counters named in :data:`STAT_NAMES` (an attribute or a property)."""
        ...

    async def start(self, on_message: OnMessage) -> None:
        """Begin receiving; ``on_message`` is called for each message received."""
        ...

    def send(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` for delivery (never blocks, never raises for network errors)."""
        ...

    def set_peers(self, peers: dict[str, str]) -> None:
        """Replace the peer set: node id -> ``"host:port"``."""
        ...

    async def stop(self) -> None:
        """Close the listener and all connections; await every task started. Idempotent."""
        ...

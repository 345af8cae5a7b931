"""In-process transport for tests: same interface as the TCP transport, no sockets.

Messages go through the wire codec by default (``use_codec=True``), so tests
exercise the real encoding; delivery happens on a later loop iteration via
``loop.call_soon``, in order per sender/receiver pair. ``MemoryNetwork`` can
cut links (``partition``) and restore them (``heal``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from raftlib.codec import CodecError, FrameDecoder, encode
from raftlib.core.messages import Message
from raftlib.transport.base import OnMessage, new_stats

__all__ = ["Links", "MemoryNetwork", "MemoryTransport"]

_M = TypeVar("_M")

log = logging.getLogger("raftlib.transport.memory")


class Links(Generic[_M]):
    """Members of an in-process network, by id, and the links cut between them.

    Shared by :class:`MemoryNetwork` (one RaftNode per member) and
    ``raftlib.transport.memory_host.MemoryHostNetwork`` (one RaftHost per member)."""

    def __init__(self) -> None:
        self.members: dict[str, _M] = {}
        self._cut: set[frozenset[str]] = set()

    def partition(self, a: str, b: str) -> None:
        """Cut the link between ``a`` and ``b`` (both directions) until :meth:`heal`."""
        self._cut.add(frozenset((a, b)))

    def isolate(self, member_id: str) -> None:
        """Cut every link of ``member_id`` to the members registered now."""
        for other in self.members:
            if other != member_id:
                self.partition(member_id, other)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Restore the link between ``a`` and ``b``, or every link when called without arguments."""
        if a is None or b is None:
            self._cut.clear()
        else:
            self._cut.discard(frozenset((a, b)))

    def connected(self, a: str, b: str) -> bool:
        """True when messages between ``a`` and ``b`` are delivered (both registered, link not cut)."""
        return a in self.members and b in self.members and frozenset((a, b)) not in self._cut

    def _add(self, member_id: str, t: _M) -> None:
        if member_id in self.members:
            raise ValueError(f"id {member_id!r} already registered on this network")
        self.members[member_id] = t

    def _remove(self, member_id: str, t: _M) -> None:
        if self.members.get(member_id) is t:
            del self.members[member_id]


class MemoryNetwork(Links["MemoryTransport"]):
    """The set of in-process transports that can reach each other, and the links cut between them."""

    @property
    def nodes(self) -> dict[str, MemoryTransport]:
        """Registered transports by node id."""
        return self.members

    def _register(self, t: MemoryTransport) -> None:
        self._add(t.node_id, t)

    def _unregister(self, t: MemoryTransport) -> None:
        self._remove(t.node_id, t)


class MemoryTransport:
    """A :class:`~raftlib.transport.base.Transport` delivering through a :class:`MemoryNetwork`.

    ``peers`` restricts whom this node may send to (and accept from); when it
    is ``None`` every node registered on the network is a peer. Addresses are
    ignored. Messages to unregistered or partitioned nodes are dropped and
    counted, exactly as the TCP transport drops messages to unreachable peers.
    """

    def __init__(
        self,
        node_id: str,
        network: MemoryNetwork,
        peers: Mapping[str, str] | None = None,
        *,
        use_codec: bool = True,
    ) -> None:
        self.node_id = node_id
        self.network = network
        self.use_codec = use_codec
        self.stats: dict[str, int] = new_stats()
        self._peers: set[str] | None = None if peers is None else set(peers) - {node_id}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: OnMessage | None = None
        self._pending: dict[str, list[Message]] = {}
        self._flush_scheduled = False
        self._started = False
        self._stopped = False

    async def start(self, on_message: OnMessage) -> None:
        """Register on the network; ``on_message`` is called for each message delivered."""
        if self._started:
            raise RuntimeError("transport already started")
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self.network._register(self)
        self._started = True

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Restrict the peers to the ids of ``peers`` (addresses are ignored)."""
        self._peers = set(peers) - {self.node_id}

    def send(self, messages: Iterable[Message]) -> None:
        """Queue ``messages``; delivered together on a later loop iteration. Never raises."""
        stats = self.stats
        loop = self._loop
        for m in messages:
            if loop is None or self._stopped or (self._peers is not None and m.to not in self._peers):
                stats["dropped"] += 1
                continue
            self._pending.setdefault(m.to, []).append(m)
        if self._pending and not self._flush_scheduled and loop is not None:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        stats = self.stats
        for to, msgs in pending.items():
            dest = self.network.nodes.get(to)
            if self._stopped or dest is None or not self.network.connected(self.node_id, to):
                stats["dropped"] += len(msgs)
                continue
            if self.use_codec:
                try:
                    payload: bytes | list[Message] = b"".join([encode(m) for m in msgs])
                except CodecError:
                    log.exception("%s: dropping messages that cannot be encoded", self.node_id)
                    stats["dropped"] += len(msgs)
                    continue
                stats["bytes_sent"] += len(payload)
            else:
                payload = msgs
            stats["sent"] += len(msgs)
            assert self._loop is not None
            self._loop.call_soon(dest._deliver, self.node_id, payload)

    def _deliver(self, sender: str, payload: bytes | list[Message]) -> None:
        if self._stopped or self._on_message is None:
            return
        if not self.network.connected(sender, self.node_id):
            self.stats["dropped"] += 1
            return
        if self._peers is not None and sender not in self._peers:
            self.stats["rejected_handshakes"] += 1
            return
        if isinstance(payload, bytes):
            self.stats["bytes_received"] += len(payload)
            try:
                msgs = FrameDecoder().feed(payload)
            except CodecError as exc:  # cannot happen unless the codec is broken; count it like TCP
                self.stats["bad_frames"] += 1
                log.warning("%s: bad frame from %s: %s", self.node_id, sender, exc)
                return
        else:
            msgs = payload
        for m in msgs:
            self.stats["received"] += 1
            try:
                self._on_message(m)
            except Exception:
                log.exception("%s: on_message raised for %r", self.node_id, m)

    async def stop(self) -> None:
        """Unregister from the network; later sends are dropped. Idempotent; starts no tasks."""
        if self._stopped:
            return
        self._stopped = True
        self.stats["dropped"] += sum(len(v) for v in self._pending.values())
        self._pending.clear()
        self.network._unregister(self)

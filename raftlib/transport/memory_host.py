"""In-process twin of the multi-group host transport, for fast tests.

Owns: ``MemoryHostNetwork`` (which hosts can reach each other: ``partition``, ``isolate``,
``heal``) and ``MemoryHostTransport``, with ``HostTransport``'s API (``start``,
``send(group_id, messages)``, ``flush``, ``set_peers``, ``stop``, ``last_heard``,
``group``, ``register_group``, ``on_unknown_group``, ``stats``) and the same dispatch
rules (shared code: ``raftlib.transport.mux.HostTransportBase``).

Invariants: messages of one group from one host to another are delivered in send order,
on a later loop iteration; by default (``use_codec=True``) everything queued for a host
between two flushes travels as group frames through the real codec, decoded by a
``GroupFrameDecoder`` exactly as a TCP receiver would; a cut link drops (and counts) what
is sent over it, checked both when sending and when delivering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from raftlib.codec import CodecError, GroupFrameDecoder, encode, encode_group_frame, group_tag
from raftlib.core.messages import Message
from raftlib.transport.base import new_stats
from raftlib.transport.memory import Links
from raftlib.transport.mux import HostOnMessage, HostTransportBase

__all__ = ["MemoryHostNetwork", "MemoryHostTransport"]

log = logging.getLogger("raftlib.transport.memory_host")

_Batch = tuple[str, list[Message]]


class MemoryHostNetwork(Links["MemoryHostTransport"]):
    """The in-process hosts that can reach each other, and the links cut between them
    (``partition``/``isolate``/``heal`` cut or restore a host pair for every group)."""

    @property
    def hosts(self) -> dict[str, MemoryHostTransport]:
        """Registered host transports by host id."""
        return self.members

    def _register(self, t: MemoryHostTransport) -> None:
        self._add(t.host_id, t)

    def _unregister(self, t: MemoryHostTransport) -> None:
        self._remove(t.host_id, t)


class MemoryHostTransport(HostTransportBase):
    """A host transport delivering through a :class:`MemoryHostNetwork` (no sockets).

    ``peers`` restricts the hosts this one sends to and accepts from (addresses ignored);
    ``None`` makes every registered host a peer. Messages to unregistered, partitioned or
    non-peer hosts are dropped and counted; messages from a non-peer host are refused and
    counted in ``rejected_handshakes``, as the TCP host would refuse its connection.
    """

    def __init__(
        self,
        host_id: str,
        network: MemoryHostNetwork,
        peers: Mapping[str, str] | None = None,
        *,
        use_codec: bool = True,
        on_unknown_group: HostOnMessage | None = None,
    ) -> None:
        super().__init__(on_unknown_group)
        if not host_id or not isinstance(host_id, str):
            raise ValueError("host_id must be a non-empty str")
        self.host_id = host_id
        self.network = network
        self.use_codec = use_codec
        self.stats: dict[str, int] = new_stats()
        self.stats["unknown_group"] = 0
        self.metrics: dict[str, dict[str, int]] = {"handshake_refused": {}, "handshake_refused_by_peer": {}}
        self._peers: set[str] | None = None if peers is None else set(peers) - {host_id}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, list[_Batch]] = {}
        self._flush_scheduled = False
        self._started = False
        self._stopped = False

    @property
    def peers(self) -> dict[str, str]:
        """The peer hosts (addresses are not used in memory: ``mem://<id>``)."""
        ids = self._peers if self._peers is not None else set(self.network.hosts) - {self.host_id}
        return {h: f"mem://{h}" for h in sorted(ids)}

    def known_hosts(self) -> frozenset[str]:
        """Ids of the hosts this one may send to."""
        return frozenset(self.peers)

    async def start(self, on_message: HostOnMessage) -> None:
        """Register on the network; ``on_message(group_id, message)`` gets host-level messages
        (group ``""``) and those of groups registered without a callback."""
        if self._started:
            raise RuntimeError("transport already started")
        self._loop = asyncio.get_running_loop()
        self._host_on_message = on_message
        self.network._register(self)
        self._started = True

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Restrict the peer hosts to the ids of ``peers`` (addresses are ignored)."""
        self._peers = set(peers) - {self.host_id}

    def send(self, group_id: str, messages: Iterable[Message]) -> None:
        """Queue ``messages`` of ``group_id`` for their hosts; delivered on a later loop iteration.

        Never raises: messages to non-peer hosts, after ``stop`` or of an invalid group id are
        dropped and counted.
        """
        stats = self.stats
        loop = self._loop
        per_host: dict[str, list[Message]] = {}
        for m in messages:
            if loop is None or self._stopped or (self._peers is not None and m.to not in self._peers):
                stats["dropped"] += 1
                continue
            lst = per_host.get(m.to)
            if lst is None:
                per_host[m.to] = [m]
            else:
                lst.append(m)
        if not per_host:
            return
        try:
            group_tag(group_id)
        except CodecError as exc:
            n = sum(map(len, per_host.values()))
            stats["dropped"] += n
            log.error("%s: dropping %d message(s) of an invalid group id: %s", self.host_id, n, exc)
            return
        for to, msgs in per_host.items():
            self._pending.setdefault(to, []).append((group_id, msgs))
        if not self._flush_scheduled and loop is not None:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def flush(self) -> None:
        """Hand everything queued to the network now (one delivery per destination host)."""
        if self._flush_scheduled:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        stats = self.stats
        for to, batches in pending.items():
            n = sum(len(msgs) for _, msgs in batches)
            dest = self.network.hosts.get(to)
            if self._stopped or dest is None or not self.network.connected(self.host_id, to):
                stats["dropped"] += n
                continue
            payload: bytes | list[_Batch]
            if self.use_codec:
                try:
                    payload = b"".join(
                        [encode_group_frame(group_tag(g), [encode(m) for m in msgs]) for g, msgs in batches]
                    )
                except CodecError:
                    log.exception("%s: dropping messages that cannot be encoded", self.host_id)
                    stats["dropped"] += n
                    continue
                stats["bytes_sent"] += len(payload)
            else:
                payload = batches
            stats["sent"] += n
            assert self._loop is not None
            self._loop.call_soon(dest._receive, self.host_id, payload, n)

    def _receive(self, sender: str, payload: bytes | list[_Batch], n: int) -> None:
        if self._stopped:
            return
        stats = self.stats
        if not self.network.connected(sender, self.host_id):
            stats["dropped"] += n
            return
        if self._peers is not None and sender not in self._peers:
            stats["rejected_handshakes"] += 1
            return
        assert self._loop is not None
        self._heard[sender] = self._loop.time()
        if isinstance(payload, bytes):
            stats["bytes_received"] += len(payload)
            try:
                batches = GroupFrameDecoder().feed(payload)
            except CodecError as exc:  # cannot happen unless the codec is broken; handled like TCP
                stats["bad_frames"] += 1
                log.warning("%s: bad frame from %s: %s", self.host_id, sender, exc)
                batches = list(exc.groups)  # the valid frames before the bad one are still delivered
        else:
            batches = payload
        for group_id, msgs in batches:
            self._deliver(group_id, msgs)

    async def stop(self) -> None:
        """Unregister from the network; later sends are dropped. Idempotent; starts no tasks."""
        if self._stopped:
            return
        self._stopped = True
        self.stats["dropped"] += sum(len(msgs) for bs in self._pending.values() for _, msgs in bs)
        self._pending.clear()
        self.network._unregister(self)

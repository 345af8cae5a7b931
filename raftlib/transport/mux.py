"""Many Raft groups over one connection per peer host (multi-raft transport).

Owns: ``HostTransport``, the TCP transport of a process hosting many Raft groups
(``raftlib.RaftHost``); the group registry and dispatch it shares with its in-process twin
(``raftlib.transport.memory_host``); and ``GroupTransport``, the per-group adapter that
gives a ``RaftNode`` the single-group ``Transport`` interface on top of a host.

A host's id is its node id in every group it serves, so a message's ``to`` names the peer
host. Every message sent to a peer host, whatever its group, travels on that host's one
outgoing connection inside *group frames* (``raftlib.codec``: a group id, then the
message frames of that group); one ``send(group_id, messages)`` call makes at most one
group frame per destination host, and everything queued for a host between two flushes
leaves in one socket write. The connection machinery (handshake with cluster id, shared
secret and TLS identity checks, bounded queues, back-off, stats and metrics) is
``TcpTransport``'s own: this module only changes what is framed and how it is dispatched.

Invariants: messages of one group sent by one host to another arrive in the order they
were sent (one ordered connection, frames written in send order); a frame for a group
nobody registered is counted (``stats["unknown_group"]``) and handed to the
``on_unknown_group`` hook, never delivered elsewhere and never fatal to the connection;
a multi-group host and a single-group ``TcpTransport`` refuse each other at the
handshake (reason ``protocol``), so neither ever sees the other's frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from raftlib.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    HOST_GROUP,
    HOST_PROTOCOL,
    CodecError,
    GroupFrameDecoder,
    encode,
    group_header,
    group_tag,
)
from raftlib.core.messages import Message
from raftlib.transport.base import OnMessage
from raftlib.transport.tcp import _READ_SIZE, TcpTransport, _Peer
from raftlib.transport.tls import TlsConfig

__all__ = [
    "GroupTransport",
    "HostOnMessage",
    "HostTransport",
    "HostTransportBase",
    "validate_group_id",
]

log = logging.getLogger("raftlib.transport.mux")

HostOnMessage = Callable[[str, Message], None]
"""Callback of a host transport: ``(group id, message)``."""

_MAX_TAGS = 65536  # cached group tags; cleared (and rebuilt on demand) beyond this


def validate_group_id(group_id: object) -> str:
    """Return ``group_id`` if it may name a Raft group (a non-empty ``str`` of at most 255 UTF-8
    bytes); raise ``ValueError`` otherwise. ``""`` is reserved for host-level messages."""
    if type(group_id) is not str:
        raise ValueError(f"group id must be a str, not {type(group_id).__name__}")
    if group_id == HOST_GROUP:
        raise ValueError('group id "" is reserved for host-level messages')
    try:
        group_tag(group_id)
    except CodecError as exc:
        raise ValueError(str(exc)) from None
    return group_id


class HostTransportBase:
    """Group registry, dispatch and liveness bookkeeping shared by the TCP and in-memory hosts.

    Dispatch of a received message of group ``g``:

    * ``g`` registered with a callback (``register_group(g, cb)``, or ``group(g).start(cb)``):
      ``cb(message)``;
    * ``g == ""`` (host-level), or ``g`` registered without a callback: the host's
      ``on_message(g, message)`` given to ``start``;
    * otherwise ``stats["unknown_group"]`` is counted and ``on_unknown_group(g, message)``
      is called when set; if that hook registers ``g`` (synchronously), the message and
      the rest of its frame are delivered to the new registration.

    Subclasses set ``host_id`` and ``stats`` (which must hold ``received`` and
    ``unknown_group``) and call :meth:`_deliver` for every decoded group frame.
    """

    host_id: str
    stats: dict[str, int]
    metrics: dict[str, dict[str, int]]

    def __init__(self, on_unknown_group: HostOnMessage | None = None) -> None:
        self.on_unknown_group: HostOnMessage | None = on_unknown_group
        """Called as ``on_unknown_group(group_id, message)`` for a message of a group not registered here."""
        self._groups: dict[str, OnMessage | None] = {}
        self._host_on_message: HostOnMessage | None = None
        self._heard: dict[str, float] = {}

    # ------------------------------------------------------------------ groups

    def register_group(self, group_id: str, on_message: OnMessage | None = None) -> None:
        """Serve ``group_id`` here: its messages go to ``on_message(message)``, or, when it is
        ``None``, to the host's ``on_message(group_id, message)``.

        Raises ``ValueError`` for an invalid or reserved id and when the group is already
        registered (unregister it first).
        """
        validate_group_id(group_id)
        if group_id in self._groups:
            raise ValueError(f"group {group_id!r} is already registered on host {self.host_id!r}")
        self._groups[group_id] = on_message

    def unregister_group(self, group_id: str) -> bool:
        """Stop serving ``group_id`` (its later messages are ``unknown_group``); False if not served."""
        return self._groups.pop(group_id, _ABSENT) is not _ABSENT

    @property
    def groups(self) -> frozenset[str]:
        """The groups registered on this host."""
        return frozenset(self._groups)

    def group(self, group_id: str) -> GroupTransport:
        """A single-group :class:`~raftlib.transport.base.Transport` for ``group_id`` over this host
        (``RaftNode(..., transport=host.group("g1"))``); its ``start`` registers the group."""
        return GroupTransport(self, validate_group_id(group_id))

    def last_heard(self, host_id: str) -> float | None:
        """``loop.time()`` when bytes last arrived from ``host_id`` (a liveness input), or None if never."""
        return self._heard.get(host_id)

    # ------------------------------------------------------------------ to subclasses

    async def start(self, on_message: HostOnMessage) -> None:
        """Begin receiving; host-level messages go to ``on_message(group_id, message)``
        (overridden by each host transport)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Close every connection and await every task this transport started; idempotent
        (overridden by each host transport)."""
        raise NotImplementedError

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Replace the peer hosts, ``{host id: "host:port"}`` (overridden by each host transport)."""
        raise NotImplementedError

    def known_hosts(self) -> frozenset[str]:
        """Ids of the peer hosts messages can be sent to (overridden by each host transport)."""
        raise NotImplementedError

    def send(self, group_id: str, messages: Iterable[Message]) -> None:
        """Queue ``messages`` of ``group_id`` for their hosts (overridden by each host transport)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Write what is queued now (overridden by each host transport)."""
        raise NotImplementedError

    def _deliver(self, group_id: str, messages: list[Message]) -> None:
        """Hand one decoded group frame's messages to their group (rules in the class docstring)."""
        cb = self._groups.get(group_id, _ABSENT)
        if cb is _ABSENT and group_id != HOST_GROUP:
            self._deliver_unknown(group_id, messages)
            return
        if cb is None or cb is _ABSENT:
            host_cb = self._host_on_message
            if host_cb is None:  # not started: nobody to give host-level messages to
                self.stats["dropped"] += len(messages)
                return
            self.stats["received"] += len(messages)
            for m in messages:
                try:
                    host_cb(group_id, m)
                except Exception:
                    log.exception("%s: on_message raised for group %r, %r", self.host_id, group_id, m)
            return
        self.stats["received"] += len(messages)
        for m in messages:
            try:
                cb(m)
            except Exception:
                log.exception("%s: on_message of group %r raised for %r", self.host_id, group_id, m)

    def _deliver_unknown(self, group_id: str, messages: list[Message]) -> None:
        stats = self.stats
        for i, m in enumerate(messages):
            stats["unknown_group"] += 1
            hook = self.on_unknown_group
            if hook is not None:
                try:
                    hook(group_id, m)
                except Exception:
                    log.exception("%s: on_unknown_group raised for group %r", self.host_id, group_id)
            if group_id in self._groups:  # the hook created the group: it gets this message and the rest
                self._deliver(group_id, messages[i:])
                return
        log.debug("%s: %d message(s) for unknown group %r dropped", self.host_id, len(messages), group_id)


class _Absent:
    """Marker of a group missing from the registry (``None`` means 'registered, no callback')."""


_ABSENT: Any = _Absent()


class GroupTransport:
    """One group's view of a host transport: the single-group ``Transport`` protocol RaftNode uses.

    ``start(on_message)`` registers the group on the host (the host must be started for
    messages to flow; it may be started later); ``send``/``flush`` go through the host's
    per-host queues; ``set_peers`` only checks that the group's members are hosts the
    host knows (addresses are the host's business: ``HostTransport.set_peers``) and logs
    a warning for any that is not; ``stop()`` unregisters the group and leaves the host
    and its connections running. ``stats`` and ``metrics`` are the host's dicts (shared by
    every group).
    """

    def __init__(self, host: HostTransportBase, group_id: str) -> None:
        self.host = host
        self.group_id = group_id
        self._started = False
        self._stopped = False
        self._warned: set[str] = set()

    @property
    def stats(self) -> dict[str, int]:
        """The host transport's counters (shared by every group on the host)."""
        return self.host.stats

    @property
    def metrics(self) -> dict[str, dict[str, int]]:
        """The host transport's handshake refusal counts (connections are the host's, not the group's)."""
        return self.host.metrics

    async def start(self, on_message: OnMessage) -> None:
        """Register the group on the host; ``on_message`` receives its messages."""
        if self._started:
            raise RuntimeError(f"group transport {self.group_id!r} already started")
        self.host.register_group(self.group_id, on_message)
        self._started = True

    def send(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` of this group for their hosts (never raises for the network)."""
        if self._stopped:
            n = sum(1 for _ in messages)
            self.host.stats["dropped"] += n
            return
        self.host.send(self.group_id, messages)

    def flush(self) -> None:
        """Write everything queued on the host now (every group's messages, one write per host)."""
        self.host.flush()

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Check the group's members are known hosts (warn once per unknown id); addresses are ignored."""
        known = self.host.known_hosts()
        for nid in peers:
            if nid != self.host.host_id and nid not in known and nid not in self._warned:
                self._warned.add(nid)
                log.warning(
                    "%s: group %r has member %r, which is not a peer host; its messages are dropped "
                    "until the host's set_peers() adds it",
                    self.host.host_id,
                    self.group_id,
                    nid,
                )

    async def stop(self) -> None:
        """Unregister the group (the host keeps running). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            self.host.unregister_group(self.group_id)


class _MuxTcp(TcpTransport):
    """``TcpTransport`` carrying group frames: the host protocol in the hello, group-framed
    queues, a group-frame receive loop. Handshake, TLS, secret, back-off and flushing are
    inherited unchanged."""

    _protocol = HOST_PROTOCOL

    def __init__(self, owner: HostTransport, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        self._tags: dict[str, bytes] = {}
        self.stats["unknown_group"] = 0

    def send(self, messages: Iterable[Message]) -> None:
        """Plain sends are host-level messages (group ``""``)."""
        self.send_group(HOST_GROUP, messages)

    def send_group(self, group_id: str, messages: Iterable[Message]) -> None:
        """Queue ``messages`` of ``group_id``: one group frame per destination host per call."""
        stats = self.stats
        loop = self._loop
        if loop is None or self._closing:
            for _ in messages:
                stats["dropped"] += 1
            return
        tag = self._tags.get(group_id)
        if tag is None:
            try:
                tag = group_tag(group_id)
            except CodecError as exc:
                n = sum(1 for _ in messages)
                stats["dropped"] += n
                log.error("%s: dropping %d message(s) of an invalid group id: %s", self.node_id, n, exc)
                return
            if len(self._tags) >= _MAX_TAGS:
                self._tags.clear()
            self._tags[group_id] = tag
        now = loop.time()
        peers = self._peers
        max_n = self.max_queue_messages
        max_b = self.max_queue_bytes
        batches: dict[_Peer, list[bytes]] = {}
        for m in messages:
            p = peers.get(m.to)
            if p is None or p.down_until > now:
                stats["dropped"] += 1
                continue
            try:
                frame = encode(m)
            except CodecError:
                log.exception("%s: dropping a message that cannot be encoded: %r", self.node_id, m)
                stats["dropped"] += 1
                continue
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = []
            if p.count + len(batch) >= max_n or p.nbytes + len(frame) > max_b:
                stats["dropped"] += 1
                continue
            batch.append(frame)
            p.nbytes += len(frame)  # reserved now, so the byte bound holds within this call too
        if not batches:
            return
        dirty = self._dirty
        for p, frames in batches.items():
            if not frames:
                continue
            self._pack(p, tag, frames)
            if not p.scheduled:
                p.scheduled = True
                dirty.append(p)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _pack(self, p: _Peer, tag: bytes, frames: list[bytes]) -> None:
        """Queue ``frames`` for ``p`` as group frames of at most ``max_frame_bytes`` each (one unless
        the batch is huge; a single bigger message gets a frame of its own). Header, tag and
        message frames are queued as separate parts: the flush joins them in one copy."""
        limit = self.max_frame_bytes - len(tag)
        overhead = HEADER_SIZE + len(tag)
        queue = p.frames
        size = sum(map(len, frames))
        if size <= limit:
            queue.append(group_header(len(tag) + size))
            queue.append(tag)
            queue.extend(frames)
            p.count += len(frames)
            p.nbytes += overhead
            return
        chunk: list[bytes] = []
        size = 0
        for f in [*frames, b""]:  # b"": the sentinel that closes the last chunk
            if chunk and (not f or size + len(f) > limit):
                queue.append(group_header(len(tag) + size))
                queue.append(tag)
                queue.extend(chunk)
                p.count += len(chunk)
                p.nbytes += overhead
                chunk, size = [], 0
            if f:
                chunk.append(f)
                size += len(f)

    async def _receive_loop(self, reader: asyncio.StreamReader, sender: str, peer: object) -> None:
        decoder = GroupFrameDecoder(self.max_frame_bytes)
        stats = self.stats
        owner = self._owner
        deliver = owner._deliver
        heard = owner._heard
        clock = asyncio.get_running_loop().time
        me = self.node_id
        heard[sender] = clock()
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                log.debug("%s: connection from %s closed", me, sender)
                return
            heard[sender] = clock()
            stats["bytes_received"] += len(data)
            bad: CodecError | None = None
            try:
                batches = decoder.feed(data)
            except CodecError as exc:
                bad = exc
                batches = list(exc.groups)  # the valid frames before the bad one are still delivered
            for group_id, messages in batches:
                for m in messages:
                    if m.frm != sender or m.to != me:
                        stats["bad_frames"] += 1
                        log.warning(
                            "%s: closing connection from %s: message %s->%s of group %r does not match "
                            "the handshake",
                            me,
                            sender,
                            m.frm,
                            m.to,
                            group_id,
                        )
                        return
                deliver(group_id, messages)
            if bad is not None:
                stats["bad_frames"] += 1
                log.warning("%s: closing connection from %s (%s): bad frame: %s", me, sender, peer, bad)
                return


class HostTransport(HostTransportBase):
    """The transport of a multi-group host: one listener, one outgoing connection per peer host.

    ``host_id`` is this host's node id in every group; ``peers`` maps peer host ids to
    ``"host:port"`` for all groups together. ``cluster_id``, ``ssl``, ``peer_secret`` and
    the keyword ``tuning`` (``max_frame_bytes``, ``max_queue_messages``,
    ``max_queue_bytes``, ``backoff_initial``, ``backoff_max``, ``connect_timeout``,
    ``handshake_timeout``, ``user_timeout``, ``warning_interval``, ``rng``) mean exactly
    what they mean for :class:`~raftlib.transport.tcp.TcpTransport`; queue bounds are per
    peer host. ``on_unknown_group(group_id, message)`` is called for messages of groups
    not registered here (see :class:`HostTransportBase` for the dispatch rules).

    ``stats`` has ``TcpTransport``'s counters (messages, not frames) plus
    ``unknown_group``; ``metrics`` its handshake refusal counts.
    """

    def __init__(
        self,
        host_id: str,
        listen: str,
        peers: Mapping[str, str] | None = None,
        *,
        cluster_id: str,
        ssl: TlsConfig | None = None,
        peer_secret: bytes | str | None = None,
        on_unknown_group: HostOnMessage | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        **tuning: Any,
    ) -> None:
        super().__init__(on_unknown_group)
        if not host_id or not isinstance(host_id, str):
            raise ValueError("host_id must be a non-empty str")
        self.host_id = host_id
        self._tcp = _MuxTcp(
            self,
            host_id,
            listen,
            peers,
            cluster_id=cluster_id,
            ssl=ssl,
            peer_secret=peer_secret,
            max_frame_bytes=max_frame_bytes,
            **tuning,
        )
        self.stats: dict[str, int] = self._tcp.stats
        self.metrics: dict[str, dict[str, int]] = self._tcp.metrics

    @property
    def address(self) -> str:
        """The address actually listened on (``"host:port"``), once started."""
        return self._tcp.address

    @property
    def peers(self) -> dict[str, str]:
        """The current peer hosts (host id -> address)."""
        return self._tcp.peers

    @property
    def authenticates_with_secret(self) -> bool:
        """Whether peer hosts must prove the shared secret."""
        return self._tcp.authenticates_with_secret

    def known_hosts(self) -> frozenset[str]:
        """Ids of the peer hosts (see :meth:`set_peers`)."""
        return frozenset(self._tcp._peers)

    async def start(self, on_message: HostOnMessage) -> None:
        """Listen; ``on_message(group_id, message)`` receives host-level messages (group ``""``) and
        those of groups registered without a callback."""
        self._host_on_message = on_message
        await self._tcp.start(_refuse_plain)

    def send(self, group_id: str, messages: Iterable[Message]) -> None:
        """Queue ``messages`` of ``group_id`` (``""``: host-level) for their hosts (``message.to``).

        Never blocks, never raises: messages to unknown hosts, hosts in back-off, beyond a
        host's queue bound, unencodable ones or those of an invalid group id are dropped and
        counted in ``stats["dropped"]``. Written at the end of this loop iteration (or at
        :meth:`flush`) together with every other group's messages for the same host.
        """
        self._tcp.send_group(group_id, messages)

    def flush(self) -> None:
        """Write everything queued now: one write per peer host connection."""
        self._tcp.flush()

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Replace the peer hosts (host id -> ``"host:port"``) for every group together."""
        self._tcp.set_peers(peers)

    async def stop(self) -> None:
        """Close the listener and every connection; await every task. Idempotent."""
        await self._tcp.stop()


def _refuse_plain(message: Message) -> None:  # pragma: no cover - group frames never reach it
    raise AssertionError(f"a multi-group host received an ungrouped message: {message!r}")

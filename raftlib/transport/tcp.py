"""TCP transport (asyncio streams, optional mutual TLS).

Each ordered pair of nodes uses its own TCP connection: a node *dials* each
peer it sends to (opened lazily on the first send) and only writes on that
connection; it *accepts* connections from peers and only reads from them (as
etcd's stream types do). So two nodes talking both ways hold two connections.

Connection set-up (see ``docs/transport.md``)::

    dialler -> acceptor   hello: protocol version, cluster id, sender id, receiver id
                          (+ auth scheme and the dialler's nonce when a shared secret is configured)
    acceptor -> dialler   answer: ok, or refused with a reason (then the acceptor closes)
    with a shared secret, instead of "ok":
    acceptor -> dialler   challenge: the acceptor's nonce
    dialler -> acceptor   proof: HMAC over both nonces, cluster id and both node ids
    acceptor -> dialler   ok + the acceptor's own proof (the dialler checks it), or refused

The acceptor refuses a wrong protocol version, a different cluster id, a sender
that is not one of its peers, a receiver id that is not its own, a TLS
certificate that does not name the claimed member, a missing, unexpected or
wrong shared-secret proof; the dialler refuses an acceptor whose certificate or
proof is wrong. Every refusal is counted (``rejected_handshakes`` and
``metrics["handshake_refused"][reason]``; the refused side counts
``metrics["handshake_refused_by_peer"][reason]``) and logged at WARNING once per
peer and reason (then at most every ``warning_interval``; DEBUG otherwise). The
secret itself never travels (see ``raftlib.transport.peerauth``). After the handshake every frame on
the connection is a message whose ``frm`` must be the handshake's sender and
whose ``to`` must be this node; anything else (garbage, an oversized frame, a
spoofed sender) closes the connection, is logged and counted in ``bad_frames``.

Sending never blocks: ``send`` encodes and appends frames to the peer's
bounded queue and one ``loop.call_soon`` callback writes all of a peer's
frames with a single ``write``. While a connection is being set up frames wait
in that queue (up to ``max_queue_messages`` / ``max_queue_bytes``; beyond that
*new* messages are dropped). After a failed attempt the peer is in back-off
(capped exponential, with jitter) and its messages are dropped until the
back-off ends; the next send then dials again. When the kernel cannot keep up
(a slow reader), frames that would take the socket's write buffer beyond
``max_queue_bytes`` are dropped. Every drop is counted in ``stats["dropped"]``.

The multi-group host transport (``raftlib.transport.mux``) reuses this class: it
changes only the hello's protocol number (``_protocol``), what a queue entry holds
(group frame parts; ``_Peer.count`` counts messages, not entries) and the receive loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket as _socket
import ssl as _ssl
import time
from collections.abc import Iterable, Mapping, Sequence

from raftlib.codec import (
    ANSWER_ACCEPT,
    ANSWER_ACCEPT_PROVEN,
    ANSWER_CHALLENGE,
    ANSWER_PROOF,
    ANSWER_REFUSE,
    AUTH_HMAC_SHA256,
    AUTH_NONCE_BYTES,
    AUTH_NONE,
    DEFAULT_MAX_FRAME_BYTES,
    FLAG_HANDSHAKE,
    HEADER_SIZE,
    HOST_PROTOCOL,
    WIRE_VERSION,
    CodecError,
    FrameDecoder,
    Handshake,
    decode_handshake,
    decode_handshake_answer,
    encode,
    encode_handshake,
    encode_handshake_ack,
    encode_handshake_answer,
    parse_header,
)
from raftlib.core.messages import Message
from raftlib.transport.base import OnMessage, new_stats, parse_address
from raftlib.transport.peerauth import ACCEPTOR, DIALLER, PeerSecret
from raftlib.transport.tls import TlsConfig

__all__ = ["REFUSAL_REASONS", "TcpTransport"]

REFUSAL_REASONS = (
    "protocol",
    "cluster_id",
    "receiver",
    "unknown_sender",
    "peer_identity",
    "secret_missing",
    "secret_unexpected",
    "secret_mismatch",
)
"""Why a handshake is refused: the keys of ``TcpTransport.metrics["handshake_refused"]``.

``protocol``: a wire or auth version we do not speak; ``cluster_id``: another cluster;
``receiver``: the connection was meant for another node id; ``unknown_sender``: not in
our peer set; ``peer_identity``: the TLS certificate does not name the member;
``secret_missing``: the other side did not prove the shared secret we require;
``secret_unexpected``: it uses a shared secret and we have none; ``secret_mismatch``:
its proof is wrong (different secrets, or a replayed or forged handshake).
A refusal travels as ``"<reason>: <detail>"``; ``metrics["handshake_refused_by_peer"]``
also has ``other`` for a refusal text without a known reason.
"""

_MAX_LOG_KEYS = 1024

log = logging.getLogger("raftlib.transport.tcp")

_MAX_HANDSHAKE_BYTES = 64 * 1024
_READ_SIZE = 256 * 1024
_STREAM_LIMIT = 256 * 1024

# What a failed connection attempt or a broken connection can raise.
_NET_ERRORS = (
    OSError,
    EOFError,
    asyncio.TimeoutError,
    asyncio.IncompleteReadError,
    CodecError,
    _ssl.SSLError,
)


class _Refused(Exception):
    """The peer answered our handshake with a refusal."""


class _Refusing(Exception):
    """We refuse the peer we dialled (``reason`` is one of :data:`REFUSAL_REASONS`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _reason_of(text: str) -> str:
    """The reason code a refusal text starts with (``other`` when it names none)."""
    code = text.partition(":")[0]
    return code if code in REFUSAL_REASONS else "other"


class _Peer:
    """Outgoing side of one peer: its queue, connection and back-off state."""

    __slots__ = (
        "address",
        "connected_once",
        "count",
        "down_until",
        "failures",
        "frames",
        "last_warning",
        "nbytes",
        "node_id",
        "scheduled",
        "task",
        "writer",
    )

    def __init__(self, node_id: str, address: str) -> None:
        self.node_id = node_id
        self.address = address
        self.frames: list[bytes] = []
        self.count = 0  # messages in ``frames`` (a multi-group host packs several in one frame)
        self.nbytes = 0
        self.scheduled = False
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.down_until = 0.0
        self.failures = 0
        self.last_warning = -1e18
        self.connected_once = False


class TcpTransport:
    """A :class:`~raftlib.transport.base.Transport` over TCP (optionally mutual TLS).

    ``listen`` is ``"host:port"`` (port 0 picks a free port; read ``address``
    after :meth:`start`). ``peers`` maps node ids to ``"host:port"`` (our own
    id, if present, is ignored). ``cluster_id`` must be the same on every node.
    ``peer_secret`` (bytes or str, at least 16 bytes; the same on every node) makes
    peers prove, both ways, that they hold it (HMAC challenge/response; the secret
    never travels); ``None`` keeps the cluster-id-only handshake, and the two
    settings refuse each other. A bad value raises :class:`~raftlib.errors.ConfigError`.
    ``rng`` supplies the back-off jitter (inject a seeded one for reproducible tests).

    ``metrics`` holds ``handshake_refused`` (refusals this node made) and
    ``handshake_refused_by_peer`` (refusals it received), each a dict of counts by reason.
    """

    _protocol: int = WIRE_VERSION
    """Protocol number sent and required in the hello (a multi-group host uses its own)."""

    def __init__(
        self,
        node_id: str,
        listen: str,
        peers: Mapping[str, str] | None = None,
        *,
        cluster_id: str,
        ssl: TlsConfig | None = None,
        peer_secret: bytes | str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_queue_messages: int = 4096,
        max_queue_bytes: int = 64 * 1024 * 1024,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 2.0,
        handshake_timeout: float = 5.0,
        user_timeout: float = 3.0,
        warning_interval: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if max_frame_bytes <= 0 or max_queue_messages <= 0 or max_queue_bytes <= 0:
            raise ValueError("max_frame_bytes, max_queue_messages and max_queue_bytes must be positive")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        parse_address(listen)  # ValueError now rather than at start()
        self._secret = PeerSecret(peer_secret) if peer_secret is not None else None
        self.node_id = node_id
        self.listen = listen
        self.cluster_id = cluster_id
        self.tls = ssl
        self.max_frame_bytes = max_frame_bytes
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.user_timeout = user_timeout
        self.warning_interval = warning_interval
        self.stats: dict[str, int] = new_stats()
        self.metrics: dict[str, dict[str, int]] = {
            "handshake_refused": dict.fromkeys(REFUSAL_REASONS, 0),
            "handshake_refused_by_peer": dict.fromkeys((*REFUSAL_REASONS, "other"), 0),
        }
        # (direction, peer, reason) -> [time of the last WARNING, refusals since]
        self._refusal_log: dict[tuple[str, str, str], list[float]] = {}
        self._rng = rng if rng is not None else random.Random()
        self._peers: dict[str, _Peer] = {}
        self._server_ctx: _ssl.SSLContext | None = None
        self._client_ctx: _ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._on_message: OnMessage | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._incoming: dict[asyncio.StreamWriter, str | None] = {}
        self._dirty: list[_Peer] = []
        self._flush_scheduled = False
        self._closing = False
        self._stopped: asyncio.Future[None] | None = None
        self._address: str | None = None
        self.set_peers(peers or {})

    # ------------------------------------------------------------------ public API

    @property
    def address(self) -> str:
        """The address actually listened on (``"host:port"``), once started."""
        if self._address is None:
            raise RuntimeError("transport not started")
        return self._address

    async def start(self, on_message: OnMessage) -> None:
        """Listen on ``listen``; ``on_message`` is called on the loop for each message received."""
        if self._server is not None or self._closing:
            raise RuntimeError("transport already started (or stopped)")
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        if self.tls is not None:
            self._server_ctx = self.tls.server_context()
            self._client_ctx = self.tls.client_context()
        host, port = parse_address(self.listen)
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            ssl=self._server_ctx,
            limit=_STREAM_LIMIT,
            ssl_handshake_timeout=self.handshake_timeout if self._server_ctx is not None else None,
        )
        sockname = self._server.sockets[0].getsockname()
        h = sockname[0]
        self._address = f"[{h}]:{sockname[1]}" if ":" in h else f"{h}:{sockname[1]}"
        log.debug("%s listening on %s (tls=%s)", self.node_id, self._address, self.tls is not None)

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Replace the peer set (node id -> ``"host:port"``); connections to removed or moved
        peers are closed, and so are incoming connections from removed peers."""
        for addr in peers.values():
            parse_address(addr)  # validate early, raise ValueError on nonsense
        wanted = {nid: addr for nid, addr in peers.items() if nid != self.node_id}
        for nid, p in list(self._peers.items()):
            if wanted.get(nid) != p.address:
                del self._peers[nid]
                self._retire_peer(p)
        for nid, addr in wanted.items():
            if nid not in self._peers:
                self._peers[nid] = _Peer(nid, addr)
        for w, sender in list(self._incoming.items()):
            if sender is not None and sender not in wanted:
                log.info("%s: closing incoming connection from removed peer %s", self.node_id, sender)
                w.close()

    @property
    def authenticates_with_secret(self) -> bool:
        """Whether peers must prove the shared secret (``peer_secret`` was given)."""
        return self._secret is not None

    @property
    def peers(self) -> dict[str, str]:
        """The current peer set (node id -> address)."""
        return {nid: p.address for nid, p in self._peers.items()}

    def send(self, messages: Iterable[Message]) -> None:
        """Queue ``messages`` for their peers; written together once per loop iteration.

        Never blocks and never raises for network conditions: messages to
        unknown peers, to peers in back-off, beyond a peer's queue bound, or
        that cannot be encoded are dropped and counted in ``stats["dropped"]``.
        """
        stats = self.stats
        loop = self._loop
        if loop is None or self._closing:
            for _ in messages:
                stats["dropped"] += 1
            return
        now = loop.time()
        peers = self._peers
        dirty = self._dirty
        max_n = self.max_queue_messages
        max_b = self.max_queue_bytes
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
            if p.count >= max_n or p.nbytes + len(frame) > max_b:
                stats["dropped"] += 1
                continue
            p.frames.append(frame)
            p.count += 1
            p.nbytes += len(frame)
            if not p.scheduled:
                p.scheduled = True
                dirty.append(p)
        if dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def flush(self) -> None:
        """Write the frames queued so far now, not at the end of this loop iteration.

        :class:`~raftlib.node.RaftNode` calls this before it blocks the loop on an
        inline fsync, so a leader's appends reach the followers while its own disk
        write runs (Raft thesis §10.2.1: the leader may write its log in parallel
        with replication) instead of after it.
        """
        if self._flush_scheduled:
            self._flush()

    async def stop(self) -> None:
        """Close the listener and every connection; cancel and await every task. Idempotent."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        self._closing = True
        try:
            if self._server is not None:
                self._server.close()
            writers: list[asyncio.StreamWriter] = list(self._incoming)
            for p in self._peers.values():
                self._drop_queue(p)
                if p.writer is not None:
                    writers.append(p.writer)
            for w in writers:
                w.close()
            while self._tasks:
                tasks = list(self._tasks)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._tasks.difference_update(tasks)
            for w in writers:
                await self._wait_closed(w)
            if self._server is not None:
                await self._server.wait_closed()
        finally:
            self._stopped.set_result(None)
        log.debug("%s stopped: %s", self.node_id, self.stats)

    # ------------------------------------------------------------------ sending

    def _drop_queue(self, p: _Peer) -> None:
        if p.frames:
            self.stats["dropped"] += p.count
            p.frames = []
            p.count = 0
            p.nbytes = 0

    def _retire_peer(self, p: _Peer) -> None:
        self._drop_queue(p)
        if p.task is not None:
            p.task.cancel()  # still awaited by stop() through self._tasks
        if p.writer is not None:
            p.writer.close()
            p.writer = None

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        stats = self.stats
        for p in dirty:
            p.scheduled = False
            if not p.frames or self._peers.get(p.node_id) is not p:
                continue
            w = p.writer
            if w is None:
                if p.task is None and not self._closing:
                    self._start_task(self._dial(p), p)
                continue  # frames wait (bounded) until the handshake completes
            if w.is_closing():
                self._drop_queue(p)  # the connection is going away; its watcher will clean up
                continue
            transport = w.transport
            if transport.get_write_buffer_size() + p.nbytes > self.max_queue_bytes:
                self._drop_queue(p)  # slow reader: never let the write buffer grow without bound
                continue
            frames, n, nbytes = p.frames, p.count, p.nbytes
            p.frames = []
            p.count = 0
            p.nbytes = 0
            w.write(frames[0] if len(frames) == 1 else b"".join(frames))
            stats["sent"] += n
            stats["bytes_sent"] += nbytes

    def _start_task(self, coro: object, peer: _Peer | None = None) -> asyncio.Task[None]:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if peer is not None:
            peer.task = task
        return task

    def _backoff_delay(self, failures: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * float(1 << min(failures - 1, 30)))
        return base * (0.5 + 0.5 * self._rng.random())  # "equal jitter": [base/2, base)

    async def _dial(self, p: _Peer) -> None:
        """Connect to ``p`` and handshake; then watch the connection until it closes."""
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                host, port = parse_address(p.address)
                reader, w = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=self._client_ctx, limit=_STREAM_LIMIT),
                    self.connect_timeout,
                )
                writer = w
                self._tune(w)
                await asyncio.wait_for(self._dial_handshake(p, reader, w), self.handshake_timeout)
            except (*_NET_ERRORS, _Refused, _Refusing) as exc:
                if isinstance(exc, _Refusing):
                    self.stats["rejected_handshakes"] += 1
                    self.metrics["handshake_refused"][exc.reason] += 1
                elif isinstance(exc, _Refused):
                    self.metrics["handshake_refused_by_peer"][_reason_of(str(exc))] += 1
                if writer is not None:
                    writer.close()
                    await self._wait_closed(writer)
                await self._connect_failed(p, exc)
                return
            if self._closing or self._peers.get(p.node_id) is not p:
                w.close()
                await self._wait_closed(w)
                return
            if p.connected_once:
                self.stats["reconnects"] += 1
            if p.failures:
                log.info(
                    "%s: connected to peer %s at %s after %d failed attempt(s)",
                    self.node_id,
                    p.node_id,
                    p.address,
                    p.failures,
                )
            else:
                log.debug("%s: connected to peer %s at %s", self.node_id, p.node_id, p.address)
            p.connected_once = True
            p.failures = 0
            p.writer = writer
            if p.frames and not p.scheduled:
                p.scheduled = True
                self._dirty.append(p)
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self._flush)
            # The acceptor never writes after its answer: a read returns only at EOF or error.
            try:
                data = await reader.read(1)
                if data:
                    log.warning(
                        "%s: peer %s sent data on an outgoing connection; closing it", self.node_id, p.node_id
                    )
            except _NET_ERRORS as exc:
                log.debug("%s: connection to %s lost: %r", self.node_id, p.node_id, exc)
            else:
                log.debug("%s: connection to %s closed by the peer", self.node_id, p.node_id)
        finally:
            if p.writer is writer:
                p.writer = None
            if p.task is asyncio.current_task():
                p.task = None
            if writer is not None:
                writer.close()

    async def _dial_handshake(self, p: _Peer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Our side of the handshake with the peer we dialled; returns once it accepted us.

        Raises :class:`_Refused` when the peer refuses, :class:`_Refusing` when we
        refuse it (its certificate or its proof of the secret is wrong).
        """
        me, them = self.node_id, p.node_id
        if self.tls is not None:
            why = self.tls.check_peer_certificate(w.get_extra_info("peercert"), them, p.address)
            if why is not None:
                raise _Refusing("peer_identity", f"peer {them!r} at {p.address}: {why}")
        secret = self._secret
        nonce = secret.new_nonce() if secret is not None else b""
        auth = AUTH_HMAC_SHA256 if secret is not None else AUTH_NONE
        w.write(
            encode_handshake(Handshake(self.cluster_id, me, them, self._protocol, auth=auth, nonce=nonce))
        )
        status, data = await self._read_answer(reader)
        if status == ANSWER_REFUSE:
            raise _Refused(str(data, "utf-8", "replace"))
        if secret is None:
            if status == ANSWER_ACCEPT:
                return
            if status == ANSWER_CHALLENGE:
                text = f"peer {them!r} asks for a shared secret, and this node has none configured"
                w.write(encode_handshake_ack(False, f"secret_unexpected: {text}"))
                raise _Refusing("secret_unexpected", text)
            raise CodecError(f"unexpected handshake answer (status {status})")
        if status == ANSWER_ACCEPT:
            raise _Refusing(
                "secret_missing", f"peer {them!r} accepted us without proving the cluster's shared secret"
            )
        if status != ANSWER_CHALLENGE:
            raise CodecError(f"unexpected handshake answer (status {status})")
        their_nonce = data
        w.write(
            encode_handshake_answer(
                ANSWER_PROOF, secret.proof(DIALLER, self.cluster_id, me, them, nonce, their_nonce)
            )
        )
        status, data = await self._read_answer(reader)
        if status == ANSWER_REFUSE:
            raise _Refused(str(data, "utf-8", "replace"))
        if status != ANSWER_ACCEPT_PROVEN:
            raise CodecError(f"unexpected handshake answer (status {status})")
        if not secret.verify(data, ACCEPTOR, self.cluster_id, me, them, nonce, their_nonce):
            raise _Refusing(
                "secret_mismatch", f"peer {them!r} at {p.address} did not prove the cluster's shared secret"
            )

    async def _read_answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        header = await reader.readexactly(HEADER_SIZE)
        flags, length = parse_header(header, _MAX_HANDSHAKE_BYTES)
        if flags != FLAG_HANDSHAKE:
            raise CodecError("expected a handshake answer")
        return decode_handshake_answer(await reader.readexactly(length))

    async def _connect_failed(self, p: _Peer, exc: BaseException) -> None:
        """Log (rate-limited), drop the queue, and hold the peer in back-off for a while."""
        assert self._loop is not None
        p.failures += 1
        delay = self._backoff_delay(p.failures)
        now = self._loop.time()
        if isinstance(exc, _Refused):
            reason = f"refused: {exc}"
        elif isinstance(exc, _Refusing):
            reason = f"refusing it: {exc}"
        else:
            reason = repr(exc) if str(exc) else type(exc).__name__
        what = "handshake failed with" if isinstance(exc, (_Refused, _Refusing)) else "cannot reach"
        if p.failures == 1 or now - p.last_warning >= self.warning_interval:
            p.last_warning = now
            log.warning(
                "%s: %s peer %s at %s (%s); %d attempt(s) failed, retrying with back-off "
                "(at most %.1fs); messages to it are dropped meanwhile",
                self.node_id,
                what,
                p.node_id,
                p.address,
                reason,
                p.failures,
                self.backoff_max,
            )
        else:
            log.debug("%s: peer %s still unreachable (%s)", self.node_id, p.node_id, reason)
        self._drop_queue(p)
        p.down_until = now + delay
        try:
            await asyncio.sleep(delay)
        finally:
            p.down_until = 0.0

    # ------------------------------------------------------------------ receiving

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain (non-async) callback: the task is created here, so stop() always sees it.
        if self._closing:
            writer.close()
            return
        self._incoming[writer] = None
        self._start_task(self._serve(reader, writer))

    def _tune(self, writer: asyncio.StreamWriter) -> None:
        """Make a connection that silently stopped working fail fast.

        After a network partition the kernel keeps retransmitting into the void
        with exponential back-off, and when the network heals the connection
        may sit out many more seconds before its next retry: the peer then
        hears nothing although it is reachable again. TCP_USER_TIMEOUT closes
        a connection whose sent data stays unacknowledged for ``user_timeout``
        seconds (we then reconnect with our own, capped, back-off), and
        keep-alives reap idle receiving ends whose sender vanished.
        """
        sock = writer.get_extra_info("socket")
        if sock is None:
            return
        try:
            if hasattr(_socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_USER_TIMEOUT, int(self.user_timeout * 1000))
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
            if hasattr(_socket, "TCP_KEEPIDLE"):
                idle = max(1, int(self.user_timeout))
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE, idle)
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL, idle)
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT, 3)
        except OSError as exc:  # not fatal: only slower failure detection
            log.debug("%s: cannot tune socket options: %s", self.node_id, exc)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tune(writer)
        peer = writer.get_extra_info("peername")
        try:
            try:
                sender = await asyncio.wait_for(
                    self._accept_handshake(reader, writer, peer), self.handshake_timeout
                )
            except CodecError as exc:
                self.stats["bad_frames"] += 1
                log.warning(
                    "%s: closing connection from %s: bad handshake frame: %s", self.node_id, peer, exc
                )
                return
            except _NET_ERRORS as exc:
                log.info("%s: connection from %s ended before its handshake: %r", self.node_id, peer, exc)
                return
            if sender is None:
                return
            self._incoming[writer] = sender
            for key in [k for k in self._refusal_log if k[1] == sender]:
                del self._refusal_log[key]  # a later refusal of this peer is news again
            log.debug("%s: accepted connection from %s at %s", self.node_id, sender, peer)
            await self._receive_loop(reader, sender, peer)
        except _NET_ERRORS as exc:
            log.debug("%s: connection from %s lost: %r", self.node_id, peer, exc)
        finally:
            self._incoming.pop(writer, None)
            writer.close()
            if not self._closing:
                await self._wait_closed(writer)

    async def _read_handshake(self, reader: asyncio.StreamReader) -> Handshake:
        header = await reader.readexactly(HEADER_SIZE)
        flags, length = parse_header(header, _MAX_HANDSHAKE_BYTES)
        if flags != FLAG_HANDSHAKE:
            raise CodecError("first frame is not a handshake")
        return decode_handshake(await reader.readexactly(length))

    async def _accept_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> str | None:
        """The acceptor's side of the handshake: the sender's id once accepted, None if refused."""
        hs = await self._read_handshake(reader)
        refusal = self._check_handshake(hs)
        if refusal is None and self.tls is not None:
            why = self.tls.check_peer_certificate(
                writer.get_extra_info("peercert"), hs.sender, self._peers[hs.sender].address
            )
            if why is not None:
                refusal = ("peer_identity", f"peer {hs.sender!r}: {why}")
        if refusal is None:
            refusal = self._check_auth_offer(hs)
        if refusal is not None:
            self._refuse(writer, peer, hs.sender, *refusal)
            return None
        secret = self._secret
        if secret is None:
            writer.write(encode_handshake_ack(True))
            return hs.sender
        nonce = secret.new_nonce()
        writer.write(encode_handshake_answer(ANSWER_CHALLENGE, nonce))
        status, data = await self._read_answer(reader)
        if status == ANSWER_REFUSE:
            text = str(data, "utf-8", "replace")
            self.metrics["handshake_refused_by_peer"][_reason_of(text)] += 1
            fmt = "%s: connection from %s (%r) refused by the peer: %s"
            self._log_refusal("by", hs.sender, _reason_of(text), fmt, peer, hs.sender, text)
            return None
        if status != ANSWER_PROOF:
            raise CodecError(f"expected the dialler's proof, got answer status {status}")
        if not secret.verify(data, DIALLER, self.cluster_id, hs.sender, self.node_id, hs.nonce, nonce):
            self._refuse(
                writer,
                peer,
                hs.sender,
                "secret_mismatch",
                f"peer {hs.sender!r} did not prove the cluster's shared secret (a different secret, "
                "or a replayed handshake)",
            )
            return None
        if hs.sender not in self._peers:  # removed by set_peers while we awaited the proof
            self._refuse(writer, peer, hs.sender, "unknown_sender", f"{hs.sender!r} is no longer a peer")
            return None
        proof = secret.proof(ACCEPTOR, self.cluster_id, hs.sender, self.node_id, hs.nonce, nonce)
        writer.write(encode_handshake_answer(ANSWER_ACCEPT_PROVEN, proof))
        return hs.sender

    def _check_handshake(self, hs: Handshake) -> tuple[str, str] | None:
        if hs.protocol != self._protocol:
            return "protocol", (
                f"protocol version {hs.protocol} not supported (we speak {self._protocol}; "
                f"{WIRE_VERSION} is a single-group transport, {HOST_PROTOCOL} a multi-group host)"
            )
        if hs.cluster_id != self.cluster_id:
            return "cluster_id", f"cluster id mismatch: {hs.cluster_id!r} is not {self.cluster_id!r}"
        if hs.receiver != self.node_id:
            return "receiver", f"connection meant for {hs.receiver!r}, this is {self.node_id!r}"
        if hs.sender not in self._peers:
            return "unknown_sender", f"unknown sender {hs.sender!r} (not a peer of {self.node_id!r})"
        return None

    def _check_auth_offer(self, hs: Handshake) -> tuple[str, str] | None:
        if self._secret is None:
            if hs.auth != AUTH_NONE:
                return (
                    "secret_unexpected",
                    f"peer {hs.sender!r} authenticates with a shared secret, and {self.node_id!r} "
                    "has none configured",
                )
            return None
        if hs.auth == AUTH_NONE:
            return (
                "secret_missing",
                f"peer {hs.sender!r} did not authenticate, and {self.node_id!r} requires the cluster's "
                "shared secret",
            )
        if hs.auth != AUTH_HMAC_SHA256 or len(hs.nonce) != AUTH_NONCE_BYTES:
            return "protocol", f"auth scheme {hs.auth} with a {len(hs.nonce)}-byte nonce not supported"
        return None

    def _refuse(
        self, writer: asyncio.StreamWriter, peer: object, sender: str, reason: str, detail: str
    ) -> None:
        """Count, log (once per peer and reason) and send a refusal; the caller closes."""
        text = f"{reason}: {detail}"
        self.stats["rejected_handshakes"] += 1
        self.metrics["handshake_refused"][reason] += 1
        self._log_refusal(
            "of", sender, reason, "%s: refusing connection from %s (%r): %s", peer, sender, text
        )
        writer.write(encode_handshake_ack(False, text))

    def _log_refusal(self, direction: str, sender: str, reason: str, fmt: str, *args: object) -> None:
        """WARNING the first time a peer is refused for ``reason``, then at most every
        ``warning_interval`` (with the number of refusals in between); DEBUG otherwise."""
        # An unauthenticated client can claim any id: only known peers get their own entry.
        key = (direction, sender if sender in self._peers else "<unknown>", reason)
        now = time.monotonic()
        entry = self._refusal_log.get(key)
        if entry is not None and now - entry[0] < self.warning_interval:
            entry[1] += 1
            log.debug(fmt, self.node_id, *args)
            return
        suppressed = int(entry[1]) if entry is not None else 0
        if len(self._refusal_log) >= _MAX_LOG_KEYS:
            del self._refusal_log[next(iter(self._refusal_log))]
        self._refusal_log[key] = [now, 0]
        more = f" ({suppressed} more refusal(s) logged at DEBUG since the last warning)" if suppressed else ""
        log.warning(fmt + "%s", self.node_id, *args, more)

    async def _receive_loop(self, reader: asyncio.StreamReader, sender: str, peer: object) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        stats = self.stats
        on_message = self._on_message
        assert on_message is not None
        me = self.node_id
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                log.debug("%s: connection from %s closed", me, sender)
                return
            stats["bytes_received"] += len(data)
            bad: CodecError | None = None
            try:
                messages: Sequence[Message] = decoder.feed(data)
            except CodecError as exc:
                bad = exc
                messages = exc.messages  # the valid frames before the bad one are still delivered
            for m in messages:
                if m.frm != sender or m.to != me:
                    stats["bad_frames"] += 1
                    log.warning(
                        "%s: closing connection from %s: message %s->%s does not match the handshake",
                        me,
                        sender,
                        m.frm,
                        m.to,
                    )
                    return
                stats["received"] += 1
                try:
                    on_message(m)
                except Exception:
                    log.exception("%s: on_message raised for %r", me, m)
            if bad is not None:
                stats["bad_frames"] += 1
                log.warning("%s: closing connection from %s (%s): bad frame: %s", me, sender, peer, bad)
                return

    # ------------------------------------------------------------------ helpers

    @staticmethod
    async def _wait_closed(writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except asyncio.TimeoutError:
            writer.transport.abort()
        except Exception:  # the connection may have failed in any way; it is closed now
            pass

"""One HTTP/2 connection (RFC 9113) of the gRPC server: frames, streams and flow control.

Owns: the connection's state after the client preface (an asyncio protocol, handed the transport
by the client-URL multiplexer or accepting it directly): SETTINGS in both directions, PING
answers, the HPACK decoder, the streams the client opened, and both directions of flow control.
Each stream that carries a call is handed to :meth:`GrpcServer.start_call`, which runs it as a task
owned by this connection (cancelled when the stream is reset or the connection is lost).

Invariants:

* receive side: the client may never send more than it was granted.  The connection window is
  granted back once a quarter of it is used (each stream's window bounds what it may buffer); a stream's
  window is granted back only while its parsed-but-unread messages stay under
  ``STREAM_WINDOW`` bytes, and always far enough to complete the message in progress (its length
  was checked against the call's limit), so memory per stream stays bounded and a message that
  fits the limit can always arrive;
* the write buffer stays bounded: while the transport is over its high-water mark nothing more is
  read from the client (every answer is to something read), and senders of DATA wait;
* send side: DATA never exceeds the peer's connection window, the stream's window or the peer's
  SETTINGS_MAX_FRAME_SIZE; a sender waits (awaiting its stream's wake-up) until a WINDOW_UPDATE or
  SETTINGS opens it, and stops waiting when the stream is reset or the connection closes;
* a connection error (§5.4.1) sends GOAWAY with the last stream id processed and closes the
  transport; a stream error (§5.4.2) sends RST_STREAM and ends that stream's call only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from examples.kvstore.h2grpc.hpack import Decoder, HpackError

if TYPE_CHECKING:
    from examples.kvstore.h2grpc.server import GrpcServer

log = logging.getLogger("kvstore.h2grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# §6: frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# §7: error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
# §6.5.2: settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 0x1, 0x2, 0x3, 0x4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x5, 0x6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_STREAMS = 1024
"""SETTINGS_MAX_CONCURRENT_STREAMS this server advertises (clients queue calls beyond it)."""
STREAM_WINDOW = 1 << 20
"""The receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE) and the most a stream
buffers in messages its call has not read yet."""
CONNECTION_WINDOW = 16 << 20
MAX_HEADER_LIST = 64 * 1024
RESET_MEMORY = 256
"""How many of the streams this server reset it remembers, to ignore what the client had already
sent on them (§5.1, "closed")."""


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: 9-byte header (§4.1) then the payload."""
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + stream_id.to_bytes(4, "big") + payload


class H2Error(Exception):
    """A connection error (§5.4.1): GOAWAY with ``code`` and close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamReset(Exception):
    """The stream ended before the call could send (reset by the client, or the connection lost)."""


class Stream:
    """One client-initiated stream: its request headers, the messages received, its send window."""

    __slots__ = (
        "buffer",
        "closed",
        "conn",
        "ended",
        "failure",
        "headers",
        "id",
        "limit",
        "messages",
        "queued_bytes",
        "recv_window",
        "reset",
        "send_window",
        "sent_headers",
        "task",
        "waiters",
    )  # fmt: skip

    def __init__(self, conn: H2Connection, stream_id: int, headers: list[tuple[str, str]]) -> None:
        self.id = stream_id
        self.conn = conn
        self.headers = headers
        self.buffer = bytearray()  # bytes of the message in progress
        self.messages: deque[tuple[int, bytes]] = deque()  # (compressed flag, payload)
        self.queued_bytes = 0
        self.ended = False  # the client sent END_STREAM
        self.reset = False  # RST_STREAM either way, or the connection is gone
        self.closed = False  # this server sent END_STREAM (or RST_STREAM)
        self.recv_window = conn.local_stream_window
        self.send_window = conn.peer_initial_window
        # one future per waiting coroutine: a call may wait in two tasks at once (a handler reading
        # its requests in a task of its own while its generator waits for a window)
        self.waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None
        self.limit = conn.server.max_receive_message_length
        self.failure: tuple[int, str] | None = None  # (grpc status, message) found while receiving
        self.sent_headers = False

    def wake(self) -> None:
        """Something the stream's waiters may wait for happened (a message, END_STREAM, a window, a
        reset): every one of them re-checks its condition."""
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def wait(self) -> None:
        """Until :meth:`wake` (the caller re-checks its condition, raising StreamReset after a reset)."""
        if self.reset:
            raise StreamReset()
        w = asyncio.get_running_loop().create_future()
        self.waiters.append(w)
        try:
            await w
        finally:
            if w.cancelled():  # (a wake removed it otherwise)
                with contextlib.suppress(ValueError):
                    self.waiters.remove(w)
        if self.reset:
            raise StreamReset()

    # -- receive side ---------------------------------------------------------------------------

    def receive(self, data: bytes | memoryview) -> None:
        """DATA payload (padding removed): parse gRPC's length-prefixed messages out of it."""
        if self.failure is not None:
            return  # the call is failing: what follows is dropped (the window is still granted)
        buf = self.buffer
        buf += data
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if length > self.limit:
                # grpc-go's answer (what etcd sends), decided from the prefix: the body is never buffered
                self.failure = (8, f"grpc: received message larger than max ({length} vs. {self.limit})")
                buf.clear()
                break
            if len(buf) < 5 + length:
                break
            self.messages.append((buf[0], bytes(buf[5 : 5 + length])))
            self.queued_bytes += 5 + length
            del buf[: 5 + length]
        self.wake()

    def take(self) -> tuple[int, bytes] | None:
        """The next received message, or None (then see ``ended``/``failure``)."""
        if not self.messages:
            return None
        item = self.messages.popleft()
        self.queued_bytes -= 5 + len(item[1])
        self.conn.grant(self)
        return item

    def needed(self) -> int:
        """Bytes still missing from the message in progress (0 when none is started)."""
        if len(self.buffer) < 5:
            return 5 - len(self.buffer) if self.buffer else 0
        return 5 + int.from_bytes(self.buffer[1:5], "big") - len(self.buffer)


class H2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection carrying gRPC calls."""

    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface_done = False
        self.decoder = Decoder(max_list_size=MAX_HEADER_LIST)
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        # the last RESET_MEMORY streams this server sent RST_STREAM on (an ordered set)
        self.reset_ids: dict[int, None] = {}
        self.goaway_sent = False
        self.goaway_received = False
        self.closed = False
        # headers in progress: (stream id, END_STREAM flag, fragments) until END_HEADERS
        self.continuation: tuple[int, int, bytearray] | None = None
        # flow control
        self.local_stream_window = STREAM_WINDOW
        self.recv_unacked = 0  # DATA bytes received since the last connection WINDOW_UPDATE
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.send_window = DEFAULT_WINDOW
        self.blocked: set[Stream] = set()  # streams waiting for a window
        self.paused = False  # the transport's write buffer is full
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.peer: tuple[Any, ...] | None = None
        self.ssl_object: Any = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # connection_lost

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.ssl_object = transport.get_extra_info("ssl_object")
        self.server.connections.add(self)
        settings = struct.pack(
            ">HIHIHI", MAX_CONCURRENT_STREAMS, MAX_STREAMS, INITIAL_WINDOW_SIZE, STREAM_WINDOW,
            MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST,
        )  # fmt: skip
        increase = CONNECTION_WINDOW - DEFAULT_WINDOW
        self._write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, increase.to_bytes(4, "big")))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        try:
            self._process()
        except H2Error as exc:
            self.close_with(exc.code, str(exc))
        except HpackError as exc:
            self.close_with(COMPRESSION_ERROR, str(exc))

    def eof_received(self) -> bool | None:
        return None  # close the transport: the client will send nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)
        for stream in list(self.streams.values()):
            self._drop(stream, cancel=True)
        self.streams.clear()
        for w in self.drain_waiters:
            if not w.done():
                w.set_result(None)
        self.drain_waiters.clear()

    def pause_writing(self) -> None:
        # Stop reading too: what the client sends may call for answers (PING, SETTINGS, RST_STREAM,
        # WINDOW_UPDATE for its DATA, unary replies), which would otherwise pile up in the write
        # buffer of a client that sends without reading (RFC 9113 §10.5).
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()
        waiters, self.drain_waiters = self.drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -- frames in ------------------------------------------------------------------------------

    def _process(self) -> None:
        buf = self.buffer
        if not self.preface_done:
            if len(buf) < len(PREFACE):
                if PREFACE[: len(buf)] != bytes(buf):
                    raise H2Error(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            if bytes(buf[: len(PREFACE)]) != PREFACE:
                raise H2Error(PROTOCOL_ERROR, "not an HTTP/2 client preface")
            del buf[: len(PREFACE)]
            self.preface_done = True
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 9 and not self.closed:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > DEFAULT_MAX_FRAME:  # this server never raises SETTINGS_MAX_FRAME_SIZE
                    raise H2Error(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds 16384")
                if n - pos < 9 + length:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, stream_id, payload)
        finally:
            del buf[:pos]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuation is not None and kind != CONTINUATION:
            raise H2Error(PROTOCOL_ERROR, "expected CONTINUATION")  # §6.10
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0:
                raise H2Error(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise H2Error(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0:
                raise H2Error(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise H2Error(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
            if self._idle(stream_id):
                raise H2Error(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.closed = True  # no RST_STREAM back (§5.4.2)
                self._drop(stream, cancel=True)
        elif kind == GOAWAY:
            self.goaway_received = True
            if not self.streams:
                self.close_with(NO_ERROR, "")
        elif kind == PRIORITY:
            if stream_id == 0:
                raise H2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:  # §6.3: a stream error
                self._stream_error(stream_id, FRAME_SIZE_ERROR)
        elif kind == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # other types are ignored (§4.1, §5.5)

    def _idle(self, stream_id: int) -> bool:
        """§5.1: a stream never opened: above the client's last, or even (this server opens none)."""
        return stream_id > self.last_stream_id or stream_id % 2 == 0

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload:
                raise H2Error(FRAME_SIZE_ERROR, "padded frame without a pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise H2Error(PROTOCOL_ERROR, "padding exceeds the payload")
            return payload[1 : len(payload) - pad]
        return payload

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        body = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(body) < 5:
                raise H2Error(FRAME_SIZE_ERROR, "HEADERS priority fields truncated")
            body = body[5:]
        if flags & END_HEADERS:
            self._headers_complete(stream_id, flags & END_STREAM, body)
        else:
            self.continuation = (stream_id, flags & END_STREAM, bytearray(body))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        pending = self.continuation
        if pending is None or pending[0] != stream_id:
            raise H2Error(PROTOCOL_ERROR, "unexpected CONTINUATION")
        pending[2].extend(payload)
        if len(pending[2]) > MAX_HEADER_LIST:
            raise H2Error(PROTOCOL_ERROR, "header block too large")
        if flags & END_HEADERS:
            self.continuation = None
            self._headers_complete(stream_id, pending[1], bytes(pending[2]))

    def _headers_complete(self, stream_id: int, end_stream: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always, to keep the dynamic table in step (§4.1 of 7541)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they may only end the stream
            if stream.ended:  # §5.1: the stream is half-closed (remote)
                self.reset_stream(stream, STREAM_CLOSED)
            elif not end_stream:
                self.reset_stream(stream, PROTOCOL_ERROR)
            else:
                stream.ended = True
                stream.wake()
            return
        if stream_id in self.reset_ids:
            return  # §5.1: sent before the client saw this server's RST_STREAM: ignored
        if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
            raise H2Error(PROTOCOL_ERROR, f"stream {stream_id} cannot be opened by the client")  # §5.1.1
        self.last_stream_id = stream_id
        if self.goaway_sent:
            return  # §6.8: streams after GOAWAY's last id are ignored
        if len(self.streams) >= MAX_STREAMS:
            self._reset(stream_id, REFUSED_STREAM)
            return
        stream = Stream(self, stream_id, headers)
        if end_stream:
            stream.ended = True
        self.streams[stream_id] = stream
        self.server.start_call(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2Error(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        # the whole frame, padding included, counts against flow control (§6.9.1); the connection's
        # window is given back once a quarter of it is used (each stream's window bounds its buffer)
        self.recv_unacked += size
        if self.recv_unacked >= CONNECTION_WINDOW // 4:
            self._write(frame(WINDOW_UPDATE, 0, 0, self.recv_unacked.to_bytes(4, "big")))
            self.recv_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise H2Error(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream_id not in self.reset_ids:  # §5.1: else sent before the client saw the reset
                self._reset(stream_id, STREAM_CLOSED)
            return
        if stream.ended:  # §5.1: half-closed (remote): a stream error, which ends the call
            self.reset_stream(stream, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            self._drop(stream, cancel=True)
            return
        stream.receive(self._unpad(flags, payload))
        if flags & END_STREAM:
            stream.ended = True
            stream.wake()
        self.grant(stream)

    def grant(self, stream: Stream) -> None:
        """Give the stream's receive window back while its unread messages stay under the limit, and
        always enough to complete the message in progress."""
        if stream.ended or stream.reset or self.closed:
            return
        target = max(self.local_stream_window - stream.queued_bytes, stream.needed())
        target = min(target, MAX_WINDOW)
        increase = target - stream.recv_window
        if increase >= max(1, self.local_stream_window // 4) or (
            increase > 0 and stream.recv_window < stream.needed()
        ):
            stream.recv_window += increase
            self._write(frame(WINDOW_UPDATE, 0, stream.id, increase.to_bytes(4, "big")))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise H2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
        for off in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, off)
            if ident == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2Error(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():  # §6.9.2: applies to every open stream
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise H2Error(FLOW_CONTROL_ERROR, "a stream window exceeds 2^31-1")
                self._wake_blocked()
            elif ident == MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 16777215:
                    raise H2Error(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
            elif ident == ENABLE_PUSH and value > 1:
                raise H2Error(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            # HEADER_TABLE_SIZE: this server's encoder never uses the dynamic table; the rest bound
            # what this server would initiate (nothing)
        self._write(frame(SETTINGS, ACK, 0))

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "connection window exceeds 2^31-1")
            self._wake_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a closed stream's window (§6.9)
        if increment == 0:
            self._reset(stream_id, PROTOCOL_ERROR)
            self._drop(stream, cancel=True)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream_id, FLOW_CONTROL_ERROR)
            self._drop(stream, cancel=True)
            return
        stream.wake()

    def _wake_blocked(self) -> None:
        for stream in list(self.blocked):
            stream.wake()

    # -- frames out -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        """Until the transport's write buffer is under its high-water mark (or the connection is gone)."""
        while self.paused and not self.closed:
            w = asyncio.get_running_loop().create_future()
            self.drain_waiters.append(w)
            await w

    def header_frames(self, stream: Stream, block: bytes, end_stream: bool) -> bytes:
        """HEADERS (+ CONTINUATION when the block exceeds the peer's frame size) for ``block``."""
        limit = self.peer_max_frame
        es = END_STREAM if end_stream else 0
        if len(block) <= limit:
            return frame(HEADERS, END_HEADERS | es, stream.id, block)
        parts = [block[i : i + limit] for i in range(0, len(block), limit)]
        out = [frame(HEADERS, es, stream.id, parts[0])]
        for i, part in enumerate(parts[1:], start=1):
            out.append(frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, stream.id, part))
        return b"".join(out)

    def try_send_all(self, stream: Stream, prefix: bytes, data: bytes, suffix: bytes) -> bool:
        """Write ``prefix`` + ``data`` as one DATA frame + ``suffix`` in one write, when the windows and
        the frame size allow it (the fast path of a unary answer); False (nothing written) otherwise."""
        n = len(data)
        if n > self.send_window or n > stream.send_window or n > self.peer_max_frame or self.closed:
            return False
        self.send_window -= n
        stream.send_window -= n
        self._write(prefix + frame(DATA, 0, stream.id, data) + suffix)
        return True

    async def send_data(self, stream: Stream, data: bytes) -> None:
        """DATA frames for ``data`` as the windows allow, waiting for WINDOW_UPDATEs in between."""
        view = memoryview(data)
        while view:
            if stream.reset or self.closed:
                raise StreamReset()
            n = min(len(view), self.send_window, stream.send_window, self.peer_max_frame)
            if n <= 0:
                self.blocked.add(stream)
                try:
                    await stream.wait()
                finally:
                    self.blocked.discard(stream)
                continue
            self.send_window -= n
            stream.send_window -= n
            self._write(frame(DATA, 0, stream.id, bytes(view[:n])))
            view = view[n:]
            if self.paused:
                await self.drain()

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool) -> None:
        if stream.reset or self.closed:
            raise StreamReset()
        self._write(self.header_frames(stream, block, end_stream))

    def finish(self, stream: Stream) -> None:
        """The call sent its last frame (END_STREAM): forget the stream.  A client still sending is
        told to stop with RST_STREAM(NO_ERROR) (§8.1)."""
        stream.closed = True
        if not stream.ended and not stream.reset:
            self._reset(stream.id, NO_ERROR)
        self._drop(stream, cancel=False)

    def _reset(self, stream_id: int, code: int) -> None:
        self._write(frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
        self.reset_ids[stream_id] = None
        if len(self.reset_ids) > RESET_MEMORY:
            del self.reset_ids[next(iter(self.reset_ids))]

    def _stream_error(self, stream_id: int, code: int) -> None:
        """§5.4.2: RST_STREAM, and the stream's call ends when it has one."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.reset_stream(stream, code)
        else:
            self._reset(stream_id, code)

    def reset_stream(self, stream: Stream, code: int = CANCEL) -> None:
        """End the stream from this side without a gRPC status (e.g. the server is stopping)."""
        if not stream.closed:
            stream.closed = True
            self._reset(stream.id, code)
        self._drop(stream, cancel=True)

    def _drop(self, stream: Stream, cancel: bool) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.discard(stream)
        if cancel:
            stream.reset = True
            stream.wake()
            task = stream.task
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        if (self.goaway_sent or self.goaway_received) and not self.streams:
            self.close_with(NO_ERROR, "")  # the last stream after GOAWAY ended

    def goaway(self, code: int = NO_ERROR, message: str = "") -> None:
        """§6.8: no new streams; the open ones may finish."""
        if not self.goaway_sent and not self.closed:
            self.goaway_sent = True
            payload = (
                self.last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + message.encode()[:256]
            )
            self._write(frame(GOAWAY, 0, 0, payload))

    def close_with(self, code: int, message: str) -> None:
        """Connection error or graceful end: GOAWAY (once) and close the transport."""
        if self.closed:
            return
        if code != NO_ERROR:
            log.info("HTTP/2 connection from %s closed: %s (error 0x%x)", self.peer, message, code)
        self.goaway(code, message)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

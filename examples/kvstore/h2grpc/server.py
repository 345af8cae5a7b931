"""A gRPC server on asyncio written for the store: grpc's method handlers served over
:mod:`examples.kvstore.h2grpc.connection`.

Why not grpc.aio's server: on the machines this project measures on, grpc.aio spends about 300 us
of CPU per unary call in its C core and the hand-off between its threads and the event loop, and
relaying a shared client port to it costs another 100-200 us (docs/performance.md, "gRPC"); etcd
handles a whole Put in about 230 us.  Here a call is parsed, dispatched and answered on the event
loop that runs the store, in tens of microseconds.  grpc stays the client library (the members'
forwarding, the tests) and provides the handler types (``grpc.RpcMethodHandler``), so the same
servicers can be registered here with :meth:`GrpcServer.add_generic_rpc_handlers`.

Owns: the registered handlers, every call's task (created per stream, owned by the server and
awaited on :meth:`GrpcServer.stop`) and the gRPC layer of a call (PROTOCOL-HTTP2.md of grpc):
``:path`` lookup, ``grpc-timeout``, metadata, length-prefixed messages (identity, gzip or deflate),
the response headers, messages and trailers with ``grpc-status`` / ``grpc-message``, and the
servicer context handlers use (:class:`CallContext`, grpc.aio's ``ServicerContext`` interface).

Invariants: every call ends with exactly one status (trailers or trailers-only) unless its stream
was reset, in which case nothing more is sent; a call past its ``grpc-timeout`` is cancelled and
answers DEADLINE_EXCEEDED; a request message over ``max_receive_message_length`` is refused from its
length prefix (RESOURCE_EXHAUSTED) without being buffered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from examples.kvstore.h2grpc.connection import CANCEL, REFUSED_STREAM, H2Connection, Stream, StreamReset
from examples.kvstore.h2grpc.hpack import encode_header, encode_indexed

log = logging.getLogger("kvstore.h2grpc")

__all__ = ["CallContext", "GrpcServer"]

# grpc status codes by number (StatusCode.value is (number, name))
_CODE_NUMBER = {code: code.value[0] for code in grpc.StatusCode}
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 0, 1, 2, 4, 8
UNIMPLEMENTED, INTERNAL = 12, 13

_STATUS_200 = encode_indexed(8)  # ":status: 200" is static entry 8
RESPONSE_HEADERS = _STATUS_200 + encode_header("content-type", "application/grpc")
OK_TRAILERS = encode_header("grpc-status", "0")
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNIT = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# headers that are transport, not metadata (grpc.aio leaves them out of invocation_metadata too)
_RESERVED = frozenset(
    {"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "content-length"}
)


class CallFailure(Exception):
    """The call ends with this gRPC status (found by the gRPC layer, before or around the handler)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _percent_encode(message: str) -> str:
    """grpc-message's encoding: bytes outside printable ASCII, and '%', as %XX of their UTF-8."""
    raw = message.encode()
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return message
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in raw)


def status_block(code: int, message: str, metadata: Sequence[tuple[str, Any]] = ()) -> bytes:
    """The header block of a status: grpc-status, grpc-message when there is one, trailing metadata."""
    if code == OK and not message and not metadata:
        return OK_TRAILERS
    block = encode_header("grpc-status", str(code))
    if message:
        block += encode_header("grpc-message", _percent_encode(message))
    return block + _metadata_block(metadata)


def _metadata_block(metadata: Iterable[tuple[str, Any]]) -> bytes:
    out = b""
    for key, value in metadata:
        key = key.lower()
        if key.endswith("-bin"):
            value = base64.b64encode(value if isinstance(value, bytes) else str(value).encode()).decode()
        out += encode_header(key, value if isinstance(value, (str, bytes)) else str(value))
    return out


def _code_number(code: Any) -> int:
    if isinstance(code, grpc.StatusCode):
        return int(_CODE_NUMBER[code])
    return int(code)


def _frame_message(data: bytes) -> bytes:
    return b"\x00" + len(data).to_bytes(4, "big") + data


class CallContext:
    """What a handler sees of its call: grpc.aio's ``ServicerContext`` interface (the parts a
    servicer uses: metadata, peer, auth context, deadline, abort, status, read/write, callbacks)."""

    def __init__(
        self,
        server: GrpcServer,
        stream: Stream,
        metadata: tuple[tuple[str, Any], ...],
        deadline: float | None,
    ) -> None:
        self._server = server
        self._stream = stream
        self._metadata = metadata
        self._deadline = deadline
        self._code: int | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self._initial: tuple[tuple[str, Any], ...] = ()
        self._callbacks: list[Callable[[Any], None]] = []
        self._requests: AsyncIterator[Any] | None = None
        self._serializer: Callable[[Any], bytes] | None = None
        self.deadline_exceeded = False

    # metadata and peer
    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def peer(self) -> str:
        peer = self._stream.conn.peer
        if not peer:
            return "unknown"
        host, port = peer[0], peer[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"

    def auth_context(self) -> dict[str, list[bytes]]:
        """grpc's auth context: for a TLS connection the transport type and, when the client sent a
        certificate, its subject CN as ``x509_common_name``."""
        ssl_object = self._stream.conn.ssl_object
        if ssl_object is None:
            return {}
        ctx: dict[str, list[bytes]] = {"transport_security_type": [b"ssl"]}
        cert = ssl_object.getpeercert() or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    ctx["x509_common_name"] = [str(value).encode()]
        return ctx

    def peer_identities(self) -> list[bytes] | None:
        return self.auth_context().get("x509_common_name")

    def peer_identity_key(self) -> str | None:
        return "x509_common_name" if self.peer_identities() else None

    # deadline and state
    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def cancelled(self) -> bool:
        return self._stream.reset

    def done(self) -> bool:
        return self._stream.closed or self._stream.reset

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    # status
    async def abort(
        self, code: Any, details: str = "", trailing_metadata: Sequence[tuple[str, Any]] = ()
    ) -> None:
        """End the call with ``code`` and ``details`` (raises, like grpc.aio's abort)."""
        if _code_number(code) == OK:
            raise ValueError("abort() needs a status other than OK")
        self._code = _code_number(code)
        self._details = details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: Any) -> None:
        self._code = _code_number(code)

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> int | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, Any]]) -> None:
        if self._stream.sent_headers:
            raise RuntimeError("initial metadata was already sent")
        self._initial = tuple(initial_metadata)
        self._send_headers()

    def set_compression(self, compression: Any) -> None:
        """Accepted for compatibility: answers are sent uncompressed."""

    def disable_next_message_compression(self) -> None:
        """Accepted for compatibility: answers are sent uncompressed."""

    # streaming
    async def read(self) -> Any:
        if self._requests is None:
            raise RuntimeError("read() is for calls that stream requests")
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def write(self, message: Any) -> None:
        assert self._serializer is not None
        await self.send(self._serializer(message))

    # -- used by the server ---------------------------------------------------------------------

    def _send_headers(self) -> None:
        stream = self._stream
        stream.conn.send_headers(stream, RESPONSE_HEADERS + _metadata_block(self._initial), end_stream=False)
        stream.sent_headers = True

    async def send(self, data: bytes) -> None:
        self._server.check_send_size(data)
        if not self._stream.sent_headers:
            self._send_headers()
        await self._stream.conn.send_data(self._stream, _frame_message(data))

    def finish(self, code: int, message: str) -> None:
        """The call's status: trailers after what was sent, or trailers-only."""
        stream = self._stream
        conn = stream.conn
        if stream.reset or stream.closed or conn.closed:
            return
        block = status_block(code, message, self._trailing)
        if not stream.sent_headers:
            block = RESPONSE_HEADERS + _metadata_block(self._initial) + block
        conn.send_headers(stream, block, end_stream=True)
        conn.finish(stream)

    def run_callbacks(self) -> None:
        for cb in self._callbacks:
            try:
                cb(self)
            except Exception:  # a callback's failure is the callback's
                log.exception("gRPC done callback failed")


class GrpcServer:
    """Serves registered gRPC handlers over :class:`H2Connection`\\ s.

    >>> server = GrpcServer(max_receive_message_length=4 << 20)
    >>> rpc_pb2_grpc.add_KVServicer_to_server(MyKV(), server)   # doctest: +SKIP
    >>> # each accepted connection: transport.set_protocol(server.protocol()) ...
    """

    def __init__(
        self, max_receive_message_length: int = 4 << 20, max_send_message_length: int = 2**31 - 1
    ) -> None:
        self.max_receive_message_length = max_receive_message_length
        self.max_send_message_length = max_send_message_length
        self.handlers: list[Any] = []
        self.methods: dict[str, grpc.RpcMethodHandler | None] = {}
        self.connections: set[H2Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    # grpc.Server's registration interface (what generated add_*_to_server functions call)
    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        self.handlers.extend(generic_rpc_handlers)
        self.methods.clear()

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        self.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, method_handlers),))

    def lookup(self, path: str, metadata: tuple[tuple[str, Any], ...]) -> grpc.RpcMethodHandler | None:
        if path in self.methods:
            return self.methods[path]
        details = _CallDetails(path, metadata)
        found = None
        for handler in self.handlers:
            found = handler.service(details)
            if found is not None:
                break
        if len(self.methods) < 4096:  # unknown paths are cached too, boundedly
            self.methods[path] = found
        return found

    def _has_service(self, service: str) -> bool:
        """Whether a registered handler serves ``service``: by its name when it says (grpc's
        ServiceRpcHandler, what generated code and method_handlers_generic_handler register), else
        by a method of it found before."""
        for handler in self.handlers:
            if isinstance(handler, grpc.ServiceRpcHandler) and handler.service_name() == service:
                return True
        return any(p.lstrip("/").rpartition("/")[0] == service for p, h in self.methods.items() if h)

    def check_send_size(self, data: bytes) -> None:
        """Refuse an answer over ``max_send_message_length`` (RESOURCE_EXHAUSTED, grpc-go's words)."""
        limit = self.max_send_message_length
        if len(data) > limit:
            message = f"grpc: trying to send message larger than max ({len(data)} vs. {limit})"
            raise CallFailure(RESOURCE_EXHAUSTED, message)

    def protocol(self) -> H2Connection:
        """A protocol for one accepted connection (its first bytes must be the HTTP/2 preface)."""
        return H2Connection(self)

    def start_call(self, stream: Stream) -> None:
        if self.stopping:
            stream.conn.reset_stream(stream, REFUSED_STREAM)  # the client may retry elsewhere
            return
        task = asyncio.get_running_loop().create_task(self._run(stream))
        stream.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self, grace: float = 0.5) -> None:
        """GOAWAY to every connection, let the calls in progress finish for ``grace`` seconds, cancel
        the rest, close the connections: those that have not flushed what was written to them
        within a second (a client that does not read) are aborted."""
        self.stopping = True
        for conn in list(self.connections):
            conn.goaway()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=1.0)
        for conn in list(self.connections):
            conn.close_with(0, "")
        if self.connections:
            await asyncio.wait({conn.lost for conn in self.connections}, timeout=1.0)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.connections:
            await asyncio.wait({conn.lost for conn in self.connections}, timeout=1.0)

    # -- one call -------------------------------------------------------------------------------

    async def _run(self, stream: Stream) -> None:
        conn = stream.conn
        path = method = content_type = encoding = None
        timeout: float | None = None
        metadata: list[tuple[str, Any]] = []
        malformed: str | None = None
        for name, value in stream.headers:
            if name.startswith(":"):
                if name == ":path":
                    path = value
                elif name == ":method":
                    method = value
            elif name in _RESERVED:
                if name == "content-type":
                    content_type = value
                elif name == "grpc-timeout":
                    m = _TIMEOUT.match(value)
                    if m:
                        timeout = int(m.group(1)) * _TIMEOUT_UNIT[m.group(2)]
                elif name == "grpc-encoding":
                    encoding = value
            elif name.endswith("-bin"):
                try:
                    metadata.append((name, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)))
                except binascii.Error as exc:  # grpc-go's answer: the call fails with INTERNAL
                    malformed = f'malformed binary metadata "{value}" in header "{name}": {exc}'
            else:
                metadata.append((name, value))
        if method != "POST" or path is None:
            self._http_error(stream, "405")
            return
        if content_type is None or not content_type.startswith("application/grpc"):
            self._http_error(stream, "415")
            return
        md = tuple(metadata)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        ctx = CallContext(self, stream, md, deadline)
        timer = None
        if deadline is not None:
            task = asyncio.current_task()

            def expire() -> None:
                ctx.deadline_exceeded = True
                if task is not None:
                    task.cancel()

            timer = loop.call_at(deadline, expire)
        try:
            if malformed is not None:
                raise CallFailure(INTERNAL, malformed)
            handler = self.lookup(path, md)
            if handler is None:
                service, _, name = path.lstrip("/").rpartition("/")
                msg = (
                    f"unknown method {name} for service {service}"
                    if self._has_service(service)
                    else f"unknown service {service}"
                )
                raise CallFailure(UNIMPLEMENTED, msg)
            await self._dispatch(handler, stream, ctx, encoding)
            code = ctx._code if ctx._code is not None else OK
            ctx.finish(code, ctx._details)
        except grpc.aio.AbortError:
            ctx.finish(ctx._code if ctx._code is not None else UNKNOWN, ctx._details)
        except CallFailure as exc:
            ctx.finish(exc.code, exc.message)
        except (StreamReset, asyncio.CancelledError):
            if ctx.deadline_exceeded and not stream.reset:
                ctx.finish(DEADLINE_EXCEEDED, "Deadline Exceeded")
            elif not stream.reset and not stream.closed:
                conn.reset_stream(stream, CANCEL)  # the server is stopping: no status to give
        except Exception as exc:
            log.exception("gRPC handler for %s failed", path)
            ctx.finish(UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
            if not stream.closed and not stream.reset:
                conn.reset_stream(stream, CANCEL)
            ctx.run_callbacks()

    def _http_error(self, stream: Stream, status: str) -> None:
        """A request that is not gRPC: an HTTP status alone (as grpc-go answers)."""
        block = encode_header(":status", status) + encode_header("content-type", "text/plain")
        stream.conn.send_headers(stream, block, end_stream=True)
        stream.conn.finish(stream)

    async def _dispatch(self, handler: Any, stream: Stream, ctx: CallContext, encoding: str | None) -> None:
        deserialize = handler.request_deserializer or (lambda b: b)
        serialize = handler.response_serializer or (lambda m: m)
        ctx._serializer = serialize
        if handler.request_streaming:
            requests = self._requests(stream, deserialize, encoding)
            ctx._requests = requests
            call = handler.stream_stream if handler.response_streaming else handler.stream_unary
            arg: Any = requests
        else:
            arg = deserialize(await self._receive(stream, encoding))
            call = handler.unary_stream if handler.response_streaming else handler.unary_unary
        if not handler.response_streaming:
            response = await _maybe_await(call(arg, ctx))
            if ctx._code not in (None, OK):
                return  # set_code() without abort(): the status alone, as grpc.aio does
            data = serialize(response)
            self.check_send_size(data)
            conn = stream.conn
            if not stream.sent_headers and not ctx._initial and not ctx._trailing and ctx._code is None:
                # the common case: HEADERS, DATA and trailers in one write
                head = conn.header_frames(stream, RESPONSE_HEADERS, end_stream=False)
                tail = conn.header_frames(stream, OK_TRAILERS, end_stream=True)
                if conn.try_send_all(stream, head, _frame_message(data), tail):
                    stream.sent_headers = True
                    conn.finish(stream)
                    return
            await ctx.send(data)
            return
        result = call(arg, ctx)
        if hasattr(result, "__aiter__"):
            try:
                async for item in result:
                    await ctx.send(serialize(item))
            finally:
                # the handler's own cleanup (its finally blocks) belongs to the call: run it here,
                # when the call ends or is cancelled, not later in a task of the garbage collector
                aclose = getattr(result, "aclose", None)
                if aclose is not None:
                    await aclose()
        else:  # a coroutine writing with context.write()
            await _maybe_await(result)

    async def _next_message(self, stream: Stream, encoding: str | None) -> bytes | None:
        """The stream's next request message (decompressed), or None once the client ended it."""
        while True:
            if stream.failure is not None:
                raise CallFailure(*stream.failure)
            item = stream.take()
            if item is not None:
                return self._decompress(item, encoding)
            if stream.ended:
                if stream.buffer:
                    raise CallFailure(INTERNAL, "grpc: request ended inside a message")
                return None
            await stream.wait()

    async def _receive(self, stream: Stream, encoding: str | None) -> bytes:
        """The request message of a unary-request call."""
        message = await self._next_message(stream, encoding)
        if message is None:
            raise CallFailure(INTERNAL, "grpc: error unmarshalling request: no request message")
        return message

    async def _requests(
        self, stream: Stream, deserialize: Callable[[bytes], Any], encoding: str | None
    ) -> AsyncIterator[Any]:
        while (message := await self._next_message(stream, encoding)) is not None:
            yield deserialize(message)

    def _decompress(self, item: tuple[int, bytes], encoding: str | None) -> bytes:
        flag, payload = item
        if not flag & 1:
            return payload
        if encoding in (None, "identity"):
            raise CallFailure(INTERNAL, "grpc: compressed flag set with identity or empty encoding")
        if encoding not in ("gzip", "deflate"):
            raise CallFailure(
                UNIMPLEMENTED, f'grpc: Decompressor is not installed for grpc-encoding "{encoding}"'
            )
        limit = self.max_receive_message_length
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            out = d.decompress(payload, limit + 1)
        except zlib.error as exc:
            raise CallFailure(INTERNAL, f"grpc: failed to decompress the received message: {exc}") from None
        if len(out) > limit:
            raise CallFailure(
                RESOURCE_EXHAUSTED, f"grpc: received message after decompression larger than max ({limit})"
            )
        return out


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: tuple[tuple[str, Any], ...]) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value

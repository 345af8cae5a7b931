"""The store's own gRPC server (examples/kvstore/h2grpc), tested as an independent reviewer.

A small test servicer (unary, server-streaming, client-streaming and bidi handlers of grpc's own
handler types, registered with ``GrpcServer.add_generic_rpc_handlers``) is hosted on a plain asyncio
server whose protocol factory is ``GrpcServer.protocol``, and driven three ways:

* with unmodified grpc.aio clients: large and many messages (flow control, frame splitting),
  metadata both ways, abort with codes and non-ASCII details, UNIMPLEMENTED, deadlines,
  cancellation, message-size limits, gzip, 200 concurrent calls, stop() while calls run, a
  slow-reading client;
* with raw sockets speaking HTTP/2 by hand (RFC 9113): preface, frame sizes, flow control both
  ways, stream ids and limits, CONTINUATION, padding, PING, SETTINGS, WINDOW_UPDATE, HTTP-level
  refusals, malformed HPACK and metadata, resets, and hostile patterns (a bidi handler reading
  and writing in two tasks, frames on streams half-closed or already answered, a PING flood from
  a client that never reads, rapid reset, stop() with such a client);
* HPACK (RFC 7541): Appendix C.3 / C.4 in sequence, Huffman strings (C.4, C.6), round trips,
  bad padding, EOS, table size updates, linear decoding time, a bounded cache;

and once with h2load (nghttp2's load generator) for unary calls over many streams.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import random
import re
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("grpc")
import grpc
import grpc.aio

from examples.kvstore.h2grpc import GrpcServer
from examples.kvstore.h2grpc.connection import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    STREAM_WINDOW,
    WINDOW_UPDATE,
    H2Connection,
    Stream,
    frame,
)
from examples.kvstore.h2grpc.hpack import (
    _CACHED_LENGTH,
    Decoder,
    HpackError,
    _encode_int,
    _huffman_cached,
    encode_header,
    encode_indexed,
    huffman_decode,
    huffman_encode,
)

ACK = 0x1
MAX_RECEIVE = 1 << 20  # the test server's max_receive_message_length


# ------------------------------------------------------------------------------ the test servicer


def payload(i: int, size: int) -> bytes:
    """Message ``i`` of a stream: reproducible bytes, different per message."""
    return random.Random(i).randbytes(size)


def sizes_of(request: bytes) -> list[int]:
    """``b"1,16385,3x65537"``: message sizes, ``NxS`` meaning N messages of S bytes."""
    out: list[int] = []
    for item in request.decode().split(","):
        count, _, size = item.rpartition("x")
        out += [int(size)] * int(count or 1)
    return out


@dataclass
class State:
    """What the handlers saw (the tests look at the server side through it)."""

    calls: int = 0
    started: int = 0
    yielded: int = 0
    cancelled: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    # the task each streaming handler's generator was closed in (its ``finally``)
    closed_in: list[asyncio.Task[Any] | None] = field(default_factory=list)


def servicer_handlers(state: State) -> Any:
    async def echo(request: bytes, context: Any) -> bytes:
        state.calls += 1
        return request

    async def meta(request: bytes, context: Any) -> bytes:
        await context.send_initial_metadata((("x-init", "a b"), ("x-init-bin", b"\x00\xff")))
        context.set_trailing_metadata((("x-trail", "t"), ("x-trail-bin", b"\x01\x02\x80")))
        return repr(sorted(context.invocation_metadata())).encode()

    async def abort(request: bytes, context: Any) -> bytes:
        name, _, details = request.decode().partition("\n")
        await context.abort(getattr(grpc.StatusCode, name), details, (("x-why", "because"),))
        raise AssertionError("abort() returned")

    async def fail(request: bytes, context: Any) -> bytes:
        raise ValueError("boom")

    async def sleep(request: bytes, context: Any) -> bytes:
        state.started += 1
        state.contexts.append(context)
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            state.cancelled.append("Sleep")
            raise
        return b"slept"

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        state.started += 1
        try:
            for i, size in enumerate(sizes_of(request)):
                state.yielded += 1
                yield payload(i, size)
        finally:
            state.closed_in.append(asyncio.current_task())

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    async def bidi_task(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """Reads in its own task while the generator writes (as the store's Watch does):
        ``burst N S`` answers N messages of S bytes, anything else is echoed."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def reader() -> None:
            async for request in requests:
                await queue.put(request)
            await queue.put(None)

        task = asyncio.create_task(reader())
        try:
            while (item := await queue.get()) is not None:
                if item.startswith(b"burst "):
                    _, count, size = item.split()
                    for i in range(int(count)):
                        yield payload(i, int(size))
                else:
                    yield item
        finally:
            task.cancel()

    async def total(requests: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        async for request in requests:
            n += len(request)
        return str(n).encode()

    async def hold(requests: AsyncIterator[bytes], context: Any) -> bytes:
        """Never reads its requests."""
        state.started += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            state.cancelled.append("Hold")
            raise
        return b""

    return grpc.method_handlers_generic_handler(
        "test.T",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Meta": grpc.unary_unary_rpc_method_handler(meta),
            "Abort": grpc.unary_unary_rpc_method_handler(abort),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "BidiTask": grpc.stream_stream_rpc_method_handler(bidi_task),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Hold": grpc.stream_unary_rpc_method_handler(hold),
        },
    )


@dataclass
class Served:
    server: GrpcServer
    port: int
    state: State

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    def connections(self) -> list[H2Connection]:
        return list(self.server.connections)

    def idle(self) -> bool:
        """No call task left and no stream open on any connection."""
        return not self.server.tasks and all(not c.streams for c in self.server.connections)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    state = State()
    server = GrpcServer(max_receive_message_length=MAX_RECEIVE)
    server.add_generic_rpc_handlers((servicer_handlers(state),))
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server.protocol, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield Served(server, port, state)
    finally:
        await asyncio.wait_for(server.stop(grace=0.1), 5)
        listener.close()
        await listener.wait_closed()


async def eventually(cond: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------ grpc.aio clients


async def test_unary_echo_and_unknown_handler_failure(served: Served) -> None:
    """gRPC over HTTP/2 (PROTOCOL-HTTP2.md): a unary call answers its message with status OK; a
    handler that raises answers UNKNOWN with the exception in the details."""
    async with served.channel() as ch:
        echo = ch.unary_unary("/test.T/Echo")
        assert await asyncio.wait_for(echo(b"hello"), 5) == b"hello"
        assert await asyncio.wait_for(echo(b""), 5) == b""
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary("/test.T/Fail")(b""), 5)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "boom" in (err.value.details() or "")
    assert served.idle()


async def test_server_streaming_large_messages(served: Served) -> None:
    """RFC 9113 §6.9 / §4.2: a server stream of several MB, with messages larger than 16 KiB (one
    frame) and than 64 KiB (the default window), arrives intact and in order: DATA is split at the
    peer's frame size and waits on both windows."""
    sizes = [0, 1, 16379, 16380, 16384, 16385, 65535, 65536, 65537, 300_000, 1 << 20, *([200_000] * 12)]
    request = ",".join(map(str, sizes)).encode()
    assert sum(sizes) > 3 << 20
    async with served.channel() as ch:
        call = ch.unary_stream("/test.T/Stream")(request, timeout=20)
        got = [m async for m in call]
        assert await call.code() == grpc.StatusCode.OK
    assert [len(m) for m in got] == sizes
    assert all(m == payload(i, len(m)) for i, m in enumerate(got))
    assert served.idle()


async def test_bidi_many_messages_each_way(served: Served) -> None:
    """gRPC bidi streaming: 600 messages each way (small and over one frame), written while the
    answers are read, echoed in order."""
    messages = [payload(i, 17_000 if i % 50 == 0 else i % 300) for i in range(600)]
    async with served.channel() as ch:
        call = ch.stream_stream("/test.T/Bidi")(timeout=20)

        async def write() -> None:
            for m in messages:
                await call.write(m)
            await call.done_writing()

        writer = asyncio.create_task(write())
        got = [m async for m in call]
        await writer
        assert await call.code() == grpc.StatusCode.OK
    assert got == messages


async def test_client_streaming_total(served: Served) -> None:
    """gRPC client streaming: the handler iterates every request, then answers once; an upload many
    times the stream window (RFC 9113 §6.9) gets through as the handler reads."""
    async with served.channel() as ch:
        call = ch.stream_unary("/test.T/Total")
        assert await asyncio.wait_for(call(iter([b"a" * 70_000, b"b" * 5, b""])), 10) == b"70005"
        # 8 MB: eight times the stream's receive window, given back as the handler reads
        big = [payload(i, 1_000_000) for i in range(8)]
        assert await asyncio.wait_for(call(iter(big)), 10) == b"8000000"


async def test_metadata_both_ways(served: Served) -> None:
    """gRPC metadata: custom headers reach the handler (-bin values base64-decoded, transport headers
    left out); the handler's initial and trailing metadata reach the client (-bin ones as bytes)."""
    md = (("x-a", "1"), ("x-b-bin", b"\x00\x01\xfe\xff"), ("x-c-bin", b"\x00"))
    async with served.channel() as ch:
        call = ch.unary_unary("/test.T/Meta")(b"", metadata=md, timeout=5)
        seen = dict(ast.literal_eval((await call).decode()))
        initial = tuple(await call.initial_metadata())
        trailing = tuple(await call.trailing_metadata())
    assert seen["x-a"] == "1" and seen["x-b-bin"] == b"\x00\x01\xfe\xff" and seen["x-c-bin"] == b"\x00"
    assert not {"content-type", "te", "grpc-timeout", "grpc-accept-encoding"} & set(seen)
    assert ("x-init", "a b") in initial and ("x-init-bin", b"\x00\xff") in initial
    assert ("x-trail", "t") in trailing and ("x-trail-bin", b"\x01\x02\x80") in trailing


@pytest.mark.parametrize(
    ("code", "details"),
    [
        ("NOT_FOUND", "plain"),
        ("FAILED_PRECONDITION", "ключ «x» не найден: 100% ✓"),
        ("PERMISSION_DENIED", "%41 is not an A, \x7f\t\n"),
    ],
)
async def test_abort_codes_and_percent_encoded_details(served: Served, code: str, details: str) -> None:
    """gRPC's grpc-message: details outside printable ASCII (and '%') are percent-encoded UTF-8, so
    the client reads back exactly what abort() was given, with the code and trailing metadata."""
    async with served.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary("/test.T/Abort")(f"{code}\n{details}".encode()), 5)
    assert err.value.code() == getattr(grpc.StatusCode, code)
    assert err.value.details() == details
    assert ("x-why", "because") in tuple(err.value.trailing_metadata() or ())


async def test_unknown_method_and_service(served: Served) -> None:
    """gRPC: a path with no handler answers UNIMPLEMENTED, naming the method when the service is
    registered (grpc-go's "unknown method M for service S") and the service otherwise, whatever was
    called before."""
    async with served.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary("/test.T/Nope")(b""), 5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert err.value.details() == "unknown method Nope for service test.T"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary("/other.S/Echo")(b""), 5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert err.value.details() == "unknown service other.S"
        # a streaming call to nowhere, answered before the client writes anything (a write racing
        # the answer would fail in grpc.aio's client, which then reports INTERNAL itself)
        call = ch.stream_stream("/test.T/Nope2")(timeout=5)
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.UNIMPLEMENTED
    assert served.idle()


async def test_deadline_cancels_the_handler(served: Served) -> None:
    """gRPC deadlines: a handler slower than the client's timeout is cancelled on the server, the
    client sees DEADLINE_EXCEEDED, and no task or stream is left."""
    async with served.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary("/test.T/Sleep")(b"5", timeout=0.3), 5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: served.state.cancelled == ["Sleep"], what="handler cancelled")
        await eventually(served.idle, what="no task, no stream")


async def test_client_cancel_mid_stream(served: Served) -> None:
    """RFC 9113 §8.1 / gRPC cancellation: a client cancelling a server stream (RST_STREAM CANCEL)
    cancels the call's task, which closes the handler's generator itself (its ``finally`` runs in
    the call, not later in a garbage collector's task); nothing is left in GrpcServer.tasks or the
    connection's streams."""
    async with served.channel() as ch:
        call = ch.unary_stream("/test.T/Stream")(b"1000x20000", timeout=10)
        for _ in range(3):
            await asyncio.wait_for(call.read(), 5)
        call_tasks = set(served.server.tasks)
        assert len(call_tasks) == 1
        call.cancel()
        await eventually(served.idle, what="no task, no stream")
        assert served.state.closed_in == list(call_tasks)
        assert served.state.yielded < 1000
        assert len(served.connections()) == 1  # the connection itself stays
        assert await asyncio.wait_for(ch.unary_unary("/test.T/Echo")(b"still"), 5) == b"still"


async def test_request_over_max_receive_is_refused_unbuffered(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC max_receive_message_length: a request whose length prefix exceeds it answers
    RESOURCE_EXHAUSTED (grpc-go's message), decided from the prefix: the body is never buffered."""
    biggest = 0
    original = Stream.receive

    def receive(self: Stream, data: bytes | memoryview) -> None:
        nonlocal biggest
        original(self, data)
        biggest = max(biggest, len(self.buffer))

    monkeypatch.setattr(Stream, "receive", receive)
    size = 3 * MAX_RECEIVE
    async with served.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(ch.unary_unary("/test.T/Echo")(b"x" * size), 10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == f"grpc: received message larger than max ({size} vs. {MAX_RECEIVE})"
        assert biggest < 64 * 1024, biggest
        assert served.state.calls == 0
        # at the limit it is accepted
        assert (
            len(await asyncio.wait_for(ch.unary_unary("/test.T/Echo")(b"y" * MAX_RECEIVE), 10)) == MAX_RECEIVE
        )
    await eventually(served.idle)


async def test_gzip_requests(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC compression: gzip-compressed requests (compressed flag + grpc-encoding: gzip) are
    inflated for the handler; one that inflates past max_receive_message_length is refused with
    RESOURCE_EXHAUSTED."""
    flags: list[int] = []
    original = served.server._decompress

    def spy(item: tuple[int, bytes], encoding: str | None) -> bytes:
        flags.append(item[0])
        return original(item, encoding)

    monkeypatch.setattr(served.server, "_decompress", spy)
    message = b"compress me " * 10_000
    async with served.channel() as ch:
        got = await asyncio.wait_for(
            ch.unary_unary("/test.T/Echo")(message, compression=grpc.Compression.Gzip), 5
        )
        assert got == message
        assert flags == [1]
        call = ch.stream_unary("/test.T/Total")
        assert await asyncio.wait_for(call(iter([message] * 3), compression=grpc.Compression.Gzip), 5) == (
            str(3 * len(message)).encode()
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:  # 2 MiB of zeros: a few KB on the wire
            await asyncio.wait_for(
                ch.unary_unary("/test.T/Echo")(bytes(2 * MAX_RECEIVE), compression=grpc.Compression.Gzip), 5
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_200_concurrent_calls_on_one_channel(served: Served) -> None:
    """RFC 9113 §5.1.2: 200 concurrent streams on one connection (under the advertised
    SETTINGS_MAX_CONCURRENT_STREAMS), each answered with its own message."""
    async with served.channel() as ch:
        echo = ch.unary_unary("/test.T/Echo")
        answers = await asyncio.wait_for(
            asyncio.gather(*(echo(payload(i, i * 37 % 5000)) for i in range(200))), 15
        )
        assert answers == [payload(i, i * 37 % 5000) for i in range(200)]
        assert len(served.connections()) == 1
    assert served.state.calls == 200


async def test_stop_while_calls_run(served: Served) -> None:
    """GrpcServer.stop(): GOAWAY, the calls in progress end (cancelled after the grace period),
    every call task is awaited, the connections are closed."""
    async with served.channel() as ch:
        sleeps = [asyncio.ensure_future(ch.unary_unary("/test.T/Sleep")(b"30", timeout=10)) for _ in range(5)]
        assert await asyncio.wait_for(ch.unary_unary("/test.T/Echo")(b"x"), 5) == b"x"
        streaming = ch.unary_stream("/test.T/Stream")(b"100000x1000", timeout=10)
        await asyncio.wait_for(streaming.read(), 5)
        await eventually(lambda: served.state.started == 6, what="calls started")
        tasks = set(served.server.tasks)
        assert len(tasks) == 6
        connections = served.connections()
        await asyncio.wait_for(served.server.stop(grace=0.2), 5)
        assert all(t.done() for t in tasks) and not served.server.tasks
        assert served.state.cancelled == ["Sleep"] * 5
        assert len(served.state.closed_in) == 1 and served.state.closed_in[0] in tasks
        assert all(c.closed and c.lost.done() for c in connections) and not served.server.connections
        results = await asyncio.wait_for(asyncio.gather(*sleeps, return_exceptions=True), 5)
        assert all(isinstance(r, grpc.aio.AioRpcError) for r in results), results
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(_drain_stream(streaming), 5)


async def _drain_stream(call: Any) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


async def test_slow_reader_bounds_server_memory(served: Served) -> None:
    """RFC 9113 §5.2: a client that reads a server stream slowly holds the sender on its window:
    the handler produces only about what the windows allow, and the server's write buffer stays
    small, however much the handler has to send (here 48 MiB)."""
    size = 1 << 20
    async with served.channel() as ch:
        call = ch.unary_stream("/test.T/Stream")(f"48x{size}".encode(), timeout=20)
        first = await asyncio.wait_for(call.read(), 5)
        assert first == payload(0, size)
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        produced = served.state.yielded
        (conn,) = served.connections()
        assert conn.transport is not None
        buffered = conn.transport.get_write_buffer_size()
        assert produced <= 32, produced  # grpc's windows are several MB (about 10 here)
        assert buffered <= 1 << 20, buffered
        got = 1
        while (m := await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
            assert m == payload(got, size)
            got += 1
        assert got == 48


# ------------------------------------------------------------------------------ raw HTTP/2


class Frame(NamedTuple):
    kind: int
    flags: int
    stream: int
    payload: bytes
    headers: dict[str, str] | None  # a decoded header block (HEADERS with END_HEADERS)


def grpc_message(data: bytes, compressed: bool = False) -> bytes:
    return bytes((int(compressed),)) + len(data).to_bytes(4, "big") + data


def request_block(
    path: str, method: str = "POST", content_type: str = "application/grpc", extra: tuple[Any, ...] = ()
) -> bytes:
    block = encode_header(":method", method) + encode_indexed(6)  # :scheme http
    block += encode_header(":path", path) + encode_header(":authority", "test")
    block += encode_header("content-type", content_type) + encode_header("te", "trailers")
    for name, value in extra:
        block += encode_header(name, value)
    return block


class Raw:
    """An HTTP/2 client written by hand: frames out, frames in (HPACK-decoded headers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder()

    @classmethod
    async def open(cls, port: int, preface: bytes | None = PREFACE, sock: socket.socket | None = None) -> Raw:
        if sock is not None:
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        if preface is not None:
            writer.write(preface + frame(SETTINGS, 0, 0))
        return raw

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.writer.write(frame(kind, flags, stream_id, payload))

    def request(
        self, stream_id: int, path: str, message: bytes | None = None, end: bool = True, **kw: Any
    ) -> None:
        """HEADERS (+ one DATA with ``message``), END_STREAM on the last frame when ``end``."""
        last = END_STREAM if end else 0
        self.send(
            HEADERS, END_HEADERS | (last if message is None else 0), stream_id, request_block(path, **kw)
        )
        if message is not None:
            self.send(DATA, last, stream_id, grpc_message(message))

    async def next(self, timeout: float = 3.0) -> Frame | None:
        """The next frame, None at EOF."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), timeout)
            length = int.from_bytes(head[:3], "big")
            body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        kind, flags, sid = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        headers = None
        if kind == HEADERS:
            assert flags & END_HEADERS, "the test server's header blocks fit one frame"
            headers = dict(self.decoder.decode(body))
        return Frame(kind, flags, sid, body, headers)

    async def until(self, pred: Callable[[Frame], bool], timeout: float = 3.0) -> Frame:
        while True:
            f = await self.next(timeout)
            assert f is not None, "connection closed"
            if pred(f):
                return f

    async def rest(self, timeout: float = 3.0) -> list[Frame]:
        """Every frame until the server closes the connection."""
        out = []
        while (f := await self.next(timeout)) is not None:
            out.append(f)
        return out

    async def response(
        self, stream_id: int, timeout: float = 3.0, headers: dict[str, str] | None = None
    ) -> tuple[dict[str, str], bytes, dict[str, str]]:
        """(headers, DATA bytes, trailers) of one stream (``headers`` when they were read already);
        trailers is {} for a trailers-only answer (then headers holds the status)."""
        data = bytearray()
        while True:
            f = await self.until(lambda f: f.stream == stream_id, timeout)
            assert f.kind != RST_STREAM, f"stream reset: {f}"
            if f.kind == HEADERS:
                assert f.headers is not None
                if headers is None:
                    headers = f.headers
                    if f.flags & END_STREAM:
                        return headers, bytes(data), {}
                else:
                    assert f.flags & END_STREAM
                    return headers, bytes(data), f.headers
            elif f.kind == DATA:
                data += f.payload
                if f.payload:
                    self.send(WINDOW_UPDATE, 0, 0, len(f.payload).to_bytes(4, "big"))
                    self.send(WINDOW_UPDATE, 0, stream_id, len(f.payload).to_bytes(4, "big"))

    async def quiet(self, timeout: float) -> bool:
        """Nothing arrives within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self.reader.readexactly(9), timeout)
        except asyncio.TimeoutError:
            return True
        return False

    async def ping_pong(self, data: bytes = b"pingpong") -> None:
        """The connection is alive: a PING is answered."""
        self.send(PING, 0, 0, data)
        await self.until(lambda f: f.kind == PING and f.flags & ACK and f.payload == data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


def goaway_code(frames: list[Frame]) -> int:
    goaways = [f for f in frames if f.kind == GOAWAY]
    assert goaways, f"no GOAWAY in {frames}"
    return int.from_bytes(goaways[-1].payload[4:8], "big")


def status_of(headers: dict[str, str], trailers: dict[str, str]) -> tuple[str | None, str | None]:
    final = trailers or headers
    return final.get("grpc-status"), final.get("grpc-message")


async def test_raw_unary_call_and_settings_ack(served: Served) -> None:
    """RFC 9113 §3.4 / §6.5.3: the server's preface is a SETTINGS frame, the client's SETTINGS is
    acknowledged (an empty SETTINGS with ACK); a hand-written unary call gets :status 200,
    content-type application/grpc, the message, and grpc-status 0 in trailers."""
    raw = await Raw.open(served.port)
    first = await raw.next()
    assert first is not None and first.kind == SETTINGS and not first.flags & ACK
    await raw.until(lambda f: f.kind == SETTINGS and bool(f.flags & ACK) and f.payload == b"")
    raw.request(1, "/test.T/Echo", b"raw hello")
    headers, data, trailers = await raw.response(1)
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
    assert data == grpc_message(b"raw hello")
    assert status_of(headers, trailers) == ("0", None)
    await raw.close()


async def test_raw_bad_preface(served: Served) -> None:
    """RFC 9113 §3.4: a connection that does not start with the client preface is a connection
    error PROTOCOL_ERROR: GOAWAY, then the connection is closed."""
    raw = await Raw.open(served.port, preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    frames = await raw.rest()
    assert goaway_code(frames) == PROTOCOL_ERROR
    assert not served.server.connections or all(c.closed for c in served.server.connections)
    await raw.close()


async def test_raw_frame_over_max_frame_size(served: Served) -> None:
    """RFC 9113 §4.2: a frame larger than SETTINGS_MAX_FRAME_SIZE (16384 here) is FRAME_SIZE_ERROR,
    decided from the frame header alone."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Hold", end=False)
    raw.writer.write(frame(DATA, 0, 1, bytes(16385))[: 9 + 100])  # the header is enough
    frames = await raw.rest()
    assert goaway_code(frames) == FRAME_SIZE_ERROR
    await eventually(served.idle)
    await raw.close()


async def test_raw_data_beyond_stream_window(served: Served) -> None:
    """RFC 9113 §6.9.1: DATA beyond the stream's window (SETTINGS_INITIAL_WINDOW_SIZE, 1 MiB here,
    not given back while the handler reads nothing) is a stream error FLOW_CONTROL_ERROR: RST_STREAM,
    the handler is cancelled, and the connection carries on."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Hold", end=False)
    chunk = grpc_message(bytes(16384 - 5))  # one message per frame
    for _ in range(STREAM_WINDOW // len(chunk)):
        raw.send(DATA, 0, 1, chunk)
    raw.send(DATA, 0, 1, bytes(STREAM_WINDOW % len(chunk)))  # exactly the window: still fine
    await raw.ping_pong(b"atwindow")
    assert 1 in served.connections()[0].streams
    raw.send(DATA, 0, 1, b"\x00")  # one byte too many
    rst = await raw.until(lambda f: f.kind == RST_STREAM)
    assert rst.stream == 1 and int.from_bytes(rst.payload, "big") == FLOW_CONTROL_ERROR
    await eventually(lambda: served.state.cancelled == ["Hold"])
    await eventually(served.idle)
    raw.request(3, "/test.T/Echo", b"after")
    assert (await raw.response(3))[1] == grpc_message(b"after")
    await raw.close()


async def test_raw_headers_on_even_stream(served: Served) -> None:
    """RFC 9113 §5.1.1: a client opening an even-numbered stream is a connection error PROTOCOL_ERROR."""
    raw = await Raw.open(served.port)
    raw.request(2, "/test.T/Echo", b"x")
    assert goaway_code(await raw.rest()) == PROTOCOL_ERROR
    await raw.close()


@pytest.mark.parametrize("kind", [DATA, RST_STREAM])
async def test_raw_frames_on_idle_streams(served: Served, kind: int) -> None:
    """RFC 9113 §5.1 (idle): DATA or RST_STREAM on a stream never opened -- above the last one the
    client opened, or even-numbered (this server opens none) -- is a connection error PROTOCOL_ERROR."""
    for stream_id in (7, 2):
        raw = await Raw.open(served.port)
        raw.request(3, "/test.T/Echo", b"x")
        await raw.response(3)
        raw.send(kind, 0, stream_id, bytes(4))
        assert goaway_code(await raw.rest()) == PROTOCOL_ERROR, stream_id
        await raw.close()


async def test_raw_stream_ids_must_increase(served: Served) -> None:
    """RFC 9113 §5.1.1: a new stream id lower than one already opened is a connection error
    PROTOCOL_ERROR."""
    raw = await Raw.open(served.port)
    raw.request(5, "/test.T/Echo", b"x")
    await raw.response(5)
    raw.request(3, "/test.T/Echo", b"x")
    assert goaway_code(await raw.rest()) == PROTOCOL_ERROR
    await raw.close()


async def test_raw_continuation(served: Served) -> None:
    """RFC 9113 §6.10: a header block split over HEADERS + CONTINUATION frames is one block; any other
    frame between them is a connection error PROTOCOL_ERROR."""
    raw = await Raw.open(served.port)
    block = request_block("/test.T/Meta", extra=(("x-long", "v" * 3000),))
    raw.send(HEADERS, 0, 1, block[:10])
    raw.send(CONTINUATION, 0, 1, block[10:2000])
    raw.send(CONTINUATION, END_HEADERS, 1, block[2000:])
    raw.send(DATA, END_STREAM, 1, grpc_message(b""))
    headers, data, trailers = await raw.response(1)
    assert status_of(headers, trailers) == ("0", None)
    seen = dict(ast.literal_eval(data[5:].decode()))
    assert seen["x-long"] == "v" * 3000
    raw.send(HEADERS, 0, 3, block[:10])
    raw.send(PING, 0, 0, b"12345678")
    assert goaway_code(await raw.rest()) == PROTOCOL_ERROR
    await raw.close()


async def test_raw_ping_answered(served: Served) -> None:
    """RFC 9113 §6.7: a PING is answered with a PING carrying ACK and the same 8 bytes; a PING ACK is
    not answered; a PING of another length is FRAME_SIZE_ERROR."""
    raw = await Raw.open(served.port)
    raw.send(PING, ACK, 0, b"ignoreme")
    await raw.ping_pong(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    raw.send(PING, 0, 0, b"short")
    frames = await raw.rest()
    assert not [f for f in frames if f.kind == PING and f.payload == b"ignoreme"]
    assert goaway_code(frames) == FRAME_SIZE_ERROR
    await raw.close()


async def test_raw_window_update_of_zero(served: Served) -> None:
    """RFC 9113 §6.9: a WINDOW_UPDATE of 0 is a stream error PROTOCOL_ERROR on a stream, and a
    connection error PROTOCOL_ERROR on stream 0."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Sleep", b"5")
    await eventually(lambda: served.state.started == 1)
    raw.send(WINDOW_UPDATE, 0, 1, bytes(4))
    rst = await raw.until(lambda f: f.kind == RST_STREAM)
    assert rst.stream == 1 and int.from_bytes(rst.payload, "big") == PROTOCOL_ERROR
    await eventually(lambda: served.state.cancelled == ["Sleep"])
    await raw.ping_pong()
    raw.send(WINDOW_UPDATE, 0, 0, bytes(4))
    assert goaway_code(await raw.rest()) == PROTOCOL_ERROR
    await raw.close()


async def test_raw_non_post_is_405(served: Served) -> None:
    """gRPC over HTTP/2: a method other than POST is answered with HTTP 405 alone (no grpc-status)."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Echo", method="GET")
    headers, data, trailers = await raw.response(1)
    assert headers[":status"] == "405" and "grpc-status" not in headers and not data and not trailers
    await raw.ping_pong()
    await raw.close()


async def test_raw_non_grpc_content_type_is_415(served: Served) -> None:
    """gRPC over HTTP/2: a content-type other than application/grpc[+...] is answered with HTTP 415."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Echo", b"x", content_type="application/json")
    headers, _, _ = await raw.response(1)
    assert headers[":status"] == "415"
    raw.request(3, "/test.T/Echo", b"x", content_type="application/grpc+proto")
    headers, data, trailers = await raw.response(3)
    assert headers[":status"] == "200" and data == grpc_message(b"x")
    assert status_of(headers, trailers) == ("0", None)
    await raw.close()


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # indexed field 0 (RFC 7541 §6.1)
        encode_indexed(62),  # an empty dynamic table
        b"\x82\x44\x85" + b"\xff" * 5,  # a Huffman string that is all padding / EOS
        b"\x82\x04\x7f",  # a string length beyond the block
        b"\xff\xff\xff\xff\xff\xff\x01",  # an integer overflow
    ],
    ids=["index0", "no-dynamic-entry", "eos", "truncated", "overflow"],
)
async def test_raw_malformed_hpack(served: Served, block: bytes) -> None:
    """RFC 9113 §4.3: a header block that does not decode is a connection error COMPRESSION_ERROR."""
    raw = await Raw.open(served.port)
    raw.send(HEADERS, END_HEADERS | END_STREAM, 1, block)
    assert goaway_code(await raw.rest()) == COMPRESSION_ERROR
    await raw.close()


async def test_raw_client_reset_mid_call(served: Served) -> None:
    """RFC 9113 §6.4: RST_STREAM from the client ends the stream: the handler is cancelled, the
    server sends nothing more on it (no RST_STREAM back, §5.4.2), and the connection carries on."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Stream", b"100x20000", end=True)
    await raw.until(lambda f: f.kind == DATA and f.stream == 1)
    call_tasks = set(served.server.tasks)
    raw.send(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))
    await eventually(served.idle)
    assert served.state.closed_in == list(call_tasks)
    raw.send(WINDOW_UPDATE, 0, 0, (1 << 20).to_bytes(4, "big"))  # what stream 1 used of it
    raw.request(3, "/test.T/Echo", b"next")
    assert (await raw.response(3))[1] == grpc_message(b"next")
    raw.send(GOAWAY, 0, 0, bytes(8))
    later = await raw.rest()
    assert not [f for f in later if f.stream == 1 and f.kind in (HEADERS, RST_STREAM)]
    await raw.close()


async def test_raw_deadline_recorded_by_the_server(served: Served) -> None:
    """gRPC grpc-timeout: when the server's own deadline passes (the client does not reset), the
    handler is cancelled, the context records deadline_exceeded, and the status is DEADLINE_EXCEEDED."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Sleep", b"5", extra=(("grpc-timeout", "100m"),))
    headers, _, trailers = await raw.response(1)
    assert status_of(headers, trailers) == ("4", "Deadline Exceeded")
    assert served.state.cancelled == ["Sleep"]
    assert served.state.contexts[0].deadline_exceeded
    await eventually(served.idle)
    await raw.close()


async def test_raw_sender_waits_on_the_window(served: Served) -> None:
    """RFC 9113 §6.9.1: with the default 65535-byte windows and no WINDOW_UPDATE from the client, the
    server sends exactly 65535 bytes of DATA and its handler waits; every WINDOW_UPDATE lets exactly
    that much more through."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Stream", b"40x262144")
    first = await raw.until(lambda f: f.stream == 1)
    assert first.kind == HEADERS and first.headers is not None and first.headers[":status"] == "200"
    received = 0
    while received < 65535:
        f = await raw.until(lambda f: f.kind == DATA)
        assert f.stream == 1 and len(f.payload) <= 16384
        received += len(f.payload)
    assert received == 65535
    assert await raw.quiet(0.3)
    assert served.state.yielded == 1
    (conn,) = served.connections()
    assert conn.transport is not None and conn.transport.get_write_buffer_size() < 65536
    raw.send(WINDOW_UPDATE, 0, 1, (1000).to_bytes(4, "big"))  # the connection window is still 0
    assert await raw.quiet(0.2)
    raw.send(WINDOW_UPDATE, 0, 0, (1000).to_bytes(4, "big"))
    f = await raw.until(lambda f: f.kind == DATA)
    assert len(f.payload) == 1000
    raw.send(WINDOW_UPDATE, 0, 0, (65535).to_bytes(4, "big"))
    raw.send(WINDOW_UPDATE, 0, 1, (65535).to_bytes(4, "big"))
    _, data, trailers = await raw.response(1, headers=first.headers, timeout=10)  # grants as it reads
    assert status_of({}, trailers) == ("0", None)
    total = received + 1000 + len(data)
    assert total == 40 * (5 + 262144)
    await raw.close()


async def test_raw_peer_settings_window_and_frame_size(served: Served) -> None:
    """RFC 9113 §6.9.2 / §6.5.2: a SETTINGS_INITIAL_WINDOW_SIZE of 0 holds the stream's DATA back;
    raising it applies to the open stream at once; the client's SETTINGS_MAX_FRAME_SIZE lets the
    server send larger DATA frames, never larger than it."""
    raw = await Raw.open(served.port)
    raw.send(SETTINGS, 0, 0, struct.pack(">HIHI", 0x4, 0, 0x5, 65536))
    raw.send(WINDOW_UPDATE, 0, 0, (10 << 20).to_bytes(4, "big"))
    await raw.until(lambda f: f.kind == SETTINGS and bool(f.flags & ACK))
    raw.request(1, "/test.T/Stream", b"200000")
    first = await raw.until(lambda f: f.stream == 1)
    assert first.kind == HEADERS and first.headers is not None
    assert await raw.quiet(0.2)
    raw.send(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 1 << 20))
    sizes = []
    while True:
        f = await raw.until(lambda f: f.stream == 1)
        if f.kind != DATA:
            break
        sizes.append(len(f.payload))
    assert f.kind == HEADERS and f.headers is not None and f.headers.get("grpc-status") == "0"
    assert sum(sizes) == 5 + 200000 and max(sizes) == 65536
    await raw.close()


async def test_raw_message_framing_across_data_frames(served: Served) -> None:
    """gRPC length-prefixed messages are independent of DATA frames: messages split at every byte
    (the 5-byte prefix too), several in one frame, and empty DATA frames are read alike; a request
    that ends inside a message answers INTERNAL."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Total", end=False)
    whole = grpc_message(b"abc") + grpc_message(b"") + grpc_message(b"defgh")
    raw.send(DATA, 0, 1, whole)
    for byte in grpc_message(b"split into bytes"):
        raw.send(DATA, 0, 1, bytes((byte,)))
        raw.send(DATA, 0, 1, b"")
    raw.send(DATA, END_STREAM, 1, b"")
    headers, data, trailers = await raw.response(1)
    assert data == grpc_message(b"24") and status_of(headers, trailers) == ("0", None)
    raw.request(3, "/test.T/Echo", end=False)
    raw.send(DATA, END_STREAM, 3, grpc_message(b"truncated")[:-2])
    headers, _, trailers = await raw.response(3)
    assert status_of(headers, trailers) == ("13", "grpc: request ended inside a message")
    await eventually(served.idle)
    await raw.close()


async def test_raw_padding_and_priority_fields(served: Served) -> None:
    """RFC 9113 §6.1 / §6.2: padding (and HEADERS' priority fields) are removed before the content is
    read; padding as long as the payload is a connection error PROTOCOL_ERROR."""
    raw = await Raw.open(served.port)
    block = request_block("/test.T/Echo")
    padded_flag, priority_flag = 0x8, 0x20
    raw.send(HEADERS, END_HEADERS | padded_flag | priority_flag, 1, b"\x03" + bytes(5) + block + b"pad")
    raw.send(DATA, END_STREAM | padded_flag, 1, b"\x07" + grpc_message(b"padded") + bytes(7))
    headers, data, trailers = await raw.response(1)
    assert data == grpc_message(b"padded") and status_of(headers, trailers) == ("0", None)
    raw.request(3, "/test.T/Total", end=False)
    raw.send(DATA, padded_flag, 3, b"\x05" + bytes(4))
    assert goaway_code(await raw.rest()) == PROTOCOL_ERROR
    await raw.close()


@pytest.mark.parametrize(
    ("encoding", "status"),
    [(None, "13"), ("identity", "13"), ("snappy", "12"), ("gzip", "13")],
)
async def test_raw_compressed_flag(served: Served, encoding: str | None, status: str) -> None:
    """gRPC message framing: a compressed message needs a grpc-encoding this server has (INTERNAL
    without one, UNIMPLEMENTED for one it lacks), and must inflate (INTERNAL when it does not)."""
    raw = await Raw.open(served.port)
    extra = (("grpc-encoding", encoding),) if encoding else ()
    raw.send(HEADERS, END_HEADERS, 1, request_block("/test.T/Echo", extra=extra))
    raw.send(DATA, END_STREAM, 1, grpc_message(b"not deflated", compressed=True))
    headers, _, trailers = await raw.response(1)
    assert status_of(headers, trailers)[0] == status
    await eventually(served.idle)
    await raw.close()


async def test_raw_streams_beyond_max_concurrent_are_refused(served: Served) -> None:
    """RFC 9113 §5.1.2: a stream beyond the advertised SETTINGS_MAX_CONCURRENT_STREAMS (1024) is
    refused with RST_STREAM REFUSED_STREAM; the others carry on."""
    raw = await Raw.open(served.port)
    first = await raw.next()
    assert first is not None and first.kind == SETTINGS
    advertised = dict(struct.iter_unpack(">HI", first.payload))
    limit = advertised[0x3]
    for i in range(limit + 1):
        raw.request(2 * i + 1, "/test.T/Sleep", b"10")
    rst = await raw.until(lambda f: f.kind == RST_STREAM, timeout=5)
    assert rst.stream == 2 * limit + 1 and int.from_bytes(rst.payload, "big") == 0x7
    await eventually(lambda: served.state.started == limit, timeout=5)
    await raw.ping_pong()
    await raw.close()


async def test_raw_rapid_reset(served: Served) -> None:
    """RFC 9113 §10.5 (CVE-2023-44487, "rapid reset"): 2000 streams opened and reset at once leave no
    call task or stream behind, and the connection carries on."""
    raw = await Raw.open(served.port)
    burst = bytearray()
    for i in range(2000):
        burst += frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, request_block("/test.T/Sleep"))
        burst += frame(RST_STREAM, 0, 2 * i + 1, CANCEL.to_bytes(4, "big"))
    raw.writer.write(bytes(burst))
    await raw.ping_pong()
    await eventually(served.idle)
    raw.request(4001, "/test.T/Echo", b"after")
    assert (await raw.response(4001))[1] == grpc_message(b"after")
    await raw.close()


# ------------------------------------------------------------------------------ hostile patterns


async def test_raw_concurrent_reader_and_writer_tasks(served: Served) -> None:
    """A bidi handler reading its requests in one task while writing in another (the store's Watch):
    the reader waiting for a request and the writer waiting for a window are both woken; a request
    that arrives while the writer is blocked still reaches the reader."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/BidiTask", b"burst 4 65536", end=False)
    received = 0
    while received < 65535:  # the writer is now blocked on the window, the reader on requests
        f = await raw.until(lambda f: f.kind == DATA)
        received += len(f.payload)
    await asyncio.sleep(0.05)
    raw.send(DATA, 0, 1, grpc_message(b"echo me"))
    await asyncio.sleep(0.05)
    raw.send(WINDOW_UPDATE, 0, 0, (10 << 20).to_bytes(4, "big"))
    raw.send(WINDOW_UPDATE, 0, 1, (10 << 20).to_bytes(4, "big"))
    data = bytearray()
    want = 4 * (5 + 65536) + len(grpc_message(b"echo me")) - received
    while len(data) < want:
        f = await raw.until(lambda f: f.kind == DATA, timeout=2)
        data += f.payload
    assert bytes(data).endswith(grpc_message(b"echo me"))
    raw.send(DATA, END_STREAM, 1, b"")
    final, _, _ = await raw.response(1)  # (the response headers were read above)
    assert final.get("grpc-status") == "0"
    await raw.close()


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (("x-bad-bin", "a"), "13"),  # one base64 character too many
        (("x-bad-bin", "AA!A"), "13"),  # not the base64 alphabet
        (("", "empty name"), None),
    ],
    ids=["bin-length", "bin-alphabet", "empty-name"],
)
async def test_raw_odd_metadata(served: Served, header: tuple[str, str], status: str | None) -> None:
    """gRPC metadata: a -bin value that is not base64 ends that call with INTERNAL (grpc-go's
    "malformed binary metadata ..."); an odd header (an empty name) does not break the call's task:
    the call is answered, and no stream or task is left behind."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Echo", b"x", extra=(header,))
    headers, _, trailers = await raw.response(1)
    got, message = status_of(headers, trailers)
    if status is not None:
        assert got == status and message is not None and "malformed binary metadata" in message
    else:
        assert got is not None
    await eventually(served.idle)
    raw.request(3, "/test.T/Echo", b"ok", extra=(("x-good-bin", "AAE"),))  # unpadded is fine
    assert (await raw.response(3))[1] == grpc_message(b"ok")
    await raw.close()


async def test_raw_data_after_end_stream(served: Served) -> None:
    """RFC 9113 §5.1: DATA on a half-closed (remote) stream is a stream error STREAM_CLOSED: the stream
    is reset, its call cancelled, and nothing more is sent on it."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Sleep", b"5")
    await eventually(lambda: served.state.started == 1)
    raw.send(DATA, 0, 1, grpc_message(b"late"))
    rst = await raw.until(lambda f: f.stream == 1)
    assert rst.kind == RST_STREAM and int.from_bytes(rst.payload, "big") == STREAM_CLOSED
    await eventually(lambda: served.state.cancelled == ["Sleep"])
    await eventually(served.idle)
    raw.send(GOAWAY, 0, 0, bytes(8))
    assert not [f for f in await raw.rest() if f.stream == 1]
    await raw.close()


async def test_raw_trailers_after_the_answer(served: Served) -> None:
    """RFC 9113 §5.1 (closed): after the server answered and reset a stream the client had not
    finished (RST_STREAM NO_ERROR, §8.1), frames the client had already sent on it — trailers
    included — are ignored, not a connection error."""
    raw = await Raw.open(served.port)
    raw.request(1, "/test.T/Nope", end=False)  # answered at once: UNIMPLEMENTED
    headers, _, trailers = await raw.response(1)
    assert status_of(headers, trailers)[0] == "12"
    raw.send(DATA, 0, 1, grpc_message(b"in flight"))
    raw.send(HEADERS, END_HEADERS | END_STREAM, 1, encode_header("x-trailer", "1"))
    raw.send(PING, 0, 0, b"afterrst")
    seen = []
    while (f := await raw.until(lambda f: True)).kind != PING:
        seen.append(f)
    assert f.payload == b"afterrst"
    assert [int.from_bytes(f.payload, "big") for f in seen if f.kind == RST_STREAM] in ([], [0])
    raw.request(3, "/test.T/Echo", b"alive")
    assert (await raw.response(3))[1] == grpc_message(b"alive")
    await raw.close()


async def non_reading_client(served: Served) -> tuple[Raw, H2Connection]:
    """A raw client with small socket buffers on both ends (no kernel autotuning), and its
    connection on the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
    raw = await Raw.open(served.port, sock=sock)
    await eventually(lambda: len(served.connections()) == 1)
    (conn,) = served.connections()
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    return raw, conn


async def test_raw_ping_flood_from_a_client_that_never_reads(served: Served) -> None:
    """RFC 9113 §10.5 (CVE-2019-9512): a client that floods PINGs and never reads its answers does
    not grow the server's write buffer without bound: the server stops reading while it cannot
    write, and reads on once the client does."""
    raw, conn = await non_reading_client(served)
    assert conn.transport is not None
    pings = frame(PING, 0, 0, b"floodpin") * 10_000
    peak = 0
    for _ in range(20):  # 3.4 MB of PINGs
        raw.writer.write(pings)
        await asyncio.sleep(0.005)
        peak = max(peak, conn.transport.get_write_buffer_size())
    await asyncio.sleep(0.2)
    peak = max(peak, conn.transport.get_write_buffer_size())
    assert peak < 1 << 20, peak
    # once the client reads, the server reads again: every PING is answered, the last one too
    raw.send(PING, 0, 0, b"lastping")
    last = frame(PING, ACK, 0, b"lastping")
    seen = b""
    while last not in seen:
        chunk = await asyncio.wait_for(raw.reader.read(1 << 16), 5)
        assert chunk, "connection closed"
        seen = seen[-len(last) :] + chunk
    raw.writer.transport.abort()


async def test_stop_aborts_connections_that_do_not_drain(served: Served) -> None:
    """GrpcServer.stop(): a connection whose client does not read what it was sent cannot be closed
    gracefully (its transport would wait to flush forever): it is aborted, so stop() leaves no
    connection behind."""
    raw, conn = await non_reading_client(served)
    assert conn.transport is not None
    raw.writer.write(frame(PING, 0, 0, b"floodpin") * 20_000)
    await eventually(lambda: conn.transport is not None and conn.transport.get_write_buffer_size() > 0)
    await asyncio.wait_for(served.server.stop(grace=0.1), 5)
    assert not served.server.connections
    assert conn.lost.done()
    raw.writer.transport.abort()


def test_hpack_huffman_decoding_is_linear() -> None:
    """RFC 9113 §10.5 (denial of service): decoding a Huffman string costs time linear in its length,
    so the largest value a header block may carry (about 59 KB coded) does not stall the event loop
    (it took 190 ms when each symbol shifted the whole string's integer; about 15 ms now)."""
    data = random.Random(7).randbytes(26_000)  # rare symbols: long codes
    coded = huffman_encode(data)
    assert len(coded) > 58_000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        assert huffman_decode(coded) == data
        best = min(best, time.perf_counter() - start)
    assert best < 0.08, best


def test_hpack_huffman_cache_keeps_only_short_strings() -> None:
    """RFC 9113 §10.5.1: what a peer's header blocks make the server retain is bounded: the cache of
    decoded Huffman strings takes short values only (at most 4096 x 128 octets), never the
    multi-KB values a client may send, distinct each time, to pin memory."""
    decoder = Decoder(max_list_size=1 << 20)

    def literal(value: bytes) -> bytes:  # a literal without indexing: only the cache could keep it
        coded = huffman_encode(value)
        return b"\x00\x01x" + _encode_int(len(coded), 7, 0x80) + coded

    _huffman_cached.cache_clear()
    for i in range(30):
        assert decoder.decode(literal(b"%d" % i + b"abcdefgh" * 300))[0][1].startswith(str(i))
    assert _huffman_cached.cache_info().currsize == 0
    for i in range(50):
        decoder.decode(literal(b"grpc-python/1.%d" % i))
    assert _huffman_cached.cache_info().currsize == 50
    assert _CACHED_LENGTH * _huffman_cached.cache_info().maxsize <= 1 << 20


# ------------------------------------------------------------------------------ HPACK


C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
C_HEADERS = [
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
     ("cache-control", "no-cache")],
    [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
     ("custom-key", "custom-value")],
]  # fmt: skip
C_TABLES = [
    ([(":authority", "www.example.com")], 57),
    ([("cache-control", "no-cache"), (":authority", "www.example.com")], 110),
    ([("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com")], 164),
]


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3-raw", "C.4-huffman"])
def test_hpack_rfc7541_request_examples(blocks: list[str]) -> None:
    """RFC 7541 Appendix C.3 / C.4: three requests decoded in sequence on one Decoder give the listed
    headers, dynamic table and table size after each."""
    decoder = Decoder()
    for block, headers, (table, size) in zip(blocks, C_HEADERS, C_TABLES, strict=True):
        assert decoder.decode(bytes.fromhex(block)) == headers
        assert list(decoder.table) == table
        assert decoder.size == size


@pytest.mark.parametrize(
    ("coded", "plain"),
    [
        ("f1e3c2e5f23a6ba0ab90f4ff", b"www.example.com"),
        ("a8eb10649cbf", b"no-cache"),
        ("25a849e95ba97d7f", b"custom-key"),
        ("25a849e95bb8e8b4bf", b"custom-value"),
        ("6402", b"302"),  # C.6.1
        ("aec3771a4b", b"private"),
        ("d07abe941054d444a8200595040b8166e082a62d1bff", b"Mon, 21 Oct 2013 20:13:21 GMT"),
        ("9d29ad171863c78f0b97c8e9ae82ae43d3", b"https://www.example.com"),
    ],
)
def test_hpack_huffman_rfc_strings(coded: str, plain: bytes) -> None:
    """RFC 7541 §5.2 / Appendix B: the Huffman strings of C.4 and C.6 decode, and encode back."""
    assert huffman_decode(bytes.fromhex(coded)) == plain
    assert huffman_encode(plain).hex() == coded


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_hpack_huffman_round_trip(data: bytes) -> None:
    """RFC 7541 §5.2: any octets survive Huffman encoding and decoding (all 256 symbols, any padding)."""
    assert huffman_decode(huffman_encode(data)) == data


def _bits(*codes: tuple[int, int]) -> bytes:
    """Concatenate (code, length) bit strings into bytes (the last byte must be complete)."""
    acc = n = 0
    for code, length in codes:
        acc = (acc << length) | code
        n += length
    assert n % 8 == 0
    return acc.to_bytes(n // 8, "big")


A = (0x3, 5)  # 'a' is 00011
EOS = ((1 << 30) - 1, 30)


@pytest.mark.parametrize(
    "coded",
    [
        _bits(A, (0b000, 3)),  # padding that is not the EOS prefix
        _bits(A, (0b011, 3)),
        _bits(A, ((1 << 11) - 1, 11)),  # padding longer than 7 bits
        _bits(A, EOS, (0b11111, 5)),  # EOS inside the string
        _bits(EOS, (0b11, 2)),
        b"\xff",  # 8 bits of padding alone
    ],
)
def test_hpack_huffman_bad_padding_and_eos(coded: bytes) -> None:
    """RFC 7541 §5.2: padding longer than 7 bits, padding other than the most significant bits of
    EOS, and EOS inside the string are decoding errors."""
    with pytest.raises(HpackError):
        huffman_decode(coded)
    with pytest.raises(HpackError):  # and through a decoder, as a literal value
        Decoder().decode(b"\x00\x01x" + _encode_int(len(coded), 7, 0x80) + coded)


def test_hpack_table_size_updates() -> None:
    """RFC 7541 §4.2 / §6.3: a size update up to the advertised maximum evicts entries; one above it,
    or one after a header field of the block, is a decoding error."""
    decoder = Decoder(max_table_size=4096)
    decoder.decode(bytes.fromhex(C3[0]))
    assert decoder.size == 57
    assert decoder.decode(_encode_int(0, 5, 0x20) + _encode_int(4096, 5, 0x20) + encode_indexed(2)) == [
        (":method", "GET")
    ]
    assert decoder.size == 0 and not decoder.table  # the update to 0 emptied it
    with pytest.raises(HpackError):
        Decoder(max_table_size=4096).decode(_encode_int(4097, 5, 0x20))
    with pytest.raises(HpackError):
        Decoder(max_table_size=100).decode(_encode_int(101, 5, 0x20))
    with pytest.raises(HpackError):
        Decoder().decode(encode_indexed(2) + _encode_int(0, 5, 0x20))
    small = Decoder(max_table_size=100)
    small.decode(_encode_int(60, 5, 0x20) + bytes.fromhex(C3[0]))  # 57 fits in 60
    assert small.size == 57
    small.decode(b"\x40\x01k\x01v")  # 34 more does not: :authority is evicted
    assert list(small.table) == [("k", "v")] and small.size == 34


def test_hpack_encoder_output_decodes() -> None:
    """RFC 7541 §6.2.2: what the server encodes (literals without indexing, static names) decodes to
    the same fields and leaves the peer's dynamic table untouched."""
    block = encode_indexed(8) + encode_header("content-type", "application/grpc")
    block += encode_header("grpc-message", "x" * 300) + encode_header("x-bin", b"\x00\xff")
    decoder = Decoder()
    assert decoder.decode(block) == [
        (":status", "200"), ("content-type", "application/grpc"), ("grpc-message", "x" * 300),
        ("x-bin", "\x00\xff"),
    ]  # fmt: skip
    assert decoder.size == 0


# ------------------------------------------------------------------------------ h2load


H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed"
)


async def test_h2load_unary(served: Served, tmp_path: Path) -> None:
    """RFC 9113 interoperability: nghttp2's h2load (8 connections, 4 concurrent streams each) gets
    all 2000 unary calls answered with 2xx, and every one reached the handler."""
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.skip("h2load is not installed (scripts/install-loadgen.sh)")
    body = tmp_path / "request.bin"
    body.write_bytes(grpc_message(b"h2load says hi"))
    proc = await asyncio.create_subprocess_exec(
        h2load, "-n", "2000", "-c", "8", "-m", "4", "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{served.port}/test.T/Echo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    m = H2LOAD_REQUESTS.search(text)
    assert m is not None, text
    assert m.groups() == ("2000", "2000", "2000", "2000", "0"), text
    assert "status codes: 2000 2xx" in text, text
    assert served.state.calls == 2000

"""TcpTransport over loopback: ordering, reconnects, handshake checks, hostile input, limits, clean stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import struct
import time

import pytest
from test_transport_helpers import (
    append,
    close_writer,
    closed_by_peer,
    dead_address,
    hb,
    open_sockets,
    raw_connect,
    start_pair,
    wait_until,
)

from raftlib.codec import (
    HEADER_SIZE,
    MAGIC,
    WIRE_VERSION,
    Handshake,
    encode,
    encode_handshake,
    encode_handshake_ack,
)
from raftlib.core.messages import Message, MessageType
from raftlib.transport import STAT_NAMES, TcpTransport, Transport


async def test_tcp_transport_satisfies_the_transport_protocol() -> None:
    t = TcpTransport("a", "127.0.0.1:0", cluster_id="c")
    assert isinstance(t, Transport)
    assert set(t.stats) == set(STAT_NAMES)
    await t.stop()


async def test_two_transports_exchange_messages_in_order() -> None:
    a, b, got_a, got_b = await start_pair()
    try:
        sent_ab = [append("a", "b", i) if i % 3 == 0 else hb("a", "b", i) for i in range(500)]
        sent_ba = [hb("b", "a", i) for i in range(500)]
        for i in range(0, 500, 7):  # several sends per loop iteration, and several iterations
            a.send(sent_ab[i : i + 7])
            b.send(sent_ba[i : i + 7])
            if i % 49 == 0:
                await asyncio.sleep(0)
        await wait_until(lambda: len(got_a) == 500 and len(got_b) == 500)
        assert got_b == sent_ab
        assert got_a == sent_ba
        assert a.stats["sent"] == 500 and b.stats["received"] == 500
        assert a.stats["bytes_sent"] == b.stats["bytes_received"] > 0
        assert a.stats["dropped"] == 0
    finally:
        await a.stop()
        await b.stop()


async def test_three_transports_all_to_all_in_order() -> None:
    ids = ["n1", "n2", "n3"]
    got: dict[str, list[Message]] = {i: [] for i in ids}
    ts = {i: TcpTransport(i, "127.0.0.1:0", cluster_id="c3") for i in ids}
    for i in ids:
        await ts[i].start(got[i].append)
    members = {i: ts[i].address for i in ids}
    for i in ids:
        ts[i].set_peers(members)  # our own id in the map is ignored
    try:
        for seq in range(200):
            for i in ids:
                ts[i].send([hb(i, j, seq) for j in ids if j != i])
            if seq % 20 == 0:
                await asyncio.sleep(0.001)
        await wait_until(lambda: all(len(got[i]) == 400 for i in ids))
        for i in ids:
            for j in ids:
                if j != i:
                    assert [m.commit for m in got[i] if m.frm == j] == list(range(200))
    finally:
        for t in ts.values():
            await t.stop()


async def test_messages_flow_again_after_the_peer_restarts() -> None:
    a, b, _got_a, got_b = await start_pair(backoff_initial=0.01, backoff_max=0.05)
    b_addr = b.address
    a.send([hb("a", "b", 0)])
    await wait_until(lambda: len(got_b) == 1)
    await b.stop()
    # While b is down, a's messages are dropped (first on the dead connection, then in back-off).
    for i in range(1, 20):
        a.send([hb("a", "b", i)])
        await asyncio.sleep(0.01)
    assert a.stats["dropped"] > 0
    got_b2: list[Message] = []
    b2 = TcpTransport("b", b_addr, {"a": a.address}, cluster_id="c1")
    await b2.start(got_b2.append)
    try:
        seq = 100

        def more() -> bool:
            nonlocal seq
            a.send([hb("a", "b", seq)])
            seq += 1
            return len(got_b2) >= 5

        await wait_until(more, timeout=5, interval=0.01)
        commits = [m.commit for m in got_b2]
        assert commits == sorted(commits)  # in order over the new connection
        assert a.stats["reconnects"] >= 1
    finally:
        await a.stop()
        await b2.stop()


async def test_wrong_cluster_id_is_rejected_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="raftlib.transport.tcp")
    a, b, _got_a, got_b = await start_pair(cluster_a="alpha", cluster_b="beta")
    try:
        a.send([hb("a", "b", 1)])
        await wait_until(lambda: b.stats["rejected_handshakes"] == 1)
        await asyncio.sleep(0.05)
        assert got_b == []
        assert "cluster id mismatch" in caplog.text  # logged on both sides: b refuses, a is refused
        assert "refused" in caplog.text
        assert a.stats["dropped"] >= 1
    finally:
        await a.stop()
        await b.stop()


async def test_unknown_sender_id_is_rejected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="raftlib.transport.tcp")
    a, b, _got_a, got_b = await start_pair()
    b.set_peers({"someone-else": "127.0.0.1:1"})  # b no longer knows a
    try:
        a.send([hb("a", "b", 1)])
        await wait_until(lambda: b.stats["rejected_handshakes"] == 1)
        assert got_b == []
        assert "unknown sender 'a'" in caplog.text
    finally:
        await a.stop()
        await b.stop()


async def test_connection_meant_for_another_node_is_rejected() -> None:
    a, b, _got_a, got_b = await start_pair()
    a.set_peers({"b": b.address, "c": b.address})  # a believes c lives at b's address
    try:
        a.send([hb("a", "c", 1)])
        await wait_until(lambda: b.stats["rejected_handshakes"] == 1)
        _r, _w, answer = await raw_connect(b.address, Handshake("c1", "a", "zzz"))
        assert answer is not None and answer[0] is False and "meant for 'zzz'" in answer[1]
        await close_writer(_w)
        assert got_b == []
    finally:
        await a.stop()
        await b.stop()


async def test_garbage_to_the_listener_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="raftlib.transport.tcp")
    a, b, _got_a, got_b = await start_pair()
    try:
        a.send([hb("a", "b", 1)])
        await wait_until(lambda: len(got_b) == 1)
        reader, writer, _ = await raw_connect(b.address)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await closed_by_peer(reader)
        await close_writer(writer)
        assert b.stats["bad_frames"] == 1
        assert "bad handshake frame" in caplog.text
        # garbage after a valid handshake closes the connection too
        reader, writer, answer = await raw_connect(b.address, Handshake("c1", "a", "b"))
        assert answer == (True, "")
        writer.write(b"\x00garbage\xff" * 10)
        assert await closed_by_peer(reader)
        await close_writer(writer)
        assert b.stats["bad_frames"] == 2
        # the transport keeps serving its real peer
        a.send([hb("a", "b", 2)])
        await wait_until(lambda: len(got_b) == 2)
        assert [m.commit for m in got_b] == [1, 2]
    finally:
        await a.stop()
        await b.stop()


async def test_oversized_frame_closes_the_connection_before_its_body_arrives() -> None:
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1"}, cluster_id="c1", max_frame_bytes=1024)
    await b.start(got.append)
    try:
        reader, writer, answer = await raw_connect(b.address, Handshake("c1", "a", "b"))
        assert answer == (True, "")
        writer.write(encode(hb("a", "b", 1)))
        writer.write(struct.pack("<2sBBI", MAGIC, WIRE_VERSION, 0, 1025))  # header only, no body
        assert await closed_by_peer(reader, timeout=2)
        await close_writer(writer)
        assert b.stats["bad_frames"] == 1
        assert [m.commit for m in got] == [1]
    finally:
        await b.stop()


async def test_spoofed_sender_inside_a_connection_is_refused() -> None:
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1", "c": "127.0.0.1:1"}, cluster_id="c1")
    await b.start(got.append)
    try:
        reader, writer, _ = await raw_connect(b.address, Handshake("c1", "a", "b"))
        writer.write(encode(hb("c", "b", 1)))  # handshake said "a"
        assert await closed_by_peer(reader)
        await close_writer(writer)
        assert got == [] and b.stats["bad_frames"] == 1
    finally:
        await b.stop()


async def test_unknown_destination_is_dropped_and_counted() -> None:
    a = TcpTransport("a", "127.0.0.1:0", cluster_id="c")
    await a.start(lambda m: None)
    try:
        a.send([hb("a", "nobody", 1), hb("a", "nobody", 2)])
        assert a.stats["dropped"] == 2
    finally:
        await a.stop()


async def test_on_message_errors_do_not_break_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    got: list[Message] = []

    def on_message(m: Message) -> None:
        got.append(m)
        if m.commit == 1:
            raise RuntimeError("boom")

    a = TcpTransport("a", "127.0.0.1:0", cluster_id="c")
    b = TcpTransport("b", "127.0.0.1:0", cluster_id="c")
    await a.start(lambda m: None)
    await b.start(on_message)
    a.set_peers({"b": b.address})
    b.set_peers({"a": a.address})
    try:
        a.send([hb("a", "b", i) for i in range(3)])
        await wait_until(lambda: len(got) == 3)
        assert "boom" in caplog.text
    finally:
        await a.stop()
        await b.stop()


async def test_dead_peer_costs_almost_no_cpu(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="raftlib.transport.tcp")
    a = TcpTransport("a", "127.0.0.1:0", {"b": dead_address()}, cluster_id="c", rng=random.Random(1))
    await a.start(lambda m: None)
    try:
        cpu0 = time.process_time()
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 2.0:  # a leader heartbeating a dead follower every 10 ms
            a.send([hb("a", "b", n)])
            n += 1
            await asyncio.sleep(0.01)
        cpu = time.process_time() - cpu0
        assert cpu < 0.05 * 2.0, f"{cpu:.3f}s of CPU in 2s with a dead peer"
        assert a.stats["dropped"] == n  # nothing was delivered, everything was counted
        attempts = sum("unreachable" in r.message or "cannot reach" in r.message for r in caplog.records)
        assert 3 <= attempts <= 20  # back-off: 50ms doubling to 2s, not one attempt per send
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # rate-limited: one warning per back-off cycle
    finally:
        await a.stop()


async def test_slow_reader_does_not_grow_the_senders_memory() -> None:
    """A peer that completes the handshake and then never reads: the sender drops, bounded."""

    release = asyncio.Event()

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(HEADER_SIZE)
        writer.write(encode_handshake_ack(True))
        await release.wait()
        await close_writer(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    bound = 2 * 1024 * 1024
    a = TcpTransport("a", "127.0.0.1:0", {"b": f"{host}:{port}"}, cluster_id="c", max_queue_bytes=bound)
    await a.start(lambda m: None)
    try:
        big = append("a", "b", 0, n=10, size=100_000)  # ~1 MB frames
        for _ in range(100):  # 100 MB offered
            a.send([big])
            await asyncio.sleep(0.002)
        peer = a._peers["b"]
        assert peer.writer is not None
        assert peer.writer.transport.get_write_buffer_size() <= bound
        assert a.stats["dropped"] > 50
        assert a.stats["sent"] + a.stats["dropped"] == 100
    finally:
        await a.stop()
        release.set()
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()


async def test_removing_a_peer_closes_its_connections_and_drops_its_messages() -> None:
    a, b, _got_a, got_b = await start_pair()
    try:
        a.send([hb("a", "b", 1)])
        b.send([hb("b", "a", 1)])
        await wait_until(lambda: len(got_b) == 1 and a._peers["b"].writer is not None)
        a.set_peers({})
        a.send([hb("a", "b", 2)])
        assert a.stats["dropped"] == 1
        await wait_until(lambda: not a._incoming)  # b's connection into a was closed too
        assert a.peers == {}
    finally:
        await a.stop()
        await b.stop()


async def test_stop_is_idempotent_and_leaves_no_tasks_or_sockets(caplog: pytest.LogCaptureFixture) -> None:
    base_sockets = open_sockets()
    base_tasks = asyncio.all_tasks()
    dead = dead_address()
    a, b, _got_a, got_b = await start_pair()
    a.set_peers({"b": b.address, "x": dead})
    a.send([hb("a", "b", 1), hb("a", "x", 1)])  # one live connection, one peer in back-off
    b.send([hb("b", "a", 1)])
    await wait_until(lambda: len(got_b) == 1)
    reader, writer, _ = await raw_connect(b.address)  # a half-open incoming connection (no handshake)
    await asyncio.sleep(0.05)
    assert open_sockets() > base_sockets
    await asyncio.gather(a.stop(), a.stop())
    await b.stop()
    await b.stop()
    await close_writer(writer)
    del reader, writer
    await asyncio.sleep(0)
    gc.collect()
    assert asyncio.all_tasks() == base_tasks
    assert open_sockets() == base_sockets
    assert "Task was destroyed" not in caplog.text
    a.send([hb("a", "b", 2)])  # after stop: dropped, no error
    assert a.stats["dropped"] >= 1


async def test_constructor_validates_arguments() -> None:
    with pytest.raises(ValueError):
        TcpTransport("a", "no-port", cluster_id="c")
    with pytest.raises(ValueError):
        TcpTransport("a", "127.0.0.1:0", {"b": "nonsense"}, cluster_id="c")
    with pytest.raises(ValueError):
        TcpTransport("a", "127.0.0.1:0", cluster_id="c", backoff_initial=0)
    t = TcpTransport("a", "127.0.0.1:0", cluster_id="c")
    with pytest.raises(RuntimeError):
        _ = t.address


def test_message_type_coverage_helper() -> None:
    # The helpers build the message kinds the tests rely on.
    assert hb("a", "b", 3).type is MessageType.HEARTBEAT
    assert len(append("a", "b", 0).entries) == 4


async def test_sends_in_one_loop_iteration_are_coalesced_into_one_write() -> None:
    a, b, _got_a, got_b = await start_pair()
    try:
        a.send([hb("a", "b", 0)])
        await wait_until(lambda: len(got_b) == 1)
        writer = a._peers["b"].writer
        assert writer is not None
        writes: list[int] = []
        real_write = writer.write

        def counting_write(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            real_write(data)

        writer.write = counting_write  # type: ignore[method-assign]
        for i in range(1, 101):
            a.send([hb("a", "b", i)])  # 100 separate send() calls in the same iteration
        assert writes == []  # nothing is written synchronously
        await wait_until(lambda: len(got_b) == 101)
        assert len(writes) == 1 and writes[0] == 100 * len(encode(hb("a", "b", 1)))
        assert [m.commit for m in got_b] == list(range(101))
    finally:
        await a.stop()
        await b.stop()


async def test_flush_writes_what_was_queued_without_waiting_for_the_loop() -> None:
    a, b, _got_a, got_b = await start_pair()
    try:
        a.send([hb("a", "b", 0)])
        await wait_until(lambda: len(got_b) == 1)
        sent = a.stats["sent"]
        a.send([hb("a", "b", i) for i in range(1, 4)])
        assert a.stats["sent"] == sent  # queued only
        a.flush()
        assert a.stats["sent"] == sent + 3  # written now, in this same loop iteration
        a.flush()  # nothing queued: a no-op
        assert a.stats["sent"] == sent + 3
        await wait_until(lambda: len(got_b) == 4)
        assert [m.commit for m in got_b] == [0, 1, 2, 3]
    finally:
        await a.stop()
        await b.stop()


async def test_frames_sent_with_the_handshake_in_one_write_are_all_delivered() -> None:
    # Frames that arrive in the same segment as the handshake, before its answer, and frames
    # split across reads are decoded in order; a frame from another sender closes the link.
    got: list[Message] = []
    b = TcpTransport("b", "127.0.0.1:0", {"a": "127.0.0.1:1"}, cluster_id="c1")
    await b.start(got.append)
    try:
        host, port = b.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        frames = b"".join(encode(hb("a", "b", i)) for i in range(50))
        writer.write(encode_handshake(Handshake("c1", "a", "b")) + frames[:333])
        await wait_until(lambda: len(got) >= 1)
        writer.write(frames[333:])  # the rest, split mid-frame
        await wait_until(lambda: len(got) == 50)
        assert [m.commit for m in got] == list(range(50))
        assert b.stats["received"] == 50 and b.stats["bad_frames"] == 0
        writer.write(encode(hb("c", "b", 99)))  # a sender the handshake did not name
        assert await closed_by_peer(reader)
        await close_writer(writer)
        assert len(got) == 50 and b.stats["bad_frames"] == 1
    finally:
        await b.stop()

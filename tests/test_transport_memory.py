"""MemoryTransport: same interface as TCP, in-process, through the codec, with partitions."""

from __future__ import annotations

import asyncio

import pytest
from test_transport_helpers import append, hb

from raftlib.core.messages import Entry, Message, MessageType
from raftlib.transport import STAT_NAMES, MemoryNetwork, MemoryTransport, Transport


async def cluster(
    ids: list[str], use_codec: bool = True
) -> tuple[MemoryNetwork, dict[str, MemoryTransport], dict[str, list[Message]]]:
    net = MemoryNetwork()
    got: dict[str, list[Message]] = {i: [] for i in ids}
    ts = {i: MemoryTransport(i, net, use_codec=use_codec) for i in ids}
    for i in ids:
        await ts[i].start(got[i].append)
    return net, ts, got


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_memory_transport_satisfies_the_protocol() -> None:
    t = MemoryTransport("a", MemoryNetwork())
    assert isinstance(t, Transport)
    assert set(t.stats) == set(STAT_NAMES)


async def test_delivery_is_asynchronous_and_in_order() -> None:
    _net, ts, got = await cluster(["a", "b"])
    msgs = [append("a", "b", i) if i % 2 else hb("a", "b", i) for i in range(100)]
    ts["a"].send(msgs[:50])
    ts["a"].send(msgs[50:])
    assert got["b"] == []  # never delivered synchronously inside send()
    await settle()
    assert got["b"] == msgs
    assert ts["a"].stats["sent"] == 100 and ts["b"].stats["received"] == 100
    assert ts["a"].stats["bytes_sent"] == ts["b"].stats["bytes_received"] > 0


async def test_messages_go_through_the_codec_by_default() -> None:
    _net, ts, got = await cluster(["a", "b"])
    m = Message(MessageType.APPEND, "a", "b", 2, entries=[Entry(1, 2, b"x")])
    ts["a"].send([m])
    await settle()
    assert got["b"] == [m]
    assert got["b"][0] is not m  # a decoded copy, not the sender's object
    _net2, ts2, got2 = await cluster(["a", "b"], use_codec=False)
    ts2["a"].send([m])
    await settle()
    assert got2["b"][0] is m


async def test_unencodable_message_is_dropped_not_delivered() -> None:
    _net, ts, got = await cluster(["a", "b"])
    ts["a"].send([Message(MessageType.VOTE, "a", "b", -1)])
    await settle()
    assert got["b"] == [] and ts["a"].stats["dropped"] == 1


async def test_partition_and_heal() -> None:
    net, ts, got = await cluster(["a", "b", "c"])
    net.partition("a", "b")
    ts["a"].send([hb("a", "b", 1), hb("a", "c", 1)])
    ts["b"].send([hb("b", "a", 1)])
    await settle()
    assert got["b"] == [] and got["a"] == [] and len(got["c"]) == 1
    assert ts["a"].stats["dropped"] == 1 and ts["b"].stats["dropped"] == 1
    net.heal()
    ts["a"].send([hb("a", "b", 2)])
    await settle()
    assert [m.commit for m in got["b"]] == [2]
    net.isolate("c")
    ts["c"].send([hb("c", "a", 1), hb("c", "b", 1)])
    await settle()
    assert ts["c"].stats["dropped"] == 2
    net.heal("c", "a")
    assert net.connected("c", "a") and not net.connected("c", "b")


async def test_partition_after_send_but_before_delivery_drops() -> None:
    net, ts, got = await cluster(["a", "b"])
    ts["a"].send([hb("a", "b", 1)])
    net.partition("a", "b")
    await settle()
    assert got["b"] == []


async def test_unknown_peers_and_stopped_nodes() -> None:
    net, ts, got = await cluster(["a", "b"])
    ts["a"].send([hb("a", "zzz", 1)])
    await settle()
    assert ts["a"].stats["dropped"] == 1
    ts["a"].set_peers({"c": "ignored:1"})  # b is no longer a peer of a
    ts["a"].send([hb("a", "b", 1)])
    await settle()
    assert got["b"] == [] and ts["a"].stats["dropped"] == 2
    ts["a"].set_peers({"b": "x:1"})
    await ts["b"].stop()
    await ts["b"].stop()  # idempotent
    ts["a"].send([hb("a", "b", 2)])
    await settle()
    assert got["b"] == [] and "b" not in net.nodes
    with pytest.raises(ValueError):
        await MemoryTransport("a", net).start(lambda m: None)  # duplicate id on the network


async def test_receiver_refuses_senders_it_does_not_know() -> None:
    net = MemoryNetwork()
    got: list[Message] = []
    a = MemoryTransport("a", net)
    b = MemoryTransport("b", net, peers={"c": "x:1"})
    await a.start(lambda m: None)
    await b.start(got.append)
    a.send([hb("a", "b", 1)])
    await settle()
    assert got == [] and b.stats["rejected_handshakes"] == 1

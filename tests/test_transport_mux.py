"""Many Raft groups over one connection per peer host (raftlib.transport.mux, issue 12 section 3).

Scenarios: groups share one outgoing connection per peer host and one socket write per host
pair per flush; each group's messages arrive in order; a frame of an unknown group is
counted and offered to a hook, never fatal; the per-group adapter carries real RaftNodes of
two groups over the same three hosts (in memory and over TCP); partitions in the in-memory
twin; garbage is only ever counted; the handshake still enforces the cluster's secret and
TLS identity, and keeps single-group transports and hosts apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_transport_helpers import append, close_writer, closed_by_peer, hb, host_port, wait_until
from test_transport_tls import OPENSSL, _make_ca, _make_cert, tls

from raftlib import NodeConfig, RaftNode, StateMachine
from raftlib.codec import (
    HEADER_SIZE,
    HOST_PROTOCOL,
    CodecError,
    GroupFrameDecoder,
    Handshake,
    decode_handshake_ack,
    encode,
    encode_group,
    encode_handshake,
)
from raftlib.core.messages import Message
from raftlib.storage import MemoryStorage
from raftlib.transport import (
    GroupTransport,
    HostTransport,
    MemoryHostNetwork,
    MemoryHostTransport,
    TcpTransport,
)

HOSTS = ["h1", "h2", "h3"]
SECRET = "a shared secret of the host cluster"
FAST_RETRY: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.04}
FAST = dict(tick_interval=0.01, election_tick=10, heartbeat_tick=1)

Got = dict[str, list[tuple[str, Message]]]


# ------------------------------------------------------------------------------------ helpers


async def tcp_hosts(
    ids: list[str] = HOSTS, *, secrets: dict[str, str | None] | None = None, **kw: Any
) -> tuple[dict[str, HostTransport], Got]:
    """Started TCP hosts that know each other; ``got[h]`` records ``(group, message)`` of host-level
    deliveries and of groups registered without a callback."""
    got: Got = {h: [] for h in ids}
    hosts = {
        h: HostTransport(
            h,
            "127.0.0.1:0",
            cluster_id="mux",
            peer_secret=(secrets or {}).get(h),
            **{**FAST_RETRY, **kw},
        )
        for h in ids
    }
    for h, t in hosts.items():
        await t.start(lambda g, m, h=h: got[h].append((g, m)))
    for h, t in hosts.items():
        t.set_peers({o: hosts[o].address for o in ids if o != h})
    return hosts, got


async def memory_hosts(ids: list[str] = HOSTS, **kw: Any) -> tuple[MemoryHostNetwork, dict[str, Any], Got]:
    net = MemoryHostNetwork()
    got: Got = {h: [] for h in ids}
    hosts = {h: MemoryHostTransport(h, net, **kw) for h in ids}
    for h, t in hosts.items():
        await t.start(lambda g, m, h=h: got[h].append((g, m)))
    return net, hosts, got


async def stop_all(hosts: dict[str, Any]) -> None:
    for t in hosts.values():
        await t.stop()


def outgoing_connections(t: HostTransport) -> int:
    return sum(1 for p in t._tcp._peers.values() if p.writer is not None)


def incoming_connections(t: HostTransport) -> int:
    return sum(1 for sender in t._tcp._incoming.values() if sender is not None)


def groups_of(n: int) -> list[str]:
    return [f"group-{i}" for i in range(n)]


# ------------------------------------------------------------------------------------ sharing


async def test_many_groups_share_one_connection_per_peer_host_and_keep_their_order() -> None:
    hosts, _ = await tcp_hosts()
    groups = groups_of(40)
    got: dict[tuple[str, str], list[Message]] = {}
    for h, t in hosts.items():
        for g in groups:
            t.register_group(g, lambda m, h=h, g=g: got.setdefault((h, g), []).append(m))
    try:
        rounds = 5
        for seq in range(rounds):  # several loop iterations, every group interleaved with the others
            for g in groups:
                for h, t in hosts.items():
                    t.send(g, [hb(h, o, seq) for o in HOSTS if o != h])
            await asyncio.sleep(0)
        expected = rounds * len(groups) * len(HOSTS) * (len(HOSTS) - 1)
        await wait_until(lambda: sum(map(len, got.values())) == expected)
        for (h, g), msgs in got.items():
            for sender in HOSTS:
                if sender != h:
                    seqs = [m.commit for m in msgs if m.frm == sender]
                    assert seqs == list(range(rounds)), (h, g, sender)
        # 40 groups, yet each host dialled each peer host once and accepted one connection from each.
        for t in hosts.values():
            assert outgoing_connections(t) == len(HOSTS) - 1
            assert incoming_connections(t) == len(HOSTS) - 1
            assert t.stats["reconnects"] == 0 and t.stats["bad_frames"] == 0
            assert t.stats["received"] == rounds * len(groups) * (len(HOSTS) - 1)
    finally:
        await stop_all(hosts)


async def test_everything_queued_for_a_host_between_two_flushes_leaves_in_one_write() -> None:
    hosts, _ = await tcp_hosts(["h1", "h2"])
    a, b = hosts["h1"], hosts["h2"]
    groups = groups_of(25)
    received: list[tuple[str, int]] = []
    for g in groups:
        b.register_group(g, lambda m, g=g: received.append((g, m.commit)))
    try:
        a.send(groups[0], [hb("h1", "h2", 0)])  # opens the connection
        await wait_until(lambda: len(received) == 1)
        writer = a._tcp._peers["h2"].writer
        assert writer is not None
        writes: list[int] = []
        real_write = writer.write

        def counting_write(data: Any) -> None:
            writes.append(len(data))
            real_write(data)

        writer.write = counting_write  # type: ignore[method-assign]
        for g in groups:
            a.send(g, [hb("h1", "h2", 1), hb("h1", "h2", 2)])
        a.send("", [hb("h1", "h2", 3)])
        a.flush()
        assert len(writes) == 1  # 25 groups + the host group, 51 messages: one socket write
        assert a.stats["sent"] == 1 + 51
        await wait_until(lambda: len(received) == 1 + 50)
        assert [c for g2, c in received[1:] if g2 == groups[3]] == [1, 2]
        a.flush()  # nothing queued: no write
        assert len(writes) == 1
    finally:
        await stop_all(hosts)


async def test_a_batch_larger_than_a_frame_is_split_into_group_frames_in_order() -> None:
    hosts, _ = await tcp_hosts(["h1", "h2"], max_frame_bytes=4096)
    got: list[Message] = []
    hosts["h2"].register_group("g", got.append)
    try:
        batch = [append("h1", "h2", seq, n=2, size=700) for seq in range(20)]  # ~1.5 KB each, ~30 KB
        hosts["h1"].send("g", batch)
        await wait_until(lambda: len(got) == 20)
        assert [m.commit for m in got] == list(range(20))
        assert hosts["h2"].stats["bad_frames"] == 0 and hosts["h1"].stats["sent"] == 20
    finally:
        await stop_all(hosts)


async def test_host_group_messages_go_to_the_host_callback() -> None:
    hosts, got = await tcp_hosts(["h1", "h2"])
    try:
        hosts["h1"].send("", [hb("h1", "h2", 7)])
        await wait_until(lambda: len(got["h2"]) == 1)
        assert got["h2"][0][0] == "" and got["h2"][0][1].commit == 7
        # A group registered without a callback also lands in the host callback, with its id.
        hosts["h2"].register_group("g-host-dispatched")
        hosts["h1"].send("g-host-dispatched", [hb("h1", "h2", 8)])
        await wait_until(lambda: len(got["h2"]) == 2)
        assert got["h2"][1][0] == "g-host-dispatched"
    finally:
        await stop_all(hosts)


# ------------------------------------------------------------------------------------ unknown groups


@pytest.mark.parametrize("kind", ["memory", "tcp"])
async def test_a_message_of_an_unknown_group_is_counted_offered_to_the_hook_and_the_connection_lives(
    kind: str,
) -> None:
    if kind == "tcp":
        hosts, _ = await tcp_hosts(["h1", "h2"])
    else:
        _, hosts, _ = await memory_hosts(["h1", "h2"])
    a, b = hosts["h1"], hosts["h2"]
    known: list[Message] = []
    b.register_group("known", known.append)
    try:
        a.send("nobody-serves-this", [hb("h1", "h2", 1), hb("h1", "h2", 2)])
        a.send("known", [hb("h1", "h2", 3)])
        await wait_until(lambda: len(known) == 1)
        assert b.stats["unknown_group"] == 2
        # A hook that creates the group on demand gets the message, then the group gets it and the rest.
        offered: list[tuple[str, int]] = []
        created: list[Message] = []

        def on_unknown(group_id: str, m: Message) -> None:
            offered.append((group_id, m.commit))
            if group_id.startswith("auto-"):
                b.register_group(group_id, created.append)

        b.on_unknown_group = on_unknown
        a.send("ignored", [hb("h1", "h2", 4)])
        a.send("auto-1", [hb("h1", "h2", 5), hb("h1", "h2", 6)])
        a.send("auto-1", [hb("h1", "h2", 7)])
        await wait_until(lambda: len(created) == 3)
        assert offered == [("ignored", 4), ("auto-1", 5)]
        assert [m.commit for m in created] == [5, 6, 7]
        assert b.stats["unknown_group"] == 4
        assert b.stats["bad_frames"] == 0
        # Unregistering makes the group unknown again.
        assert b.unregister_group("auto-1") and not b.unregister_group("auto-1")
        a.send("auto-1", [hb("h1", "h2", 8)])
        await wait_until(lambda: b.stats["unknown_group"] == 5)
        if kind == "tcp":
            assert outgoing_connections(a) == 1 and a.stats["reconnects"] == 0
    finally:
        await stop_all(hosts)


def test_group_ids_are_checked_at_registration() -> None:
    t = MemoryHostTransport("h1", MemoryHostNetwork())
    for bad in ["", "x" * 256, "\udc80"]:
        with pytest.raises(ValueError):
            t.register_group(bad)
        with pytest.raises(ValueError):
            t.group(bad)
    t.register_group("g")
    with pytest.raises(ValueError, match="already registered"):
        t.register_group("g")
    assert t.groups == frozenset({"g"})


async def test_sends_never_raise_and_drops_are_counted() -> None:
    _, hosts, _ = await memory_hosts(["h1", "h2"])
    a = hosts["h1"]
    try:
        a.send("x" * 300, [hb("h1", "h2", 1)])  # invalid group id
        a.send("g", [hb("h1", "nobody", 1)])  # unknown host: dropped when the queue is handed over
        await asyncio.sleep(0.01)
        assert a.stats["dropped"] == 2
    finally:
        await stop_all(hosts)
    tcp = HostTransport("h1", "127.0.0.1:0", cluster_id="mux")
    tcp.send("g", [hb("h1", "h2", 1)])  # not started
    assert tcp.stats["dropped"] == 1


# ------------------------------------------------------------------------------------ RaftNode over groups


class KV(StateMachine):
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, command: bytes, index: int) -> Any:
        key, value = json.loads(command)
        self.data[key] = value
        return index

    def snapshot(self) -> bytes:
        return json.dumps(self.data).encode()

    def restore(self, data: bytes) -> None:
        self.data = json.loads(data)


@contextlib.asynccontextmanager
async def two_groups_on_three_hosts(
    kind: str,
) -> AsyncIterator[tuple[dict[str, Any], dict[str, dict[str, RaftNode]]]]:
    if kind == "tcp":
        hosts: dict[str, Any] = (await tcp_hosts())[0]
    else:
        hosts = (await memory_hosts())[1]
    members = {h: f"mem://{h}" for h in HOSTS}
    nodes: dict[str, dict[str, RaftNode]] = {}
    try:
        for g in ("alpha", "beta"):
            nodes[g] = {
                h: RaftNode(
                    h,
                    members,
                    KV(),
                    config=NodeConfig(**FAST),  # type: ignore[arg-type]
                    transport=hosts[h].group(g),
                    storage=MemoryStorage(),
                )
                for h in HOSTS
            }
        for g in nodes:
            for n in nodes[g].values():
                await n.start()
        yield hosts, nodes
    finally:
        for g in nodes:
            for n in nodes[g].values():
                await n.stop()
        await stop_all(hosts)


async def leader_of(group: dict[str, RaftNode]) -> RaftNode:
    await wait_until(lambda: sum(n.is_leader for n in group.values()) == 1, timeout=10)
    return next(n for n in group.values() if n.is_leader)


@pytest.mark.parametrize("kind", ["memory", "tcp"])
async def test_raft_nodes_of_two_groups_share_three_host_transports(kind: str) -> None:
    async with two_groups_on_three_hosts(kind) as (hosts, nodes):
        for g, group in nodes.items():
            leader = await leader_of(group)
            for i in range(5):
                await leader.propose(json.dumps([f"{g}-{i}", str(i)]).encode(), timeout=5)
        for g, group in nodes.items():
            await wait_until(
                lambda group=group: all(len(n._sm.data) == 5 for n in group.values()),  # type: ignore[attr-defined]
                timeout=5,
            )
            for n in group.values():
                assert set(n._sm.data) == {f"{g}-{i}" for i in range(5)}  # type: ignore[attr-defined]
        for t in hosts.values():
            assert t.groups == {"alpha", "beta"}
            assert t.stats["unknown_group"] == 0
            if kind == "tcp":  # both groups on one connection per peer host, never one per group
                assert outgoing_connections(t) <= 2 and t.stats["reconnects"] == 0
        if kind == "tcp":
            for group in nodes.values():  # a leader talks to both other hosts
                assert outgoing_connections(hosts[(await leader_of(group)).id]) == 2
        # Stopping one group's node unregisters that group only: the other group keeps committing.
        await nodes["alpha"]["h3"].stop()
        assert hosts["h3"].groups == {"beta"}
        leader = await leader_of(nodes["beta"])
        assert await leader.propose(json.dumps(["after", "x"]).encode(), timeout=5) > 0


async def test_group_adapter_is_a_transport_that_only_checks_its_peers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, hosts, _ = await memory_hosts(["h1", "h2"], peers={"h1": "", "h2": ""})
    adapter: GroupTransport = hosts["h1"].group("g")
    assert adapter.stats is hosts["h1"].stats and adapter.metrics is hosts["h1"].metrics
    with caplog.at_level(logging.WARNING, logger="raftlib.transport.mux"):
        adapter.set_peers({"h1": "x", "h2": "y", "h9": "z"})
        adapter.set_peers({"h9": "z"})
    assert [r.getMessage() for r in caplog.records].count(
        "h1: group 'g' has member 'h9', which is not a peer host; its messages are dropped until the "
        "host's set_peers() adds it"
    ) == 1
    got: list[Message] = []
    await adapter.start(got.append)
    with pytest.raises(RuntimeError):
        await adapter.start(got.append)
    await adapter.stop()
    await adapter.stop()
    assert "g" not in hosts["h1"].groups
    adapter.send([hb("h1", "h2", 1)])
    assert hosts["h1"].stats["dropped"] == 1
    await stop_all(hosts)


# ------------------------------------------------------------------------------------ memory twin


async def test_memory_twin_partition_isolate_and_heal_between_hosts() -> None:
    net, hosts, _ = await memory_hosts()
    got: dict[str, list[tuple[str, int]]] = {h: [] for h in HOSTS}
    for h, t in hosts.items():
        for g in ("g1", "g2"):
            t.register_group(g, lambda m, h=h, g=g: got[h].append((g, m.commit)))

    async def round_(seq: int) -> None:
        for g in ("g1", "g2"):
            hosts["h1"].send(g, [hb("h1", "h2", seq), hb("h1", "h3", seq)])
        await asyncio.sleep(0.01)

    try:
        await round_(1)
        assert got["h2"] == got["h3"] == [("g1", 1), ("g2", 1)]
        net.partition("h1", "h2")  # every group between h1 and h2 is cut, h3 still hears h1
        await round_(2)
        assert got["h2"] == [("g1", 1), ("g2", 1)] and got["h3"][-2:] == [("g1", 2), ("g2", 2)]
        assert hosts["h1"].stats["dropped"] == 2
        net.heal("h1", "h2")
        net.isolate("h1")
        await round_(3)
        assert len(got["h2"]) == 2 and len(got["h3"]) == 4
        net.heal()
        await round_(4)
        assert got["h2"][-2:] == [("g1", 4), ("g2", 4)] and got["h3"][-2:] == [("g1", 4), ("g2", 4)]
        assert hosts["h2"].last_heard("h1") is not None and hosts["h2"].last_heard("h3") is None
    finally:
        await stop_all(hosts)


async def test_memory_twin_refuses_non_peer_hosts_and_works_without_the_codec() -> None:
    net = MemoryHostNetwork()
    a = MemoryHostTransport("h1", net, use_codec=False)
    b = MemoryHostTransport("h2", net, peers={"h3": ""})
    got: list[tuple[str, Message]] = []
    await a.start(lambda g, m: got.append((g, m)))
    await b.start(lambda g, m: got.append((g, m)))
    try:
        a.send("", [hb("h1", "h2", 1)])
        b.send("", [hb("h2", "h1", 2)])  # h1 is not b's peer: dropped at b
        await asyncio.sleep(0.01)
        assert b.stats["rejected_handshakes"] == 1 and b.stats["dropped"] == 1 and got == []
        b.set_peers({"h1": ""})
        b.send("", [hb("h2", "h1", 3)])
        await asyncio.sleep(0.01)
        assert [(g, m.commit) for g, m in got] == [("", 3)]
        with pytest.raises(ValueError):
            MemoryHostTransport("h1", net).network._register(a)
    finally:
        await a.stop()
        await b.stop()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.booleans())
def test_garbage_from_a_host_is_counted_never_raised(data: bytes, behind_valid: bool) -> None:
    async def scenario() -> None:
        _, hosts, got = await memory_hosts(["h1", "h2"])
        b = hosts["h2"]
        payload = (encode_group("", [hb("h1", "h2", 1)]) if behind_valid else b"") + data
        try:
            expected, bad = GroupFrameDecoder().feed(payload), 0
        except CodecError as exc:
            expected, bad = list(exc.groups), 1
        b._receive("h1", payload, 1)  # what the network hands over, garbage included: never raises
        assert b.stats["bad_frames"] == bad
        # What decoded before the garbage is delivered (host group) or counted (unknown groups).
        assert b.stats["received"] + b.stats["unknown_group"] == sum(len(ms) for _, ms in expected)
        assert [m for _, m in got["h2"]] == [m for g, ms in expected if g == "" for m in ms]
        await stop_all(hosts)

    asyncio.run(scenario())


# ------------------------------------------------------------------------------- TCP: bad frames, handshake


async def raw_host_connection(
    target: HostTransport, sender: str, protocol: int = HOST_PROTOCOL
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[bool, str]]:
    host, port = host_port(target.address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_handshake(Handshake("mux", sender, target.host_id, protocol)))
    header = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), 5)
    (length,) = struct.unpack_from("<I", header, 4)
    return reader, writer, decode_handshake_ack(await reader.readexactly(length))


@pytest.mark.parametrize(
    "bad",
    ["garbage", "plain_frame", "spoofed_sender", "wrong_receiver", "oversized"],
)
async def test_a_bad_frame_closes_only_its_connection_and_is_counted(bad: str) -> None:
    hosts, _ = await tcp_hosts(["h1", "h2"], max_frame_bytes=4096)
    a, b = hosts["h1"], hosts["h2"]
    got: list[Message] = []
    b.register_group("g", got.append)
    try:
        reader, writer, answer = await raw_host_connection(b, "h1")
        assert answer == (True, "")
        good = encode_group("g", [hb("h1", "h2", 1)])
        frame = {
            "garbage": b"\xffRF\x01" * 10,
            "plain_frame": encode(hb("h1", "h2", 2)),
            "spoofed_sender": encode_group("g", [hb("h3", "h2", 2)]),
            "wrong_receiver": encode_group("g", [hb("h1", "h3", 2)]),
            "oversized": struct.pack("<2sBBI", b"RF", 1, 2, 1 << 20),
        }[bad]
        writer.write(good + frame)
        assert await closed_by_peer(reader)
        await close_writer(writer)
        assert [m.commit for m in got] == [1]  # the valid frame before the bad one was delivered
        assert b.stats["bad_frames"] == 1
        # The host and its real peer carry on.
        a.send("g", [hb("h1", "h2", 3)])
        await wait_until(lambda: len(got) == 2)
    finally:
        await stop_all(hosts)


async def test_hosts_and_single_group_transports_refuse_each_other_at_the_handshake() -> None:
    hosts, _ = await tcp_hosts(["h1"])
    host = hosts["h1"]
    single = TcpTransport("n2", "127.0.0.1:0", cluster_id="mux", **FAST_RETRY)
    await single.start(lambda m: None)
    host.set_peers({"n2": single.address})
    single.set_peers({"h1": host.address})
    try:
        _, writer, answer = await raw_host_connection(host, "n2", protocol=1)
        assert not answer[0] and answer[1].startswith("protocol:")
        await close_writer(writer)

        async def both_refused() -> bool:
            host.send("", [hb("h1", "n2", 1)])
            single.send([hb("n2", "h1", 1)])
            await asyncio.sleep(0.02)
            return (
                single.metrics["handshake_refused"]["protocol"] > 0
                and host.metrics["handshake_refused"]["protocol"] > 1
            )

        for _ in range(200):
            if await both_refused():
                break
        else:
            raise AssertionError("the host and the single-group transport did not refuse each other")
        assert host.stats["received"] == single.stats["received"] == 0
    finally:
        await host.stop()
        await single.stop()


async def test_the_shared_secret_is_enforced_between_hosts() -> None:
    hosts, _ = await tcp_hosts(secrets={"h1": SECRET, "h2": SECRET, "h3": None})
    got: dict[str, list[Message]] = {h: [] for h in HOSTS}
    for h, t in hosts.items():
        t.register_group("g", got[h].append)
    try:
        assert hosts["h1"].authenticates_with_secret and not hosts["h3"].authenticates_with_secret

        async def exchange() -> None:
            for _ in range(200):
                for h, t in hosts.items():
                    t.send("g", [hb(h, o, 1) for o in HOSTS if o != h])
                await asyncio.sleep(0.02)
                if got["h1"] and got["h2"] and hosts["h3"].metrics["handshake_refused"]["secret_unexpected"]:
                    return

        await exchange()
        assert {m.frm for m in got["h1"]} == {"h2"} and {m.frm for m in got["h2"]} == {"h1"}
        assert got["h3"] == []
        assert hosts["h1"].metrics["handshake_refused"]["secret_missing"] > 0
        assert hosts["h3"].metrics["handshake_refused"]["secret_unexpected"] > 0
    finally:
        await stop_all(hosts)


@pytest.fixture(scope="module")
def host_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if OPENSSL is None:
        pytest.skip("needs the openssl command-line tool")
    d = tmp_path_factory.mktemp("host-certs")
    _make_ca(d, "ca")
    for h in ("h1", "h2", "mallory"):
        _make_cert(d, "ca", h)
    return d


async def test_tls_hosts_exchange_groups_and_a_certificate_naming_another_host_is_refused(
    host_certs: Path,
) -> None:
    ids = ["h1", "h2"]
    got: list[Message] = []
    hosts = {
        h: HostTransport(h, "127.0.0.1:0", cluster_id="mux", ssl=tls(host_certs, h), **FAST_RETRY)
        for h in ids
    }
    # "h3" holds a valid certificate of the cluster CA, but it names mallory, not h3.
    impostor = HostTransport(
        "h3", "127.0.0.1:0", cluster_id="mux", ssl=tls(host_certs, "mallory"), **FAST_RETRY
    )
    try:
        for t in [*hosts.values(), impostor]:
            await t.start(lambda g, m: None)
        hosts["h2"].register_group("g", got.append)
        hosts["h1"].set_peers({"h2": hosts["h2"].address})
        hosts["h2"].set_peers({"h1": hosts["h1"].address, "h3": impostor.address})
        impostor.set_peers({"h2": hosts["h2"].address})
        for _ in range(200):
            hosts["h1"].send("g", [hb("h1", "h2", 1)])
            impostor.send("g", [hb("h3", "h2", 1)])
            await asyncio.sleep(0.02)
            if got and hosts["h2"].metrics["handshake_refused"]["peer_identity"]:
                break
        assert got and {m.frm for m in got} == {"h1"}
        assert hosts["h2"].metrics["handshake_refused"]["peer_identity"] > 0
    finally:
        await stop_all(hosts)
        await impostor.stop()


# ------------------------------------------------------------------------------------ liveness


@pytest.mark.parametrize("kind", ["memory", "tcp"])
async def test_last_heard_advances_with_every_frame_from_a_host(kind: str) -> None:
    if kind == "tcp":
        hosts, got = await tcp_hosts(["h1", "h2"])
    else:
        _, hosts, got = await memory_hosts(["h1", "h2"])
    a, b = hosts["h1"], hosts["h2"]
    try:
        assert b.last_heard("h1") is None
        a.send("", [hb("h1", "h2", 1)])
        await wait_until(lambda: len(got["h2"]) == 1)
        first = b.last_heard("h1")
        assert first is not None and first <= asyncio.get_running_loop().time()
        await asyncio.sleep(0.02)
        a.send("", [hb("h1", "h2", 2)])
        await wait_until(lambda: len(got["h2"]) == 2)
        second = b.last_heard("h1")
        assert second is not None and second > first
        assert a.last_heard("h2") is None  # h2 never sent anything to h1
    finally:
        await stop_all(hosts)

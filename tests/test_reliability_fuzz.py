"""Bad input on the peer port (docs/reliability.md, "Bad input").

A 3-node cluster of `RaftNode`s over real `TcpTransport`s runs on an event loop in a background
thread; hypothesis opens raw sockets to a follower and feeds it arbitrary bytes, truncated or
mutated handshakes, garbage after a valid handshake, and mutated valid frames. For each example:
the node keeps running, the connection is closed, the reason is logged and counted in
`transport.stats` (`bad_frames`, `rejected_handshakes`), and (except for frames that still decode
to a valid message from the right peer) the node's term, log and commit do not change.

The second half sends messages that decode fine but are semantically hostile straight into a
node (`RaftNode._on_message`, the transport's callback) and records what each does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_transport_helpers import free_ports

from raftlib import NodeConfig, RaftNode, StateMachine
from raftlib.codec import (
    FrameDecoder,
    Handshake,
    decode_handshake_ack,
    encode,
    encode_handshake,
)
from raftlib.core import Entry, Membership, Message, MessageType, SnapshotMeta
from raftlib.transport.memory import MemoryNetwork, MemoryTransport

T = TypeVar("T")
CLUSTER_ID = "fuzz-cluster"


class KV(StateMachine):
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, command: bytes, index: int) -> Any:
        k, v = json.loads(command)
        self.data[k] = v
        return index

    def snapshot(self) -> bytes:
        return json.dumps(self.data).encode()

    def restore(self, data: bytes) -> None:
        self.data = json.loads(data)



class Records(logging.Handler):
    """Collects the transport's log records (from the loop thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._mu = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._mu:
            self.messages.append(record.getMessage())

    def since(self, n: int) -> list[str]:
        with self._mu:
            return self.messages[n:]


class LiveCluster:
    """Three RaftNodes over TCP on a loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        ports = free_ports(3)
        self.members = {f"n{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
        cfg = NodeConfig(tick_interval=0.05, election_tick=20, cluster_id=CLUSTER_ID)
        self.nodes = {nid: RaftNode(nid, self.members, KV(), config=cfg) for nid in self.members}
        self.run(self._start())
        self.log = Records()
        logging.getLogger("raftlib.transport.tcp").addHandler(self.log)
        logging.getLogger("raftlib.transport.tcp").setLevel(logging.DEBUG)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        for n in self.nodes.values():
            await n.start()
        await self.nodes["n1"].wait_leader(10)
        lead = self.leader_id()
        await self.nodes[lead].propose(json.dumps(["k", "v"]).encode())
        for n in self.nodes.values():
            await n.wait_applied(self.nodes[lead].status()["commit"], 5)

    def leader_id(self, timeout: float = 10.0) -> str:
        """The leader all three agree on (mutated frames may legitimately start an election, e.g.
        a type byte turned into TIMEOUT_NOW: wait it out)."""
        deadline = time.monotonic() + timeout
        while True:
            leaders = {n.leader for n in self.nodes.values()}
            if len(leaders) == 1 and None not in leaders:
                lead = leaders.pop()
                assert lead is not None
                return lead
            assert time.monotonic() < deadline, f"no agreed leader: {leaders}"
            time.sleep(0.02)

    def target(self) -> tuple[RaftNode, str]:
        """A follower to attack, and the id of the other follower (a peer it accepts)."""
        lead = self.leader_id()
        followers = sorted(n for n in self.nodes if n != lead)
        return self.nodes[followers[0]], followers[1]

    def state(self, node: RaftNode) -> tuple[Any, ...]:
        async def get() -> tuple[Any, ...]:
            s = node.status()
            return (s["term"], s["commit"], s["last_index"], s["running"])

        return self.run(get())

    def stats(self, node: RaftNode) -> dict[str, int]:
        async def get() -> dict[str, int]:
            return dict(node._transport.stats)

        return self.run(get())

    def close(self) -> None:
        logging.getLogger("raftlib.transport.tcp").removeHandler(self.log)

        async def stop() -> None:
            for n in self.nodes.values():
                await n.stop()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveCluster]:
    c = LiveCluster()
    try:
        yield c
    finally:
        c.close()


def exchange(address: str, payload: bytes, handshake: bytes | None = None, timeout: float = 5.0) -> bytes:
    """Connect, optionally handshake (returning the answer), send `payload`, half-close, and read
    until the node closes the connection. Returns what the node sent. Fails if it never closes."""
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        got = b""
        if handshake is not None:
            s.sendall(handshake)
            got = read_answer(s)
        if payload:
            s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return got
            if not chunk:
                return got
            got += chunk
            assert time.monotonic() < deadline, "the node never closed the connection"
    finally:
        s.close()


def read_answer(s: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 8:
        chunk = s.recv(8 - len(buf))
        if not chunk:
            return buf
        buf += chunk
    (length,) = struct.unpack_from("<I", buf, 4)
    while len(buf) < 8 + length:
        chunk = s.recv(8 + length - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def answer_ok(raw: bytes) -> tuple[bool, str]:
    return decode_handshake_ack(raw[8:])


def check_closed_and_accounted(
    live: LiveCluster, node: RaftNode, before_stats: dict[str, int], n_logs: int, data: bytes
) -> None:
    after = live.stats(node)
    counted = (after["bad_frames"] - before_stats["bad_frames"]) + (
        after["rejected_handshakes"] - before_stats["rejected_handshakes"]
    )
    logs = live.log.since(n_logs)
    for _ in range(50):  # the log line may trail the close by a loop iteration
        if logs:
            break
        time.sleep(0.01)
        logs = live.log.since(n_logs)
    assert logs, f"no log line for a bad connection ({data[:40]!r})"
    if counted == 0:
        # Nothing decodable was wrong yet: the input ended early (EOF before a full frame).
        assert any("ended before its handshake" in m or "closed" in m or "lost" in m for m in logs), logs


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_instead_of_a_handshake(live: LiveCluster, data: bytes) -> None:
    node, _ = live.target()
    state, stats, n = live.state(node), live.stats(node), len(live.log.messages)
    answer = exchange(live.members[node.id], data)
    if answer:  # only a refusal may come back
        assert not answer_ok(answer)[0]
    check_closed_and_accounted(live, node, stats, n, data)
    assert live.state(node) == state


@FUZZ
@given(
    cluster=st.sampled_from([CLUSTER_ID, "other-cluster", ""]),
    sender=st.sampled_from(["peer", "n9", "", "leader"]),
    receiver=st.sampled_from(["self", "n9", ""]),
    protocol=st.sampled_from([1, 0, 2, 255]),
    cut=st.one_of(st.none(), st.integers(0, 60)),
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 80), st.integers(1, 255))),
)
def test_truncated_and_mutated_handshakes(
    live: LiveCluster,
    cluster: str,
    sender: str,
    receiver: str,
    protocol: int,
    cut: int | None,
    flip: tuple[int, int] | None,
) -> None:
    node, peer = live.target()
    snd = {"peer": peer, "leader": live.leader_id()}.get(sender, sender)
    rcv = node.id if receiver == "self" else receiver
    frame = bytearray(encode_handshake(Handshake(cluster, snd, rcv, protocol=protocol)))
    if flip is not None and flip[0] < len(frame):
        frame[flip[0]] ^= flip[1]
    if cut is not None:
        frame = frame[:cut]
    valid = cut is None and flip is None and cluster == CLUSTER_ID and rcv == node.id and protocol == 1
    valid = valid and snd in (peer, live.leader_id())
    state, stats, n = live.state(node), live.stats(node), len(live.log.messages)
    answer = exchange(live.members[node.id], bytes(frame))
    if valid:
        assert answer_ok(answer) == (True, "")
        return
    if answer:
        ok, reason = answer_ok(answer)
        if not ok:
            assert reason
            after = live.stats(node)
            assert after["rejected_handshakes"] == stats["rejected_handshakes"] + 1
            assert any("refusing connection" in m and reason in m for m in live.log.since(n))
    check_closed_and_accounted(live, node, stats, n, bytes(frame))
    assert live.state(node) == state


@FUZZ
@given(data=st.binary(min_size=1, max_size=400))
def test_garbage_after_a_valid_handshake(live: LiveCluster, data: bytes) -> None:
    node, peer = live.target()
    state, stats, n = live.state(node), live.stats(node), len(live.log.messages)
    hs = encode_handshake(Handshake(CLUSTER_ID, peer, node.id))
    answer = exchange(live.members[node.id], data, handshake=hs)
    assert answer_ok(answer) == (True, "")
    # Would the bytes decode to any message? (Garbage essentially never does: the magic, version,
    # flags and exact length layout must all match.)
    try:
        decodable = FrameDecoder().feed(data)
    except Exception:
        decodable = []
    if not decodable:
        assert live.state(node) == state
    after = live.stats(node)
    if after["bad_frames"] == stats["bad_frames"]:
        # Not a bad frame: an incomplete one cut by our half-close.
        assert any("closed" in m or "lost" in m for m in live.log.since(n)) or decodable
    else:
        assert any("bad frame" in m for m in live.log.since(n)), live.log.since(n)


def sample_messages(frm: str, to: str, term: int) -> list[Message]:
    meta = SnapshotMeta(5, 1, Membership(frozenset({"n1", "n2", "n3"})))
    return [
        Message(MessageType.PRE_VOTE, frm, to, term + 1, log_term=1, index=1),
        Message(MessageType.VOTE_RESP, frm, to, term, reject=True),
        Message(MessageType.HEARTBEAT_RESP, frm, to, term, index=3),
        Message(MessageType.APPEND_RESP, frm, to, max(0, term - 1), index=2),
        Message(MessageType.READ_INDEX, frm, to, term, context=b"ctx"),
        Message(MessageType.SNAPSHOT_RESP, frm, to, max(0, term - 1), snapshot=meta, offset=10),
        Message(
            MessageType.APPEND,
            frm,
            to,
            max(0, term - 1),
            log_term=1,
            index=1,
            entries=[Entry(2, 1, b"x" * 20)],
            commit=1,
        ),
    ]


@FUZZ
@given(
    which=st.integers(0, 6),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "append", "dup"]), st.integers(0, 10_000), st.binary(max_size=8)
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_valid_frames_never_crash_the_node(
    live: LiveCluster, which: int, ops: list[tuple[str, int, bytes]]
) -> None:
    node, peer = live.target()
    term = live.state(node)[0]
    frame = bytearray(encode(sample_messages(peer, node.id, term)[which]))
    for op, pos, extra in ops:
        p = pos % max(1, len(frame))
        if op == "flip" and frame:
            frame[p] ^= (extra[0] if extra else 0x55) or 1
        elif op == "cut":
            del frame[p:]
        elif op == "append":
            frame += extra
        else:
            frame += bytes(frame)
    stats, n = live.stats(node), len(live.log.messages)
    hs = encode_handshake(Handshake(CLUSTER_ID, peer, node.id))
    exchange(live.members[node.id], bytes(frame), handshake=hs)
    assert live.state(node)[3], "the node stopped"
    after = live.stats(node)
    if after["bad_frames"] > stats["bad_frames"]:
        assert any("bad frame" in m or "does not match the handshake" in m for m in live.log.since(n))


def test_the_cluster_still_works_after_the_fuzzing(live: LiveCluster) -> None:
    async def check() -> int:
        lead = live.nodes[live.leader_id()]
        idx = await lead.propose(json.dumps(["after", "fuzz"]).encode(), timeout=5)
        for n in live.nodes.values():
            await n.wait_applied(idx, 5)
            assert n.running and n._sm.data["after"] == "fuzz"  # type: ignore[attr-defined]
        return idx

    assert live.run(check()) > 1
    total = {
        k: sum(live.stats(n)[k] for n in live.nodes.values()) for k in ("bad_frames", "rejected_handshakes")
    }
    print(f"fuzz totals: {total}")
    assert total["bad_frames"] > 50 and total["rejected_handshakes"] > 20


def test_a_message_from_another_id_on_a_peers_connection_is_refused(live: LiveCluster) -> None:
    node, peer = live.target()
    stats, n = live.stats(node), len(live.log.messages)
    state = live.state(node)
    spoof = Message(MessageType.APPEND, live.leader_id(), node.id, state[0] + 5, index=0, commit=10**6)
    hs = encode_handshake(Handshake(CLUSTER_ID, peer, node.id))
    exchange(live.members[node.id], encode(spoof), handshake=hs)
    assert live.stats(node)["bad_frames"] == stats["bad_frames"] + 1
    assert any("does not match the handshake" in m for m in live.log.since(n))
    assert live.state(node) == state


# --------------------------------------------------------------- semantically hostile messages


class MemCluster:
    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.members = {f"n{i}": f"mem://n{i}" for i in (1, 2, 3)}
        cfg = NodeConfig(tick_interval=0.01, election_tick=10)
        self.sms = {nid: KV() for nid in self.members}
        self.nodes = {
            nid: RaftNode(
                nid, self.members, self.sms[nid], config=cfg, transport=MemoryTransport(nid, self.net)
            )
            for nid in self.members
        }

    async def __aenter__(self) -> MemCluster:
        for n in self.nodes.values():
            await n.start()
        await self.nodes["n1"].wait_leader(5)
        lead = self.leader()
        for i in range(5):
            await lead.propose(json.dumps([f"k{i}", "v"]).encode())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for n in self.nodes.values():
            await n.stop()

    def leader(self) -> RaftNode:
        return next(n for n in self.nodes.values() if n.is_leader)

    def follower(self) -> RaftNode:
        return next(n for n in self.nodes.values() if not n.is_leader)

    async def works(self) -> None:
        """A write still commits everywhere (waiting out an election if there is one)."""
        deadline = time.monotonic() + 5
        while True:
            try:
                lead = self.leader()
                idx = await lead.propose(json.dumps(["probe", str(time.monotonic())]).encode(), timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        for n in self.nodes.values():
            await n.wait_applied(idx, 5)
            assert n.running
        datas = [json.dumps(sm.data, sort_keys=True) for sm in self.sms.values()]
        assert len(set(datas)) == 1


async def test_huge_term_from_an_unknown_sender() -> None:
    """Observed: an APPEND or VOTE from a sender outside the configuration at term 2**62 ...
    see docs/reliability.md. The node must not crash, and the cluster must keep committing."""
    async with MemCluster() as c:
        f = c.follower()
        before = f.status()["term"]
        f._on_message(Message(MessageType.HEARTBEAT, "evil", f.id, 2**62, commit=10**9))
        f._on_message(Message(MessageType.VOTE, "evil", f.id, 2**62, log_term=2**62, index=10**9))
        await asyncio.sleep(0.1)
        assert f.running
        after = f.status()["term"]
        print(f"huge term from unknown sender: follower term {before} -> {after}")
        assert f.status()["commit"] <= f.status()["last_index"]
        await c.works()


async def test_acks_for_indexes_never_sent() -> None:
    async with MemCluster() as c:
        lead = c.leader()
        term = lead.status()["term"]
        last = lead.status()["last_index"]
        other = next(n for n in c.nodes if n != lead.id)
        lead._on_message(Message(MessageType.APPEND_RESP, other, lead.id, term, index=10**12))
        lead._on_message(Message(MessageType.HEARTBEAT_RESP, other, lead.id, term, index=10**12))
        lead._on_message(Message(MessageType.APPEND_RESP, other, lead.id, term, index=last + 50, reject=True))
        await asyncio.sleep(0.1)
        assert lead.running
        st = lead.status()
        print(f"acks for unsent indexes: leader commit {st['commit']}, last index {st['last_index']}")
        assert st["commit"] <= st["last_index"]
        await c.works()


async def test_snapshot_chunks_without_a_snapshot() -> None:
    """A middle chunk with no beginning, and a chunk without snapshot meta: ignored."""
    async with MemCluster() as c:
        f = c.follower()
        lead = c.leader()
        term = lead.status()["term"]
        meta = SnapshotMeta(10**6, term, Membership(frozenset(c.members)))
        f._on_message(
            Message(MessageType.SNAPSHOT, lead.id, f.id, term, snapshot=meta, offset=4096, data=b"x")
        )
        f._on_message(Message(MessageType.SNAPSHOT, lead.id, f.id, term, offset=0, data=b"y"))
        await asyncio.sleep(0.2)
        st = f.status()
        assert f.running, st["failure"]
        assert st["last_index"] < 10**6
        await c.works()


async def test_a_corrupt_snapshot_transfer_is_rejected_not_fatal() -> None:
    """Found by this suite: a complete snapshot whose bytes fail the header/CRC check used to
    stop the follower (StorageCorrupted inside RaftNode._persist was fatal). The node now
    rejects the transfer, reloads its durable state, and keeps serving."""
    async with MemCluster() as c:
        f = c.follower()
        lead = c.leader()
        term = lead.status()["term"]
        meta = SnapshotMeta(10**6, term, Membership(frozenset(c.members)))
        f._on_message(
            Message(MessageType.SNAPSHOT, lead.id, f.id, term, snapshot=meta, data=b"junk", done=True)
        )
        await asyncio.sleep(0.2)
        assert f.running, f.status()["failure"]
        await c.works()  # and it still replicates


async def test_messages_claiming_to_be_from_another_id() -> None:
    """At the node level (no transport check): a follower receives an APPEND "from" a node that is
    not the leader, at the leader's term. Found by this suite: the core used to accept it; a
    follower now drops leader-only messages from anyone but the leader it knows for the term."""
    async with MemCluster() as c:
        f = c.follower()
        lead = c.leader()
        other = next(n for n in c.nodes if n not in (f.id, lead.id))
        term = lead.status()["term"]
        last = f.status()["last_index"]
        bogus = [Entry(last + 1, term, json.dumps(["forged", "1"]).encode())]
        f._on_message(
            Message(
                MessageType.APPEND, other, f.id, term, log_term=term, index=last, entries=bogus, commit=last
            )
        )
        await asyncio.sleep(0.1)
        st = f.status()
        assert f.running
        assert st["leader"] == lead.id and st["last_index"] == last  # the forged entry was dropped
        await c.works()
        assert f.status()["term"] == term

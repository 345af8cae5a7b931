"""Exactly-once client sessions (Raft thesis §6.3): the state-machine layer, then a 3-node cluster.

Unit tests drive SessionStateMachine.apply with hand-made envelopes (each names the rule it
checks); cluster tests run three in-process RaftNodes over the memory transport and retry
through leader loss, snapshots and expiry.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_node import FAST

import raftlib
from raftlib import NodeConfig, RaftNode, StateMachine, valuecodec
from raftlib.sessions import (
    InvalidCommand,
    LogClock,
    Session,
    SessionExpired,
    SessionStale,
    SessionStateMachine,
    TooManyPendingResponses,
    TooManySessions,
    close_entry,
    command_entry,
    keepalive_entry,
    plain_entry,
    register_entry,
    tick_entry,
)
from raftlib.storage import MemoryStorage
from raftlib.transport.memory import MemoryNetwork, MemoryTransport


class Appender(StateMachine):
    """Appends each command to a list: a duplicate application would show as a repeat."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def apply(self, command: bytes, index: int) -> Any:
        self.items.append(command.decode())
        return len(self.items)

    def snapshot(self) -> bytes:
        return json.dumps(self.items).encode()

    def restore(self, data: bytes) -> None:
        self.items = json.loads(data)


def machine(**kw: Any) -> SessionStateMachine:
    return SessionStateMachine(Appender(), **kw)


T0 = 1_000_000.0


# -- the state-machine layer ----------------------------------------------------------------------


def test_session_id_is_the_index_of_the_registering_entry() -> None:
    sm = machine()
    assert sm.apply(register_entry(T0), 7) == 7
    assert list(sm.sessions()) == [7]


def test_a_duplicate_command_is_answered_with_the_recorded_result_not_applied_again() -> None:
    sm = machine()
    sid = sm.apply(register_entry(T0), 1)
    assert sm.apply(command_entry(sid, 1, 1, b"a"), 2) == 1
    assert sm.apply(command_entry(sid, 2, 1, b"b"), 3) == 2
    # The retry of seq 1 (same session, same sequence) arrives later in the log.
    assert sm.apply(command_entry(sid, 1, 1, b"a"), 4) == 1
    assert sm.inner.items == ["a", "b"]  # type: ignore[union-attr]


def test_acknowledged_results_are_discarded_and_a_retry_below_the_ack_is_stale() -> None:
    sm = machine()
    sid = sm.apply(register_entry(T0), 1)
    for seq in range(1, 4):
        sm.apply(command_entry(sid, seq, 1, f"c{seq}".encode()), 1 + seq)
    # The client now awaits only seq >= 3: results 1 and 2 can go.
    assert sm.apply(command_entry(sid, 4, 3, b"c4"), 6) == 4
    err = sm.apply(command_entry(sid, 2, 3, b"c2"), 7)
    assert isinstance(err, SessionStale)
    assert sm.apply(command_entry(sid, 3, 3, b"c3"), 8) == 3  # still recorded
    assert sm.inner.items == ["c1", "c2", "c3", "c4"]  # type: ignore[union-attr]


def test_more_unacknowledged_results_than_the_bound_is_a_clear_error_and_nothing_is_applied() -> None:
    sm = machine(max_responses=2)
    sid = sm.apply(register_entry(T0), 1)
    sm.apply(command_entry(sid, 1, 1, b"a"), 2)
    sm.apply(command_entry(sid, 2, 1, b"b"), 3)
    err = sm.apply(command_entry(sid, 3, 1, b"c"), 4)
    assert isinstance(err, TooManyPendingResponses)
    assert "limit 2" in str(err)
    assert sm.inner.items == ["a", "b"]  # type: ignore[union-attr]
    # Once the client acknowledges, the same command goes through.
    assert sm.apply(command_entry(sid, 3, 3, b"c"), 5) == 3


def test_sessions_expire_by_log_time_from_leader_stamps_not_by_the_wall_clock() -> None:
    sm = machine(session_timeout=10.0)
    a = sm.apply(register_entry(T0), 1)
    b = sm.apply(register_entry(T0 + 5), 2)
    # Follower-stamped (negative) entries far in the future do not move log time.
    sm.apply(plain_entry(b"x", -(T0 + 1000)), 3)
    assert sm.log_time == T0 + 5
    assert set(sm.sessions()) == {a, b}
    sm.apply(tick_entry(T0 + 10.5), 4)  # a idle for 10.5 s > 10 s
    assert set(sm.sessions()) == {b}
    assert isinstance(sm.apply(command_entry(a, 1, 1, b"late"), 5), SessionExpired)
    sm.apply(keepalive_entry(b, T0 + 14), 6)  # b active at 14
    sm.apply(tick_entry(T0 + 23), 7)
    assert set(sm.sessions()) == {b}
    sm.apply(tick_entry(T0 + 24.1), 8)
    assert sm.sessions() == {}
    assert "late" not in sm.inner.items  # type: ignore[union-attr]


def test_a_follower_stamp_counts_as_activity_only_within_the_leaders_clock_window() -> None:
    sm = machine(session_timeout=10.0, clock_period=1.0)
    sid = sm.apply(register_entry(T0), 1)
    # A follower whose clock is an hour ahead: activity clamped to log time + 1 s.
    sm.apply(command_entry(sid, 1, 1, b"a", stamp=-(T0 + 3600)), 2)
    assert sm.sessions()[sid] == T0 + 1
    sm.apply(tick_entry(T0 + 11.5), 3)
    assert sid not in sm.sessions()


def test_activity_stamped_before_any_leader_stamp_is_clamped_when_the_first_one_arrives() -> None:
    sm = machine(session_timeout=10.0, clock_period=1.0)
    early = sm.apply(register_entry(-(T0 + 3600)), 1)  # a follower an hour ahead, log time still 0
    late = sm.apply(register_entry(-T0), 2)
    sm.apply(tick_entry(T0), 3)  # the first leader stamp
    assert sm.sessions() == {early: T0 + 1, late: T0}
    sm.apply(tick_entry(T0 + 11.5), 4)
    assert sm.sessions() == {}


def test_two_machines_fed_the_same_log_agree_exactly() -> None:
    log = [register_entry(T0), register_entry(-T0)]
    log += [command_entry(1, s, max(1, s - 2), f"v{s}".encode(), T0 + s) for s in range(1, 30)]
    log += [command_entry(2, 1, 1, b"w", -(T0 + 3)), tick_entry(T0 + 200), command_entry(1, 30, 1, b"z")]
    results = []
    for sm in (machine(session_timeout=60), machine(session_timeout=60)):
        results.append([repr(sm.apply(e, i)) for i, e in enumerate(log, 1)])
        results.append(sm.snapshot().chunks().__next__())
    assert results[0] == results[2] and results[1] == results[3]


@given(st.lists(st.integers(1, 12), min_size=1, max_size=60))
@settings(max_examples=200, deadline=None)
def test_any_arrival_order_with_retries_applies_each_sequence_once_in_first_arrival_order(
    arrivals: list[int],
) -> None:
    # Reference: a command takes effect the first time its sequence number reaches the log;
    # every later copy gets that first result. (The client never acknowledges here.)
    sm = machine()
    sid = sm.apply(register_entry(T0), 1)
    first: dict[int, int] = {}
    for i, seq in enumerate(arrivals, 2):
        result = sm.apply(command_entry(sid, seq, 1, f"s{seq}".encode()), i)
        first.setdefault(seq, len(first) + 1)
        assert result == first[seq]
    assert sm.inner.items == [f"s{seq}" for seq in first]  # type: ignore[union-attr]


steps = st.lists(
    st.tuples(
        st.sampled_from(["register", "keepalive", "tick"]),
        st.integers(0, 6),  # which session (by registration order) a keep-alive is for
        st.floats(0, 4),  # how far the proposer's clock moved
        st.booleans(),  # stamped by the leader?
        st.floats(-3, 3),  # a follower's clock error
    ),
    max_size=60,
)


@given(steps)
@settings(max_examples=200, deadline=None)
def test_expiry_matches_a_full_scan_reference(script: list[tuple[str, int, float, bool, float]]) -> None:
    timeout, period = 5.0, 1.0
    sm = machine(session_timeout=timeout, clock_period=period)
    ref: dict[int, float] = {}
    log_time = 0.0
    clock = T0
    registered: list[int] = []
    for index, (kind, which, dt, by_leader, skew) in enumerate(script, 1):
        clock += dt
        stamp = clock if by_leader else -(clock + skew)
        if kind == "register":
            entry = register_entry(stamp)
        elif kind == "keepalive" and registered:
            entry = keepalive_entry(registered[which % len(registered)], stamp)
        else:
            entry = tick_entry(stamp)
        result = sm.apply(entry, index)
        # The reference: the documented rules, with a scan of every session.
        if stamp > log_time:
            if log_time == 0.0:
                ref = {k: min(v, stamp + period) for k, v in ref.items()}
            log_time = stamp
            ref = {k: v for k, v in ref.items() if v >= log_time - timeout}
        if stamp < 0:
            activity = -stamp if log_time == 0.0 else min(max(-stamp, log_time), log_time + period)
        else:
            activity = log_time
        if kind == "register":
            ref[index] = activity
            registered.append(index)
            assert result == index
        elif kind == "keepalive" and registered:
            sid = registered[which % len(registered)]
            if sid in ref:
                ref[sid] = max(ref[sid], activity)
            else:
                assert isinstance(result, SessionExpired)
        assert sm.sessions() == ref


def test_registrations_beyond_max_sessions_are_refused() -> None:
    sm = machine(max_sessions=1)
    sm.apply(register_entry(T0), 1)
    assert isinstance(sm.apply(register_entry(T0), 2), TooManySessions)


def test_a_closed_session_is_gone_and_garbage_entries_are_refused_not_fatal() -> None:
    sm = machine()
    sid = sm.apply(register_entry(T0), 1)
    assert sm.apply(close_entry(sid), 2) is None
    assert isinstance(sm.apply(command_entry(sid, 1, 1, b"a"), 3), SessionExpired)
    assert isinstance(sm.apply(b"\x09garbage-from-another-version", 4), InvalidCommand)
    assert isinstance(sm.apply(b"\x01", 5), InvalidCommand)


def test_the_session_table_survives_a_snapshot_round_trip() -> None:
    sm = machine(session_timeout=30)
    sid = sm.apply(register_entry(T0), 1)
    sm.apply(command_entry(sid, 1, 1, b"a"), 2)
    sm.apply(command_entry(sid, 2, 1, b"b"), 3)
    data = b"".join(sm.snapshot().chunks())
    twin = machine(session_timeout=30)
    twin.restore(data)
    assert twin.sessions() == sm.sessions() and twin.log_time == sm.log_time
    assert twin.inner.items == ["a", "b"]  # type: ignore[union-attr]
    assert twin.apply(command_entry(sid, 2, 1, b"b"), 4) == 2  # duplicate after restore
    assert twin.inner.items == ["a", "b"]  # type: ignore[union-attr]


class Returns(StateMachine):
    """Returns the value its command names (a JSON text), to check how results are recorded."""

    def apply(self, command: bytes, index: int) -> Any:
        named = {"nan": float("nan"), "huge": 10**5000, "surrogate": "\ud800", "bytes": b"\x00\xff",
                 "list": [1, "x"]}
        text = command.decode()
        return named[text] if text in named else json.loads(text)

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


@pytest.mark.parametrize(
    "command, expected",
    [("null", None), ("true", True), ("42", 42), ("1.5", 1.5), ('"ascii"', "ascii"),
     ('"\u00e9t\u00e9"', "été"), ("bytes", b"\x00\xff"), ("list", [1, "x"])],
)
def test_a_duplicate_gets_the_recorded_result_of_any_type_and_so_does_a_restored_member(
    command: str, expected: Any
) -> None:
    # Immutable scalars are recorded as they are, other results encoded: either way a duplicate,
    # before or after a snapshot round trip, is answered with an equal value of the same type.
    sm = SessionStateMachine(Returns())
    sid = sm.apply(register_entry(T0), 1)
    first = sm.apply(command_entry(sid, 1, 1, command.encode()), 2)
    assert first == expected and type(first) is type(expected)
    again = sm.apply(command_entry(sid, 1, 1, command.encode()), 3)
    assert again == expected and type(again) is type(expected)
    twin = SessionStateMachine(Returns())
    twin.restore(b"".join(sm.snapshot().chunks()))
    restored = twin.apply(command_entry(sid, 1, 1, command.encode()), 4)
    assert restored == expected and type(restored) is type(expected)


def test_a_snapshot_writes_every_recorded_result_encoded_as_before() -> None:
    # The snapshot format is unchanged by recording scalars unencoded: each result is its encoding.
    sm = SessionStateMachine(Returns())
    sid = sm.apply(register_entry(T0), 1)
    for seq, text in enumerate(["null", "7", '"s"', "list"], start=1):
        sm.apply(command_entry(sid, seq, 1, text.encode()), 1 + seq)
    data = b"".join(sm.snapshot().chunks())
    size = int.from_bytes(data[4:12], "little")
    table = valuecodec.decode(data[12 : 12 + size], 1 << 40)
    (_, _, _, responses), = table["sessions"]
    assert responses == [(1, valuecodec.encode(None)), (2, valuecodec.encode(7)), (3, valuecodec.encode("s")),
                         (4, valuecodec.encode([1, "x"]))]


@pytest.mark.parametrize("command", ["nan", "huge", "surrogate"])
def test_a_result_that_cannot_be_encoded_is_recorded_as_a_command_error_on_every_member(command: str) -> None:
    sm = SessionStateMachine(Returns())
    sid = sm.apply(register_entry(T0), 1)
    first = sm.apply(command_entry(sid, 1, 1, command.encode()), 2)
    assert type(first) is raftlib.CommandError and "cannot be recorded" in str(first)
    assert sm.apply(command_entry(sid, 1, 1, command.encode()), 3) == first
    b"".join(sm.snapshot().chunks())  # and the table still encodes


class HeldNode:
    """A stand-in RaftNode whose proposals are answered only when the test says so."""

    id = "held"
    running = True
    is_leader = True

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []  # (seq, ack) of each command entry
        self.answers: dict[int, asyncio.Future[Any]] = {}

    async def propose(self, command: bytes, timeout: float | None = None) -> Any:
        if command[1] == 1:  # REGISTER
            return 1
        seq, ack = struct.unpack_from("<QQ", command, 18)
        self.sent.append((seq, ack))
        fut = self.answers[seq] = asyncio.get_running_loop().create_future()
        return await fut


async def test_each_command_acknowledges_below_the_lowest_call_still_awaited() -> None:
    # Thesis §6.3: a command carries the lowest sequence number its client still awaits, so the
    # state machine may discard the results below it -- never one a pending call may still need.
    node = HeldNode()
    session = Session(node, keepalive=None)  # type: ignore[arg-type]
    await session.open()
    calls = [asyncio.create_task(session.call(b"x")) for _ in range(3)]
    await asyncio.sleep(0)
    assert node.sent == [(1, 1), (2, 1), (3, 1)]
    node.answers[2].set_result("two")  # answered out of order: 1 is still awaited
    assert await calls[1] == "two"
    calls.append(asyncio.create_task(session.call(b"x")))
    await asyncio.sleep(0)
    assert node.sent[-1] == (4, 1)
    node.answers[1].set_result("one")
    assert await calls[0] == "one"
    calls.append(asyncio.create_task(session.call(b"x")))
    await asyncio.sleep(0)
    assert node.sent[-1] == (5, 3)  # 1 and 2 answered: 3 is the lowest awaited
    for seq in (3, 4, 5):
        node.answers[seq].set_result(seq)
    assert await asyncio.gather(*calls[2:]) == [3, 4, 5]
    calls.append(asyncio.create_task(session.call(b"x")))
    await asyncio.sleep(0)
    assert node.sent[-1] == (6, 6)  # nothing else awaited
    node.answers[6].set_result(None)
    await calls[-1]


# -- a three-node cluster -----------------------------------------------------------------------------


class SessionCluster:
    def __init__(self, session_timeout: float = 60.0, **cfg: Any) -> None:
        self.ids = ["n1", "n2", "n3"]
        self.members = {i: f"mem://{i}" for i in self.ids}
        self.net = MemoryNetwork()
        self.cfg = NodeConfig(**{**FAST, "forward_proposals": True, **cfg})
        self.session_timeout = session_timeout
        self.storages = {i: MemoryStorage() for i in self.ids}
        self.sms: dict[str, SessionStateMachine] = {}
        self.nodes: dict[str, RaftNode] = {}
        self.clocks: dict[str, LogClock] = {}

    async def start(self, node_id: str) -> RaftNode:
        sm = self.sms[node_id] = machine(session_timeout=self.session_timeout)
        self.storages[node_id].crash()  # a restart: reopen what was saved
        node = RaftNode(
            node_id, self.members, sm, config=self.cfg,
            transport=MemoryTransport(node_id, self.net), storage=self.storages[node_id],
        )
        self.nodes[node_id] = node
        await node.start()
        self.clocks[node_id] = LogClock(node, sm, interval=0.02)
        self.clocks[node_id].start()
        return node

    async def stop(self, node_id: str) -> None:
        await self.clocks.pop(node_id).stop()
        await self.nodes[node_id].stop()

    async def leader(self) -> RaftNode:
        async def find() -> RaftNode:
            while True:
                leaders = [n for n in self.nodes.values() if n.running and n.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(find(), 5)

    async def close(self) -> None:
        for i in list(self.clocks):
            await self.stop(i)


@pytest.fixture
async def cluster() -> Any:
    c = SessionCluster()
    for i in c.ids:
        await c.start(i)
    yield c
    await c.close()


async def test_a_retry_after_the_leader_is_stopped_is_applied_once(cluster: SessionCluster) -> None:
    leader = await cluster.leader()
    others = [n for n in cluster.nodes.values() if n is not leader]
    session = Session([leader, *others], attempt_timeout=0.3, timeout=10, keepalive=None)
    await session.open()
    assert await session.call(b"before") == 1
    # Propose on the leader and stop it before the answer comes: the entry may or may not
    # have committed. The session retries the same (session, sequence) on the survivors.
    call = asyncio.create_task(session.call(b"x"))
    await asyncio.sleep(0)  # the proposal is in the leader's log, replicating
    await cluster.stop(leader.id)
    assert await call in (2,)
    assert session.retries >= 1
    survivor = cluster.sms[others[0].id]
    await others[0].read_barrier()
    assert survivor.inner.items.count("x") == 1  # type: ignore[union-attr]
    await session.close()


async def test_duplicates_across_a_leadership_transfer_get_the_recorded_result(
    cluster: SessionCluster,
) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    session = Session(follower, keepalive=None)
    sid = await session.open()
    assert await session.call(b"a") == 1
    await leader.transfer_leadership(follower.id)
    # Resend seq 1 by hand, as a client whose answer got lost would: the old result, no effect.
    again = await follower.propose(command_entry(sid, 1, 1, b"a", raftlib.sessions.stamp_for(follower)))
    assert again == 1
    assert await session.call(b"b") == 2
    for node in cluster.nodes.values():
        await node.read_barrier()
    assert {tuple(sm.inner.items) for sm in cluster.sms.values()} == {("a", "b")}  # type: ignore[union-attr]
    await session.close()


async def test_the_session_table_survives_snapshots_and_a_restart(cluster: SessionCluster) -> None:
    leader = await cluster.leader()
    session = Session(leader, keepalive=None)
    sid = await session.open()
    for i in range(5):
        await session.call(f"c{i}".encode())
    for node in cluster.nodes.values():
        await node.read_barrier()
        await node.snapshot()
    # Restart a follower: it restores from its snapshot, then a duplicate is still recognised.
    follower = next(i for i in cluster.ids if i != leader.id)
    await cluster.stop(follower)
    node = await cluster.start(follower)
    await node.read_barrier()
    assert sid in cluster.sms[follower].sessions()
    assert await node.propose(command_entry(sid, 5, 5, b"c4")) == 5
    assert cluster.sms[follower].inner.items == [f"c{i}" for i in range(5)]  # type: ignore[union-attr]
    await session.close()


async def test_a_follower_catching_up_by_snapshot_gets_the_session_table() -> None:
    c = SessionCluster(snapshot_entries=10, snapshot_trailing_entries=2)
    for i in c.ids:
        await c.start(i)
    try:
        leader = await c.leader()
        lagging = next(i for i in c.ids if i != leader.id)
        await c.stop(lagging)
        session = Session(leader, keepalive=None)
        sid = await session.open()
        for i in range(30):  # the leader snapshots and compacts past what the follower has
            await session.call(f"c{i}".encode())
        node = await c.start(lagging)
        await node.read_barrier()
        assert node.metrics["snapshots_installed"] >= 1
        assert sid in c.sms[lagging].sessions()
        # A late duplicate of seq 30 proposed through the restored follower: recorded result.
        assert await node.propose(command_entry(sid, 30, 30, b"c29")) == 30
        await leader.read_barrier()
        assert c.sms[leader.id].inner.items == [f"c{i}" for i in range(30)]  # type: ignore[union-attr]
        await session.close()
    finally:
        await c.close()


async def test_an_idle_session_expires_in_log_time_and_its_calls_fail() -> None:
    c = SessionCluster(session_timeout=0.5)
    for i in c.ids:
        await c.start(i)
    try:
        leader = await c.leader()
        idle = Session(leader, keepalive=None)
        kept = Session(leader, keepalive=0.1)
        await idle.open()
        await kept.open()
        await idle.call(b"a")
        await asyncio.sleep(1.0)  # the leader's clock ticks log time past the timeout
        with pytest.raises(SessionExpired) as err:
            await idle.call(b"b")
        assert err.value.session_id == idle.session_id
        assert await kept.call(b"c") == 2  # kept alive by its keep-alives
        await leader.read_barrier()
        assert c.sms[leader.id].inner.items == ["a", "c"]  # type: ignore[union-attr]
        await kept.close()
    finally:
        await c.close()


async def test_a_followers_clock_sleeps_until_leadership_changes(cluster: SessionCluster) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)

    class Counting(LogClock):
        wakeups = 0

        async def _idle(self) -> None:
            Counting.wakeups += 1
            await super()._idle()

    clock = Counting(follower, cluster.sms[follower.id], interval=0.01, idle_check=10.0)
    clock.start()
    try:
        await asyncio.sleep(0.5)  # fifty intervals: a polling clock would wake fifty times
        assert Counting.wakeups <= 3
        await leader.transfer_leadership(follower.id)
        await asyncio.sleep(0.1)
        assert clock._was_leader  # woken by the change, not by the 10 s check
    finally:
        await clock.stop()


async def test_a_call_that_cannot_reach_a_quorum_ends_with_a_timeout(cluster: SessionCluster) -> None:
    leader = await cluster.leader()
    session = Session(leader, attempt_timeout=0.1, timeout=0.6, keepalive=None)
    await session.open()
    for node_id in cluster.ids:
        if node_id != leader.id:
            await cluster.stop(node_id)
    with pytest.raises(raftlib.SessionCallTimeout) as err:
        await session.call(b"lost")
    assert err.value.attempts >= 2

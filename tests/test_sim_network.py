"""Tests of the simulated network itself (raftlib.testing.network)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from raftlib.core import Message, MessageType
from raftlib.testing.events import DELIVER, EventQueue
from raftlib.testing.network import SimNetwork

IDS = ["a", "b", "c", "d"]


def hb(frm: str, to: str, term: int = 1) -> Message:
    return Message(MessageType.HEARTBEAT, frm, to, term)


def drain(net: SimNetwork) -> list[tuple[int, Message]]:
    out = []
    while net.queue:
        t, kind, (msg, _tag) = net.queue.pop()
        assert kind == DELIVER
        if net.arrives(msg):
            out.append((t, msg))
    return out


def test_partition_blocks_only_links_between_groups() -> None:
    net = SimNetwork(random.Random(0), ids=IDS)
    net.partition(["a", "b"], ["c"])  # d is not named: it forms a group of its own
    assert net.link_up("a", "b") and net.link_up("b", "a")
    assert not net.link_up("a", "c") and not net.link_up("c", "a")
    assert not net.link_up("d", "a") and not net.link_up("c", "d")
    net.partition(["a"], ["b", "c"])  # replaces the earlier partition; d joins a group with nobody named
    assert net.link_up("b", "c") and not net.link_up("a", "b")
    net.heal()
    assert all(net.link_up(x, y) for x in IDS for y in IDS if x != y)


def test_partition_rejects_a_node_in_two_groups() -> None:
    net = SimNetwork(random.Random(0), ids=IDS)
    with pytest.raises(ValueError):
        net.partition(["a", "b"], ["b", "c"])


def test_isolate_and_directed_cut() -> None:
    net = SimNetwork(random.Random(0), ids=IDS)
    net.isolate("c")
    assert [x for x in IDS if x != "c" and net.link_up(x, "c")] == []
    assert net.link_up("a", "b")
    net.heal()
    net.cut("a", "b", both=False)
    assert not net.link_up("a", "b") and net.link_up("b", "a")
    net.connect("a", "b")
    assert net.link_up("a", "b")


def test_messages_are_delivered_after_a_delay_in_range() -> None:
    net = SimNetwork(random.Random(5), ids=IDS, delay=(3, 7))
    for i in range(200):
        net.send(hb("a", "b", i), now=100)
    got = drain(net)
    assert len(got) == 200
    times = [t for t, _ in got]
    assert min(times) >= 103 and max(times) <= 107
    assert len(set(times)) == 5  # every delay in the range occurs
    # Messages overtake each other: the delivery order differs from the sending order.
    assert [m.term for _, m in got] != sorted(m.term for _, m in got)


def test_fifo_keeps_each_link_in_order() -> None:
    net = SimNetwork(random.Random(5), ids=IDS, delay=(1, 9), fifo=True)
    for i in range(100):
        net.send(hb("a", "b", i), now=i // 10)
    assert [m.term for _, m in drain(net)] == list(range(100))


def test_drop_probability_is_respected_and_counted() -> None:
    net = SimNetwork(random.Random(11), ids=IDS, drop=0.3)
    for i in range(2000):
        net.send(hb("a", "b", i), now=0)
    delivered = len(drain(net))
    assert 1250 < delivered < 1550
    assert net.dropped[MessageType.HEARTBEAT] == 2000 - delivered
    assert net.sent[MessageType.HEARTBEAT] == 2000


def test_duplication_sends_independent_copies() -> None:
    net = SimNetwork(random.Random(2), ids=IDS, duplicate=0.5)
    for i in range(400):
        net.send(hb("a", "b", i), now=0)
    got = drain(net)
    counts = Counter(m.term for _, m in got)
    dups = [t for t, c in counts.items() if c == 2]
    assert 150 < len(dups) < 250
    assert len(got) == 400 + len(dups) == 400 + net.duplicated[MessageType.HEARTBEAT]
    # Copies are distinct objects, so a receiver may keep (or mutate) what it is given.
    by_term: dict[int, list[Message]] = {}
    for _, m in got:
        by_term.setdefault(m.term, []).append(m)
    a, b = by_term[dups[0]]
    assert a is not b and a == b


def test_long_delays() -> None:
    net = SimNetwork(random.Random(3), ids=IDS, delay=(1, 2), long_delay_prob=0.2, long_delay=(50, 60))
    for i in range(500):
        net.send(hb("a", "b", i), now=0)
    times = [t for t, _ in drain(net)]
    slow = [t for t in times if t >= 50]
    assert all(t <= 2 or 50 <= t <= 60 for t in times)
    assert 60 < len(slow) < 140


def test_partition_drops_at_send_and_in_flight() -> None:
    net = SimNetwork(random.Random(0), ids=IDS, delay=(5, 5))
    net.send(hb("a", "b", 1), now=0)  # in flight when the partition starts
    net.cut("a", "b")
    net.send(hb("a", "b", 2), now=1)  # sent across the partition: lost at once
    net.send(hb("a", "c", 3), now=1)  # another link
    assert drain(net) == [(6, hb("a", "c", 3))]  # 1 is lost on arrival, 2 never left
    assert net.dropped[MessageType.HEARTBEAT] == 2
    net.heal()
    net.send(hb("a", "b", 4), now=10)
    net.cut("a", "b")
    net.heal()  # cut and healed again before arrival: delivered
    assert [m.term for _, m in drain(net)] == [4]


def test_same_seed_same_deliveries() -> None:
    def run(seed: int) -> list[tuple[int, int, str]]:
        net = SimNetwork(random.Random(seed), ids=IDS, drop=0.2, duplicate=0.1, delay=(1, 20))
        for i in range(300):
            net.send(hb(IDS[i % 4], IDS[(i + 1) % 4], i), now=i)
        return [(t, m.term, m.to) for t, m in drain(net)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_invalid_knobs_are_rejected() -> None:
    with pytest.raises(ValueError):
        SimNetwork(random.Random(0), drop=1.5)
    with pytest.raises(ValueError):
        SimNetwork(random.Random(0), delay=(5, 2))
    with pytest.raises(ValueError):
        SimNetwork(random.Random(0), delay=(0, 2))
    net = SimNetwork(random.Random(0))
    net.set_faults(drop=0.5, delay=(2, 4))
    assert net.drop == 0.5 and net.delay == (2, 4)
    with pytest.raises(TypeError):
        net.set_faults(jitter=3)


def test_event_queue_orders_by_time_then_insertion() -> None:
    q = EventQueue()
    q.push(5, 1, "x")
    q.push(3, 1, "y")
    q.push(5, 1, "z")
    q.push(3, 0, "w")
    assert [q.pop()[2] for _ in range(4)] == ["y", "w", "x", "z"]
    assert q.peek_time() is None

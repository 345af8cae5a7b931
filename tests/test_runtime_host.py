"""RaftHost: many groups per process over one connection per host pair, one write queue, one ticker.

Three hosts in one event loop over the in-memory host transport. The scenarios name the rule of
raftlib/runtime/host.py they check: every group replicates like a lone RaftNode, one batch (one
fsync) covers every group's writes of a loop turn, idle groups quiesce and cost no ticks, any
activity wakes them, a silent host wakes the groups that depend on it (so elections still
happen), and leadership spreads across hosts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from raftlib import (
    ConfigError,
    LeadershipLost,
    NodeConfig,
    NotLeader,
    RaftHost,
    RaftNode,
    RequestTimeout,
    StateMachine,
)
from raftlib.transport.memory_host import MemoryHostNetwork, MemoryHostTransport

FAST = dict(tick_interval=0.01, election_tick=10, heartbeat_tick=1)
HOSTS = {"h1": "mem://h1", "h2": "mem://h2", "h3": "mem://h3"}


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


def put(k: str, v: str) -> bytes:
    return json.dumps([k, v]).encode()


class Hosts:
    def __init__(self, **cfg: Any) -> None:
        self.net = MemoryHostNetwork()
        self.config = NodeConfig(**{**FAST, **cfg})
        self.hosts: dict[str, RaftHost] = {}
        self.sms: dict[tuple[str, str], KV] = {}

    async def start(self, balance_interval: float | None = None) -> None:
        for h in HOSTS:
            host = RaftHost(h, HOSTS, config=self.config, transport=MemoryHostTransport(h, self.net),
                            balance_interval=balance_interval)
            await host.start()
            self.hosts[h] = host

    async def add_groups(self, n: int) -> list[str]:
        gids = [f"g{i}" for i in range(n)]
        for g in gids:
            for h, host in self.hosts.items():
                sm = self.sms[(h, g)] = KV()
                await host.add_group(g, list(HOSTS), sm)
        return gids

    async def leader(self, gid: str, timeout: float = 5.0) -> RaftNode:
        async def find() -> RaftNode:
            while True:
                leaders = [h.group(gid) for h in self.hosts.values() if h.running and gid in h.groups
                           and h.group(gid).is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(find(), timeout)

    async def stop(self) -> None:
        for host in self.hosts.values():
            await host.stop()


@pytest.fixture
async def hosts() -> AsyncIterator[Hosts]:
    c = Hosts()
    await c.start()
    yield c
    await c.stop()


async def settled_read(node: RaftNode, attempts: int = 50) -> None:
    """A read barrier, retried while the node learns that its leadership ended (safe for reads)."""
    for _ in range(attempts):
        try:
            await node.read_barrier(timeout=5)
            return
        except (LeadershipLost, NotLeader):
            await asyncio.sleep(0.05)
    raise AssertionError(f"{node.id}: no read barrier succeeded")


async def wait_until(cond: Any, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


async def test_every_group_elects_and_replicates_independently(hosts: Hosts) -> None:
    gids = await hosts.add_groups(8)
    for g in gids:
        leader = await hosts.leader(g)
        await leader.propose(put("k", g))
    for g in gids:
        for h in HOSTS:
            await hosts.hosts[h].group(g).read_barrier(timeout=5)
            assert hosts.sms[(h, g)].data == {"k": g}, "each group's commands stay in that group"


async def test_one_batch_and_one_fsync_cover_the_writes_of_many_groups(hosts: Hosts) -> None:
    gids = await hosts.add_groups(10)
    leaders = [await hosts.leader(g) for g in gids]
    before = {h: host.status()["fsyncs"] for h, host in hosts.hosts.items()}
    await asyncio.gather(*(ld.propose(put(f"k{i}", "v")) for ld in leaders for i in range(20)))
    for h, host in hosts.hosts.items():
        assert host.status()["fsyncs"] - before[h] < 200 // 2, "one fsync per loop turn, not per group"


async def test_idle_groups_quiesce_and_cost_no_ticks(hosts: Hosts) -> None:
    gids = await hosts.add_groups(6)
    for g in gids:
        await (await hosts.leader(g)).propose(put("k", "v"))
    await wait_until(lambda: all(h.status()["quiesced"] == 6 for h in hosts.hosts.values()))
    terms = {g: hosts.hosts["h1"].group(g).status()["term"] for g in gids}
    commits = {g: hosts.hosts["h1"].group(g).status()["commit"] for g in gids}
    await asyncio.sleep(0.5)  # 50 ticks: no heartbeat, no election, nothing written
    for g in gids:
        st = hosts.hosts["h1"].group(g).status()
        assert (st["term"], st["commit"]) == (terms[g], commits[g])
    assert all(h.status()["quiesced"] == 6 for h in hosts.hosts.values())


async def test_a_proposal_wakes_a_quiesced_group_on_a_follower_and_commits(hosts: Hosts) -> None:
    gids = await hosts.add_groups(2)
    leader = await hosts.leader(gids[0])
    await leader.propose(put("a", "1"))
    await wait_until(lambda: all(h.status()["quiesced"] == 2 for h in hosts.hosts.values()))
    assert await leader.propose(put("b", "2"), timeout=5) > 0
    follower = next(h.group(gids[0]) for h in hosts.hosts.values() if h.group(gids[0]) is not leader)
    await follower.read_barrier(timeout=5)  # wakes the follower's group too, ReadIndex round and all
    assert hosts.sms[(follower.id, gids[0])].data == {"a": "1", "b": "2"}


async def test_a_silent_leader_host_wakes_its_quiesced_groups_elsewhere_and_they_elect(hosts: Hosts) -> None:
    gids = await hosts.add_groups(4)
    for g in gids:
        await (await hosts.leader(g)).propose(put("k", "v"))
    await wait_until(lambda: all(h.status()["quiesced"] == 4 for h in hosts.hosts.values()))
    # Cut the host that leads g0 off; every group it led must get a new leader on the others.
    old = (await hosts.leader(gids[0])).id
    led = [g for g in gids if hosts.hosts[old].group(g).is_leader]
    hosts.net.isolate(old)
    for g in led:
        async def elsewhere(g: str = g) -> RaftNode:
            while True:
                for h, host in hosts.hosts.items():
                    if h != old and host.group(g).is_leader:
                        return host.group(g)
                await asyncio.sleep(0.01)

        new = await asyncio.wait_for(elsewhere(), 5)
        await new.propose(put("after", old), timeout=5)
    hosts.net.heal()
    for g in led:
        await settled_read(hosts.hosts[old].group(g))
        assert hosts.sms[(old, g)].data.get("after") == old, "the old leader caught up once healed"


async def test_a_quiesced_leader_assumes_no_lease_when_it_wakes() -> None:
    c = Hosts(read_only="lease")
    await c.start()
    try:
        (g,) = await c.add_groups(1)
        leader = await c.leader(g)
        await leader.propose(put("a", "1"))
        await wait_until(lambda: all(h.status()["quiesced"] == 1 for h in c.hosts.values()))
        c.net.isolate(leader.id)
        # Its lease clock stood still while quiescent: a lease read now must not be served
        # from a stale lease; it needs a round the isolated leader cannot complete.
        with pytest.raises((RequestTimeout, LeadershipLost)):
            await leader.read_barrier(timeout=0.5)
    finally:
        await c.stop()


async def test_the_balancer_spreads_leadership_across_hosts() -> None:
    c = Hosts()
    await c.start(balance_interval=0.1)
    try:
        gids = await c.add_groups(9)
        # Make h1 lead everything, then let the balancer spread it.
        for g in gids:
            leader = await c.leader(g)
            if leader.id != "h1":
                await leader.transfer_leadership("h1", timeout=5)

        def spread() -> bool:
            leads = {h: sum(1 for g in gids if host.group(g).is_leader) for h, host in c.hosts.items()}
            return sum(leads.values()) == 9 and max(leads.values()) <= 4

        await wait_until(spread, timeout=15)
    finally:
        await c.stop()


async def test_add_group_refuses_bad_input_with_clear_errors(hosts: Hosts) -> None:
    host = hosts.hosts["h1"]
    with pytest.raises(ConfigError, match="unknown hosts"):
        await host.add_group("g", ["h1", "h9"], KV())
    with pytest.raises(ConfigError, match="non-empty"):
        await host.add_group("", None, KV())
    with pytest.raises(ConfigError, match="longer than"):
        await host.add_group("x" * 300, None, KV())
    with pytest.raises(ConfigError, match="not among its members"):
        await host.add_group("g", ["h2", "h3"], KV())
    await host.add_group("g", None, KV())
    with pytest.raises(ConfigError, match="already"):
        await host.add_group("g", None, KV())


async def test_remove_group_stops_it_and_forgets_its_state(hosts: Hosts) -> None:
    gids = await hosts.add_groups(2)
    await (await hosts.leader(gids[1])).propose(put("k", "v"))
    for host in hosts.hosts.values():
        await host.remove_group(gids[1])
        assert gids[1] not in host.groups
    # The other group is untouched.
    await (await hosts.leader(gids[0])).propose(put("k", "v"), timeout=5)


async def test_a_follower_that_missed_the_last_commit_gets_a_heartbeat_before_the_leader_quiesces_again(
    hosts: Hosts,
) -> None:
    # The commit-only append that tells one follower the last entry committed is lost (as when
    # a connection is in back-off at start-up). The leader then holds a whole replicated log and
    # asks to quiesce; the lagging follower refuses. Rule: the woken leader sends a real
    # heartbeat (carrying its commit index) before it may quiesce again, so the follower
    # catches up and every member quiesces, instead of quiesce/refuse/wake forever.
    (g,) = await hosts.add_groups(1)
    leader = await hosts.leader(g)
    await leader.propose(put("a", "1"))
    lagging = next(h for h in HOSTS if h != leader.id)
    transport = hosts.hosts[leader.id]._transport
    real_send = transport.send

    def lossy(group_id: str, messages: Any) -> None:
        kept = [m for m in messages
                if not (group_id == g and m.to == lagging and m.type.name == "APPEND" and not m.entries)]
        real_send(group_id, kept)

    transport.send = lossy
    await leader.propose(put("b", "2"))
    await asyncio.sleep(0.05)
    transport.send = real_send
    await wait_until(lambda: all(h.status()["quiesced"] == 1 for h in hosts.hosts.values()), timeout=5)
    assert hosts.hosts[lagging].group(g).status()["commit"] == leader.status()["commit"]
    assert hosts.hosts[lagging].group(g).leader == leader.id


async def test_hosts_over_tcp_with_shared_logs_on_disk_survive_a_restart(tmp_path: Any) -> None:
    from raftlib.testing.proccluster import free_ports

    ports = free_ports(3)
    addrs = {f"h{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    cfg = NodeConfig(**FAST)
    hosts = {h: RaftHost(h, addrs, tmp_path / h, cfg, balance_interval=None) for h in addrs}
    sms: dict[tuple[str, str], KV] = {}
    try:
        for host in hosts.values():
            await host.start()
        for g in ("a", "b", "c"):
            for h, host in hosts.items():
                sms[(h, g)] = KV()
                await host.add_group(g, list(addrs), sms[(h, g)])
        for g in ("a", "b", "c"):
            async def lead(g: str = g) -> RaftNode:
                while True:
                    for host in hosts.values():
                        if host.group(g).is_leader:
                            return host.group(g)
                    await asyncio.sleep(0.01)

            leader = await asyncio.wait_for(lead(), 10)
            for i in range(5):
                await leader.propose(put(f"{g}{i}", "v"), timeout=5)
        # One shared log per host: its fsyncs cover several groups' writes.
        st = hosts["h3"].status()
        assert st["fsyncs"] > 0
        # Restart h3 from its data directory: every group is recovered from the shared log.
        await hosts["h3"].stop()
        hosts["h3"] = RaftHost("h3", addrs, tmp_path / "h3", cfg, balance_interval=None)
        await hosts["h3"].start()
        assert sorted(hosts["h3"].recovered_groups()) == ["a", "b", "c"]
        for g in ("a", "b", "c"):
            sms[("h3", g)] = KV()
            node = await hosts["h3"].add_group(g, list(addrs), sms[("h3", g)])
            await settled_read(node)
            assert sms[("h3", g)].data == {f"{g}{i}": "v" for i in range(5)}
    finally:
        for host in hosts.values():
            await host.stop()


def test_replies_in_flight_and_empty_heartbeats_do_not_wake_a_quiesced_group() -> None:
    # Rule: what a quiesced group receives because of traffic from before it quiesced (the
    # replies its last heartbeat drew; a heartbeat that tells a follower nothing new) must not
    # wake it, or at 1,000 groups every quiesce is undone by the replies still travelling.
    from raftlib.core import Config, Entry, Message, MessageType, RawNode
    from raftlib.runtime.node import _quiet_for_quiesced

    leader = RawNode(Config("a", voters=["a"]))
    leader.campaign()
    while leader.has_ready():
        leader.advance(leader.ready())
    t, last = leader.term, leader.last_index()
    assert _quiet_for_quiesced(leader, Message(MessageType.HEARTBEAT_RESP, "b", "a", t))
    assert _quiet_for_quiesced(leader, Message(MessageType.APPEND_RESP, "b", "a", t, index=last))
    refused = Message(MessageType.APPEND_RESP, "b", "a", t, index=last, reject=True)
    assert not _quiet_for_quiesced(leader, refused)
    assert not _quiet_for_quiesced(leader, Message(MessageType.HEARTBEAT_RESP, "b", "a", t + 1))
    assert not _quiet_for_quiesced(leader, Message(MessageType.VOTE, "b", "a", t))

    follower = RawNode(Config("b", voters=["a", "b", "c"]))
    follower.step(Message(MessageType.APPEND, "a", "b", 1, index=0, log_term=0,
                          entries=[Entry(1, 1, b"x")], commit=1))
    while follower.has_ready():
        follower.advance(follower.ready())
    assert _quiet_for_quiesced(follower, Message(MessageType.HEARTBEAT, "a", "b", 1, commit=1))
    assert not _quiet_for_quiesced(follower, Message(MessageType.HEARTBEAT, "c", "b", 1, commit=1))
    assert not _quiet_for_quiesced(
        follower, Message(MessageType.APPEND, "a", "b", 1, index=1, log_term=1, entries=[Entry(2, 1, b"y")])
    )

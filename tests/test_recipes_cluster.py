"""The batteries on a 3-node cluster (in-process RaftNodes over the memory transport): exactly-once
writes across leader loss, lock fencing tokens across leader changes and lease expiry, the
election helper on exactly one member, and state across snapshots and restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_node import FAST

from raftlib import NodeConfig, RaftNode
from raftlib.recipes import (
    CampaignLost,
    Counter,
    Election,
    LockLost,
    Locks,
    LockTimeout,
    Queue,
    QueueEmpty,
    ReplDict,
    ReplicatedStateMachine,
    ReplSet,
)
from raftlib.storage import DiskStorage, MemoryStorage
from raftlib.transport.memory import MemoryNetwork, MemoryTransport


def make_group() -> ReplicatedStateMachine:
    g = ReplicatedStateMachine(session_timeout=30)
    for obj in (ReplDict("config"), Counter("hits"), ReplSet("tags"), Queue("jobs"), Locks("locks"),
                Election("scheduler")):
        g.add(obj)
    return g


class GroupCluster:
    def __init__(self, tmp: Path | None = None, factory: Any = make_group) -> None:
        self.factory = factory
        self.ids = ["n1", "n2", "n3"]
        self.members = {i: f"mem://{i}" for i in self.ids}
        self.net = MemoryNetwork()
        self.cfg = NodeConfig(**{**FAST, "forward_proposals": True})
        self.tmp = tmp
        self.storages: dict[str, Any] = {i: MemoryStorage() for i in self.ids}
        self.groups: dict[str, ReplicatedStateMachine] = {}
        self.nodes: dict[str, RaftNode] = {}

    async def start(self, node_id: str, connect: bool = True) -> RaftNode:
        group = self.groups[node_id] = self.factory()
        if self.tmp is not None:
            storage = DiskStorage(self.tmp / node_id)
        else:
            storage = self.storages[node_id]
            storage.crash()  # reopen what was saved (a restart)
        node = RaftNode(node_id, self.members, group, config=self.cfg,
                        transport=MemoryTransport(node_id, self.net), storage=storage)
        self.nodes[node_id] = node
        await node.start()
        if connect:
            await self.connect(node_id)
        return node

    async def connect(self, node_id: str) -> None:
        node = self.nodes[node_id]
        await self.groups[node_id].connect(node, attempt_timeout=0.5, timeout=10, clock_interval=0.02)

    async def stop(self, node_id: str) -> None:
        await self.groups[node_id].disconnect()
        await self.nodes[node_id].stop()

    async def start_all(self) -> None:
        for i in self.ids:  # all first: a session registers through the log, which needs a quorum
            await self.start(i, connect=False)
        for i in self.ids:
            await self.connect(i)

    async def stop_all(self) -> None:
        for group in self.groups.values():  # close sessions while a quorum is still there
            await group.disconnect()
        for i in self.ids:
            if self.nodes[i].running:
                await self.stop(i)

    async def leader(self) -> RaftNode:
        async def find() -> RaftNode:
            while True:
                leaders = [n for n in self.nodes.values() if n.running and n.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(find(), 5)

    def obj(self, node_id: str, name: str) -> Any:
        return self.groups[node_id].objects[name]


@pytest.fixture
async def cluster() -> Any:
    c = GroupCluster()
    await c.start_all()
    await c.leader()
    yield c
    await c.stop_all()


async def test_dict_writes_from_any_member_read_linearizably_on_every_member(cluster: GroupCluster) -> None:
    await cluster.obj("n1", "config").put("mode", "fast")
    assert await cluster.obj("n2", "config").cas("mode", "fast", "safe") is True
    await cluster.obj("n3", "config").update({"retries": 3, "mode": "safe"})
    for i in cluster.ids:
        assert await cluster.obj(i, "config").get_linearizable("mode") == "safe"
        assert cluster.obj(i, "config").to_dict() == {"mode": "safe", "retries": 3}
    await cluster.obj("n1", "tags").add("blue")
    await cluster.obj("n2", "tags").sync()
    assert "blue" in cluster.obj("n2", "tags")


async def test_a_counter_add_retried_after_a_leader_change_counts_once(cluster: GroupCluster) -> None:
    leader = await cluster.leader()
    hits = cluster.obj(leader.id, "hits")
    assert await hits.add(1) == 1
    # The leader is cut off right after proposing: its first attempt cannot be answered
    # (attempt_timeout 0.5 s), the others elect a new leader, and the session retries the
    # same (session, sequence) through it once the network heals.
    cluster.net.isolate(leader.id)
    call = asyncio.create_task(hits.add(10))
    await asyncio.sleep(0.8)
    cluster.net.heal()
    assert await call == 11
    assert cluster.groups[leader.id].session.retries >= 1
    for i in cluster.ids:
        assert await cluster.obj(i, "hits").get_linearizable() == 11


async def test_lock_fencing_tokens_grow_across_lease_expiry_and_a_leader_change(
    cluster: GroupCluster,
) -> None:
    leader = await cluster.leader()
    a, b = [i for i in cluster.ids if i != leader.id]
    t1 = await cluster.obj(a, "locks").acquire("job", "worker-a", ttl=0.3)
    with pytest.raises(LockTimeout):
        await cluster.obj(b, "locks").acquire("job", "worker-b", ttl=0.3, timeout=0.05)
    # worker-a never refreshes: the leader expires its lease through the log.
    t2 = await cluster.obj(b, "locks").acquire("job", "worker-b", ttl=0.3, timeout=5)
    assert t2 > t1
    await cluster.stop(leader.id)  # worker-b's lease outlives the election (the new leader extends it)
    t3 = await cluster.obj(a, "locks").acquire("job", "worker-a", ttl=0.3, timeout=5)
    assert t3 > t2
    assert cluster.obj(a, "locks").holder("job").owner == "worker-a"


async def test_many_leases_ending_together_are_expired_by_the_leader_together(cluster: GroupCluster) -> None:
    locks = cluster.obj("n2", "locks")
    loop = asyncio.get_running_loop()
    start = loop.time()  # every grant is applied after this, so no deadline is before start + TTL
    tokens = await asyncio.gather(*(locks.try_acquire(f"k{i}", f"w{i}", 0.2) for i in range(50)))
    assert len(set(tokens)) == 50
    assert len(locks.held()) == 50  # the proposing member applied each grant before answering
    while locks.held():
        assert loop.time() - start < 3, "leases were not expired in time"
        await asyncio.sleep(0.01)
    # Only the leader decides, from its own clock: nothing expired before the TTL.
    assert loop.time() - start >= 0.19


async def test_a_waiter_is_woken_by_a_release_well_before_the_lease_ends(cluster: GroupCluster) -> None:
    locks_a, locks_b = cluster.obj("n1", "locks"), cluster.obj("n2", "locks")
    token = await locks_a.acquire("k", "a", ttl=30)
    waiter = asyncio.create_task(locks_b.acquire("k", "b", ttl=30, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    loop = asyncio.get_running_loop()
    released = loop.time()
    await locks_a.release("k", "a", token)
    assert await waiter > token
    assert loop.time() - released < 2


async def test_hold_refreshes_the_lease_in_the_background(cluster: GroupCluster) -> None:
    locks = cluster.obj("n1", "locks")
    async with locks.hold("k", "a", ttl=0.3) as token:
        await asyncio.sleep(0.8)  # several TTLs: refreshed, never expired
        assert cluster.obj("n3", "locks").holder("k").token == token
    await cluster.obj("n3", "locks").sync()
    assert cluster.obj("n3", "locks").holder("k") is None


async def test_hold_cancels_the_block_with_lock_lost_when_the_lease_is_gone(cluster: GroupCluster) -> None:
    locks = cluster.obj("n1", "locks")
    loop = asyncio.get_running_loop()
    with pytest.raises(LockLost) as err:
        async with locks.hold("k", "a", ttl=0.3) as token:
            # Someone releases it behind our back (or the leader expired it): the next
            # refresh is refused and the block is cancelled.
            await cluster.obj("n3", "locks").release("k", "a", token)
            started = loop.time()
            await asyncio.sleep(5)
    assert loop.time() - started < 1
    assert err.value.token == token and "LockNotHeld" in err.value.reason


async def test_the_election_runs_the_work_on_exactly_one_member_and_fails_over(cluster: GroupCluster) -> None:
    running: list[str] = []
    tokens: dict[str, int] = {}
    overlaps: list[list[str]] = []

    def work_for(member: str) -> Any:
        async def work(token: int) -> None:
            running.append(member)
            tokens[member] = token
            if len(running) > 1:
                overlaps.append(list(running))
            try:
                await asyncio.sleep(60)
            finally:
                running.remove(member)

        return work

    runs = {
        i: asyncio.create_task(cluster.obj(i, "scheduler").run(i, work_for(i), ttl=0.3)) for i in cluster.ids
    }
    try:
        await asyncio.sleep(0.5)
        assert len(running) == 1
        first = running[0]
        await cluster.stop(first)  # its node stops: its work is cancelled, another member takes over
        with pytest.raises(CampaignLost):
            await asyncio.wait_for(runs[first], 2)

        async def successor() -> str:
            while len(running) != 1 or running[0] == first:
                await asyncio.sleep(0.02)
            return running[0]

        second = await asyncio.wait_for(successor(), 5)
        assert tokens[second] > tokens[first]
        assert overlaps == []
    finally:
        for task in runs.values():
            task.cancel()
        await asyncio.gather(*runs.values(), return_exceptions=True)


async def test_the_election_resigns_when_the_work_returns_or_raises(cluster: GroupCluster) -> None:
    election = cluster.obj("n1", "scheduler")

    async def work(token: int) -> int:
        return token

    token = await election.run("n1", work, ttl=5.0)
    await election.sync()
    assert election.leader() is None  # resigned: the next candidate need not wait for the TTL

    async def failing(token: int) -> None:
        raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError, match="the work failed"):
        await election.run("n2", failing, ttl=5.0)
    await election.sync()
    assert election.leader() is None
    assert await cluster.obj("n3", "scheduler").campaign("n3", ttl=5.0, timeout=2) > token


async def test_queue_items_are_popped_exactly_once_across_members(cluster: GroupCluster) -> None:
    for i in range(20):
        await cluster.obj("n1", "jobs").push(i)

    async def drain(member: str) -> list[int]:
        got = []
        while True:
            try:
                got.append(await cluster.obj(member, "jobs").pop())
            except QueueEmpty:
                return got

    results = await asyncio.gather(*(drain(i) for i in cluster.ids))
    assert sorted(x for got in results for x in got) == list(range(20))


async def test_state_sessions_and_locks_survive_snapshots_and_a_full_restart(tmp_path: Path) -> None:
    c = GroupCluster(tmp_path)
    await c.start_all()
    try:
        await c.leader()
        await c.obj("n1", "config").put("a", 1)
        token = await c.obj("n2", "locks").acquire("k", "w", ttl=60)
        for node in c.nodes.values():
            await node.read_barrier()
            await node.snapshot()
        await c.obj("n3", "hits").add(4)  # after the snapshot: replayed from the log
        await c.stop_all()
        await c.start_all()
        await c.leader()
        assert await c.obj("n2", "config").get_linearizable("a") == 1
        assert await c.obj("n1", "hits").get_linearizable() == 4
        holder = c.obj("n3", "locks").holder("k")
        assert holder is not None and holder.token == token
        assert await c.obj("n1", "locks").try_acquire("k2", "w", 1) > token
    finally:
        await c.stop_all()

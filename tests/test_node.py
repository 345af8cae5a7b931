"""RaftNode, the asyncio driver, over the in-memory transport and storage (and disk storage)."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import raftlib
from raftlib import NodeConfig, NotLeader, RaftNode, StateMachine
from raftlib.errors import NodeStopped, ProposalDropped, StateMachineError
from raftlib.storage import DiskStorage, MemoryStorage, StorageError
from raftlib.transport.memory import MemoryNetwork, MemoryTransport

FAST = dict(tick_interval=0.01, election_tick=10, heartbeat_tick=1)


class KV(StateMachine):
    """A dict of str -> str; commands are JSON [key, value]."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied: list[int] = []

    def apply(self, command: bytes, index: int) -> Any:
        key, value = json.loads(command)
        if key == "boom":
            raise RuntimeError("the state machine refuses")
        old = self.data.get(key)
        self.data[key] = value
        self.applied.append(index)
        return old

    def snapshot(self) -> bytes:
        return json.dumps(self.data).encode()

    def restore(self, data: bytes) -> None:
        self.data = json.loads(data)


def put(k: str, v: str) -> bytes:
    return json.dumps([k, v]).encode()


class Cluster:
    def __init__(self, n: int, tmp: Path | None = None, sm_factory: Any = None, **cfg: Any) -> None:
        self.sm_factory = sm_factory or KV
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.members = {i: f"mem://{i}" for i in self.ids}
        self.net = MemoryNetwork()
        self.tmp = tmp
        self.cfg = NodeConfig(**{**FAST, **cfg})
        self.sms: dict[str, KV] = {}
        self.nodes: dict[str, RaftNode] = {}
        self.storages: dict[str, Any] = {}

    def make(self, node_id: str, join: bool = False) -> RaftNode:
        sm = self.sms[node_id] = self.sm_factory()
        if self.tmp is not None:
            storage = DiskStorage(self.tmp / node_id)
        else:
            storage = self.storages.get(node_id) or MemoryStorage()
        self.storages[node_id] = storage
        node = RaftNode(
            node_id,
            self.members,
            sm,
            config=self.cfg,
            join=join,
            transport=MemoryTransport(node_id, self.net),
            storage=storage,
        )
        self.nodes[node_id] = node
        return node

    async def start(self) -> None:
        for i in self.ids:
            await self.make(i).start()

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()

    async def leader(self, timeout: float = 5.0, among: list[RaftNode] | None = None) -> RaftNode:
        """The one running leader (of ``among`` only, when given: a partition's majority side)."""

        nodes = self.nodes.values() if among is None else among

        async def find() -> RaftNode:
            while True:
                leaders = [n for n in nodes if n.running and n.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(find(), timeout)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster(3)
    await c.start()
    yield c
    await c.stop()


async def test_propose_returns_the_state_machines_result_and_replicates(cluster: Cluster) -> None:
    leader = await cluster.leader()
    assert await leader.propose(put("a", "1")) is None
    assert await leader.propose(put("a", "2")) == "1"
    for node in cluster.nodes.values():
        await node.wait_applied(leader.status()["commit"], timeout=2)
    assert all(sm.data == {"a": "2"} for sm in cluster.sms.values())


async def test_many_concurrent_proposals_commit_in_one_order(cluster: Cluster) -> None:
    leader = await cluster.leader()
    results = await asyncio.gather(*(leader.propose(put(f"k{i}", str(i))) for i in range(200)))
    assert results == [None] * 200
    commit = leader.status()["commit"]
    for node in cluster.nodes.values():
        await node.wait_applied(commit, timeout=2)
    orders = {tuple(sm.applied) for sm in cluster.sms.values()}
    assert len(orders) == 1
    # Group commit: far fewer fsyncs than proposals.
    assert leader.metrics["fsync_count"] < 100


async def test_follower_refuses_with_leader_id_and_address(cluster: Cluster) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    with pytest.raises(NotLeader) as err:
        await follower.propose(put("x", "y"))
    assert err.value.leader_id == leader.id
    assert err.value.leader_address == cluster.members[leader.id]


async def test_follower_forwards_when_configured() -> None:
    c = Cluster(3, forward_proposals=True)
    await c.start()
    try:
        leader = await c.leader()
        follower = next(n for n in c.nodes.values() if n is not leader)
        assert await follower.propose(put("f", "1"), timeout=2) is None
        assert await follower.propose(put("f", "2"), timeout=2) == "1"
        assert c.sms[follower.id].data["f"] == "2"
    finally:
        await c.stop()


async def test_read_barrier_on_a_follower_sees_acknowledged_writes(cluster: Cluster) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    for i in range(20):
        await leader.propose(put("r", str(i)))
        await follower.read_barrier()
        assert cluster.sms[follower.id].data["r"] == str(i)


async def test_leader_failover_keeps_acknowledged_writes(cluster: Cluster) -> None:
    leader = await cluster.leader()
    for i in range(10):
        await leader.propose(put("w", str(i)))
    await leader.stop()
    new = await cluster.leader()
    assert new is not leader
    await new.read_barrier()
    assert cluster.sms[new.id].data["w"] == "9"
    await new.propose(put("w", "after"))


async def test_restart_from_disk_recovers_state(tmp_path: Path) -> None:
    c = Cluster(3, tmp=tmp_path)
    await c.start()
    leader = await c.leader()
    for i in range(30):
        await leader.propose(put(f"d{i}", str(i)))
    await c.stop()
    c2 = Cluster(3, tmp=tmp_path)
    await c2.start()
    try:
        leader2 = await c2.leader()
        await leader2.read_barrier()
        assert c2.sms[leader2.id].data == {f"d{i}": str(i) for i in range(30)}
    finally:
        await c2.stop()


async def test_waiters_wake_when_a_snapshot_install_moves_the_applied_index(tmp_path: Path) -> None:
    """A follower that catches up by snapshot alone (no entries follow it) must wake whoever
    waits for an index the snapshot covers, not leave them to time out."""
    c = Cluster(3, tmp=tmp_path, snapshot_entries=10_000, snapshot_trailing_entries=1)
    await c.start()
    try:
        leader = await c.leader()
        lagger = next(n for n in c.nodes.values() if n is not leader)
        await lagger.stop()
        for i in range(40):
            await leader.propose(put(f"s{i}", "x"))
        meta = await leader.snapshot()
        commit = leader.status()["commit"]
        assert meta.index == commit == leader.status()["last_index"]
        node = c.make(lagger.id)
        await node.start()
        await node.wait_applied(commit, timeout=5)
        assert node.metrics["snapshots_installed"] == 1
        assert c.sms[node.id].data["s39"] == "x"
    finally:
        await c.stop()


async def test_snapshot_compaction_and_catch_up_by_snapshot(tmp_path: Path) -> None:
    c = Cluster(3, tmp=tmp_path, snapshot_entries=50, snapshot_trailing_entries=5, snapshot_chunk_bytes=64)
    await c.start()
    try:
        leader = await c.leader()
        lagger = next(n for n in c.nodes.values() if n is not leader)
        await lagger.stop()
        for i in range(200):
            await leader.propose(put(f"s{i}", "x" * 20))
        assert leader.metrics["snapshots_taken"] >= 2
        assert leader.status()["first_index"] > 100
        node = c.make(lagger.id)
        await node.start()
        await node.read_barrier(timeout=10)
        assert node.metrics["snapshots_installed"] >= 1
        assert c.sms[lagger.id].data == c.sms[leader.id].data
    finally:
        await c.stop()


async def test_membership_add_and_remove(cluster: Cluster) -> None:
    leader = await cluster.leader()
    await leader.propose(put("before", "join"))
    cluster.members["n4"] = "mem://n4"
    n4 = cluster.make("n4", join=True)
    await n4.start()
    await leader.add_member("n4", "mem://n4", timeout=10)
    assert "n4" in leader.membership().voters
    await n4.read_barrier(timeout=5)
    assert cluster.sms["n4"].data["before"] == "join"
    await leader.remove_member("n4", timeout=5)
    assert "n4" not in leader.membership().voters


async def test_transfer_leadership(cluster: Cluster) -> None:
    leader = await cluster.leader()
    target = next(i for i in cluster.ids if i != leader.id)
    await leader.transfer_leadership(target)
    assert cluster.nodes[target].is_leader
    await cluster.nodes[target].propose(put("t", "1"))


async def test_failing_state_machine_stops_the_node_loudly(cluster: Cluster) -> None:
    leader = await cluster.leader()
    with pytest.raises(StateMachineError):
        await leader.propose(put("boom", "x"), timeout=5)
    with pytest.raises(NodeStopped):
        await leader.propose(put("after", "x"))


async def test_leader_changes_are_observable(cluster: Cluster) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    seen: list[str | None] = []

    async def watch() -> None:
        async for change in follower.leader_changes():
            seen.append(change.leader)
            if change.leader not in (None, leader.id):
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    await leader.stop()
    await asyncio.wait_for(task, 5)
    assert seen[0] == leader.id and seen[-1] not in (None, leader.id)


async def test_stop_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    c = Cluster(3)
    await c.start()
    leader = await c.leader()
    await leader.propose(put("x", "1"))
    await c.stop()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()


async def test_bad_input_is_refused(cluster: Cluster) -> None:
    leader = await cluster.leader()
    with pytest.raises(ValueError):
        await leader.propose(b"")
    with pytest.raises(TypeError):
        await leader.propose("text")  # type: ignore[arg-type]
    with pytest.raises(raftlib.ConfigError):
        RaftNode("zz", {"a": "x"}, KV())


async def test_proposal_lost_to_a_leadership_change_is_reported(cluster: Cluster) -> None:
    leader = await cluster.leader()
    # Isolate the leader: its proposal can never commit; the others elect anew.
    cluster.net.isolate(leader.id)
    fut = asyncio.ensure_future(leader.propose(put("lost", "1")))
    new = None
    for _ in range(200):
        await asyncio.sleep(0.02)
        others = [n for n in cluster.nodes.values() if n is not leader and n.is_leader]
        if others:
            new = others[0]
            break
    assert new is not None
    await new.propose(put("won", "1"))
    cluster.net.heal()
    with pytest.raises(ProposalDropped):
        await asyncio.wait_for(fut, 5)


class SlowSnapshotKV(KV):
    """A state whose snapshot takes a while to write (a large state, hashicorp FSM style)."""

    def snapshot(self) -> raftlib.SnapshotWriter:
        view = dict(self.data)  # point-in-time copy, taken on the loop

        class Writer(raftlib.SnapshotWriter):
            def write(self, out: Any) -> None:  # in a worker thread
                import time as _time

                _time.sleep(0.5)
                out.write(json.dumps(view).encode())

        return Writer()


async def test_large_snapshot_is_written_off_the_loop_while_writes_continue(tmp_path: Path) -> None:
    c = Cluster(3, tmp=tmp_path, sm_factory=SlowSnapshotKV)
    await c.start()
    try:
        leader = await c.leader()
        await leader.propose(put("before", "1"))
        snap = asyncio.create_task(leader.snapshot())
        started = asyncio.get_running_loop().time()
        done = 0
        while not snap.done():
            await leader.propose(put("during", str(done)))
            done += 1
        elapsed = asyncio.get_running_loop().time() - started
        meta = await snap
        assert elapsed >= 0.45 and done >= 10  # the loop kept committing while the snapshot was written
        assert leader.is_leader
        assert meta.index >= 2
        # The snapshot holds the state as of its index, not later writes.
        with c.storages[leader.id].open_snapshot(meta.index) as f:
            assert f.read()  # readable and checksummed
    finally:
        await c.stop()


class StreamedSnapshotKV(KV):
    """A state whose SnapshotWriter yields its pieces (one key each) instead of writing them."""

    log: ClassVar[list[str]] = []  # what happened, in order: "made 3", "stored 3", ...
    finished = False

    def snapshot(self) -> raftlib.SnapshotWriter:
        items = sorted(self.data.items())
        owner = type(self)

        class Writer(raftlib.SnapshotWriter):
            def chunks(self) -> Iterator[bytes]:
                try:
                    for i, (k, v) in enumerate(items):
                        owner.log.append(f"made {i}")
                        yield json.dumps([k, v]).encode() + b"\n"
                finally:
                    owner.finished = True

            def write(self, out: Any) -> None:
                raise AssertionError("the node must stream chunks(), not spool write()")

        return Writer()

    def restore(self, data: bytes) -> None:
        self.data = dict(json.loads(line) for line in data.splitlines())


class PieceByPieceStorage(MemoryStorage):
    """Memory storage that records each snapshot piece as it consumes it, and can fail part way."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.fail_after = fail_after

    def save_snapshot(self, meta: Any, chunks: Any) -> None:
        def consumed() -> Iterator[bytes]:
            for i, chunk in enumerate(chunks):
                if i - 1 == self.fail_after:  # piece 0 is the node's own header
                    raise StorageError("snap", 28, "No space left on device")
                if i:
                    StreamedSnapshotKV.log.append(f"stored {i - 1}")
                yield chunk

        super().save_snapshot(meta, consumed())


async def test_snapshot_writer_chunks_are_stored_as_they_are_made() -> None:
    """A writer that overrides chunks() is streamed into storage piece by piece, never spooled."""
    StreamedSnapshotKV.log = []
    c = Cluster(1, sm_factory=StreamedSnapshotKV)
    storage = c.storages["n1"] = PieceByPieceStorage()
    await c.start()
    try:
        node = c.nodes["n1"]
        for i in range(4):
            await node.propose(put(f"k{i}", f"v{i}"))
        meta = await node.snapshot()
        assert StreamedSnapshotKV.log == [f"{what} {i}" for i in range(4) for what in ("made", "stored")]
        with storage.open_snapshot(meta.index) as f:
            raw = f.read()
        assert raw.endswith(b'["k3", "v3"]\n')
        # A restart restores from exactly the streamed bytes.
        await node.stop()
        storage.crash()  # reopen what was saved
        await c.make("n1").start()
        assert c.sms["n1"].data == {f"k{i}": f"v{i}" for i in range(4)}
    finally:
        await c.stop()


async def test_a_snapshot_that_storage_refuses_part_way_ends_the_writers_stream() -> None:
    StreamedSnapshotKV.finished = False
    StreamedSnapshotKV.log = []
    c = Cluster(1, sm_factory=StreamedSnapshotKV)
    c.storages["n1"] = PieceByPieceStorage(fail_after=1)
    await c.start()
    try:
        node = c.nodes["n1"]
        for i in range(4):
            await node.propose(put(f"k{i}", f"v{i}"))
        with pytest.raises(StorageError):
            await node.snapshot()
        # Closed at once (its finally ran), not left suspended until garbage collection.
        assert StreamedSnapshotKV.finished
        assert StreamedSnapshotKV.log == ["made 0", "stored 0", "made 1"]
    finally:
        await c.stop()


class FailingWriterKV(KV):
    """A state whose snapshot writer raises part way through, once."""

    fail = True

    def snapshot(self) -> raftlib.SnapshotWriter:
        items = sorted(self.data.items())

        class Writer(raftlib.SnapshotWriter):
            def chunks(self) -> Iterator[bytes]:
                for i, item in enumerate(items):
                    if i == 2 and FailingWriterKV.fail:
                        raise ValueError("the writer's own bug")
                    yield json.dumps(item).encode() + b"\n"

        return Writer()


async def test_a_writer_that_fails_part_way_leaves_no_temp_file_and_the_next_snapshot_works(
    tmp_path: Path,
) -> None:
    c = Cluster(1, tmp=tmp_path, sm_factory=FailingWriterKV)
    await c.start()
    try:
        node = c.nodes["n1"]
        for i in range(4):
            await node.propose(put(f"k{i}", f"v{i}"))
        FailingWriterKV.fail = True
        with pytest.raises(ValueError, match="own bug"):
            await node.snapshot()
        assert not [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
        FailingWriterKV.fail = False
        meta = await node.snapshot()
        assert meta.index >= 4 and c.storages["n1"].latest_snapshot() == meta
    finally:
        await c.stop()


def test_default_snapshot_chunks_are_the_bytes_write_produces() -> None:
    from raftlib.statemachine import SPOOL_BLOCK_BYTES

    body = bytes(range(256)) * 5000  # 1.28 MB: several blocks

    class Writer(raftlib.SnapshotWriter):
        def write(self, out: Any) -> None:
            out.write(body[:1000])
            out.write(body[1000:])

    pieces = list(Writer().chunks())
    assert b"".join(pieces) == body
    assert max(map(len, pieces)) == SPOOL_BLOCK_BYTES and len(pieces) == -(-len(body) // SPOOL_BLOCK_BYTES)


# -- where the WAL write runs: inline on a fast disk, in the I/O thread otherwise -------------


class SlowSaveStorage(MemoryStorage):
    """Memory storage whose saves take ``delay`` seconds (a slow disk), counting the threads used."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.threads: set[str] = set()

    def save(self, hard_state: Any, entries: Any) -> None:
        import threading
        import time as _time

        self.threads.add(threading.current_thread().name)
        _time.sleep(self.delay)
        super().save(hard_state, entries)


async def test_single_entry_writes_sync_inline_on_a_fast_disk_and_in_the_io_thread_on_a_slow_one() -> None:
    import threading

    c = Cluster(1)
    slow = c.storages["n1"] = SlowSaveStorage(0.0)
    await c.start()
    try:
        node = c.nodes["n1"]
        for i in range(20):
            await node.propose(put(f"f{i}", "x"))
        assert node.metrics["fsync_inline_count"] >= 20
        assert threading.current_thread().name in slow.threads
        slow.delay = 0.01  # 10 ms per write: five times inline_sync_below
        inline = node.metrics["fsync_inline_count"]
        for i in range(40):
            await node.propose(put(f"s{i}", "x"))
        # The moving average crosses 2 ms within a few writes; the rest go to the I/O thread.
        assert node.metrics["fsync_inline_count"] - inline < 10
        assert any(name.startswith("raft-n1-io") for name in slow.threads)
        assert c.sms["n1"].data["s39"] == "x"
    finally:
        await c.stop()


async def test_inline_sync_below_zero_always_uses_the_io_thread() -> None:
    c = Cluster(1, inline_sync_below=0.0)
    await c.start()
    try:
        node = c.nodes["n1"]
        for i in range(10):
            await node.propose(put(f"k{i}", "v"))
        assert node.metrics["fsync_inline_count"] == 0 and node.metrics["fsync_count"] >= 10
    finally:
        await c.stop()


@pytest.mark.parametrize("bad", [-0.001, float("nan")])
def test_inline_sync_below_must_be_a_non_negative_number(bad: float) -> None:
    with pytest.raises(raftlib.ConfigError, match="inline_sync_below"):
        RaftNode("n1", {"n1": "mem://n1"}, KV(), config=NodeConfig(inline_sync_below=bad))


# -- Thesis §10.2.1: the leader writes its log in parallel with replication ------------------


class _Recorder:
    """One ordered log of what every member did, for the ordering rules below."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []


class FlushingTransport(MemoryTransport):
    """The memory transport with the optional ``flush()``, recording sends and flushes."""

    def __init__(self, node_id: str, net: MemoryNetwork, rec: _Recorder) -> None:
        super().__init__(node_id, net)
        self.rec = rec

    def send(self, messages: Any) -> None:
        msgs = list(messages)
        for m in msgs:
            self.rec.events.append((self.node_id, "send", m.type.name, len(m.entries), m.to, m.commit))
        super().send(msgs)

    def flush(self) -> None:
        self.rec.events.append((self.node_id, "flush", self.stats["sent"]))
        if self._flush_scheduled:
            self._flush()


class RecordingStorage(MemoryStorage):
    def __init__(self, node_id: str, rec: _Recorder) -> None:
        super().__init__()
        self.node_id = node_id
        self.rec = rec

    def save(self, hard_state: Any, entries: Any) -> None:
        self.rec.events.append((self.node_id, "save", len(entries)))
        super().save(hard_state, entries)


class RecordingKV(KV):
    def __init__(self, node_id: str, rec: _Recorder) -> None:
        super().__init__()
        self.node_id = node_id
        self.rec = rec

    def apply(self, command: bytes, index: int) -> Any:
        self.rec.events.append((self.node_id, "apply", index))
        return super().apply(command, index)


class Recorded:
    """A 3-node cluster whose members log their sends, flushes, saves and applies in one list,
    with a leader elected and a first entry committed."""

    def __init__(self) -> None:
        self.rec = _Recorder()
        net = MemoryNetwork()
        members = {i: f"mem://{i}" for i in ("n1", "n2", "n3")}
        self.nodes = {
            i: RaftNode(
                i,
                members,
                RecordingKV(i, self.rec),
                config=NodeConfig(**FAST),
                transport=FlushingTransport(i, net, self.rec),
                storage=RecordingStorage(i, self.rec),
            )
            for i in members
        }

    async def start(self) -> None:
        for n in self.nodes.values():
            await n.start()
        for _ in range(500):
            leaders = [n for n in self.nodes.values() if n.is_leader]
            if len(leaders) == 1:
                self.leader = leaders[0]
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("no leader")
        await self.leader.propose(put("warm", "up"))
        self.followers = [n for n in self.nodes.values() if n is not self.leader]

    async def one_put(self) -> tuple[int, int]:
        """Propose one entry and wait for its result; returns (first event of it, its index)."""
        start, index = len(self.rec.events), self.leader.status()["commit"] + 1
        await self.leader.propose(put("a", "1"))
        return start, index

    def events(self, node_id: str, since: int) -> list[tuple[Any, ...]]:
        return [e for e in self.rec.events[since:] if e[0] == node_id]


@pytest.fixture
async def recorded() -> AsyncIterator[Recorded]:
    r = Recorded()
    await r.start()
    yield r
    for n in r.nodes.values():
        await n.stop()


async def test_leader_sends_its_appends_before_it_blocks_on_its_own_wal_write(recorded: Recorded) -> None:
    leader = recorded.leader
    start, _ = await recorded.one_put()
    mine = recorded.events(leader.id, start)
    save = mine.index((leader.id, "save", 1))
    # Both followers' appends were queued and handed to the network before the leader's
    # own (inline) WAL write, not after it.
    appends = [i for i, e in enumerate(mine) if e[1] == "send" and e[2] == "APPEND" and e[3] == 1]
    assert len(appends) == 2 and max(appends) < save
    flushes = [i for i, e in enumerate(mine[:save]) if e[1] == "flush"]
    assert flushes and mine[flushes[-1]] != (leader.id, "flush", 0)
    assert leader.metrics["fsync_inline_count"] >= 2


async def test_follower_flushes_its_acknowledgement_right_after_the_write_it_acknowledges(
    recorded: Recorded,
) -> None:
    start, _ = await recorded.one_put()
    for f in recorded.followers:
        mine = recorded.events(f.id, start)
        save = mine.index((f.id, "save", 1))
        # Only the acknowledgements of this write (and of others batched with it) come
        # between the write and the flush that puts them on the wire.
        after = mine[save + 1 :]
        flush = next(i for i, e in enumerate(after) if e[1] != "send")
        assert flush >= 1 and after[flush][1] == "flush"
        assert all(e[2] == "APPEND_RESP" for e in after[:flush])


async def test_commit_only_appends_leave_after_the_committed_entries_are_applied(
    recorded: Recorded,
) -> None:
    leader = recorded.leader
    start, index = await recorded.one_put()
    for f in recorded.followers:
        await f.wait_applied(index, timeout=2)  # they learned the commit index
    mine = recorded.events(leader.id, start)
    applied = mine.index((leader.id, "apply", index))
    announce = [i for i, e in enumerate(mine) if e[1:4] == ("send", "APPEND", 0) and e[5] >= index]
    # Every entry-less append that carries the new commit index follows the apply.
    assert announce and min(announce) > applied


def test_a_snapshot_writer_must_implement_chunks_or_write() -> None:
    with pytest.raises(TypeError, match="must implement chunks\\(\\) or write\\(\\)"):

        class Nothing(raftlib.SnapshotWriter):
            pass

    class Pieces(raftlib.SnapshotWriter):
        def chunks(self) -> Iterator[bytes]:
            yield from (b"a", b"bc")

    import io

    out = io.BytesIO()
    Pieces().write(out)  # the default write() is the pieces, in order
    assert out.getvalue() == b"abc"

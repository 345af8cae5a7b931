"""Crash and disk faults at the node level (docs/reliability.md, "Crash and disk faults").

Three in-process `RaftNode`s over a `MemoryNetwork`, each on a real `DiskStorage` whose file
operations go through `raftlib.storage.faults`. For every fault: the node never acknowledges
what is not durable, stops loudly (fatal) when its disk fails, detects corruption with
`StorageCorrupted` naming file and offset instead of serving, recovers a torn tail, and no
acknowledged write is lost after the cluster restarts from the same directories with a
healthy disk. The power-loss sweep cuts the power to a random subset of the nodes (or all) at
100 randomized crash points and restarts from the bytes a power cut could leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from raftlib import NodeConfig, RaftNode, StateMachine
from raftlib.errors import NodeStopped, RaftError, StorageCorrupted
from raftlib.storage import DiskStorage, FileOps
from raftlib.storage.faults import FaultyFileOps, PowerLossFileOps, bitflip
from raftlib.transport.memory import MemoryNetwork, MemoryTransport

FAST = dict(tick_interval=0.005, election_tick=10, heartbeat_tick=1)


class KV(StateMachine):
    """A dict of str -> str; commands are JSON [key, value]."""

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


def put(k: str, v: str = "v") -> bytes:
    return json.dumps([k, v]).encode()


class DiskCluster:
    """n RaftNodes on DiskStorage under `root`/<id>, each with its own FileOps."""

    def __init__(self, root: Path, n: int = 3, segment_bytes: int = 64 << 20, **cfg: Any) -> None:
        self.root = root
        self.ids = [f"n{i}" for i in range(1, n + 1)]
        self.members = {i: f"mem://{i}" for i in self.ids}
        self.segment_bytes = segment_bytes
        self.cfg = NodeConfig(**{**FAST, **cfg})
        self.net = MemoryNetwork()
        self.nodes: dict[str, RaftNode] = {}
        self.sms: dict[str, KV] = {}
        self.ops: dict[str, FileOps] = {}

    def dir(self, nid: str) -> Path:
        return self.root / nid

    def make(self, nid: str, ops: FileOps | None = None) -> RaftNode:
        ops = ops if ops is not None else FileOps()
        self.ops[nid] = ops
        storage = DiskStorage(self.dir(nid), fileops=ops, segment_bytes=self.segment_bytes)
        sm = self.sms[nid] = KV()
        node = RaftNode(
            nid,
            self.members,
            sm,
            config=self.cfg,
            transport=MemoryTransport(nid, self.net),
            storage=storage,
        )
        self.nodes[nid] = node
        return node

    async def start(self, ops: dict[str, FileOps] | None = None) -> None:
        ops = ops or {}
        self.net = MemoryNetwork()
        for nid in self.ids:
            await self.make(nid, ops.get(nid)).start()

    async def stop(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                await node.stop()

    async def restart(self, ops: dict[str, FileOps] | None = None) -> None:
        await self.stop()
        await self.start(ops)

    def current_leader(self) -> RaftNode | None:
        leaders = [n for n in self.nodes.values() if n.running and n.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    async def leader(self, timeout: float = 5.0) -> RaftNode:
        async def find() -> RaftNode:
            while True:
                lead = self.current_leader()
                if lead is not None:
                    return lead
                await asyncio.sleep(0.005)

        return await asyncio.wait_for(find(), timeout)

    async def put(self, key: str, timeout: float = 5.0) -> None:
        """Write `key` through whoever leads, retrying until acknowledged."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                lead = await self.leader(max(0.1, deadline - asyncio.get_running_loop().time()))
                await lead.propose(put(key), timeout=1.0)
                return
            except (RaftError, TimeoutError, OSError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.01)

    async def check_acked(self, acked: set[str], timeout: float = 10.0) -> None:
        """Every running node holds every acknowledged key (after a barrier write commits)."""
        await self.put("__barrier__", timeout)
        lead = await self.leader()
        commit = lead.status()["commit"]
        for nid, node in self.nodes.items():
            if node.running:
                try:
                    await node.wait_applied(commit, timeout=timeout)
                except TimeoutError:
                    raise AssertionError(
                        f"{nid} never applied {commit}: {node.status()}; leader: {lead.status()}"
                    ) from None
                missing = acked - set(self.sms[nid].data)
                assert not missing, f"{nid} lost acknowledged writes: {sorted(missing)[:10]}"


async def client(c: DiskCluster, acked: set[str], stop: asyncio.Event, prefix: str) -> int:
    """Propose fresh keys to the current leader until `stop`; record acknowledged ones."""
    i = 0
    while not stop.is_set():
        lead = c.current_leader()
        if lead is None:
            await asyncio.sleep(0.002)
            continue
        key = f"{prefix}{i}"
        i += 1
        try:
            await lead.propose(put(key), timeout=0.5)
        except (RaftError, TimeoutError, OSError):
            await asyncio.sleep(0.001)
            continue
        acked.add(key)
    return i


async def load(c: DiskCluster, n_clients: int, seconds: float, acked: set[str]) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client(c, acked, stop, f"c{j}-")) for j in range(n_clients)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)


def fatal_logged(caplog: pytest.LogCaptureFixture, nid: str) -> bool:
    return any(
        r.levelno >= logging.CRITICAL and f"node {nid} stopped on a fatal error" in r.getMessage()
        for r in caplog.records
    )


async def wait_failed(node: RaftNode, timeout: float = 3.0) -> None:
    async def poll() -> None:
        while node.running:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


# ------------------------------------------------------------------------- fsync and ENOSPC


@pytest.mark.parametrize("where", ["follower", "leader"])
@pytest.mark.parametrize("fault", ["fsync", "enospc"])
async def test_disk_failure_stops_the_node_and_loses_no_acknowledged_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str, fault: str
) -> None:
    caplog.set_level(logging.WARNING)
    faulty = {nid: FaultyFileOps() for nid in ("n1", "n2", "n3")}
    c = DiskCluster(tmp_path)
    await c.start(dict(faulty))
    try:
        acked: set[str] = set()
        await load(c, 3, 0.2, acked)
        lead = await c.leader()
        victim = lead if where == "leader" else next(n for n in c.nodes.values() if n is not lead)
        ops = faulty[victim.id]
        if fault == "fsync":
            ops.fail_fsync = True
        else:
            ops.space = 50  # a short write of the next record, then ENOSPC
        if where == "leader":
            # Proposals pending on the failing leader fail; none is acknowledged.
            results = await asyncio.gather(
                *(victim.propose(put(f"doomed{i}"), timeout=2.0) for i in range(20)),
                return_exceptions=True,
            )
            assert all(isinstance(r, BaseException) for r in results), results
            kinds = {type(r).__name__ for r in results}
            assert kinds <= {"StorageError", "NodeStopped"}, kinds
        else:
            await load(c, 3, 0.2, acked)
        await wait_failed(victim)
        assert fatal_logged(caplog, victim.id)
        assert ops.injected, "no fault was injected"
        with pytest.raises(NodeStopped):
            await victim.propose(put("after"), timeout=0.5)
        # The two others carry on (a new election if the leader failed).
        await load(c, 3, 0.3, acked)
        assert len(acked) > 20
        if where == "leader":
            assert not any(k.startswith("doomed") for k in acked)
        # Restart everything on the same directories with a healthy disk.
        await c.restart()
        await c.check_acked(acked)
        survivors = {nid: c.sms[nid].data for nid in c.ids}
        for nid in c.ids:
            await c.nodes[nid].wait_applied(c.nodes[nid].status()["commit"], timeout=5)
        assert all(acked <= set(d) for d in survivors.values())
    finally:
        await c.stop()


async def test_fsync_failure_after_a_few_syncs_mid_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """fsync fails on every node at a different later point, under load: whatever was acknowledged
    before the last node died survives the restart."""
    caplog.set_level(logging.WARNING)
    faulty = {"n1": FaultyFileOps(fsyncs_left=40), "n2": FaultyFileOps(fsyncs_left=60), "n3": FaultyFileOps()}
    c = DiskCluster(tmp_path)
    await c.start(dict(faulty))
    try:
        acked: set[str] = set()
        await load(c, 4, 1.0, acked)
        assert not c.nodes["n1"].running and not c.nodes["n2"].running
        assert fatal_logged(caplog, "n1") and fatal_logged(caplog, "n2")
        await c.restart()
        await c.check_acked(acked)
    finally:
        await c.stop()


# ------------------------------------------------------------------------------- torn writes


class NoTruncate(FaultyFileOps):
    """The clean-up after a failed write fails too: the partial record stays in the file."""

    def ftruncate(self, fd: int, length: int) -> None:
        raise OSError(errno.EIO, "injected: cannot truncate")


async def test_torn_write_of_the_last_record_then_crash_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ops = {nid: NoTruncate(only=lambda p: p.endswith(".wal")) for nid in ("n1", "n2", "n3")}
    c = DiskCluster(tmp_path)
    await c.start(dict(ops))
    try:
        acked: set[str] = set()
        await load(c, 2, 0.2, acked)
        lead = await c.leader()
        ops[lead.id].tear_next_write = 13  # header and a few payload bytes reach the file
        await load(c, 2, 0.3, acked)
        assert not lead.running and fatal_logged(caplog, lead.id)
        seg = sorted((c.dir(lead.id) / "wal").iterdir())[-1]
        size_before = seg.stat().st_size
        caplog.clear()
        await c.restart()
        assert seg.stat().st_size < size_before  # the torn record was cut off
        assert any("torn" in r.getMessage() and str(seg) in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
        await c.check_acked(acked)
    finally:
        await c.stop()


@pytest.mark.parametrize("chop", [1, 5, 9, 30])
async def test_torn_tail_cut_by_a_crash_is_truncated_and_the_node_rejoins(tmp_path: Path, chop: int) -> None:
    c = DiskCluster(tmp_path)
    await c.start()
    acked: set[str] = set()
    try:
        await load(c, 2, 0.2, acked)
        await c.stop()
        # A crash tore one node's last record: keep all but `chop` bytes of it. (Its content is
        # still on the two others, so nothing acknowledged may be missing.)
        seg = sorted((c.dir("n2") / "wal").iterdir())[-1]
        last_off, last_len = records(seg.read_bytes())[-1]
        os.truncate(seg, last_off + max(0, last_len - chop))
        await c.start()
        assert os.path.getsize(seg) == last_off
        await c.check_acked(acked)
        lead = await c.leader()
        for nid in c.ids:
            await c.nodes[nid].wait_applied(lead.status()["commit"], timeout=5)
        datas = [c.sms[nid].data for nid in c.ids]
        assert datas[0] == datas[1] == datas[2]
    finally:
        await c.stop()


def records(buf: bytes) -> list[tuple[int, int]]:
    """(offset, total length) of every WAL record in a segment (u32 length | u32 crc | u8 type | body)."""
    out = []
    pos = 0
    while pos + 9 <= len(buf):
        (length,) = struct.unpack_from("<I", buf, pos)
        out.append((pos, 9 + length))
        pos += 9 + length
    return out


# -------------------------------------------------------------------------------- bit flips


async def test_bit_flip_in_an_old_wal_record_refuses_to_start(tmp_path: Path) -> None:
    c = DiskCluster(tmp_path)
    await c.start()
    acked: set[str] = set()
    try:
        await load(c, 2, 0.3, acked)
    finally:
        await c.stop()
    victim = "n2"
    seg = sorted((c.dir(victim) / "wal").iterdir())[0]
    recs = records(seg.read_bytes())
    assert len(recs) > 5
    off, length = recs[2]  # an old BATCH record, followed by valid ones
    bitflip(seg, off + 9 + length // 2, bit=3)
    node = c.make(victim)
    with pytest.raises(StorageCorrupted) as info:
        await node.start()
    assert info.value.path == str(seg) and info.value.offset == off, info.value
    assert not node.running
    with pytest.raises(NodeStopped):
        await node.propose(put("x"), timeout=0.2)
    assert str(seg) in str(info.value) and str(off) in str(info.value)


async def test_bit_flip_in_the_newest_snapshot_refuses_to_start(tmp_path: Path) -> None:
    c = DiskCluster(tmp_path, snapshot_entries=20, snapshot_trailing_entries=5)
    await c.start()
    acked: set[str] = set()
    try:
        await load(c, 2, 0.4, acked)
        assert all(n.metrics["snapshots_taken"] > 0 for n in c.nodes.values())
    finally:
        await c.stop()
    snap = sorted((c.dir("n1") / "snap").glob("*.snap"))[-1]
    size = snap.stat().st_size
    bitflip(snap, size - 3)  # in the body: the CRC check at restore catches it
    node = c.make("n1")
    with pytest.raises(StorageCorrupted) as info:
        await node.start()
    assert info.value.path == str(snap), info.value
    assert not node.running
    bitflip(snap, size - 3)  # undo; now damage the header (meta JSON) instead
    bitflip(snap, 40)
    node = c.make("n1")
    with pytest.raises(StorageCorrupted) as info:
        await node.start()
    assert info.value.path == str(snap)


# ------------------------------------------------------------------------------- lost rename


async def settled_snapshots(c: DiskCluster, timeout: float = 5.0) -> dict[str, list[str]]:
    """The snapshot files of every node once no snapshot is being written (a listing taken
    while one is between its rename and the deletion of the oldest would not last)."""

    def listing() -> dict[str, list[str]]:
        return {nid: sorted(p.name for p in (c.dir(nid) / "snap").glob("*.snap")) for nid in c.ids}

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        busy = any(n._snapshotting for n in c.nodes.values())
        seen = listing()
        if not busy:
            await asyncio.sleep(0.05)
            if not any(n._snapshotting for n in c.nodes.values()) and listing() == seen:
                return seen
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"snapshots never settled: {seen}")
        await asyncio.sleep(0.01)


def cut_after_snapshot_rename() -> Any:
    """cut_when: the power goes off after a snapshot rename, before the snap/ directory fsync."""
    renamed = False

    def cut(op: str, path: str) -> bool:
        nonlocal renamed
        if op == "rename" and path.endswith(".snap"):
            renamed = True
        return renamed and op == "fsync_dir" and os.path.basename(path) == "snap"

    return cut


async def test_snapshot_rename_lost_by_a_power_cut_restarts_from_previous_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    c = DiskCluster(tmp_path, segment_bytes=4096, snapshot_entries=40, snapshot_trailing_entries=10)
    rng = random.Random(7)
    pl: dict[str, PowerLossFileOps] = {}
    for nid in c.ids:
        c.dir(nid).mkdir(parents=True)
        pl[nid] = PowerLossFileOps(c.dir(nid), rng)
    await c.start(dict(pl))
    acked: set[str] = set()
    try:
        await load(c, 2, 0.3, acked)  # a first snapshot on every node
        assert all(n.metrics["snapshots_taken"] >= 1 for n in c.nodes.values())
        before = await settled_snapshots(c)
        victim = (await c.leader()).id
        pl[victim].cut_when = cut_after_snapshot_rename()
        await load(c, 2, 0.6, acked)
        assert pl[victim].dead, "the power was never cut"
        await c.stop()
        pl[victim].power_loss()
        after = sorted(p.name for p in (c.dir(victim) / "snap").glob("*.snap"))
        assert after == before[victim]  # the renamed snapshot is gone: only the older ones remain
        await c.start()
        await c.check_acked(acked)
    finally:
        await c.stop()


async def test_lying_disk_loses_a_durable_rename_and_corruption_is_detected(tmp_path: Path) -> None:
    """The disk claims the snap/ fsync persisted the rename but loses it, while the WAL segments
    the snapshot replaced were deleted durably: the node must refuse (StorageCorrupted), not serve
    a state with a hole in it."""
    c = DiskCluster(tmp_path, segment_bytes=2048, snapshot_entries=100, snapshot_trailing_entries=1)
    rng = random.Random(3)
    for nid in c.ids:
        c.dir(nid).mkdir(parents=True)
    lying = PowerLossFileOps(c.dir("n3"), rng, lose_renames=lambda p: p.endswith(".snap"))
    await c.start({"n3": lying})
    acked: set[str] = set()
    try:
        await load(c, 3, 1.0, acked)
        n3 = c.nodes["n3"]
        assert n3.metrics["snapshots_taken"] >= 2, n3.metrics
        await c.stop()
        lying.power_loss()
        assert not list((c.dir("n3") / "snap").glob("*.snap"))
        node = c.make("n3")
        with pytest.raises(StorageCorrupted) as info:
            await node.start()
        assert "snapshot" in str(info.value) and info.value.path.startswith(str(c.dir("n3")))
    finally:
        await c.stop()


# ------------------------------------------------------------------ power loss, 100 crash points


async def one_crash_point(root: Path, seed: int) -> dict[str, Any]:
    """Run a 3-node cluster under load, cut the power to a random subset at a random point,
    restart from what a power cut leaves, and check that no acknowledged write is lost."""
    rng = random.Random(seed)
    c = DiskCluster(
        root,
        segment_bytes=rng.choice([2048, 8192, 1 << 20]),
        snapshot_entries=rng.choice([25, 60, 10_000]),
        snapshot_trailing_entries=rng.choice([1, 10]),
        rng_seed=seed,
    )
    for nid in c.ids:
        c.dir(nid).mkdir(parents=True)
    pl = {nid: PowerLossFileOps(c.dir(nid), random.Random(seed * 31 + i)) for i, nid in enumerate(c.ids)}
    acked: set[str] = set()
    await c.start(dict(pl))
    try:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(client(c, acked, stop, f"c{j}-")) for j in range(rng.randint(1, 4))]
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        victims = c.ids if rng.random() < 0.5 else rng.sample(c.ids, rng.randint(1, 2))
        for nid in victims:
            pl[nid].crash_at = pl[nid].mutations + rng.randint(1, 8)
        await asyncio.sleep(rng.uniform(0.0, 0.15))  # survivors keep acknowledging (a majority may be up)
        for nid in victims:
            pl[nid].dead = True  # not reached crash_at yet: off now
        await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks)
        await c.stop()
        for nid in victims:
            pl[nid].power_loss()
        await c.start()
        await c.check_acked(acked)
        return {"acked": len(acked), "victims": len(victims)}
    except BaseException as exc:
        raise AssertionError(f"crash point seed {seed} failed: {exc!r}") from exc
    finally:
        await c.stop()


async def test_power_loss_at_100_random_crash_points_loses_no_acknowledged_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """100 seeds, 5 clusters at a time (each on its own network and directories; 10 at a time
    timed out once in the pure-Python run of a full suite on the 2-CPU VM)."""
    caplog.set_level(logging.WARNING, logger="raftlib.storage")
    results: list[dict[str, Any]] = []
    seeds = list(range(100))
    for batch in range(0, len(seeds), 5):
        group = seeds[batch : batch + 5]
        results += await asyncio.gather(*(one_crash_point(tmp_path / f"s{s}", s) for s in group))
    total = sum(r["acked"] for r in results)
    messages = [r.getMessage() for r in caplog.records]
    torn = sum("torn" in m for m in messages)
    unfinished = sum("unfinished snapshot" in m for m in messages)
    print(
        f"power loss: 100 crash points, {total} acknowledged writes checked, "
        f"{sum(r['victims'] == 3 for r in results)} with all 3 nodes cut, "
        f"{torn} torn WAL tails repaired, {unfinished} unfinished snapshots removed"
    )
    assert total > 300, total  # the sweep did real work
    assert sum(1 for r in results if r["victims"] == 3) >= 20
    assert torn > 0

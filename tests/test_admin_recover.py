"""``python -m raftlib recover``: disaster recovery after a permanent loss of quorum, end to end.

Scenario (docs/admin.md, "Disaster recovery"): a 3-member cluster of
RaftNodes with DiskStorage writes data; two members are destroyed for good,
so the survivor can never elect a leader again. ``recover`` rewrites the
survivor as a 1-member cluster; restarted, it becomes leader, has every
committed write, accepts new ones, and grows again with ``add_member``.

Rules checked:

* without ``--yes-i-know`` nothing is written (the plan is printed, exit 3);
* a directory in use (a running node, in this process or another) is refused;
* damaged storage is refused, and the directory is left as it was;
* ``--node-id`` must be one of ``--members``; ``--members`` must parse;
* with and without snapshots, and whatever members map the node is restarted with.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from raftlib import NodeConfig, RaftNode, StateMachine
from raftlib.admin import ExitCode, main
from raftlib.core import Entry, HardState
from raftlib.storage import DiskStorage
from raftlib.transport.memory import MemoryNetwork, MemoryTransport

FAST = dict(tick_interval=0.01, election_tick=10, heartbeat_tick=1)
OLD_MEMBERS = {"n1": "mem://n1", "n2": "mem://n2", "n3": "mem://n3"}


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


def put(k: str, v: str) -> bytes:
    return json.dumps([k, v]).encode()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def make_node(
    tmp: Path, node_id: str, members: dict[str, str], net: MemoryNetwork, cfg: NodeConfig, join: bool = False
) -> tuple[RaftNode, KV]:
    sm = KV()
    node = RaftNode(
        node_id,
        members,
        sm,
        config=cfg,
        join=join,
        transport=MemoryTransport(node_id, net),
        storage=DiskStorage(tmp / node_id),
    )
    return node, sm


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def write_then_lose_quorum(tmp: Path, cfg: NodeConfig, n: int) -> dict[str, str]:
    """Run 3 members, commit ``n`` writes everywhere, stop, destroy n2 and n3; the data written."""
    net = MemoryNetwork()
    nodes = {i: make_node(tmp, i, OLD_MEMBERS, net, cfg) for i in OLD_MEMBERS}
    for node, _ in nodes.values():
        await node.start()
    try:
        await wait_for(lambda: any(node.is_leader for node, _ in nodes.values()))
        leader = next(node for node, _ in nodes.values() if node.is_leader)
        expected = {}
        for i in range(n):
            await leader.propose(put(f"k{i}", f"v{i}"), timeout=5)
            expected[f"k{i}"] = f"v{i}"
        commit = leader.status()["commit"]
        for node, _ in nodes.values():
            await node.wait_applied(commit, timeout=5)
    finally:
        for node, _ in nodes.values():
            await node.stop()
    shutil.rmtree(tmp / "n2")
    shutil.rmtree(tmp / "n3")
    return expected


@pytest.mark.parametrize(
    ("snapshots", "restart_members"),
    [(False, {"n1": "mem://n1"}), (True, OLD_MEMBERS)],
    ids=["log-only-new-map", "with-snapshots-old-map"],
)
async def test_a_survivor_recovers_as_a_one_member_cluster_keeps_its_data_and_grows_again(
    tmp_path: Path, snapshots: bool, restart_members: dict[str, str]
) -> None:
    cfg = NodeConfig(**FAST, snapshot_entries=20 if snapshots else 10_000, snapshot_trailing_entries=5)
    expected = await write_then_lose_quorum(tmp_path, cfg, 60)
    survivor = tmp_path / "n1"
    if snapshots:
        assert list((survivor / "snap").glob("*.snap"))

    # Without the survivor's peers no leader can be elected: quorum is lost for good.
    stuck, _ = make_node(tmp_path, "n1", OLD_MEMBERS, MemoryNetwork(), cfg)
    await stuck.start()
    await asyncio.sleep(0.4)  # several election timeouts
    assert not stuck.is_leader
    await stuck.stop()

    before = digest(survivor)
    code, out, err = run("recover", str(survivor), "--node-id", "n1", "--members", "n1=mem://n1")
    assert code == ExitCode.REFUSED
    assert "WARNING: DISASTER RECOVERY" in err and "nothing was changed: add --yes-i-know" in out
    assert "-> " in out and "voters=[n1]" in out
    assert digest(survivor) == before

    code, out, err = run(
        "recover", str(survivor), "--node-id", "n1", "--members", "n1=mem://n1", "--yes-i-know"
    )
    assert code == ExitCode.OK, err
    assert "recovered:" in out
    code, out, _ = run("wal", "inspect", "--json", str(survivor))
    inspected = json.loads(out)
    assert inspected["membership"]["voters"] == ["n1"]
    assert inspected["log"]["uncommitted_entries"] == 0
    assert run("wal", "verify", str(survivor))[0] == ExitCode.OK

    net = MemoryNetwork()
    node, sm = make_node(tmp_path, "n1", restart_members, net, cfg)
    await node.start()
    try:
        await wait_for(lambda: node.is_leader)
        assert node.membership().voters == {"n1"}
        await node.read_barrier()
        assert sm.data == expected  # every committed write survived
        for i in range(60, 70):
            await node.propose(put(f"k{i}", f"new{i}"), timeout=5)
            expected[f"k{i}"] = f"new{i}"
        assert sm.data == expected

        # The recovered cluster grows again: a new member with an empty directory joins.
        n4, sm4 = make_node(tmp_path, "n4", {"n1": "mem://n1", "n4": "mem://n4"}, net, cfg, join=True)
        await n4.start()
        try:
            await node.add_member("n4", "mem://n4", timeout=10)
            assert node.membership().voters == {"n1", "n4"}
            await node.propose(put("after", "join"), timeout=5)
            expected["after"] = "join"
            await n4.wait_applied(node.status()["commit"], timeout=10)
            assert sm4.data == expected
        finally:
            await n4.stop()
    finally:
        await node.stop()


async def test_a_running_node_is_refused(tmp_path: Path) -> None:
    cfg = NodeConfig(**FAST)
    node, _ = make_node(tmp_path, "n1", {"n1": "mem://n1"}, MemoryNetwork(), cfg)
    await node.start()
    try:
        await wait_for(lambda: node.is_leader)
        await node.propose(put("a", "1"), timeout=5)
        args = [
            "recover",
            str(tmp_path / "n1"),
            "--node-id",
            "n1",
            "--members",
            "n1=mem://n1",
            "--yes-i-know",
        ]
        code, _, err = run(*args)
        assert code == ExitCode.REFUSED and "in use by process" in err
        # From another process too (the lock is a POSIX lock: per process).
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "raftlib", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == ExitCode.REFUSED, proc.stderr
        assert "in use by process" in proc.stderr
    finally:
        await node.stop()


def test_damaged_storage_is_refused_and_left_alone(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    s = DiskStorage(d)
    for i in range(1, 4):
        s.save(HardState(1, "n1", i - 1), [Entry(i, 1, b"data")])
    s.close()
    seg = next((d / "wal").iterdir())
    raw = bytearray(seg.read_bytes())
    first_len = int.from_bytes(raw[0:4], "little")
    raw[9 + first_len + 12] ^= 0xFF  # inside the first BATCH; valid records follow
    seg.write_bytes(bytes(raw))
    before = digest(d)
    code, _, err = run("recover", str(d), "--node-id", "n1", "--members", "n1=a:1", "--yes-i-know")
    assert code == ExitCode.CORRUPT
    assert "refusing to recover from damaged storage" in err and str(seg) in err
    assert digest(d) == before


def test_node_id_must_be_a_member_and_members_must_parse(tmp_path: Path) -> None:
    d = tmp_path / "n1"
    with DiskStorage(d) as s:
        s.save(HardState(1, None, 1), [Entry(1, 1, b"x")])
    code, _, err = run("recover", str(d), "--node-id", "n1", "--members", "n2=a:1", "--yes-i-know")
    assert code == ExitCode.USAGE and "--node-id n1 is not one of --members (n2)" in err
    for bad in ("n1", "n1=", "=a:1", "n1=a:1,n1=b:2", "n 1=a:1"):
        with pytest.raises(SystemExit) as info:
            run("recover", str(d), "--node-id", "n1", "--members", bad)
        assert info.value.code == 2
    code, _, err = run("recover", str(tmp_path / "missing"), "--node-id", "n1", "--members", "n1=a:1")
    assert code == ExitCode.USAGE and "no such directory" in err


async def test_recovering_into_several_members_where_the_others_join_empty(tmp_path: Path) -> None:
    cfg = NodeConfig(**FAST)
    expected = await write_then_lose_quorum(tmp_path, cfg, 20)
    members = {"n1": "mem://n1", "n4": "mem://n4"}
    code, _, err = run(
        "recover",
        str(tmp_path / "n1"),
        "--node-id",
        "n1",
        "--members",
        "n1=mem://n1,n4=mem://n4",
        "--yes-i-know",
    )
    assert code == ExitCode.OK, err
    assert "all but this one must start with an EMPTY data directory" in err
    net = MemoryNetwork()
    node, _ = make_node(tmp_path, "n1", members, net, cfg)
    n4, sm4 = make_node(tmp_path, "n4", members, net, cfg, join=True)
    await node.start()
    await n4.start()
    try:
        # Two voters now: n1 needs n4's vote, which it gets although n4 holds nothing yet.
        await wait_for(lambda: node.is_leader)
        assert node.membership().voters == {"n1", "n4"}
        await node.propose(put("x", "y"), timeout=5)
        await n4.wait_applied(node.status()["commit"], timeout=10)
        assert sm4.data == {**expected, "x": "y"}
    finally:
        await n4.stop()
        await node.stop()

"""docs/recipes.md, docs/sessions.md and the README's Batteries section work as written: their
code blocks are run on three in-process nodes (memory transport instead of TCP)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from test_node import FAST
from test_recipes_cluster import GroupCluster

import raftlib
from raftlib.storage import MemoryStorage
from raftlib.transport.memory import MemoryNetwork, MemoryTransport

REPO = Path(__file__).resolve().parents[1]


def blocks(path: Path, after: str = "") -> list[str]:
    text = path.read_text()
    if after:
        text = text[text.index(after) :]
    return re.findall(r"```python\n(.*?)```", text, re.S)


def in_memory(net: MemoryNetwork) -> Any:
    """A RaftNode factory with the docs' signature, on the memory transport."""

    def node(node_id: str, members: dict[str, str], sm: Any, data_dir: Any = None, config: Any = None) -> Any:
        cfg = raftlib.NodeConfig(**FAST, forward_proposals=True)
        return raftlib.RaftNode(
            node_id, {m: f"mem://{m}" for m in members}, sm, config=cfg,
            transport=MemoryTransport(node_id, net), storage=MemoryStorage(),
        )

    return node


async def test_every_recipes_doc_example_runs_on_a_cluster() -> None:
    code = blocks(REPO / "docs" / "recipes.md")
    ns: dict[str, Any] = {}
    for block in code:
        exec(compile(block, "docs/recipes.md", "exec"), ns)
    reports: list[int] = []
    ran = asyncio.Event()

    async def write_report(fencing_token: int) -> None:
        reports.append(fencing_token)

    async def run_due_jobs(fencing_token: int) -> None:
        ran.set()

    ns.update(write_report=write_report, run_due_jobs=run_due_jobs)
    cluster = GroupCluster(factory=ns["make_group"])
    try:
        await cluster.start_all()
        group = cluster.groups["n2"]
        await ns["dict_example"](group)
        assert cluster.obj("n2", "config").to_dict() == {"mode": "safe", "retries": 3}
        await ns["counter_example"](group)
        assert await cluster.obj("n3", "visits").get_linearizable() == 0
        await ns["set_example"](group)
        await cluster.obj("n1", "jobs").push({"id": 2})
        await ns["queue_example"](group)
        await cluster.obj("n1", "jobs").sync()
        assert len(cluster.obj("n1", "jobs")) == 0
        await ns["lock_example"](group, "n2")
        assert len(reports) == 1
        election = asyncio.create_task(ns["election_example"](group, "n2"))
        await asyncio.wait_for(ran.wait(), 5)
        election.cancel()
        await asyncio.gather(election, return_exceptions=True)
        inventory_group = raftlib.recipes.ReplicatedStateMachine()
        inventory = inventory_group.add(ns["Inventory"]("inventory"))
        assert inventory.commands.keys() == {"ship", "receive"}
    finally:
        await cluster.stop_all()


async def run_members(mains: list[Any], printed: list[str], expected: int) -> None:
    """Run each member's main until all printed (they then serve forever), then cancel them."""
    members = {"n1": "", "n2": "", "n3": ""}
    tasks = [asyncio.create_task(m(i, members)) for m, i in zip(mains, members, strict=True)]
    try:
        async def all_printed() -> None:
            while len(printed) < expected:
                for t in tasks:
                    if t.done():
                        t.result()  # an example that failed: raise its error
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_printed(), 15)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def shim(net: MemoryNetwork) -> Any:
    """The ``raftlib`` name the examples use, with RaftNode on the memory transport."""
    return type("raftlib_shim", (), {
        "NodeConfig": raftlib.NodeConfig,
        "StateMachine": raftlib.StateMachine,
        "RaftNode": staticmethod(in_memory(net)),
    })


async def test_the_readme_batteries_example_runs_on_three_members() -> None:
    code = blocks(REPO / "README.md", after="## Batteries")[0]
    net = MemoryNetwork()
    printed: list[str] = []
    mains = []
    for _ in range(3):  # one module namespace (one group) per member, as in three processes
        ns: dict[str, Any] = {"print": lambda *a: printed.append(" ".join(map(str, a)))}
        exec(compile(code, "README.md", "exec"), ns)
        ns["raftlib"] = shim(net)
        mains.append(ns["main"])
    await run_members(mains, printed, 3)
    assert printed == ["fast", "fast", "fast"]


async def test_the_sessions_doc_example_applies_once_per_member() -> None:
    code = blocks(REPO / "docs" / "sessions.md")[0]
    net = MemoryNetwork()
    printed: list[str] = []
    mains = []
    for _ in range(3):
        ns: dict[str, Any] = {"print": lambda *a: printed.append(" ".join(map(str, a)))}
        exec(compile(code, "docs/sessions.md", "exec"), ns)
        ns["raftlib"] = shim(net)
        mains.append(ns["main"])
    await run_members(mains, printed, 3)
    assert sorted(printed, key=int) == ["5", "10", "15"]

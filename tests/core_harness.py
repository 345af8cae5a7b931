"""A tiny hand-driven harness for rule-level tests of the core.

Unlike ``raftlib.testing`` (randomised, seeded simulation), this lets a test
hold messages, drop them and step them one at a time, to pin down exactly one
rule of the paper per test.
"""

from __future__ import annotations

import random

from raftlib.core import Config, Entry, HardState, Message, PersistentState, RawNode, Ready, Role


class Disk:
    """What one node has made durable."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []

    def write(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.entries:
            first = rd.entries[0].index
            del self.entries[first - 1 :]
            self.entries.extend(rd.entries)

    def state(self) -> PersistentState:
        return PersistentState(self.hard_state, list(self.entries))


class Harness:
    """N cores, a message queue the test controls, and synchronous readies."""

    def __init__(self, ids: list[str], seed: int = 1, **cfg: object) -> None:
        self.ids = ids
        self.cfg = cfg
        self.disks = {i: Disk() for i in ids}
        self.applied: dict[str, list[bytes]] = {i: [] for i in ids}
        self.nodes = {i: self._make(i, None, seed) for i in ids}
        self.queue: list[Message] = []
        self.down: set[str] = set()

    def _make(self, node_id: str, state: PersistentState | None, seed: int) -> RawNode:
        config = Config(node_id, voters=list(self.ids), **self.cfg)  # type: ignore[arg-type]
        return RawNode(config, state, rng=random.Random(f"{seed}-{node_id}"))

    def restart(self, node_id: str, seed: int = 2) -> RawNode:
        self.applied[node_id] = []
        self.nodes[node_id] = self._make(node_id, self.disks[node_id].state(), seed)
        return self.nodes[node_id]

    def handle_ready(self, node_id: str) -> Ready | None:
        node = self.nodes[node_id]
        if not node.has_ready():
            return None
        rd = node.ready()
        self.queue.extend(rd.messages)
        self.disks[node_id].write(rd)
        self.queue.extend(rd.persisted_messages)
        self.applied[node_id].extend(e.data for e in rd.committed_entries)
        node.advance(rd)
        return rd

    def settle_readies(self) -> None:
        while any(self.handle_ready(i) for i in self.ids):
            pass

    def deliver(self, m: Message) -> None:
        if m.to in self.down or m.frm in self.down:
            return
        self.nodes[m.to].step(m)

    def run(self, max_rounds: int = 1000) -> None:
        """Handle readies and deliver queued messages until quiet."""
        for _ in range(max_rounds):
            self.settle_readies()
            if not self.queue:
                return
            queue, self.queue = self.queue, []
            for m in queue:
                self.deliver(m)
        raise AssertionError("harness did not go quiet")

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for i in self.ids:
                if i not in self.down:
                    self.nodes[i].tick()
            self.run()

    def elect(self, node_id: str) -> RawNode:
        self.nodes[node_id].campaign()
        self.run()
        node = self.nodes[node_id]
        assert node.role is Role.LEADER, node.status()
        return node

    def leader(self) -> RawNode | None:
        leaders = [n for i, n in self.nodes.items() if n.role is Role.LEADER and i not in self.down]
        return max(leaders, key=lambda n: n.term) if leaders else None

"""A tiny hand-driven harness for rule-level tests of the core.

Unlike ``raftlib.testing`` (randomised, seeded simulation), this lets a test
hold messages, drop them and step them one at a time, to pin down exactly one
rule of the paper per test.
"""

from __future__ import annotations

import json
import random

from raftlib.core import (
    Config,
    Entry,
    HardState,
    Message,
    MessageType,
    PersistentState,
    RawNode,
    Ready,
    Role,
    SnapshotMeta,
)


class Disk:
    """What one node has made durable: hard state, snapshot, entries after it."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []
        self.snapshot: SnapshotMeta | None = None
        self.snapshot_data = b""
        self.snapshots: dict[int, bytes] = {}
        self.incoming = bytearray()

    def offset(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def write(self, rd: Ready) -> None:
        for chunk in rd.snapshot_chunks:
            if chunk.offset == 0:
                self.incoming = bytearray()
            assert chunk.offset == len(self.incoming)
            self.incoming += chunk.data
        if rd.snapshot is not None:
            meta = rd.snapshot
            keep = [e for e in self.entries if e.index > meta.index]
            at = [e for e in self.entries if e.index == meta.index]
            self.entries = keep if at and at[0].term == meta.term else []
            self.snapshot = meta
            self.snapshot_data = bytes(self.incoming)
            self.snapshots[meta.index] = self.snapshot_data
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.entries:
            first = rd.entries[0].index
            del self.entries[first - 1 - self.offset() :]
            self.entries.extend(rd.entries)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self.snapshots[meta.index] = data
        self.snapshot, self.snapshot_data = meta, data

    def compact(self, first_index: int) -> None:
        self.entries = [e for e in self.entries if e.index >= first_index]

    def state(self) -> PersistentState:
        return PersistentState(self.hard_state, list(self.entries), self.snapshot)


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
        self.chunk_bytes = 64
        self.installs: list[tuple[str, int]] = []
        self.read_states: dict[str, list] = {i: [] for i in ids}
        self.proposal_results: dict[str, list] = {i: [] for i in ids}
        self.dropped: list[Message] = []
        self.drop_filter = lambda m: False

    def _make(self, node_id: str, state: PersistentState | None, seed: int) -> RawNode:
        config = Config(node_id, voters=list(self.ids), **self.cfg)  # type: ignore[arg-type]
        return RawNode(config, state, rng=random.Random(f"{seed}-{node_id}"))

    def restart(self, node_id: str, seed: int = 2) -> RawNode:
        disk = self.disks[node_id]
        self.applied[node_id] = json_load(disk.snapshot_data) if disk.snapshot else []
        self.nodes[node_id] = self._make(node_id, disk.state(), seed)
        return self.nodes[node_id]

    def snapshot(self, node_id: str) -> SnapshotMeta:
        """Snapshot node_id's state machine at its applied index and compact."""
        node = self.nodes[node_id]
        index = node.applied_index
        data = json.dumps([d.hex() for d in self.applied[node_id]]).encode()
        node.compact(index)
        meta = node.snapshot_meta
        assert meta is not None and meta.index == index
        self.disks[node_id].save_snapshot(meta, data)
        self.disks[node_id].compact(node.first_index())
        return meta

    def fill(self, m: Message) -> Message:
        """The driver's part of sending a snapshot chunk: read it from the store."""
        if m.type is MessageType.SNAPSHOT and m.snapshot is not None:
            data = self.disks[m.frm].snapshots[m.snapshot.index]
            size = self.chunk_bytes
            m.data = data[m.offset : m.offset + size]
            m.done = m.offset + size >= len(data)
        return m

    def handle_ready(self, node_id: str) -> Ready | None:
        node = self.nodes[node_id]
        if not node.has_ready():
            return None
        rd = node.ready()
        self.queue.extend(self.fill(m) for m in rd.messages)
        self.disks[node_id].write(rd)
        if rd.snapshot is not None:
            self.applied[node_id] = json_load(self.disks[node_id].snapshot_data)
            self.installs.append((node_id, rd.snapshot.index))
        self.queue.extend(rd.persisted_messages)
        self.applied[node_id].extend(e.data for e in rd.committed_entries if e.type == 0)
        self.read_states[node_id].extend(rd.read_states)
        self.proposal_results[node_id].extend(rd.proposal_results)
        node.advance(rd)
        return rd

    def settle_readies(self) -> None:
        while any(self.handle_ready(i) for i in self.ids):
            pass

    def add_node(self, node_id: str, seed: int = 3) -> RawNode:
        """A brand-new node that joins an existing cluster (no voters of its own)."""
        self.ids.append(node_id)
        self.disks[node_id] = Disk()
        self.applied[node_id] = []
        self.read_states[node_id] = []
        self.proposal_results[node_id] = []
        # A joining node learns its configuration from the leader's snapshot or log.
        config = Config(node_id, join=True, **self.cfg)  # type: ignore[arg-type]
        self.nodes[node_id] = RawNode(config, None, rng=random.Random(f"{seed}-{node_id}"))
        return self.nodes[node_id]

    def deliver(self, m: Message) -> None:
        if m.to in self.down or m.frm in self.down or m.to not in self.nodes:
            return
        if self.drop_filter(m):
            self.dropped.append(m)
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


def json_load(data: bytes) -> list[bytes]:
    return [bytes.fromhex(x) for x in json.loads(data)] if data else []

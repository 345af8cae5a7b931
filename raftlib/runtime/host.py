"""RaftHost: many Raft groups in one process, sharing one listener, one WAL and one ticker.

Owns the host's transport (one connection per peer host, every group multiplexed over it,
``raftlib.transport.mux``), its shared log (one WAL of group-tagged records,
``raftlib.storage.shared``), the write queue every group submits to (one batch and one
fsync per loop turn for all of them), the snapshot threads, the ticker, quiescence and the
leader balancer. Each group is a :class:`~raftlib.RaftNode` run with those services, so a
group handle has RaftNode's whole API.

Invariants:

* Each group keeps every rule of a lone RaftNode (durability, ordering, every call ends):
  the host only lends it resources. A batch of the shared queue is durable before any of its
  groups acknowledges anything in it.
* **Quiescence** (CockroachDB's): a leader whose group is fully replicated, committed,
  applied and durable, with nothing in flight, stops ticking and tells its followers, which
  stop too if they agree (same term and leader, whole log committed); a follower that does
  not agree answers, and the leader ticks again. Any message, proposal, read, membership
  change or transfer wakes a group. Hosts exchange one liveness heartbeat per tick per host
  pair (coalesced for all groups); when a host is not heard from within an election
  timeout, every quiesced group it leads or serves wakes up on the others, so elections
  and check-quorum work as without quiescence. A woken leader assumes no lease (its lease
  clock stood still) and restarts its check-quorum window, and ticks at least one heartbeat
  interval (so sends one real heartbeat, carrying its commit index) before it may quiesce
  again: a follower that refused because it missed the last commit catches up.
* Every task the host starts is owned and awaited in :meth:`RaftHost.stop`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from raftlib.core import Entry, HardState, Message, MessageType, Role
from raftlib.errors import ConfigError, RaftError
from raftlib.observe import Observer
from raftlib.runtime.config import NodeConfig
from raftlib.runtime.node import GroupServices, RaftNode
from raftlib.runtime.persist import WriteQueue
from raftlib.runtime.tasks import cancel_and_wait
from raftlib.statemachine import StateMachine
from raftlib.storage.base import HostLog
from raftlib.storage.memory import MemoryStorage
from raftlib.transport.mux import HostTransportBase

log = logging.getLogger("raftlib.host")

CONTROL = ""
"""The reserved group id of host-level messages (liveness, quiescence)."""
_MAX_GROUP_ID = 255


def _check_group_id(group_id: str) -> None:
    if not isinstance(group_id, str) or not group_id:
        raise ConfigError(f"a group id is a non-empty string, not {group_id!r}")
    if len(group_id.encode()) > _MAX_GROUP_ID:
        raise ConfigError(f"group id {group_id[:40]!r}... is longer than {_MAX_GROUP_ID} bytes")


class _MemoryLog:
    """The shared log's stand-in without a data directory: one MemoryStorage per group."""

    def __init__(self) -> None:
        self._groups: dict[str, MemoryStorage] = {}
        self.stats: dict[str, int] = {"fsyncs": 0, "writes": 0}

    def open(self) -> None:
        pass

    def groups(self) -> list[str]:
        return list(self._groups)

    def group(self, group_id: str) -> MemoryStorage:
        if group_id not in self._groups:
            self._groups[group_id] = MemoryStorage()
        return self._groups[group_id]

    def write(self, batch: Iterable[tuple[str, HardState | None, list[Entry]]]) -> None:
        for gid, hs, entries in batch:
            self.group(gid).save(hs, entries)
        self.stats["writes"] += 1
        self.stats["fsyncs"] += 1

    def remove_group(self, group_id: str) -> None:
        self._groups.pop(group_id, None)

    def close(self) -> None:
        pass


class RaftHost:
    """One process's member of many Raft groups.

    ``hosts`` maps every host id of the cluster (this one included) to its ``host:port``;
    a group's members are host ids. ``data_dir=None`` keeps every group in memory (tests).
    ``transport`` and ``storage`` replace the TCP host transport and the shared disk log
    (the in-memory twins in tests).

    Example::

        host = raftlib.RaftHost("h1", {"h1": "127.0.0.1:7001", "h2": ..., "h3": ...}, "data/h1")
        async with host:
            users = await host.add_group("users", ["h1", "h2", "h3"], UsersMachine())
            await users.propose(b"...")           # a RaftNode: propose, read_barrier, status, ...
    """

    def __init__(
        self,
        host_id: str,
        hosts: Mapping[str, str],
        data_dir: str | os.PathLike[str] | None = None,
        config: NodeConfig | None = None,
        *,
        transport: HostTransportBase | None = None,
        storage: HostLog | None = None,
        quiesce: bool = True,
        balance_interval: float | None = 2.0,
    ) -> None:
        if not host_id or not isinstance(host_id, str):
            raise ConfigError("host_id must be a non-empty string")
        if host_id not in hosts:
            raise ConfigError(f"host {host_id!r} is not in hosts {sorted(hosts)}")
        self.id = host_id
        self.hosts = dict(hosts)
        self.config = config or NodeConfig()
        self.config.validate()
        self._data_dir = os.fspath(data_dir) if data_dir is not None else None
        self._transport: HostTransportBase | None = transport
        self._log: HostLog | None = storage
        self.quiesce = quiesce
        self.balance_interval = balance_interval
        self._groups: dict[str, RaftNode] = {}
        self._active: dict[str, RaftNode] = {}
        """Groups being ticked (not quiesced)."""
        self._idle: dict[str, tuple[int, int]] = {}
        """Active group led here -> (its last log index, ticks since that index last moved). It
        quiesces once that reaches ``quiesce_after`` and it is quiescable, so a busy group never
        churns between quiesced and awake, and a woken leader heartbeats before it quiesces again."""
        self.quiesce_after = max(2, self.config.election_tick // 2)
        """Ticks a leader must have been idle before its group quiesces."""
        self._queue: WriteQueue | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._snapshotter: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._transfer: asyncio.Task[Any] | None = None
        self._running = False
        self._down: set[str] = set()
        self._heard: dict[str, tuple[float | None, float]] = {}
        """Peer host -> (its last_heard value, this host's tick count when it last changed)."""
        """Peer hosts not heard from within an election timeout."""
        self._started_at = 0.0
        self.metrics: dict[str, float] = {
            "groups": 0,
            "groups_quiesced": 0,
            "quiesce_count": 0,
            "wake_count": 0,
            "leader_transfers": 0,
            "ticks": 0,
        }

    # -- life cycle --------------------------------------------------------------------------

    async def __aenter__(self) -> RaftHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the shared log, start the listener and the ticker."""
        if self._running:
            return
        if self._log is None:
            if self._data_dir is None:
                self._log = _MemoryLog()
            else:
                from raftlib.storage.shared import SharedLog

                self._log = SharedLog(self._data_dir, fsync=self.config.fsync)
        shared = self._log
        await asyncio.get_running_loop().run_in_executor(None, shared.open)
        self._queue = WriteQueue(f"host-{self.id}", self._write)
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-{self.id}-rd")
        self._snapshotter = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"raft-{self.id}-snap"
        )
        if self._transport is None:
            from raftlib.transport.mux import HostTransport

            self._transport = HostTransport(
                self.id,
                self.hosts[self.id],
                {h: a for h, a in self.hosts.items() if h != self.id},
                cluster_id=self.config.cluster_id,
                ssl=self.config.tls,
                peer_secret=self.config.peer_secret,
            )
        self._running = True
        await self._transport.start(self._on_host_message)
        self._started_at = asyncio.get_running_loop().time()
        self._tasks = [asyncio.create_task(self._ticker(), name=f"raft-host-{self.id}-tick")]
        if self.balance_interval:
            self._tasks.append(asyncio.create_task(self._balancer(), name=f"raft-host-{self.id}-balance"))
        log.info("host %s started (%d groups on disk)", self.id, len(shared.groups()))

    async def stop(self) -> None:
        """Stop every group, then the listener, the write queue and the shared log. Idempotent."""
        if not self._running:
            return
        self._running = False
        tasks = [*self._tasks, *([self._transfer] if self._transfer else [])]
        await cancel_and_wait(tasks)
        self._tasks, self._transfer = [], None
        for node in list(self._groups.values()):
            with contextlib.suppress(Exception):
                await node.stop()
        self._groups.clear()
        self._active.clear()
        if self._transport is not None:
            await self._transport.stop()
        if self._queue is not None:
            await self._queue.close()
        loop = asyncio.get_running_loop()
        for ex in (self._reader, self._snapshotter):
            if ex is not None:
                await loop.run_in_executor(None, ex.shutdown, True)
        if self._log is not None:
            await loop.run_in_executor(None, self._log.close)

    @property
    def running(self) -> bool:
        return self._running

    # -- groups ------------------------------------------------------------------------------

    def recovered_groups(self) -> list[str]:
        """Groups with durable state in the shared log that were not added back yet."""
        if self._log is None:
            return []
        return [g for g in self._log.groups() if g not in self._groups]

    async def add_group(
        self,
        group_id: str,
        members: Iterable[str] | None,
        state_machine: StateMachine,
        *,
        join: bool = False,
        config: NodeConfig | None = None,
        on_leader_change: Callable[..., Any] | None = None,
        observers: Iterable[Observer] | None = None,
    ) -> RaftNode:
        """Start this host's member of group ``group_id`` and return its handle (a RaftNode).

        ``members`` are host ids (default: every host); the group bootstraps with them on every
        member (ignored when the shared log already holds the group's state, as after a
        restart). ``observers`` get the group's events (e.g. ``RaftMetrics.observer(group=...)``
        of :mod:`raftlib.prometheus`). ``join=True`` for a member added to a running group by its leader's
        ``add_member(host_id, address)``. Add the group on every member host: a member that
        has not added it yet drops its messages, and the leader retries.
        """
        if not self._running:
            raise RaftError("the host is not running")
        _check_group_id(group_id)
        if group_id in self._groups:
            raise ConfigError(f"group {group_id!r} is already on host {self.id}")
        ids = list(self.hosts) if members is None else list(members)
        unknown = [m for m in ids if m not in self.hosts]
        if unknown:
            raise ConfigError(f"group {group_id!r}: unknown hosts {unknown} (hosts are {sorted(self.hosts)})")
        if not join and self.id not in ids:
            raise ConfigError(f"group {group_id!r}: this host {self.id!r} is not among its members {ids}")
        assert self._queue is not None and self._reader is not None and self._snapshotter is not None
        assert self._transport is not None and self._log is not None  # set by start()
        services = GroupServices(group_id, self._queue, self._reader, self._snapshotter, self._wake_node)
        node = RaftNode(
            self.id,
            {m: self.hosts[m] for m in ids} | {self.id: self.hosts[self.id]},
            state_machine,
            # No inline fsync on the loop: it would stall every other group for the disk's
            # round trip; the shared queue batches all groups' writes of a loop turn instead.
            config=replace(config or self.config, inline_sync_below=0.0, admin_address=None),
            join=join,
            transport=self._transport.group(group_id),
            storage=self._log.group(group_id),
            on_leader_change=on_leader_change,
            observers=observers,
            services=services,
        )
        self._groups[group_id] = node
        self._active[group_id] = node
        try:
            await node.start()
        except BaseException:
            self._groups.pop(group_id, None)
            self._active.pop(group_id, None)
            raise
        self.metrics["groups"] = len(self._groups)
        return node

    async def remove_group(self, group_id: str) -> None:
        """Stop this host's member of ``group_id`` and delete its state from the shared log
        (remove the member from the group first, with the leader's ``remove_member``)."""
        node = self._groups.pop(group_id, None)
        self._active.pop(group_id, None)
        self._idle.pop(group_id, None)
        if node is not None:
            await node.stop()
        if self._log is not None and self._queue is not None:
            await self._queue.call(self._log.remove_group, group_id)
        self.metrics["groups"] = len(self._groups)

    def group(self, group_id: str) -> RaftNode:
        """The handle of a group added on this host (KeyError otherwise)."""
        return self._groups[group_id]

    @property
    def groups(self) -> dict[str, RaftNode]:
        return dict(self._groups)

    def status(self) -> dict[str, Any]:
        """Host-level figures: groups, how many lead here, quiesced, write batches and fsyncs."""
        leading = sum(1 for n in self._groups.values() if n.is_leader)
        q = self._queue.stats if self._queue is not None else {}
        return {
            "id": self.id,
            "running": self._running,
            "groups": len(self._groups),
            "leading": leading,
            "quiesced": len(self._groups) - len(self._active),
            "down_hosts": sorted(self._down),
            "write_batches": q.get("batches", 0),
            "fsyncs": q.get("fsyncs", 0),
            **{k: v for k, v in self.metrics.items() if k not in ("groups",)},
        }

    # -- the shared write path ---------------------------------------------------------------

    def _write(self, records: list[tuple[Hashable, HardState | None, list[Entry]]]) -> None:
        """In the I/O thread: every group's records of one batch, one write, one fsync."""
        assert self._log is not None
        self._log.write([(str(k), hs, entries) for k, hs, entries in records])

    # -- ticking and quiescence --------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = self.config.tick_interval
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at < time.monotonic():
                next_at = time.monotonic() + interval  # fell behind (paused): do not burst
            self._tick()

    def _tick(self) -> None:
        self.metrics["ticks"] += 1
        self._liveness()
        idle = self._idle
        for gid, node in list(self._active.items()):
            if self.quiesce and node.is_leader:
                # Ticks since the log last grew: heartbeat traffic does not count as activity, so
                # a busy host still quiesces its idle groups (a reply in flight only delays it).
                last = node.last_index
                seen, n = idle.get(gid, (last, 0))
                n = n + 1 if seen == last else 0
                if n >= self.quiesce_after and node.quiescable():
                    del idle[gid]
                    self._quiesce_leader(gid, node)  # instead of this tick's heartbeat
                    continue
                idle[gid] = (last, n)
            node.tick()
        self.metrics["groups_quiesced"] = len(self._groups) - len(self._active)

    def _liveness(self) -> None:
        """One heartbeat per peer host per tick, for every group at once; wake the quiesced
        groups that depend on a host that went silent.

        Silence is counted in this host's own ticks (two election timeouts of them), not in
        wall time: when this loop is slow, its ticks are too, and a peer is not declared down
        for replies this host has not had the time to read (a false alarm would wake every
        group at once and make the loop slower still)."""
        transport = self._transport
        assert transport is not None  # ticks run only between start() and stop()
        peers = [h for h in self.hosts if h != self.id]
        transport.send(CONTROL, [Message(MessageType.HEARTBEAT, self.id, h, 0) for h in peers])
        ticks = self.metrics["ticks"]
        limit = 2 * self.config.election_tick
        newly_down = []
        for h in peers:
            heard = transport.last_heard(h)
            seen = self._heard.get(h)
            if seen is None or heard != seen[0]:
                self._heard[h] = (heard, ticks)
                self._down.discard(h)
            elif ticks - seen[1] >= limit and h not in self._down:
                self._down.add(h)
                newly_down.append(h)
        if not newly_down:
            return
        log.info("host %s: hosts %s silent for %d ticks: waking the groups that need them",
                 self.id, newly_down, limit)
        for node in list(self._groups.values()):
            if not node.quiesced:
                continue
            if node.leader in self._down and node.leader != self.id:
                self._wake_node(node)  # a follower whose leader is gone: elect
            elif node.is_leader:
                voters = self._members_voters(node)
                down = sum(1 for v in voters if v in self._down)
                if 2 * down >= len(voters):
                    self._wake_node(node)  # lost its quorum: check-quorum must be able to act

    @staticmethod
    def _members(node: RaftNode) -> set[str]:
        try:
            m = node.membership()
        except RaftError:
            return set()
        return set(m.voters) | set(m.learners) | set(getattr(m, "outgoing", ()))

    def _quiesce_leader(self, group_id: str, node: RaftNode) -> None:
        core = node._core
        assert core is not None
        followers = [p for p in self._members(node) if p != self.id]
        if any(p in self._down for p in followers):
            return
        node.quiesced = True
        self._active.pop(group_id, None)
        self.metrics["quiesce_count"] += 1
        ctx = group_id.encode()
        msgs = [
            Message(MessageType.HEARTBEAT, self.id, p, core.term, commit=core.commit_index, context=ctx)
            for p in followers
        ]
        assert self._transport is not None
        self._transport.send(CONTROL, msgs)

    def _wake_node(self, node: RaftNode) -> None:
        if not node.quiesced:
            return
        node.quiesced = False
        services = node._services
        if services is not None and self._groups.get(services.key) is node:
            # Ticks again, and heartbeats for ``quiesce_after`` ticks before it may quiesce again:
            # a follower that refused may only lack the commit index a heartbeat carries.
            self._active[services.key] = node
            self._idle.pop(services.key, None)
        if node._core is not None:
            node._core.wake()
        self.metrics["wake_count"] += 1

    def _on_host_message(self, group: str, m: Message) -> None:
        """A control message (group ""): liveness, a leader's quiesce request, a follower's refusal."""
        if group != CONTROL or not m.context:
            return  # liveness: last_heard moved
        group_id = m.context.decode(errors="replace")
        node = self._groups.get(group_id)
        if node is None or node._core is None:
            return
        core = node._core
        if m.type is MessageType.HEARTBEAT:
            # The leader of ``group_id`` quiesced: follow it only when nothing is missing here.
            if (
                core.term == m.term
                and core.leader == m.frm
                and core.role is Role.FOLLOWER
                and core.commit_index == m.commit == core.last_index()
                and not node._requests
            ):
                if not node.quiesced:
                    node.quiesced = True
                    self._active.pop(group_id, None)
                    self.metrics["quiesce_count"] += 1
            else:
                refusal = Message(MessageType.HEARTBEAT_RESP, self.id, m.frm, core.term, context=m.context)
                assert self._transport is not None  # it delivered m
                self._transport.send(CONTROL, [refusal])
        elif m.type is MessageType.HEARTBEAT_RESP and node.quiesced and core.role is Role.LEADER:
            self._wake_node(node)  # a follower could not quiesce: keep heartbeating

    # -- leader balance ------------------------------------------------------------------------

    async def _balancer(self) -> None:
        """Spread leadership: a host leading more than its share of its groups hands one over
        to the member host leading the fewest, one transfer at a time."""
        assert self.balance_interval is not None
        while True:
            await asyncio.sleep(self.balance_interval)
            if self._transfer is not None and not self._transfer.done():
                continue
            move = self._pick_transfer()
            if move is not None:
                node, target = move
                self._transfer = asyncio.create_task(self._hand_over(node, target))

    def _pick_transfer(self) -> tuple[RaftNode, str] | None:
        leads: dict[str, int] = dict.fromkeys(self.hosts, 0)
        known = 0
        for node in self._groups.values():
            lead = node.leader
            if lead is not None and lead in leads:
                leads[lead] += 1
                known += 1
        live = [h for h in self.hosts if h not in self._down]
        if not known or len(live) < 2:
            return None
        share = math.ceil(known / len(live))
        if leads[self.id] <= share:
            return None
        for node in self._groups.values():
            if not node.is_leader or node._requests:
                continue
            voters = [v for v in self._members_voters(node) if v != self.id and v not in self._down]
            if not voters:
                continue
            target = min(voters, key=lambda v: leads.get(v, 0))
            if leads.get(target, 0) + 1 < leads[self.id]:
                return node, target
        return None

    @staticmethod
    def _members_voters(node: RaftNode) -> list[str]:
        try:
            return sorted(node.membership().voters)
        except RaftError:
            return []

    async def _hand_over(self, node: RaftNode, target: str) -> None:
        try:
            await node.transfer_leadership(target)
            self.metrics["leader_transfers"] += 1
        except (RaftError, TimeoutError) as exc:
            log.debug("host %s: leadership transfer to %s failed: %r", self.id, target, exc)

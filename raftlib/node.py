"""RaftNode: the asyncio driver that owns the core, the storage, the transport and the state machine.

This is the only place where the event loop, files and sockets meet the
protocol. It runs the core's ready/advance loop (docs/core.md):

1. messages that may go out at once are handed to the transport, while
2. the Ready's entries and hard state are written with one fsync in a worker
   thread (proposals arriving meanwhile batch into the next Ready: group
   commit);
3. then acknowledgements and vote grants are sent, committed entries are
   applied to the state machine in order, and the futures of ``propose()``
   resolve with ``apply``'s return value.

Example::

    node = raftlib.RaftNode(
        "n1",
        members={"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"},
        state_machine=Counter(),
        data_dir="data/n1",
    )
    async with node:
        value = await node.propose(b"5")
        await node.read_barrier()          # then read the state machine: linearizable
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from raftlib._accel import ENTRY_CONF_CHANGE, ENTRY_NORMAL
from raftlib.core import (
    Change,
    ChangeKind,
    ConfChange,
    Config,
    Entry,
    Message,
    MessageType,
    PersistentState,
    RawNode,
    Ready,
    Role,
    SnapshotMeta,
)
from raftlib.errors import (
    ConfigError,
    NodeStopped,
    NotLeader,
    ProposalDropped,
    RaftError,
    StateMachineError,
    StorageCorrupted,
)
from raftlib.statemachine import SnapshotWriter, StateMachine

log = logging.getLogger("raftlib.node")

_SNAPSHOT_HEADER = struct.Struct("<4sI")
_SNAPSHOT_MAGIC = b"RLSN"


class _TransferRejected(Exception):
    """A snapshot received from the leader failed its integrity checks when installed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class NodeConfig:
    """Tunables of a :class:`RaftNode` (times in seconds, counts in ticks/entries/bytes)."""

    tick_interval: float = 0.1
    """Seconds per logical tick: the heartbeat interval is ``heartbeat_tick`` ticks."""
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    read_only: str = "safe"
    forward_proposals: bool = False
    """Proposals on a follower travel to the leader instead of raising NotLeader."""
    max_msg_bytes: int = 1 << 20
    max_msg_entries: int = 4096
    max_inflight: int = 256
    max_uncommitted_bytes: int = 64 << 20
    snapshot_entries: int = 10_000
    snapshot_trailing_entries: int = 5_000
    snapshot_chunk_bytes: int = 1 << 20
    auto_snapshot: bool = True
    """Take a snapshot and compact the log when ``snapshot_entries`` were applied."""
    fsync: bool = True
    """Never turn off in production: acknowledged writes could be lost on power failure."""
    inline_sync_below: float = 0.002
    """Write and fsync the log on the event loop itself while recent writes took less than this
    many seconds on average (default 2 ms): on a fast disk one write costs less than handing it
    to the I/O thread and back (two thread wake-ups and a GIL hand-over, often 0.5 ms or more on
    a busy machine). Slower writes go to the I/O thread, so the loop keeps serving while the
    disk works. ``0`` always uses the I/O thread."""
    cluster_id: str = "raftlib"
    """Peers of another cluster are refused at the handshake."""
    tls: Any = None
    """A ``raftlib.transport.tls.TlsConfig`` for mutually authenticated peer TLS."""
    rng_seed: int | None = None

    def raft_config(self, node_id: str, voters: list[str], join: bool) -> Config:
        return Config(
            node_id,
            voters=[] if join else voters,
            join=join,
            election_tick=self.election_tick,
            heartbeat_tick=self.heartbeat_tick,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            read_only=self.read_only,
            forward_proposals=self.forward_proposals,
            max_msg_bytes=self.max_msg_bytes,
            max_msg_entries=self.max_msg_entries,
            max_inflight=self.max_inflight,
            max_uncommitted_bytes=self.max_uncommitted_bytes,
            snapshot_entries=self.snapshot_entries,
            snapshot_trailing_entries=self.snapshot_trailing_entries,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
        )


@dataclass(frozen=True)
class LeaderChange:
    """An observed change of leadership: ``leader`` is None while there is none."""

    leader: str | None
    term: int
    address: str | None = None


_T = TypeVar("_T")


_INLINE_MAX_ENTRIES = 1
"""A write of more entries than this means concurrent clients: it goes to the I/O thread, so
the loop keeps taking requests during the fsync (measured: 10-15 % more puts/s at 256 clients)."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _await_future(fut: asyncio.Future[_T], timeout: float | None) -> _T:
    """``await fut``, failing it with TimeoutError after ``timeout`` seconds.

    The hot-path replacement for ``asyncio.wait_for`` on a future this node
    resolves itself: no extra task or wrapper future per call. Whoever resolves
    ``fut`` must skip it when it is already done (timed out or cancelled).
    """
    if timeout is None:
        return await fut
    handle = asyncio.get_running_loop().call_later(max(0.0, timeout), _expire, fut)
    try:
        return await fut
    finally:
        handle.cancel()


@dataclass
class _Waiters:
    """Futures waiting for the applied index to reach a value."""

    heap: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)
    seq: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]

    def add(self, index: int, fut: asyncio.Future[None]) -> None:
        heapq.heappush(self.heap, (index, next(self.seq), fut))

    def release(self, applied: int) -> None:
        while self.heap and self.heap[0][0] <= applied:
            _, _, fut = heapq.heappop(self.heap)
            if not fut.done():
                fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        for _, _, fut in self.heap:
            if not fut.done():
                fut.set_exception(exc)
        self.heap.clear()


class RaftNode:
    """A member of a Raft cluster, running on the caller's event loop.

    ``members`` maps node ids to ``host:port`` peer addresses; it bootstraps a
    new cluster (every initial member is given the same map) and is ignored
    when ``data_dir`` already holds state. A node joining an existing cluster
    passes ``join=True`` and the addresses it knows; the leader adds it with
    :meth:`add_member`.

    ``data_dir=None`` keeps everything in memory (tests only: nothing survives
    a restart). ``transport`` and ``storage`` may be given to replace the TCP
    transport and the disk storage (the in-memory ones in tests).
    """

    def __init__(
        self,
        node_id: str,
        members: dict[str, str],
        state_machine: StateMachine,
        data_dir: str | os.PathLike[str] | None = None,
        config: NodeConfig | None = None,
        *,
        join: bool = False,
        transport: Any = None,
        storage: Any = None,
        on_leader_change: Callable[[LeaderChange], Any] | None = None,
    ) -> None:
        if not node_id or not isinstance(node_id, str):
            raise ConfigError("node_id must be a non-empty string")
        if not join and node_id not in members:
            raise ConfigError(f"node {node_id!r} is not in members {sorted(members)}")
        if node_id not in members and transport is None:
            raise ConfigError(f"members must give the address node {node_id!r} listens on")
        self.id = node_id
        self.config = config or NodeConfig()
        if not self.config.inline_sync_below >= 0:  # (NaN fails too)
            raise ConfigError(f"inline_sync_below must be >= 0 seconds, not {self.config.inline_sync_below}")
        self._initial_members = dict(members)
        self._join = join
        self._sm = state_machine
        self._data_dir = os.fspath(data_dir) if data_dir is not None else None
        self._storage = storage
        self._transport = transport
        self._flush_transport: Callable[[], None] | None = None
        self._on_leader_change = on_leader_change
        self._addresses: dict[str, str] = dict(members)
        self._core: RawNode | None = None
        self._applied = 0
        self._running = False
        self._failure: BaseException | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main_tasks: list[asyncio.Task[Any]] = []
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._snapshotter: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._pending_ctx: dict[bytes, asyncio.Future[Any]] = {}
        self._pending_reads: dict[bytes, asyncio.Future[tuple[int, bool]]] = {}
        self._applied_waiters = _Waiters()
        self._ctx_counter = itertools.count(1)
        self._listeners: list[asyncio.Queue[LeaderChange]] = []
        self._leader: str | None = None
        self._snapshot_lock: asyncio.Lock | None = None
        self._unsaved_hard_state: Any = None
        self._snapshotting = False
        self._storage_lock = threading.Lock()
        """Held by every storage call: inline writes on the loop never overlap the I/O thread's."""
        self._persist_seconds = 0.0
        self.metrics: dict[str, float] = {
            "proposals_committed": 0,
            "proposals_applied": 0,
            "proposals_failed": 0,
            "leader_changes": 0,
            "fsync_count": 0,
            "fsync_seconds_total": 0.0,
            "fsync_inline_count": 0,
            "snapshots_taken": 0,
            "snapshots_installed": 0,
        }

    # -- life cycle ------------------------------------------------------------------

    async def __aenter__(self) -> RaftNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Recover from ``data_dir`` (or bootstrap), connect to peers and begin serving."""
        if self._running:
            return
        self._wake = asyncio.Event()
        self._snapshot_lock = asyncio.Lock()
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-{self.id}-io")
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-{self.id}-rd")
        self._snapshotter = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"raft-{self.id}-snap"
        )
        if self._storage is None:
            from raftlib.storage import DiskStorage, MemoryStorage

            if self._data_dir is None:
                self._storage = MemoryStorage()
            else:
                self._storage = DiskStorage(self._data_dir, fsync=self.config.fsync)
        state: PersistentState = await self._in_io_thread(self._storage.load)
        applied = 0
        if state.snapshot is not None:
            self._set_addresses(await self._in_io_thread(self._restore_from_storage, state.snapshot.index))
            applied = state.snapshot.index
        fresh = state.snapshot is None and not state.entries and state.hard_state.term == 0
        voters = sorted(self._initial_members) if fresh and not self._join else []
        if not fresh and not state.snapshot and not self._join:
            # Restarting without a snapshot: the configuration is replayed from the
            # log, starting from the bootstrap members.
            voters = sorted(self._initial_members)
        rng = random.Random(self.config.rng_seed) if self.config.rng_seed is not None else random.Random()
        cfg = self.config.raft_config(self.id, voters, join=self._join and not voters)
        self._core = RawNode(cfg, state, rng=rng, applied=applied)
        self._applied = applied
        if self._transport is None:
            from raftlib.transport.tcp import TcpTransport

            self._transport = TcpTransport(
                self.id,
                listen=self._addresses[self.id],
                peers=self._peer_addresses(),
                cluster_id=self.config.cluster_id,
                ssl=self.config.tls,
            )
        else:
            self._transport.set_peers(self._peer_addresses())
        await self._transport.start(self._on_message)
        # Optional in the Transport protocol: write queued messages before the loop blocks.
        self._flush_transport = getattr(self._transport, "flush", None)
        self._running = True
        self._failure = None
        self._main_tasks = [
            asyncio.create_task(self._ticker(), name=f"raft-{self.id}-tick"),
            asyncio.create_task(self._ready_loop(), name=f"raft-{self.id}-ready"),
        ]
        self._wake.set()
        log.info("node %s started (term %d, commit %d)", self.id, self._core.term, self._core.commit_index)

    async def stop(self) -> None:
        """Stop serving: cancel and await every task, close sockets and files.

        Pending proposals and reads fail with :class:`NodeStopped`. Idempotent.
        """
        was_running = self._running
        self._running = False
        tasks = self._main_tasks + list(self._tasks)
        self._main_tasks = []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._transport is not None and was_running:
            await self._transport.stop()
        loop = asyncio.get_running_loop()
        if self._unsaved_hard_state is not None and self._io is not None and self._failure is None:
            hs, self._unsaved_hard_state = self._unsaved_hard_state, None
            with contextlib.suppress(OSError, RaftError):
                await self._in_io_thread(self._storage.save, hs, [])
        for ex in (self._io, self._reader, self._snapshotter):
            if ex is not None:
                await loop.run_in_executor(None, ex.shutdown, True)
        self._io = self._reader = self._snapshotter = None
        if self._storage is not None and was_running:
            self._storage.close()
        self._fail_pending(NodeStopped("failed" if self._failure else "stopped"))
        for q in self._listeners:
            q.put_nowait(LeaderChange(None, -1))

    @property
    def running(self) -> bool:
        return self._running

    # -- public operations -------------------------------------------------------------

    def _check_running(self) -> RawNode:
        if self._failure is not None:
            raise NodeStopped(f"failed: {self._failure!r}") from self._failure
        if not self._running or self._core is None:
            raise NodeStopped("not started" if self._core is None else "stopped")
        return self._core

    def _not_leader(self) -> NotLeader:
        lead = self._core.leader if self._core else None
        return NotLeader(lead, self._addresses.get(lead) if lead else None)

    async def propose(self, command: bytes, timeout: float | None = None) -> Any:
        """Replicate ``command``; returns the state machine's ``apply`` result on this node.

        Raises NotLeader (with the leader's id and address) on a follower unless
        ``forward_proposals`` is on; ProposalDropped when the entry was lost to
        a leadership change (it was not applied); UncommittedLimitExceeded under
        back-pressure; TimeoutError when ``timeout`` passed (the outcome is then
        unknown: the command may still be applied).
        """
        core = self._check_running()
        if not isinstance(command, bytes | bytearray | memoryview):
            raise TypeError(f"command must be bytes, not {type(command).__name__}")
        command = bytes(command)
        if not command:
            raise ValueError("empty commands are reserved for the leader's no-op entries")
        if core.leader is None:
            # During an election: wait for its outcome (like etcd) rather than fail at once.
            await self.wait_leader(timeout if timeout is not None else self._leader_wait())
            core = self._check_running()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if core.role is Role.LEADER:
            index, term = core.propose(command)
            self._pending[index] = (term, fut)
        elif self.config.forward_proposals and core.leader is not None:
            ctx = self._new_context()
            core.propose_with_context(command, ctx)
            self._pending_ctx[ctx] = fut
        else:
            raise self._not_leader()
        self._wake.set()
        return await _await_future(fut, timeout)

    def _leader_wait(self) -> float:
        """How long calls wait for an election to produce a leader: two election timeouts."""
        return 4 * self.config.election_tick * self.config.tick_interval

    async def wait_leader(self, timeout: float | None = None) -> str:
        """Wait until this node knows a leader; returns its id.

        Raises NotLeader(None) when no leader emerged within ``timeout``
        (default: two maximal election timeouts).
        """
        limit = timeout if timeout is not None else self._leader_wait()
        deadline = time.monotonic() + limit
        while True:
            core = self._check_running()
            if core.leader is not None:
                return core.leader
            if time.monotonic() >= deadline:
                raise NotLeader(None)
            await asyncio.sleep(min(self.config.tick_interval, max(0.0, deadline - time.monotonic())))

    async def read_barrier(self, timeout: float | None = 5.0) -> int:
        """Wait until a linearizable read is safe on this node; returns the read index.

        Confirms (thesis §6.4 ReadIndex) that the leader was still the leader
        after this call began, then waits for this node to apply up to the
        leader's commit index. Reading the state machine afterwards observes
        every write acknowledged before the call. Works on followers too.
        """
        self._check_running()
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            core = self._check_running()
            ctx = self._new_context()
            fut: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
            try:
                core.read_index(ctx)
            except NotLeader:
                fut.set_result((0, False))
            else:
                self._pending_reads[ctx] = fut
                self._wake.set()
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                index, ok = await _await_future(fut, remaining)
            finally:
                self._pending_reads.pop(ctx, None)
            if ok:
                await self.wait_applied(index, None if deadline is None else deadline - time.monotonic())
                return index
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError("no leader confirmed the read in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def wait_applied(self, index: int, timeout: float | None = None) -> None:
        """Wait until this node has applied ``index``."""
        self._check_running()
        if self._applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.add(index, fut)
        await _await_future(fut, timeout)

    async def add_member(self, node_id: str, address: str, timeout: float | None = 30.0) -> None:
        """Add a voter safely: it joins as a learner and is promoted once caught up.

        Returns once it is a voter. The new node must be started with
        ``join=True``. Raises ConfChangeInProgress while another change is in flight.
        """
        await self._conf_change(Change(ChangeKind.ADD_MEMBER, node_id, address.encode()), timeout)

        async def promoted() -> None:
            while node_id not in self.membership().voters:
                await asyncio.sleep(self.config.tick_interval)

        await asyncio.wait_for(promoted(), timeout)

    async def add_learner(self, node_id: str, address: str, timeout: float | None = 30.0) -> None:
        """Add a non-voting member that receives the log (promote it later with :meth:`promote`)."""
        await self._conf_change(Change(ChangeKind.ADD_LEARNER, node_id, address.encode()), timeout)

    async def promote(self, node_id: str, timeout: float | None = 30.0) -> None:
        """Make a learner a voter."""
        await self._conf_change(Change(ChangeKind.ADD_VOTER, node_id), timeout)

    async def remove_member(self, node_id: str, timeout: float | None = 30.0) -> None:
        """Remove a voter or learner. Removing the leader hands leadership over once committed."""
        await self._conf_change(Change(ChangeKind.REMOVE, node_id), timeout)

    async def _conf_change(self, change: Change, timeout: float | None) -> None:
        core = self._check_running()
        if core.role is not Role.LEADER:
            raise self._not_leader()
        index, term = core.propose_conf_change(ConfChange((change,)))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[index] = (term, fut)
        self._wake.set()
        await asyncio.wait_for(fut, timeout)

    async def transfer_leadership(self, target: str, timeout: float | None = None) -> None:
        """Hand leadership to ``target`` (thesis §3.10); returns once it leads.

        Raises TimeoutError when the transfer was abandoned (after an election
        timeout, the target not having become leader).
        """
        core = self._check_running()
        core.transfer_leadership(target)
        self._wake.set()
        limit = timeout if timeout is not None else 2 * self.config.election_tick * self.config.tick_interval

        async def done() -> None:
            while self._core is not None and self._core.leader != target:
                await asyncio.sleep(self.config.tick_interval / 2)

        await asyncio.wait_for(done(), limit)

    async def snapshot(self) -> SnapshotMeta:
        """Snapshot the state machine now and compact the log behind it."""
        self._check_running()
        assert self._snapshot_lock is not None
        async with self._snapshot_lock:
            return await self._take_snapshot()

    def status(self) -> dict[str, Any]:
        """Role, term, leader, commit/applied index, members, per-peer progress on the leader."""
        if self._core is None:
            return {"id": self.id, "running": False}
        st = self._core.status()
        st["applied"] = self._applied
        st["running"] = self._running
        st["leader_address"] = self._addresses.get(st["leader"]) if st["leader"] else None
        st["members"] = dict(sorted(self._addresses.items()))
        st["failure"] = repr(self._failure) if self._failure else None
        return st

    def membership(self) -> Any:
        """The configuration in force (voters, learners, ...)."""
        return self._check_running().membership

    @property
    def transport_stats(self) -> dict[str, int]:
        """The transport's counters (sent, received, dropped, reconnects, bad_frames,
        rejected_handshakes, ...): refused peers and garbage show up here."""
        stats = getattr(self._transport, "stats", None)
        return dict(stats) if stats else {}

    @property
    def leader(self) -> str | None:
        return self._core.leader if self._core else None

    @property
    def is_leader(self) -> bool:
        return self._core is not None and self._core.role is Role.LEADER

    def address_of(self, node_id: str) -> str | None:
        return self._addresses.get(node_id)

    async def leader_changes(self) -> AsyncIterator[LeaderChange]:
        """Iterate over leadership changes as this node observes them, until it stops."""
        q: asyncio.Queue[LeaderChange] = asyncio.Queue()
        self._listeners.append(q)
        try:
            if self._core is not None:
                yield LeaderChange(self._leader, self._core.term, self._addresses.get(self._leader or ""))
            while True:
                change = await q.get()
                if change.term < 0:
                    return
                yield change
        finally:
            self._listeners.remove(q)

    # -- the driver loop -------------------------------------------------------------------

    def _new_context(self) -> bytes:
        return f"{self.id}:{next(self._ctx_counter)}".encode()

    def _peer_addresses(self) -> dict[str, str]:
        return {k: v for k, v in self._addresses.items() if k != self.id}

    def _on_message(self, m: Message) -> None:
        core = self._core
        if core is None or not self._running:
            return
        try:
            core.step(m)
        except (ValueError, RaftError) as exc:
            log.warning("node %s dropped message %r: %s", self.id, m, exc)
            return
        self._wake.set()

    async def _ticker(self) -> None:
        interval = self.config.tick_interval
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at < time.monotonic():
                next_at = time.monotonic() + interval  # fell behind (paused): do not burst
            assert self._core is not None
            self._core.tick()
            self._wake.set()

    async def _ready_loop(self) -> None:
        core = self._core
        assert core is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while core.has_ready():
                    rd = core.ready()
                    try:
                        await self._handle_ready(rd)
                    except _TransferRejected as exc:
                        # The leader's snapshot arrived damaged. Nothing of this Ready
                        # was made durable or acknowledged: go back to the durable state,
                        # exactly as a restart would, and the leader sends it again.
                        log.error("node %s: rejected a snapshot transfer: %s", self.id, exc.cause)
                        core = await self._reload_core()
                        continue
                    core.advance(rd)
                    self._after_advance()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fatal(exc)

    async def _reload_core(self) -> RawNode:
        """Rebuild the core from what is durable (as after a restart), keeping the state machine."""
        state: PersistentState = await self._in_io_thread(self._storage.load)
        assert self._core is not None
        self._core = RawNode(self._core.raft.config, state, rng=self._core.raft.rng, applied=self._applied)
        self._wake.set()
        return self._core

    def _fatal(self, exc: BaseException) -> None:
        log.critical("node %s stopped on a fatal error: %r", self.id, exc, exc_info=exc)
        self._failure = exc
        self._running = False
        err = exc if isinstance(exc, RaftError) else NodeStopped(f"failed: {exc!r}")
        self._fail_pending(err)
        for t in self._main_tasks:
            if t is not asyncio.current_task():
                t.cancel()

    def _fail_pending(self, exc: BaseException) -> None:
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        for fut in self._pending_ctx.values():
            if not fut.done():
                fut.set_exception(exc)
        for rfut in self._pending_reads.values():
            if not rfut.done():
                rfut.set_exception(exc)
        self._pending.clear()
        self._pending_ctx.clear()
        self._pending_reads.clear()
        self._applied_waiters.fail(exc)

    async def _handle_ready(self, rd: Ready) -> None:
        assert self._transport is not None and self._core is not None
        if rd.soft_state is not None:
            self._observe_leader(rd.soft_state.leader)
        # Appends without entries (a leader announcing its commit index, a probe) wait until
        # the committed entries are applied: nobody waits on them, while the callers of those
        # entries would otherwise have their answers queued behind two socket writes.
        now: list[Message] = []
        deferred: list[Message] = []
        for m in rd.messages:
            (deferred if m.type is MessageType.APPEND and not m.entries else now).append(m)
        self._send(now)
        if rd.must_sync() or rd.snapshot_chunks:
            if rd.hard_state is None:
                # A commit index held back earlier rides along with this write.
                rd.hard_state = self._unsaved_hard_state
            self._unsaved_hard_state = None
            started = time.perf_counter()
            if (
                self._persist_seconds < self.config.inline_sync_below
                and len(rd.entries) <= _INLINE_MAX_ENTRIES
                and not rd.snapshot_chunks
                and rd.snapshot is None
                and self._storage_lock.acquire(blocking=False)  # not while the I/O thread compacts
            ):
                if self._flush_transport is not None:
                    self._flush_transport()  # messages leave before the loop blocks on the disk
                try:
                    self._persist(rd)
                finally:
                    self._storage_lock.release()
                self.metrics["fsync_inline_count"] += 1
            else:
                await self._in_io_thread(self._persist, rd)
            if rd.must_sync():
                self.metrics["fsync_count"] += 1
                self.metrics["fsync_seconds_total"] += time.perf_counter() - started
        elif rd.hard_state is not None:
            # Only the commit index moved: nothing depends on it being durable
            # (it is learned again from the leader), so it waits for the next
            # write instead of costing a disk round trip on the commit path.
            self._unsaved_hard_state = rd.hard_state
        if rd.snapshot is not None:
            self._set_addresses(await self._in_io_thread(self._restore_from_storage, rd.snapshot.index))
            self._applied = rd.snapshot.index
            self._applied_waiters.release(self._applied)
            self.metrics["snapshots_installed"] += 1
            self._transport.set_peers(self._peer_addresses())
            for index in [i for i in self._pending if i <= rd.snapshot.index]:
                _, covered = self._pending.pop(index)
                if not covered.done():
                    # Applied inside the snapshot: we cannot know apply's result here.
                    covered.set_exception(ProposalDropped("snapshot_installed", f"index {index}"))
        if rd.persisted_messages:
            # Acknowledgements of what was just made durable: the leader is waiting on them.
            self._send(rd.persisted_messages)
            if self._flush_transport is not None:
                self._flush_transport()
        for res in rd.proposal_results:
            fut = self._pending_ctx.pop(res.context, None)
            if fut is None or fut.done():
                continue
            if res.error is not None:
                if res.error == "not_leader":
                    fut.set_exception(NotLeader(res.leader, self._addresses.get(res.leader or "")))
                else:
                    fut.set_exception(ProposalDropped(res.error))
            elif res.index <= self._applied:
                fut.set_exception(ProposalDropped("unknown_outcome", "applied before its ack arrived"))
            else:
                self._pending[res.index] = (res.term, fut)
        self._apply(rd.committed_entries)
        if deferred:
            self._send(deferred)
        for rs in rd.read_states:
            rfut = self._pending_reads.pop(rs.context, None)
            if rfut is not None and not rfut.done():
                rfut.set_result((rs.index, rs.ok))

    async def _in_io_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a storage call in the I/O thread, never at the same time as an inline write."""
        return await asyncio.get_running_loop().run_in_executor(self._io, self._locked, fn, *args)

    def _locked(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self._storage_lock:
            return fn(*args)

    def _persist(self, rd: Ready) -> None:
        """Everything of ``rd`` that must be durable, then one fsync: in the I/O thread, or on
        the loop while writes are fast (``inline_sync_below``); ``_persist_seconds`` is their
        moving average."""
        started = time.perf_counter()
        try:
            self._persist_ready(rd)
        finally:
            self._persist_seconds += (time.perf_counter() - started - self._persist_seconds) / 8

    def _persist_ready(self, rd: Ready) -> None:
        storage = self._storage
        for chunk in rd.snapshot_chunks:
            if chunk.offset == 0:
                storage.begin_incoming_snapshot(chunk.meta)
            storage.write_incoming_chunk(chunk.offset, chunk.data)
        if rd.snapshot is not None:
            try:
                storage.install_incoming_snapshot(rd.snapshot)
            except StorageCorrupted as exc:
                # The received bytes failed their checks: the transfer is bad, not our disk.
                raise _TransferRejected(exc) from exc
        if rd.hard_state is not None or rd.entries:
            storage.save(rd.hard_state, rd.entries)

    def _send(self, msgs: list[Message]) -> None:
        if not msgs:
            return
        plain = []
        for m in msgs:
            if m.type is MessageType.SNAPSHOT:
                self._spawn(self._send_snapshot_chunk(m))
            else:
                plain.append(m)
        if plain:
            assert self._transport is not None
            self._transport.send(plain)

    async def _send_snapshot_chunk(self, m: Message) -> None:
        assert m.snapshot is not None and self._core is not None
        loop = asyncio.get_running_loop()
        try:
            data, done = await loop.run_in_executor(
                self._reader,
                self._storage.read_snapshot_chunk,
                m.snapshot.index,
                m.offset,
                self.config.snapshot_chunk_bytes,
            )
        except (OSError, RaftError) as exc:
            log.warning("node %s cannot read snapshot %d for %s: %s", self.id, m.snapshot.index, m.to, exc)
            self._core.report_snapshot_failure(m.to)
            self._wake.set()
            return
        m.data, m.done = data, done
        assert self._transport is not None
        self._transport.send([m])

    def _apply(self, entries: list[Entry]) -> None:
        for e in entries:
            result: Any = None
            if e.type == ENTRY_CONF_CHANGE:
                self._apply_addresses(e)
            elif e.type == ENTRY_NORMAL and e.data:
                try:
                    result = self._sm.apply(e.data, e.index)
                except Exception as exc:
                    raise StateMachineError(e.index, exc) from exc
                self.metrics["proposals_applied"] += 1
            self._applied = e.index
            waiting = self._pending.pop(e.index, None)
            if waiting is not None:
                term, fut = waiting
                if fut.done():
                    continue
                if term == e.term:
                    fut.set_result(result)
                    self.metrics["proposals_committed"] += 1
                else:
                    # §5.3: another leader's entry took this index: ours was lost.
                    lost = ProposalDropped("leadership_lost", f"index {e.index} has term {e.term}")
                    fut.set_exception(lost)
                    self.metrics["proposals_failed"] += 1
        if entries:
            self._applied_waiters.release(self._applied)

    def _apply_addresses(self, e: Entry) -> None:
        try:
            cc = ConfChange.decode(e.data)
        except RaftError:
            return
        for ch in cc.changes:
            if ch.kind is ChangeKind.REMOVE:
                if ch.node_id != self.id:
                    self._addresses.pop(ch.node_id, None)
            elif ch.context:
                self._addresses[ch.node_id] = ch.context.decode(errors="replace")
        if self._transport is not None:
            self._transport.set_peers(self._peer_addresses())

    def _after_advance(self) -> None:
        core = self._core
        assert core is not None
        if (
            self.config.auto_snapshot
            and not self._snapshotting
            and core.should_snapshot()
            and self._running
        ):
            self._snapshotting = True
            self._spawn(self._auto_snapshot())

    def _observe_leader(self, leader: str | None) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        assert self._core is not None
        change = LeaderChange(leader, self._core.term, self._addresses.get(leader) if leader else None)
        if leader is not None:
            self.metrics["leader_changes"] += 1
        log.info("node %s: leader is now %s (term %d)", self.id, leader, change.term)
        for q in self._listeners:
            q.put_nowait(change)
        if self._on_leader_change is not None:
            try:
                self._on_leader_change(change)
            except Exception:
                log.exception("on_leader_change callback failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- snapshots ------------------------------------------------------------------------------

    async def _auto_snapshot(self) -> None:
        try:
            assert self._snapshot_lock is not None
            async with self._snapshot_lock:
                await self._take_snapshot()
        except NotImplementedError as exc:
            log.warning("node %s: automatic snapshot disabled: %s", self.id, exc)
            self.config = replace(self.config, auto_snapshot=False)
        except (OSError, RaftError) as exc:
            log.error("node %s: snapshot failed: %r", self.id, exc)
        except Exception:  # the state machine's snapshot() or its writer raised; a later apply retries
            log.exception("node %s: snapshot failed in the state machine's writer", self.id)
        finally:
            self._snapshotting = False

    async def _take_snapshot(self) -> SnapshotMeta:
        core = self._check_running()
        index = self._applied
        if core.snapshot_meta is not None and core.snapshot_meta.index >= index:
            return core.snapshot_meta
        captured = self._sm.snapshot()  # on the loop, between applies: point in time
        header = json.dumps({"addresses": self._addresses_at_snapshot()}).encode()
        meta = core.snapshot_meta_at(index)
        loop = asyncio.get_running_loop()
        try:
            # Not the WAL's thread: appends and acks go on while the snapshot is written.
            await loop.run_in_executor(self._snapshotter, self._write_snapshot, meta, header, captured)
        finally:
            if isinstance(captured, SnapshotWriter):
                captured.release()
        core.compact(index)
        first = core.first_index()
        await self._in_io_thread(self._storage.compact, first)
        self.metrics["snapshots_taken"] += 1
        log.info("node %s: snapshot at %d, log compacted to %d", self.id, index, first)
        return meta

    def _addresses_at_snapshot(self) -> dict[str, str]:
        return dict(self._addresses)

    def _write_snapshot(self, meta: SnapshotMeta, header: bytes, captured: bytes | SnapshotWriter) -> None:
        head = _SNAPSHOT_HEADER.pack(_SNAPSHOT_MAGIC, len(header)) + header
        if isinstance(captured, SnapshotWriter):
            # Streamed from the writer into the snapshot file, never whole in memory.
            body = captured.chunks()
            try:
                self._storage.save_snapshot(meta, itertools.chain((head,), body))
            finally:
                close = getattr(body, "close", None)  # a generator: end it if storage failed
                if close is not None:
                    close()
        elif isinstance(captured, bytes | bytearray):
            self._storage.save_snapshot(meta, (head, bytes(captured)))
        else:
            kind = type(captured).__name__
            raise TypeError(f"snapshot() must return bytes or a SnapshotWriter, not {kind}")

    def _set_addresses(self, addresses: dict[str, str]) -> None:
        """Adopt the peer addresses recorded in a snapshot (keeping our own)."""
        own = self._addresses.get(self.id)
        self._addresses = dict(addresses)
        if own is not None:
            self._addresses[self.id] = own

    def _restore_from_storage(self, index: int) -> dict[str, str]:
        """In the I/O thread: restore the state machine from a stored snapshot; returns its addresses."""
        with self._storage.open_snapshot(index) as f:
            head = f.read(_SNAPSHOT_HEADER.size)
            magic, size = _SNAPSHOT_HEADER.unpack(head) if len(head) == _SNAPSHOT_HEADER.size else (b"", 0)
            if magic != _SNAPSHOT_MAGIC:
                raise RaftError(f"snapshot {index} was not written by raftlib (bad header)")
            info = json.loads(f.read(size))
            addresses: dict[str, str] = info.get("addresses", {})
            self._sm.restore_stream(f)
        return addresses


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when uvloop is installed; returns True if it is."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


__all__ = ["LeaderChange", "NodeConfig", "RaftNode", "install_uvloop"]

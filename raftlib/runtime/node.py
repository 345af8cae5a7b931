"""RaftNode: one Raft group's member, driving the core on the caller's event loop.

Owns the group's core (``RawNode``), its ready/advance loop, its ticker and the tasks
it spawns, and wires the runtime's other parts together:

* :mod:`raftlib.runtime.persist`: the storage stage (WAL writes, one fsync per Ready);
* :mod:`raftlib.runtime.requests`: every caller waiting on the node, and the rules that
  make each wait end;
* :mod:`raftlib.runtime.snapshots`: the snapshot file layout, capture and restore;
* the transport (``raftlib.transport``) and the user's state machine.

One Ready at a time (docs/core.md, docs/runtime.md):

1. messages that may go out at once are handed to the transport, while
2. the Ready's entries and hard state are written with one fsync (proposals arriving
   meanwhile batch into the next Ready: group commit);
3. then acknowledgements and vote grants are sent, committed entries are applied to the
   state machine in order, and the futures of ``propose()`` resolve with ``apply``'s
   return value.

Who handles a Ready: one ``_drain()`` callback per loop turn (``_kick()``) handles every
Ready that needs no await (asynchronous writes, no snapshot) on the spot; the others go to
the ready-loop task. Exactly one of the two handles Readies at any time (``_drain()`` runs
only while the task is parked).

Invariants: only durable entries are acknowledged (step 3 follows step 2); entries are
applied once each, in log order; every task the node starts is cancelled and awaited in
:meth:`RaftNode.stop`; every public coroutine has a deadline.

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
import itertools
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from raftlib._accel import ENTRY_CONF_CHANGE, ENTRY_NORMAL
from raftlib.core import (
    Change,
    ChangeKind,
    ConfChange,
    Entry,
    Membership,
    Message,
    MessageType,
    PersistentState,
    RawNode,
    Ready,
    Role,
    SnapshotMeta,
)
from raftlib.errors import (
    ConfChangeError,
    ConfigError,
    LeadershipLost,
    NodeStopped,
    NotLeader,
    RaftError,
    RequestTimeout,
    StateMachineError,
)
from raftlib.observe import Observer, observer_set
from raftlib.runtime import membership as _membership
from raftlib.runtime.config import LeaderChange, NodeConfig
from raftlib.runtime.membership import MemberChange
from raftlib.runtime.persist import StorageStage, TransferRejected, WriteQueue
from raftlib.runtime.requests import Requests, await_request
from raftlib.runtime.snapshots import restore_snapshot, write_snapshot
from raftlib.runtime.tasks import cancel_and_wait
from raftlib.statemachine import SnapshotWriter, StateMachine
from raftlib.transport.peerauth import check_peer_secret

if TYPE_CHECKING:
    from raftlib.admin.endpoint import AdminEndpoint
    from raftlib.storage.base import Storage
    from raftlib.transport.base import Transport

log = logging.getLogger("raftlib.node")


@dataclass
class GroupServices:
    """What a :class:`~raftlib.RaftHost` lends each of its groups instead of per-node resources."""

    key: str
    """The group id: this group's key in the shared log's records."""
    queue: WriteQueue
    """The host's write queue: one batch, one fsync, for every group's writes of a loop turn."""
    reader: concurrent.futures.ThreadPoolExecutor
    snapshotter: concurrent.futures.ThreadPoolExecutor
    wake: Callable[[RaftNode], None]
    """Resume ticking a quiesced group (called on a proposal, a read, a message, a transfer)."""


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
    ``observers`` are told of the node's events (:class:`raftlib.Observer`,
    docs/observability.md).
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
        transport: Transport | None = None,
        storage: Storage | None = None,
        on_leader_change: Callable[[LeaderChange], Any] | None = None,
        observers: Iterable[Observer] | None = None,
        services: GroupServices | None = None,
    ) -> None:
        if not node_id or not isinstance(node_id, str):
            raise ConfigError("node_id must be a non-empty string")
        if not join and node_id not in members:
            raise ConfigError(f"node {node_id!r} is not in members {sorted(members)}")
        if node_id not in members and transport is None:
            raise ConfigError(f"members must give the address node {node_id!r} listens on")
        self.id = node_id
        self.config = config or NodeConfig()
        self.config.validate()
        self._default_timeout = self.config.default_request_timeout()
        if self.config.peer_secret is not None:
            check_peer_secret(self.config.peer_secret)  # ConfigError now rather than at start()
        self._initial_members = dict(members)
        self._join = join
        self._sm = state_machine
        self._data_dir = os.fspath(data_dir) if data_dir is not None else None
        self._storage = storage
        self._stage: StorageStage | None = None
        self._services = services
        """Set when a RaftHost runs this node as one of its groups: shared write queue, threads,
        ticker and quiescence (raftlib/runtime/host.py)."""
        self.quiesced = False
        """True while the host stopped ticking this group (nothing to do; see docs/host.md)."""
        self._pipelined = self.config.async_storage_writes
        self._transport = transport
        self._flush_transport: Callable[[], None] | None = None
        self._on_leader_change = on_leader_change
        self._addresses: dict[str, str] = dict(members)
        self._core: RawNode | None = None
        self._applied = 0
        self._running = False
        self._failure: BaseException | None = None
        self._wake = asyncio.Event()
        """Wakes the ready-loop task (the slow path: Readies that await; see :meth:`_kick`)."""
        self._kick_scheduled = False
        """A :meth:`_drain` is scheduled for this loop turn."""
        self._loop_busy = False
        """The ready-loop task is handling Readies (not parked on ``_wake``)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main_tasks: list[asyncio.Task[Any]] = []
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._snapshotter: concurrent.futures.ThreadPoolExecutor | None = None
        self._requests = Requests(self.config.default_forward_timeout())
        self._ctx_counter = itertools.count(1)
        self._listeners: list[asyncio.Queue[LeaderChange]] = []
        self._leader: str | None = None
        self._snapshot_lock: asyncio.Lock | None = None
        self._snapshotting = False
        self.admin: AdminEndpoint | None = None
        """The admin endpoint while running, when ``config.admin_address`` is set (docs/admin.md)."""
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
        self._observer = observer_set(observers)
        """Gets the node's events (docs/observability.md); None: no observer, every event skipped."""
        if self._observer is not None:
            self._observer.attach(self)

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
        self._kick_scheduled = self._loop_busy = False  # a drain of an earlier loop never ran
        self._snapshot_lock = asyncio.Lock()
        services = self._services
        if services is None:
            self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-{self.id}-rd")
            self._snapshotter = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"raft-{self.id}-snap"
            )
        else:
            self._reader, self._snapshotter = services.reader, services.snapshotter
        if self._storage is None:
            from raftlib.storage import DiskStorage, MemoryStorage

            if self._data_dir is None:
                self._storage = MemoryStorage()
            else:
                self._storage = DiskStorage(self._data_dir, fsync=self.config.fsync)
        stage = StorageStage(
            self._storage, self.id, self.config.inline_sync_below, self.metrics,
            queue=services.queue if services is not None else None,
            key=services.key if services is not None else None,
        )
        stage.pipeline(self._on_durable, self._flush, self._fatal)
        stage.observer = self._observer
        self._stage = stage
        state: PersistentState = await stage.call(self._storage.load)
        applied = 0
        if state.snapshot is not None:
            restored = await stage.call(restore_snapshot, self._storage, state.snapshot.index, self._sm)
            self._set_addresses(restored)
            applied = state.snapshot.index
        fresh = state.snapshot is None and not state.entries and state.hard_state.term == 0
        voters = sorted(self._initial_members) if fresh and not self._join else []
        if not fresh and not state.snapshot and not self._join:
            # Restarting without a snapshot: the configuration is replayed from the
            # log, starting from the bootstrap members.
            voters = sorted(self._initial_members)
        rng = random.Random(self.config.rng_seed) if self.config.rng_seed is not None else random.Random()
        cfg = self.config.raft_config(self.id, voters, join=self._join and not voters)
        self._pipelined = cfg.async_storage_writes
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
                peer_secret=self.config.peer_secret,
            )
        else:
            self._transport.set_peers(self._peer_addresses())
        await self._transport.start(self._on_message)
        # Optional in the Transport protocol: write queued messages before the loop blocks.
        self._flush_transport = getattr(self._transport, "flush", None)
        self._running = True
        self._failure = None
        self._main_tasks = [asyncio.create_task(self._ready_loop(), name=f"raft-{self.id}-ready")]
        if services is None:
            self._main_tasks.append(asyncio.create_task(self._ticker(), name=f"raft-{self.id}-tick"))
        self.quiesced = False
        self._wake.set()
        if self.config.admin_address is not None:
            from raftlib.admin.endpoint import AdminEndpoint

            self.admin = AdminEndpoint(self, self.config.admin_address)
            try:
                await self.admin.start()
            except BaseException:
                await self.stop()
                raise
        log.info("node %s started (term %d, commit %d)", self.id, self._core.term, self._core.commit_index)

    async def stop(self) -> None:
        """Stop serving: cancel and await every task, close sockets and files.

        Pending proposals and reads fail with :class:`NodeStopped`. Idempotent.
        """
        was_running = self._running
        self._running = False
        if self.admin is not None:
            admin, self.admin = self.admin, None
            await admin.stop()
        tasks = self._main_tasks + list(self._tasks)
        self._main_tasks = []
        await cancel_and_wait(tasks)
        self._tasks.clear()
        if self._transport is not None and was_running:
            await self._transport.stop()
        loop = asyncio.get_running_loop()
        for ex in (self._reader, self._snapshotter) if self._services is None else ():
            if ex is not None:
                await loop.run_in_executor(None, ex.shutdown, True)
        self._reader = self._snapshotter = None
        if self._stage is not None:
            stage, self._stage = self._stage, None
            await stage.close(save_pending=was_running and self._failure is None, close_storage=was_running)
        self._requests.fail_all(NodeStopped("failed" if self._failure else "stopped"))
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

    def _limit(self, timeout: float | None) -> float | None:
        """Seconds a call may wait: ``timeout``, or the configured default when None;
        None (no deadline) for ``math.inf``."""
        if timeout is None:
            timeout = self._default_timeout
        elif not timeout >= 0:  # negative or NaN
            raise ValueError(f"timeout must be >= 0 seconds (math.inf: no deadline), not {timeout}")
        return None if math.isinf(timeout) else timeout

    async def propose(self, command: bytes, timeout: float | None = None) -> Any:
        """Replicate ``command``; returns the state machine's ``apply`` result on this node.

        Every call ends. ``timeout`` is the deadline in seconds; ``None`` uses
        ``NodeConfig.request_timeout`` (by default 5 s plus two election
        timeouts, etcd's rule), ``math.inf`` waits without one. It raises:

        * :class:`~raftlib.NotLeader` (with the leader's id and address) on a
          follower unless ``forward_proposals`` is on, or when no leader emerged
          within two election timeouts;
        * :class:`~raftlib.LeadershipLost` when the leader holding the entry
          stepped down (or, on a follower, the leader it forwarded to is no
          longer followed) before the entry committed. Its
          ``may_still_commit`` says whether the entry can still be applied
          (``True``: it sits in a log and the next leader may commit it) or
          certainly was not (``False``: another leader's entry took its index);
        * :class:`~raftlib.ProposalDropped` when the entry never entered the
          log (``transfer_pending``, a refused forward) or a forward was lost
          (``forward_lost``, ``may_still_commit=True``);
        * :class:`~raftlib.UncommittedLimitExceeded` under back-pressure;
        * :class:`~raftlib.RequestTimeout` (a ``TimeoutError``) when the
          deadline passed: the outcome is unknown, the entry may still be applied;
        * :class:`~raftlib.NodeStopped` when the node stops meanwhile.

        Cancelling the call (``task.cancel()``, or an outer ``wait_for``)
        stops the wait only: an entry already handed to the core stays in the
        log and may still be committed and applied. The node forgets the call
        either way, so nothing accumulates.
        """
        core = self._check_running()
        if type(command) is not bytes:
            if not isinstance(command, bytes | bytearray | memoryview):
                raise TypeError(f"command must be bytes, not {type(command).__name__}")
            command = bytes(command)
        if not command:
            raise ValueError("empty commands are reserved for the leader's no-op entries")
        limit = self._limit(timeout)
        if self.quiesced:
            self._activity()
        loop = asyncio.get_running_loop()
        # The default deadline is swept by the ticker (no timer per call); explicit ones get a timer.
        swept = timeout is None and limit is not None
        if core.leader is None:
            # During an election: wait for its outcome (like etcd) rather than fail at once.
            started = loop.time()
            wait = self._leader_wait() if limit is None else min(limit, self._leader_wait())
            await self.wait_leader(wait)
            core = self._check_running()
            if limit is not None:
                limit = max(0.0, limit - (loop.time() - started))
        fut: asyncio.Future[Any] = loop.create_future()
        index = 0
        ctx: bytes | None = None
        deadline = loop.time() + limit if swept and limit is not None else math.inf
        if core.role is Role.LEADER:
            index, term = core.propose(command)
            self._requests.add_proposal(index, term, fut, deadline)
        elif self.config.forward_proposals and core.leader is not None:
            ctx = self._new_context()
            core.propose_with_context(command, ctx)
            self._requests.add_forwarded(ctx, fut, loop.time(), deadline)
        else:
            raise self._not_leader()
        self._kick()
        try:
            if swept:
                return await fut
            return await await_request(fut, limit, "propose", index)
        except BaseException as exc:
            # Timed out or cancelled (or failed, and already forgotten): forget the caller.
            self._requests.forget_proposal(index, ctx, fut)
            if self._observer is not None:
                self._observer.proposal_failed(self.id, exc)
            raise

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

    async def read_barrier(self, timeout: float | None = None) -> int:
        """Wait until a linearizable read is safe on this node; returns the read index.

        Confirms (thesis §6.4 ReadIndex) that the leader was still the leader
        after this call began, then waits for this node to apply up to the
        leader's commit index. Reading the state machine afterwards observes
        every write acknowledged before the call. Works on followers too.

        ``timeout`` as for :meth:`propose` (default ``NodeConfig.request_timeout``).
        While no leader is known the call waits for one (within the deadline).
        Raises :class:`~raftlib.LeadershipLost` (``may_still_commit=False``:
        nothing was written, retrying is safe) when the leader stepped down
        before confirming the read, :class:`~raftlib.RequestTimeout` at the
        deadline.
        """
        self._check_running()
        limit = self._limit(timeout)
        if self.quiesced:
            self._activity()
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        while True:
            core = self._check_running()
            ctx = self._new_context()
            fut: asyncio.Future[tuple[int, bool]] = loop.create_future()
            try:
                core.read_index(ctx)
            except NotLeader:
                # No leader known: wait for one, then ask again.
                left = remaining()
                if left is not None and left <= 0:
                    raise RequestTimeout("read_barrier", limit or 0.0) from None
                try:
                    await self.wait_leader(left if left is not None else self._leader_wait())
                except NotLeader:
                    if left is not None and loop.time() >= deadline:  # type: ignore[operator]
                        raise RequestTimeout("read_barrier", limit or 0.0) from None
                continue
            self._requests.add_read(ctx, fut)
            self._kick()
            try:
                index, ok = await await_request(fut, remaining(), "read_barrier")
            finally:
                self._requests.reads.pop(ctx, None)
            if not ok:
                raise LeadershipLost(False, "the leader stepped down before it confirmed the read")
            await self.wait_applied(index, remaining() if deadline is not None else math.inf)
            return index

    async def wait_applied(self, index: int, timeout: float | None = None) -> None:
        """Wait until this node has applied ``index``.

        ``timeout`` as for :meth:`propose` (default ``NodeConfig.request_timeout``);
        raises :class:`~raftlib.RequestTimeout` at the deadline.
        """
        self._check_running()
        if self._applied >= index:
            return
        limit = self._limit(timeout)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests.waiters.add(index, fut)
        try:
            await await_request(fut, limit, "wait_applied", index)
        finally:
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                self._requests.waiters.discard_done()

    async def change_membership(
        self, changes: Iterable[MemberChange] | MemberChange, timeout: float | None = None
    ) -> Membership:
        """Apply several membership changes as one step; returns the final configuration.

        ``changes``: :class:`~raftlib.runtime.membership.AddVoter`, ``AddLearner``,
        ``Promote``, ``Demote``, ``Remove`` (or core ``Change`` objects). At most one voter
        changed: applied directly; more: one joint-consensus step (§6), left automatically.
        Returns once the final configuration is in force here. Works on followers with
        ``forward_proposals`` (forwarded to the leader, ending as forwarded proposals do). A
        change removing or demoting the leader moves leadership first (docs/runtime.md,
        "Membership changes"). Raises ``UnknownMember``, ``MemberExists``,
        ``MemberRoleError``, ``NoVotersLeft``, ``ConfChangeError``, ``ConfChangeInProgress``,
        ``NotLeader``, ``LeadershipLost``, ``ProposalDropped``, ``RequestTimeout``, ``NodeStopped``.
        """
        return await _membership.change_membership(self, changes, timeout)

    async def replace_member(
        self, old_id: str, new_id: str, new_address: str, timeout: float | None = None
    ) -> Membership:
        """Swap voter ``old_id`` for a new voter ``new_id`` atomically (one joint change)."""
        if old_id == new_id:
            raise ConfChangeError(f"replacing {old_id!r} with itself")
        changes: list[MemberChange] = [_membership.Remove(old_id), _membership.AddVoter(new_id, new_address)]
        return await _membership.change_membership(self, changes, timeout, "replace_member")

    async def demote(self, node_id: str, timeout: float | None = None) -> Membership:
        """Make voter ``node_id`` a learner (the leader moves leadership first if it is the one)."""
        return await _membership.change_membership(self, _membership.Demote(node_id), timeout, "demote")

    async def add_member(self, node_id: str, address: str, timeout: float | None = 30.0) -> None:
        """Add a voter safely: it joins as a learner and is promoted once caught up.

        Returns once it is a voter. The new node must be started with ``join=True``.
        Raises ConfChangeInProgress while another change is in flight.
        """
        change = Change(ChangeKind.ADD_MEMBER, node_id, address.encode())
        await _membership.change_membership(self, change, timeout, "add_member")

    async def add_learner(self, node_id: str, address: str, timeout: float | None = 30.0) -> None:
        """Add a non-voting member that receives the log (promote it later with :meth:`promote`)."""
        change = _membership.AddLearner(node_id, address)
        await _membership.change_membership(self, change, timeout, "add_learner")

    async def promote(self, node_id: str, timeout: float | None = 30.0) -> None:
        """Make a learner a voter."""
        await _membership.change_membership(self, _membership.Promote(node_id), timeout, "promote")

    async def remove_member(self, node_id: str, timeout: float | None = 30.0) -> None:
        """Remove a voter or learner. Removing the leader moves leadership first."""
        await _membership.change_membership(self, _membership.Remove(node_id), timeout, "remove_member")

    async def transfer_leadership(self, target: str, timeout: float | None = None) -> None:
        """Hand leadership to ``target`` (thesis §3.10); returns once it leads.

        Raises TimeoutError when the transfer was abandoned (after an election
        timeout, the target not having become leader).
        """
        core = self._check_running()
        if self.quiesced:
            self._activity()
        core.transfer_leadership(target)
        self._wake.set()
        limit = timeout if timeout is not None else 2 * self.config.election_timeout()
        deadline = time.monotonic() + limit
        while self._check_running().leader != target:
            if time.monotonic() >= deadline:
                raise RequestTimeout("transfer_leadership", limit)
            await asyncio.sleep(self.config.tick_interval / 2)

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

    def membership(self) -> Membership:
        """The configuration in force (voters, learners, ...)."""
        return self._check_running().membership

    @property
    def pending_proposals(self) -> int:
        """Proposals of this node's callers not answered yet (placed in the log or forwarded)."""
        return len(self._requests.by_index) + len(self._requests.forwarded)

    @property
    def handshake_refusals(self) -> dict[str, int]:
        """Peer connections this node refused at the handshake, by reason (``secret_mismatch``,
        ``cluster_mismatch``, ``tls_name_mismatch``, ...; see docs/transport.md)."""
        metrics = getattr(self._transport, "metrics", None)
        refused = metrics.get("handshake_refused") if isinstance(metrics, dict) else None
        return dict(refused) if refused else {}

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
    def last_index(self) -> int:
        """The index of the last entry in this node's log (0 before start)."""
        return self._core.last_index() if self._core is not None else 0

    @property
    def is_leader(self) -> bool:
        return self._core is not None and self._core.role is Role.LEADER

    def address_of(self, node_id: str) -> str | None:
        return self._addresses.get(node_id)

    def set_peer_address(self, node_id: str, address: str) -> None:
        """Record that member ``node_id`` is now reached at ``address`` (``"host:port"``).

        The transport drops its connection to the old address and dials the new one from now
        on; :meth:`status`, :meth:`address_of` and every snapshot taken later carry the new
        address. For this node's own id only the record changes (the listener stays where it
        is: restart the node to listen elsewhere).

        The change is local: it is not replicated. An application that moves a member
        replicates the new address itself -- typically as a command of its state machine --
        and calls this from ``StateMachine.apply`` of that command, so every node (and a node
        replaying its log after a restart) switches at the same point of the log. A later
        configuration change that carries an address for the node (an add) overrides it.
        Under a :class:`~raftlib.RaftHost` the host's peers decide where hosts are dialled;
        the group only records the address.

        Raises :class:`~raftlib.runtime.membership.UnknownMember` when ``node_id`` has no
        address here (not a member of the configuration this node knows), ValueError for an
        address the transport refuses (TCP: not ``host:port``); nothing changes then.
        """
        if node_id not in self._addresses:
            raise _membership.UnknownMember(node_id)
        if not isinstance(address, str) or not address:
            raise ValueError(f"address must be a non-empty string, got {address!r}")
        if self._addresses[node_id] == address:
            return
        addresses = {**self._addresses, node_id: address}
        if self._transport is not None and node_id != self.id:
            # The transport validates the address (TCP: ValueError unless host:port) before
            # anything is recorded.
            self._transport.set_peers({k: v for k, v in addresses.items() if k != self.id})
        self._addresses = addresses
        log.info("node %s: member %s is now at %s", self.id, node_id, address)

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

    def _activity(self) -> None:
        """Something happened to a quiesced group: the host resumes ticking it."""
        if self.quiesced and self._services is not None:
            self._services.wake(self)

    def _on_message(self, m: Message) -> None:
        core = self._core
        if core is None or not self._running:
            return
        if self.quiesced and not _quiet_for_quiesced(core, m):
            self._activity()
        try:
            core.step(m)
        except (ValueError, RaftError) as exc:
            log.warning("node %s dropped message %r: %s", self.id, m, exc)
            return
        self._kick()

    async def _ticker(self) -> None:
        interval = self.config.tick_interval
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at < time.monotonic():
                next_at = time.monotonic() + interval  # fell behind (paused): do not burst
            self.tick()

    def tick(self) -> None:
        """One logical tick (the node's own ticker calls this; a RaftHost calls it for its groups)."""
        core = self._core
        if core is None or not self._running:
            return
        core.tick()
        requests = self._requests
        if requests.by_index or requests.forwarded:
            now = asyncio.get_running_loop().time()
            if requests.forwarded and requests.expire_forwards(now):
                self.metrics["proposals_failed"] = requests.failed
            requests.expire_deadlines(now, self._default_timeout)
        if core.has_ready():  # most ticks of a follower change nothing: no wake-up for them
            self._kick()

    def quiescable(self) -> bool:
        """Leader with nothing in flight: everything replicated, committed, applied and durable, no
        caller waiting, no write pending (the host's quiescence test)."""
        core = self._core
        return (
            core is not None
            and self._running
            and not self._requests
            and (self._stage is None or self._stage.writes_in_flight == 0)
            and not self._wake.is_set()
            and not self._kick_scheduled
            and core.quiescable()
        )

    def _kick(self) -> None:
        """The core may have a Ready: handle it this loop turn, without waking a task.

        One :meth:`_drain` per node per loop turn, so every message and proposal of the
        turn shares one Ready. The common Ready (asynchronous writes, no snapshot) needs no
        await and is handled right there; any other, or a ready-loop task already at work,
        goes to the task through ``_wake``.
        """
        if self._kick_scheduled or self._wake.is_set():
            return
        self._kick_scheduled = True
        asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._kick_scheduled = False
        core = self._core
        if core is None or not self._running:
            return
        if self._loop_busy or not self._pipelined:
            self._wake.set()
            return
        try:
            while core.has_ready():
                raft = core.raft
                if raft.pending_install is not None or raft.snapshot_chunks:
                    self._wake.set()  # a snapshot: the task's path, which awaits
                    return
                rd = core.ready()
                self._handle_ready_now(rd)
                core.advance(rd)
                self._after_advance()
        except BaseException as exc:  # as the ready loop: a failure stops the node
            self._fatal(exc)

    async def _ready_loop(self) -> None:
        core = self._core
        assert core is not None
        try:
            while True:
                self._loop_busy = False
                await self._wake.wait()
                self._loop_busy = True
                self._wake.clear()
                while core.has_ready():
                    rd = core.ready()
                    try:
                        await self._handle_ready(rd)
                    except TransferRejected as exc:
                        # The leader's snapshot arrived damaged. Nothing of this Ready
                        # was made durable or acknowledged: go back to the durable state,
                        # exactly as a restart would, and the leader sends it again.
                        log.error("node %s: rejected a snapshot transfer: %s", self.id, exc.cause)
                        if self._observer is not None:
                            self._observer.on_snapshot_rejected(self.id, repr(exc.cause))
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
        assert self._stage is not None and self._core is not None and self._storage is not None
        state: PersistentState = await self._stage.call(self._storage.load)
        self._core = RawNode(self._core.raft.config, state, rng=self._core.raft.rng, applied=self._applied)
        self._wake.set()
        return self._core

    def _fatal(self, exc: BaseException) -> None:
        log.critical("node %s stopped on a fatal error: %r", self.id, exc, exc_info=exc)
        self._failure = exc
        self._running = False
        err = exc if isinstance(exc, RaftError) else NodeStopped(f"failed: {exc!r}")
        self._requests.fail_all(err)
        for t in self._main_tasks:
            if t is not asyncio.current_task():
                t.cancel()

    def _handle_ready_now(self, rd: Ready) -> None:
        """A Ready without a snapshot, with asynchronous writes: nothing in it awaits."""
        assert self._stage is not None
        deferred = self._send_before_write(rd)
        # Thesis §10.2.1: the write goes on while this Ready's committed entries (durable
        # here already) are applied and the next Ready is taken; its acknowledgements
        # leave from _on_durable.
        self._stage.submit(rd)
        self._finish_ready(rd, deferred)

    async def _handle_ready(self, rd: Ready) -> None:
        assert self._transport is not None and self._core is not None and self._stage is not None
        snapshot = rd.snapshot is not None or bool(rd.snapshot_chunks)
        if self._pipelined and not snapshot:
            self._handle_ready_now(rd)
            return
        requests = self._requests
        deferred = self._send_before_write(rd)
        if self._pipelined:
            await self._stage.drain()  # a snapshot replaces the log: no write may be in flight
        await self._stage.persist(rd, self._flush_transport)
        if self._observer is not None:
            for chunk in rd.snapshot_chunks:
                self._observer.on_snapshot_received(self.id, chunk.meta.index, chunk.offset, len(chunk.data))
        if rd.snapshot is not None:
            restoring = time.perf_counter()
            self._set_addresses(
                await self._stage.call(restore_snapshot, self._storage, rd.snapshot.index, self._sm)
            )
            self._applied = rd.snapshot.index
            requests.waiters.release(self._applied)
            self.metrics["snapshots_installed"] += 1
            if self._observer is not None:
                seconds = time.perf_counter() - restoring
                self._observer.on_snapshot_installed(self.id, rd.snapshot.index, seconds)
            self._transport.set_peers(self._peer_addresses())
            requests.covered_by_snapshot(rd.snapshot.index)
        if self._pipelined:
            self._on_durable(rd)
            self._flush()
        elif rd.persisted_messages:
            # Acknowledgements of what was just made durable: the leader is waiting on them.
            self._send(rd.persisted_messages)
            self._flush()
        self._finish_ready(rd, deferred)

    def _send_before_write(self, rd: Ready) -> list[Message]:
        """Observe the leader and send what may leave before the write; return the deferred rest."""
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
        return deferred

    def _finish_ready(self, rd: Ready, deferred: list[Message]) -> None:
        """Answer forwards, apply the committed entries, send the deferred appends, answer reads."""
        assert self._core is not None
        requests = self._requests
        for res in rd.proposal_results:
            requests.forward_answered(res, self._applied, self._addresses.get(res.leader or ""))
        if self._observer is not None and rd.committed_entries:
            self._observer.on_commit(self.id, self._core.commit_index)
        self._apply(rd.committed_entries)
        if deferred:
            self._send(deferred)
        for rs in rd.read_states:
            requests.read_answered(rs.context, rs.index, rs.ok)
        self.metrics["proposals_failed"] = requests.failed

    def _on_durable(self, rd: Ready) -> None:
        """Asynchronous writes: ``rd`` (and every Ready before it) is durable. The core counts
        the leader's own entries now, and the acknowledgements that waited for it go out."""
        core = self._core
        if core is None or not self._running:
            return
        core.persisted(rd)
        if rd.persisted_messages:
            self._send(rd.persisted_messages)
        self._kick()

    def _flush(self) -> None:
        if self._flush_transport is not None:
            self._flush_transport()

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
        assert m.snapshot is not None and self._core is not None and self._storage is not None
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
            if self._observer is not None:
                self._observer.on_snapshot_send_failed(self.id, m.to, m.snapshot.index, repr(exc))
            self._core.report_snapshot_failure(m.to)
            self._wake.set()
            return
        m.data, m.done = data, done
        assert self._transport is not None
        self._transport.send([m])
        if self._observer is not None:
            self._observer.on_snapshot_sent(self.id, m.to, m.snapshot.index, m.offset, len(data), done)

    def _apply(self, entries: list[Entry]) -> None:
        """§5.3: apply committed entries in log order, once each, and answer their proposers."""
        if not entries:
            return
        requests = self._requests
        by_index = requests.by_index
        apply = self._sm.apply
        applied = committed = 0
        try:
            for e in entries:
                result: Any = None
                etype = e.type
                if etype == ENTRY_NORMAL:
                    data = e.data
                    if data:
                        try:
                            result = apply(data, e.index)
                        except Exception as exc:
                            raise StateMachineError(e.index, exc) from exc
                        applied += 1
                elif etype == ENTRY_CONF_CHANGE:
                    self._apply_addresses(e)
                self._applied = e.index
                if by_index and requests.applied(e, result):
                    committed += 1
        finally:
            metrics = self.metrics
            metrics["proposals_applied"] += applied
            metrics["proposals_committed"] += committed
        requests.waiters.release(self._applied)
        if self._observer is not None:
            self._observer.on_apply(self.id, self._applied, len(entries))

    def _apply_addresses(self, e: Entry) -> None:
        try:
            cc = ConfChange.decode(e.data)
        except RaftError:
            return
        for ch in cc.changes:
            if ch.kind is not ChangeKind.REMOVE and ch.context:
                self._addresses[ch.node_id] = ch.context.decode(errors="replace")
        if cc.result is not None and self._core is not None:
            # Members that leave the configuration (the core applies it after this): a voter
            # removed through joint consensus stays, as an outgoing voter, until the leave.
            gone = self._core.membership.members() - cc.result.members()
        else:
            gone = frozenset(ch.node_id for ch in cc.changes if ch.kind is ChangeKind.REMOVE)
        removed = False
        for node_id in gone:
            if node_id != self.id:
                removed = self._addresses.pop(node_id, None) is not None or removed
        if removed:
            # Drop removed peers only after this Ready's deferred messages went out: among them
            # the commit notice that tells a removed member its removal is final.
            asyncio.get_running_loop().call_soon(self._refresh_peers)
        elif self._transport is not None:
            self._transport.set_peers(self._peer_addresses())

    def _refresh_peers(self) -> None:
        if self._transport is not None and self._running:
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
        previous, self._leader = self._leader, leader
        assert self._core is not None
        if previous is not None and self._requests:
            # The leader our requests depended on is gone: end them now rather than at their
            # deadlines (entries at or below the commit index stay: they will be applied).
            failed = self._requests.leader_lost(self._core.commit_index)
            if failed:
                log.info("node %s: %d proposal(s) ended by the change of leader", self.id, failed)
        change = LeaderChange(leader, self._core.term, self._addresses.get(leader) if leader else None)
        if leader is not None:
            self.metrics["leader_changes"] += 1
        if self._observer is not None:
            self._observer.on_leader_change(self.id, leader, change.term)
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
        assert self._stage is not None and self._storage is not None
        index = self._applied
        if core.snapshot_meta is not None and core.snapshot_meta.index >= index:
            return core.snapshot_meta
        started = time.perf_counter()
        captured = self._sm.snapshot()  # on the loop, between applies: point in time
        addresses = dict(self._addresses)
        meta = core.snapshot_meta_at(index)
        loop = asyncio.get_running_loop()
        try:
            # Not the WAL's thread: appends and acks go on while the snapshot is written.
            await loop.run_in_executor(
                self._snapshotter, write_snapshot, self._storage, meta, addresses, captured
            )
        finally:
            if isinstance(captured, SnapshotWriter):
                captured.release()
        core.compact(index)
        first = core.first_index()
        await self._stage.call(self._storage.compact, first)
        self.metrics["snapshots_taken"] += 1
        if self._observer is not None:
            self._observer.on_snapshot_taken(self.id, index, time.perf_counter() - started)
        log.info("node %s: snapshot at %d, log compacted to %d", self.id, index, first)
        return meta

    def _set_addresses(self, addresses: dict[str, str]) -> None:
        """Adopt the peer addresses recorded in a snapshot (keeping our own)."""
        own = self._addresses.get(self.id)
        self._addresses = dict(addresses)
        if own is not None:
            self._addresses[self.id] = own


_QUIET_REPLIES = (MessageType.HEARTBEAT_RESP, MessageType.APPEND_RESP)
_QUIET_FROM_LEADER = (MessageType.HEARTBEAT, MessageType.APPEND)


def _quiet_for_quiesced(core: RawNode, m: Message) -> bool:
    """Messages that change nothing for a quiesced group, so they do not wake it: replies a
    leader's last heartbeat drew (the group quiesced while they travelled), and a heartbeat or
    commit announcement of its leader that tells a follower nothing new. Anything else --
    another term, a rejection, new entries, a vote -- wakes the group (docs/host.md)."""
    if m.term != core.term or m.reject:
        return False
    if m.type in _QUIET_REPLIES:
        return core.role is Role.LEADER and m.index <= core.last_index()
    if m.type in _QUIET_FROM_LEADER:
        return m.frm == core.leader and not m.entries and m.commit <= core.commit_index
    return False


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when uvloop is installed; returns True if it is."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


__all__ = ["LeaderChange", "NodeConfig", "RaftNode", "install_uvloop"]

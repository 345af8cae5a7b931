"""A deterministic in-process Raft cluster on a virtual clock.

:class:`SimCluster` runs N :class:`raftlib.core.RawNode` cores, each driven
exactly as a real driver drives one (the Ready contract):

1. send ``rd.messages`` at once;
2. persist ``rd.hard_state`` and ``rd.entries`` to the node's simulated durable
   storage — immediately, or, with ``persist_delay``, after a simulated write
   latency during which the node keeps stepping messages and ticking;
3. once durable, send ``rd.persisted_messages`` and apply
   ``rd.committed_entries`` to the node's state machine;
4. ``advance(rd)``; only then is the next Ready taken.

``crash(id)`` throws away everything not durable (the core, the pending write,
the messages the node had sent but that were not yet delivered);
``restart(id)`` builds a new core from the durable :class:`PersistentState` and
a fresh state machine, which the committed log is re-applied to through normal
Readies.

Everything random comes from one ``random.Random(seed)``: the same seed and
the same calls give the same run, event for event. A failure raises
:class:`~raftlib.testing.invariants.SimulationError` (or its subclasses
``InvariantViolation`` and ``SimTimeout``) carrying the seed, a constructor
call that replays the run, and the last events.
"""

from __future__ import annotations

import functools
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from raftlib.core import (
    Change,
    ChangeKind,
    ConfChange,
    Config,
    HardState,
    Membership,
    MessageType,
    PersistentState,
    RawNode,
    Role,
    Transition,
)
from raftlib.errors import ConfChangeError, ConfChangeInProgress, NotLeader, ProposalDropped
from raftlib.testing.events import CALL, DELIVER, PERSIST, TICK, EventQueue
from raftlib.testing.invariants import InvariantChecker, SimTimeout, SimulationError
from raftlib.testing.network import SimNetwork
from raftlib.testing.statemachine import RecordingStateMachine

__all__ = ["SimCluster", "SimNode", "SimStorage"]

_Delay = int | tuple[int, int]


class SimStorage:
    """Simulated durable storage of one node: hard state, log, latest snapshot.

    ``append`` follows the Ready rule: entries starting at or below the last
    stored index first truncate everything from their first index on. The log
    starts at ``first`` (1 until a snapshot lets the driver drop a prefix).
    """

    __slots__ = ("entries", "first", "hard_state", "incoming", "snapshot", "snapshot_data", "writes")

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Any] = []
        self.first = 1
        self.snapshot: Any = None
        """The latest durable snapshot's ``SnapshotMeta`` (None before the first)."""
        self.snapshot_data = b""
        self.incoming = bytearray()
        """A snapshot being received from the leader, chunk by chunk."""
        self.writes = 0

    def last_index(self) -> int:
        return self.first + len(self.entries) - 1

    def term_at(self, index: int) -> int | None:
        """Term of the stored entry (or snapshot) at ``index``; None if not stored."""
        if self.first <= index <= self.last_index():
            return int(self.entries[index - self.first].term)
        if self.snapshot is not None and index == self.snapshot.index:
            return int(self.snapshot.term)
        return 0 if index == 0 else None

    def append(self, entries: Sequence[Any]) -> None:
        if not entries:
            return
        if entries[0].index < self.first:  # already covered by the snapshot
            entries = [e for e in entries if e.index >= self.first]
            if not entries:
                return
        first = entries[0].index
        if first > self.last_index() + 1:
            raise SimulationError(
                f"storage append starting at {first} would leave a gap after {self.last_index()}"
            )
        del self.entries[first - self.first :]
        self.entries.extend(entries)

    def install(self, meta: Any, data: bytes) -> None:
        """Install a snapshot received from the leader: keep the entries after it only if
        the stored entry at its index has its term."""
        if self.term_at(meta.index) == meta.term and meta.index >= self.first:
            del self.entries[: meta.index - self.first + 1]
        else:
            self.entries = []
        self.first = meta.index + 1
        self.snapshot = meta
        self.snapshot_data = bytes(data)

    def save_snapshot(self, meta: Any, data: bytes) -> None:
        """Record this node's own snapshot of its state machine."""
        self.snapshot = meta
        self.snapshot_data = bytes(data)

    def drop_before(self, index: int) -> None:
        """Delete the stored entries below ``index`` (after a snapshot covers them)."""
        n = min(index - self.first, len(self.entries))
        if n > 0:
            del self.entries[:n]
            self.first += n

    def state(self) -> PersistentState:
        """What a restarting core is given (a copy: the core may keep it)."""
        snap = self.snapshot
        entries = [e for e in self.entries if snap is None or e.index > snap.index]
        return PersistentState(hard_state=self.hard_state, entries=entries, snapshot=snap)

    def log(self) -> list[tuple[int, int, bytes]]:
        return [(e.index, e.term, bytes(e.data)) for e in self.entries]


class SimNode:
    """One simulated server: its core (None while down), durable storage and state machine."""

    __slots__ = (
        "applied",
        "held_hard_state",
        "id",
        "incarnation",
        "pending",
        "raw",
        "reads",
        "restarts",
        "results",
        "sm",
        "storage",
        "up",
        "write_at",
        "writes",
    )

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.raw: RawNode = None  # type: ignore[assignment]  # None while the node is down
        self.storage = SimStorage()
        self.sm: Any = None
        self.up = False
        self.incarnation = 0
        self.pending: Any = None
        """The Ready whose write is in progress (persist_delay > 0)."""
        self.results: dict[int, Any] = {}
        """index -> what the state machine's ``apply`` returned (this incarnation)."""
        self.held_hard_state: Any = None
        """A commit-only hard state not written yet (``hold_unsynced``); lost on a crash."""
        self.applied = 0
        """The index this node's state machine reflects, as the driver knows it (snapshot + applied)."""
        self.reads: list[tuple[int, bytes]] = []
        """Confirmed reads waiting for the state machine to reach their index: (index, context)."""
        self.restarts = 0
        self.writes: list[Any] = []
        """Asynchronous storage writes in flight, oldest first (they complete in this order)."""
        self.write_at = 0
        """When the newest write in flight completes (writes complete in order)."""

    def __repr__(self) -> str:
        if not self.up:
            return f"SimNode({self.id} down)"
        r = self.raw
        return f"SimNode({self.id} {r.role.name} t{r.term} commit={r.commit_index} last={r.last_index()})"


def _fmt_delay(d: _Delay) -> tuple[int, int]:
    if isinstance(d, int):
        return (d, d)
    lo, hi = d
    if lo < 0 or hi < lo:
        raise ValueError(f"persist_delay must be >= 0 or (lo, hi), got {d!r}")
    return (int(lo), int(hi))


class SimCluster:
    """N Raft cores, a simulated network, simulated disks, one virtual clock.

    Parameters (all keyword except ``n``):

    ``n`` / ``ids``
        number of nodes (named ``n1``..``nN``), or their ids.
    ``seed``
        the only source of randomness.
    ``config``
        overrides of :class:`raftlib.core.Config` fields for every node,
        e.g. ``{"pre_vote": False, "election_tick": 20}``.
    ``state_machine_factory``
        called with no argument (or with the node id, if it accepts one) to
        build a node's state machine at start and after every restart; the
        object needs ``apply(data: bytes, index: int) -> Any``. Default:
        :class:`RecordingStateMachine`. Empty no-op entries (a new leader's)
        and configuration entries are not passed to it.
    ``persist_delay``
        sub-steps a write takes (an int or a ``(lo, hi)`` range); 0 makes
        writes synchronous.
    ``steps_per_tick``
        sub-steps per Raft tick (network delays are in sub-steps).
    ``drop``, ``duplicate``, ``delay``, ``long_delay_prob``, ``long_delay``, ``fifo``
        network faults, see :class:`SimNetwork`.
    ``auto_tick``
        tick every node every ``steps_per_tick`` (each node at its own random
        phase). With False nothing ticks unless you call :meth:`tick`; handy
        for scripted scenarios.
    ``snapshots``
        when a core says ``should_snapshot()`` (see ``Config.snapshot_entries``),
        snapshot the node's state machine (``snapshot() -> bytes``) and
        ``compact`` the log; a follower that is too far behind then receives the
        snapshot in chunks and is rebuilt with ``restore(data)``. Restarts
        restore the latest durable snapshot, then re-apply the log after it.
    ``hold_unsynced``
        as ``RaftNode`` does, keep a Ready's hard state in memory when only the
        commit index moved (``Ready.must_sync()`` is False) and write it with
        the next synced write; a crash loses it. With False every hard state is
        written (after ``persist_delay``).
    ``check_invariants``, ``full_check_every``
        check the safety rules after every event (and sweep all logs every
        ``full_check_every`` events).
    ``trace_size``, ``record_trace``
        how many recent events a failure shows; keep every event in
        :attr:`trace` (for comparing runs).
    """

    def __init__(
        self,
        n: int | None = None,
        *,
        ids: Sequence[str] | None = None,
        seed: int = 0,
        config: dict[str, Any] | None = None,
        state_machine_factory: Callable[..., Any] = RecordingStateMachine,
        persist_delay: _Delay = 0,
        steps_per_tick: int = 10,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[int, int] = (1, 3),
        long_delay_prob: float = 0.0,
        long_delay: tuple[int, int] = (20, 60),
        fifo: bool = False,
        auto_tick: bool = True,
        snapshots: bool = True,
        hold_unsynced: bool = True,
        check_invariants: bool = True,
        full_check_every: int = 500,
        trace_size: int = 30,
        record_trace: bool = False,
    ) -> None:
        if ids is None:
            ids = [f"n{i}" for i in range(1, (3 if n is None else n) + 1)]
        elif n is not None and n != len(ids):
            raise ValueError("give n or ids, not both")
        if len(set(ids)) != len(ids) or not ids:
            raise ValueError(f"ids must be distinct and non-empty, got {ids!r}")
        self.ids: list[str] = list(ids)
        """Every node this cluster ever had (initial ones first, then added ones, removed ones stay)."""
        self.initial_ids: list[str] = list(ids)
        """The initial voters: the configuration before any change commits."""
        self.joined: set[str] = set()
        """Nodes added with :meth:`add_node` (started with ``Config(join=True)``)."""
        self.removed: set[str] = set()
        """Nodes removed from the configuration and detached: nothing is delivered to or from them."""
        self.seed = seed
        self._replay = self._replay_call(
            n,
            ids,
            seed,
            config,
            state_machine_factory,
            persist_delay,
            steps_per_tick,
            drop,
            duplicate,
            delay,
            long_delay_prob,
            long_delay,
            fifo,
            auto_tick,
        )
        self.rng = random.Random(seed)
        self.config_overrides = dict(config or {})
        self.state_machine_factory = state_machine_factory
        self.persist_delay = _fmt_delay(persist_delay)
        if steps_per_tick < 1:
            raise ValueError("steps_per_tick must be >= 1")
        self.steps_per_tick = steps_per_tick
        self.auto_tick = auto_tick
        self.snapshots = snapshots
        self.hold_unsynced = hold_unsynced
        for flag, value in (("snapshots", snapshots), ("hold_unsynced", hold_unsynced)):
            if not value:
                self._replay = self._replay.replace(
                    ") with the same calls", f", {flag}=False) with the same calls"
                )
        self.now = 0
        """Virtual time in sub-steps."""
        self.queue = EventQueue()
        self.network = SimNetwork(
            self.rng,
            ids=self.ids,
            queue=self.queue,
            drop=drop,
            duplicate=duplicate,
            delay=delay,
            long_delay_prob=long_delay_prob,
            long_delay=long_delay,
            fifo=fifo,
        )
        self.checker: InvariantChecker | None = (
            InvariantChecker(self.ids, full_check_every=full_check_every, check_votes=True)
            if check_invariants
            else None
        )
        self.nodes: dict[str, SimNode] = {i: SimNode(i) for i in self.ids}
        if self.checker is not None:
            for i, node in self.nodes.items():
                self.checker.storages[i] = node.storage
        self.recent: deque[tuple[int, str, str, Any]] = deque(maxlen=trace_size)
        self.trace: list[tuple[int, str, str, str]] | None = [] if record_trace else None
        self.events = 0
        """Events processed so far."""
        self._read_callbacks: dict[bytes, Callable[[bool, Any], Any]] = {}
        self._reads_issued = 0
        self._proposal_callbacks: dict[bytes, Callable[[Any], Any]] = {}
        self._forwarded = 0
        self.observers: list[Callable[[Any], Any]] = []
        """Callables given every message just before it is delivered (for counting, asserting)."""
        self.proposals: list[tuple[str, int, int, bytes]] = []
        """Every accepted proposal: (node, index, term, data)."""
        self._sm_takes_id = _accepts_argument(state_machine_factory)
        for i in self.ids:
            self._start(self.nodes[i], fresh=True)
            if auto_tick:
                self.queue.push(self.rng.randrange(self.steps_per_tick), TICK, i)
        self._after([*self.ids])

    # ================================================================ building
    @staticmethod
    def _replay_call(  # type: ignore[no-untyped-def]
        n,
        ids,
        seed,
        config,
        factory,
        persist_delay,
        spt,
        drop,
        duplicate,
        delay,
        long_delay_prob,
        long_delay,
        fifo,
        auto_tick,
    ) -> str:
        args = [repr(n)] if n is not None else [f"ids={list(ids)!r}"]
        args.append(f"seed={seed!r}")
        defaults = dict(
            config=None,
            state_machine_factory=RecordingStateMachine,
            persist_delay=0,
            steps_per_tick=10,
            drop=0.0,
            duplicate=0.0,
            delay=(1, 3),
            long_delay_prob=0.0,
            long_delay=(20, 60),
            fifo=False,
            auto_tick=True,
        )
        given = dict(
            config=config,
            state_machine_factory=factory,
            persist_delay=persist_delay,
            steps_per_tick=spt,
            drop=drop,
            duplicate=duplicate,
            delay=delay,
            long_delay_prob=long_delay_prob,
            long_delay=long_delay,
            fifo=fifo,
            auto_tick=auto_tick,
        )
        for k, v in given.items():
            if v != defaults[k] and not (k == "config" and not v):
                shown = getattr(v, "__qualname__", None) if callable(v) else None
                args.append(f"{k}={shown or repr(v)}")
        return "SimCluster(" + ", ".join(args) + ") with the same calls"

    @functools.cached_property
    def _chunk_bytes(self) -> int:
        return int(self._config(self.ids[0]).snapshot_chunk_bytes)

    def _config(self, node_id: str) -> Config:
        if node_id in self.joined:
            cfg = Config(node_id, join=True)
        else:
            cfg = Config(node_id, voters=list(self.initial_ids))
        for k, v in self.config_overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"Config has no field {k!r}")
            setattr(cfg, k, v)
        return cfg

    def _settle_node(self, node: SimNode) -> None:
        """Handle a node's Readies after an outside input (a proposal, a campaign, a restart)."""
        self._drive(node)
        self._after((node.id,))

    def _new_state_machine(self, node: SimNode) -> Any:
        return self.state_machine_factory(node.id) if self._sm_takes_id else self.state_machine_factory()

    def _start(self, node: SimNode, fresh: bool) -> None:
        state = None if fresh else node.storage.state()
        rng = random.Random(self.rng.getrandbits(64))
        sm = self._new_state_machine(node)
        applied = 0
        if not fresh and node.storage.snapshot is not None:
            _restore(sm, node.storage.snapshot_data)
            applied = node.storage.snapshot.index
        node.raw = RawNode(self._config(node.id), state, rng=rng, applied=applied)
        node.sm = sm
        node.up = True
        node.pending = None
        node.writes = []
        node.write_at = 0
        node.held_hard_state = None
        node.results = {}
        node.reads = []
        node.applied = applied
        if self.checker is not None:
            self.checker.on_start(node.id, node.raw)

    # ================================================================ driving
    def _drive(self, node: SimNode) -> None:
        """Take and handle Readies until the node has none (or a write is in progress)."""
        raw = node.raw
        pipelined = raw.raft.config.async_storage_writes
        while node.up and node.pending is None and raw.has_ready():
            rd = raw.ready()
            if self.checker is not None:
                self.checker.on_ready(node.id, raw, rd)
            for m in rd.messages:
                self._send(node, m)
            lo, hi = self.persist_delay
            if pipelined:
                if rd.hard_state is not None:
                    if self.hold_unsynced and not rd.must_sync():
                        node.held_hard_state, rd.hard_state = rd.hard_state, None
                    else:
                        node.held_hard_state = None  # superseded by this newer hard state
                elif (rd.entries or rd.snapshot is not None) and node.held_hard_state is not None:
                    # A held commit index rides with the next write started, never with an
                    # earlier one still in flight: its entries may not cover that index.
                    rd.hard_state, node.held_hard_state = node.held_hard_state, None
            if pipelined and rd.snapshot is None and not rd.snapshot_chunks:
                # Thesis §10.2.1: the write goes on while the next Ready is taken.
                if rd.needs_write_order() or rd.hard_state is not None:
                    if hi == 0 and not node.writes:
                        self._write(node, rd)
                    else:
                        d = lo if lo == hi else self.rng.randint(lo, hi)
                        node.write_at = max(self.now + max(d, 1), node.write_at)
                        node.writes.append(rd)
                        self.queue.push(node.write_at, PERSIST, (node.id, node.incarnation, rd))
                self._finish(node, rd)
                continue
            nothing_to_write = rd.hard_state is None and not rd.entries and rd.snapshot is None
            if (hi == 0 and not node.writes) or nothing_to_write or ((
                self.hold_unsynced and not rd.must_sync()
            ) and not node.writes):
                self._complete(node, rd)
            else:
                # Synchronous, or a snapshot with asynchronous writes: after every write before it.
                node.pending = rd
                d = lo if lo == hi else self.rng.randint(lo, hi)
                node.write_at = max(self.now + max(d, 1), node.write_at)
                self.queue.push(node.write_at, PERSIST, (node.id, node.incarnation, rd))

    def _complete(self, node: SimNode, rd: Any) -> None:
        """The Ready's write is durable: finish handling it and advance."""
        self._write(node, rd)
        self._finish(node, rd)
        node.pending = None

    def _write(self, node: SimNode, rd: Any) -> None:
        """The Ready's write is durable: store it, send what waited for it."""
        st = node.storage
        for chunk in rd.snapshot_chunks:
            del st.incoming[chunk.offset :]
            if len(st.incoming) != chunk.offset:
                raise SimulationError(
                    f"{node.id}: snapshot chunk at offset {chunk.offset}, but only {len(st.incoming)} "
                    "bytes were received"
                )
            st.incoming += chunk.data
        if rd.snapshot is not None:
            meta = rd.snapshot
            st.install(meta, bytes(st.incoming))
            st.incoming = bytearray()
            node.sm = self._new_state_machine(node)
            _restore(node.sm, st.snapshot_data)
            node.results = {}
            node.applied = meta.index
            self._note("install", node.id, f"snapshot at index {meta.index} term {meta.term}")
            if self.checker is not None:
                self.checker.on_install(node.id, meta)
        if self.hold_unsynced and rd.hard_state is not None and not rd.must_sync():
            # Like RaftNode: a hard state where only the commit index moved waits in memory
            # for the next synced write (a crash loses it; the leader tells the commit again).
            node.held_hard_state = rd.hard_state
        elif rd.hard_state is not None or rd.entries or rd.snapshot is not None:
            hs = rd.hard_state
            if not node.raw.raft.config.async_storage_writes:
                if hs is None:
                    hs = node.held_hard_state
                node.held_hard_state = None
            if hs is not None:
                st.hard_state = hs
            st.append(rd.entries)
            st.writes += 1
            if self.checker is not None:
                self.checker.on_persist(node.id, st)
        for m in rd.persisted_messages:
            self._send(node, m)
        if node.raw.raft.config.async_storage_writes:
            node.raw.persisted(rd)

    def _finish(self, node: SimNode, rd: Any) -> None:
        """Apply the Ready's committed entries, answer its proposals and reads, advance."""
        raw = node.raw
        for e in rd.committed_entries:
            if self.checker is not None:
                self.checker.on_apply(node.id, raw, e)
            if e.data and e.type == 0:
                node.results[e.index] = node.sm.apply(bytes(e.data), e.index)
            node.applied = e.index
        raw.advance(rd)
        for pr in rd.proposal_results:
            pcb = self._proposal_callbacks.pop(pr.context, None)
            if pcb is not None:
                self._note("proposal", node.id, f"{pr.context!r} -> {pr.error or (pr.index, pr.term)}")
                pcb(pr)
        for rs in rd.read_states:
            if rs.ok:
                node.reads.append((rs.index, rs.context))
            else:
                self._answer_read(node, rs.context, False)
        if node.reads:
            applied = node.applied
            ready = [r for r in node.reads if r[0] <= applied]
            if ready:
                node.reads = [r for r in node.reads if r[0] > applied]
                for _, ctx in ready:
                    self._answer_read(node, ctx, True)
        if self.snapshots and raw.should_snapshot() and hasattr(node.sm, "snapshot"):
            self._take_snapshot(node)

    def _answer_read(self, node: SimNode, ctx: bytes, ok: bool) -> None:
        callback = self._read_callbacks.pop(ctx, None)
        if callback is not None:
            self._note("read", node.id, f"{ctx!r} {'served' if ok else 'refused'}")
            callback(ok, node.sm if ok else None)

    def _take_snapshot(self, node: SimNode) -> None:
        raw = node.raw
        index = node.applied
        current = raw.snapshot_meta
        if index == 0 or (current is not None and current.index >= index):
            return
        if self.checker is not None:
            self.checker.observe(node.id)  # record what it committed before the log is compacted
        data = node.sm.snapshot()
        if not isinstance(data, (bytes, bytearray)):
            raise SimulationError(f"{node.id}: snapshot() must return bytes, got {type(data).__name__}")
        raw.compact(index)
        meta = raw.snapshot_meta
        node.storage.save_snapshot(meta, bytes(data))
        node.storage.drop_before(raw.first_index())
        self._note("snapshot", node.id, f"at index {index}; log now starts at {raw.first_index()}")

    def _send(self, node: SimNode, m: Any) -> None:
        if m.frm != node.id:
            raise SimulationError(f"{node.id} sends a message from {m.frm!r}: {m!r}")
        if m.to not in self.nodes:
            raise SimulationError(f"{node.id} sends to unknown node {m.to!r}: {m!r}")
        if m.type == MessageType.SNAPSHOT:
            # The core names the snapshot and the offset; the driver reads the bytes.
            st = node.storage
            snap = st.snapshot
            if snap is None or snap.index != m.snapshot.index or snap.term != m.snapshot.term:
                node.raw.report_snapshot_failure(m.to)
                return
            size = self._chunk_bytes
            m.data = st.snapshot_data[m.offset : m.offset + size]
            m.done = m.offset + len(m.data) >= len(st.snapshot_data)
        self.network.send(m, self.now, node.incarnation)

    def _note(self, kind: str, node: str, what: Any) -> None:
        ev = (self.now, kind, node, what)
        self.recent.append(ev)
        if self.trace is not None:
            self.trace.append((self.now, kind, node, repr(what)))

    def _after(self, touched: Iterable[str]) -> None:
        if self.checker is not None:
            self.checker.after_event(touched)

    def _fail(self, err: SimulationError) -> SimulationError:
        err.seed = self.seed
        err.replay = self._replay
        err.trace = self.format_recent()
        return err

    def format_recent(self) -> list[str]:
        """The last events, one readable line each."""
        out = []
        for now, kind, node, what in self.recent:
            out.append(
                f"t={now / self.steps_per_tick:8.1f} {kind:8} {node:>4} {what!r}"
                if not isinstance(what, str)
                else f"t={now / self.steps_per_tick:8.1f} {kind:8} {node:>4} {what}"
            )
        return out

    def step(self) -> bool:
        """Process the next event; False when there is none."""
        if not self.queue:
            return False
        time, kind, payload = self.queue.pop()
        if time > self.now:
            self.now = time
        try:
            self._dispatch(kind, payload)
        except SimulationError as err:
            raise self._fail(err) from None
        except Exception as exc:  # a bug in the core (or in a user's state machine)
            raise self._fail(SimulationError(f"{type(exc).__name__}: {exc}")) from exc
        return True

    def _dispatch(self, kind: int, payload: Any) -> None:
        self.events += 1
        if kind == DELIVER:
            msg, sender_incarnation = payload
            sender = self.nodes[msg.frm]
            dest = self.nodes[msg.to]
            if sender.incarnation != sender_incarnation:
                self.network.dropped[msg.type] += 1  # the sender crashed before this left its buffers
                return
            if not self.network.arrives(msg):
                return
            if self.removed and (msg.to in self.removed or msg.frm in self.removed):
                self.network.dropped[msg.type] += 1  # a removed node is detached from the cluster
                return
            if not dest.up:
                self.network.dropped[msg.type] += 1
                return
            self.network.delivered[msg.type] += 1
            self._note("deliver", msg.to, msg)
            for obs in self.observers:
                obs(msg)
            dest.raw.step(msg)
            self._drive(dest)
            self._after((msg.to,))
        elif kind == TICK:
            node = self.nodes[payload]
            if self.auto_tick:
                self.queue.push(self.now + self.steps_per_tick, TICK, payload)
            if node.up:
                node.raw.tick()
                self._drive(node)
                self._after((payload,))
        elif kind == PERSIST:
            node_id, incarnation, rd = payload
            node = self.nodes[node_id]
            if node.incarnation != incarnation or not node.up:
                return  # the node crashed while writing: the write is lost
            self._note("persist", node_id, _describe_ready(rd))
            if node.writes and node.writes[0] is rd:
                node.writes.pop(0)  # an asynchronous write: the Ready was handled already
                self._write(node, rd)
            else:
                if node.writes:
                    raise SimulationError(f"{node_id}: a write completed before an earlier one")
                self._complete(node, rd)
            self._drive(node)
            self._after((node_id,))
        elif kind == CALL:
            payload()

    # ============================================================== running
    @property
    def ticks(self) -> float:
        """Virtual time in ticks."""
        return self.now / self.steps_per_tick

    def run(self, ticks: float) -> None:
        """Let ``ticks`` ticks of virtual time pass."""
        until = self.now + int(ticks * self.steps_per_tick)
        while True:
            t = self.queue.peek_time()
            if t is None or t > until:
                break
            self.step()
        self.now = max(self.now, until)

    def run_until(self, predicate: Callable[[], Any], max_ticks: float = 1000, what: str = "") -> Any:
        """Process events until ``predicate()`` is truthy (checked after every event); return its value.

        Raises :class:`SimTimeout` after ``max_ticks`` ticks, or when no event is left.
        """
        v = predicate()
        if v:
            return v
        deadline = self.now + int(max_ticks * self.steps_per_tick)
        while True:
            t = self.queue.peek_time()
            if t is None or t > deadline:
                if t is not None:
                    self.now = deadline
                why = "no event left" if t is None else f"{max_ticks} ticks passed"
                raise self._fail(
                    SimTimeout(
                        f"run_until: {why} without "
                        f"{what or getattr(predicate, '__name__', 'the condition')}; "
                        f"nodes: {list(self.nodes.values())}"
                    )
                )
            self.step()
            v = predicate()
            if v:
                return v

    def settle(self, max_events: int = 100_000) -> int:
        """Process every queued event (for ``auto_tick=False`` scripts); return how many ran."""
        n = 0
        while self.queue:
            if n >= max_events:
                raise self._fail(SimTimeout(f"settle: still busy after {max_events} events"))
            self.step()
            n += 1
        return n

    def at(self, ticks: float, fn: Callable[[], Any]) -> None:
        """Call ``fn()`` when virtual time reaches ``ticks`` ticks from now (fault schedules)."""
        self.queue.push(self.now + int(ticks * self.steps_per_tick), CALL, fn)

    def tick(self, *node_ids: str) -> None:
        """Tick the given nodes (all running nodes if none) once, right now."""
        for i in node_ids or self.ids:
            self._guard(self._tick_one, i)

    def _tick_one(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.up:
            node.raw.tick()
            self._drive(node)
            self._after((node_id,))

    def tick_all(self) -> None:
        """Tick every running node once, right now."""
        self.tick()

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except SimulationError as err:
            raise self._fail(err) from None
        except (NotLeader, ProposalDropped):
            raise
        except Exception as exc:
            raise self._fail(SimulationError(f"{type(exc).__name__}: {exc}")) from exc

    # ================================================================ faults
    def crash(self, node_id: str) -> None:
        """Stop a node: its core, its pending write and its undelivered messages are lost."""
        node = self.nodes[node_id]
        if not node.up:
            return
        self._note(
            "crash",
            node_id,
            f"durable: term {node.storage.hard_state.term}, "
            f"commit {node.storage.hard_state.commit}, last {node.storage.last_index()}",
        )
        node.up = False
        node.raw = None  # type: ignore[assignment]
        node.sm = None
        node.pending = None
        node.incarnation += 1
        if self.checker is not None:
            self.checker.on_crash(node_id)

    def restart(self, node_id: str) -> None:
        """Start a crashed node again from its durable state, with a fresh state machine."""
        node = self.nodes[node_id]
        if node.up:
            raise ValueError(f"{node_id} is running; crash it first")
        if node_id in self.removed:
            raise ValueError(f"{node_id} was removed from the cluster; it cannot be restarted")
        node.restarts += 1
        self._note(
            "restart",
            node_id,
            f"from term {node.storage.hard_state.term}, "
            f"commit {node.storage.hard_state.commit}, last {node.storage.last_index()}",
        )
        self._guard(self._start, node, False)
        self._guard(self._settle_node, node)

    def compact(self, node_id: str) -> None:
        """Snapshot ``node_id``'s state machine at its applied index now and compact its log."""
        node = self.nodes[node_id]
        if not node.up:
            raise ValueError(f"{node_id} is down")
        self._guard(self._take_snapshot, node)

    def is_up(self, node_id: str) -> bool:
        return self.nodes[node_id].up

    def up_ids(self) -> list[str]:
        """The running nodes that are not removed."""
        return [i for i in self.ids if self.nodes[i].up and i not in self.removed]

    def partition(self, *groups: Iterable[str]) -> None:
        """See :meth:`SimNetwork.partition`."""
        self.network.partition(*groups)
        self._note("net", "-", f"partition {[list(g) for g in groups]}")

    def isolate(self, node_id: str) -> None:
        self.network.isolate(node_id)
        self._note("net", node_id, "isolated")

    def cut(self, a: str, b: str, *, both: bool = True) -> None:
        self.network.cut(a, b, both=both)
        self._note("net", "-", f"cut {a}{'<' if both else ''}->{b}")

    def connect(self, a: str, b: str, *, both: bool = True) -> None:
        self.network.connect(a, b, both=both)
        self._note("net", "-", f"connect {a}{'<' if both else ''}->{b}")

    def heal(self) -> None:
        self.network.heal()
        self._note("net", "-", "healed")

    # ============================================================= membership
    def membership(self) -> Membership:
        """The configuration of the latest committed configuration entry (the initial voters before
        any). Without the invariant checker: the highest-term leader's configuration."""
        if self.checker is not None:
            return self.checker.current_config
        lead = self.leader()
        if lead is not None:
            return self.nodes[lead].raw.membership
        return Membership(frozenset(self.initial_ids))

    def voters(self) -> list[str]:
        """The voters of :meth:`membership` (both sets while joint), sorted."""
        return sorted(self.membership().all_voters())

    def members(self) -> list[str]:
        """Voters and learners of :meth:`membership`, in the order of :attr:`ids`."""
        conf = self.membership().members()
        return [i for i in self.ids if i in conf]

    def add_node(self, node_id: str) -> None:
        """Start a new, empty node that joins the cluster (``Config(node_id, join=True)``).

        It has no configuration and never campaigns until it learns one from the leader (a
        configuration entry in the log, or a snapshot): add it with :meth:`change_membership`
        (``ADD_MEMBER``, ``ADD_LEARNER`` or ``ADD_VOTER``) for the leader to replicate to it.
        """
        if node_id in self.nodes:
            raise ValueError(f"{node_id!r} already exists")
        node = SimNode(node_id)
        self.nodes[node_id] = node
        self.ids.append(node_id)
        self.joined.add(node_id)
        if self.network.ids is not self.ids:
            self.network.ids.append(node_id)
        if self.checker is not None:
            self.checker.storages[node_id] = node.storage
        self._note("add", node_id, "started empty, joining")
        self._guard(self._start, node, True)
        if self.auto_tick:
            self.queue.push(self.now + self.rng.randrange(self.steps_per_tick), TICK, node_id)
        self._after((node_id,))

    def propose_conf_change(
        self,
        *changes: tuple[ChangeKind, str],
        transition: Transition = Transition.AUTO,
        node_id: str | None = None,
    ) -> tuple[int, int]:
        """Propose one configuration change on ``node_id`` (default: the leader).

        ``changes`` are ``(ChangeKind, id)`` pairs. Raises :class:`NotLeader`,
        :class:`ConfChangeInProgress`, :class:`ProposalDropped` (a transfer is pending) or
        :class:`ConfChangeError` as :meth:`RawNode.propose_conf_change` does.
        """
        node_id, node = self._proposer(node_id)
        cc = ConfChange(tuple(Change(kind, nid) for kind, nid in changes), transition)
        index, term = node.raw.propose_conf_change(cc)
        what = [(k.value, n) for k, n in changes]
        self._note("confchange", node_id, f"{what} -> index {index} term {term}")
        self._guard(self._settle_node, node)
        return index, term

    def change_membership(
        self,
        *changes: tuple[ChangeKind, str],
        transition: Transition = Transition.AUTO,
        max_ticks: float = 400,
        settle: bool = True,
    ) -> tuple[int, int]:
        """Propose a configuration change through the leader until it commits; return its ``(index, term)``.

        Retries on ``NotLeader``, ``ConfChangeInProgress`` and ``ProposalDropped`` (and when a
        leader change loses the entry). With ``settle`` (the default) it then waits until the
        configuration is final: not joint (the leader leaves a joint configuration by itself)
        and no member still being promoted; nodes it removed are then detached
        (see :meth:`detach`) once they no longer lead.
        """
        deadline = self.now + int(max_ticks * self.steps_per_tick)

        def left() -> float:
            t = (deadline - self.now) / self.steps_per_tick
            if t <= 0:
                raise self._fail(
                    SimTimeout(f"change_membership{changes!r}: not done within {max_ticks} ticks")
                )
            return t

        while True:
            try:
                lead = self.run_until(self.leader, left(), "a leader")
                index, term = self.propose_conf_change(*changes, transition=transition, node_id=lead)
                outcome = self.run_until(
                    functools.partial(self._outcome, index, term), left(), f"conf change committed at {index}"
                )
                if outcome == "committed":
                    break
            except (NotLeader, ConfChangeInProgress, ProposalDropped):
                self.run(1)
        if settle:
            removed = [nid for kind, nid in changes if kind is ChangeKind.REMOVE]
            self.run_until(lambda: self._settled(removed), left(), "the configuration change settled")
            for nid in removed:
                self.detach(nid)
        return index, term

    def _settled(self, removed: Sequence[str]) -> bool:
        conf = self.membership()
        if conf.is_joint() or conf.promoting:
            return False
        lead = self.leader()
        return lead is not None and lead not in removed

    def detach(self, node_id: str) -> None:
        """Stop delivering messages to and from ``node_id`` (a node removed from the configuration).

        Refuses a node that is still a member of the committed configuration.
        """
        if node_id in self.membership().members():
            raise ConfChangeError(f"{node_id!r} is still a member ({self.membership().describe()})")
        if node_id not in self.removed:
            self.removed.add(node_id)
            self._note("detach", node_id, "removed from the cluster: no more messages")

    def shutdown(self, node_id: str) -> None:
        """Stop a removed node for good (it is detached first; it cannot be restarted)."""
        self.detach(node_id)
        self.crash(node_id)

    # ================================================================ clients
    def raw(self, node_id: str) -> RawNode:
        """The running core of a node (raises if it is down)."""
        node = self.nodes[node_id]
        if not node.up:
            raise ValueError(f"{node_id} is down")
        return node.raw

    def leader(self) -> str | None:
        """The running leader with the highest term (removed nodes aside), or None."""
        best = None
        for i in self.ids:
            node = self.nodes[i]
            if (
                node.up
                and i not in self.removed
                and node.raw.role is Role.LEADER
                and (best is None or node.raw.term > self.nodes[best].raw.term)
            ):
                best = i
        return best

    def leaders(self) -> list[str]:
        """Every running node that believes it leads (stale leaders included)."""
        return [i for i in self.ids if self.nodes[i].up and self.nodes[i].raw.role is Role.LEADER]

    def wait_leader(self, max_ticks: float = 200) -> str:
        """Run until some running node leads; return its id (the highest-term leader)."""
        return str(self.run_until(self.leader, max_ticks, "a leader"))

    def campaign(self, node_id: str) -> None:
        """Make a node start an election now."""
        node = self.nodes[node_id]
        self._note("campaign", node_id, "")
        self._guard(node.raw.campaign)
        self._guard(self._settle_node, node)

    def _proposer(self, node_id: str | None) -> tuple[str, SimNode]:
        """``node_id`` (default: the leader) and its node; NotLeader when none leads or it is down."""
        if node_id is None:
            node_id = self.leader()
            if node_id is None:
                raise NotLeader(None)
        node = self.nodes[node_id]
        if not node.up:
            raise NotLeader(None)
        return node_id, node

    def propose(self, data: bytes, node_id: str | None = None) -> tuple[int, int]:
        """Propose ``data`` on ``node_id`` (default: the leader); return its ``(index, term)``.

        Raises :class:`NotLeader` when the node does not lead (or no leader is known).
        """
        node_id, node = self._proposer(node_id)
        index, term = node.raw.propose(data)
        self.proposals.append((node_id, index, term, bytes(data)))
        self._note("propose", node_id, f"{data!r} -> index {index} term {term}")
        self._guard(self._settle_node, node)
        return index, term

    def propose_with_context(self, data: bytes, node_id: str, callback: Callable[[Any], Any]) -> bytes:
        """Propose ``data`` from any node with :meth:`RawNode.propose_with_context` (a follower forwards
        it to the leader when ``config={"forward_proposals": True}``).

        ``callback(ProposalResult)`` runs when the node learns where the entry landed
        (``index``, ``term``) or why it was refused (``error``); never if the forwarded proposal
        or its answer is lost, or the node crashes (use a timeout). Raises :class:`NotLeader`
        when the node cannot propose or forward. Returns the proposal's context.
        """
        node = self.nodes[node_id]
        if not node.up:
            raise NotLeader(None)
        self._forwarded += 1
        ctx = b"sim-prop-%d" % self._forwarded
        self._proposal_callbacks[ctx] = callback
        try:
            self._guard(node.raw.propose_with_context, data, ctx)
        except (NotLeader, ProposalDropped):
            del self._proposal_callbacks[ctx]
            raise
        self._note("propose", node_id, f"{data!r} with context {ctx!r}")
        self._guard(self._settle_node, node)
        return ctx

    def read(self, node_id: str, callback: Callable[[bool, Any], Any]) -> bytes:
        """Start a linearizable read (ReadIndex, thesis §6.4) on ``node_id``.

        ``callback(True, state_machine)`` runs once the read is confirmed and the node's state
        machine has applied up to the read index: read the state machine then. It runs as
        ``callback(False, None)`` if the read could not be confirmed (retry it), and never if
        the request or its answer is lost or the node crashes (use a timeout). Raises
        :class:`NotLeader` when the node knows no leader. Returns the read's context.
        """
        node = self.nodes[node_id]
        if not node.up:
            raise NotLeader(None)
        self._reads_issued += 1
        ctx = b"sim-read-%d" % self._reads_issued
        self._read_callbacks[ctx] = callback
        try:
            self._guard(node.raw.read_index, ctx)
        except NotLeader:
            del self._read_callbacks[ctx]
            raise
        self._note("read", node_id, f"{ctx!r} requested")
        self._guard(self._settle_node, node)
        return ctx

    def committed(self, index: int, term: int | None = None, node_ids: Iterable[str] | None = None) -> bool:
        """Whether every given running node (default: a majority of the voters of :meth:`membership`,
        of both sets while joint) committed ``index`` (with ``term``)."""
        if node_ids is None:
            conf = self.membership()
            for voters in (conf.voters, conf.outgoing):
                have = sum(1 for i in voters if self._has_committed(i, index, term))
                if voters and have <= len(voters) // 2:
                    return False
            return True
        return all(self._has_committed(i, index, term) for i in node_ids)

    def _has_committed(self, node_id: str, index: int, term: int | None) -> bool:
        node = self.nodes.get(node_id)
        if node is None:
            return False
        if not node.up or node.raw.commit_index < index:
            return False
        return term is None or node.raw.term_at(index) == term

    def wait_committed(
        self,
        index: int,
        term: int | None = None,
        node_ids: Iterable[str] | None = None,
        max_ticks: float = 200,
    ) -> None:
        """Run until ``index`` is committed (by a quorum, or by every node in ``node_ids``).

        With ``term``, raises :class:`ProposalDropped` if a different entry got committed there.
        """
        ids = None if node_ids is None else list(node_ids)

        def done() -> bool:
            checker = self.checker
            if (
                term is not None
                and checker is not None
                and len(checker.committed) > index
                and checker.committed[index][0] != term
            ):
                raise ProposalDropped("leadership_lost", f"index {index} committed with another term")
            return self.committed(index, term, ids)

        self.run_until(done, max_ticks, f"index {index} committed" + (f" on {ids}" if ids else ""))

    def wait_applied(self, index: int, node_ids: Iterable[str] | None = None, max_ticks: float = 200) -> None:
        """Run until every given running node (default: all running) has applied ``index``."""
        ids = list(node_ids) if node_ids is not None else None

        def done() -> bool:
            targets = ids if ids is not None else self.up_ids()
            return all(self.nodes[i].up and self.nodes[i].applied >= index for i in targets)

        self.run_until(done, max_ticks, f"index {index} applied")

    def replicate(self, data: bytes, max_ticks: float = 300) -> tuple[int, int]:
        """Propose ``data`` and wait until a quorum commits it, retrying on leader changes.

        Returns the ``(index, term)`` it was committed at. A retried proposal may
        commit twice (the first attempt may still commit): fine for tests.
        """
        deadline = self.now + int(max_ticks * self.steps_per_tick)
        while True:
            left = (deadline - self.now) / self.steps_per_tick
            if left <= 0:
                raise self._fail(SimTimeout(f"replicate({data!r}): not committed within {max_ticks} ticks"))
            try:
                lead = self.run_until(self.leader, left, "a leader")
                index, term = self.propose(data, lead)
                left = (deadline - self.now) / self.steps_per_tick
                outcome = self.run_until(
                    functools.partial(self._outcome, index, term), left, f"{data!r} committed at {index}"
                )
                if outcome == "committed":
                    return index, term
            except (NotLeader, ProposalDropped):
                self.run(1)

    def _outcome(self, index: int, term: int) -> str | None:
        """ "committed", "lost" (another entry took the index or will), or None (not known yet)."""
        if self.checker is not None and len(self.checker.committed) > index:
            return "committed" if self.checker.committed[index][0] == term else "lost"
        if self.committed(index, term):
            return "committed"
        lead = self.leader()
        if lead is not None:
            raw = self.nodes[lead].raw
            if raw.term != term and (raw.last_index() < index or raw.term_at(index) != term):
                return "lost"
        return None

    def results(self, node_id: str) -> dict[int, Any]:
        """index -> the return value of the state machine's ``apply`` on ``node_id``."""
        return self.nodes[node_id].results

    def state_machine(self, node_id: str) -> Any:
        return self.nodes[node_id].sm

    # ============================================================ inspection
    def log(self, node_id: str, *, durable: bool = False) -> list[tuple[int, int, bytes]]:
        """A node's log as ``(index, term, data)`` tuples (in memory, or what is on its disk)."""
        node = self.nodes[node_id]
        if durable or not node.up:
            return node.storage.log()
        raw = node.raw
        if raw.last_index() < raw.first_index():
            return []
        return [
            (e.index, e.term, bytes(e.data)) for e in raw.entries(raw.first_index(), raw.last_index() + 1)
        ]

    def committed_log(self) -> list[tuple[int, int, bytes]]:
        """The cluster's committed entries so far, as seen by the invariant checker."""
        if self.checker is None:
            raise ValueError("committed_log needs check_invariants=True")
        return [(i, t, d) for i, (t, d) in enumerate(self.checker.committed) if i]

    def committed_data(self) -> list[bytes]:
        """The data of the committed non-empty entries, in log order."""
        return [d for _, _, d in self.committed_log() if d]

    def check_invariants(self) -> None:
        """Full check of every log now (also runs every ``full_check_every`` events)."""
        if self.checker is not None:
            try:
                self.checker.check_all()
            except SimulationError as err:
                raise self._fail(err) from None

    def check_agreement(self, node_ids: Iterable[str] | None = None) -> None:
        """Assert the given running nodes (default: all running) hold the same entries at every
        committed index they all still have in their logs (compacted prefixes are skipped);
        raise :class:`SimulationError` otherwise."""
        ids = list(node_ids) if node_ids is not None else self.up_ids()
        if not ids:
            return
        commit = min(self.nodes[i].raw.commit_index for i in ids)
        start = max(self.nodes[i].raw.first_index() for i in ids)
        ref = [e for e in self.log(ids[0]) if start <= e[0] <= commit]
        for i in ids[1:]:
            if [e for e in self.log(i) if start <= e[0] <= commit] != ref:
                raise self._fail(
                    SimulationError(f"committed logs of {ids[0]} and {i} differ in [{start}, {commit}]")
                )

    def stats(self) -> Counter[str]:
        """Messages delivered since the last :meth:`reset_stats`, by type name."""
        return Counter({t.name: c for t, c in self.network.delivered.items()})

    def sent_stats(self) -> Counter[str]:
        """Messages sent since the last :meth:`reset_stats`, by type name."""
        return Counter({t.name: c for t, c in self.network.sent.items()})

    def reset_stats(self) -> None:
        self.network.reset_stats()

    def status(self) -> dict[str, Any]:
        """id -> the core's status dict, or None while down."""
        return {i: (self.nodes[i].raw.status() if self.nodes[i].up else None) for i in self.ids}

    def __repr__(self) -> str:
        return f"<SimCluster seed={self.seed} t={self.ticks:.1f} {list(self.nodes.values())}>"


def _restore(sm: Any, data: bytes) -> None:
    if not hasattr(sm, "restore"):
        raise SimulationError(
            f"{type(sm).__name__} has no restore(data): it cannot be rebuilt from a snapshot "
            "(pass snapshots=False, or implement snapshot() and restore())"
        )
    sm.restore(data)


def _describe_ready(rd: Any) -> str:
    parts = []
    if rd.hard_state is not None:
        parts.append(f"hs=(t{rd.hard_state.term} vote={rd.hard_state.vote} commit={rd.hard_state.commit})")
    if rd.entries:
        parts.append(f"ents={rd.entries[0].index}..{rd.entries[-1].index}")
    if rd.persisted_messages:
        parts.append(f"then send {len(rd.persisted_messages)}")
    if rd.committed_entries:
        parts.append(f"apply {rd.committed_entries[0].index}..{rd.committed_entries[-1].index}")
    return " ".join(parts) or "empty"


def _accepts_argument(factory: Callable[..., Any]) -> bool:
    import inspect

    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return False
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(params) >= 1

"""Exactly-once client sessions (Raft thesis §6.3): the state-machine layer and the client.

:class:`SessionStateMachine` wraps an application state machine. Every command a
:class:`Session` sends carries ``(session id, sequence number, lowest sequence number the client
still awaits)``; the layer applies each ``(session, sequence)`` at most once and answers a
duplicate (a retry after a timeout, a lost leader, ``NotLeader``) with the result it recorded
the first time. So ``await session.call(cmd)`` may retry freely: the command takes effect once.

Invariants kept on every member, from the log alone (so every member agrees):

* a session id is the log index of the entry that registered it;
* **log time** is the largest leader timestamp applied so far: the proposer stamps its wall
  clock as a positive number while it is the leader (thesis §6.3: the leader stamps), as a
  negative one otherwise; only leader stamps move log time, and apply never reads a clock.
  A :class:`LogClock` on every member makes the leader propose a ``TICK`` whenever log time
  lags its clock by ``clock_period``, so log time is at most that far behind the leader's clock;
* a session's last activity is the log time of its last entry, or for an entry stamped by a
  follower its clock clamped into ``[log time, log time + clock_period]`` (the window the
  leader's clock is in), so neither a stale log time nor a skewed follower clock moves it far;
* a session whose last activity is more than ``session_timeout`` log seconds old is expired on
  apply; its commands then fail with :class:`SessionExpired`;
* a session holds at most ``max_responses`` unacknowledged results: a command beyond that is
  refused with :class:`TooManyPendingResponses`, not applied;
* the session table is part of every snapshot.

Entry layout (little-endian): version ``u8``, kind ``u8``, stamp ``f64`` (> 0: the leader's
clock, < 0: minus a follower's clock, 0: none), then per kind:
``COMMAND``: session ``u64``, sequence ``u64``, acknowledged-below ``u64``, payload;
``KEEPALIVE``/``CLOSE``: session ``u64``; ``PLAIN``: payload (applied without deduplication);
``REGISTER`` and ``TICK``: nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from raftlib.errors import NodeStopped, NotLeader, ProposalDropped
from raftlib.runtime.tasks import cancel_and_wait
from raftlib.statemachine import SnapshotWriter, StateMachine
from raftlib.valuecodec import CodecError, CommandError, decode, encode

if TYPE_CHECKING:
    from raftlib.runtime.node import RaftNode

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
REGISTER, COMMAND, KEEPALIVE, CLOSE, PLAIN, TICK = 1, 2, 3, 4, 5, 6
_KINDS = {REGISTER, COMMAND, KEEPALIVE, CLOSE, PLAIN, TICK}

_HEAD = struct.Struct("<BBd")
_CMD = struct.Struct("<BBdQQQ")
_SID = struct.Struct("<BBdQ")
_SNAP_HEAD = struct.Struct("<4sQ")
_SNAP_MAGIC = b"RLSE"
_SNAP_TABLE_MAX = 1 << 40


class SessionExpired(CommandError, code="session_expired"):
    """The session is unknown to the state machine: it expired (no activity for longer than the
    session timeout, in log time), was closed, or never existed. ``session_id`` names it.

    Commands of an expired session are not applied. Open a new session; the outcome of a call
    that was in flight when the session expired is unknown.
    """

    def __init__(self, session_id: int) -> None:
        super().__init__(f"session {session_id} expired or is unknown", session_id)
        self.session_id = session_id

    @classmethod
    def from_wire(cls, message: str, details: list[Any]) -> CommandError:
        return cls(int(details[0]))


class SessionStale(CommandError, code="session_stale"):
    """A command's sequence number is below what its client acknowledged: its result was
    already discarded, so the command can be neither applied again nor answered."""


class TooManyPendingResponses(CommandError, code="too_many_pending_responses"):
    """The session already holds ``limit`` results its client has not acknowledged; the command
    was not applied. The client helper never sends more than that many concurrent calls."""


class TooManySessions(CommandError, code="too_many_sessions"):
    """The state machine already holds ``max_sessions`` sessions; the registration was refused."""


class InvalidCommand(CommandError, code="invalid_command"):
    """An entry is not a session envelope of a version this build knows (it was not applied)."""


class SessionCallTimeout(TimeoutError):
    """:meth:`Session.call` ran out of time; the command may or may not have been applied.

    Retrying through the same :class:`Session` is not possible for this call (its sequence
    number was given up); ``attempts`` and the ``last_error`` seen are attached.
    """

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(f"no answer after {attempts} attempt(s); last error: {last_error!r}")


_MISSING = object()


def _plain(result: Any) -> bool:
    """Whether a session records ``result`` as it is rather than encoded: None, a bool, an int of
    at most 1,000 bits, a finite float or an ASCII str -- immutable values that surely encode
    (a huge int exceeds Python's int-to-str limit, a lone surrogate is not UTF-8, NaN is refused).
    A snapshot writes the encoding either way (:func:`_encoded`)."""
    t = type(result)
    if result is None or t is bool:
        return True
    if t is int:
        return bool(result.bit_length() <= 1000)
    if t is str:
        return bool(result.isascii())
    return t is float and math.isfinite(result)


def _recorded(entry: Any) -> Any:
    """The result a recorded entry stands for (a duplicate's answer)."""
    return decode(entry, _SNAP_TABLE_MAX) if type(entry) is bytes else entry


def _encoded(entry: Any) -> bytes:
    """A recorded entry as it is written to a snapshot: always the result's encoding."""
    return entry if type(entry) is bytes else encode(entry, _SNAP_TABLE_MAX)


class _Record:
    """One session's server-side state."""

    __slots__ = ("last_active", "responses", "watermark")

    def __init__(self, last_active: float) -> None:
        self.last_active = last_active
        self.watermark = 1
        """Every sequence number below this was acknowledged: its result is discarded."""
        self.responses: dict[int, Any] = {}
        """Recorded results by sequence number: the result itself when :func:`_plain`, else its
        encoding (``bytes``)."""


def stamp_for(node: RaftNode) -> float:
    """The stamp of an entry proposed through ``node``: its wall clock, negated unless it leads."""
    return time.time() if node.is_leader else -time.time()


def plain_entry(payload: bytes, stamp: float = 0.0) -> bytes:
    """An envelope applying ``payload`` without deduplication (idempotent commands only)."""
    return _HEAD.pack(ENVELOPE_VERSION, PLAIN, stamp) + payload


def register_entry(stamp: float = 0.0) -> bytes:
    """An envelope registering a session (its id will be this entry's index)."""
    return _HEAD.pack(ENVELOPE_VERSION, REGISTER, stamp)


def command_entry(session_id: int, seq: int, ack: int, payload: bytes, stamp: float = 0.0) -> bytes:
    """An envelope applying ``payload`` once for ``(session_id, seq)``; ``ack`` is the lowest
    sequence number the client still awaits (results below it may be discarded)."""
    return _CMD.pack(ENVELOPE_VERSION, COMMAND, stamp, session_id, seq, ack) + payload


def keepalive_entry(session_id: int, stamp: float = 0.0) -> bytes:
    """An envelope recording activity of a session without a command."""
    return _SID.pack(ENVELOPE_VERSION, KEEPALIVE, stamp, session_id)


def close_entry(session_id: int, stamp: float = 0.0) -> bytes:
    """An envelope closing a session."""
    return _SID.pack(ENVELOPE_VERSION, CLOSE, stamp, session_id)


def _keepalive_for(session_id: int, node: RaftNode) -> bytes:
    return keepalive_entry(session_id, stamp_for(node))


def tick_entry(stamp: float) -> bytes:
    """An envelope that only moves log time forward (used by the leader's lease clock)."""
    return _HEAD.pack(ENVELOPE_VERSION, TICK, stamp)


class SessionStateMachine(StateMachine):
    """A state machine layer giving exactly-once semantics to :class:`Session` clients.

    ``inner`` is the application's :class:`raftlib.StateMachine`; its ``apply`` results must be
    encodable by :mod:`raftlib.valuecodec` (they are recorded for duplicates), or
    :class:`CommandError` values for deterministic failures. Subclasses may instead override
    :meth:`apply_payload`, :meth:`capture_inner` and :meth:`restore_inner`.

    ``session_timeout`` (log seconds), ``max_sessions`` and ``max_responses`` must be the same on
    every member: they decide outcomes on apply.
    """

    def __init__(
        self,
        inner: StateMachine | None = None,
        *,
        session_timeout: float = 60.0,
        max_sessions: int = 10_000,
        max_responses: int = 1024,
        clock_period: float | None = None,
    ) -> None:
        if not session_timeout > 0:
            raise ValueError(f"session_timeout must be > 0 seconds, not {session_timeout}")
        if max_sessions < 1 or max_responses < 1:
            raise ValueError("max_sessions and max_responses must be >= 1")
        self.inner = inner
        self.session_timeout = float(session_timeout)
        self.max_sessions = max_sessions
        self.max_responses = max_responses
        self.clock_period = float(clock_period) if clock_period is not None else self.session_timeout / 10
        """How far log time may lag the leader's clock (the LogClock ticks at this period)."""
        self._activity = 0.0
        self._sessions: OrderedDict[int, _Record] = OrderedDict()
        self._log_time = 0.0
        self._index = 0

    # -- what the application sees during apply -------------------------------------------------

    @property
    def log_time(self) -> float:
        """Log time: the largest leader timestamp applied so far (seconds since the epoch)."""
        return self._log_time

    @property
    def index(self) -> int:
        """The log index of the entry being (or last) applied."""
        return self._index

    def sessions(self) -> dict[int, float]:
        """Live sessions and their last activity in log time (a copy, for inspection)."""
        return {sid: rec.last_active for sid, rec in self._sessions.items()}

    # -- apply ------------------------------------------------------------------------------------

    def apply(self, command: bytes, index: int) -> Any:
        self._index = index
        if len(command) < _HEAD.size or command[0] != ENVELOPE_VERSION or command[1] not in _KINDS:
            return InvalidCommand(f"entry {index} is not a version-{ENVELOPE_VERSION} session envelope")
        _, kind, stamp = _HEAD.unpack_from(command)
        if stamp > self._log_time:
            if self._log_time == 0.0:
                self._first_leader_stamp(stamp)
            self._log_time = stamp
            self._expire()
        if stamp < 0:  # a follower's clock: trusted only within the window of the leader's
            if self._log_time == 0.0:  # no leader stamp yet (a new cluster): nothing to clamp to
                self._activity = -stamp
            else:
                self._activity = min(max(-stamp, self._log_time), self._log_time + self.clock_period)
        else:
            self._activity = self._log_time
        if kind == COMMAND:
            if len(command) < _CMD.size:
                return InvalidCommand(f"entry {index}: truncated command envelope")
            _, _, _, sid, seq, ack = _CMD.unpack_from(command)
            return self._command(sid, seq, ack, command[_CMD.size:], index)
        if kind == PLAIN:
            return self.apply_payload(command[_HEAD.size:], index)
        if kind == REGISTER:
            if len(self._sessions) >= self.max_sessions:
                return TooManySessions(f"{self.max_sessions} sessions are open", self.max_sessions)
            self._sessions[index] = _Record(self._activity)
            return index
        if kind == TICK:
            return None
        if len(command) < _SID.size:
            return InvalidCommand(f"entry {index}: truncated session envelope")
        sid = _SID.unpack_from(command)[3]
        rec = self._sessions.get(sid)
        if rec is None:
            return SessionExpired(sid)
        if kind == KEEPALIVE:
            self._touch(sid, rec)
            return None
        del self._sessions[sid]  # CLOSE
        return None

    def _touch(self, sid: int, rec: _Record) -> None:
        if self._activity > rec.last_active:
            rec.last_active = self._activity
        self._sessions.move_to_end(sid)

    def _first_leader_stamp(self, stamp: float) -> None:
        # Activity recorded before any leader stamp came unclamped from followers' clocks; clamp
        # it now, so activity again lies within clock_period of the log time it was recorded at.
        # Their order is that of arrival, not of activity: sort them once, so the expiry scan
        # may stop at the first live session from now on.
        for rec in self._sessions.values():
            rec.last_active = min(rec.last_active, stamp + self.clock_period)
        ordered = sorted(self._sessions.items(), key=lambda item: (item[1].last_active, item[0]))
        self._sessions = OrderedDict(ordered)

    def _expire(self) -> None:
        # Sessions are kept in order of their last activity entry. Activity is at least the log
        # time of its entry and at most clock_period past it, and log time never goes back: once
        # a session's activity is clock_period past the limit, every later one is live.
        limit = self._log_time - self.session_timeout
        sessions = self._sessions
        expired = []
        for sid, rec in sessions.items():
            if rec.last_active >= limit + self.clock_period:
                break
            if rec.last_active < limit:
                expired.append(sid)
        for sid in expired:
            del sessions[sid]
            log.debug("session %d expired at log time %.3f", sid, self._log_time)

    def _command(self, sid: int, seq: int, ack: int, payload: bytes, index: int) -> Any:
        rec = self._sessions.get(sid)
        if rec is None:
            return SessionExpired(sid)
        self._touch(sid, rec)
        responses = rec.responses
        if ack > rec.watermark:
            if ack - rec.watermark <= len(responses):
                for s in range(rec.watermark, ack):
                    responses.pop(s, None)
            else:
                rec.responses = responses = {s: r for s, r in responses.items() if s >= ack}
            rec.watermark = ack
        if seq < rec.watermark:
            return SessionStale(
                f"session {sid}: sequence {seq} is below the acknowledged {rec.watermark}", sid, seq
            )
        cached = responses.get(seq, _MISSING)
        if cached is not _MISSING:
            return _recorded(cached)
        if len(responses) >= self.max_responses:
            return TooManyPendingResponses(
                f"session {sid} holds {len(responses)} unacknowledged results (limit {self.max_responses})",
                self.max_responses,
            )
        result = self.apply_payload(payload, index)
        if _plain(result):
            responses[seq] = result  # immutable: a duplicate gets this very value
            return result
        try:
            responses[seq] = encode(result, _SNAP_TABLE_MAX)
        except CodecError as exc:
            result = CommandError(f"the command's result cannot be recorded: {exc}")
            responses[seq] = encode(result)
        return result

    def apply_payload(self, payload: bytes, index: int) -> Any:
        """Apply an application command (deduplicated already). Default: ``inner.apply``."""
        if self.inner is None:
            raise NotImplementedError(f"{type(self).__name__} has no inner state machine")
        return self.inner.apply(payload, index)

    # -- snapshots ----------------------------------------------------------------------------------

    def snapshot(self) -> SnapshotWriter:
        # On the loop: a point-in-time copy (recorded results are immutable bytes); it is
        # encoded in the snapshot thread.
        sessions = [
            [sid, rec.last_active, rec.watermark, list(rec.responses.items())]
            for sid, rec in self._sessions.items()
        ]  # results recorded unencoded are encoded in the snapshot thread (_SessionSnapshot)
        return _SessionSnapshot({"time": self._log_time, "sessions": sessions}, self.capture_inner())

    def capture_inner(self) -> bytes | SnapshotWriter:
        """Capture the application's state (on the loop). Default: ``inner.snapshot()``."""
        if self.inner is None:
            return b""
        return self.inner.snapshot()

    def restore(self, data: bytes) -> None:
        self.restore_stream(io.BytesIO(data))

    def restore_stream(self, stream: BinaryIO) -> None:
        head = stream.read(_SNAP_HEAD.size)
        if len(head) != _SNAP_HEAD.size:
            raise CodecError("session snapshot: truncated header")
        magic, size = _SNAP_HEAD.unpack(head)
        if magic != _SNAP_MAGIC:
            raise CodecError(f"not a session snapshot (magic {magic!r})")
        table = decode(stream.read(size), _SNAP_TABLE_MAX)
        sessions: OrderedDict[int, _Record] = OrderedDict()
        for sid, last, watermark, responses in table["sessions"]:
            rec = _Record(float(last))
            rec.watermark = int(watermark)
            rec.responses = {int(s): bytes(r) for s, r in responses}
            sessions[int(sid)] = rec
        self._sessions = sessions
        self._log_time = float(table["time"])
        self.restore_inner(stream)

    def restore_inner(self, stream: BinaryIO) -> None:
        """Restore the application's state from the rest of the snapshot (worker thread)."""
        if self.inner is not None:
            self.inner.restore_stream(stream)


class _SessionSnapshot(SnapshotWriter):
    def __init__(self, table: dict[str, Any], inner: bytes | SnapshotWriter) -> None:
        self.table = table
        self.inner = inner

    def chunks(self) -> Iterator[bytes]:
        for entry in self.table["sessions"]:
            entry[3] = [(seq, _encoded(result)) for seq, result in entry[3]]
        table = encode(self.table, _SNAP_TABLE_MAX)
        yield _SNAP_HEAD.pack(_SNAP_MAGIC, len(table)) + table
        if isinstance(self.inner, SnapshotWriter):
            yield from self.inner.chunks()
        elif isinstance(self.inner, bytes | bytearray):
            yield bytes(self.inner)
        else:
            kind = type(self.inner).__name__
            raise TypeError(f"inner snapshot must be bytes or a SnapshotWriter, not {kind}")

    def release(self) -> None:
        if isinstance(self.inner, SnapshotWriter):
            self.inner.release()


RETRYABLE: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError, ProposalDropped, NotLeader)
"""Errors after which a proposal may be retried (its outcome is unknown or it was not applied)."""

_CLOCK_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE, NodeStopped, CommandError)


class LogClock:
    """Keeps log time moving: on the leader, proposes a ``TICK`` when log time lags its clock.

    Run one on every member (it does nothing on followers): ``clock = LogClock(node, sm)``,
    ``clock.start()`` after the node started, ``await clock.stop()`` before stopping it. Every
    ``interval`` seconds the leader checks whether ``period`` seconds passed since the log
    time ``sm`` shows, and if so stamps a tick; subclasses add other leader duties through
    :meth:`on_leader` (the batteries expire leases there). ``period`` defaults to the state
    machine's ``clock_period`` (a tenth of the session timeout).

    A follower's clock sleeps until the node reports a leadership change (``leader_changes()``),
    checking at least every ``idle_check`` seconds, so idle members cost next to nothing.
    """

    def __init__(
        self,
        node: RaftNode,
        sm: SessionStateMachine,
        *,
        period: float | None = None,
        interval: float = 0.05,
        idle_check: float = 1.0,
    ) -> None:
        self.node = node
        self.sm = sm
        self.period = period if period is not None else sm.clock_period
        self.interval = interval
        self.idle_check = idle_check
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._was_leader = False

    def start(self) -> None:
        """Start the clock's task on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"log-clock-{getattr(self.node, 'id', '?')}")

    async def stop(self) -> None:
        """Cancel the clock's tasks and wait for them."""
        await cancel_and_wait((self._task, self._watcher))
        self._task = self._watcher = None

    async def _watch(self) -> None:
        async for _ in self.node.leader_changes():
            self._changed.set()

    async def _idle(self) -> None:
        """Wait for a leadership change (or ``idle_check`` seconds) while not the leader."""
        node = self.node
        if node.running and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch())
            await asyncio.sleep(0)  # let it subscribe before the state is checked again
            if node.is_leader:
                return
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), self.idle_check)
        self._changed.clear()

    async def _run(self) -> None:
        while True:
            node = self.node
            if not node.running or not node.is_leader:
                self._was_leader = False
                await self._idle()
                continue
            if not self._was_leader:
                self._was_leader = True
                self.on_promoted()
            try:
                now = time.time()
                if now - self.sm.log_time >= self.period:
                    await node.propose(tick_entry(now), timeout=max(self.interval, 1.0))
                await self.on_leader()
            except _CLOCK_ERRORS as exc:
                log.debug("log clock on %s: %r", getattr(node, "id", "?"), exc)
            await asyncio.sleep(self.interval)

    def on_promoted(self) -> None:
        """Called once when this member is seen to have become the leader."""

    async def on_leader(self) -> None:
        """Called every ``interval`` on the leader (after the tick check)."""


CLOSE_TIMEOUT = 1.0
"""How long :meth:`Session.close` tries to close the session through the log."""


class Session:
    """A client session: ``await session.call(payload)`` applies ``payload`` exactly once.

    ``nodes`` is the :class:`raftlib.RaftNode` to propose through, or several members of the
    same cluster (tried in turn when one is stopped, and the leader first on ``NotLeader``). A
    single node should run with ``NodeConfig(forward_proposals=True)`` so it can be a follower.

    A call retries after ``TimeoutError``, ``ProposalDropped`` (leadership lost), ``NotLeader``
    and a stopped node (when others are given) with the *same* sequence number, each attempt
    bounded by ``attempt_timeout``, the whole call by ``timeout``. Results that are
    :class:`CommandError` values are raised. At most ``max_outstanding`` calls are in flight
    (keep it at or below the state machine's ``max_responses``). ``keepalive`` seconds of
    idleness send a keep-alive entry (pick well below the session timeout; ``None``: never).
    """

    def __init__(
        self,
        nodes: RaftNode | Sequence[RaftNode],
        *,
        timeout: float = 30.0,
        attempt_timeout: float = 5.0,
        max_outstanding: int = 256,
        keepalive: float | None = 10.0,
    ) -> None:
        one = [cast("RaftNode", nodes)]
        self._nodes: list[RaftNode] = list(nodes) if isinstance(nodes, list | tuple) else one
        if not self._nodes:
            raise ValueError("a session needs at least one node")
        if not timeout > 0 or not attempt_timeout > 0:
            raise ValueError("timeout and attempt_timeout must be > 0")
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.keepalive = keepalive
        self._current = 0
        self.session_id: int | None = None
        self._next_seq = 1
        self._outstanding: set[int] = set()
        self._ack = 1
        """The lowest sequence number still awaited: min(outstanding), or the next one if none."""
        self._slots = asyncio.Semaphore(max_outstanding)
        self._last_activity = 0.0
        self._keepalive_task: asyncio.Task[None] | None = None
        self.retries = 0
        """Attempts beyond the first, over the session's life (for tests and metrics)."""

    @property
    def node(self) -> RaftNode:
        """The node proposals currently go through."""
        return self._nodes[self._current]

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> int:
        """Register the session through the log; returns its id (the registering entry's index).

        Registration is retried like a call; a retried registration may leave an orphan
        session behind, which expires after the session timeout.
        """
        if self.session_id is not None:
            return self.session_id
        result = await self._submit(lambda node: register_entry(stamp_for(node)))
        self.session_id = int(result)
        self._last_activity = time.monotonic()
        if self.keepalive is not None:
            self._keepalive_task = asyncio.create_task(self._keepalive_loop())
        return self.session_id

    async def close(self) -> None:
        """Close the session through the log (best effort, for at most ``CLOSE_TIMEOUT`` seconds:
        a session that could not be closed expires after the session timeout)."""
        task, self._keepalive_task = self._keepalive_task, None
        await cancel_and_wait((task,))
        sid, self.session_id = self.session_id, None
        if sid is not None:
            with contextlib.suppress(CommandError, TimeoutError, NodeStopped):
                await self._submit(lambda node: close_entry(sid, stamp_for(node)), CLOSE_TIMEOUT)

    async def call(self, payload: bytes, timeout: float | None = None) -> Any:
        """Apply ``payload`` exactly once; returns the state machine's result.

        Raises the :class:`CommandError` the state machine recorded (e.g.
        :class:`SessionExpired`), :class:`SessionCallTimeout` when no attempt got an answer in
        time (the command may have been applied), ``NodeStopped`` when no node is left.
        """
        sid = self.session_id
        if sid is None:
            raise RuntimeError("the session is not open: await session.open() first")
        slots = self._slots
        await slots.acquire()
        outstanding = self._outstanding
        seq = self._next_seq
        self._next_seq = seq + 1
        outstanding.add(seq)
        try:

            def entry(node: RaftNode) -> bytes:
                stamp = time.time() if node.is_leader else -time.time()
                return _CMD.pack(ENVELOPE_VERSION, COMMAND, stamp, sid, seq, self._ack) + payload

            return await self._submit(entry, timeout)
        finally:
            outstanding.discard(seq)
            if seq == self._ack:  # the lowest awaited one is answered: find the next (amortized O(1))
                ack, end = seq + 1, self._next_seq
                while ack < end and ack not in outstanding:
                    ack += 1
                self._ack = ack
            self._last_activity = time.monotonic()
            slots.release()

    async def _submit(self, entry: Callable[[RaftNode], bytes], timeout: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        attempts = 0
        delay = 0.01
        last: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SessionCallTimeout(attempts, last)
            node = self._nodes[self._current]
            attempts += 1
            if attempts > 1:
                self.retries += 1
            try:
                result = await node.propose(entry(node), timeout=min(self.attempt_timeout, remaining))
            except NotLeader as exc:
                last = exc
                self._prefer(exc.leader_id)
            except NodeStopped as exc:
                last = exc
                if len(self._nodes) == 1 or not any(n.running for n in self._nodes):
                    raise
                self._current = (self._current + 1) % len(self._nodes)
            except RETRYABLE as exc:
                last = exc
            else:
                if isinstance(result, CommandError):
                    raise result
                return result
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.2)

    def _prefer(self, leader_id: str | None) -> None:
        for i, node in enumerate(self._nodes):
            if leader_id is not None and node.id == leader_id and node.running:
                self._current = i
                return
        if len(self._nodes) > 1:
            self._current = (self._current + 1) % len(self._nodes)

    async def _keepalive_loop(self) -> None:
        assert self.keepalive is not None
        period = self.keepalive
        while True:
            idle = time.monotonic() - self._last_activity
            if idle < period or self._outstanding:
                await asyncio.sleep(max(period - idle, period / 10))
                continue
            sid = self.session_id
            if sid is None:
                return
            try:
                await self._submit(functools.partial(_keepalive_for, sid))
            except SessionExpired:
                log.warning("session %d expired; keep-alives stop", sid)
                return
            except (CommandError, TimeoutError, NodeStopped) as exc:
                log.debug("session %d keep-alive failed: %r", sid, exc)
            self._last_activity = time.monotonic()


__all__ = [
    "RETRYABLE",
    "InvalidCommand",
    "LogClock",
    "Session",
    "SessionCallTimeout",
    "SessionExpired",
    "SessionStale",
    "SessionStateMachine",
    "TooManyPendingResponses",
    "TooManySessions",
    "close_entry",
    "command_entry",
    "keepalive_entry",
    "plain_entry",
    "register_entry",
    "stamp_for",
    "tick_entry",
]

"""ReplicatedStateMachine: several named replicated objects in one Raft group.

Owns the dispatch of commands to objects, the snapshot format holding every object, and the
member-side client (one exactly-once :class:`~raftlib.sessions.Session` per connected member,
plus a clock that stamps log time and proposes the leader's duties such as lease expiry).

Invariants: every member registers the same objects (same names and types) before its node
starts; a snapshot restores only onto the same set of objects; a command for an object or
method a member does not have is answered with :class:`UnknownCommand` on every member alike.

Snapshot layout (after the session table of :class:`SessionStateMachine`): frames of
``u64 length + valuecodec bytes``: first ``[[name, type, version], ...]``, then for each
object its records as ``[1, record]`` frames closed by ``[0]``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
from collections.abc import Awaitable, Iterator
from typing import Any, BinaryIO, TypeVar

from raftlib.errors import NodeStopped, NotLeader, ProposalDropped
from raftlib.recipes.replicated import CommandFailed, RecipeError, Replicated, UnknownCommand
from raftlib.sessions import (
    RETRYABLE,
    InvalidCommand,
    LogClock,
    Session,
    SessionStateMachine,
    plain_entry,
    stamp_for,
)
from raftlib.statemachine import SnapshotWriter
from raftlib.valuecodec import MAX_BYTES, CodecError, CommandError, decode, encode

log = logging.getLogger(__name__)

Obj = TypeVar("Obj", bound=Replicated)

_FRAME = struct.Struct("<Q")
_FRAME_MAX = 1 << 32
_MAGIC = b"RLRG"
_END = object()
_DUTY_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE, NodeStopped)


class ReplicatedStateMachine(SessionStateMachine):
    """A state machine hosting named :class:`Replicated` objects, with exactly-once sessions.

    ::

        group = ReplicatedStateMachine()
        config = group.add(ReplDict("config"))
        locks = group.add(Locks("locks"))
        async with RaftNode("n1", members, group, data_dir="data/n1",
                            config=NodeConfig(forward_proposals=True)) as node:
            async with group.connect(node):
                await config.put("mode", "fast")

    ``max_command_bytes`` bounds one encoded command (the codec refuses larger ones with
    ``PayloadTooLarge`` at the call site). The session parameters are those of
    :class:`SessionStateMachine` and must be the same on every member.
    """

    def __init__(
        self,
        *,
        session_timeout: float = 60.0,
        max_sessions: int = 10_000,
        max_responses: int = 1024,
        max_command_bytes: int = MAX_BYTES,
    ) -> None:
        super().__init__(
            None, session_timeout=session_timeout, max_sessions=max_sessions, max_responses=max_responses
        )
        self.max_command_bytes = max_command_bytes
        self._objects: dict[str, Replicated] = {}
        self._node: Any = None
        self._session: Session | None = None
        self._clock: _GroupClock | None = None

    # -- registration ----------------------------------------------------------------------

    def add(self, obj: Obj) -> Obj:
        """Register ``obj`` under its name (before the node starts, the same on every member)."""
        if not isinstance(obj, Replicated):
            raise TypeError(f"only Replicated objects can be added, not {type(obj).__name__}")
        if obj.name in self._objects:
            raise RecipeError(f"an object named {obj.name!r} is already registered")
        if obj._group is not None:
            raise RecipeError(f"{obj!r} already belongs to a group")
        obj._group = self
        self._objects[obj.name] = obj
        return obj

    def get(self, name: str, kind: type[Obj]) -> Obj:
        """The object registered as ``name``, checked to be a ``kind`` (typed for mypy)."""
        obj = self._objects.get(name)
        if obj is None:
            raise RecipeError(f"no object named {name!r} is registered (have {sorted(self._objects)})")
        if not isinstance(obj, kind):
            raise RecipeError(f"{name!r} is a {type(obj).__name__}, not a {kind.__name__}")
        return obj

    @property
    def objects(self) -> dict[str, Replicated]:
        """The registered objects by name (a copy)."""
        return dict(self._objects)

    # -- apply --------------------------------------------------------------------------------

    def apply_payload(self, payload: bytes, index: int) -> Any:
        try:
            name, method, args, kwargs = decode(payload, self.max_command_bytes)
        except (CodecError, ValueError, TypeError) as exc:
            return InvalidCommand(f"entry {index}: not a recipe command: {exc}")
        obj = self._objects.get(name)
        if obj is None:
            return UnknownCommand(f"no object named {name!r} on this member", name, method)
        command = type(obj).commands.get(method)
        if command is None or not isinstance(args, list) or not isinstance(kwargs, dict):
            return UnknownCommand(f"{type(obj).__name__} {name!r} has no command {method!r}", name, method)
        try:
            return command.apply(obj, args, kwargs)
        except CommandError as exc:
            return exc
        except Exception as exc:  # a bug in the method: the same on every member, keep serving
            log.warning("%s.%s failed at index %d: %r", name, method, index, exc)
            return CommandFailed(f"{name}.{method} raised {type(exc).__name__}: {exc}", type(exc).__name__)

    # -- snapshots ----------------------------------------------------------------------------

    def capture_inner(self) -> SnapshotWriter:
        views = [(obj, obj.capture()) for obj in self._objects.values()]
        return _ObjectsSnapshot(views)

    def restore_inner(self, stream: BinaryIO) -> None:
        magic = stream.read(len(_MAGIC))
        if magic != _MAGIC:
            raise RecipeError(f"not a recipes snapshot (magic {magic!r})")
        frames = _read_frames(stream)
        header = next(frames, None)
        if not isinstance(header, list):
            raise RecipeError("recipes snapshot: missing object list")
        names = [str(entry[0]) for entry in header]
        if sorted(names) != sorted(self._objects):
            raise RecipeError(
                f"the snapshot holds objects {sorted(names)} but this member registered "
                f"{sorted(self._objects)}: every member must register the same objects"
            )
        for name, type_name, version in header:
            obj = self._objects[name]
            if type_name != obj.type_name:
                raise RecipeError(f"object {name!r} is a {type_name} in the snapshot, a {obj.type_name} here")
            if int(version) > type(obj).version:
                raise RecipeError(
                    f"object {name!r} was written by {type_name} version {version}; "
                    f"this build has version {type(obj).version}"
                )
            records = _records(frames, name)
            obj.load(records, int(version))
            if next(records, _END) is not _END:
                raise RecipeError(f"object {name!r} left snapshot records unread")

    # -- the member-side client ---------------------------------------------------------------

    def connect(
        self,
        node: Any,
        *,
        timeout: float = 30.0,
        attempt_timeout: float = 5.0,
        max_outstanding: int | None = None,
        keepalive: float | None = None,
        clock_interval: float = 0.05,
    ) -> _Connection:
        """Bind this member's objects to ``node`` (the running :class:`raftlib.RaftNode` whose
        state machine is this group). Use as ``async with group.connect(node):`` or
        ``await group.connect(node)``; :meth:`disconnect` ends it.

        Opens one exactly-once session (calls are retried safely after timeouts and leader
        changes, each bounded by ``timeout``) and starts the group clock (log time ticks and
        the leader's duties such as lease expiry). Run the node with
        ``NodeConfig(forward_proposals=True)`` so calls work on followers too.
        """
        if self._node is not None:
            raise RecipeError("this group is already connected; disconnect() first")
        if max_outstanding is None:
            max_outstanding = min(256, self.max_responses)
        if keepalive is None:
            keepalive = self.session_timeout / 3
        self._node = node
        self._session = Session(
            node, timeout=timeout, attempt_timeout=attempt_timeout,
            max_outstanding=max_outstanding, keepalive=keepalive,
        )
        self._clock = _GroupClock(node, self, interval=clock_interval)
        return _Connection(self)

    async def _open(self) -> None:
        assert self._session is not None and self._clock is not None
        self._clock.start()
        try:
            await self._session.open()
        except BaseException:
            await self.disconnect()
            raise

    async def disconnect(self) -> None:
        """Close the session and stop the clock (idempotent)."""
        clock, session = self._clock, self._session
        self._clock = self._session = None
        self._node = None
        if clock is not None:
            await clock.stop()
        if session is not None:
            await session.close()

    @property
    def node(self) -> Any:
        """The node this member is connected through."""
        if self._node is None:
            raise RecipeError("the group is not connected: use `async with group.connect(node):`")
        return self._node

    @property
    def session(self) -> Session:
        """The exactly-once session calls go through."""
        if self._session is None or self._session.session_id is None:
            raise RecipeError("the group is not connected: use `async with group.connect(node):`")
        return self._session

    async def call(
        self, name: str, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
    ) -> Any:
        """Apply ``name.method(*args, **kwargs)`` exactly once; returns its result."""
        return await self._send(name, method, args, kwargs)

    def _send(
        self, name: str, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        """Encode the command and return the session call that applies it (to be awaited)."""
        payload = encode([name, method, list(args), dict(kwargs)], self.max_command_bytes)
        return self.session.call(payload)

    async def propose_idempotent(self, name: str, method: str, args: list[Any]) -> Any:
        """Propose a command without a session (no deduplication: it must be idempotent)."""
        node = self.node
        payload = encode([name, method, list(args), {}], self.max_command_bytes)
        result = await node.propose(plain_entry(payload, stamp_for(node)), timeout=5.0)
        if isinstance(result, CommandError):
            raise result
        return result

    async def read_barrier(self, timeout: float = 5.0) -> None:
        """Linearizable read point for every object of this member (thesis §6.4 ReadIndex).

        Tried in slices of the session's ``attempt_timeout`` until ``timeout``: a read index
        request sent to a leader that just died or stepped down (``LeadershipLost``) is then
        asked again of the next one.
        """
        node = self.node
        attempt = self._session.attempt_timeout if self._session is not None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                await node.read_barrier(max(0.0, min(attempt, remaining)))
                return
            except (TimeoutError, asyncio.TimeoutError, NotLeader, ProposalDropped):
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.01)


class _Connection:
    """What :meth:`ReplicatedStateMachine.connect` returns: awaitable and an async context."""

    def __init__(self, group: ReplicatedStateMachine) -> None:
        self.group = group

    def __await__(self) -> Any:
        return self.group._open().__await__()

    async def __aenter__(self) -> ReplicatedStateMachine:
        await self.group._open()
        return self.group

    async def __aexit__(self, *exc: object) -> None:
        await self.group.disconnect()


class _GroupClock(LogClock):
    """The group's clock: log-time ticks plus each object's leader duties (lease expiry)."""

    group: ReplicatedStateMachine

    def __init__(self, node: Any, group: ReplicatedStateMachine, interval: float) -> None:
        super().__init__(node, group, interval=interval)
        self.group = group
        self._inflight: set[tuple[str, str, str]] = set()

    def on_promoted(self) -> None:
        for obj in self.group._objects.values():
            obj.on_promoted()

    async def on_leader(self) -> None:
        duties = []
        for obj in list(self.group._objects.values()):
            for method, args in obj.due_commands():
                key = (obj.name, method, repr(args))
                if key not in self._inflight:
                    self._inflight.add(key)
                    duties.append(self._propose_duty(key, obj.name, method, args))
        if duties:  # proposed together: they share the leader's next batch
            await asyncio.gather(*duties)

    async def _propose_duty(self, key: tuple[str, str, str], name: str, method: str, args: list[Any]) -> None:
        try:
            payload = encode([name, method, list(args), {}])
            await self.node.propose(plain_entry(payload, stamp_for(self.node)), timeout=2.0)
        except _DUTY_ERRORS as exc:  # still due at the next interval: proposed again then
            log.debug("leader duty %s.%s%r not done: %r", name, method, args, exc)
        finally:
            self._inflight.discard(key)


class _ObjectsSnapshot(SnapshotWriter):
    def __init__(self, views: list[tuple[Replicated, Any]]) -> None:
        self.views = views

    def chunks(self) -> Iterator[bytes]:
        yield _MAGIC
        yield _frame([[obj.name, obj.type_name, type(obj).version] for obj, _ in self.views])
        for obj, view in self.views:
            batch = io.BytesIO()
            for record in obj.dump(view):
                batch.write(_frame([1, record]))
                if batch.tell() >= 64 << 10:
                    yield batch.getvalue()
                    batch = io.BytesIO()
            batch.write(_frame([0]))
            yield batch.getvalue()

    def release(self) -> None:
        self.views = []


def _frame(value: Any) -> bytes:
    data = encode(value, _FRAME_MAX)
    return _FRAME.pack(len(data)) + data


def _read_frames(stream: BinaryIO) -> Iterator[Any]:
    while True:
        head = stream.read(_FRAME.size)
        if not head:
            return
        if len(head) != _FRAME.size:
            raise RecipeError("recipes snapshot: truncated frame header")
        (size,) = _FRAME.unpack(head)
        if size > _FRAME_MAX:
            raise RecipeError(f"recipes snapshot: frame of {size} bytes exceeds {_FRAME_MAX}")
        data = stream.read(size)
        if len(data) != size:
            raise RecipeError("recipes snapshot: truncated frame")
        yield decode(data, _FRAME_MAX)


def _records(frames: Iterator[Any], name: str) -> Iterator[Any]:
    for frame in frames:
        if frame == [0]:
            return
        if not (isinstance(frame, list) and len(frame) == 2 and frame[0] == 1):
            raise RecipeError(f"recipes snapshot: bad record frame in object {name!r}")
        yield frame[1]
    raise RecipeError(f"recipes snapshot: object {name!r} is truncated")


__all__ = ["ReplicatedStateMachine"]

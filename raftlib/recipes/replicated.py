"""Replicated objects: the base class and the ``@replicated`` decorator.

A :class:`Replicated` subclass is a named object that lives in a
:class:`~raftlib.recipes.group.ReplicatedStateMachine`. Methods decorated with
:func:`replicated` become replicated commands: calling one on a connected object encodes
``(object name, method name, args, kwargs)`` with :mod:`raftlib.valuecodec`, sends it through
the group's exactly-once session, and returns what the method returned when it was applied
(on every member, in log order). Plain methods are local reads.

Rules a replicated method must keep (they are what makes every member agree):

* deterministic: the same state and arguments give the same result and the same new state;
  no clocks, no randomness, no I/O -- use :attr:`Replicated.log_time` and
  :attr:`Replicated.index` for time and unique ids;
* arguments and results are encodable values (no pickle: see :mod:`raftlib.valuecodec`);
* a failure the caller should see is raised as a :class:`~raftlib.valuecodec.CommandError`
  subclass; it is recorded like a result. Any other exception is caught and becomes a
  :class:`CommandFailed` (every member fails the same way; the state is whatever the method
  left, so write methods that check before they change).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar, overload

from raftlib.valuecodec import CommandError

if TYPE_CHECKING:
    from raftlib.recipes.group import ReplicatedStateMachine

S = TypeVar("S", bound="Replicated")
P = ParamSpec("P")
R = TypeVar("R")


class RecipeError(Exception):
    """Misuse of a recipe on this member (not connected, duplicate name, mismatched snapshot)."""


class CommandFailed(CommandError, code="command_failed_unexpectedly"):
    """A replicated method raised something other than a CommandError (a bug in it).

    ``details`` holds the exception's type name. Every member recorded the same failure.
    """


class UnknownCommand(CommandError, code="unknown_command"):
    """The command names an object or method this member does not have (members differ?)."""


class ReplicatedCommand(Generic[S, P, R]):
    """The descriptor :func:`replicated` makes: on an instance it is an async proposer."""

    def __init__(self, fn: Callable[Concatenate[S, P], R]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        # Positional calls of a plain signature are checked by counting (inspect's bind costs
        # microseconds per call); anything else -- keywords, *args, keyword-only -- by bind.
        params = list(self.signature.parameters.values())[1:]
        plain = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        self._max_positional = len(params) if plain else -1
        self._min_positional = sum(p.default is inspect.Parameter.empty for p in params) if plain else 0

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> ReplicatedCommand[S, P, R]: ...

    @overload
    def __get__(self, obj: S, owner: type | None = None) -> Callable[P, Awaitable[R]]: ...

    def __get__(self, obj: S | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        command = self
        name = self.name
        low, high = self._min_positional, self._max_positional

        async def propose(*args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs or not low <= len(args) <= high:
                try:
                    command.signature.bind(obj, *args, **kwargs)
                except TypeError as exc:
                    raise TypeError(f"{type(obj).__name__}.{name}: {exc}") from None
            result: R = await obj._submit(name, args, kwargs)
            return result

        propose.__name__ = name
        propose.__doc__ = self.__doc__
        # Made once per instance: it shadows this (non-data) descriptor from now on.
        obj.__dict__[name] = propose
        return propose

    def apply(self, obj: S, args: list[Any], kwargs: dict[str, Any]) -> R:
        """Run the method itself (on apply)."""
        return self.fn(obj, *args, **kwargs)


def replicated(fn: Callable[Concatenate[S, P], R]) -> ReplicatedCommand[S, P, R]:
    """Make ``fn`` a replicated command: ``await obj.fn(...)`` applies it on every member.

    ``fn`` itself runs on apply and must be deterministic (see the module docstring); the
    awaited call returns its result or raises the :class:`CommandError` it raised.
    """
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"@replicated {fn.__name__} must be a plain function: it runs inside apply")
    return ReplicatedCommand(fn)


class Replicated:
    """Base class of objects multiplexed in a :class:`ReplicatedStateMachine`.

    Subclasses decorate commands with :func:`replicated` and implement the snapshot pair
    :meth:`snapshot_state` / :meth:`restore_state` (or the streaming trio :meth:`capture`,
    :meth:`dump`, :meth:`load`). ``version`` is stored in snapshots: raise it when the state's
    shape changes and accept the older shapes in :meth:`restore_state`.
    """

    version: ClassVar[int] = 1
    commands: ClassVar[dict[str, ReplicatedCommand[Any, Any, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        commands: dict[str, ReplicatedCommand[Any, Any, Any]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, ReplicatedCommand):
                    commands[attr] = value
        cls.commands = commands

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a replicated object needs a non-empty str name")
        self.name = name
        self._group: ReplicatedStateMachine | None = None
        self._waiters: dict[Any, list[asyncio.Future[None]]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def type_name(self) -> str:
        """The type recorded in snapshots (the class's qualified name)."""
        return type(self).__qualname__

    @property
    def group(self) -> ReplicatedStateMachine:
        """The group this object was added to."""
        if self._group is None:
            raise RecipeError(f"{self!r} was not added to a ReplicatedStateMachine")
        return self._group

    @property
    def log_time(self) -> float:
        """Log time during apply (the leader's clock as stamped into the log; see sessions)."""
        return self.group.log_time

    @property
    def index(self) -> int:
        """The log index of the entry being applied: unique and increasing, a good id or token."""
        return self.group.index

    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        """Encode and send ``self.method(*args, **kwargs)``; returns the awaitable of its result.

        Not a coroutine, so a subclass's checks and the encoding add no coroutine per call; the
        proposer awaits it, so what they raise still reaches the caller at its ``await``.
        """
        return self.group._send(self.name, method, args, kwargs)

    async def sync(self, timeout: float = 5.0) -> None:
        """Linearizable read point: afterwards local reads see every write acknowledged before."""
        await self.group.read_barrier(timeout)

    # -- local notifications (wake-ups only: never part of the replicated state) ------------

    def notify(self, key: Any = None) -> None:
        """Wake local waiters of ``key`` (call from a replicated method when ``key`` changed)."""
        waiters = self._waiters.pop(key, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def wait_change(self, key: Any = None, timeout: float = 1.0) -> None:
        """Wait (at most ``timeout`` seconds) until :meth:`notify` is called for ``key``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            pass
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[key]

    # -- snapshots -----------------------------------------------------------------------

    def snapshot_state(self) -> Any:
        """The whole state as an encodable value, copied (called on the loop, between applies)."""
        raise NotImplementedError(f"{type(self).__name__} must implement snapshot_state()")

    def restore_state(self, state: Any, version: int) -> None:
        """Replace the state with ``state`` written by class version ``version`` (worker thread)."""
        raise NotImplementedError(f"{type(self).__name__} must implement restore_state()")

    def capture(self) -> Any:
        """A point-in-time view for :meth:`dump` (on the loop; must be cheap). Default: the state."""
        return self.snapshot_state()

    def dump(self, view: Any) -> Iterator[Any]:
        """Encodable records of a captured view (in the snapshot thread). Default: one record."""
        yield view

    def load(self, records: Iterator[Any], version: int) -> None:
        """Rebuild from the records :meth:`dump` wrote (in the restore thread)."""
        items = list(records)
        if len(items) != 1:
            raise RecipeError(f"{self!r}: expected one snapshot record, found {len(items)}")
        self.restore_state(items[0], version)

    # -- leader duties (the group's clock calls these on the leader only) -------------------------

    def on_promoted(self) -> None:
        """This member just became the leader (e.g. extend lease deadlines, as etcd does)."""

    def due_commands(self) -> list[tuple[str, list[Any]]]:
        """Idempotent commands the leader should propose now, as ``(method, args)``."""
        return []


__all__ = ["CommandFailed", "RecipeError", "Replicated", "ReplicatedCommand", "UnknownCommand", "replicated"]

"""Replicated collections: a dict, a counter, a set and a FIFO queue.

Each is a :class:`~raftlib.recipes.replicated.Replicated` object: writes are replicated
commands (``await d.put(k, v)``, applied exactly once on every member), reads are local
(``d.get(k)``: this member's state, possibly behind the leader) or linearizable after a read
barrier (``await d.get_linearizable(k)``, or ``await d.sync()`` then local reads).

Values are stored as decoded from the log and handed out as they are: treat what a local read
returns as read-only (mutating it would change this member's copy only).

Invariant kept by each: its state is a function of the commands applied, in log order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Hashable, Iterator
from typing import Any

from raftlib.recipes.replicated import Replicated, replicated
from raftlib.valuecodec import CommandError

_BATCH = 1000
"""Items per snapshot record."""


class QueueEmpty(CommandError, code="queue_empty"):
    """``pop`` on an empty queue."""


class QueueFull(CommandError, code="queue_full"):
    """``push`` on a queue holding ``maxsize`` items; the item was not added."""


def _check_key(key: Any) -> None:
    if not isinstance(key, Hashable) or isinstance(key, list | dict | set):
        raise TypeError(f"keys must be hashable encodable values, not {type(key).__name__}")


class ReplDict(Replicated):
    """A replicated dict: ``put``/``delete``/``cas``/``put_if_absent``/``update``/``clear``.

    ``get`` reads this member's state; ``await get_linearizable`` first waits for a read
    barrier, so it sees every write acknowledged before it was called.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._data: dict[Any, Any] = {}

    # local reads
    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` on this member (``default`` when absent)."""
        return self._data.get(key, default)

    async def get_linearizable(self, key: Any, default: Any = None, timeout: float = 5.0) -> Any:
        """The value of ``key`` after a read barrier: reflects every acknowledged write."""
        await self.sync(timeout)
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[Any]:
        return list(self._data)

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._data.items())

    def to_dict(self) -> dict[Any, Any]:
        """A shallow copy of this member's dict."""
        return dict(self._data)

    # replicated commands
    @replicated
    def put(self, key: Any, value: Any) -> Any:
        """Set ``key``; returns the previous value (None when absent)."""
        old = self._data.get(key)
        self._data[key] = value
        self.notify(key)
        return old

    @replicated
    def delete(self, key: Any) -> bool:
        """Remove ``key``; returns whether it was present."""
        if key in self._data:
            del self._data[key]
            self.notify(key)
            return True
        return False

    @replicated
    def cas(self, key: Any, expected: Any, new: Any) -> bool:
        """Set ``key`` to ``new`` only if it is present and equals ``expected``; returns whether it did."""
        if key in self._data and self._data[key] == expected:
            self._data[key] = new
            self.notify(key)
            return True
        return False

    @replicated
    def put_if_absent(self, key: Any, value: Any) -> bool:
        """Set ``key`` only if it is absent; returns whether it did."""
        if key in self._data:
            return False
        self._data[key] = value
        self.notify(key)
        return True

    @replicated
    def update(self, items: dict[Any, Any]) -> int:
        """Set every key of ``items`` at once (atomically); returns the dict's new length."""
        self._data.update(items)
        for key in items:
            self.notify(key)
        return len(self._data)

    @replicated
    def clear(self) -> int:
        """Remove every key; returns how many there were."""
        n = len(self._data)
        self._data.clear()
        return n

    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        if method in ("put", "delete", "cas", "put_if_absent") and args:
            _check_key(args[0])
        elif method == "update" and args:
            if not isinstance(args[0], dict):
                raise TypeError("update() takes a dict")
            for key in args[0]:
                _check_key(key)
        return super()._submit(method, args, kwargs)

    # snapshots: a shallow copy on the loop, encoded in batches in the snapshot thread
    def capture(self) -> Any:
        return dict(self._data)

    def dump(self, view: Any) -> Iterator[Any]:
        items = list(view.items())
        for i in range(0, len(items), _BATCH):
            yield items[i : i + _BATCH]

    def load(self, records: Iterator[Any], version: int) -> None:
        data: dict[Any, Any] = {}
        for batch in records:
            for key, value in batch:
                data[key] = value
        self._data = data


class Counter(Replicated):
    """A replicated integer: ``add``, ``set``, ``compare_and_set``; ``value`` reads locally."""

    def __init__(self, name: str, initial: int = 0) -> None:
        super().__init__(name)
        self._value = int(initial)

    @property
    def value(self) -> int:
        """The value on this member."""
        return self._value

    async def get_linearizable(self, timeout: float = 5.0) -> int:
        """The value after a read barrier."""
        await self.sync(timeout)
        return self._value

    @replicated
    def add(self, delta: int = 1) -> int:
        """Add ``delta`` (may be negative); returns the new value."""
        if type(delta) is not int:
            raise CommandError(f"Counter.add takes an int, not {type(delta).__name__}")
        self._value += delta
        return self._value

    @replicated
    def set(self, value: int) -> int:
        """Set the value; returns the previous one."""
        if type(value) is not int:
            raise CommandError(f"Counter.set takes an int, not {type(value).__name__}")
        old, self._value = self._value, value
        return old

    @replicated
    def compare_and_set(self, expected: int, value: int) -> bool:
        """Set to ``value`` only if the value is ``expected``; returns whether it did."""
        if self._value != expected:
            return False
        self._value = value
        return True

    def snapshot_state(self) -> Any:
        return self._value

    def restore_state(self, state: Any, version: int) -> None:
        self._value = int(state)


class ReplSet(Replicated):
    """A replicated set: ``add``, ``discard``, ``clear``; ``x in s`` and ``members()`` read locally."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._items: set[Any] = set()

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def members(self) -> set[Any]:
        """A copy of this member's set."""
        return set(self._items)

    async def contains_linearizable(self, item: Any, timeout: float = 5.0) -> bool:
        await self.sync(timeout)
        return item in self._items

    @replicated
    def add(self, item: Any) -> bool:
        """Add ``item``; returns whether it was new."""
        if item in self._items:
            return False
        self._items.add(item)
        return True

    @replicated
    def discard(self, item: Any) -> bool:
        """Remove ``item``; returns whether it was present."""
        if item in self._items:
            self._items.discard(item)
            return True
        return False

    @replicated
    def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        return n

    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Awaitable[Any]:
        if method in ("add", "discard") and args:
            _check_key(args[0])
        return super()._submit(method, args, kwargs)

    def capture(self) -> Any:
        return list(self._items)

    def dump(self, view: Any) -> Iterator[Any]:
        for i in range(0, len(view), _BATCH):
            yield view[i : i + _BATCH]

    def load(self, records: Iterator[Any], version: int) -> None:
        items: set[Any] = set()
        for batch in records:
            items.update(batch)
        self._items = items


class Queue(Replicated):
    """A replicated FIFO queue: ``push``, ``pop`` (raises :class:`QueueEmpty`), ``pop_wait``.

    ``maxsize`` (0: unbounded) must be the same on every member; ``push`` beyond it raises
    :class:`QueueFull`. Every item is popped by exactly one caller.
    """

    def __init__(self, name: str, maxsize: int = 0) -> None:
        super().__init__(name)
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._items: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, default: Any = None) -> Any:
        """The head on this member, without removing it."""
        return self._items[0] if self._items else default

    def items(self) -> list[Any]:
        return list(self._items)

    @replicated
    def push(self, item: Any) -> int:
        """Append ``item``; returns the new length."""
        if self.maxsize and len(self._items) >= self.maxsize:
            raise QueueFull(f"queue {self.name!r} holds {self.maxsize} items", self.maxsize)
        self._items.append(item)
        self.notify()
        return len(self._items)

    @replicated
    def pop(self) -> Any:
        """Remove and return the head; raises :class:`QueueEmpty`."""
        if not self._items:
            raise QueueEmpty(f"queue {self.name!r} is empty")
        return self._items.popleft()

    async def pop_wait(self, timeout: float = 10.0) -> Any:
        """Pop, waiting up to ``timeout`` seconds for an item; raises QueueEmpty after that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                return await self.pop()
            except QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                await self.wait_change(None, min(remaining, 0.5))

    def capture(self) -> Any:
        return list(self._items)

    def dump(self, view: Any) -> Iterator[Any]:
        for i in range(0, len(view), _BATCH):
            yield view[i : i + _BATCH]

    def load(self, records: Iterator[Any], version: int) -> None:
        items: deque[Any] = deque()
        for batch in records:
            items.extend(batch)
        self._items = items


__all__ = ["Counter", "Queue", "QueueEmpty", "QueueFull", "ReplDict", "ReplSet"]

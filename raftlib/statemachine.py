"""The contract between raftlib and the application's replicated state machine.

Subclass :class:`StateMachine` and implement ``apply``; implement
``snapshot``/``restore`` so the log can be compacted::

    class Counter(raftlib.StateMachine):
        def __init__(self) -> None:
            self.value = 0

        def apply(self, command: bytes, index: int) -> int:
            self.value += int(command)
            return self.value            # becomes the result of node.propose()

        def snapshot(self) -> bytes:
            return str(self.value).encode()

        def restore(self, data: bytes) -> None:
            self.value = int(data)

Threading rules (the hashicorp/raft FSM pattern):

* ``apply`` runs on the event loop, one entry at a time, in log order. It must
  be deterministic (same commands → same state on every node) and must not
  block: it is on the critical path of every write.
* ``snapshot`` runs on the event loop too, between two applies, and must be
  cheap: return ``bytes`` for a small state, or a :class:`SnapshotWriter`
  that captured a point-in-time view (a copy-on-write structure, an immutable
  object, a database snapshot handle). Its ``chunks`` (or, by default, its
  ``write``) is then called in a worker thread while ``apply`` continues on
  the loop, so it must only read the captured view.
* ``restore`` (or ``restore_stream`` for large states) runs in a worker thread
  while no ``apply`` is in progress: the node does not apply anything until it
  returns.

An exception raised by ``apply`` is fatal for the node: it is logged, the node
stops, and pending proposals fail with :class:`StateMachineError`. A state
machine that failed to apply an entry has diverged and must not keep serving.
"""

from __future__ import annotations

import abc
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

SPOOL_IN_MEMORY_BYTES = 16 << 20
"""The default :meth:`SnapshotWriter.chunks` keeps up to this many bytes in memory before it
spills the snapshot to a temporary file."""

SPOOL_BLOCK_BYTES = 256 << 10
"""The size of the blocks the default :meth:`SnapshotWriter.chunks` reads its spool back in."""


class SnapshotWriter:
    """A point-in-time view of a large state, written out in a worker thread.

    Implement :meth:`chunks` or :meth:`write`; each has a default in terms of the other.
    Implement :meth:`chunks` when the state can be produced piece by piece: the node then
    streams the pieces straight into the snapshot file (the pattern of hashicorp/raft's
    ``FSMSnapshot.Persist`` writing into its sink), and no copy of the whole snapshot is ever
    held in memory::

        class Rows(raftlib.SnapshotWriter):
            def __init__(self, rows: list[bytes]) -> None:
                self.rows = rows             # captured on the loop

            def chunks(self) -> Iterator[bytes]:
                for row in self.rows:
                    yield row + b"\\n"
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.chunks is SnapshotWriter.chunks and cls.write is SnapshotWriter.write:
            raise TypeError(f"{cls.__name__} must implement chunks() or write()")

    def write(self, out: BinaryIO) -> None:
        """Write the captured state to ``out`` (called in a worker thread).

        The default writes what :meth:`chunks` yields.
        """
        for chunk in self.chunks():
            out.write(chunk)

    def chunks(self) -> Iterator[bytes]:
        """The captured state as consecutive pieces of bytes (called in a worker thread).

        The node stores exactly their concatenation. The default spools :meth:`write`'s output
        (in memory up to :data:`SPOOL_IN_MEMORY_BYTES`, then in a temporary file) and reads it
        back in blocks of :data:`SPOOL_BLOCK_BYTES`; an override that yields pieces of a few tens
        of KiB keeps the memory a snapshot costs independent of its size.
        """
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            self.write(spool)  # type: ignore[arg-type]
            spool.seek(0)
            while block := spool.read(SPOOL_BLOCK_BYTES):
                yield block

    def release(self) -> None:
        """Called once the snapshot is written (or failed): free the captured view."""


class StateMachine(abc.ABC):
    """Base class of replicated state machines."""

    @abc.abstractmethod
    def apply(self, command: bytes, index: int) -> Any:
        """Apply a committed command; the return value resolves ``propose()`` on its node."""

    def snapshot(self) -> bytes | SnapshotWriter:
        """Capture the state (cheaply, on the event loop); see the module docstring."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement snapshot(): the log cannot be compacted"
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's (simple form: all bytes at once)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement restore()")

    def restore_stream(self, stream: BinaryIO) -> None:
        """Replace the whole state from a stream; override for states too large for memory."""
        self.restore(stream.read())

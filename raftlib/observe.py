"""Observers: the events a RaftNode reports, for metrics exporters, tracing or logging.

Owns the :class:`Observer` base class (every event a no-op method), the
:class:`ObserverSet` a node calls (fans an event out to several observers and
contains their failures) and :func:`proposal_failure`, which names a failed
proposal's reason.

Invariants:

* A node without observers pays one ``is None`` test per event site and builds
  no argument object: events carry plain ints, floats and strings. With observers,
  an event reaches only those whose class overrides its method.
* Observers run synchronously on the node's event loop (the I/O thread never
  calls them); they must be quick and must not block. An observer that raises
  is logged once per event kind and skipped for that event; the node carries on.
* Events of one node arrive in the order they happen: ``on_commit(i)`` before
  the ``on_apply`` that reaches ``i``; a fsync's ``on_fsync`` before the
  acknowledgements it allowed are counted anywhere.

Example::

    class Log(raftlib.Observer):
        def on_leader_change(self, node_id, leader, term):
            print(node_id, "follows", leader, "in term", term)

    node = raftlib.RaftNode("n1", members, sm, observers=[Log()])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from raftlib.errors import NodeStopped, NotLeader, ProposalDropped, RequestTimeout

if TYPE_CHECKING:
    from raftlib.runtime.node import RaftNode

log = logging.getLogger("raftlib.observe")


class Observer:
    """Receives a node's events; override the ones you need (the others do nothing).

    Every event gets the reporting node's id first, so one observer may watch
    several nodes. Methods run on the node's event loop and must not block.
    """

    def attach(self, node: RaftNode) -> None:
        """Called once when ``node`` is created with this observer (read its state at scrape time)."""

    def on_leader_change(self, node_id: str, leader: str | None, term: int) -> None:
        """The node follows a new leader (``None``: it knows none, e.g. during an election)."""

    def on_commit(self, node_id: str, index: int) -> None:
        """The commit index reached ``index`` and the entries up to it are handed over for applying."""

    def on_apply(self, node_id: str, index: int, count: int) -> None:
        """``count`` committed entries (commands, no-ops, membership changes) were applied,
        up to ``index``."""

    def on_fsync(self, node_id: str, seconds: float, entries: int, inline: bool) -> None:
        """A WAL write of ``entries`` entries was made durable in ``seconds`` (write and fsync).

        ``inline``: done on the event loop (fast disk) rather than in the I/O thread."""

    def on_snapshot_taken(self, node_id: str, index: int, seconds: float) -> None:
        """The node snapshotted its state machine at ``index`` and compacted its log
        (``seconds``: capture, write and compaction)."""

    def on_snapshot_sent(self, node_id: str, to: str, index: int, offset: int, size: int, done: bool) -> None:
        """A chunk of snapshot ``index`` (``size`` bytes at ``offset``) was handed to the transport
        for ``to``; ``done`` on the last chunk."""

    def on_snapshot_send_failed(self, node_id: str, to: str, index: int, error: str) -> None:
        """Snapshot ``index`` could not be read to be sent to ``to`` (the leader retries later)."""

    def on_snapshot_received(self, node_id: str, index: int, offset: int, size: int) -> None:
        """A chunk of the leader's snapshot ``index`` was written to disk (``size`` bytes at ``offset``)."""

    def on_snapshot_installed(self, node_id: str, index: int, seconds: float) -> None:
        """The leader's snapshot ``index`` replaced the state machine (``seconds``: the restore)."""

    def on_snapshot_rejected(self, node_id: str, error: str) -> None:
        """A snapshot received from the leader failed its integrity checks (the leader sends it again)."""

    def on_proposal_failed(self, node_id: str, reason: str, may_still_commit: bool) -> None:
        """A proposal accepted by the node (placed in the log or forwarded) ended without a result.

        ``reason``: ``leadership_lost``, ``forward_lost``, ``timeout``, ``not_leader``,
        ``stopped``, ... (see :func:`proposal_failure`). ``may_still_commit``: the command may
        still be applied (the caller cannot tell), as on :class:`~raftlib.ProposalDropped`.
        Cancelling a call is not a failure."""


EVENTS: tuple[str, ...] = tuple(name for name in vars(Observer) if name.startswith("on_"))
"""The event methods of :class:`Observer`."""


def proposal_failure(exc: BaseException) -> tuple[str, bool]:
    """``(reason, may_still_commit)`` of the error a proposal failed with."""
    if isinstance(exc, ProposalDropped):
        return exc.reason, exc.may_still_commit
    if isinstance(exc, RequestTimeout):
        return "timeout", True
    if isinstance(exc, NotLeader):
        return "not_leader", False
    if isinstance(exc, NodeStopped):
        return "stopped", True
    return type(exc).__name__, True


_Handler = tuple[Observer, Callable[..., None]]
"""An observer and its bound method for one event."""


class ObserverSet(Observer):
    """What a node calls: each event goes to every observer, in the order they were given.

    An observer that raises is logged (once per observer and event kind, with the
    traceback) and the event goes on to the next observer. Each event of the set is a
    plain function over the bound methods of the observers that override it: an event
    no observer overrides costs one call that loops over nothing.
    """

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)
        for o in self.observers:
            if not isinstance(o, Observer):
                raise TypeError(f"observers must be raftlib.Observer instances, not {type(o).__name__}")
        self._logged: set[tuple[int, str]] = set()
        for event in EVENTS:
            handlers = tuple(
                (o, getattr(o, event)) for o in self.observers
                if getattr(type(o), event, None) is not getattr(Observer, event)
            )
            setattr(self, event, self._fan_out(event, handlers))

    def _fan_out(self, event: str, handlers: tuple[_Handler, ...]) -> Callable[..., None]:
        def fan_out(*args: Any) -> None:
            for o, handler in handlers:
                try:
                    handler(*args)
                except Exception:
                    self._failed(o, event)

        fan_out.__name__ = fan_out.__qualname__ = event
        return fan_out

    def attach(self, node: RaftNode) -> None:
        """Attach every observer (an error here is a configuration error: it propagates)."""
        for o in self.observers:
            o.attach(node)

    def proposal_failed(self, node_id: str, exc: BaseException) -> None:
        """Report a proposal that ended with ``exc`` (cancellations are not reported)."""
        if isinstance(exc, Exception):
            reason, may_still_commit = proposal_failure(exc)
            self.on_proposal_failed(node_id, reason, may_still_commit)

    def _failed(self, observer: Observer, event: str) -> None:
        key = (id(observer), event)
        if key not in self._logged:
            self._logged.add(key)
            log.exception("observer %r failed in %s (logged once; the node goes on)", observer, event)


def observer_set(observers: Iterable[Observer] | None) -> ObserverSet | None:
    """The set a node calls, or None when there is no observer (the node then skips every event)."""
    if not observers:
        return None
    s = ObserverSet(observers)
    return s if s.observers else None


__all__ = ["EVENTS", "Observer", "ObserverSet", "observer_set", "proposal_failure"]

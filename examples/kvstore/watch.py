"""Watches: a hub fed by the local apply stream, and the ``/v3/watch`` HTTP stream.

Guarantees (docs/kvstore.md):

* A watch is registered before the response headers are sent, at the store's
  current revision R with no ``await`` in between: without ``start_revision``
  it receives exactly the events of revisions after R; with ``start_revision``
  S it first receives the history from S (batched) and then the live events,
  each revision exactly once and in order.
* Events come from this member's own apply stream, so leader changes do not
  matter; if the member's state is replaced by a snapshot, every watcher is
  caught up from the history (or cancelled with ``compact_revision`` when that
  history was compacted away).
* All events of one revision go out in one message; one message is one HTTP
  chunk (one ``write()``) holding one JSON object and a newline.
* A watcher whose queue exceeds ``queue_limit`` messages (a client not
  reading) is cancelled with a ``cancel_reason`` and its stream ends; if the
  client still does not read, the connection is closed after a grace period.
* A client disconnect cancels the watch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import web

from examples.kvstore.errors import EtcdError

if TYPE_CHECKING:
    from examples.kvstore.api import Request
    from examples.kvstore.machine import KVMachine
    from examples.kvstore.server import KVServer

log = logging.getLogger("kvstore.watch")

HISTORY_BATCH = 1000
"""At most this many history events per catch-up message (whole revisions are never split)."""
SLOW_GRACE = 5.0
"""Seconds a cancelled slow watcher's connection may stay blocked before it is closed."""
FILTERS = {"NOPUT": "NOPUT", "NODELETE": "NODELETE", 0: "NOPUT", 1: "NODELETE"}


class QueueBudget:
    """Messages queued, all watchers of one stream together, and the most they may be.

    Each watcher holds at most ``queue_limit`` messages; a gRPC stream may carry thousands of
    watchers, so the stream's watchers also share this budget: when it is used up, the watcher
    that would queue one more message is cancelled as too slow (its queue is freed). A stream's
    memory is then bounded whatever its number of watchers.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a queue budget must be positive, got {limit}")
        self.limit = limit
        self.used = 0


class Watcher:
    """One watch: its key range, options and the bounded queue of messages not yet written.

    Queue items are ``("events", header_revision, events)``, ``("progress", revision)``
    and ``("cancel", reason, compact_revision)``.
    """

    def __init__(
        self,
        hub: WatchHub,
        key: bytes,
        range_end: bytes,
        *,
        prev_kv: bool = False,
        filters: frozenset[str] = frozenset(),
        progress_notify: bool = False,
        next_rev: int = 0,
        queue_limit: int = 1024,
        budget: QueueBudget | None = None,
    ) -> None:
        self.hub = hub
        self.budget = budget
        self.key = key
        self.range_end = range_end
        self.prev_kv = prev_kv
        self.filters = filters
        self.progress_notify = progress_notify
        self.next_rev = next_rev
        """The smallest revision not yet queued: events below it were delivered or precede the watch."""
        self.queue: deque[tuple[Any, ...]] = deque()
        self.queue_limit = queue_limit
        self.wakeup = asyncio.Event()
        self.closed = False
        self.overflowed = False

    def matches(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        if self.range_end == b"\0":
            return key >= self.key
        return self.key <= key < self.range_end

    def select(self, events: list[tuple[bytes, bool, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The events of one revision this watcher wants (prev_kv only when asked).

        ``events`` are ``(raw key, is a DELETE, rendered event)`` triples (see :func:`decode_events`).
        """
        out = []
        for key, is_delete, ev in events:
            if not self.matches(key):
                continue
            if ("NODELETE" if is_delete else "NOPUT") in self.filters:
                continue
            if not self.prev_kv and "prev_kv" in ev:
                ev = {k: v for k, v in ev.items() if k != "prev_kv"}
            out.append(ev)
        return out

    def _append(self, item: tuple[Any, ...]) -> None:
        self.queue.append(item)
        if self.budget is not None:
            self.budget.used += 1
        self.wakeup.set()

    def push(self, item: tuple[Any, ...]) -> None:
        if self.closed:
            return
        if len(self.queue) >= self.queue_limit:
            self.overflow(f"more than {self.queue_limit} messages were waiting to be sent")
            return
        budget = self.budget
        if budget is not None and budget.used >= budget.limit:
            self.overflow(f"more than {budget.limit} messages of its stream were waiting to be sent")
            return
        self._append(item)

    def offer(self, revision: int, events: list[tuple[bytes, bool, dict[str, Any]]]) -> None:
        """Called on the apply path with every revision's events, in order."""
        if self.closed or revision < self.next_rev:
            return
        self.next_rev = revision + 1
        selected = self.select(events)
        if selected:
            self.push(("events", revision, selected))

    def overflow(self, waiting: str) -> None:
        """Too slow: drop what is queued, cancel with a reason and stop receiving events."""
        self.overflowed = True
        if self.budget is not None:
            self.budget.used -= len(self.queue)
        self.queue.clear()
        self._append(("cancel", f"watcher is too slow: {waiting}", 0))
        self.closed = True
        self.hub.remove(self)

    def cancel(self, reason: str = "", compact_revision: int = 0) -> None:
        if self.closed:
            return
        self._append(("cancel", reason, compact_revision))
        self.closed = True
        self.hub.remove(self)

    async def get(self, timeout: float | None) -> tuple[Any, ...] | None:
        """The next queued item, or None when ``timeout`` passed with nothing queued."""
        while not self.queue:
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except TimeoutError:
                return None
        if self.budget is not None:
            self.budget.used -= 1
        return self.queue.popleft()


def decode_events(events: list[dict[str, Any]]) -> list[tuple[bytes, bool, dict[str, Any]]]:
    """``(raw key, is a DELETE, event)`` for each rendered event (keys decoded once for all watchers)."""
    return [(base64.b64decode(ev["kv"].get("key", "")), ev.get("type") == "DELETE", ev) for ev in events]


class WatchHub:
    """All watchers of one member, fed by the KVMachine's apply listener."""

    def __init__(
        self, machine: KVMachine, *, queue_limit: int = 1024, progress_interval: float = 600.0
    ) -> None:
        self.machine = machine
        self.queue_limit = queue_limit
        self.progress_interval = progress_interval
        self.watchers: set[Watcher] = set()
        """Every live watcher (what ``etcd_debugging_mvcc_watcher_total`` counts)."""
        self._by_key: dict[bytes, set[Watcher]] = {}
        """Single-key watchers by key: a revision reaches only those of the keys it touches."""
        self._ranged: set[Watcher] = set()
        """Range and prefix watchers: each revision is offered to all of them."""
        self.last_seen = 0
        """The last revision offered: every watcher registered then has seen every earlier one it matches."""
        self._attached = False

    def attach(self) -> None:
        if not self._attached:
            self.machine.add_listener(self._on_apply)
            self._attached = True
            self.last_seen = self.machine.revision

    def close(self) -> None:
        """Server shutdown: end every stream."""
        for w in list(self.watchers):
            w.cancel("server shutting down")

    def _add(self, w: Watcher) -> None:
        self.watchers.add(w)
        if w.range_end:
            self._ranged.add(w)
        else:
            self._by_key.setdefault(w.key, set()).add(w)

    def remove(self, w: Watcher) -> None:
        if w not in self.watchers:
            return
        self.watchers.discard(w)
        if w.range_end:
            self._ranged.discard(w)
            return
        same = self._by_key.get(w.key)
        if same is not None:
            same.discard(w)
            if not same:
                del self._by_key[w.key]

    def _on_apply(self, revision: int, events: list[Any]) -> None:
        if revision > self.last_seen + 1:
            self._catch_up(revision - 1)
        if revision > self.last_seen:
            self.last_seen = revision
        if not self.watchers:
            return
        decoded = decode_events(events)
        # Only the watchers that may match: the single-key watchers of the touched keys (a dict
        # lookup each) and the range watchers. With thousands of single-key watches a write no
        # longer costs one call per watcher on the apply path (a watcher offered the same revision
        # twice ignores the second offer).
        targets = list(self._ranged)
        by_key = self._by_key
        if by_key:
            for key, _, _ in decoded:
                same = by_key.get(key)
                if same:
                    targets.extend(same)
        for w in targets:
            w.offer(revision, decoded)

    def resync(self) -> None:
        """After a snapshot restore: queue the revisions the watchers missed (or cancel them)."""
        self._catch_up(self.machine.revision)
        self.last_seen = self.machine.revision

    def _catch_up(self, upto: int) -> None:
        for w in list(self.watchers):
            # Revisions up to last_seen were offered to every watcher they match (a watcher not
            # offered one did not match it), so the catch-up starts after both.
            start = max(w.next_rev, self.last_seen + 1)
            if start > upto:
                continue
            try:
                batches = self.machine.history(w.key, w.range_end, start)
            except EtcdError as exc:
                w.cancel("", exc.compact_revision or self.machine.compact_revision)
                continue
            for rev, events in batches:
                if rev <= upto:
                    w.offer(rev, decode_events(events))
            w.next_rev = max(w.next_rev, upto + 1)

    def create(
        self,
        key: bytes,
        range_end: bytes,
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        filters: frozenset[str] = frozenset(),
        progress_notify: bool = False,
        budget: QueueBudget | None = None,
    ) -> tuple[Watcher, int]:
        """Register a watcher now (synchronously); returns it and the revision it was created at.

        A compacted ``start_revision`` returns a watcher already holding its cancel message.
        ``budget``: the queue budget of the watcher's stream (see :class:`QueueBudget`).
        """
        current = self.machine.revision
        w = Watcher(
            self,
            key,
            range_end,
            prev_kv=prev_kv,
            filters=filters,
            progress_notify=progress_notify,
            next_rev=current + 1,
            queue_limit=self.queue_limit,
            budget=budget,
        )
        self._add(w)
        if start_revision > current:
            w.next_rev = start_revision
        elif start_revision > 0:
            try:
                batches = self.machine.history(key, range_end, start_revision)
            except EtcdError as exc:
                w.cancel("", exc.compact_revision or self.machine.compact_revision)
                return w, current
            w.next_rev = start_revision
            pending: list[dict[str, Any]] = []
            for rev, events in batches:
                if rev > current:
                    break
                w.next_rev = rev + 1
                pending.extend(w.select(decode_events(events)))
                if len(pending) >= HISTORY_BATCH:
                    w.push(("events", current, pending))
                    pending = []
            if pending:
                w.push(("events", current, pending))
            w.next_rev = current + 1
        return w, current


# ------------------------------------------------------------------------------- HTTP stream


def parse_create_request(body: dict[str, Any]) -> dict[str, Any] | None:
    """A WatchRequest body -> keyword arguments for :meth:`WatchHub.create` (None: no create_request)."""
    from examples.kvstore import codec

    cr = codec.parse_watch_request(body).get("create_request")
    if cr is None:
        return None
    return {
        "key": cr.get("key", b""),
        "range_end": cr.get("range_end", b""),
        "start_revision": cr.get("start_revision", 0),
        "prev_kv": cr.get("prev_kv", False),
        "progress_notify": cr.get("progress_notify", False),
        "filters": frozenset(FILTERS.get(f, "") for f in cr.get("filters", ())) - {""},
    }


async def hold_until_gone(request: Request) -> web.StreamResponse:
    """etcd sends nothing at all for a watch body without create_request: wait for the client to leave.

    (The handler is also cancelled by aiohttp when the client disconnects.)
    """
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return web.Response(status=499)  # never sent: the client is gone
        await asyncio.sleep(0.5)


async def serve_watch(server: KVServer, request: Request, body: dict[str, Any]) -> web.StreamResponse:
    """The ``/v3/watch`` handler: register, then stream one chunk per message until cancelled."""
    from examples.kvstore.api import add_cors, dumps

    options = parse_create_request(body)
    if options is None:
        return await hold_until_gone(request)
    if not options.get("start_revision"):
        # Start after every write acknowledged before this request: a follower's
        # applied revision may lag the leader's, and a watch registered at a stale
        # revision would report a write its client already saw acknowledged.
        # Without quorum the watch still starts, at the local revision.
        with contextlib.suppress(EtcdError):
            await server.read_barrier()
    hub = server.hub
    watcher, created_at = hub.create(**options)
    server.metrics.watch_started()
    resp = add_cors(web.StreamResponse(status=200))
    resp.content_type = "application/json"
    resp.headers["Grpc-Metadata-Content-Type"] = "application/grpc"
    resp.enable_chunked_encoding()
    loop = asyncio.get_running_loop()
    closer: asyncio.TimerHandle | None = None

    async def send(result: dict[str, Any]) -> None:
        await resp.write(dumps({"result": result}) + b"\n")

    try:
        await resp.prepare(request)
        await send({"header": server.header(created_at), "created": True})
        interval = server.config.progress_notify_interval if watcher.progress_notify else None
        next_progress = loop.time() + interval if interval else None
        while True:
            timeout = 1.0 if next_progress is None else max(0.0, min(1.0, next_progress - loop.time()))
            item = await watcher.get(timeout)
            if item is None:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the client went away
                if next_progress is not None and loop.time() >= next_progress:
                    next_progress = loop.time() + (interval or 0)
                    await send({"header": server.header(server.machine.revision)})
                continue
            kind = item[0]
            if kind == "events":
                await send({"header": server.header(item[1]), "events": item[2]})
            elif kind == "cancel":
                _, reason, compact_revision = item
                result: dict[str, Any] = {"header": server.header(None), "canceled": True}
                if compact_revision:
                    result["compact_revision"] = str(compact_revision)
                if reason:
                    result["cancel_reason"] = reason
                if watcher.overflowed:
                    transport = request.transport
                    if transport is not None:
                        closer = loop.call_later(SLOW_GRACE, transport.close)
                    await send(result)
                    await resp.write_eof()
                    break
                await send(result)
                if reason:  # server shutdown
                    await resp.write_eof()
                    break
                # compacted start revision: etcd keeps the stream open
                await hold_until_gone(request)
                break
    except ConnectionError:
        pass
    finally:
        if closer is not None:
            closer.cancel()
        watcher.closed = True
        hub.remove(watcher)
        server.metrics.watch_ended()
    return resp


__all__ = ["QueueBudget", "WatchHub", "Watcher", "parse_create_request", "serve_watch"]

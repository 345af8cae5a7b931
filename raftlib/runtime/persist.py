"""The storage stage: makes each Ready's entries, hard state and received snapshot durable.

Owns the node's storage object, its I/O thread and the lock that keeps writes made
inline on the event loop apart from the thread's. Two ways to use it:

* :meth:`StorageStage.persist` (the classic contract, and every Ready that carries a
  snapshot): the caller awaits the write, then sends and advances.
* :meth:`StorageStage.submit` (``NodeConfig.async_storage_writes``, thesis §10.2.1): the
  write is started and the node goes on with the next Ready. Writes complete in the order
  they were submitted; every Ready submitted while a write is in flight joins the next
  batch, and a batch is **one** durable write (one fsync) whatever its number of Readies.
  ``on_durable(rd)`` runs on the loop for each Ready of a batch, in order, once the batch
  is durable.

The batching and the I/O thread live in a :class:`WriteQueue`: a node has its own, and a
:class:`~raftlib.RaftHost` shares one among all its groups, so a batch holds the writes of
every group of that loop turn and costs one fsync of the shared log.

Invariants:

* Nothing of a Ready is acknowledged before its write, and the writes of every Ready
  before it, are durable: ``persisted_messages`` (append acks, vote grants) and the
  leader's own acknowledgement go out only from ``on_durable``/after ``persist`` (§5.3's
  ack and §5.2's vote both promise durable state). A Ready that writes nothing but has
  acknowledgements waits for the writes in flight before it.
* Storage calls never overlap: inline writes and the I/O thread take the same lock, and
  one batch at a time is in the thread.
* A commit-index-only hard state is not worth a disk round trip (it is learned again from
  the leader): it waits in ``unsaved_hard_state`` and rides along with the next write
  *started* (never one already in flight, whose entries may not reach that index), is
  dropped when a newer hard state supersedes it, or is written at stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from raftlib.core import Entry, HardState, Ready
from raftlib.errors import RaftError, StorageCorrupted
from raftlib.observe import ObserverSet
from raftlib.storage.base import Storage

_T = TypeVar("_T")

INLINE_MAX_ENTRIES = 1
"""A write of more entries than this means concurrent clients: it goes to the I/O thread, so
the loop keeps taking requests during the fsync (measured: 10-15 % more puts/s at 256 clients)."""


class TransferRejected(Exception):
    """A snapshot received from the leader failed its integrity checks when installed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


Writer = Callable[[list[tuple[Hashable, "HardState | None", "list[Entry]"]]], None]
"""Makes ``(group key, hard state, entries)`` records durable with one write and one fsync."""


class WriteQueue:
    """The I/O thread, the storage lock and the batching of pipelined writes.

    Invariant: one batch at a time is in the thread, and batches complete in the order they
    were started, so every stage's writes become durable in submission order.
    """

    def __init__(self, name: str, writer: Writer) -> None:
        self._writer = writer
        self.lock = threading.Lock()
        """Held by every storage call: inline writes on the loop never overlap the I/O thread."""
        self.seconds = 0.0
        """Moving average of recent writes (seconds)."""
        self.stats: dict[str, float] = {"batches": 0, "fsyncs": 0, "fsync_seconds_total": 0.0, "readies": 0}
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-{name}-io")
        self._queue: list[tuple[StorageStage, Ready]] = []
        """Submitted Readies waiting for the batch in flight to finish (the next batch)."""
        self._inflight: list[tuple[StorageStage, Ready]] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def idle(self) -> bool:
        return self._inflight is None

    @property
    def writes_in_flight(self) -> int:
        return len(self._queue) + (len(self._inflight) if self._inflight else 0)

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a storage call in the I/O thread, never at the same time as another write."""
        return await asyncio.get_running_loop().run_in_executor(self._io, self._locked, fn, *args)

    def _locked(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self.lock:
            return fn(*args)

    def write(self, records: list[tuple[Hashable, HardState | None, list[Entry]]]) -> None:
        """Write ``records`` now, in the calling thread (the caller holds :attr:`lock`)."""
        started = time.perf_counter()
        try:
            self._writer(records)
        finally:
            self.seconds += (time.perf_counter() - started - self.seconds) / 8

    def submit(self, stage: StorageStage, rd: Ready) -> None:
        self._queue.append((stage, rd))
        if self._inflight is None:
            self._start_batch()

    def _start_batch(self) -> None:
        batch, self._queue = self._queue, []
        merged: dict[StorageStage, tuple[HardState | None, list[Entry]]] = {}
        sync = False
        for stage, rd in batch:
            hs, entries = merged.get(stage, (None, []))
            if rd.hard_state is not None:
                hs = rd.hard_state
            if rd.entries:
                first = rd.entries[0].index
                if entries and first <= entries[-1].index:
                    # A later Ready replaces a conflicting suffix of an earlier one (§5.3).
                    del entries[max(0, first - entries[0].index):]
                entries.extend(rd.entries)
            merged[stage] = (hs, entries)
            sync = sync or rd.must_sync()
        records = [(stage.key, hs, entries) for stage, (hs, entries) in merged.items()
                   if hs is not None or entries]
        self._inflight = batch
        self._idle.clear()
        if not records:
            self._batch_done(batch, None, 0.0, False)  # acknowledgements only: the writes before are done
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        fut = self._io.submit(self._locked, self.write, records)
        fut.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._batch_done, batch, f, started, sync)
        )

    def _batch_done(
        self,
        batch: list[tuple[StorageStage, Ready]],
        fut: concurrent.futures.Future[None] | None,
        started: float,
        sync: bool,
    ) -> None:
        if self._closed:
            return
        self._inflight = None
        exc = fut.exception() if fut is not None else None
        stages = dict.fromkeys(stage for stage, _ in batch)
        if exc is not None:
            failed = dict.fromkeys(stage for stage, _ in self._queue) | stages
            self._queue.clear()
            self._idle.set()
            for stage in failed:
                stage.failed(exc)
            return
        if fut is not None and sync:
            self.count(started, batch)
        for stage, rd in batch:
            stage.durable(rd)
        for stage in stages:
            stage.batch_done()
        if self._queue:
            self._start_batch()
        else:
            self._idle.set()

    def count(self, started: float, written: list[tuple[StorageStage, Ready]], inline: bool = False) -> None:
        """One fsync covered ``written``: count it for the queue and once for each stage in it."""
        seconds = time.perf_counter() - started
        self.stats["batches"] += 1
        self.stats["fsyncs"] += 1
        self.stats["fsync_seconds_total"] += seconds
        entries: dict[StorageStage, int] = {}
        for stage, rd in written:
            entries[stage] = entries.get(stage, 0) + len(rd.entries)
        for stage, n in entries.items():
            m = stage.metrics
            m["fsync_count"] += 1
            m["fsync_seconds_total"] += seconds
            if inline:
                m["fsync_inline_count"] += 1
            if stage.observer is not None:
                stage.observer.on_fsync(stage.name, seconds, n, inline)

    async def drain(self) -> None:
        """Wait until every submitted write is durable."""
        await self._idle.wait()

    async def close(self, wait: float = 5.0) -> None:
        """Let the writes in flight finish (up to ``wait`` seconds), then stop the I/O thread."""
        if self._inflight is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), wait)
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown, True)


class StorageStage:
    """One group's side of the storage stage: its hard-state bookkeeping, inline writes and
    classic persists; the batching is its :class:`WriteQueue`'s (its own, or the host's)."""

    def __init__(
        self,
        storage: Storage,
        name: str,
        inline_sync_below: float,
        metrics: dict[str, float],
        queue: WriteQueue | None = None,
        key: Hashable = None,
    ) -> None:
        self.storage = storage
        self.inline_sync_below = inline_sync_below
        self.metrics = metrics
        self.name = name
        self.observer: ObserverSet | None = None
        """Gets ``on_fsync`` for every synced write (set by the node; None: no observer)."""
        self.key = key
        """This group's key in the records handed to the queue's writer."""
        self.unsaved_hard_state: HardState | None = None
        self._own_queue = queue is None
        self.queue = queue if queue is not None else WriteQueue(name, self._save_own)
        self._on_durable: Callable[[Ready], None] | None = None
        self._on_batch_done: Callable[[], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None

    def _save_own(self, records: list[tuple[Hashable, HardState | None, list[Entry]]]) -> None:
        for _, hs, entries in records:  # a private queue: this group's record only
            self.storage.save(hs, entries)

    def pipeline(
        self,
        on_durable: Callable[[Ready], None],
        on_batch_done: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Set the callbacks of :meth:`submit`: ``on_durable(rd)`` per Ready made durable,
        ``on_batch_done()`` after each batch (flush the transport), ``on_error(exc)`` when a
        write failed (the node must stop: nothing after it may be acknowledged)."""
        self._on_durable, self._on_batch_done, self._on_error = on_durable, on_batch_done, on_error

    # -- called by the queue ------------------------------------------------------------------

    def durable(self, rd: Ready) -> None:
        assert self._on_durable is not None
        self._on_durable(rd)

    def batch_done(self) -> None:
        assert self._on_batch_done is not None
        self._on_batch_done()

    def failed(self, exc: BaseException) -> None:
        assert self._on_error is not None
        self._on_error(exc)

    # -- the node's side ------------------------------------------------------------------------

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a storage call in the I/O thread, never at the same time as a write."""
        return await self.queue.call(fn, *args)

    @property
    def writes_in_flight(self) -> int:
        return self.queue.writes_in_flight

    def submit(self, rd: Ready) -> None:
        """Start ``rd``'s write after every write submitted before it (see the module doc)."""
        hs = rd.hard_state
        if hs is not None:
            if rd.must_sync():
                self.unsaved_hard_state = None  # superseded by this newer hard state
            else:
                self.unsaved_hard_state, rd.hard_state = hs, None
        elif (rd.entries or rd.sync) and self.unsaved_hard_state is not None:
            rd.hard_state, self.unsaved_hard_state = self.unsaved_hard_state, None
        if not rd.needs_write_order() and rd.hard_state is None:
            return  # nothing to write, nothing waits for a write
        assert self._on_durable is not None and self._on_batch_done is not None
        queue = self.queue
        if queue.idle:
            if not rd.must_sync() and rd.hard_state is None:
                self._on_durable(rd)  # only acknowledgements, and nothing in flight before them
                self._on_batch_done()
                return
            if (
                queue.seconds < self.inline_sync_below
                and len(rd.entries) <= INLINE_MAX_ENTRIES
                and queue.lock.acquire(blocking=False)  # not while the I/O thread compacts
            ):
                self._on_batch_done()  # messages leave before the loop blocks on the disk
                started = time.perf_counter()
                try:
                    queue.write([(self.key, rd.hard_state, rd.entries)])
                finally:
                    queue.lock.release()
                if rd.must_sync():
                    queue.count(started, [(self, rd)], inline=True)
                self._on_durable(rd)
                if rd.persisted_messages:
                    self._on_batch_done()  # the acknowledgements leave at once
                return
        queue.submit(self, rd)

    async def drain(self) -> None:
        """Wait until every submitted write is durable (before a snapshot install, a reload)."""
        await self.queue.drain()

    async def persist(self, rd: Ready, flush: Callable[[], None] | None) -> None:
        """The classic contract: make ``rd`` durable now. ``flush`` writes queued messages before
        the loop blocks on the disk."""
        if rd.must_sync() or rd.snapshot_chunks:
            if rd.hard_state is None:
                # A commit index held back earlier rides along with this write.
                rd.hard_state = self.unsaved_hard_state
            self.unsaved_hard_state = None
            started = time.perf_counter()
            queue = self.queue
            if (
                queue.seconds < self.inline_sync_below
                and len(rd.entries) <= INLINE_MAX_ENTRIES
                and not rd.snapshot_chunks
                and rd.snapshot is None
                and queue.lock.acquire(blocking=False)  # not while the I/O thread compacts
            ):
                if flush is not None:
                    flush()
                try:
                    self._persist_ready(rd)
                finally:
                    queue.lock.release()
                inline = True
            else:
                await self.call(self._persist_ready, rd)
                inline = False
            if rd.must_sync():
                queue.count(started, [(self, rd)], inline=inline)
        elif rd.hard_state is not None:
            # Only the commit index moved: nothing depends on it being durable.
            self.unsaved_hard_state = rd.hard_state

    def _persist_ready(self, rd: Ready) -> None:
        storage = self.storage
        for chunk in rd.snapshot_chunks:
            if chunk.offset == 0:
                storage.begin_incoming_snapshot(chunk.meta)
            storage.write_incoming_chunk(chunk.offset, chunk.data)
        if rd.snapshot is not None:
            try:
                storage.install_incoming_snapshot(rd.snapshot)
            except StorageCorrupted as exc:
                # The received bytes failed their checks: the transfer is bad, not our disk.
                raise TransferRejected(exc) from exc
        if rd.hard_state is not None or rd.entries:
            self.queue.write([(self.key, rd.hard_state, rd.entries)])  # timed like every write

    async def close(self, save_pending: bool, close_storage: bool = True) -> None:
        """Write a held-back hard state (when ``save_pending``), stop a private I/O thread, close
        storage. Writes in flight finish first; what they would have acknowledged is not sent."""
        if self._own_queue and save_pending:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.queue.drain(), 5.0)
        if save_pending and self.unsaved_hard_state is not None:
            hs, self.unsaved_hard_state = self.unsaved_hard_state, None
            with contextlib.suppress(OSError, RaftError):  # best effort: learned again from the leader
                await self.call(self.storage.save, hs, [])
        if self._own_queue:
            await self.queue.close(0.0)
        if close_storage:
            self.storage.close()

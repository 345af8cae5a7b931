"""The storage stage: makes each Ready's entries, hard state and received snapshot durable.

Owns the node's storage object, its I/O thread and the lock that keeps writes made
inline on the event loop apart from the thread's. Two ways to use it:

* :meth:`StorageStage.persist` (the classic contract, and every Ready that carries a
  snapshot): the caller awaits the write, then sends and advances.
* :meth:`StorageStage.submit` (``NodeConfig.async_storage_writes``, thesis §10.2.1): the
  write is started and the node goes on with the next Ready. Writes complete in the order
  they were submitted; every Ready submitted while a write is in flight joins the next
  batch, and a batch is **one** ``storage.save`` (one fsync) whatever its number of
  Readies. ``on_durable(rd)`` runs on the loop for each Ready of a batch, in order, once
  the batch is durable.

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
from collections.abc import Callable
from typing import Any, TypeVar

from raftlib.core import Entry, HardState, Ready
from raftlib.errors import RaftError, StorageCorrupted
from raftlib.observe import ObserverSet

_T = TypeVar("_T")

INLINE_MAX_ENTRIES = 1
"""A write of more entries than this means concurrent clients: it goes to the I/O thread, so
the loop keeps taking requests during the fsync (measured: 10-15 % more puts/s at 256 clients)."""


class TransferRejected(Exception):
    """A snapshot received from the leader failed its integrity checks when installed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class StorageStage:
    """Writes Readies to ``storage`` with one fsync each, inline while the disk is fast."""

    def __init__(self, storage: Any, name: str, inline_sync_below: float, metrics: dict[str, float]) -> None:
        self.storage = storage
        self.inline_sync_below = inline_sync_below
        self.metrics = metrics
        self.name = name
        self.observer: ObserverSet | None = None
        """Gets ``on_fsync`` for every synced write (set by the node; None: no observer)."""
        self.unsaved_hard_state: Any = None
        self._lock = threading.Lock()
        """Held by every storage call: inline writes on the loop never overlap the I/O thread."""
        self._seconds = 0.0
        """Moving average of recent writes (seconds)."""
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-{name}-io")
        self._queue: list[Ready] = []
        """Submitted Readies waiting for the batch in flight to finish (the next batch)."""
        self._inflight: list[Ready] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._on_durable: Callable[[Ready], None] | None = None
        self._on_batch_done: Callable[[], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None

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

    @property
    def writes_in_flight(self) -> int:
        """Readies submitted and not yet durable."""
        return len(self._queue) + (len(self._inflight) if self._inflight else 0)

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
        if self._inflight is None:
            if not rd.must_sync() and rd.hard_state is None:
                self._on_durable(rd)  # only acknowledgements, and nothing in flight before them
                self._on_batch_done()
                return
            if (
                self._seconds < self.inline_sync_below
                and len(rd.entries) <= INLINE_MAX_ENTRIES
                and self._lock.acquire(blocking=False)  # not while the I/O thread compacts
            ):
                self._on_batch_done()  # messages leave before the loop blocks on the disk
                started = time.perf_counter()
                try:
                    self._write_batch(rd.hard_state, rd.entries, rd.must_sync())
                finally:
                    self._lock.release()
                self._count(rd.must_sync(), started, inline=True, entries=len(rd.entries))
                self._on_durable(rd)
                if rd.persisted_messages:
                    self._on_batch_done()  # the acknowledgements leave at once
                return
        self._queue.append(rd)
        if self._inflight is None:
            self._start_batch()

    def _start_batch(self) -> None:
        batch, self._queue = self._queue, []
        hs: HardState | None = None
        entries: list[Entry] = []
        sync = False
        for rd in batch:
            if rd.hard_state is not None:
                hs = rd.hard_state
            if rd.entries:
                first = rd.entries[0].index
                if entries and first <= entries[-1].index:
                    # A later Ready replaces a conflicting suffix of an earlier one (§5.3).
                    del entries[max(0, first - entries[0].index):]
                entries.extend(rd.entries)
            sync = sync or rd.must_sync()
        self._inflight = batch
        self._idle.clear()
        if hs is None and not entries:
            self._batch_done(batch, None, 0.0, sync)  # acknowledgements only: the writes before are done
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        fut = self._io.submit(self._locked, self._write_batch, hs, entries, sync)
        fut.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._batch_done, batch, f, started, sync)
        )

    def _write_batch(self, hs: HardState | None, entries: list[Entry], sync: bool) -> None:
        started = time.perf_counter()
        try:
            # (Every batch written syncs: a commit-only hard state never starts one on its own.)
            self.storage.save(hs, entries)
        finally:
            self._seconds += (time.perf_counter() - started - self._seconds) / 8

    def _batch_done(
        self, batch: list[Ready], fut: concurrent.futures.Future[None] | None, started: float, sync: bool
    ) -> None:
        if self._closed:
            return
        self._inflight = None
        exc = fut.exception() if fut is not None else None
        if exc is not None:
            self._queue.clear()
            self._idle.set()
            assert self._on_error is not None
            self._on_error(exc)
            return
        if fut is not None:
            entries = sum(len(rd.entries) for rd in batch) if self.observer is not None else 0
            self._count(sync, started, inline=False, entries=entries)
        assert self._on_durable is not None and self._on_batch_done is not None
        for rd in batch:
            self._on_durable(rd)
        self._on_batch_done()
        if self._queue:
            self._start_batch()
        else:
            self._idle.set()

    def _count(self, sync: bool, started: float, inline: bool, entries: int) -> None:
        if sync:
            seconds = time.perf_counter() - started
            self.metrics["fsync_count"] += 1
            self.metrics["fsync_seconds_total"] += seconds
            if inline:
                self.metrics["fsync_inline_count"] += 1
            if self.observer is not None:
                self.observer.on_fsync(self.name, seconds, entries, inline)

    async def drain(self) -> None:
        """Wait until every submitted write is durable (before a snapshot install, a reload)."""
        await self._idle.wait()

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a storage call in the I/O thread, never at the same time as an inline write."""
        return await asyncio.get_running_loop().run_in_executor(self._io, self._locked, fn, *args)

    def _locked(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            return fn(*args)

    async def persist(self, rd: Ready, flush: Callable[[], None] | None) -> None:
        """Make ``rd`` durable. ``flush`` writes queued messages before the loop blocks on the disk."""
        if rd.must_sync() or rd.snapshot_chunks:
            if rd.hard_state is None:
                # A commit index held back earlier rides along with this write.
                rd.hard_state = self.unsaved_hard_state
            self.unsaved_hard_state = None
            started = time.perf_counter()
            if (
                self._seconds < self.inline_sync_below
                and len(rd.entries) <= INLINE_MAX_ENTRIES
                and not rd.snapshot_chunks
                and rd.snapshot is None
                and self._lock.acquire(blocking=False)  # not while the I/O thread compacts
            ):
                if flush is not None:
                    flush()
                try:
                    self._persist(rd)
                finally:
                    self._lock.release()
                inline = True
            else:
                inline = False
                await self.call(self._persist, rd)
            self._count(rd.must_sync(), started, inline, len(rd.entries))
        elif rd.hard_state is not None:
            # Only the commit index moved: nothing depends on it being durable.
            self.unsaved_hard_state = rd.hard_state

    def _persist(self, rd: Ready) -> None:
        started = time.perf_counter()
        try:
            self._persist_ready(rd)
        finally:
            self._seconds += (time.perf_counter() - started - self._seconds) / 8

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
            storage.save(rd.hard_state, rd.entries)

    async def close(self, save_pending: bool, close_storage: bool = True) -> None:
        """Write a held-back hard state (when ``save_pending``), stop the I/O thread, close storage.

        Writes in flight finish first (the thread is shut down waiting for them); what they
        would have acknowledged is not sent any more."""
        if save_pending and self._inflight is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5.0)
        self._closed = True
        if save_pending and self.unsaved_hard_state is not None:
            hs, self.unsaved_hard_state = self.unsaved_hard_state, None
            with contextlib.suppress(OSError, RaftError):  # best effort: learned again from the leader
                await self.call(self.storage.save, hs, [])
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown, True)
        if close_storage:
            self.storage.close()

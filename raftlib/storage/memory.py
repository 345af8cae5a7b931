"""In-memory storage with the behaviour of :class:`~raftlib.storage.DiskStorage`, for tests.

Every ``save`` is "durable" at once, so :meth:`MemoryStorage.crash` loses
nothing but a partially received snapshot. Snapshots are kept in the same
format as on disk, so chunks read from one kind of storage install into the
other.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable
from typing import BinaryIO

from raftlib.core import Entry, HardState, PersistentState, SnapshotMeta
from raftlib.errors import StorageCorrupted
from raftlib.storage.snapshot import encode_header, parse_header, verify_body

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A :class:`~raftlib.storage.Storage` that keeps everything in memory."""

    def __init__(self, keep_snapshots: int = 2) -> None:
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be at least 1")
        self.keep_snapshots = keep_snapshots
        self._hs = HardState()
        self._entries: list[Entry] = []
        self._offset = 0
        """Index just before the first stored entry (a snapshot's index after an install)."""
        self._snapshots: dict[int, tuple[SnapshotMeta, bytes]] = {}
        self._incoming: tuple[SnapshotMeta, bytearray] | None = None
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ValueError("storage is closed")

    def load(self) -> PersistentState:
        """The saved hard state, entries and latest snapshot meta."""
        self._check()
        return PersistentState(self._hs, list(self._entries), self.latest_snapshot())

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Append (replacing from ``entries[0].index`` on) and record the hard state."""
        self._check()
        if entries:
            first = entries[0].index
            last = self.last_index()
            if not self._offset < first <= last + 1:
                raise ValueError(
                    f"entries start at {first}: outside the writable range {self._offset + 1}..{last + 1}"
                )
            for k, e in enumerate(entries):
                if e.index != first + k:
                    raise ValueError(f"entries are not contiguous at {e.index}")
            del self._entries[first - self._offset - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hs = hard_state

    def last_index(self) -> int:
        """Index of the last stored entry (the snapshot's index if none follows it; 0 if empty)."""
        return self._offset + len(self._entries)

    def hard_state(self) -> HardState:
        """The last hard state saved."""
        return self._hs

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Stored entries in ``[lo, hi)``."""
        lo = max(lo, self._offset + 1)
        return self._entries[lo - self._offset - 1 : max(0, hi - self._offset - 1)] if hi > lo else []

    def compact(self, first_index: int) -> None:
        """Forget entries below ``first_index``."""
        self._check()
        drop = min(first_index - 1 - self._offset, len(self._entries))
        if drop > 0:
            del self._entries[:drop]
            self._offset += drop

    # -- snapshots --------------------------------------------------------------

    def _store(self, meta: SnapshotMeta, blob: bytes) -> None:
        self._snapshots[meta.index] = (meta, blob)
        for index in sorted(self._snapshots)[: -self.keep_snapshots]:
            del self._snapshots[index]

    def save_snapshot(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        """Keep a local snapshot (in the on-disk format)."""
        self._check()
        body = b"".join(chunks)
        self._store(meta, encode_header(meta, len(body), zlib.crc32(body)) + body)

    def begin_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Start receiving a snapshot (discarding any partial one)."""
        self._check()
        self._incoming = (meta, bytearray())

    def write_incoming_chunk(self, offset: int, data: bytes) -> None:
        """Append a chunk; ``offset`` must be the size received so far."""
        self._check()
        if self._incoming is None:
            raise ValueError("no incoming snapshot: call begin_incoming_snapshot first")
        buf = self._incoming[1]
        if offset != len(buf):
            raise ValueError(f"incoming snapshot chunk at offset {offset}, expected {len(buf)}")
        buf += data

    def install_incoming_snapshot(self, meta: SnapshotMeta) -> None:
        """Verify the received snapshot, keep it, and apply the install rule to the log."""
        self._check()
        if self._incoming is None:
            raise ValueError("no incoming snapshot to install")
        expected, buf = self._incoming
        if expected != meta:
            raise ValueError(f"installing {meta} but receiving {expected}")
        self._incoming = None
        blob = bytes(buf)
        path = f"<memory>/incoming-{meta.index}"
        f = io.BytesIO(blob)
        h = parse_header(f, path)
        if h.meta != meta:
            raise StorageCorrupted(path, 0, f"received snapshot is {h.meta}, expected {meta}")
        verify_body(f, path, h)
        self._store(meta, blob)
        pos = meta.index - self._offset - 1
        keep = 0 <= pos < len(self._entries) and self._entries[pos].term == meta.term
        self._entries = self._entries[pos + 1 :] if keep else []
        self._offset = meta.index

    def latest_snapshot(self) -> SnapshotMeta | None:
        """Meta of the newest snapshot."""
        if not self._snapshots:
            return None
        return self._snapshots[max(self._snapshots)][0]

    def _blob(self, index: int) -> bytes:
        if index not in self._snapshots:
            raise FileNotFoundError(f"no snapshot at index {index}")
        return self._snapshots[index][1]

    def open_snapshot(self, index: int) -> BinaryIO:
        """A checked in-memory file positioned at the state-machine bytes."""
        f = io.BytesIO(self._blob(index))
        path = f"<memory>/snapshot-{index}"
        h = parse_header(f, path)
        verify_body(f, path, h)
        f.seek(h.header_len)
        return f

    def read_snapshot_chunk(self, index: int, offset: int, size: int) -> tuple[bytes, bool]:
        """Bytes of the stored snapshot for sending, and whether they reach its end."""
        if offset < 0 or size <= 0:
            raise ValueError("offset must be >= 0 and size > 0")
        blob = self._blob(index)
        data = blob[offset : offset + size]
        return data, offset + len(data) >= len(blob)

    def crash(self) -> None:
        """Simulate a crash and restart: everything saved survives; a partial incoming snapshot does not."""
        self._incoming = None
        self._closed = False

    def close(self) -> None:
        """Mark closed (the data stays, so :meth:`crash` can reopen it)."""
        self._closed = True

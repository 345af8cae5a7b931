"""Snapshot files of the runtime: the header raftlib writes before the state machine's bytes.

Owns the on-disk layout of a snapshot as RaftNode writes it: ``RLSN`` magic, a JSON
header (the peer addresses in force at the snapshot's index) and the state machine's
bytes, streamed. Invariant: a snapshot is captured on the event loop between two
applies (a point in time) and only encoded and written off the loop; nothing but a
complete, checked file is ever restored (storage renames it into place only once
written, and ``restore_snapshot`` refuses a file without raftlib's header).
"""

from __future__ import annotations

import itertools
import json
import struct

from raftlib.core import SnapshotMeta
from raftlib.errors import RaftError
from raftlib.statemachine import SnapshotWriter, StateMachine
from raftlib.storage.base import Storage

HEADER = struct.Struct("<4sI")
MAGIC = b"RLSN"


def write_snapshot(
    storage: Storage, meta: SnapshotMeta, addresses: dict[str, str], captured: bytes | SnapshotWriter
) -> None:
    """In a worker thread: write ``captured`` (``StateMachine.snapshot()``'s value) as snapshot ``meta``."""
    header = json.dumps({"addresses": addresses}).encode()
    head = HEADER.pack(MAGIC, len(header)) + header
    if isinstance(captured, SnapshotWriter):
        # Streamed from the writer into the snapshot file, never whole in memory.
        body = captured.chunks()
        try:
            storage.save_snapshot(meta, itertools.chain((head,), body))
        finally:
            close = getattr(body, "close", None)  # a generator: end it if storage failed
            if close is not None:
                close()
    elif isinstance(captured, bytes | bytearray):
        storage.save_snapshot(meta, (head, bytes(captured)))
    else:
        kind = type(captured).__name__
        raise TypeError(f"snapshot() must return bytes or a SnapshotWriter, not {kind}")


def restore_snapshot(storage: Storage, index: int, sm: StateMachine) -> dict[str, str]:
    """In a worker thread: restore ``sm`` from stored snapshot ``index``; returns its peer addresses."""
    with storage.open_snapshot(index) as f:
        head = f.read(HEADER.size)
        magic, size = HEADER.unpack(head) if len(head) == HEADER.size else (b"", 0)
        if magic != MAGIC:
            raise RaftError(f"snapshot {index} was not written by raftlib (bad header)")
        info = json.loads(f.read(size))
        addresses: dict[str, str] = info.get("addresses", {})
        sm.restore_stream(f)
    return addresses

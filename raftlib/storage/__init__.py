"""Durable state of a Raft node: the write-ahead log and snapshots.

* :class:`Storage` is the interface the driver persists through.
* :class:`DiskStorage` keeps a segmented, CRC-checked write-ahead log with
  group commit, and snapshot files (see ``docs/storage.md``).
* :class:`MemoryStorage` behaves the same in memory, for tests.
* :class:`SharedLog` keeps many groups in one WAL (one fsync per write for
  all of them); :class:`GroupStorage` is one group's ``Storage`` in it;
  :class:`HostLog` is the interface a ``RaftHost`` persists through.
* :class:`FileOps` is the file-operations layer ``DiskStorage`` goes through,
  replaceable for fault injection.
"""

from raftlib.storage.base import HostLog, Storage, StorageError
from raftlib.storage.files import FileOps
from raftlib.storage.memory import MemoryStorage
from raftlib.storage.shared import GroupRemoved, GroupStorage, SharedLog
from raftlib.storage.wal import DiskStorage

__all__ = [
    "DiskStorage",
    "FileOps",
    "GroupRemoved",
    "GroupStorage",
    "HostLog",
    "MemoryStorage",
    "SharedLog",
    "Storage",
    "StorageError",
]

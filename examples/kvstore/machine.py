"""KVMachine: the raftlib state machine of the etcd-compatible store (skeleton; see docs/kvstore-data.md)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import raftlib

Listener = Callable[[int, list[dict[str, Any]]], None]


class KVMachine(raftlib.StateMachine):
    """MVCC keys + leases, applied deterministically from validated commands."""

    def __init__(self, min_lease_ttl: int = 2, max_request_bytes: int = 1_572_864) -> None:
        self.min_lease_ttl = min_lease_ttl
        self.max_request_bytes = max_request_bytes
        self.revision = 1
        self.compact_revision = 0
        self.lessor: Any = None

    # -- validation on the receiving member (raise EtcdError) -----------------------------------
    def prepare_put(self, body: Any) -> bytes:
        raise NotImplementedError

    def prepare_deleterange(self, body: Any) -> bytes:
        raise NotImplementedError

    def prepare_txn(self, body: Any) -> bytes:
        raise NotImplementedError

    def prepare_compaction(self, body: Any) -> bytes:
        raise NotImplementedError

    def prepare_lease_grant(self, body: Any, rng: random.Random) -> bytes:
        raise NotImplementedError

    def prepare_lease_revoke(self, body: Any) -> bytes:
        raise NotImplementedError

    def lease_expire_command(self, lease_id: int) -> bytes:
        raise NotImplementedError

    # -- raft apply -----------------------------------------------------------------------------
    def apply(self, command: bytes, index: int) -> dict[str, Any]:
        raise NotImplementedError

    # -- local reads ----------------------------------------------------------------------------
    def range(self, body: Any) -> dict[str, Any]:
        raise NotImplementedError

    def lease_timetolive(self, body: Any, now: float) -> dict[str, Any]:
        raise NotImplementedError

    def lease_keepalive(self, body: Any, now: float) -> dict[str, Any]:
        raise NotImplementedError

    def lease_leases(self) -> dict[str, Any]:
        raise NotImplementedError

    def db_size(self) -> int:
        raise NotImplementedError

    # -- watch support --------------------------------------------------------------------------
    def add_listener(self, fn: Listener) -> None:
        raise NotImplementedError

    def remove_listener(self, fn: Listener) -> None:
        raise NotImplementedError

    def history(self, key: bytes, range_end: bytes, start_revision: int) -> list[tuple[int, list[dict[str, Any]]]]:
        raise NotImplementedError

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        raise NotImplementedError

    def restore(self, data: bytes) -> None:
        raise NotImplementedError

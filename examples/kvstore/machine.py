"""KVMachine: the raftlib state machine of the etcd-compatible store.

The member that receives an HTTP request validates it with a ``prepare_*`` method
(raising :class:`~examples.kvstore.errors.EtcdError` exactly as etcd would, before
anything is proposed) and gets a command: versioned JSON holding the already
validated request, with bytes as base64 and any random choice (a lease ID) made
here. ``apply(command, index)`` then runs on every member, deterministically (no
clock, no randomness), and returns the etcd response body without ``header`` plus
``"revision"`` (the store revision after the command) for the header. Errors that
depend on the replicated state (a lease that no longer exists, a lease ID already
taken, a compacted revision...) are returned as ``{"error": EtcdError, "revision": N}``;
apply never raises for a bad request.

See docs/kvstore-data.md for the data model and the snapshot format.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import raftlib
from examples.kvstore import codec, errors
from examples.kvstore.auth import CHECKED, MSG_OLD_REVISION, AuthState, TokenTable, auth_error
from examples.kvstore.errors import EtcdError
from examples.kvstore.lease import MAX_LEASE_TTL, LeaseTable, Lessor
from examples.kvstore.mvcc import (
    MVCC,
    Event,
    View,
    check_intervals,
    check_path,
    check_put_request,
    check_txn_request,
    compare_to_path,
    do_delete,
    do_put,
    do_range,
    run_path,
    txn_is_readonly,
)

log = logging.getLogger("kvstore.machine")

#: fn(revision, events): called after each apply that produced events.
Listener = Callable[[int, list[dict[str, Any]]], None]

_Handler = Callable[["KVMachine", dict[str, Any]], tuple[dict[str, Any], list[Event]]]

COMMAND_VERSION = 1
SNAPSHOT_VERSION = 1
_BYTES_FIELDS = frozenset(("key", "range_end", "value"))


def _to_wire(obj: Any) -> Any:
    """A parsed request made JSON-able: bytes fields become base64 strings."""
    if isinstance(obj, dict):
        return {k: (codec.b64(v) if isinstance(v, bytes) else _to_wire(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_wire(v) for v in obj]
    return obj


# etcd wraps each request in an InternalRaftRequest with a header (request ID, ...):
# a put with a one-byte key is accepted up to a 1,572,840-byte value at the default
# 1,572,864-byte limit (observed on etcd 3.4.23).
_RAFT_REQUEST_OVERHEAD = 13


def _varint_len(n: int) -> int:
    return max(1, (max(n, 0).bit_length() + 6) // 7)


def _proto_size(obj: Any) -> int:
    """An estimate of a parsed request's protobuf encoding size (tag + length + payload per field)."""
    if isinstance(obj, bytes):
        return 1 + _varint_len(len(obj)) + len(obj)
    if isinstance(obj, bool):
        return 2 if obj else 0
    if isinstance(obj, int):
        return 1 + _varint_len(obj) if obj else 0
    if isinstance(obj, dict):
        inner = sum(_proto_size(v) for v in obj.values())
        return 1 + _varint_len(inner) + inner
    if isinstance(obj, list):
        return sum(_proto_size(v) for v in obj)
    if isinstance(obj, str):
        return 1 + _varint_len(len(obj)) + len(obj)
    return 0


def _from_wire(obj: Any) -> Any:
    """The inverse of :func:`_to_wire`."""
    if isinstance(obj, dict):
        return {
            k: (base64.b64decode(v) if k in _BYTES_FIELDS and isinstance(v, str) else _from_wire(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_from_wire(v) for v in obj]
    return obj


_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""One encoder for every command (json.dumps with options builds a new one per call)."""


SNAPSHOT_CHUNK_BYTES = 64 << 10
"""About how many bytes each piece of :meth:`KVSnapshot.chunks` holds (whole keys only)."""


class KVSnapshot(raftlib.SnapshotWriter):
    """A KVMachine snapshot captured on the loop (:meth:`KVMachine.snapshot_writer`).

    Encoded one key at a time into pieces of about :data:`SNAPSHOT_CHUNK_BYTES`, so writing
    the snapshot costs a few pieces of memory whatever the store's size; the bytes are those of
    one ``json`` encoding of the whole image (docs/kvstore-data.md).
    """

    def __init__(
        self, applied_index: int, view: View, leases: list[list[int]], auth: dict[str, Any] | None = None
    ) -> None:
        self.applied_index = applied_index
        self.view: View | None = view
        self.leases = leases
        self.auth = auth

    def chunks(self) -> Iterator[bytes]:
        if self.view is None:
            raise ValueError("this snapshot was released")
        enc = _COMPACT.encode
        revision, compact, _items = self.view
        # The image {"v", "applied_index", "mvcc": {"rev", "compact", "keys"}, "leases"}, with
        # the "keys" list written element by element.
        pending = [
            f'{{"v":{enc(SNAPSHOT_VERSION)},"applied_index":{enc(self.applied_index)},'
            f'"mvcc":{{"rev":{enc(revision)},"compact":{enc(compact)},"keys":['
        ]
        size = len(pending[0])
        sep = ""
        for entry in MVCC.dump_view_keys(self.view):
            piece = sep + enc(entry)
            sep = ","
            pending.append(piece)
            size += len(piece)
            if size >= SNAPSHOT_CHUNK_BYTES:
                yield "".join(pending).encode()
                pending.clear()
                size = 0
        tail = f',"auth":{enc(self.auth)}' if self.auth is not None else ""
        pending.append(f']}},"leases":{enc(self.leases)}{tail}}}')
        yield "".join(pending).encode()

    def encode(self) -> bytes:
        """The whole snapshot as one bytes object (what :meth:`KVMachine.snapshot` returns)."""
        return b"".join(self.chunks())

    def release(self) -> None:
        self.view = None


class KVMachine(raftlib.StateMachine):
    """MVCC keys and leases, applied deterministically from validated commands.

    ``min_lease_ttl``: the minimum lease TTL in seconds (etcd: ``ceil(1.5 * election
    timeout)``); grants below it are raised to it when prepared. ``max_request_bytes``:
    a command larger than this is refused with ``etcdserver: request is too large``.
    ``clock`` stamps leases granted at apply for the leader-local :attr:`lessor`.
    """

    def __init__(
        self,
        min_lease_ttl: int = 2,
        max_request_bytes: int = 1_572_864,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_lease_ttl = min_lease_ttl
        self.max_request_bytes = max_request_bytes
        self.store = MVCC()
        self.leases = LeaseTable()
        self.lessor = Lessor(clock)
        self.applied_index = 0
        self._listeners: list[Listener] = []
        self.auth = AuthState()
        self.tokens = TokenTable(clock)

    # -- state ----------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current store revision (1 on a fresh store)."""
        return self.store.revision

    @property
    def compact_revision(self) -> int:
        """The last compaction revision (0 when never compacted)."""
        return self.store.compact_revision

    def db_size(self) -> int:
        """Approximate bytes of state (all kept key versions and the leases)."""
        return self.store.db_size() + 32 * len(self.leases)

    # -- validation on the receiving member ------------------------------------------------------------

    def _command(self, op: str, req: dict[str, Any]) -> bytes:
        # etcd compares the *protobuf* size of the request with --max-request-bytes, not
        # the base64 JSON text: measure the decoded payload the same way.
        if _proto_size(req) + _RAFT_REQUEST_OVERHEAD > self.max_request_bytes:
            raise errors.request_too_large()
        command: dict[str, Any] = {"v": COMMAND_VERSION, "op": op, "r": _to_wire(req)}
        if self.auth.enabled:
            checked = CHECKED.get()
            if checked is not None:  # the user and auth revision the request was checked at
                command["au"] = list(checked)
        return _COMPACT.encode(command).encode()

    def prepare_put(self, body: Any) -> bytes:
        """Validate a PutRequest body (parsed JSON); the put command."""
        req = codec.parse_put(body)
        check_put_request(req)
        return self._command("put", req)

    def prepare_deleterange(self, body: Any) -> bytes:
        """Validate a DeleteRangeRequest body; the deleterange command."""
        req = codec.parse_delete(body)
        if not req.get("key"):
            raise errors.empty_key()
        return self._command("delete", req)

    def prepare_txn(self, body: Any) -> bytes:
        """Validate a TxnRequest body (op counts, keys, duplicate keys); the txn command."""
        return self.txn_command(self.parse_txn(body))

    @staticmethod
    def parse_txn(body: Any) -> dict[str, Any]:
        """Parse and validate a TxnRequest body (op counts, keys, duplicate keys)."""
        req = codec.parse_txn(body)
        check_txn_request(req)
        check_intervals(req.get("success", []))
        check_intervals(req.get("failure", []))
        return req

    def txn_command(self, req: dict[str, Any]) -> bytes:
        """The txn command for a request from :meth:`parse_txn`."""
        return self._command("txn", req)

    def serve_read_txn(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run a read-only txn (:func:`txn_is_readonly`) on local state, as etcd does after its
        read barrier: the response body without header, plus ``revision``. Changes nothing."""
        if not txn_is_readonly(req):
            raise ValueError("serve_read_txn needs a read-only txn")
        store = self.store
        path = compare_to_path(store, req)
        check_path(store, path, self.leases.__contains__)
        store.begin()
        try:
            body = run_path(store, path, top=True)
        finally:
            store.rollback()  # nothing to undo; closes the txn opened for the reads
        body["revision"] = store.revision
        return body

    def prepare_compaction(self, body: Any) -> bytes:
        """Validate a CompactionRequest body; the compaction command."""
        req = codec.parse_compaction(body)
        return self._command("compact", {"revision": int(req.get("revision", 0))})

    def prepare_lease_grant(self, body: Any, rng: random.Random) -> bytes:
        """Validate a LeaseGrantRequest; ID 0 gets a random non-zero int63 ID from ``rng`` here.

        The TTL is raised to ``min_lease_ttl``; above 9,000,000,000 is ``too large lease TTL``.
        """
        req = codec.parse_lease_grant(body)
        ttl = int(req.get("TTL", 0))
        if ttl > MAX_LEASE_TTL:
            raise errors.lease_ttl_too_large()
        lease_id = int(req.get("ID", 0))
        while lease_id == 0 or (int(req.get("ID", 0)) == 0 and lease_id in self.leases):
            lease_id = rng.getrandbits(63)
        return self._command("grant", {"ID": lease_id, "TTL": max(ttl, self.min_lease_ttl)})

    def prepare_lease_revoke(self, body: Any) -> bytes:
        """Validate a LeaseRevokeRequest; the revoke command."""
        req = codec.parse_lease_id(body)
        return self._command("revoke", {"ID": int(req.get("ID", 0))})

    def lease_expire_command(self, lease_id: int) -> bytes:
        """The command the leader proposes when ``lease_id`` expired (a revoke)."""
        return self._command("revoke", {"ID": int(lease_id), "expired": True})

    # -- apply ----------------------------------------------------------------------------------------------

    def apply(self, command: bytes, index: int) -> dict[str, Any]:
        """Apply a command (deterministic); the response body without header, plus ``revision``."""
        self.applied_index = index
        try:
            cmd = json.loads(command)
            op = cmd["op"]
            req = _from_wire(cmd["r"])
            handler = self._HANDLERS[op]
            checked = cmd.get("au")
        except (ValueError, KeyError, TypeError):
            log.error("unknown command at index %d: %r", index, command[:200])
            return self._error(EtcdError(errors.INTERNAL, "etcdserver: unknown command"))
        if checked is not None and self.auth.enabled and int(checked[1]) < self.auth.revision:
            # Checked against an auth store that has changed since (etcd's ErrAuthOldRevision;
            # clientv3 then authenticates again and retries).
            return self._error(auth_error(MSG_OLD_REVISION))
        try:
            body, events = handler(self, req)
        except EtcdError as exc:
            self.store.rollback()
            return self._error(exc)
        if events:
            self._notify(events)
        body["revision"] = self.store.revision
        return body

    def _error(self, exc: EtcdError) -> dict[str, Any]:
        return {"error": exc, "revision": self.store.revision}

    def _notify(self, events: list[Event]) -> None:
        if not self._listeners:
            return
        rendered = [ev.render() for ev in events]
        rev = self.store.revision
        for fn in list(self._listeners):
            try:
                fn(rev, rendered)
            except Exception:  # a watcher must not stop the node
                log.exception("watch listener failed")

    def _apply_put(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        lease = int(req.get("lease", 0))
        if lease and lease not in self.leases:
            raise errors.lease_not_found()
        self.store.begin()
        body, _rev = do_put(self.store, req)
        return body, self.store.commit()

    def _apply_delete(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        self.store.begin()
        body, _rev = do_delete(self.store, req)
        return body, self.store.commit()

    def _apply_txn(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        store = self.store
        store.begin()
        path = compare_to_path(store, req)
        check_path(store, path, self.leases.__contains__)
        body = run_path(store, path, top=True)
        return body, store.commit()

    def _apply_compact(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        self.store.begin()
        self.store.compact(int(req.get("revision", 0)))
        return {}, []

    def _apply_grant(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        self.store.begin()
        lease_id, ttl = int(req["ID"]), int(req["TTL"])
        if lease_id == 0:
            raise errors.lease_not_found()
        if ttl > MAX_LEASE_TTL:
            raise errors.lease_ttl_too_large()
        if lease_id in self.leases:
            raise errors.lease_exists()
        self.leases.grant(lease_id, ttl)
        self.lessor.granted(lease_id, ttl)
        return {"ID": str(lease_id), "TTL": str(ttl)}, []

    def _apply_revoke(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        store = self.store
        store.begin()
        lease_id = int(req["ID"])
        if lease_id not in self.leases:
            raise errors.lease_not_found()
        for key in store.lease_keys(lease_id):
            store.delete_range(key, b"")
        events = store.commit()
        self.leases.revoke(lease_id)
        self.lessor.revoked(lease_id)
        return {}, events

    def prepare_auth(self, req: dict[str, Any]) -> bytes:
        """The command of an auth store change (``req["a"]`` names it, see :class:`AuthState`)."""
        return self._command("auth", req)

    def _apply_auth(self, req: dict[str, Any]) -> tuple[dict[str, Any], list[Event]]:
        self.store.begin()  # nothing to undo: an auth error changes nothing
        return self.auth.apply(req, self.tokens), []

    _HANDLERS: ClassVar[dict[str, _Handler]] = {
        "auth": _apply_auth,
        "put": _apply_put,
        "delete": _apply_delete,
        "txn": _apply_txn,
        "compact": _apply_compact,
        "grant": _apply_grant,
        "revoke": _apply_revoke,
    }

    # -- local reads ----------------------------------------------------------------------------------------

    def range(self, body: Any) -> dict[str, Any]:
        """Serve a RangeRequest body from local state: the response body without header, plus
        ``revision`` (the current store revision). Raises EtcdError (bad request, compacted,
        future revision). The caller does the read barrier unless ``serializable``."""
        return self.serve_range(codec.parse_range(body))

    def serve_range(self, req: dict[str, Any]) -> dict[str, Any]:
        """:meth:`range` for a request already parsed by :func:`codec.parse_range`."""
        if not req.get("key"):
            raise errors.empty_key()
        out, rev = do_range(self.store, req)
        out["revision"] = rev
        return out

    def lease_timetolive(self, body: Any, now: float) -> dict[str, Any]:
        """A LeaseTimeToLive answer from the leader-local clock (``TTL`` -1 when unknown/expired).

        ``TTL`` is the remaining whole seconds rounded down (0 is omitted, as etcd does);
        ``grantedTTL`` the granted one; ``keys`` (when asked) the attached keys, sorted.
        """
        req = codec.parse_lease_timetolive(body)
        lease_id = int(req.get("ID", 0))
        remaining = self.lessor.remaining(lease_id, now) if lease_id in self.leases else None
        out: dict[str, Any] = {}
        if lease_id:
            out["ID"] = str(lease_id)
        if remaining is None or remaining <= 0:
            out["TTL"] = "-1"
        else:
            if int(remaining):
                out["TTL"] = str(int(remaining))
            out["grantedTTL"] = str(self.leases.ttl[lease_id])
            if req.get("keys"):
                keys = [codec.b64(k) for k in self.store.lease_keys(lease_id)]
                if keys:
                    out["keys"] = keys
        out["revision"] = self.store.revision
        return out

    def lease_keepalive(self, body: Any, now: float) -> dict[str, Any]:
        """A LeaseKeepAlive answer (inner ``result`` object without header): ``TTL`` omitted when the
        lease is unknown or expired. Leader only (the lessor's clock)."""
        req = codec.parse_lease_id(body)
        lease_id = int(req.get("ID", 0))
        ttl = self.lessor.keepalive(lease_id, now) if lease_id in self.leases else -1
        out: dict[str, Any] = {}
        if lease_id:
            out["ID"] = str(lease_id)
        if ttl > 0:
            out["TTL"] = str(ttl)
        out["revision"] = self.store.revision
        return out

    def lease_leases(self) -> dict[str, Any]:
        """A LeaseLeases answer: every lease ID, ordered by expiry."""
        order = [lid for lid in self.lessor.by_expiry() if lid in self.leases]
        seen = set(order)
        order += [lid for lid in self.leases.ids() if lid not in seen]
        out: dict[str, Any] = {}
        if order:
            out["leases"] = [{"ID": str(lid)} for lid in order]
        out["revision"] = self.store.revision
        return out

    # -- watch support ----------------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(revision, events)`` synchronously after each apply that produced events.

        Events are rendered etcd-style and shared between listeners (treat them as
        read-only): ``{"kv": {...}}`` for a PUT, ``{"type": "DELETE", "kv": {"key", "mod_revision"}}``
        for a DELETE, each with ``"prev_kv"`` when the key had a previous version.
        """
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        """Stop calling ``fn``."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    def history(
        self, key: bytes, range_end: bytes, start_revision: int
    ) -> list[tuple[int, list[dict[str, Any]]]]:
        """Rendered events on ``[key, range_end)`` from ``start_revision`` on, grouped by revision.

        Raises EtcdError ``compacted`` (``.compact_revision`` set) when ``start_revision`` is
        below the compaction revision.
        """
        found = self.store.history(key, range_end, start_revision)
        return [(rev, [ev.render() for ev in evs]) for rev, evs in found]

    # -- snapshots ------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as deterministic JSON bytes (see docs/kvstore-data.md)."""
        return self.snapshot_writer().encode()

    def snapshot_writer(self) -> KVSnapshot:
        """A point-in-time view of the state, encoded later (in a worker thread) to the same
        bytes :meth:`snapshot` returns: the event loop only copies the per-key record lists."""
        leases = [[lid, self.leases.ttl[lid]] for lid in self.leases.ids()]
        # The auth section is written only once auth was ever used: older readers keep working.
        auth = self.auth.dump() if (self.auth.revision or self.auth.users or self.auth.roles) else None
        return KVSnapshot(self.applied_index, self.store.view(), leases, auth)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's; every lease gets a full TTL on the lessor."""
        image = json.loads(data)
        if image.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported kvstore snapshot version {image.get('v')!r}")
        self.store = MVCC.load(image["mvcc"])
        self.leases = LeaseTable()
        for lid, ttl in image["leases"]:
            self.leases.grant(int(lid), int(ttl))
        self.lessor.reset((lid, ttl) for lid, ttl in self.leases.ttl.items())
        self.applied_index = int(image.get("applied_index", 0))
        self.auth = AuthState.load(image.get("auth"))  # none (an older snapshot): auth disabled
        self.tokens.clear()

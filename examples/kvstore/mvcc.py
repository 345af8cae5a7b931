"""Multi-version key-value store with etcd's revision model (contract §3, §6).

* The store starts at revision 1; every write transaction that changes at least one
  key advances the global revision by exactly one, however many keys it touches.
* Each key keeps its full history as records ``(main, sub, fields | None)``, where ``fields``
  is a ``KeyValue``'s fields as a plain tuple (``None`` is a tombstone); ``sub`` orders the
  changes inside one revision. Plain tuples of bytes and ints are untracked by CPython's
  garbage collector after their first collection, so old versions cost full collections
  nothing (a ``KeyValue`` named tuple stays tracked: two tracked objects per version).
* The current keys live in a :class:`sortedcontainers.SortedDict` for range scans;
  the history index is another one (key -> records) for reads at older revisions
  and watch replay.
* Compaction at revision R keeps, for every key, the newest record at or below R
  (dropped when it is a tombstone) and everything after; reads below R fail with
  ``mvcc: required revision has been compacted``.

The request-level operations (range / put / deleterange / txn with etcd's compare
and duplicate-key rules) live here too and return etcd-rendered response bodies.
"""

from __future__ import annotations

import gc
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from sortedcontainers import SortedDict

from examples.kvstore import errors
from examples.kvstore.codec import b64, render_kv

PUT = 0
DELETE = 1

# sort targets / orders / compare results and targets (etcd's enum numbers)
SORT_NONE, SORT_ASCEND, SORT_DESCEND = 0, 1, 2
TARGET_KEY, TARGET_VERSION, TARGET_CREATE, TARGET_MOD, TARGET_VALUE = 0, 1, 2, 3, 4
CMP_EQUAL, CMP_GREATER, CMP_LESS, CMP_NOT_EQUAL = 0, 1, 2, 3
CT_VERSION, CT_CREATE, CT_MOD, CT_VALUE, CT_LEASE = 0, 1, 2, 3, 4

_REC_OVERHEAD = 64  # approximate per-record bytes for db_size()


class KeyValue(NamedTuple):
    """One version of a key (mvccpb.KeyValue)."""

    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int

    def render(self, keys_only: bool = False) -> dict[str, Any]:
        """etcd's JSON form (``value`` absent when empty, ``lease`` absent when 0)."""
        return render_kv(
            self.key, self.create_revision, self.mod_revision, self.version, self.value, self.lease, keys_only
        )


class Event(NamedTuple):
    """A change: PUT with the new kv, or DELETE (kv holds the key and the delete revision)."""

    type: int
    kv: KeyValue
    prev_kv: KeyValue | None

    def render(self) -> dict[str, Any]:
        """etcd's JSON event, ``prev_kv`` included when there is one (the watcher strips it)."""
        out: dict[str, Any] = {}
        if self.type == DELETE:
            out["type"] = "DELETE"
            out["kv"] = {"key": b64(self.kv.key), "mod_revision": str(self.kv.mod_revision)}
        else:
            out["kv"] = self.kv.render()
        if self.prev_kv is not None:
            out["prev_kv"] = self.prev_kv.render()
        return out


KVFields = tuple[bytes, int, int, int, bytes, int]
"""A KeyValue's fields in a plain tuple (same order), as history records hold them."""
Rec = tuple[int, int, "KVFields | None"]
View = tuple[int, int, list[tuple[bytes, list[Rec]]]]
"""A point-in-time :meth:`MVCC.view`: revision, compaction revision, (key, records) pairs."""

_first = operator.itemgetter(0)


def _size_of(key: bytes, kv: KeyValue | KVFields | None) -> int:
    return len(key) + (len(kv[4]) if kv is not None else 0) + _REC_OVERHEAD


_as_kv: Callable[[KVFields], KeyValue] = KeyValue._make
"""A history record's fields as a KeyValue (for the rare reads of old versions)."""


def _kv(fields: KVFields | None) -> KeyValue | None:
    return None if fields is None else _as_kv(fields)


class MVCC:
    """The multi-version store (no leases of its own: it indexes keys by their lease ID)."""

    def __init__(self) -> None:
        self.revision: int = 1
        self._compact: int = -1  # etcd's compactMainRev; -1 = never compacted
        self._live: SortedDict = SortedDict()  # key -> KeyValue
        self._index: SortedDict = SortedDict()  # key -> list[Rec]
        self._dirty: set[bytes] = set()  # keys with more than one record or a tombstone
        self._lease_keys: dict[int, set[bytes]] = {}
        self._size = 0
        # the open write transaction
        self._begin = 0
        self._sub = 0
        self._changes: list[Event] = []
        self._undo: list[tuple[Any, ...]] = []

    # -- introspection --------------------------------------------------------------------------

    @property
    def compact_revision(self) -> int:
        """The last compaction revision (0 when never compacted)."""
        return max(self._compact, 0)

    def db_size(self) -> int:
        """Approximate bytes held (keys, values and per-record overhead of all kept versions)."""
        return self._size

    def __len__(self) -> int:
        return len(self._live)

    def lease_keys(self, lease: int) -> list[bytes]:
        """The live keys attached to ``lease``, sorted."""
        return sorted(self._lease_keys.get(lease, ()))

    def get(self, key: bytes) -> KeyValue | None:
        """The current version of ``key``."""
        kv: KeyValue | None = self._live.get(key)
        return kv

    # -- key iteration ----------------------------------------------------------------------------

    @staticmethod
    def _keys_in(mapping: SortedDict, key: bytes, end: bytes) -> Iterable[bytes]:
        """Keys of ``mapping`` in etcd's range: single key (end empty), >= key (end "\\0"), [key, end)."""
        if not end:
            return (key,) if key in mapping else ()
        if end == b"\0":
            return mapping.irange(minimum=key)
        if key >= end:
            return ()
        return mapping.irange(key, end, inclusive=(True, False))

    def _at(self, recs: list[Rec], rev: int) -> KeyValue | None:
        """The version visible at ``rev`` in one key's records (None: absent/deleted)."""
        lo, hi = 0, len(recs)
        while lo < hi:  # first record with main > rev
            mid = (lo + hi) // 2
            if recs[mid][0] <= rev:
                lo = mid + 1
            else:
                hi = mid
        return _kv(recs[lo - 1][2]) if lo else None

    def _visible(self, key: bytes, end: bytes, rev: int, cur: int) -> Iterator[KeyValue]:
        if rev >= cur:
            for k in self._keys_in(self._live, key, end):
                yield self._live[k]
            return
        for k in self._keys_in(self._index, key, end):
            kv = self._at(self._index[k], rev)
            if kv is not None:
                yield kv

    def range(
        self, key: bytes, end: bytes, rev: int = 0, limit: int = 0, count_only: bool = False, cur: int = 0
    ) -> tuple[list[KeyValue], int, int]:
        """(kvs, count, current revision) like etcd's ``rangeKeys``.

        ``rev <= 0`` reads the current revision; a future ``rev`` or one below the
        compaction raises; ``limit > 0`` caps ``kvs`` while ``count`` counts all.
        ``cur`` overrides the current revision (inside a write txn: begin + 1 after a write).
        """
        cur = cur or self.revision
        if rev > cur:
            raise errors.future_revision()
        if rev <= 0:
            rev = cur
        if rev < self._compact:
            raise errors.compacted(self.compact_revision)
        if count_only:
            return [], sum(1 for _ in self._visible(key, end, rev, cur)), cur
        kvs = list(self._visible(key, end, rev, cur))
        count = len(kvs)
        if 0 < limit < count:
            kvs = kvs[:limit]
        return kvs, count, cur

    # -- writes (one write transaction at a time) -----------------------------------------------------

    def begin(self) -> None:
        """Open a write transaction at the current revision."""
        self._begin = self.revision
        self._sub = 0
        self._changes = []
        self._undo = []

    @property
    def txn_rev(self) -> int:
        """The revision a read inside the open write txn sees (begin, or begin + 1 after a write)."""
        return self._begin + 1 if self._changes else self._begin

    def _set_live(self, key: bytes, kv: KeyValue | None) -> None:
        old: KeyValue | None = self._live.get(key)
        if old is not None and old.lease:
            keys = self._lease_keys.get(old.lease)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._lease_keys[old.lease]
        if kv is None:
            if old is not None:
                del self._live[key]
        else:
            self._live[key] = kv
            if kv.lease:
                self._lease_keys.setdefault(kv.lease, set()).add(key)

    def _append(self, key: bytes, kv: KeyValue | None) -> None:
        rev = self._begin + 1
        recs = self._index.get(key)
        fields = None if kv is None else tuple(kv)
        if recs is None:
            self._index[key] = [(rev, self._sub, fields)]
        else:
            recs.append((rev, self._sub, fields))
            self._dirty.add(key)
        if kv is None:
            self._dirty.add(key)
        self._sub += 1
        self._size += _size_of(key, kv)
        self._undo.append(("rec", key, self._live.get(key)))
        self._set_live(key, kv)

    def put(self, key: bytes, value: bytes, lease: int) -> int:
        """Write ``key`` in the open txn; returns the txn's write revision."""
        rev = self._begin + 1
        prev: KeyValue | None = self._live.get(key)
        if prev is None:
            kv = KeyValue(key, rev, rev, 1, value, lease)
        else:
            kv = KeyValue(key, prev.create_revision, rev, prev.version + 1, value, lease)
        self._append(key, kv)
        self._changes.append(Event(PUT, kv, prev))
        return rev

    def delete_range(self, key: bytes, end: bytes) -> tuple[int, int]:
        """Delete the live keys in the range in the open txn; (deleted, revision) like etcd."""
        keys = list(self._keys_in(self._live, key, end))
        rev = self._begin + 1
        for k in keys:
            prev: KeyValue = self._live[k]
            self._append(k, None)
            self._changes.append(Event(DELETE, KeyValue(k, 0, rev, 0, b"", 0), prev))
        if keys or self._changes:
            return len(keys), rev
        return 0, self._begin

    def commit(self) -> list[Event]:
        """Close the write txn: the revision advances by one when anything changed; returns the events."""
        changes = self._changes
        if changes:
            self.revision = self._begin + 1
        self._changes = []
        self._undo = []
        return changes

    def rollback(self) -> None:
        """Undo every change of the open write txn (used when a txn fails midway)."""
        for entry in reversed(self._undo):
            _tag, key, old = entry
            recs = self._index[key]
            rec = recs.pop()
            self._size -= _size_of(key, rec[2])
            if not recs:
                del self._index[key]
                self._dirty.discard(key)
            self._set_live(key, old)
        self._changes = []
        self._undo = []

    # -- compaction and history ------------------------------------------------------------------

    def compact(self, rev: int) -> None:
        """Drop history below ``rev`` (etcd's rules; raises compacted / future revision)."""
        if rev <= self._compact:
            raise errors.compacted(self.compact_revision)
        if rev > self.revision:
            raise errors.future_revision()
        self._compact = rev
        for key in list(self._dirty):
            recs = self._index[key]
            keep_from = 0
            for i, rec in enumerate(recs):
                if rec[0] <= rev:
                    keep_from = i
                else:
                    break
            if recs[0][0] > rev:
                continue
            if recs[keep_from][2] is None:
                keep_from += 1
            for rec in recs[:keep_from]:
                self._size -= _size_of(key, rec[2])
            del recs[:keep_from]
            if not recs:
                del self._index[key]
                self._dirty.discard(key)
            elif len(recs) == 1 and recs[0][2] is not None:
                self._dirty.discard(key)

    def history(self, key: bytes, end: bytes, start: int) -> list[tuple[int, list[Event]]]:
        """Events on keys in the range from revision ``start`` on, grouped by revision, in order.

        Raises ``compacted`` (with ``compact_revision``) when ``start`` is below the compaction
        (etcd's watcher rule ``minRev < compactRev``). At the compaction revision itself
        only the surviving PUTs remain, as in etcd. ``prev_kv`` is set when the previous
        version is still readable.
        """
        if start <= 0:
            start = self.revision + 1
        if start < self._compact:
            raise errors.compacted(self.compact_revision)
        found: list[tuple[int, int, Event]] = []
        for k in self._keys_in(self._index, key, end):
            recs: list[Rec] = self._index[k]
            if recs[-1][0] < start:
                continue
            for i in range(len(recs) - 1, -1, -1):
                main, sub, kv = recs[i]
                if main < start:
                    break
                j = i - 1
                while j >= 0 and recs[j][0] >= main:
                    j -= 1
                prev = _kv(recs[j][2]) if j >= 0 and main - 1 >= self._compact else None
                if kv is None:
                    ev = Event(DELETE, KeyValue(k, 0, main, 0, b"", 0), prev)
                else:
                    ev = Event(PUT, _as_kv(kv), prev)
                found.append((main, sub, ev))
        found.sort(key=lambda t: (t[0], t[1]))
        out: list[tuple[int, list[Event]]] = []
        for main, _sub, ev in found:
            if out and out[-1][0] == main:
                out[-1][1].append(ev)
            else:
                out.append((main, [ev]))
        return out

    # -- snapshot ----------------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """A JSON-able, deterministic image of the whole store (history included)."""
        return MVCC.dump_view(self.view())

    def view(self) -> View:
        """A point-in-time view for :meth:`dump_view`: copies only the per-key record lists
        (records and KeyValues are immutable), so it is cheap enough for the event loop."""
        # dict.items: the SortedDict's underlying dict at C speed (key order restored in dump_view).
        # The copy allocates one list per key: with the collector paused it is 3-4x faster
        # (100k keys: 39 ms instead of 157 ms on the loop), and nothing here makes cycles.
        paused = gc.isenabled()
        gc.disable()
        try:
            items = [(k, recs[:]) for k, recs in dict.items(self._index)]
        finally:
            if paused:
                gc.enable()
        return self.revision, self._compact, items

    @staticmethod
    def dump_view(view: View) -> dict[str, Any]:
        """:meth:`dump` of a :meth:`view` (may run in another thread: touches no live state)."""
        revision, compact, _items = view
        return {"rev": revision, "compact": compact, "keys": list(MVCC.dump_view_keys(view))}

    @staticmethod
    def dump_view_keys(view: View) -> Iterator[list[Any]]:
        """The ``"keys"`` of :meth:`dump_view` one key at a time, in key order, so that a snapshot
        can be encoded piece by piece instead of as one tree."""
        for k, recs in sorted(view[2], key=_first):
            out: list[list[Any]] = []
            for main, sub, kv in recs:
                if kv is None:
                    out.append([main, sub])
                else:  # key, create_revision, mod_revision, version, value, lease
                    out.append([main, sub, kv[1], kv[3], b64(kv[4]), kv[5]])
            yield [b64(k), out]

    @classmethod
    def load(cls, image: dict[str, Any]) -> MVCC:
        """The inverse of :meth:`dump`."""
        import base64

        store = cls()
        store.revision = int(image["rev"])
        store._compact = int(image["compact"])
        for kb, recs_in in image["keys"]:
            key = base64.b64decode(kb)
            recs: list[Rec] = []
            for r in recs_in:
                if len(r) == 2:
                    recs.append((r[0], r[1], None))
                else:
                    recs.append((r[0], r[1], (key, r[2], r[0], r[3], base64.b64decode(r[4]), r[5])))
            store._index[key] = recs
            for rec in recs:
                store._size += _size_of(key, rec[2])
            if len(recs) > 1 or recs[-1][2] is None:
                store._dirty.add(key)
            last = recs[-1][2]
            if last is not None:
                store._set_live(key, _as_kv(last))
        return store


# ============================================================================ request-level operations


def _sort_key(target: int) -> Callable[[KeyValue], Any]:
    if target == TARGET_VERSION:
        return lambda kv: kv.version
    if target == TARGET_CREATE:
        return lambda kv: kv.create_revision
    if target == TARGET_MOD:
        return lambda kv: kv.mod_revision
    if target == TARGET_VALUE:
        return lambda kv: kv.value
    return lambda kv: kv.key


def gte_end(end: bytes) -> bytes:
    """etcd's ``mkGteRange``: kept as is ("\\0" already means "all keys >= key" here)."""
    return end


def do_range(store: MVCC, r: dict[str, Any], cur: int = 0) -> tuple[dict[str, Any], int]:
    """Execute a parsed RangeRequest: (response body without header, header revision).

    Follows etcd 3.4's ``applierV3backend.Range``: fetch limit+1 (all when sorting or
    filtering), prune by min/max mod/create revision, sort (ASCEND by default for
    non-KEY targets), cut to ``limit`` with ``more``; ``count`` is the range's size.
    """
    limit = int(r.get("limit", 0))
    order = int(r.get("sort_order", 0))
    target = int(r.get("sort_target", 0))
    min_mod = int(r.get("min_mod_revision", 0))
    max_mod = int(r.get("max_mod_revision", 0))
    min_create = int(r.get("min_create_revision", 0))
    max_create = int(r.get("max_create_revision", 0))
    fetch = limit
    if order != SORT_NONE or min_mod or max_mod or min_create or max_create:
        fetch = 0
    if fetch > 0:
        fetch += 1
    kvs, count, rev = store.range(
        r.get("key", b""),
        r.get("range_end", b""),
        rev=int(r.get("revision", 0)),
        limit=fetch,
        count_only=bool(r.get("count_only", False)),
        cur=cur,
    )
    if max_mod:
        kvs = [kv for kv in kvs if not kv.mod_revision > max_mod]
    if min_mod:
        kvs = [kv for kv in kvs if not kv.mod_revision < min_mod]
    if max_create:
        kvs = [kv for kv in kvs if not kv.create_revision > max_create]
    if min_create:
        kvs = [kv for kv in kvs if not kv.create_revision < min_create]
    if target != TARGET_KEY and order == SORT_NONE:
        order = SORT_ASCEND
    if order == SORT_ASCEND and target != TARGET_KEY:
        kvs.sort(key=_sort_key(target))
    elif order == SORT_DESCEND:
        kvs.sort(key=_sort_key(target), reverse=True)
    body: dict[str, Any] = {}
    more = False
    if limit > 0 and len(kvs) > limit:
        kvs = kvs[:limit]
        more = True
    keys_only = bool(r.get("keys_only", False))
    if kvs:
        body["kvs"] = [kv.render(keys_only) for kv in kvs]
    if more:
        body["more"] = True
    if count:
        body["count"] = str(count)
    return body, rev


def check_range_revision(store: MVCC, r: dict[str, Any]) -> None:
    """etcd's txn ``checkRequestRange``: the revision must be readable before the txn runs."""
    rev = int(r.get("revision", 0))
    if rev == 0:
        return
    if rev > store.revision:
        raise errors.future_revision()
    if rev < store._compact:
        raise errors.compacted(store.compact_revision)


def do_put(store: MVCC, p: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Execute a parsed PutRequest inside the open write txn: (body without header, header revision).

    Raises ``key not found`` for ignore_value / ignore_lease on a missing key (the caller
    rolls back). Lease existence is checked by the caller.
    """
    key = p.get("key", b"")
    value = p.get("value", b"")
    lease = int(p.get("lease", 0))
    prev = store.get(key)
    ignore_value = bool(p.get("ignore_value", False))
    ignore_lease = bool(p.get("ignore_lease", False))
    if (ignore_value or ignore_lease) and prev is None:
        raise errors.key_not_found()
    if ignore_value and prev is not None:
        value = prev.value
    if ignore_lease and prev is not None:
        lease = prev.lease
    body: dict[str, Any] = {}
    if p.get("prev_kv") and prev is not None:
        body["prev_kv"] = prev.render()
    rev = store.put(key, value, lease)
    return body, rev


def do_delete(store: MVCC, d: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Execute a parsed DeleteRangeRequest inside the open write txn."""
    key = d.get("key", b"")
    end = d.get("range_end", b"")
    body: dict[str, Any] = {}
    prev_kvs: list[dict[str, Any]] = []
    if d.get("prev_kv"):
        kvs, _count, _rev = store.range(key, end, cur=store.txn_rev)
        prev_kvs = [kv.render() for kv in kvs]
    deleted, rev = store.delete_range(key, end)
    if deleted:
        body["deleted"] = str(deleted)
    if prev_kvs:
        body["prev_kvs"] = prev_kvs
    return body, rev


# -- txn -------------------------------------------------------------------------------------------------


def _cmp_int(a: int, b: int) -> int:
    return (a > b) - (a < b)


def compare_kv(c: dict[str, Any], kv: KeyValue) -> bool:
    """etcd's ``compareKV``: the target's field against the compare's operand."""
    target = int(c.get("target", 0))
    if target == CT_VALUE:
        v = c.get("value", b"")
        result = (kv.value > v) - (kv.value < v)
    elif target == CT_CREATE:
        result = _cmp_int(kv.create_revision, int(c.get("create_revision", 0)))
    elif target == CT_MOD:
        result = _cmp_int(kv.mod_revision, int(c.get("mod_revision", 0)))
    elif target == CT_VERSION:
        result = _cmp_int(kv.version, int(c.get("version", 0)))
    elif target == CT_LEASE:
        result = _cmp_int(kv.lease, int(c.get("lease", 0)))
    else:
        result = 0
    res = int(c.get("result", 0))
    if res == CMP_EQUAL:
        return result == 0
    if res == CMP_NOT_EQUAL:
        return result != 0
    if res == CMP_GREATER:
        return result > 0
    if res == CMP_LESS:
        return result < 0
    return True


_EMPTY_KV = KeyValue(b"", 0, 0, 0, b"", 0)


def apply_compare(store: MVCC, c: dict[str, Any]) -> bool:
    """etcd's ``applyCompare``: every key in the range must match; a missing key compares as zeros
    (but a VALUE compare on no key is always false)."""
    try:
        kvs, _count, _rev = store.range(c.get("key", b""), c.get("range_end", b""))
    except errors.EtcdError:
        return False
    if not kvs:
        if int(c.get("target", 0)) == CT_VALUE:
            return False
        return compare_kv(c, _EMPTY_KV)
    return all(compare_kv(c, kv) for kv in kvs)


def _op_kind(op: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for kind in ("request_range", "request_put", "request_delete_range", "request_txn"):
        if kind in op:
            return kind, op[kind]
    return None


class _Path:
    """The branch chosen at one txn level, and the paths of the nested txns on it (by op index)."""

    __slots__ = ("nested", "ops", "succeeded")

    def __init__(self, succeeded: bool, ops: list[dict[str, Any]]) -> None:
        self.succeeded = succeeded
        self.ops = ops
        self.nested: dict[int, _Path] = {}


def compare_to_path(store: MVCC, t: dict[str, Any]) -> _Path:
    """Evaluate every compare of the txn tree against the state BEFORE the txn (etcd's compareToPath)."""
    ok = all(apply_compare(store, c) for c in t.get("compare", ()))
    path = _Path(ok, list(t.get("success", ()) if ok else t.get("failure", ())))
    for i, op in enumerate(path.ops):
        kind = _op_kind(op)
        if kind is not None and kind[0] == "request_txn":
            path.nested[i] = compare_to_path(store, kind[1])
    return path


def txn_is_readonly(t: dict[str, Any]) -> bool:
    """etcd's isTxnReadonly: every op of both branches is a range (a nested txn, a put, a
    delete or an empty op is not). Such a txn is served locally, not proposed."""
    return all(
        "request_range" in op  # (_op_kind takes a range first, so this op runs as a range)
        for branch in ("success", "failure")
        for op in t.get(branch, ())
    )


def txn_is_serializable(t: dict[str, Any]) -> bool:
    """etcd's isTxnSerializable: every op is a ``serializable`` range, so no read barrier."""
    return all(
        "request_range" in op and bool(op["request_range"].get("serializable"))
        for branch in ("success", "failure")
        for op in t.get(branch, ())
    )


def _walk(path: _Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, op in enumerate(path.ops):
        kind = _op_kind(op)
        if kind is None:
            continue
        if kind[0] == "request_txn":
            yield from _walk(path.nested[i])
        else:
            yield kind


def check_path(store: MVCC, path: _Path, lease_exists: Callable[[int], bool]) -> None:
    """etcd's checkRequests on the chosen path: puts first (key for ignore_*, lease), then ranges."""
    for kind, req in _walk(path):
        if kind != "request_put":
            continue
        if (req.get("ignore_value") or req.get("ignore_lease")) and store.get(req.get("key", b"")) is None:
            raise errors.key_not_found()
        lease = int(req.get("lease", 0))
        if lease and not lease_exists(lease):
            raise errors.lease_not_found()
    for kind, req in _walk(path):
        if kind == "request_range":
            check_range_revision(store, req)


def run_path(store: MVCC, path: _Path, top: bool) -> dict[str, Any]:
    """Execute the chosen branch in the open write txn; returns the TxnResponse body (no header at top)."""
    responses: list[dict[str, Any]] = []
    for i, op in enumerate(path.ops):
        kind, req = _op_kind(op) or ("", {})
        if kind == "request_range":
            body, rev = do_range(store, req, cur=store.txn_rev)
            responses.append({"response_range": {"header": {"revision": str(rev)}, **body}})
        elif kind == "request_put":
            body, rev = do_put(store, req)
            responses.append({"response_put": {"header": {"revision": str(rev)}, **body}})
        elif kind == "request_delete_range":
            body, rev = do_delete(store, req)
            responses.append({"response_delete_range": {"header": {"revision": str(rev)}, **body}})
        elif kind == "request_txn":
            responses.append({"response_txn": run_path(store, path.nested[i], top=False)})
    out: dict[str, Any] = {} if top else {"header": {}}
    if path.succeeded:
        out["succeeded"] = True
    if responses:
        out["responses"] = responses
    return out


# -- validation of txn structure (before proposing) -------------------------------------------------------

MAX_TXN_OPS = 128


def check_txn_request(t: dict[str, Any], max_ops: int = MAX_TXN_OPS) -> None:
    """etcd's ``checkTxnRequest``: op counts, non-empty keys, ignore_* rules, no empty RequestOp."""
    compare = t.get("compare", [])
    success = t.get("success", [])
    failure = t.get("failure", [])
    opc = max(len(compare), len(success), len(failure))
    if opc > max_ops:
        raise errors.too_many_ops()
    for c in compare:
        if not c.get("key"):
            raise errors.empty_key()
    for op in (*success, *failure):
        check_request_op(op, max_ops - opc)


def check_put_request(p: dict[str, Any]) -> None:
    """etcd's ``checkPutRequest``."""
    if not p.get("key"):
        raise errors.empty_key()
    if p.get("ignore_value") and p.get("value"):
        raise errors.value_provided()
    if p.get("ignore_lease") and p.get("lease"):
        raise errors.lease_provided()


def check_request_op(op: dict[str, Any], max_ops: int) -> None:
    """etcd's ``checkRequestOp`` (an empty op is ``key not found``)."""
    kind = _op_kind(op)
    if kind is None:
        raise errors.key_not_found()
    name, req = kind
    if name == "request_put":
        check_put_request(req)
    elif name == "request_txn":
        check_txn_request(req, max_ops)
    elif not req.get("key"):
        raise errors.empty_key()


def _affine_cmp(a: bytes | None, b: bytes | None) -> int:
    """adt.StringAffineComparable: the empty string (None here) is +infinity."""
    if not a:
        return 0 if not b else 1
    if not b:
        return -1
    return (a > b) - (a < b)


def _intersects(iv: tuple[bytes, bytes | None], point: bytes) -> bool:
    """Whether the point interval [point, point+"\\0") overlaps ``iv`` (adt.Interval.Compare == 0)."""
    begin, end = iv
    p_begin, p_end = point, point + b"\0"
    if _affine_cmp(p_begin, begin) < 0 and _affine_cmp(p_end, begin) <= 0:
        return False
    return not _affine_cmp(p_begin, end) >= 0


def check_intervals(reqs: list[dict[str, Any]]) -> tuple[set[bytes], list[tuple[bytes, bytes | None]]]:
    """etcd's ``checkIntervals``: a put overlapping another put or a delete range -> duplicate key.

    Deletes at this level are collected first; nested txns' puts are checked against them
    (puts in both branches of one nested txn are fine); this level's puts last. Reads do not
    count, and two deletes may overlap.
    """
    dels: list[tuple[bytes, bytes | None]] = []
    for op in reqs:
        kind = _op_kind(op)
        if kind is None or kind[0] != "request_delete_range":
            continue
        d = kind[1]
        key = d.get("key", b"")
        end = d.get("range_end", b"")
        dels.append((key, end) if end else (key, key + b"\0"))
    puts: set[bytes] = set()
    for op in reqs:
        kind = _op_kind(op)
        if kind is None or kind[0] != "request_txn":
            continue
        puts_then, dels_then = check_intervals(kind[1].get("success", []))
        puts_else, dels_else = check_intervals(kind[1].get("failure", []))
        for k in puts_then:
            if k in puts or any(_intersects(iv, k) for iv in dels):
                raise errors.duplicate_key()
            puts.add(k)
        for k in puts_else:
            if k in puts and k not in puts_then:
                raise errors.duplicate_key()
            if any(_intersects(iv, k) for iv in dels):
                raise errors.duplicate_key()
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in reqs:
        kind = _op_kind(op)
        if kind is None or kind[0] != "request_put":
            continue
        k = kind[1].get("key", b"")
        if k in puts or any(_intersects(iv, k) for iv in dels):
            raise errors.duplicate_key()
        puts.add(k)
    return puts, dels

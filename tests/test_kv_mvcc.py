"""MVCC store of the kvstore example: revision model (contract §6), ranges (§3.1), history, compaction."""

from __future__ import annotations

import gc

import pytest

from examples.kvstore.errors import MSG_COMPACTED, MSG_FUTURE_REV, EtcdError
from examples.kvstore.mvcc import DELETE, MVCC, PUT, KeyValue, do_range


def put(s: MVCC, key: bytes, value: bytes = b"v", lease: int = 0) -> int:
    s.begin()
    s.put(key, value, lease)
    s.commit()
    return s.revision


def delete(s: MVCC, key: bytes, end: bytes = b"") -> int:
    s.begin()
    n, _ = s.delete_range(key, end)
    s.commit()
    return n


def keys(kvs: list[KeyValue]) -> list[bytes]:
    return [kv.key for kv in kvs]


def test_fresh_store_is_at_revision_1_and_first_write_makes_2() -> None:
    s = MVCC()
    assert s.revision == 1
    assert put(s, b"a") == 2
    kv = s.get(b"a")
    assert kv == KeyValue(b"a", 2, 2, 1, b"v", 0)


def test_same_value_put_still_bumps_revision_and_version() -> None:
    s = MVCC()
    put(s, b"a", b"x")
    put(s, b"a", b"x")
    assert s.revision == 3
    assert s.get(b"a") == KeyValue(b"a", 2, 3, 2, b"x", 0)


def test_delete_of_nothing_keeps_revision() -> None:
    s = MVCC()
    put(s, b"a")
    assert delete(s, b"zz") == 0
    assert s.revision == 2
    assert delete(s, b"a") == 1
    assert s.revision == 3


def test_one_revision_for_many_keys_in_one_txn() -> None:
    s = MVCC()
    s.begin()
    s.put(b"a", b"1", 0)
    s.put(b"b", b"2", 0)
    s.delete_range(b"a", b"")
    events = s.commit()
    assert s.revision == 2
    assert [(e.type, e.kv.key) for e in events] == [(PUT, b"a"), (PUT, b"b"), (DELETE, b"a")]


def test_version_and_create_revision_reset_after_delete() -> None:
    s = MVCC()
    put(s, b"k")
    put(s, b"k")
    delete(s, b"k")
    put(s, b"k", b"again")
    assert s.get(b"k") == KeyValue(b"k", 5, 5, 1, b"again", 0)


def test_reads_at_historical_revisions() -> None:
    s = MVCC()
    put(s, b"k", b"1")  # 2
    put(s, b"k", b"2")  # 3
    delete(s, b"k")  # 4
    put(s, b"k", b"3")  # 5
    assert s.range(b"k", b"", rev=2)[0][0].value == b"1"
    assert s.range(b"k", b"", rev=3)[0][0].value == b"2"
    assert s.range(b"k", b"", rev=4)[0] == []
    assert s.range(b"k", b"", rev=5)[0][0].value == b"3"
    assert s.range(b"k", b"", rev=1)[0] == []
    # the header revision is the current one, not the read one
    assert s.range(b"k", b"", rev=2)[2] == 5


def test_future_revision_is_out_of_range() -> None:
    s = MVCC()
    put(s, b"k")
    with pytest.raises(EtcdError) as exc:
        s.range(b"k", b"", rev=3)
    assert (exc.value.grpc_code, exc.value.message, exc.value.http_status) == (11, MSG_FUTURE_REV, 400)


def test_range_forms() -> None:
    s = MVCC()
    for k in (b"\x00", b"a", b"a/1", b"a/2", b"b", b"c"):
        put(s, k)
    assert keys(s.range(b"a", b"")[0]) == [b"a"]
    assert keys(s.range(b"a/", b"a0")[0]) == [b"a/1", b"a/2"]
    assert keys(s.range(b"b", b"\x00")[0]) == [b"b", b"c"]
    assert keys(s.range(b"\x00", b"\x00")[0]) == [b"\x00", b"a", b"a/1", b"a/2", b"b", b"c"]
    assert s.range(b"c", b"a")[0] == []  # inverted range: nothing
    kvs, count, _ = s.range(b"a", b"c", limit=2)
    assert keys(kvs) == [b"a", b"a/1"] and count == 4
    kvs, count, _ = s.range(b"a", b"c", count_only=True)
    assert kvs == [] and count == 4


def test_do_range_limit_more_count_sort_and_filters() -> None:
    s = MVCC()
    put(s, b"a", b"z")  # 2
    put(s, b"b", b"y")  # 3
    put(s, b"c", b"x")  # 4
    put(s, b"a", b"w")  # 5: a version 2
    body, rev = do_range(s, {"key": b"a", "range_end": b"d", "limit": 2})
    assert rev == 5 and body["more"] is True and body["count"] == "3"
    assert [kv["key"] for kv in body["kvs"]] == ["YQ==", "Yg=="]
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "limit": 3})
    assert "more" not in body
    # sort by VALUE ascending (default order for non-KEY targets)
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "sort_target": 4})
    assert [kv["value"] for kv in body["kvs"]] == ["dw==", "eA==", "eQ=="]
    # DESCEND by KEY, keys_only
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "sort_order": 2, "keys_only": True})
    assert [kv["key"] for kv in body["kvs"]] == ["Yw==", "Yg==", "YQ=="]
    assert all("value" not in kv for kv in body["kvs"])
    # DESCEND by VERSION: ties keep ascending key order (stable, like Go's insertion sort)
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "sort_order": 2, "sort_target": 1})
    assert [kv["key"] for kv in body["kvs"]] == ["YQ==", "Yg==", "Yw=="]
    # CREATE / MOD targets with a limit after sorting
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "sort_order": 2, "sort_target": 3, "limit": 1})
    assert [kv["key"] for kv in body["kvs"]] == ["YQ=="] and body["more"] and body["count"] == "3"
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "sort_order": 2, "sort_target": 2})
    assert [kv["key"] for kv in body["kvs"]] == ["Yw==", "Yg==", "YQ=="]
    # min/max mod/create filters prune kvs but not count (etcd)
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "min_mod_revision": 4})
    assert [kv["key"] for kv in body["kvs"]] == ["YQ==", "Yw=="] and body["count"] == "3"
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "max_mod_revision": 3})
    assert [kv["key"] for kv in body["kvs"]] == ["Yg=="]
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "min_create_revision": 3})
    assert [kv["key"] for kv in body["kvs"]] == ["Yg==", "Yw=="]
    body, _ = do_range(s, {"key": b"a", "range_end": b"d", "max_create_revision": 2})
    assert [kv["key"] for kv in body["kvs"]] == ["YQ=="]
    # count_only
    assert do_range(s, {"key": b"a", "range_end": b"d", "count_only": True})[0] == {"count": "3"}
    # empty result: no kvs, no count
    assert do_range(s, {"key": b"nope"})[0] == {}


def test_compaction_rules() -> None:
    s = MVCC()
    put(s, b"k", b"1")  # 2
    put(s, b"k", b"2")  # 3
    put(s, b"gone")  # 4
    delete(s, b"gone")  # 5
    put(s, b"k", b"3")  # 6
    s.compact(4)
    assert s.compact_revision == 4
    with pytest.raises(EtcdError) as exc:
        s.range(b"k", b"", rev=3)
    assert (exc.value.grpc_code, exc.value.message) == (11, MSG_COMPACTED)
    assert s.range(b"k", b"", rev=4)[0][0].value == b"2"  # reading AT the compaction revision is fine
    assert s.range(b"gone", b"", rev=4)[0][0].key == b"gone"
    with pytest.raises(EtcdError) as exc:
        s.compact(4)
    assert exc.value.message == MSG_COMPACTED
    with pytest.raises(EtcdError) as exc:
        s.compact(7)
    assert exc.value.message == MSG_FUTURE_REV
    s.compact(6)
    assert keys(s.range(b"gone", b"\x00", rev=6)[0]) == [b"k"]
    assert keys(s.range(b"\x00", b"\x00")[0]) == [b"k"]
    # the tombstoned key's history is gone entirely
    assert b"gone" not in s._index


def test_history_grouped_by_revision_with_prev_kv() -> None:
    s = MVCC()
    put(s, b"w/a", b"1")  # 2
    put(s, b"w/a", b"2")  # 3
    put(s, b"x", b"o")  # 4
    delete(s, b"w/a")  # 5
    s.begin()
    s.put(b"w/b", b"t", 0)
    s.put(b"w/c", b"t", 0)
    s.commit()  # 6
    hist = s.history(b"w/", b"w0", 2)
    assert [rev for rev, _ in hist] == [2, 3, 5, 6]
    assert [len(evs) for _, evs in hist] == [1, 1, 1, 2]
    first, second, dele, _pair = (evs for _, evs in hist)
    assert first[0].prev_kv is None
    assert second[0].prev_kv is not None and second[0].prev_kv.value == b"1"
    assert dele[0].type == DELETE and dele[0].kv.mod_revision == 5 and dele[0].prev_kv.value == b"2"
    assert dele[0].render() == {
        "type": "DELETE",
        "kv": {"key": "dy9h", "mod_revision": "5"},
        "prev_kv": {
            "key": "dy9h",
            "create_revision": "2",
            "mod_revision": "3",
            "version": "2",
            "value": "Mg==",
        },
    }
    assert s.history(b"w/", b"w0", 6)[0][0] == 6
    assert s.history(b"w/", b"w0", 7) == []


def test_history_below_compaction_raises_with_compact_revision() -> None:
    s = MVCC()
    for i in range(5):
        put(s, b"k", str(i).encode())  # 2..6
    s.compact(4)
    with pytest.raises(EtcdError) as exc:
        s.history(b"k", b"", 3)
    assert exc.value.message == MSG_COMPACTED and exc.value.compact_revision == 4
    hist = s.history(b"k", b"", 4)
    assert [rev for rev, _ in hist] == [4, 5, 6]
    assert hist[0][1][0].prev_kv is None  # revision 3 is compacted: no prev_kv
    assert hist[1][1][0].prev_kv is not None


def test_rollback_restores_everything() -> None:
    s = MVCC()
    put(s, b"a", b"1", lease=7)
    before = s.dump()
    s.begin()
    s.put(b"a", b"2", 0)
    s.put(b"b", b"2", 7)
    s.delete_range(b"a", b"")
    s.rollback()
    assert s.dump() == before
    assert s.lease_keys(7) == [b"a"]
    assert s.revision == 2


def test_lease_index_follows_puts_and_deletes() -> None:
    s = MVCC()
    put(s, b"a", lease=1)
    put(s, b"b", lease=1)
    assert s.lease_keys(1) == [b"a", b"b"]
    put(s, b"a", lease=2)
    assert s.lease_keys(1) == [b"b"] and s.lease_keys(2) == [b"a"]
    delete(s, b"b")
    assert s.lease_keys(1) == []


def test_dump_load_round_trip() -> None:
    s = MVCC()
    put(s, b"a", b"1", lease=3)
    put(s, b"a", b"2")
    delete(s, b"a")
    put(s, b"b", b"\xff\x00")
    s.compact(3)
    t = MVCC.load(s.dump())
    assert t.dump() == s.dump()
    assert t.revision == s.revision and t.compact_revision == 3
    assert t.db_size() == s.db_size()
    assert [(r, [e.render() for e in evs]) for r, evs in t.history(b"\x00", b"\x00", 3)] == [
        (r, [e.render() for e in evs]) for r, evs in s.history(b"\x00", b"\x00", 3)
    ]


def test_old_versions_are_invisible_to_the_garbage_collector() -> None:
    """History records are plain tuples of bytes and ints, which CPython stops tracking: a
    full collection's pause grows with the number of keys, not with the versions kept."""
    s = MVCC()
    put(s, b"k", b"v0")
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1, 2001):
        put(s, b"k", b"v%d" % i)
    gc.collect()
    gc.collect()  # a record is untracked by the first collection that finds its fields untracked
    assert len(gc.get_objects()) - before < 50  # was two tracked objects per version
    # ... and every version still reads back as a KeyValue, old and new.
    assert [kv.value for kv in s.range(b"k", b"", rev=2)[0]] == [b"v0"]
    assert s.range(b"k", b"", rev=1002)[0][0] == KeyValue(b"k", 2, 1002, 1001, b"v1000", 0)
    events = s.history(b"k", b"", 2001)
    assert [ev.kv.value for _, evs in events for ev in evs] == [b"v1999", b"v2000"]
    assert all(
        isinstance(ev.kv, KeyValue) and isinstance(ev.prev_kv, KeyValue) for _, evs in events for ev in evs
    )

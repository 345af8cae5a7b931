"""KVMachine and the etcd gateway codec: exact bodies from the etcd 3.4 transcript, errors, txn rules,
watch events, snapshots, and a determinism property test."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.kvstore import codec
from examples.kvstore.errors import EtcdError, http_status_for
from examples.kvstore.machine import KVMachine
from examples.kvstore.mvcc import txn_is_readonly, txn_is_serializable


def b(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Harness:
    """A machine plus an apply counter; errors from apply are raised like the server does."""

    def __init__(self, **kw: Any) -> None:
        self.m = KVMachine(**kw)
        self.index = 0
        self.events: list[tuple[int, list[dict[str, Any]]]] = []
        self.m.add_listener(lambda rev, evs: self.events.append((rev, evs)))

    def apply(self, cmd: bytes) -> dict[str, Any]:
        self.index += 1
        out = self.m.apply(cmd, self.index)
        if isinstance(out.get("error"), EtcdError):
            raise out["error"]
        return out

    def put(self, body: Any) -> dict[str, Any]:
        return self.apply(self.m.prepare_put(body))

    def delete(self, body: Any) -> dict[str, Any]:
        return self.apply(self.m.prepare_deleterange(body))

    def txn(self, body: Any) -> dict[str, Any]:
        return self.apply(self.m.prepare_txn(body))


def err(fn: Any, *args: Any) -> tuple[int, str, int]:
    with pytest.raises(EtcdError) as exc:
        fn(*args)
    e = exc.value
    assert e.body() == {"error": e.message, "message": e.message, "code": e.grpc_code}
    return e.grpc_code, e.message, e.http_status


def raw(body: str) -> Any:
    return codec.decode_json(body.encode())


# ------------------------------------------------------------------------------- errors and codec


def test_http_status_mapping() -> None:
    assert [http_status_for(c) for c in (1, 3, 4, 5, 8, 9, 11, 14, 13, 12)] == [
        408,
        400,
        504,
        404,
        429,
        412,
        400,
        503,
        500,
        501,
    ]


def test_json_body_errors() -> None:
    m = KVMachine()
    assert err(codec.decode_json, b'{"key": "Zm9v", ') == (3, "unexpected EOF", 400)
    assert err(codec.decode_json, b'{"key": "Zm9') == (3, "unexpected EOF", 400)
    assert codec.decode_json(b"") == {} and codec.decode_json(b"  \n") == {}
    assert codec.decode_json(b'{"key":"YQ=="} trailing') == {"key": "YQ=="}
    assert err(codec.decode_json, b'{"key" 1}')[1] == "invalid character '1' after object key"
    assert err(codec.decode_json, b'{"a":1 "b"}')[1] == "invalid character '\"' after object key:value pair"
    assert err(codec.decode_json, b"[1 2]")[1] == "invalid character '2' after array element"
    assert (
        err(codec.decode_json, b"{x}")[1]
        == "invalid character 'x' looking for beginning of object key string"
    )
    assert err(m.prepare_put, raw("[]")) == (
        3,
        "json: cannot unmarshal array into Go value of type map[string]json.RawMessage",
        400,
    )
    assert err(m.range, raw(""))[1] == "etcdserver: key is not provided"


def test_field_type_errors_exact_messages() -> None:
    m = KVMachine()
    assert (
        err(m.prepare_put, raw('{"key":5}'))[1]
        == "json: cannot unmarshal number into Go value of type []uint8"
    )
    assert err(m.prepare_put, raw('{"key":"aw==","value":"dg==","lease":1000.0}'))[1] == (
        "json: cannot unmarshal number 1000.0 into Go value of type int64"
    )
    assert err(m.prepare_put, raw('{"key":"aw==","lease":1e3}'))[1] == (
        "json: cannot unmarshal number 1e3 into Go value of type int64"
    )
    assert err(m.prepare_put, raw('{"key":"aw==","lease":"1.5"}'))[1] == (
        "json: cannot unmarshal number 1.5 into Go value of type int64"
    )
    assert err(m.prepare_put, raw('{"key":"aw==","lease":true}'))[1] == (
        "json: cannot unmarshal bool into Go value of type int64"
    )
    assert err(m.prepare_put, raw('{"key":"aw==","lease":99999999999999999999}'))[1] == (
        "json: cannot unmarshal number 99999999999999999999 into Go value of type int64"
    )
    assert err(m.range, raw('{"key":"aw==","keys_only":"true"}'))[1] == (
        "json: cannot unmarshal string into Go value of type bool"
    )
    assert err(m.range, raw('{"key":"aw==","keys_only":1}'))[1] == (
        "json: cannot unmarshal number into Go value of type bool"
    )
    assert err(m.prepare_txn, raw('{"compare":[{"key":"Y2Fz","result":"EQUALS","target":"VALUE"}]}')) == (
        3,
        'unknown value "EQUALS" for enum etcdserverpb.Compare_CompareResult',
        400,
    )
    assert err(m.range, raw('{"key":"aw==","sort_order":"UP"}'))[1] == (
        'unknown value "UP" for enum etcdserverpb.RangeRequest_SortOrder'
    )
    assert err(m.range, raw('{"key":"aw==","sort_target":1.5}'))[1] == (
        "json: cannot unmarshal number 1.5 into Go value of type etcdserverpb.RangeRequest_SortTarget"
    )
    assert err(m.prepare_txn, raw('{"compare":{}}'))[1] == (
        "json: cannot unmarshal object into Go value of type []json.RawMessage"
    )
    assert err(m.prepare_put, raw('{"value":"eA=="}')) == (3, "etcdserver: key is not provided", 400)


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("Zm9vMQ", 4),  # unpadded (transcript)
        ("!!!notb64", 0),  # transcript
        ("-_8=", 0),  # URL-safe alphabet (transcript)
        ("Z===", 1),
        ("Zm9vZ", 4),
        ("Zm=v", 2),
        ("Zm9v=", 4),
        ("Zm8=Zm8=", 4),  # data after padding
        ("Zm=", 3),  # not enough padding
        ("Zm9v Zm9v", 4),
    ],
)
def test_base64_errors_match_go(text: str, offset: int) -> None:
    assert err(codec.b64decode_go, text) == (3, f"illegal base64 data at input byte {offset}", 400)


def test_base64_accepts_padding_and_newlines() -> None:
    assert codec.b64decode_go("Zm9v\n") == b"foo"
    assert codec.b64decode_go("Zm\r\n9v") == b"foo"
    assert codec.b64decode_go("Zm8=") == b"fo"
    assert codec.b64decode_go("Zg==") == b"f"
    assert codec.b64decode_go("Zg=\n=") == b"f"
    assert codec.b64decode_go("") == b""


def test_int64_strings_enums_names_camelcase_and_unknown_fields() -> None:
    r = codec.parse_range(
        raw(
            '{"key":"YS8=","rangeEnd":"YTA=","limit":"2","revision":" 5","sort_order":"DESCEND",'
            '"sortTarget":3,"keysOnly":true,"bogus":[1,2]}'
        )
    )
    assert r == {
        "key": b"a/",
        "range_end": b"a0",
        "limit": 2,
        "revision": 5,
        "sort_order": 2,
        "sort_target": 3,
        "keys_only": True,
    }
    p = codec.parse_put(raw('{"key":"bGs=","lease":2847016036904760614,"prev_kv":null}'))
    assert p == {"key": b"lk", "lease": 2847016036904760614}
    assert (
        codec.parse_put(raw('{"key":"bGs=","lease":"2847016036904760614"}'))["lease"] == 2847016036904760614
    )


def test_rendering_omits_defaults_and_uses_strings() -> None:
    assert codec.render_kv(b"k", 2, 3, 1, b"", 0) == {
        "key": "aw==",
        "create_revision": "2",
        "mod_revision": "3",
        "version": "1",
    }
    assert codec.render_kv(b"k", 2, 3, 1, b"v", 2**62) == {
        "key": "aw==",
        "create_revision": "2",
        "mod_revision": "3",
        "version": "1",
        "value": "dg==",
        "lease": str(2**62),
    }
    assert codec.i64(2**63 - 1) == "9223372036854775807"
    assert codec.omit_zero({"a": 0, "b": False, "c": "", "d": [], "e": "0", "f": "1", "g": True}) == {
        "f": "1",
        "g": True,
    }


# ------------------------------------------------------------------------------- transcript replay


def test_transcript_kv_sequence() -> None:
    h = Harness()
    m = h.m
    assert h.put({"key": "Zm9v", "value": "YmFy"}) == {"revision": 2}
    assert h.put({"key": "Zm9v", "value": "YmFyMg==", "prev_kv": True}) == {
        "prev_kv": {
            "key": "Zm9v",
            "create_revision": "2",
            "mod_revision": "2",
            "version": "1",
            "value": "YmFy",
        },
        "revision": 3,
    }
    assert m.range({"key": "Zm9v", "sort_order": 0, "sort_target": 0}) == {
        "kvs": [
            {"key": "Zm9v", "create_revision": "2", "mod_revision": "3", "version": "2", "value": "YmFyMg=="}
        ],
        "count": "1",
        "revision": 3,
    }
    assert m.range({"key": "bm9wZQ=="}) == {"revision": 3}
    h.put({"key": "ZW1wdHk="})
    assert m.range({"key": "ZW1wdHk="})["kvs"] == [
        {"key": "ZW1wdHk=", "create_revision": "4", "mod_revision": "4", "version": "1"}
    ]
    for k in ("a/1", "a/2", "a/3", "b/1"):
        h.put({"key": b(k), "value": b("v-" + k)})
    assert m.range({"key": "YS8=", "range_end": "YTA=", "count_only": True}) == {"count": "3", "revision": 8}
    out = m.range({"key": "YS8=", "range_end": "YTA=", "limit": "1", "revision": "5"})
    assert out == {
        "kvs": [
            {"key": "YS8x", "create_revision": "5", "mod_revision": "5", "version": "1", "value": "di1hLzE="}
        ],
        "count": "1",
        "revision": 8,
    }
    assert h.delete({"key": "Zm9v"}) == {"deleted": "1", "revision": 9}
    assert h.delete({"key": "Zm9v"}) == {"revision": 9}
    out = h.delete({"key": "YS8=", "range_end": "YTA=", "prev_kv": True})
    assert out["deleted"] == "3" and out["revision"] == 10 and len(out["prev_kvs"]) == 3
    assert err(m.range, {"key": "dy8=", "revision": 1000000}) == (
        11,
        "etcdserver: mvcc: required revision is a future revision",
        400,
    )


def test_put_ignore_value_and_lease_rules() -> None:
    h = Harness()
    m = h.m
    assert err(h.put, {"key": "aw==", "ignore_value": True}) == (3, "etcdserver: key not found", 400)
    assert h.m.revision == 1
    assert err(m.prepare_put, {"key": "aw==", "value": "dg==", "ignore_value": True})[1] == (
        "etcdserver: value is provided"
    )
    assert (
        err(m.prepare_put, {"key": "aw==", "lease": 5, "ignore_lease": True})[1]
        == "etcdserver: lease is provided"
    )
    assert err(h.put, {"key": "aw==", "lease": 5}) == (5, "etcdserver: requested lease not found", 404)
    h.put({"key": "aw==", "value": "dg=="})
    h.put({"key": "aw==", "ignore_value": True})
    assert m.range({"key": "aw=="})["kvs"][0]["value"] == "dg=="


# ------------------------------------------------------------------------------------------- txn


def cmp(key: str, result: str, target: str, **operand: Any) -> dict[str, Any]:
    return {"key": b(key), "result": result, "target": target, **operand}


def test_txn_transcript_shapes() -> None:
    h = Harness()
    for _ in range(10):
        h.put({"key": b("pad"), "value": b("x")})
    h.put({"key": "Y2Fz", "value": "djE="})  # 12
    ok = h.txn(
        {
            "compare": [cmp("cas", "EQUAL", "VALUE", value="djE=")],
            "success": [{"request_put": {"key": "Y2Fz", "value": "djI="}}],
            "failure": [],
        }
    )
    assert ok == {
        "succeeded": True,
        "responses": [{"response_put": {"header": {"revision": "13"}}}],
        "revision": 13,
    }
    fail = h.txn(
        {
            "compare": [cmp("cas", "EQUAL", "VALUE", value="djE=")],
            "success": [{"request_put": {"key": "Y2Fz", "value": "djM="}}],
            "failure": [],
        }
    )
    assert fail == {"revision": 13}
    fail = h.txn(
        {
            "compare": [cmp("cas", "EQUAL", "VALUE", value="djE=")],
            "success": [{"request_put": {"key": "Y2Fz", "value": "djM="}}],
            "failure": [{"request_range": {"key": "Y2Fz"}}],
        }
    )
    assert fail == {
        "responses": [
            {
                "response_range": {
                    "header": {"revision": "13"},
                    "kvs": [
                        {
                            "key": "Y2Fz",
                            "create_revision": "12",
                            "mod_revision": "13",
                            "version": "2",
                            "value": "djI=",
                        }
                    ],
                    "count": "1",
                }
            }
        ],
        "revision": 13,
    }
    out = h.txn({"success": [{"request_delete_range": {"key": b("no-such-key")}}]})
    assert out == {
        "succeeded": True,
        "responses": [{"response_delete_range": {"header": {"revision": "13"}}}],
        "revision": 13,
    }


@pytest.mark.parametrize(
    ("compare", "expected"),
    [
        (cmp("k", "EQUAL", "VERSION", version=2), True),
        (cmp("k", "GREATER", "VERSION", version=1), True),
        (cmp("k", "LESS", "VERSION", version=2), False),
        (cmp("k", "NOT_EQUAL", "VERSION", version=2), False),
        (cmp("k", "EQUAL", "CREATE", create_revision=2), True),
        (cmp("k", "LESS", "CREATE", create_revision=3), True),
        (cmp("k", "EQUAL", "MOD", mod_revision=3), True),
        (cmp("k", "GREATER", "MOD", mod_revision=3), False),
        (cmp("k", "EQUAL", "VALUE", value=b("v2")), True),
        (cmp("k", "LESS", "VALUE", value=b("v3")), True),
        (cmp("k", "GREATER", "VALUE", value=b("v1")), True),
        (cmp("k", "NOT_EQUAL", "VALUE", value=b("v2")), False),
        (cmp("k", "EQUAL", "LEASE", lease=0), True),
        (cmp("k", "GREATER", "LEASE", lease=0), False),
        (cmp("missing", "EQUAL", "CREATE", create_revision=0), True),  # etcd3gw create()
        (cmp("missing", "EQUAL", "VERSION", version=0), True),
        (cmp("missing", "EQUAL", "VALUE", value=""), False),  # VALUE on no key: always false
        (cmp("missing", "NOT_EQUAL", "VALUE", value=b("x")), False),
        ({**cmp("k", "GREATER", "VERSION", version=0), "range_end": b("l")}, True),  # ranges: all must match
        ({**cmp("a", "EQUAL", "VERSION", version=2), "range_end": b("z")}, False),
        ({"key": b("k"), "result": 0, "target": 2, "mod_revision": "3"}, True),  # numeric enums
    ],
)
def test_txn_compare_targets_and_results(compare: dict[str, Any], expected: bool) -> None:
    h = Harness()
    h.put({"key": b("k"), "value": b("v1")})  # 2
    h.put({"key": b("k"), "value": b("v2")})  # 3
    h.put({"key": b("k2"), "value": b("x")})  # 4
    out = h.txn({"compare": [compare], "success": [{"request_range": {"key": b("k")}}]})
    assert out.get("succeeded", False) is expected


def test_txn_one_revision_and_ops_see_earlier_writes() -> None:
    h = Harness()
    out = h.txn(
        {
            "success": [
                {"request_range": {"key": b("t")}},
                {"request_put": {"key": b("t"), "value": b("1")}},
                {"request_range": {"key": b("t")}},
                {"request_put": {"key": b("u"), "value": b("2")}},
                {"request_delete_range": {"key": b("nothing")}},
            ]
        }
    )
    assert out["revision"] == 2 and h.m.revision == 2
    r = out["responses"]
    assert r[0] == {"response_range": {"header": {"revision": "1"}}}
    assert r[1] == {"response_put": {"header": {"revision": "2"}}}
    assert r[2]["response_range"]["kvs"][0]["value"] == b("1")
    assert r[2]["response_range"]["header"] == {"revision": "2"}
    assert r[4] == {"response_delete_range": {"header": {"revision": "2"}}}
    assert h.events == [
        (
            2,
            [
                {
                    "kv": {
                        "key": b("t"),
                        "create_revision": "2",
                        "mod_revision": "2",
                        "version": "1",
                        "value": b("1"),
                    }
                },
                {
                    "kv": {
                        "key": b("u"),
                        "create_revision": "2",
                        "mod_revision": "2",
                        "version": "1",
                        "value": b("2"),
                    }
                },
            ],
        )
    ]


def test_nested_txn() -> None:
    h = Harness()
    h.put({"key": b("a"), "value": b("1")})  # 2
    out = h.txn(
        {
            "success": [
                {"request_put": {"key": b("b"), "value": b("1")}},
                {
                    "request_txn": {
                        # compares see the state BEFORE the outer txn (compareToPath): no b yet
                        "compare": [cmp("b", "EQUAL", "VERSION", version=0)],
                        "success": [{"request_put": {"key": b("c"), "value": b("yes")}}],
                        "failure": [{"request_put": {"key": b("c"), "value": b("no")}}],
                    }
                },
                {"request_txn": {"compare": [cmp("a", "EQUAL", "VALUE", value=b("2"))]}},
            ]
        }
    )
    assert out == {
        "succeeded": True,
        "responses": [
            {"response_put": {"header": {"revision": "3"}}},
            {
                "response_txn": {
                    "header": {},
                    "succeeded": True,
                    "responses": [{"response_put": {"header": {"revision": "3"}}}],
                }
            },
            {"response_txn": {"header": {}}},
        ],
        "revision": 3,
    }
    assert h.m.range({"key": b("c")})["kvs"][0]["value"] == b("yes")


@pytest.mark.parametrize(
    ("ops", "duplicate"),
    [
        ([{"request_put": {"key": "ZA=="}}, {"request_put": {"key": "ZA=="}}], True),  # transcript
        ([{"request_put": {"key": b("a")}}, {"request_delete_range": {"key": b("a")}}], True),
        (
            [
                {"request_delete_range": {"key": b("a"), "range_end": b("c")}},
                {"request_put": {"key": b("b")}},
            ],
            True,
        ),
        (
            [
                {"request_delete_range": {"key": b("a"), "range_end": b("c")}},
                {"request_put": {"key": b("c")}},
            ],
            False,
        ),
        ([{"request_delete_range": {"key": b("a")}}, {"request_delete_range": {"key": b("a")}}], False),
        ([{"request_put": {"key": b("a")}}, {"request_range": {"key": b("a")}}], False),  # reads don't count
        # "\0" range ends are not intervals for checkIntervals (etcd's adt): no error
        (
            [
                {"request_delete_range": {"key": b("a"), "range_end": "AA=="}},
                {"request_put": {"key": b("b")}},
            ],
            False,
        ),
        # nested: then/else may put the same key; the outer level may not
        (
            [
                {
                    "request_txn": {
                        "success": [{"request_put": {"key": b("a")}}],
                        "failure": [{"request_put": {"key": b("a")}}],
                    }
                }
            ],
            False,
        ),
        (
            [
                {"request_txn": {"success": [{"request_put": {"key": b("a")}}]}},
                {"request_put": {"key": b("a")}},
            ],
            True,
        ),
        (
            [
                {"request_delete_range": {"key": b("a")}},
                {"request_txn": {"success": [{"request_put": {"key": b("a")}}]}},
            ],
            True,
        ),
        (
            [
                {"request_txn": {"success": [{"request_delete_range": {"key": b("a")}}]}},
                {"request_put": {"key": b("a")}},
            ],
            True,
        ),
    ],
)
def test_txn_duplicate_keys(ops: list[dict[str, Any]], duplicate: bool) -> None:
    m = KVMachine()
    if duplicate:
        assert err(m.prepare_txn, {"success": ops}) == (
            3,
            "etcdserver: duplicate key given in txn request",
            400,
        )
        assert err(m.prepare_txn, {"failure": ops})[1] == "etcdserver: duplicate key given in txn request"
    else:
        m.prepare_txn({"success": ops})
    # the two branches are checked separately: the same op list split over them is fine
    m.prepare_txn({"success": ops[:1], "failure": ops[1:]})


def test_txn_validation_errors() -> None:
    m = KVMachine()
    assert err(m.prepare_txn, {"success": [{}]}) == (3, "etcdserver: key not found", 400)
    assert err(m.prepare_txn, {"compare": [{"result": "EQUAL"}]})[1] == "etcdserver: key is not provided"
    assert err(m.prepare_txn, {"success": [{"request_range": {}}]})[1] == "etcdserver: key is not provided"
    too_many = [{"request_range": {"key": b(str(i))}} for i in range(129)]
    assert err(m.prepare_txn, {"success": too_many})[1] == "etcdserver: too many operations in txn request"
    m.prepare_txn({"success": too_many[:128]})


def test_txn_apply_time_errors_change_nothing() -> None:
    h = Harness()
    h.put({"key": b("a"), "value": b("1")})
    assert err(h.txn, {"success": [{"request_put": {"key": b("b"), "lease": 42}}]})[0] == 5
    assert err(h.txn, {"success": [{"request_put": {"key": b("nope"), "ignore_value": True}}]})[1] == (
        "etcdserver: key not found"
    )
    assert (
        err(
            h.txn,
            {
                "success": [
                    {"request_put": {"key": b("b")}},
                    {"request_range": {"key": b("a"), "revision": 9}},
                ]
            },
        )[0]
        == 11
    )
    # a "\0"-ended delete is not caught by checkIntervals; the put then finds no key: rolled back
    assert err(
        h.txn,
        {
            "success": [
                {"request_delete_range": {"key": b("a"), "range_end": "AA=="}},
                {"request_put": {"key": b("a"), "ignore_value": True}},
            ]
        },
    )[1] == ("etcdserver: key not found")
    assert h.m.revision == 2 and h.m.range({"key": b("a")})["count"] == "1"
    assert len(h.events) == 1


# -------------------------------------------------------------------------- compaction and watch


def test_compaction_command_and_errors() -> None:
    h = Harness()
    for i in range(5):
        h.put({"key": b("k"), "value": b(str(i))})  # 2..6
    assert h.apply(h.m.prepare_compaction({"revision": 4})) == {"revision": 6}
    assert h.m.compact_revision == 4
    assert err(h.m.range, {"key": b("k"), "revision": 2}) == (
        11,
        "etcdserver: mvcc: required revision has been compacted",
        400,
    )
    assert err(h.apply, h.m.prepare_compaction({"revision": 3}))[1] == (
        "etcdserver: mvcc: required revision has been compacted"
    )
    assert err(h.apply, h.m.prepare_compaction({"revision": 60}))[1] == (
        "etcdserver: mvcc: required revision is a future revision"
    )
    with pytest.raises(EtcdError) as exc:
        h.m.history(b"k", b"", 2)
    assert exc.value.compact_revision == 4


def test_watch_listener_and_history_replay_match_transcript() -> None:
    h = Harness()
    for _ in range(19):
        h.put({"key": b("pad"), "value": b("x")})  # up to revision 20
    h.put({"key": "dy9h", "value": "MQ=="})  # 21
    h.put({"key": "dy9h", "value": "Mg=="})  # 22
    h.put({"key": b("x/other"), "value": b("o")})  # 23
    h.delete({"key": "dy9h"})  # 24
    h.txn(
        {
            "success": [
                {"request_put": {"key": "dy9i", "value": "dA=="}},
                {"request_put": {"key": "dy9j", "value": "dA=="}},
            ]
        }
    )  # 25
    live = [(rev, evs) for rev, evs in h.events if rev >= 21]
    assert [rev for rev, _ in live] == [21, 22, 23, 24, 25]
    assert live[3][1] == [
        {
            "type": "DELETE",
            "kv": {"key": "dy9h", "mod_revision": "24"},
            "prev_kv": {
                "key": "dy9h",
                "create_revision": "21",
                "mod_revision": "22",
                "version": "2",
                "value": "Mg==",
            },
        }
    ]
    hist = h.m.history(b"w/", b"w0", 21)
    flat = [ev for _, evs in hist for ev in evs]
    assert [rev for rev, _ in hist] == [21, 22, 24, 25]
    assert flat == [
        {
            "kv": {
                "key": "dy9h",
                "create_revision": "21",
                "mod_revision": "21",
                "version": "1",
                "value": "MQ==",
            }
        },
        {
            "kv": {
                "key": "dy9h",
                "create_revision": "21",
                "mod_revision": "22",
                "version": "2",
                "value": "Mg==",
            },
            "prev_kv": {
                "key": "dy9h",
                "create_revision": "21",
                "mod_revision": "21",
                "version": "1",
                "value": "MQ==",
            },
        },
        {
            "type": "DELETE",
            "kv": {"key": "dy9h", "mod_revision": "24"},
            "prev_kv": {
                "key": "dy9h",
                "create_revision": "21",
                "mod_revision": "22",
                "version": "2",
                "value": "Mg==",
            },
        },
        {
            "kv": {
                "key": "dy9i",
                "create_revision": "25",
                "mod_revision": "25",
                "version": "1",
                "value": "dA==",
            }
        },
        {
            "kv": {
                "key": "dy9j",
                "create_revision": "25",
                "mod_revision": "25",
                "version": "1",
                "value": "dA==",
            }
        },
    ]
    assert [evs for rev, evs in live if rev != 23] == [evs for _, evs in hist]


def test_request_too_large() -> None:
    m = KVMachine(max_request_bytes=1000)
    assert err(m.prepare_put, {"key": "aw==", "value": b("x" * 2000)}) == (
        3,
        "etcdserver: request is too large",
        400,
    )


# ------------------------------------------------------------------------ snapshots and determinism


def test_snapshot_restore_round_trip_gives_identical_results() -> None:
    h = Harness()
    lease = int(h.apply(h.m.prepare_lease_grant({"TTL": 60}, random.Random(3)))["ID"])
    h.put({"key": b("a"), "value": b("1"), "lease": lease})
    h.put({"key": b("b"), "value": b("2")})
    h.delete({"key": b("b")})
    h.put({"key": b("c"), "value": b("3")})
    h.apply(h.m.prepare_compaction({"revision": 3}))
    snap = h.m.snapshot()
    other = KVMachine()
    other.restore(snap)
    assert other.snapshot() == snap
    for body in ({"key": "AA==", "range_end": "AA=="}, {"key": b("a"), "revision": 3}):
        assert other.range(body) == h.m.range(body)
    assert other.history(b"\0", b"\0", 3) == h.m.history(b"\0", b"\0", 3)
    cmd = h.m.lease_expire_command(lease)
    assert other.apply(cmd, 99) == h.m.apply(cmd, 99)
    assert other.snapshot() == h.m.snapshot()
    with pytest.raises(ValueError):
        other.restore(json.dumps({"v": 99}).encode())


KEYS = st.sampled_from([b"a", b"b", b"c", b"d", b"a/1", b"a/2"])


def _op(draw_kind: str, key: bytes, end: bytes, value: bytes) -> dict[str, Any]:
    if draw_kind == "put":
        return {"request_put": {"key": codec.b64(key), "value": codec.b64(value)}}
    if draw_kind == "del":
        return {"request_delete_range": {"key": codec.b64(key), "range_end": codec.b64(end)}}
    return {"request_range": {"key": codec.b64(key), "range_end": codec.b64(end)}}


@st.composite
def commands(draw: st.DrawFn) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["put", "del", "txn", "compact", "grant", "revoke", "leaseput"]))
        key = draw(KEYS)
        end = draw(st.sampled_from([b"", b"b", b"d", b"\0"]))
        value = draw(st.binary(max_size=4))
        if kind == "put":
            out.append(("put", {"key": codec.b64(key), "value": codec.b64(value)}))
        elif kind == "del":
            out.append(("del", {"key": codec.b64(key), "range_end": codec.b64(end), "prev_kv": True}))
        elif kind == "txn":
            ops = [
                _op(
                    draw(st.sampled_from(["put", "del", "range"])),
                    draw(KEYS),
                    draw(st.sampled_from([b"", b"c"])),
                    draw(st.binary(max_size=3)),
                )
                for _ in range(draw(st.integers(0, 3)))
            ]
            c = {
                "key": codec.b64(key),
                "result": draw(st.integers(0, 3)),
                "target": draw(st.integers(0, 4)),
                "version": draw(st.integers(0, 3)),
            }
            out.append(("txn", {"compare": [c], "success": ops, "failure": ops[::-1]}))
        elif kind == "compact":
            out.append(("compact", {"revision": draw(st.integers(1, 30))}))
        elif kind == "grant":
            out.append(("grant", {"TTL": 10, "ID": draw(st.integers(1, 3))}))
        elif kind == "revoke":
            out.append(("revoke", {"ID": draw(st.integers(1, 3))}))
        else:
            out.append(
                ("put", {"key": codec.b64(key), "value": codec.b64(value), "lease": draw(st.integers(1, 3))})
            )
    return out


def _prepare(m: KVMachine, kind: str, body: Any) -> bytes | None:
    try:
        if kind == "put":
            return m.prepare_put(body)
        if kind == "del":
            return m.prepare_deleterange(body)
        if kind == "txn":
            return m.prepare_txn(body)
        if kind == "compact":
            return m.prepare_compaction(body)
        if kind == "grant":
            return m.prepare_lease_grant(body, random.Random(0))
        return m.prepare_lease_revoke(body)
    except EtcdError:
        return None


def _results(m: KVMachine, cmds: list[bytes], start: int = 0) -> list[Any]:
    out = []
    for i, cmd in enumerate(cmds[start:], start + 1):
        r = m.apply(cmd, i)
        out.append({k: (v.body() if isinstance(v, EtcdError) else v) for k, v in r.items()})
    return out


@settings(max_examples=40, deadline=None)
@given(commands(), st.integers(0, 25))
def test_property_same_log_same_state_and_snapshot_replay(ops: list[tuple[str, Any]], cut: int) -> None:
    builder = KVMachine()
    cmds = [c for c in (_prepare(builder, kind, body) for kind, body in ops) if c is not None]
    a, b_ = KVMachine(), KVMachine()
    ra, rb = _results(a, cmds), _results(b_, cmds)
    assert ra == rb
    assert a.snapshot() == b_.snapshot()
    # snapshot at a random point, restore into a fresh machine, replay the rest
    cut = min(cut, len(cmds))
    c = KVMachine()
    _results(c, cmds[:cut])
    d = KVMachine()
    d.restore(c.snapshot())
    rd = _results(d, cmds, cut)
    assert rd == ra[cut:]
    assert d.snapshot().replace(b'"applied_index":%d' % d.applied_index, b"") == a.snapshot().replace(
        b'"applied_index":%d' % a.applied_index, b""
    )
    everything = {"key": "AA==", "range_end": "AA=="}
    assert d.range(everything) == a.range(everything)
    # revisions only move forward, by at most one per command
    revs = [r["revision"] for r in ra]
    assert all(0 <= y - x <= 1 for x, y in zip([1, *revs], revs, strict=False))


def test_request_size_limit_counts_the_decoded_request_not_its_base64() -> None:
    """etcd's --max-request-bytes applies to the protobuf request: a 1.4 MB value (1.87 MB of
    base64 text) is accepted at the default 1.5 MiB limit, a 1.6 MB one is refused."""
    import base64 as _b64

    from examples.kvstore.errors import EtcdError
    from examples.kvstore.machine import KVMachine

    m = KVMachine()

    def body(n: int) -> dict[str, str]:
        return {"key": _b64.b64encode(b"k").decode(), "value": _b64.b64encode(b"v" * n).decode()}

    m.prepare_put(body(1_400_000))
    m.prepare_put(body(1_572_840))  # the largest value etcd 3.4.23 accepts with a 1-byte key
    with pytest.raises(EtcdError):
        m.prepare_put(body(1_572_841))
    with pytest.raises(EtcdError) as err:
        m.prepare_put(body(1_600_000))
    assert err.value.grpc_code == 3 and "request is too large" in err.value.message


# -- read-only txns: served locally (etcd's isTxnReadonly), same answer as through the log --------

_READ_KEYS = ["a", "b", "c"]
_range_ops = st.builds(
    lambda key, end, rev, serial, count: {
        "request_range": {
            "key": b(key),
            **({"range_end": b(end)} if end else {}),
            **({"revision": str(rev)} if rev else {}),
            **({"serializable": True} if serial else {}),
            **({"count_only": True} if count else {}),
        }
    },
    st.sampled_from(_READ_KEYS),
    st.sampled_from(["", "c", "z"]),
    st.integers(0, 12),
    st.booleans(),
    st.booleans(),
)
_compares = st.builds(
    lambda key, result, rev: cmp(key, result, "MOD", mod_revision=str(rev)),
    st.sampled_from(_READ_KEYS),
    st.sampled_from(["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]),
    st.integers(0, 10),
)


@settings(max_examples=150, deadline=None)
@given(
    compares=st.lists(_compares, max_size=3),
    success=st.lists(_range_ops, max_size=3),
    failure=st.lists(_range_ops, max_size=3),
    compact=st.integers(0, 6),
)
def test_read_only_txn_served_locally_answers_as_through_the_log(
    compares: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]], compact: int
) -> None:
    """A txn of ranges only gives the same answer (or error) served from local state as applied
    from the log, and serving it changes nothing: no revision, no event."""
    h = Harness()
    for i in range(8):
        h.put({"key": b(_READ_KEYS[i % 3]), "value": b(str(i))})
    if compact:
        h.apply(h.m.prepare_compaction({"revision": str(compact)}))
    body = {"compare": compares, "success": success, "failure": failure}
    req = h.m.parse_txn(body)
    assert txn_is_readonly(req)
    events, revision = len(h.events), h.m.revision
    try:
        local: Any = h.m.serve_read_txn(req)
    except EtcdError as e:
        local = ("error", e.body())
    assert (len(h.events), h.m.revision) == (events, revision)
    try:
        logged: Any = h.txn(body)
    except EtcdError as e:
        logged = ("error", e.body())
    assert local == logged


def test_txn_with_a_write_or_nested_txn_is_not_read_only() -> None:
    rng = {"request_range": {"key": b("a")}}
    assert txn_is_readonly({}) and txn_is_readonly({"success": [rng], "failure": [rng]})
    assert not txn_is_readonly({"success": [rng, {"request_put": {"key": b"a"}}]})
    assert not txn_is_readonly({"failure": [{"request_delete_range": {"key": b"a"}}]})
    assert not txn_is_readonly({"success": [{"request_txn": {"success": [rng]}}]})  # as etcd 3.4
    assert not txn_is_readonly({"success": [{}]})
    assert txn_is_serializable({}) and not txn_is_serializable({"success": [rng]})
    assert txn_is_serializable({"success": [{"request_range": {"key": b"a", "serializable": True}}]})
    with pytest.raises(ValueError):
        KVMachine().serve_read_txn({"success": [{"request_put": {"key": b"a", "value": b"1"}}]})


def test_snapshot_writer_is_a_point_in_time_view_encoded_later() -> None:
    """The loop only captures; the bytes written later (in a worker thread) are the state at
    capture time, whatever was applied, deleted or compacted in between."""
    import io

    h = Harness()
    for i in range(30):
        h.put({"key": b(f"k{i % 7}"), "value": b(f"v{i}")})
    expected = h.m.snapshot()
    writer = h.m.snapshot_writer()
    for i in range(30):
        h.put({"key": b(f"k{i % 5}"), "value": b(f"w{i}")})
    h.delete({"key": b("k1")})
    h.apply(h.m.prepare_compaction({"revision": "40"}))
    out = io.BytesIO()
    writer.write(out)
    writer.release()
    assert out.getvalue() == expected != h.m.snapshot()
    other = KVMachine()
    other.restore(out.getvalue())
    assert other.snapshot() == expected


def test_snapshot_is_encoded_in_pieces_of_whole_keys_equal_to_one_json_encoding() -> None:
    """The streamed snapshot is byte for byte the compact JSON of the whole image
    (docs/kvstore-data.md), cut only between keys, in pieces of about SNAPSHOT_CHUNK_BYTES."""
    from examples.kvstore.machine import SNAPSHOT_CHUNK_BYTES, SNAPSHOT_VERSION
    from examples.kvstore.mvcc import MVCC

    h = Harness()
    lease = h.apply(h.m.prepare_lease_grant({"TTL": 60, "ID": 7}, random.Random(0)))
    assert lease
    for i in range(600):
        h.put({"key": b(f"key/{i % 250:04d}"), "value": b("v" * (i % 400)), "lease": 7 if i % 9 == 0 else 0})
    h.delete({"key": b("key/0003")})
    writer = h.m.snapshot_writer()
    image = {
        "v": SNAPSHOT_VERSION,
        "applied_index": h.m.applied_index,
        "mvcc": MVCC.dump_view(h.m.store.view()),
        "leases": [[7, 60]],
    }
    pieces = list(writer.chunks())
    whole = json.dumps(image, separators=(",", ":")).encode()
    assert b"".join(pieces) == whole == h.m.snapshot()
    assert len(pieces) >= 3
    # Every piece but the last ends at a key boundary and holds at least SNAPSHOT_CHUNK_BYTES;
    # no piece is longer than that plus one key's record list.
    largest_key = max(len(json.dumps(k, separators=(",", ":"))) for k in image["mvcc"]["keys"])
    for piece in pieces[:-1]:
        assert (
            piece.endswith(b"]]")
            and SNAPSHOT_CHUNK_BYTES <= len(piece) <= SNAPSHOT_CHUNK_BYTES + largest_key + 1
        )
    other = KVMachine()
    other.restore(whole)
    assert other.snapshot() == whole


def test_writing_a_snapshot_holds_no_copy_of_it_in_memory() -> None:
    """A 6 MB snapshot is written with well under a tenth of its size in Python memory
    (one whole-image encoding needed about four times its size: the tree, the str, the bytes)."""
    import tracemalloc

    h = Harness()
    for version in range(3):
        for i in range(8000):
            h.put({"key": b(f"key/{i:06d}"), "value": b(f"{version}" * 180)})
    writer = h.m.snapshot_writer()
    total = 0
    tracemalloc.start()
    try:
        for piece in writer.chunks():
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 6_000_000
    assert peak < total / 10, (peak, total)

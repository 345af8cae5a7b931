"""The etcd v3 JSON gateway compatibility suite, run against real etcd AND against examples.kvstore.

Every test runs once per backend (`etcd`, `raftlib`) on a 3-member cluster started by
tests/kvcluster.py with the same flags.  The etcd run proves that the test describes etcd 3.4 (the
contract in etcd-gateway-api.md, section numbers below refer to it), not only our own store.  The
client is the unmodified `etcd3gw` from PyPI; what it cannot express goes through raw HTTP with
`requests`.  Revision numbers and IDs differ between runs and systems, so tests compare them
relative to values read in the same test.  One cluster per backend is shared by the whole module;
each test works under its own key prefix (the `ns` fixture), and leaves no lease behind that could
expire into another test's revision count.
"""

from __future__ import annotations

import base64
import json
import queue
import random
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

etcd3gw = pytest.importorskip("etcd3gw", reason="the compatibility suite needs etcd3gw (pip install etcd3gw)")
requests = pytest.importorskip("requests", reason="the compatibility suite needs requests")

from etcd3gw import exceptions as gw_exc  # noqa: E402
from etcd3gw.lease import Lease  # noqa: E402
from etcd3gw.watch import Watcher  # noqa: E402
from kvcluster import BACKENDS, KVCluster, backend_unavailable_reason, prefix_end  # noqa: E402

TIMEOUT = 10.0
VERSION_RE = re.compile(r"3\.4\.\d+")
UINT_RE = re.compile(r"[0-9]+")


def b64(x: str | bytes) -> str:
    if isinstance(x, str):
        x = x.encode("latin-1")
    return base64.b64encode(x).decode()


def unb64(s: str) -> bytes:
    return base64.b64decode(s)


class Backend:
    """One running cluster plus an etcd3gw client and a requests session per member."""

    def __init__(self, cluster: KVCluster) -> None:
        self.cluster = cluster
        self.name = cluster.backend
        self.clients = [
            etcd3gw.client(host="127.0.0.1", port=m.client_port, timeout=TIMEOUT) for m in cluster.members
        ]
        self.session = requests.Session()

    @property
    def c(self) -> Any:
        """The etcd3gw client of member 0."""
        return self.clients[0]

    def url(self, path: str, member: int = 0) -> str:
        return self.cluster.members[member].client_url + path

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        member: int = 0,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
        **kw: Any,
    ) -> Any:
        """Raw POST: `body` is sent as JSON (Content-Type application/json), `data` as is."""
        if body is not None:
            return self.session.post(
                self.url(path, member), json=body, headers=headers, timeout=timeout, **kw
            )
        return self.session.post(self.url(path, member), data=data, headers=headers, timeout=timeout, **kw)

    def ok(self, path: str, body: Any, member: int = 0) -> dict[str, Any]:
        r = self.post(path, body, member=member)
        assert r.status_code == 200, f"{path} {body}: {r.status_code} {r.text}"
        assert r.headers["Content-Type"].startswith("application/json"), r.headers
        out: dict[str, Any] = r.json()
        return out

    def revision(self, member: int = 0) -> int:
        """The store revision now (a linearizable read of a key that never exists)."""
        return int(self.ok("/v3/kv/range", {"key": b64("/compat-no-such-key")}, member)["header"]["revision"])

    def range1(self, key: str, member: int = 0, **extra: Any) -> dict[str, Any]:
        return self.ok("/v3/kv/range", {"key": b64(key), **extra}, member)

    def member_ids(self) -> list[str]:
        ids = []
        for i in range(len(self.cluster.members)):
            ids.append(self.ok("/v3/maintenance/status", {}, i)["header"]["member_id"])
        return ids


@pytest.fixture(scope="module", params=BACKENDS)
def kv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    reason = backend_unavailable_reason(request.param)
    if reason:
        pytest.skip(reason)
    cluster = KVCluster(request.param, tmp_path_factory.mktemp(f"compat-{request.param}"))
    cluster.start(timeout=30)
    try:
        yield Backend(cluster)
    finally:
        cluster.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own (the test name without the backend parameter)."""
    return f"/compat/{request.node.originalname}/"


def assert_error(
    r: Any, status: int, code: int, message: str | None = None, pattern: str | None = None
) -> None:
    """A gateway error (§5): `{"error": m, "message": m, "code": <int>}` as application/json."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text!r}"
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "message", "code"}, body
    assert body["error"] == body["message"], body
    assert type(body["code"]) is int and body["code"] == code, body
    if message is not None:
        assert body["error"] == message, body
    if pattern is not None:
        assert re.fullmatch(pattern, body["error"]), body


def assert_header(h: dict[str, Any], *, revision: bool = True) -> None:
    """§1 response header: cluster_id, member_id, revision, raft_term, all decimal strings."""
    want = {"cluster_id", "member_id", "raft_term"} | ({"revision"} if revision else set())
    assert set(h) == want, h
    for k, v in h.items():
        assert isinstance(v, str) and UINT_RE.fullmatch(v), (k, v)


class EventSink:
    """An etcd3gw Watcher whose callback puts events on a queue."""

    def __init__(self, client: Any, key: str, **kw: Any) -> None:
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self.watcher = Watcher(client, key, self.q.put, **kw)

    def take(self, n: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                out.append(self.q.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {n} events: {out}") from None
        return out

    def assert_quiet(self, seconds: float = 0.5) -> None:
        time.sleep(seconds)
        assert self.q.empty(), list(self.q.queue)

    def stop(self) -> None:
        self.watcher.stop()


def while_putting(kv: Backend, key: str, value: str, call: Any) -> Any:
    """Run a blocking watch call while putting key=value every 0.3 s until it returns.

    A *_once watch returns only after its first event, so the write must come after the watch is
    registered; repeating it makes the test independent of how long registration takes.
    """
    stop = threading.Event()

    def writer() -> None:
        while not stop.wait(0.3):
            kv.clients[1].put(key, value)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        return call()
    finally:
        stop.set()
        t.join()


# ============================================================== §1 transport, discovery, routing


def test_version_shape_and_api_discovery(kv: Backend) -> None:
    r = kv.session.get(kv.url("/version"), timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"etcdserver", "etcdcluster"}, body
    assert VERSION_RE.fullmatch(body["etcdserver"]), body
    assert re.fullmatch(r"3\.4\.\d+", body["etcdcluster"]), body
    assert kv.c.api_path == "/v3/"  # etcd3gw's discovery picked /v3/


def test_v3beta_alias_and_v3alpha_gone(kv: Backend, ns: str) -> None:
    kv.c.put(ns + "k", "v")
    body = kv.ok("/v3beta/kv/range", {"key": b64(ns + "k")})
    assert unb64(body["kvs"][0]["value"]) == b"v"
    r = kv.post("/v3alpha/kv/range", {"key": b64(ns + "k")})
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.strip() == "404 page not found"


def test_unknown_path_is_404_text_plain(kv: Backend) -> None:
    r = kv.post("/v3/kv/nothing", {})
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.strip() == "Not Found"


def test_wrong_method_is_405_text_plain(kv: Backend) -> None:
    r = kv.session.get(kv.url("/v3/kv/range"), timeout=TIMEOUT)
    assert r.status_code == 405
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.strip() == "Method Not Allowed"


def test_put_method_on_a_post_route_is_405(kv: Backend) -> None:
    r = kv.session.put(kv.url("/v3/kv/range"), timeout=TIMEOUT)
    assert r.status_code == 405 and r.text.strip() == "Method Not Allowed"


def test_cors_headers_options_and_health(kv: Backend, ns: str) -> None:
    r = kv.session.options(kv.url("/v3/kv/range"), timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    ok = kv.post("/v3/kv/put", {"key": b64(ns + "k"), "value": b64("v")})
    err = kv.post("/v3/kv/put", {"value": b64("v")})
    for resp in (ok, err):
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    r = kv.session.get(kv.url("/health"), timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert json.loads(r.text) == {"health": "true"}


def test_content_type_is_not_required(kv: Backend, ns: str) -> None:
    # etcd3gw sends /v3/kv/txn with no Content-Type; etcd ignores the header altogether.
    k = b64(ns + "k")
    r = kv.post(
        "/v3/kv/put", data=json.dumps({"key": k, "value": b64("1")}), headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 200, r.text
    r = kv.post("/v3/kv/txn", data=json.dumps({"success": [{"request_range": {"key": k}}]}))
    assert r.status_code == 200, r.text
    assert unb64(r.json()["responses"][0]["response_range"]["kvs"][0]["value"]) == b"1"


def test_header_fields_and_int64_as_strings(kv: Backend, ns: str) -> None:
    ids = kv.member_ids()
    assert len(set(ids)) == 3
    for i in range(3):
        put = kv.ok("/v3/kv/put", {"key": b64(ns + "k"), "value": b64(f"v{i}")}, member=i)
        assert_header(put["header"])
        assert put["header"]["member_id"] == ids[i]  # the member that answered
        st = kv.ok("/v3/maintenance/status", {}, member=i)
        assert put["header"]["cluster_id"] == st["header"]["cluster_id"]
        assert put["header"]["raft_term"] == st["raftTerm"]
    body = kv.range1(ns + "k")
    assert_header(body["header"])
    assert body["count"] == "1"
    kv_ = body["kvs"][0]
    assert set(kv_) == {"key", "create_revision", "mod_revision", "version", "value"}
    for f in ("create_revision", "mod_revision", "version"):
        assert isinstance(kv_[f], str) and UINT_RE.fullmatch(kv_[f])
    assert kv_["version"] == "3"
    assert int(kv_["mod_revision"]) == int(body["header"]["revision"])
    assert int(kv_["create_revision"]) == int(kv_["mod_revision"]) - 2
    # every member reports the same cluster_id
    assert len({kv.range1(ns + "k", member=i)["header"]["cluster_id"] for i in range(3)}) == 1


# ================================================================== §2/§3.1 KV through etcd3gw


def test_put_get_with_metadata(kv: Backend, ns: str) -> None:
    c = kv.c
    assert c.put(ns + "foo", "bar") is True
    assert c.get(ns + "foo") == [b"bar"]
    [(value, md)] = c.get(ns + "foo", metadata=True)
    assert value == b"bar"
    assert md["key"] == (ns + "foo").encode()
    assert md["version"] == "1"
    assert md["create_revision"] == md["mod_revision"]
    assert "lease" not in md
    assert c.put(ns + "foo", b"bar2") is True
    [(value, md2)] = c.get(ns + "foo", metadata=True)
    assert value == b"bar2"
    assert md2["version"] == "2"
    assert md2["create_revision"] == md["create_revision"]
    assert int(md2["mod_revision"]) == int(md["mod_revision"]) + 1
    # bytes that are not UTF-8 survive the round trip
    assert c.put(ns + "bin", bytes(range(256))) is True
    assert c.get(ns + "bin") == [bytes(range(256))]


def test_put_prev_kv(kv: Backend, ns: str) -> None:
    k = b64(ns + "k")
    first = kv.ok("/v3/kv/put", {"key": k, "value": b64("a"), "prev_kv": True})
    assert "prev_kv" not in first  # nothing before
    second = kv.ok("/v3/kv/put", {"key": k, "value": b64("b"), "prev_kv": True})
    pk = second["prev_kv"]
    assert pk["key"] == k and unb64(pk["value"]) == b"a" and pk["version"] == "1"
    assert pk["mod_revision"] == first["header"]["revision"]


def test_missing_key_has_no_kvs_and_no_count(kv: Backend, ns: str) -> None:
    assert kv.c.get(ns + "nope") == []
    body = kv.range1(ns + "nope")
    assert set(body) == {"header"}, body
    assert_header(body["header"])


def test_empty_value_is_omitted(kv: Backend, ns: str) -> None:
    assert kv.c.put(ns + "empty", "") is True
    assert kv.c.get(ns + "empty") == [b""]
    body = kv.range1(ns + "empty")
    assert set(body["kvs"][0]) == {"key", "create_revision", "mod_revision", "version"}, body
    # a put with no value at all also stores the empty value
    kv.ok("/v3/kv/put", {"key": b64(ns + "novalue")})
    assert "value" not in kv.range1(ns + "novalue")["kvs"][0]


def test_delete_and_delete_of_nothing(kv: Backend, ns: str) -> None:
    c = kv.c
    c.put(ns + "k", "v")
    assert c.delete(ns + "k") is True
    assert c.get(ns + "k") == []
    assert c.delete(ns + "k") is False
    before = kv.revision()
    body = kv.ok("/v3/kv/deleterange", {"key": b64(ns + "k")})
    assert set(body) == {"header"}, body  # no "deleted": etcd3gw's delete() relies on it
    assert int(body["header"]["revision"]) == before


def test_deleterange_prefix_with_prev_kv(kv: Backend, ns: str) -> None:
    for k in ("a/1", "a/2", "a/3", "b"):
        kv.c.put(ns + k, "v-" + k)
    before = kv.revision()
    body = kv.ok(
        "/v3/kv/deleterange",
        {"key": b64(ns + "a/"), "range_end": b64(prefix_end(ns + "a/")), "prev_kv": True},
    )
    assert body["deleted"] == "3" and int(body["header"]["revision"]) == before + 1
    assert [unb64(x["key"]) for x in body["prev_kvs"]] == [(ns + k).encode() for k in ("a/1", "a/2", "a/3")]
    assert [unb64(x["value"]) for x in body["prev_kvs"]] == [b"v-a/1", b"v-a/2", b"v-a/3"]
    assert kv.c.get(ns + "b") == [b"v-b"]


def test_get_prefix_sorting_and_delete_prefix(kv: Backend, ns: str) -> None:
    c = kv.c
    for k in ("p/b", "p/a", "p/c", "q", "p"):
        c.put(ns + k, "v-" + k)
    got = c.get_prefix(ns + "p/")
    assert [md["key"] for _, md in got] == [(ns + k).encode() for k in ("p/a", "p/b", "p/c")]
    assert [v for v, _ in got] == [b"v-p/a", b"v-p/b", b"v-p/c"]
    desc = c.get_prefix(ns + "p/", sort_order="descend")
    assert [v for v, _ in desc] == [b"v-p/c", b"v-p/b", b"v-p/a"]
    by_mod = c.get_prefix(ns + "p/", sort_order="ascend", sort_target="mod")
    assert [v for v, _ in by_mod] == [b"v-p/b", b"v-p/a", b"v-p/c"]
    all_keys = {md["key"] for _, md in c.get_all()}
    assert {(ns + k).encode() for k in ("p/a", "p/b", "p/c", "q", "p")} <= all_keys
    assert c.delete_prefix(ns + "p/") is True
    assert c.get_prefix(ns + "p/") == []
    assert c.get(ns + "q") == [b"v-q"] and c.get(ns + "p") == [b"v-p"]
    assert c.delete_prefix(ns + "p/") is False


def test_range_limit_count_keys_only_and_sort(kv: Backend, ns: str) -> None:
    for k in ("a/1", "a/2", "a/3", "b/1"):
        kv.c.put(ns + k, "v-" + k)
    key, end = b64(ns + "a/"), b64(prefix_end(ns + "a/"))
    body = kv.ok("/v3/kv/range", {"key": key, "range_end": end, "limit": 2})
    assert [unb64(x["key"]) for x in body["kvs"]] == [(ns + "a/1").encode(), (ns + "a/2").encode()]
    assert body["more"] is True and body["count"] == "3"
    body = kv.ok("/v3/kv/range", {"key": key, "range_end": end})
    assert "more" not in body and body["count"] == "3"
    body = kv.ok("/v3/kv/range", {"key": key, "range_end": end, "count_only": True})
    assert set(body) == {"header", "count"} and body["count"] == "3"
    body = kv.ok("/v3/kv/range", {"key": key, "range_end": end, "keys_only": True, "sort_order": 2})
    assert [unb64(x["key"])[-1:] for x in body["kvs"]] == [b"3", b"2", b"1"]
    assert all("value" not in x for x in body["kvs"])
    # enums by name, int64 as strings
    body = kv.ok(
        "/v3/kv/range",
        {"key": key, "range_end": end, "sort_order": "DESCEND", "sort_target": "MOD", "limit": "1"},
    )
    assert [unb64(x["key"]) for x in body["kvs"]] == [(ns + "a/3").encode()]
    # range_end "\0": every key >= key
    body = kv.ok("/v3/kv/range", {"key": b64(ns + "b/"), "range_end": b64("\0"), "keys_only": True})
    assert (ns + "b/1").encode() in [unb64(x["key"]) for x in body["kvs"]]
    assert (ns + "a/1").encode() not in [unb64(x["key"]) for x in body["kvs"]]


def test_range_at_historical_revision(kv: Backend, ns: str) -> None:
    kv.c.put(ns + "h", "1")
    r1 = kv.revision()
    kv.c.put(ns + "h", "2")
    kv.c.put(ns + "h2", "x")
    body = kv.range1(ns + "h", revision=r1)
    assert unb64(body["kvs"][0]["value"]) == b"1"
    assert int(body["header"]["revision"]) == r1 + 2  # the header says "now", not r1
    body = kv.range1(ns + "h2", revision=str(r1))
    assert set(body) == {"header"}
    assert kv.c.get(ns + "h", revision=r1) == [b"1"]


def test_future_revision_is_out_of_range(kv: Backend, ns: str) -> None:
    r = kv.post("/v3/kv/range", {"key": b64(ns + "k"), "revision": kv.revision() + 1000})
    assert_error(r, 400, 11, "etcdserver: mvcc: required revision is a future revision")


# ================================================================================ §3.3 txn


def test_replace_cas(kv: Backend, ns: str) -> None:
    c = kv.c
    c.put(ns + "cas", "v1")
    assert c.replace(ns + "cas", "v1", "v2") is True
    assert c.get(ns + "cas") == [b"v2"]
    assert c.replace(ns + "cas", "v1", "v3") is False
    assert c.get(ns + "cas") == [b"v2"]
    assert c.replace(ns + "absent", "v1", "v3") is False
    # raw: a failed compare with an empty failure branch has neither succeeded nor responses
    before = kv.revision()
    body = kv.ok(
        "/v3/kv/txn",
        {
            "compare": [{"key": b64(ns + "cas"), "result": "EQUAL", "target": "VALUE", "value": b64("v1")}],
            "success": [{"request_put": {"key": b64(ns + "cas"), "value": b64("v3")}}],
            "failure": [],
        },
    )
    assert set(body) == {"header"}, body
    assert int(body["header"]["revision"]) == before


def test_create_if_absent(kv: Backend, ns: str) -> None:
    c = kv.c
    assert c.create(ns + "new", "x") is True
    assert c.create(ns + "new", "y") is False
    assert c.get(ns + "new") == [b"x"]


def test_txn_success_and_failure_shapes(kv: Backend, ns: str) -> None:
    k = b64(ns + "cas")
    kv.c.put(ns + "cas", "v2")
    # failure branch with request_range (etcd3gw Lock.acquire's shape)
    body = kv.ok(
        "/v3/kv/txn",
        {
            "compare": [{"key": k, "result": "EQUAL", "target": "VALUE", "value": b64("v1")}],
            "success": [{"request_put": {"key": k, "value": b64("v3")}}],
            "failure": [{"request_range": {"key": k}}],
        },
    )
    assert "succeeded" not in body
    [resp] = body["responses"]
    rr = resp["response_range"]
    assert rr["header"] == {"revision": body["header"]["revision"]}
    assert unb64(rr["kvs"][0]["value"]) == b"v2" and rr["count"] == "1"
    # success with numeric enums and several ops
    mod = kv.range1(ns + "cas")["kvs"][0]["mod_revision"]
    kv.c.put(ns + "gone", "x")
    body = kv.ok(
        "/v3/kv/txn",
        {
            "compare": [{"key": k, "result": 0, "target": 2, "mod_revision": mod}],
            "success": [{"request_delete_range": {"key": b64(ns + "gone")}}, {"request_range": {"key": k}}],
        },
    )
    assert body["succeeded"] is True
    rev = body["header"]["revision"]
    dr, rr = body["responses"][0]["response_delete_range"], body["responses"][1]["response_range"]
    assert dr == {"header": {"revision": rev}, "deleted": "1"}
    assert rr["header"] == {"revision": rev}
    # a succeeded txn whose only op deletes nothing keeps the revision
    body = kv.ok("/v3/kv/txn", {"success": [{"request_delete_range": {"key": b64(ns + "gone")}}]})
    assert body["succeeded"] is True and body["header"]["revision"] == rev
    assert body["responses"] == [{"response_delete_range": {"header": {"revision": rev}}}]
    # an empty txn: compare vacuously true
    body = kv.ok("/v3/kv/txn", {})
    assert body.get("succeeded") is True and "responses" not in body


def test_txn_compare_targets(kv: Backend, ns: str) -> None:
    k = b64(ns + "t")
    kv.c.put(ns + "t", "5")
    kv.c.put(ns + "t", "6")
    md = kv.range1(ns + "t")["kvs"][0]

    def check(cmp: dict[str, Any]) -> bool:
        body = kv.ok("/v3/kv/txn", {"compare": [{"key": k, **cmp}]})
        return bool(body.get("succeeded", False))

    assert check({"result": "EQUAL", "target": "VERSION", "version": 2})
    assert check({"result": "GREATER", "target": "VERSION", "version": 1})
    assert check({"result": "LESS", "target": "VERSION", "version": "3"})
    assert check({"result": "NOT_EQUAL", "target": "VALUE", "value": b64("5")})
    assert check({"result": "EQUAL", "target": "CREATE", "create_revision": md["create_revision"]})
    assert check({"result": "EQUAL", "target": "MOD", "mod_revision": int(md["mod_revision"])})
    assert check({"result": "EQUAL", "target": "LEASE", "lease": 0})
    assert not check({"result": "GREATER", "target": "MOD", "mod_revision": md["mod_revision"]})
    assert not check({"result": "EQUAL", "target": "VALUE", "value": b64("5")})
    # a missing key compares as version 0
    body = kv.ok("/v3/kv/txn", {"compare": [{"key": b64(ns + "missing"), "target": "VERSION", "version": 0}]})
    assert body["succeeded"] is True


def test_txn_ops_see_earlier_writes_and_nested_txn(kv: Backend, ns: str) -> None:
    t, u = b64(ns + "t"), b64(ns + "u")
    before = kv.revision()
    nested = {"success": [{"request_put": {"key": u, "value": b64("2")}}, {"request_range": {"key": u}}]}
    body = kv.ok(
        "/v3/kv/txn",
        {
            "success": [
                {"request_put": {"key": t, "value": b64("1")}},
                {"request_range": {"key": t}},
                {"request_txn": nested},
            ]
        },
    )
    assert body["succeeded"] is True
    rev = before + 1  # one txn, one revision
    assert int(body["header"]["revision"]) == rev
    put, rng, sub = (r for r in body["responses"])
    assert put == {"response_put": {"header": {"revision": str(rev)}}}
    kvs = rng["response_range"]["kvs"]
    assert unb64(kvs[0]["value"]) == b"1" and kvs[0]["mod_revision"] == str(rev)
    inner = sub["response_txn"]
    assert inner["header"] == {}  # a nested txn's header is empty
    assert inner["succeeded"] is True
    assert inner["responses"][0] == {"response_put": {"header": {"revision": str(rev)}}}
    assert unb64(inner["responses"][1]["response_range"]["kvs"][0]["value"]) == b"2"
    assert kv.c.get(ns + "u", metadata=True)[0][1]["mod_revision"] == str(rev)


def test_txn_nested_compares_see_the_state_before_the_txn(kv: Backend, ns: str) -> None:
    # Observed on etcd 3.4.23: ops see earlier writes of the same txn, but the compares of a
    # nested txn are evaluated up front, against the store as it was before the outer txn.
    t, u = b64(ns + "t"), b64(ns + "u")
    kv.c.put(ns + "t", "1")
    nested = {
        "compare": [{"key": t, "result": "EQUAL", "target": "VALUE", "value": b64("1")}],
        "success": [{"request_range": {"key": t}}],
        "failure": [{"request_range": {"key": u}}],
    }
    body = kv.ok(
        "/v3/kv/txn", {"success": [{"request_put": {"key": t, "value": b64("3")}}, {"request_txn": nested}]}
    )
    inner = body["responses"][1]["response_txn"]
    assert inner["succeeded"] is True  # t was "1" before the txn, though the put made it "3"
    assert unb64(inner["responses"][0]["response_range"]["kvs"][0]["value"]) == b"3"
    # and the other way round: the compare fails although the earlier put made it true
    nested["compare"][0]["value"] = b64("4")
    body = kv.ok(
        "/v3/kv/txn", {"success": [{"request_put": {"key": t, "value": b64("4")}}, {"request_txn": nested}]}
    )
    inner = body["responses"][1]["response_txn"]
    assert "succeeded" not in inner
    assert inner["responses"] == [{"response_range": {"header": {"revision": body["header"]["revision"]}}}]


def test_txn_duplicate_key_is_rejected(kv: Backend, ns: str) -> None:
    d = b64(ns + "d")
    r = kv.post(
        "/v3/kv/txn",
        {
            "success": [
                {"request_put": {"key": d, "value": b64("1")}},
                {"request_put": {"key": d, "value": b64("2")}},
            ]
        },
    )
    assert_error(r, 400, 3, "etcdserver: duplicate key given in txn request")
    assert kv.c.get(ns + "d") == []


# ============================================================================== §3.4 leases


def test_lease_grant_ttl_keys_refresh_revoke(kv: Backend, ns: str) -> None:
    c = kv.c
    lease = c.lease(ttl=10)
    try:
        assert isinstance(lease.id, int) and lease.id > 0
        assert lease.ttl() in (8, 9)  # remaining whole seconds, rounded down
        c.put(ns + "k1", "a", lease=lease)
        c.put(ns + "k2", "b", lease=lease)
        assert sorted(lease.keys()) == [(ns + "k1").encode(), (ns + "k2").encode()]
        body = kv.range1(ns + "k1")
        assert body["kvs"][0]["lease"] == str(lease.id)
        ttl = kv.ok("/v3/kv/lease/timetolive", {"ID": lease.id})
        assert ttl["ID"] == str(lease.id) and ttl["grantedTTL"] == "10" and "keys" not in ttl
        assert_header(ttl["header"])
        # the other spelling, with the ID as a string
        ttl2 = kv.ok("/v3/lease/timetolive", {"ID": str(lease.id), "keys": True})
        assert sorted(unb64(x) for x in ttl2["keys"]) == [(ns + "k1").encode(), (ns + "k2").encode()]
        assert lease.refresh() == 10
        before = kv.revision()
        assert lease.revoke() is True
        assert int(kv.range1(ns + "k1")["header"]["revision"]) == before + 1  # both keys in one revision
    finally:
        kv.post("/v3/lease/revoke", {"ID": lease.id})
    assert c.get(ns + "k1") == [] and c.get(ns + "k2") == []
    assert lease.ttl() == -1
    assert lease.refresh() == -1
    assert lease.keys() == []
    dead = kv.ok("/v3/kv/lease/timetolive", {"ID": lease.id})
    assert dead["TTL"] == "-1" and "grantedTTL" not in dead
    with pytest.raises(gw_exc.Etcd3Exception) as ei:
        lease.revoke()
    assert json.loads(ei.value.detail_text)["code"] == 5


def test_lease_keys_follow_deletes_and_puts_without_the_lease(kv: Backend, ns: str) -> None:
    lease = kv.clients[1].lease(ttl=30)
    try:
        kv.clients[2].put(ns + "l1", "v", lease=lease)
        kv.c.put(ns + "l2", "v", lease=lease)
        kv.c.put(ns + "l3", "v", lease=lease)
        kv.c.delete(ns + "l2")
        kv.c.put(ns + "l3", "v2")  # a put without the lease detaches the key
        assert "lease" not in kv.range1(ns + "l3")["kvs"][0]
        assert Lease(lease.id, kv.clients[2]).keys() == [(ns + "l1").encode()]
    finally:
        lease.revoke()
    assert kv.c.get(ns + "l1") == [] and kv.c.get(ns + "l3") == [b"v2"]


def test_lease_expiry_deletes_attached_keys_in_one_revision(kv: Backend, ns: str) -> None:
    c = kv.c
    sink = EventSink(c, ns, range_end=prefix_end(ns))
    try:
        t0 = time.monotonic()
        lease = c.lease(ttl=2)
        c.put(ns + "a", "1", lease=lease)
        c.put(ns + "b", "2", lease=lease)
        puts = sink.take(2)
        time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
        assert c.get(ns + "a") == [b"1"]  # keys never disappear before the TTL
        deadline = t0 + 10
        while c.get(ns + "a") and time.monotonic() < deadline:
            time.sleep(0.1)
        gone_after = time.monotonic() - t0
        assert c.get(ns + "a") == [] and c.get(ns + "b") == [], "lease did not expire within 10 s"
        assert gone_after >= 1.9, gone_after
        dels = sink.take(2)
        assert [e.get("type") for e in dels] == ["DELETE", "DELETE"]
        assert {e["kv"]["key"] for e in dels} == {(ns + "a").encode(), (ns + "b").encode()}
        assert dels[0]["kv"]["mod_revision"] == dels[1]["kv"]["mod_revision"]
        assert int(dels[0]["kv"]["mod_revision"]) == int(puts[1]["kv"]["mod_revision"]) + 1
        assert lease.ttl() == -1
    finally:
        sink.stop()


def test_lease_minimum_ttl_and_explicit_id(kv: Backend) -> None:
    body = kv.ok("/v3/lease/grant", {"TTL": 1})
    assert body["TTL"] == "2"  # ceil(1.5 * election timeout of 1 s)
    kv.ok("/v3/lease/revoke", {"ID": body["ID"]})
    lid = random.randrange(1 << 40, 1 << 62)
    body = kv.ok("/v3/lease/grant", {"TTL": 100, "ID": lid})
    assert body["ID"] == str(lid) and body["TTL"] == "100"
    assert_header(body["header"])
    try:
        r = kv.post("/v3/lease/grant", {"TTL": 100, "ID": lid})
        assert_error(r, 412, 9, "etcdserver: lease already exists")
        with pytest.raises(gw_exc.PreconditionFailedError):
            kv.c.post(kv.c.get_url("/lease/grant"), json={"TTL": 100, "ID": lid})
    finally:
        before = kv.revision()
        body = kv.ok("/v3/lease/revoke", {"ID": lid})
        assert int(body["header"]["revision"]) == before  # a key-less lease: no new revision


def test_lease_ids_are_large_and_distinct(kv: Backend) -> None:
    leases = [kv.c.lease(ttl=30) for _ in range(5)]
    try:
        ids = [lease.id for lease in leases]
        assert len(set(ids)) == 5 and all(0 < i < 1 << 63 for i in ids)
    finally:
        for lease in leases:
            lease.revoke()


def test_lease_too_large_ttl(kv: Backend) -> None:
    assert_error(kv.post("/v3/lease/grant", {"TTL": 99999999999}), 400, 11, "etcdserver: too large lease TTL")


def test_unknown_lease_on_put_and_revoke(kv: Backend, ns: str) -> None:
    lid = random.randrange(1 << 40, 1 << 62)
    msg = "etcdserver: requested lease not found"
    assert_error(kv.post("/v3/kv/put", {"key": b64(ns + "k"), "value": b64("v"), "lease": lid}), 404, 5, msg)
    assert_error(kv.post("/v3/kv/lease/revoke", {"ID": lid}), 404, 5, msg)
    assert_error(kv.post("/v3/lease/revoke", {"ID": lid}), 404, 5, msg)
    with pytest.raises(gw_exc.Etcd3Exception):
        Lease(lid, kv.c).revoke()
    assert kv.c.get(ns + "k") == []


def test_keepalive_shape_and_stream(kv: Backend) -> None:
    body = kv.ok("/v3/lease/grant", {"TTL": 30})
    lid = body["ID"]
    try:
        r = kv.post("/v3/lease/keepalive", {"ID": int(lid)})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
        lines = [x for x in r.text.split("\n") if x.strip()]
        assert len(lines) == 1
        res = json.loads(lines[0])
        assert set(res) == {"result"} and res["result"]["ID"] == lid and res["result"]["TTL"] == "30"
        assert_header(res["result"]["header"])
        # two requests in one body: two newline-delimited results
        r = kv.post("/v3/lease/keepalive", data=json.dumps({"ID": int(lid)}) * 2)
        lines = [json.loads(x) for x in r.text.split("\n") if x.strip()]
        assert [x["result"]["TTL"] for x in lines] == ["30", "30"]
    finally:
        kv.ok("/v3/lease/revoke", {"ID": lid})
    r = kv.post("/v3/lease/keepalive", {"ID": int(lid)})
    res = json.loads(r.text.strip())["result"]
    assert res["ID"] == lid and "TTL" not in res


# =============================================================================== Lock (§2)


def test_lock_acquire_release_refresh(kv: Backend, ns: str) -> None:
    c = kv.c
    name = ns.strip("/").replace("/", "-")
    lock = c.lock(id=name, ttl=10)
    other = kv.clients[1].lock(id=name, ttl=10)
    try:
        assert lock.acquire() is True
        assert lock.key == "/locks/" + name
        assert c.get("/locks/" + name) == [lock.uuid.encode()]
        assert lock.is_acquired() is True
        assert other.acquire() is False  # held
        assert other.is_acquired() is False
        assert lock.refresh() == 10
        assert lock.release() is True
        assert lock.release() is False  # no longer ours
        assert other.acquire() is True
        assert other.is_acquired() is True
        with pytest.raises(AssertionError), lock:  # __enter__ ignores a failed acquire
            assert lock.is_acquired()
        assert other.release() is True
        assert c.get("/locks/" + name) == []
    finally:
        for lk in (lock, other):
            if lk.lease is not None:
                kv.post("/v3/lease/revoke", {"ID": lk.lease.id})


# =============================================================================== §3.6 watch


def test_watch_prefix_callbacks_in_order(kv: Backend, ns: str) -> None:
    c = kv.c
    sink = EventSink(c, ns + "w/", range_end=prefix_end(ns + "w/"))
    try:
        c.put(ns + "w/a", "1")
        c.put(ns + "w/a", "2")
        c.put(ns + "x/other", "3")  # outside the prefix
        c.delete(ns + "w/a")
        c.transaction(
            {
                "success": [
                    {"request_put": {"key": b64(ns + "w/b"), "value": b64("t")}},
                    {"request_put": {"key": b64(ns + "w/c"), "value": b64("t")}},
                ]
            }
        )
        ev = sink.take(5)
        sink.assert_quiet(0.3)
    finally:
        sink.stop()
    assert [(e.get("type", "PUT"), e["kv"]["key"][len(ns) :]) for e in ev] == [
        ("PUT", b"w/a"),
        ("PUT", b"w/a"),
        ("DELETE", b"w/a"),
        ("PUT", b"w/b"),
        ("PUT", b"w/c"),
    ]
    assert [e["kv"].get("value") for e in ev] == [b"1", b"2", None, b"t", b"t"]
    revs = [int(e["kv"]["mod_revision"]) for e in ev]
    assert revs[1] == revs[0] + 1 and revs[2] == revs[1] + 2 and revs[3] == revs[2] + 1 == revs[4]
    assert set(ev[2]["kv"]) == {"key", "mod_revision"}  # a DELETE event's kv
    assert ev[0]["kv"]["version"] == "1" and ev[1]["kv"]["version"] == "2"


def test_watch_iterator_and_cancel(kv: Backend, ns: str) -> None:
    c = kv.c
    events, cancel = c.watch(ns + "k")
    got: list[Any] = []

    def consume() -> None:
        for e in events:
            got.append(e)
            if len(got) == 2:
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        c.put(ns + "k", "1")
        c.put(ns + "k2", "not watched")
        c.put(ns + "k", "2")
        t.join(TIMEOUT)
        assert not t.is_alive()
    finally:
        cancel()
    assert [e["kv"]["value"] for e in got] == [b"1", b"2"]


def test_watch_prefix_iterator(kv: Backend, ns: str) -> None:
    c = kv.c
    events, cancel = c.watch_prefix(ns + "p/")
    got: list[Any] = []

    def consume() -> None:
        for e in events:
            got.append(e)
            if len(got) == 3:
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        c.put(ns + "p/1", "a")
        c.put(ns + "q", "outside")
        c.put(ns + "p/2", "b")
        c.delete(ns + "p/1")
        t.join(TIMEOUT)
        assert not t.is_alive()
    finally:
        cancel()
    assert [(e.get("type", "PUT"), e["kv"]["key"]) for e in got] == [
        ("PUT", (ns + "p/1").encode()),
        ("PUT", (ns + "p/2").encode()),
        ("DELETE", (ns + "p/1").encode()),
    ]


def test_watch_once_live_and_from_history(kv: Backend, ns: str) -> None:
    c = kv.c
    c.put(ns + "h", "old")
    rev = int(c.get(ns + "h", metadata=True)[0][1]["mod_revision"])
    c.put(ns + "h", "newer")
    ev = c.watch_once(ns + "h", timeout=5, start_revision=rev)
    assert ev["kv"]["value"] == b"old" and int(ev["kv"]["mod_revision"]) == rev
    ev = while_putting(kv, ns + "live", "v", lambda: c.watch_once(ns + "live", timeout=TIMEOUT))
    assert ev["kv"]["key"] == (ns + "live").encode() and ev["kv"]["value"] == b"v"
    with pytest.raises(gw_exc.WatchTimedOut):
        c.watch_once(ns + "never", timeout=0.5)


def _raw_watch(kv: Backend, create: dict[str, Any], member: int = 0) -> Any:
    r = kv.session.post(
        kv.url("/v3/watch", member), json={"create_request": create}, stream=True, timeout=TIMEOUT
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers.get("Transfer-Encoding") == "chunked"
    return r


def _messages(r: Any, n: int) -> list[dict[str, Any]]:
    """Read n messages, checking the framing etcd3gw needs: one JSON object per HTTP chunk."""
    out: list[dict[str, Any]] = []
    for chunk in r.iter_content(chunk_size=None):
        if not chunk.strip():
            continue
        text = chunk.decode()
        assert text.count("\n") <= 1 and text.endswith("\n"), text
        out.append(json.loads(text))
        if len(out) == n:
            return out
    raise AssertionError(f"stream ended after {len(out)} of {n} messages: {out}")


def test_watch_raw_framing_created_then_events(kv: Backend, ns: str) -> None:
    k = ns + "w/"
    rev0 = kv.revision()
    r = _raw_watch(kv, {"key": b64(k), "range_end": b64(prefix_end(k))})
    try:
        kv.c.put(k + "a", "1")  # written after the headers: the watch must already be registered
        kv.c.put(ns + "outside", "x")
        kv.c.delete(k + "a")
        msgs = _messages(r, 3)
    finally:
        r.close()
    created, put, dele = (m["result"] for m in msgs)
    assert set(created) == {"header", "created"} and created["created"] is True  # watch_id 0 omitted
    assert_header(created["header"])
    assert int(created["header"]["revision"]) == rev0
    assert set(put) == {"header", "events"} and int(put["header"]["revision"]) == rev0 + 1
    [e] = put["events"]
    assert set(e) == {"kv"}  # a PUT has no "type"
    assert e["kv"] == {
        "key": b64(k + "a"),
        "create_revision": str(rev0 + 1),
        "mod_revision": str(rev0 + 1),
        "version": "1",
        "value": b64("1"),
    }
    assert dele["events"] == [{"type": "DELETE", "kv": {"key": b64(k + "a"), "mod_revision": str(rev0 + 3)}}]
    assert int(dele["header"]["revision"]) == rev0 + 3


def test_watch_txn_events_arrive_in_one_message(kv: Backend, ns: str) -> None:
    r = _raw_watch(kv, {"key": b64(ns), "range_end": b64(prefix_end(ns))})
    try:
        kv.c.transaction(
            {
                "success": [
                    {"request_put": {"key": b64(ns + "1"), "value": b64("a")}},
                    {"request_put": {"key": b64(ns + "2"), "value": b64("b")}},
                ]
            }
        )
        _, msg = _messages(r, 2)
    finally:
        r.close()
    evs = msg["result"]["events"]
    assert [unb64(e["kv"]["key"]) for e in evs] == [(ns + "1").encode(), (ns + "2").encode()]
    assert evs[0]["kv"]["mod_revision"] == evs[1]["kv"]["mod_revision"] == msg["result"]["header"]["revision"]


def test_watch_lease_revoke_events_arrive_in_one_message(kv: Backend, ns: str) -> None:
    lease = kv.c.lease(ttl=30)
    kv.c.put(ns + "1", "a", lease=lease)
    kv.c.put(ns + "2", "b", lease=lease)
    r = _raw_watch(kv, {"key": b64(ns), "range_end": b64(prefix_end(ns))})
    try:
        lease.revoke()
        _, msg = _messages(r, 2)
    finally:
        r.close()
    evs = msg["result"]["events"]
    assert [e.get("type") for e in evs] == ["DELETE", "DELETE"]
    assert {unb64(e["kv"]["key"]) for e in evs} == {(ns + "1").encode(), (ns + "2").encode()}
    assert evs[0]["kv"]["mod_revision"] == evs[1]["kv"]["mod_revision"] == msg["result"]["header"]["revision"]


def test_watch_without_create_request_gets_no_response(kv: Backend) -> None:
    # etcd sends not even the response headers for a body without create_request
    with pytest.raises(requests.exceptions.ReadTimeout):
        kv.session.post(kv.url("/v3/watch"), json={}, stream=True, timeout=(TIMEOUT, 1.0))
    assert kv.c.status()["leader"]  # and goes on serving


def test_watch_prefix_once_keeps_plain_range_semantics(kv: Backend, ns: str) -> None:
    # etcd3gw bug: watch_prefix_once b64-encodes range_end twice, so the range watched is
    # [prefix, b64(prefix + 1)) -- much wider than the prefix.  The server must not "fix" it.
    c = kv.c
    wide_end = base64.b64encode(prefix_end(ns + "a/").encode()).decode()
    assert (ns + "b").encode() < wide_end.encode()  # "/compat/..." sorts before "L2NvbXBh..."
    ev = while_putting(kv, ns + "b", "outside", lambda: c.watch_prefix_once(ns + "a/", timeout=TIMEOUT))
    assert ev["kv"]["key"] == (ns + "b").encode()


def test_watch_live_prev_kv_on_a_follower_and_future_start(kv: Backend, ns: str) -> None:
    kv.c.put(ns + "w", "1")
    r = _raw_watch(kv, {"key": b64(ns + "w"), "prev_kv": True}, member=1)
    try:
        kv.c.put(ns + "w", "2")
        kv.c.delete(ns + "w")
        msgs = _messages(r, 3)
        put, dele = msgs[1]["result"]["events"], msgs[2]["result"]["events"]
    finally:
        r.close()
    assert unb64(put[0]["kv"]["value"]) == b"2" and unb64(put[0]["prev_kv"]["value"]) == b"1"
    assert dele[0]["type"] == "DELETE" and unb64(dele[0]["prev_kv"]["value"]) == b"2"
    assert dele[0]["prev_kv"]["version"] == "2"
    # a start revision in the future: nothing until the store gets there
    start = kv.revision() + 2
    r = _raw_watch(kv, {"key": b64(ns + "f"), "start_revision": start})
    try:
        kv.c.put(ns + "f", "1")
        kv.c.put(ns + "f", "2")
        _, msg = _messages(r, 2)
    finally:
        r.close()
    [ev] = msg["result"]["events"]
    assert unb64(ev["kv"]["value"]) == b"2" and int(ev["kv"]["mod_revision"]) == start


def test_watch_history_prev_kv_and_filters(kv: Backend, ns: str) -> None:
    k = ns + "w/"
    c = kv.c
    c.put(k + "a", "1")
    start = int(c.get(k + "a", metadata=True)[0][1]["mod_revision"])
    c.put(k + "a", "2")
    c.delete(k + "a")
    now = kv.revision()
    r = _raw_watch(
        kv, {"key": b64(k), "range_end": b64(prefix_end(k)), "start_revision": start, "prev_kv": True}
    )
    try:
        msgs = _messages(r, 2)
        events: list[dict[str, Any]] = [e for m in msgs[1:] for e in m["result"]["events"]]
        while len(events) < 3:  # the replay may be batched into one message or not
            events += _messages(r, 1)[0]["result"]["events"]
    finally:
        r.close()
    assert msgs[0]["result"]["created"] is True and int(msgs[0]["result"]["header"]["revision"]) == now
    assert [e.get("type", "PUT") for e in events] == ["PUT", "PUT", "DELETE"]
    assert [int(e["kv"]["mod_revision"]) for e in events] == [start, start + 1, start + 2]
    assert "prev_kv" not in events[0]
    assert unb64(events[1]["prev_kv"]["value"]) == b"1"
    assert unb64(events[2]["prev_kv"]["value"]) == b"2" and events[2]["prev_kv"]["version"] == "2"
    # NOPUT: only the delete
    r = _raw_watch(
        kv, {"key": b64(k), "range_end": b64(prefix_end(k)), "start_revision": start, "filters": ["NOPUT"]}
    )
    try:
        msgs = _messages(r, 2)
    finally:
        r.close()
    assert msgs[1]["result"]["events"] == [
        {"type": "DELETE", "kv": {"key": b64(k + "a"), "mod_revision": str(start + 2)}}
    ]
    # NODELETE through etcd3gw
    ev = c.watch_once(k + "a", timeout=5, start_revision=start + 1, filters=["NODELETE"])
    assert ev["kv"]["value"] == b"2"


def test_watch_follower_and_disconnect_is_cancel(kv: Backend, ns: str) -> None:
    # A watch on each member sees a write made through another; stopping watchers abruptly
    # (as etcd3gw's Watcher.stop does) leaves the members serving.
    sinks = [EventSink(kv.clients[i], ns + "k") for i in range(3)]
    try:
        kv.clients[2].put(ns + "k", "v")
        for s in sinks:
            [e] = s.take(1)
            assert e["kv"]["value"] == b"v"
    finally:
        for s in sinks:
            s.stop()
    for i in range(3):
        assert kv.clients[i].get(ns + "k") == [b"v"]


# ===================================================================== §3.5 members and status


def test_members(kv: Backend) -> None:
    members = kv.c.members()
    assert len(members) == 3
    by_name = {m["name"]: m for m in members}
    assert set(by_name) == {m.name for m in kv.cluster.members}
    for m in kv.cluster.members:
        got = by_name[m.name]
        assert set(got) == {"ID", "name", "peerURLs", "clientURLs"}, got
        assert got["peerURLs"] == [m.peer_url] and got["clientURLs"] == [m.client_url]
        assert isinstance(got["ID"], str) and UINT_RE.fullmatch(got["ID"])
    ids = [int(m["ID"]) for m in members]
    assert ids == sorted(ids)  # ordered by ID
    assert sorted(str(i) for i in ids) == sorted(kv.member_ids())
    body = kv.ok("/v3/cluster/member/list", {}, member=1)
    assert_header(body["header"], revision=False)  # no revision in a member list's header
    assert body["members"] == members


def test_status_on_every_member(kv: Backend) -> None:
    statuses = [kv.clients[i].status() for i in range(3)]
    ids = {s["header"]["member_id"] for s in statuses}
    assert len(ids) == 3
    for s in statuses:
        assert_header(s["header"])
        assert VERSION_RE.fullmatch(s["version"]), s
        assert s["leader"] in ids
        assert s["raftTerm"] == s["header"]["raft_term"]
        for f in ("dbSize", "raftIndex", "raftTerm", "raftAppliedIndex", "dbSizeInUse"):
            assert isinstance(s[f], str) and UINT_RE.fullmatch(s[f]), (f, s)
        assert "errors" not in s and "isLearner" not in s
    assert len({s["leader"] for s in statuses}) == 1
    assert kv.cluster.members[kv.cluster.leader()].member_id == statuses[0]["leader"]


# ============================================================ §6 revisions, §1 routing, reads


def test_revision_model(kv: Backend, ns: str) -> None:
    c = kv.c
    r0 = kv.revision()
    assert r0 >= 1

    def rev_after(step: str, delta: int) -> None:
        nonlocal r0
        now = kv.revision()
        assert now == r0 + delta, f"after {step}: revision {now}, expected {r0} + {delta}"
        r0 = now

    c.put(ns + "a", "1")
    rev_after("put", 1)
    c.put(ns + "a", "1")  # same value: still a new revision and version
    rev_after("put of the same value", 1)
    assert c.get(ns + "a", metadata=True)[0][1]["version"] == "2"
    c.get(ns + "a")
    rev_after("range", 0)
    c.delete(ns + "a")
    rev_after("delete", 1)
    c.delete(ns + "a")
    rev_after("delete of nothing", 0)
    c.put(ns + "p/1", "x")
    c.put(ns + "p/2", "x")
    rev_after("two puts", 2)
    c.delete_prefix(ns + "p/")
    rev_after("deleterange of 2 keys", 1)
    txn = {
        "success": [
            {"request_put": {"key": b64(ns + "t1"), "value": b64("1")}},
            {"request_put": {"key": b64(ns + "t2"), "value": b64("1")}},
            {"request_delete_range": {"key": b64(ns + "nothing")}},
        ]
    }
    body = c.transaction(txn)
    rev_after("txn with two puts", 1)
    assert body["header"]["revision"] == str(r0)
    c.replace(ns + "t1", "wrong", "2")
    rev_after("failed compare", 0)
    c.transaction({"success": [{"request_range": {"key": b64(ns + "t1")}}]})
    rev_after("read-only txn", 0)
    lease = c.lease(ttl=30)
    rev_after("lease grant", 0)
    c.put(ns + "l1", "x", lease=lease)
    c.put(ns + "l2", "x", lease=lease)
    rev_after("two puts with a lease", 2)
    lease.revoke()
    rev_after("revoke of a lease with 2 keys", 1)
    empty = c.lease(ttl=30)
    empty.revoke()
    rev_after("grant and revoke of a key-less lease", 0)


def test_read_after_write_across_all_members(kv: Backend, ns: str) -> None:
    clients = kv.clients
    for round_ in range(3):
        for w in range(3):
            value = f"{round_}-{w}"
            assert clients[w].put(ns + "raw", value) is True
            for r in range(3):
                if r != w:
                    assert clients[r].get(ns + "raw") == [value.encode()], f"written on {w}, read on {r}"


def test_serializable_read(kv: Backend, ns: str) -> None:
    kv.c.put(ns + "s", "v")
    lin = kv.range1(ns + "s")
    for i in range(3):
        deadline = time.monotonic() + 5
        while True:
            body = kv.range1(ns + "s", member=i, serializable=True)
            if body.get("kvs") == lin["kvs"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert body["kvs"] == lin["kvs"] and body["count"] == "1"
        assert_header(body["header"])
        assert kv.clients[i].get(ns + "s", serializable=True) == [b"v"]


def test_writes_sent_to_a_follower_succeed(kv: Backend, ns: str) -> None:
    lead = kv.cluster.leader()
    ids = kv.member_ids()
    for f in kv.cluster.followers():
        c = kv.clients[f]
        assert c.put(ns + f"f{f}", "v") is True
        assert c.create(ns + f"c{f}", "v") is True
        assert c.replace(ns + f"c{f}", "v", "w") is True
        lease = c.lease(ttl=30)
        c.put(ns + f"l{f}", "v", lease=lease)
        assert lease.refresh() == 30
        lease.revoke()
        body = kv.ok("/v3/kv/put", {"key": b64(ns + "hdr"), "value": b64("v")}, member=f)
        assert body["header"]["member_id"] == ids[f]  # the follower answered, not the leader
        assert kv.clients[lead].get(ns + f"f{f}") == [b"v"]
        assert kv.clients[lead].get(ns + f"c{f}") == [b"w"]
        assert kv.clients[lead].get(ns + f"l{f}") == []


# ============================================================================ §1/§5 bad input

BAD_INPUT = [
    # (id, path, raw body, HTTP status, gRPC code, message)
    ("malformed-json", "/v3/kv/put", '{"key": "Zm9v", ', 400, 3, "unexpected EOF"),
    (
        "bad-base64",
        "/v3/kv/put",
        '{"key":"!!!notb64","value":"eA=="}',
        400,
        3,
        "illegal base64 data at input byte 0",
    ),
    (
        "unpadded-base64",
        "/v3/kv/put",
        '{"key":"Zm9vMQ","value":"eA=="}',
        400,
        3,
        "illegal base64 data at input byte 4",
    ),
    (
        "urlsafe-base64",
        "/v3/kv/put",
        '{"key":"-_8=","value":"eA=="}',
        400,
        3,
        "illegal base64 data at input byte 0",
    ),
    (
        "unknown-enum",
        "/v3/kv/txn",
        '{"compare":[{"key":"Y2Fz","result":"EQUALS","target":"VALUE"}]}',
        400,
        3,
        'unknown value "EQUALS" for enum etcdserverpb.Compare_CompareResult',
    ),
    (
        "bool-as-string",
        "/v3/kv/range",
        '{"key":"aw==","keys_only":"true"}',
        400,
        3,
        "json: cannot unmarshal string into Go value of type bool",
    ),
    (
        "float-int64",
        "/v3/kv/put",
        '{"key":"aw==","value":"dg==","lease":1000.0}',
        400,
        3,
        "json: cannot unmarshal number 1000.0 into Go value of type int64",
    ),
    (
        "array-body",
        "/v3/kv/put",
        "[]",
        400,
        3,
        "json: cannot unmarshal array into Go value of type map[string]json.RawMessage",
    ),
    (
        "number-for-bytes",
        "/v3/kv/put",
        '{"key":5}',
        400,
        3,
        "json: cannot unmarshal number into Go value of type []uint8",
    ),
    ("missing-key", "/v3/kv/put", '{"value":"eA=="}', 400, 3, "etcdserver: key is not provided"),
    ("empty-body", "/v3/kv/range", "", 400, 3, "etcdserver: key is not provided"),
    (
        "ignore-value-on-missing-key",
        "/v3/kv/put",
        '{"key":"L2NvbXBhdC1uZXZlci1wdXQ=","ignore_value":true}',  # "/compat-never-put"
        400,
        3,
        "etcdserver: key not found",
    ),
    ("empty-object", "/v3/kv/deleterange", "{}", 400, 3, "etcdserver: key is not provided"),
]


@pytest.mark.parametrize(
    ("path", "data", "status", "code", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input(kv: Backend, path: str, data: str, status: int, code: int, message: str) -> None:
    before = kv.revision()
    assert_error(
        kv.post(path, data=data, headers={"Content-Type": "application/json"}), status, code, message
    )
    assert kv.revision() == before


def test_lenient_input(kv: Backend, ns: str) -> None:
    # unknown fields are ignored
    kv.ok("/v3/kv/put", {"key": b64(ns + "u"), "value": b64("v"), "bogus": 1})
    assert kv.c.get(ns + "u") == [b"v"]
    # newlines inside base64 are ignored (Go's decoder)
    kv.ok("/v3/kv/put", {"key": b64(ns + "nl") + "\n", "value": b64("v")})
    assert kv.c.get(ns + "nl") == [b"v"]
    k = b64(ns + "crlf")
    kv.ok("/v3/kv/put", {"key": k[:4] + "\r\n" + k[4:], "value": b64("w")})
    assert kv.c.get(ns + "crlf") == [b"w"]
    # the lease ID as a decimal string
    lease = kv.c.lease(ttl=30)
    try:
        kv.ok("/v3/kv/put", {"key": b64(ns + "ls"), "value": b64("v"), "lease": str(lease.id)})
        assert kv.range1(ns + "ls")["kvs"][0]["lease"] == str(lease.id)
    finally:
        lease.revoke()


def test_request_too_large(kv: Backend, ns: str) -> None:
    value = "x" * (2 * 1024 * 1024 + 100)
    r = kv.post("/v3/kv/put", {"key": b64(ns + "big"), "value": b64(value)})
    assert_error(r, 429, 8, pattern=r"grpc: received message larger than max \(\d+ vs\. 2097152\)")
    assert kv.c.get(ns + "big") == []


def test_request_size_limit_counts_decoded_bytes(kv: Backend, ns: str) -> None:
    # etcd's --max-request-bytes (1.5 MiB by default) applies to the decoded request, not to the
    # base64 JSON text: a 1.4 MB value (1.87 MB of base64) is accepted, a 1.6 MB one is refused with
    # 400 code 3 (between 1.5 and 2 MiB; above 2 MiB the gRPC limit answers 429, see above).
    value = b"v" * 1_400_000
    kv.ok("/v3/kv/put", {"key": b64(ns + "big"), "value": b64(value)})
    assert kv.c.get(ns + "big") == [value]
    kv.c.delete(ns + "big")
    r = kv.post("/v3/kv/put", {"key": b64(ns + "big"), "value": b64(b"v" * 1_600_000)})
    assert_error(r, 400, 3, "etcdserver: request is too large")


# ============================================== compaction (last: it discards shared history)


def test_compacted_revision_on_range_and_watch(kv: Backend, ns: str) -> None:
    kv.c.put(ns + "old", "1")
    old = kv.revision()
    kv.c.put(ns + "old", "2")
    compact_at = kv.revision()
    body = kv.ok("/v3/kv/compaction", {"revision": compact_at})
    assert_header(body["header"])
    r = kv.post("/v3/kv/range", {"key": b64(ns + "old"), "revision": old})
    assert_error(r, 400, 11, "etcdserver: mvcc: required revision has been compacted")
    assert kv.c.get(ns + "old", revision=compact_at) == [b"2"]  # the compaction point itself is kept
    # A watch from the compaction point itself is served (observed on etcd 3.4.23; the contract's
    # "at or below" is too strict): only start revisions below it are canceled.
    ev = kv.c.watch_once(ns + "old", timeout=5, start_revision=compact_at)
    assert ev["kv"]["value"] == b"2" and int(ev["kv"]["mod_revision"]) == compact_at
    r = _raw_watch(kv, {"key": b64(ns + "old"), "start_revision": old})
    try:
        created, canceled = (m["result"] for m in _messages(r, 2))
    finally:
        r.close()
    assert created["created"] is True
    assert canceled["canceled"] is True and canceled["compact_revision"] == str(compact_at)
    assert_header(canceled["header"], revision=False)
    assert set(canceled) == {"header", "canceled", "compact_revision"}
    # etcd3gw ignores the cancel: watch_once just times out
    with pytest.raises(gw_exc.WatchTimedOut):
        kv.c.watch_once(ns + "old", timeout=0.5, start_revision=old)


# ==================================== slow: kill -9 and quorum loss (a cluster of their own)


@pytest.fixture(params=BACKENDS)
def own_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    reason = backend_unavailable_reason(request.param)
    if reason:
        pytest.skip(reason)
    cluster = KVCluster(request.param, tmp_path / request.param)
    cluster.start(timeout=30)
    try:
        yield Backend(cluster)
    finally:
        cluster.stop()


@pytest.mark.slow
def test_kill_9_the_leader_and_restart_it(own_cluster: Backend) -> None:
    kv, cl = own_cluster, own_cluster.cluster
    for i in range(20):
        kv.c.put(f"/k/{i}", str(i))
    lead = cl.leader()
    cl.kill(lead)
    new = cl.leader(exclude={lead})
    assert new != lead
    survivor = next(i for i in range(3) if i not in (lead,))
    assert kv.clients[survivor].put("/after", "kill") is True
    for i in range(3):
        if i != lead:
            assert kv.clients[i].get("/k/19") == [b"19"] and kv.clients[i].get("/after") == [b"kill"]
    cl.restart(lead)
    deadline = time.monotonic() + 15
    while kv.clients[lead].get("/after", serializable=True) != [b"kill"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kv.clients[lead].get("/after") == [b"kill"]
    assert kv.clients[lead].get("/k/0") == [b"0"]
    assert len(kv.clients[lead].members()) == 3


@pytest.mark.slow
def test_quorum_loss(own_cluster: Backend) -> None:
    kv, cl = own_cluster, own_cluster.cluster
    kv.c.put("/q", "1")
    for i in (1, 2):
        cl.kill(i)
    t0 = time.monotonic()
    r = kv.post("/v3/kv/put", {"key": b64("/q"), "value": b64("2")}, timeout=30)
    took = time.monotonic() - t0
    assert_error(r, 503, 14, "etcdserver: request timed out")
    assert 3 < took < 15, took
    r = kv.post("/v3/kv/range", {"key": b64("/q")}, timeout=30)
    assert_error(r, 503, 14, "etcdserver: request timed out")
    body = kv.ok("/v3/kv/range", {"key": b64("/q"), "serializable": True})
    assert unb64(body["kvs"][0]["value"]) == b"1"
    st = kv.ok("/v3/maintenance/status", {})
    assert st.get("errors") == ["etcdserver: no leader"] and "leader" not in st

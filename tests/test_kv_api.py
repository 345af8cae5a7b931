"""The etcd JSON gateway of examples.kvstore, route by route, against in-process members.

Each test starts real :class:`KVServer` members in this process (raft over loopback TCP, state
in memory, 10 ms heartbeats) and talks to them with an aiohttp client, so the HTTP framing is the
real one (watch chunks are read raw with ``iter_chunks``).  Expected shapes come from
/work/shared/etcd-gateway-api.md and the etcd 3.4 transcript; IDs and revisions are compared
relative to values read in the same test.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

from examples.kvstore.server import KVServer, ServerConfig, member_id_for  # noqa: E402
from raftlib.testing.proccluster import free_ports  # noqa: E402

UINT = re.compile(r"[0-9]+")


def b64(x: str | bytes) -> str:
    return base64.b64encode(x.encode() if isinstance(x, str) else x).decode()


def config_for(
    names: list[str], ports: list[int], i: int, token: str = "api-test", **over: Any
) -> ServerConfig:
    peer = {n: f"http://127.0.0.1:{ports[2 * k + 1]}" for k, n in enumerate(names)}
    client = f"http://127.0.0.1:{ports[2 * i]}"
    base: dict[str, Any] = dict(
        name=names[i],
        data_dir=None,
        listen_client_urls=[client],
        advertise_client_urls=[client],
        listen_peer_urls=[peer[names[i]]],
        initial_advertise_peer_urls=[peer[names[i]]],
        initial_cluster={n: [u] for n, u in peer.items()},
        initial_cluster_token=token,
        heartbeat_interval_ms=10,
        election_timeout_ms=100,
        request_timeout=1.5,
        fsync=False,
        lease_check_interval=0.05,
    )
    base.update(over)
    return ServerConfig(**base)


class Cluster:
    """n in-process members and one aiohttp session."""

    def __init__(self, n: int = 1, **over: Any) -> None:
        self.names = [f"m{i}" for i in range(n)]
        self.ports = free_ports(2 * n)
        self.servers = [KVServer(config_for(self.names, self.ports, i, **over)) for i in range(n)]
        self.session: Any = None

    async def start(self) -> Cluster:
        await asyncio.gather(*(s.start() for s in self.servers))
        self.session = aiohttp.ClientSession()
        await self.wait_leader()
        return self

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        for s in self.servers:
            await s.stop()

    async def wait_leader(self, timeout: float = 10.0) -> KVServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [s for s in self.servers if s.node is not None and s.node.running]
            leaders = [s for s in running if s.is_leader and s.primary]
            agreed = leaders and all(s.node and s.node.leader == leaders[0].node_id for s in running)
            if agreed and all(s.state.attributes.get(s.node_id) for s in running):
                return leaders[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no leader")

    def url(self, path: str, i: int = 0) -> str:
        return self.servers[i].client_urls[0] + path

    async def post(self, path: str, body: Any = None, i: int = 0, **kw: Any) -> tuple[int, Any, Any]:
        """(status, parsed JSON or text, response headers)."""
        data = kw.pop("data", None)
        if body is not None:
            data = json.dumps(body)
        async with self.session.post(self.url(path, i), data=data, **kw) as r:
            raw = await r.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode()
            return r.status, parsed, r.headers

    async def ok(self, path: str, body: Any, i: int = 0) -> dict[str, Any]:
        status, out, headers = await self.post(path, body, i)
        assert status == 200, (path, body, status, out)
        assert headers["Content-Type"] == "application/json"
        return out  # type: ignore[no-any-return]

    async def put(self, key: str, value: str, i: int = 0, **extra: Any) -> int:
        out = await self.ok("/v3/kv/put", {"key": b64(key), "value": b64(value), **extra}, i)
        return int(out["header"]["revision"])


@pytest.fixture
async def one() -> AsyncIterator[Cluster]:
    c = Cluster(1)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def check_header(h: dict[str, Any], server: KVServer, revision: bool = True) -> None:
    keys = {"cluster_id", "member_id", "raft_term"} | ({"revision"} if revision else set())
    assert set(h) == keys, h
    assert all(isinstance(v, str) and UINT.fullmatch(v) for v in h.values()), h
    assert h["member_id"] == str(server.member_id)
    assert h["cluster_id"] == str(server.cluster_id)


async def assert_error(c: Cluster, path: str, status: int, code: int, message: str, **kw: Any) -> None:
    st, body, headers = await c.post(path, **kw)
    assert (st, body) == (status, {"error": message, "message": message, "code": code}), (st, body)
    assert headers["Content-Type"] == "application/json"


# ======================================================================= discovery and routing


async def test_version_health_metrics(one: Cluster) -> None:
    async with one.session.get(one.url("/version")) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert await r.read() == b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}'
    async with one.session.get(one.url("/health")) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await r.read() == b'{"health":"true"}'
    await one.put("m", "1")
    async with one.session.get(one.url("/metrics")) as r:
        text = await r.text()
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    for line in (
        "etcd_server_has_leader 1.0",
        "etcd_server_is_leader 1.0",
        "etcd_debugging_mvcc_current_revision 2.0",
        "etcd_server_proposals_pending 0.0",
    ):
        assert line in text.splitlines(), line
    for name in (
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_mvcc_db_total_size_in_bytes",
        'grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV"',
    ):
        assert name in text, name


async def test_router_errors_are_text_plain(one: Cluster) -> None:
    for method, path, status, text in (
        ("POST", "/v3/kv/nothing", 404, "Not Found\n"),
        ("POST", "/v3beta/nothing", 404, "Not Found\n"),
        ("POST", "/v3alpha/kv/range", 404, "404 page not found\n"),
        ("GET", "/nowhere", 404, "404 page not found\n"),
        ("GET", "/v3/kv/range", 405, "Method Not Allowed\n"),
        ("PUT", "/v3/kv/put", 405, "Method Not Allowed\n"),
        ("POST", "/version", 405, "Method Not Allowed\n"),
    ):
        async with one.session.request(method, one.url(path), data=b"{}") as r:
            assert (r.status, await r.text()) == (status, text), (method, path)
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
    async with one.session.options(one.url("/v3/kv/put")) as r:
        assert r.status == 200 and await r.read() == b""
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]


async def test_v3beta_alias_and_no_content_type_needed(one: Cluster) -> None:
    await one.put("a", "1")
    async with one.session.post(
        one.url("/v3beta/kv/range"), data=b'{"key":"YQ=="}', skip_auto_headers=["Content-Type"]
    ) as r:
        assert r.status == 200
        body = await r.json(content_type=None)
    assert body["kvs"][0]["value"] == b64("1")
    assert "Content-Type" not in r.request_info.headers  # sent bare, like etcd3gw's txn
    async with one.session.post(
        one.url("/v3/kv/range"), data=b'{"key":"YQ=="}', headers={"Content-Type": "text/plain"}
    ) as r:
        assert r.status == 200


# ============================================================================= KV shapes


async def test_put_range_delete_shapes(one: Cluster) -> None:
    server = one.servers[0]
    st, body, headers = await one.post("/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    assert st == 200 and list(body) == ["header"]
    check_header(body["header"], server)
    r1 = int(body["header"]["revision"])
    assert r1 == 2  # a fresh store is at revision 1
    assert headers["Grpc-Metadata-Content-Type"] == "application/grpc"
    out = await one.ok("/v3/kv/put", {"key": b64("foo"), "value": b64("bar2"), "prev_kv": True})
    assert out["prev_kv"] == {"key": "Zm9v", "create_revision": "2", "mod_revision": "2", "version": "1",
                              "value": "YmFy"}  # fmt: skip
    out = await one.ok("/v3/kv/range", {"key": b64("foo"), "sort_order": 0, "sort_target": 0})
    assert out["kvs"] == [{"key": "Zm9v", "create_revision": "2", "mod_revision": "3", "version": "2",
                           "value": "YmFyMg=="}]  # fmt: skip
    assert out["count"] == "1" and out["header"]["revision"] == "3"
    # missing key: nothing but the header
    out = await one.ok("/v3/kv/range", {"key": b64("nope")})
    assert list(out) == ["header"]
    # empty value: no "value" field
    await one.ok("/v3/kv/put", {"key": b64("empty")})
    out = await one.ok("/v3/kv/range", {"key": b64("empty"), "serializable": True})
    assert "value" not in out["kvs"][0]
    # delete of nothing: no "deleted", revision unchanged
    out = await one.ok("/v3/kv/deleterange", {"key": b64("nope")})
    assert list(out) == ["header"] and out["header"]["revision"] == "4"
    out = await one.ok("/v3/kv/deleterange", {"key": b64("foo"), "prev_kv": True})
    assert out["deleted"] == "1" and out["header"]["revision"] == "5"
    assert out["prev_kvs"][0]["value"] == "YmFyMg=="
    # unknown fields ignored; int64 as strings accepted
    await one.ok("/v3/kv/put", {"key": b64("k"), "value": b64("v"), "bogus": 1})
    out = await one.ok("/v3/kv/range", {"key": b64("k"), "limit": "1", "revision": "6"})
    assert out["kvs"][0]["mod_revision"] == "6"


async def test_read_only_txn_is_served_locally_without_a_log_entry(one: Cluster) -> None:
    """etcd's isTxnReadonly: a txn of ranges is answered after a read barrier, not proposed;
    a txn with any write goes through the log."""
    await one.put("ro", "v1")
    node = one.servers[0].node
    assert node is not None
    last = node.status()["last_index"]
    cmp = [{"key": b64("ro"), "result": "EQUAL", "target": "VALUE", "value": b64("v1")}]
    rng = {"request_range": {"key": b64("ro")}}
    out = await one.ok("/v3/kv/txn", {"compare": cmp, "success": [rng], "failure": []})
    assert out["succeeded"] is True
    assert out["responses"][0]["response_range"]["kvs"][0]["value"] == b64("v1")
    serial = {"request_range": {"key": b64("ro"), "serializable": True}}
    out = await one.ok("/v3/kv/txn", {"success": [serial]})
    assert out["responses"][0]["response_range"]["count"] == "1"
    assert node.status()["last_index"] == last
    await one.ok("/v3/kv/txn", {"success": [rng, {"request_put": {"key": b64("ro"), "value": b64("v2")}}]})
    assert node.status()["last_index"] == last + 1


async def test_txn_shapes(one: Cluster) -> None:
    await one.put("cas", "v1")
    cmp = [{"key": b64("cas"), "result": "EQUAL", "target": "VALUE", "value": b64("v1")}]
    out = await one.ok("/v3/kv/txn", {"compare": cmp, "success": [{"request_put": {"key": b64("cas"),
                       "value": b64("v2")}}], "failure": []})  # fmt: skip
    rev = out["header"]["revision"]
    assert out["succeeded"] is True and out["responses"] == [{"response_put": {"header": {"revision": rev}}}]
    out = await one.ok("/v3/kv/txn", {"compare": cmp, "success": [{"request_put": {"key": b64("cas"),
                       "value": b64("v3")}}], "failure": []})  # fmt: skip
    assert list(out) == ["header"] and out["header"]["revision"] == rev
    await assert_error(
        one, "/v3/kv/txn", 400, 3, "etcdserver: duplicate key given in txn request",
        body={"success": [{"request_put": {"key": "ZA==", "value": "MQ=="}},
                          {"request_put": {"key": "ZA==", "value": "Mg=="}}]},
    )  # fmt: skip


# ================================================================================ bad input


async def test_bad_input_errors(one: Cluster) -> None:
    cases: list[tuple[bytes, str, int, int, str]] = [
        (b'{"key": "Zm9v", ', "/v3/kv/put", 400, 3, "unexpected EOF"),
        (b'{"key":"!!!notb64","value":"eA=="}', "/v3/kv/put", 400, 3, "illegal base64 data at input byte 0"),
        (b'{"key":"Zm9vMQ","value":"eA=="}', "/v3/kv/put", 400, 3, "illegal base64 data at input byte 4"),
        (b'{"value":"eA=="}', "/v3/kv/put", 400, 3, "etcdserver: key is not provided"),
        (b"", "/v3/kv/range", 400, 3, "etcdserver: key is not provided"),
        (b"[]", "/v3/kv/put", 400, 3,
         "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
        (b'{"key":5}', "/v3/kv/put", 400, 3, "json: cannot unmarshal number into Go value of type []uint8"),
        (b'{"key":"aw==","value":"dg==","lease":1000.0}', "/v3/kv/put", 400, 3,
         "json: cannot unmarshal number 1000.0 into Go value of type int64"),
        (b'{"key":"aw==","keys_only":"true"}', "/v3/kv/range", 400, 3,
         "json: cannot unmarshal string into Go value of type bool"),
        (b'{"compare":[{"key":"Y2Fz","result":"EQUALS","target":"VALUE"}]}', "/v3/kv/txn", 400, 3,
         'unknown value "EQUALS" for enum etcdserverpb.Compare_CompareResult'),
        (b'{"key":"aw==","value":"dg==","lease":12345}', "/v3/kv/put", 404, 5,
         "etcdserver: requested lease not found"),
        (b'{"ID":12345}', "/v3/kv/lease/revoke", 404, 5, "etcdserver: requested lease not found"),
        (b'{"key":"aw==","revision":1000000}', "/v3/kv/range", 400, 11,
         "etcdserver: mvcc: required revision is a future revision"),
        (b'{"TTL":99999999999}', "/v3/lease/grant", 400, 11, "etcdserver: too large lease TTL"),
    ]  # fmt: skip
    for data, path, status, code, message in cases:
        await assert_error(one, path, status, code, message, data=data)


async def test_lease_exists_and_compacted(one: Cluster) -> None:
    out = await one.ok("/v3/lease/grant", {"TTL": 100, "ID": 4242})
    assert out["ID"] == "4242" and out["TTL"] == "100"
    await assert_error(one, "/v3/lease/grant", 412, 9, "etcdserver: lease already exists",
                       body={"TTL": 100, "ID": 4242})  # fmt: skip
    for i in range(4):
        await one.put("c", str(i))
    rev = await one.put("c", "last")
    out = await one.ok("/v3/kv/compaction", {"revision": rev - 1})
    assert list(out) == ["header"]
    await assert_error(one, "/v3/kv/range", 400, 11, "etcdserver: mvcc: required revision has been compacted",
                       body={"key": b64("c"), "revision": 2})  # fmt: skip


async def test_request_too_large(one: Cluster) -> None:
    value = base64.b64encode(b"x" * 2097152).decode()
    data = json.dumps({"key": "aw==", "value": value}).encode()
    await assert_error(
        one, "/v3/kv/put", 429, 8, "grpc: received message larger than max (2097160 vs. 2097152)", data=data
    )
    # just under the gRPC limit but over --max-request-bytes: the server's own check
    value = base64.b64encode(b"x" * 1_800_000).decode()
    st, body, _ = await one.post("/v3/kv/put", {"key": "aw==", "value": value})
    assert (st, body["code"], body["error"]) == (400, 3, "etcdserver: request is too large")


# ================================================================================== leases


async def test_lease_routes(one: Cluster) -> None:
    out = await one.ok("/v3/lease/grant", {"TTL": 30, "ID": 0})
    lease = int(out["ID"])
    assert lease > 0 and out["TTL"] == "30"
    await one.put("lk", "v", lease=lease)
    await one.put("lk2", "v", lease=str(lease))
    out = await one.ok("/v3/kv/lease/timetolive", {"ID": lease, "keys": True})
    assert out["ID"] == str(lease) and out["grantedTTL"] == "30" and out["TTL"] in ("29", "30")
    assert sorted(out["keys"]) == [b64("lk"), b64("lk2")]
    out = await one.ok("/v3/lease/timetolive", {"ID": lease})
    assert "keys" not in out
    # keepalive: a stream of objects in, one {"result":...} line per object out
    async with one.session.post(one.url("/v3/lease/keepalive"), data=json.dumps({"ID": lease}) * 2) as r:
        lines = (await r.read()).decode().splitlines()
    assert r.status == 200 and len(lines) == 2
    for line in lines:
        res = json.loads(line)["result"]
        assert res["ID"] == str(lease) and res["TTL"] == "30"
        check_header(res["header"], one.servers[0])
    out = await one.ok("/v3/kv/lease/leases", {})
    assert {"ID": str(lease)} in out["leases"]
    rev = int(out["header"]["revision"])
    out = await one.ok("/v3/kv/lease/revoke", {"ID": lease})
    assert int(out["header"]["revision"]) == rev + 1  # both keys deleted in one revision
    out = await one.ok("/v3/kv/lease/timetolive", {"ID": lease})
    assert out["TTL"] == "-1" and "grantedTTL" not in out
    async with one.session.post(one.url("/v3/lease/keepalive"), data=json.dumps({"ID": lease})) as r:
        res = json.loads(await r.read())["result"]
    assert "TTL" not in res and res["ID"] == str(lease)


async def test_lease_expiry_deletes_keys_in_one_revision_with_delete_events(one: Cluster) -> None:
    out = await one.ok("/v3/lease/grant", {"TTL": 1})
    lease = int(out["ID"])
    await one.put("exp/a", "1", lease=lease)
    rev = await one.put("exp/b", "2", lease=lease)
    async with one.session.post(
        one.url("/v3/watch"), json={"create_request": {"key": b64("exp/"), "range_end": b64("exp0")}}
    ) as r:
        messages = chunks(r)
        created = await asyncio.wait_for(messages.__anext__(), 5)
        assert created["result"]["created"] is True
        t0 = time.monotonic()
        msg = await asyncio.wait_for(messages.__anext__(), 10)
        elapsed = time.monotonic() - t0
    events = msg["result"]["events"]
    assert msg["result"]["header"]["revision"] == str(rev + 1)
    assert events == [
        {"type": "DELETE", "kv": {"key": b64("exp/a"), "mod_revision": str(rev + 1)}},
        {"type": "DELETE", "kv": {"key": b64("exp/b"), "mod_revision": str(rev + 1)}},
    ]
    assert elapsed < 5
    out = await one.ok("/v3/kv/range", {"key": b64("exp/"), "range_end": b64("exp0")})
    assert "kvs" not in out


# =================================================================================== watch


async def chunks(resp: Any) -> AsyncIterator[dict[str, Any]]:
    """One parsed message per HTTP chunk; fails if a chunk is not exactly one JSON object + newline."""
    buf = b""
    async for data, end_of_chunk in resp.content.iter_chunks():
        buf += data
        if end_of_chunk:
            assert buf.endswith(b"\n") and buf.count(b"\n") == 1, buf
            yield json.loads(buf)
            buf = b""
    assert buf == b"", buf


async def open_watch(
    c: Cluster, create: dict[str, Any], i: int = 0
) -> tuple[Any, AsyncIterator[dict[str, Any]]]:
    resp = await c.session.post(c.url("/v3/watch", i), json={"create_request": create})
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    return resp, chunks(resp)


async def take(it: AsyncIterator[dict[str, Any]], timeout: float = 5.0) -> dict[str, Any]:
    return (await asyncio.wait_for(it.__anext__(), timeout))["result"]  # type: ignore[no-any-return]


async def test_watch_framing_and_event_shapes(one: Cluster) -> None:
    server = one.servers[0]
    resp, it = await open_watch(one, {"key": b64("w/"), "range_end": b64("w0")})
    try:
        created = await take(it)
        assert created == {"header": created["header"], "created": True}
        check_header(created["header"], server)
        r1 = await one.put("w/a", "1")
        await one.put("x/other", "z")  # outside the range: no event
        await one.ok("/v3/kv/deleterange", {"key": b64("w/a")})
        ops = [{"request_put": {"key": b64(k), "value": "dA=="}} for k in ("w/b", "w/c")]
        await one.ok("/v3/kv/txn", {"success": ops})
        m1 = await take(it)
        assert m1["header"]["revision"] == str(r1)
        kv = {"key": b64("w/a"), "create_revision": str(r1), "mod_revision": str(r1), "version": "1"}
        assert m1["events"] == [{"kv": {**kv, "value": b64("1")}}]
        m2 = await take(it)
        assert m2["events"] == [{"type": "DELETE", "kv": {"key": b64("w/a"), "mod_revision": str(r1 + 2)}}]
        m3 = await take(it)  # one txn, one message
        assert [e["kv"]["key"] for e in m3["events"]] == [b64("w/b"), b64("w/c")]
        assert {e["kv"]["mod_revision"] for e in m3["events"]} == {str(r1 + 3)}
    finally:
        resp.close()


async def test_watch_from_start_revision_prev_kv_and_filters(one: Cluster) -> None:
    r1 = await one.put("h/a", "1")
    await one.put("h/a", "2")
    await one.ok("/v3/kv/deleterange", {"key": b64("h/a")})
    resp, it = await open_watch(one, {"key": b64("h/"), "range_end": b64("h0"), "start_revision": r1,
                                      "prev_kv": True})  # fmt: skip
    try:
        assert (await take(it))["created"] is True
        batch = await take(it)
        kinds = [(e.get("type", "PUT"), e["kv"]["mod_revision"], "prev_kv" in e) for e in batch["events"]]
        assert kinds == [("PUT", str(r1), False), ("PUT", str(r1 + 1), True), ("DELETE", str(r1 + 2), True)]
        r4 = await one.put("h/b", "live")
        live = await take(it)
        assert [e["kv"]["mod_revision"] for e in live["events"]] == [str(r4)]
    finally:
        resp.close()
    resp, it = await open_watch(one, {"key": b64("h/"), "range_end": b64("h0"), "start_revision": r1,
                                      "filters": ["NOPUT"]})  # fmt: skip
    try:
        await take(it)
        batch = await take(it)
        assert [e.get("type") for e in batch["events"]] == ["DELETE"]
    finally:
        resp.close()


async def test_watch_created_at_r_gets_exactly_the_events_after_r(one: Cluster) -> None:
    """Writes racing the watch creation: every revision after the created one, once, in order."""
    stop = asyncio.Event()
    written: list[int] = []

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            written.append(await one.put("race", str(n)))
            n += 1

    task = asyncio.create_task(writer())
    try:
        await asyncio.sleep(0.05)
        resp, it = await open_watch(one, {"key": b64("race")})
        created_at = int((await take(it))["header"]["revision"])
        await asyncio.sleep(0.2)
        stop.set()
        await task
        last = written[-1]
        seen: list[int] = []
        while not seen or seen[-1] < last:
            seen += [int(e["kv"]["mod_revision"]) for e in (await take(it))["events"]]
        resp.close()
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert seen == list(range(created_at + 1, last + 1))


async def test_watch_compacted_start_is_created_then_canceled(one: Cluster) -> None:
    for i in range(5):
        rev = await one.put("cw", str(i))
    await one.ok("/v3/kv/compaction", {"revision": rev - 1})
    resp, it = await open_watch(one, {"key": b64("cw"), "start_revision": 2})
    try:
        assert (await take(it))["created"] is True
        canceled = await take(it)
        check_header(canceled["header"], one.servers[0], revision=False)
        assert canceled["canceled"] is True and canceled["compact_revision"] == str(rev - 1)
    finally:
        resp.close()


async def test_watch_without_create_request_gets_no_headers(one: Cluster) -> None:
    with pytest.raises(TimeoutError):
        async with one.session.post(one.url("/v3/watch"), json={}, timeout=aiohttp.ClientTimeout(total=0.7)):
            pytest.fail("headers were sent")


async def test_watch_disconnect_cancels(one: Cluster) -> None:
    hub = one.servers[0].hub
    resp, it = await open_watch(one, {"key": b64("d")})
    await take(it)
    assert len(hub.watchers) == 1
    resp.close()
    deadline = time.monotonic() + 5
    while hub.watchers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not hub.watchers


async def test_watch_progress_notify() -> None:
    c = Cluster(1, progress_notify_interval=0.2)
    await c.start()
    try:
        rev = await c.put("p", "1")
        resp, it = await open_watch(c, {"key": b64("p"), "progress_notify": True})
        await take(it)
        progress = await take(it, 3)
        assert list(progress) == ["header"] and progress["header"]["revision"] == str(rev)
        resp.close()
    finally:
        await c.stop()


async def test_slow_watcher_is_canceled_and_memory_bounded() -> None:
    c = Cluster(1, watch_queue_limit=4)
    await c.start()
    try:
        hub = c.servers[0].hub
        resp, it = await open_watch(c, {"key": b64("s/"), "range_end": b64("s0")})
        await take(it)
        big = "x" * 300_000
        for i in range(60):  # ~18 MB of events, far beyond socket buffers: the reader does not read
            await c.put(f"s/{i}", big)
            if not hub.watchers:
                break
        assert not hub.watchers, "the slow watcher was not cancelled"
        last: dict[str, Any] = {}
        async for msg in it:  # now drain: the stream ends with the cancel message
            last = msg["result"]
        assert last["canceled"] is True and "too slow" in last["cancel_reason"]
        resp.close()
    finally:
        await c.stop()


# ====================================================================== cluster, status, quorum


async def test_member_list_and_status(one: Cluster) -> None:
    server = one.servers[0]
    out = await one.ok("/v3/cluster/member/list", {})
    check_header(out["header"], server, revision=False)
    assert out["members"] == [{"ID": str(server.member_id), "name": "m0",
                               "peerURLs": server.config.initial_advertise_peer_urls,
                               "clientURLs": server.client_urls}]  # fmt: skip
    out = await one.ok("/v3/maintenance/status", {})
    assert list(out) == ["header", "version", "dbSize", "leader", "raftIndex", "raftTerm", "raftAppliedIndex",
                         "dbSizeInUse"]  # fmt: skip
    assert out["leader"] == str(server.member_id) and out["version"] == "3.4.23"


async def test_three_members_forwarding_reads_and_quorum_loss() -> None:
    c = Cluster(3)
    await c.start()
    try:
        leader = await c.wait_leader()
        li = c.servers.index(leader)
        f1, f2 = [i for i in range(3) if i != li]
        rev = await c.put("fw", "from-follower", i=f1)  # a follower forwards the proposal
        out = await c.ok("/v3/kv/range", {"key": b64("fw")}, i=f2)  # linearizable read on another follower
        assert out["kvs"][0]["value"] == b64("from-follower") and int(out["header"]["revision"]) >= rev
        assert out["header"]["member_id"] == str(c.servers[f2].member_id)
        members = (await c.ok("/v3/cluster/member/list", {}, i=f1))["members"]
        assert [m["ID"] for m in members] == sorted((m["ID"] for m in members), key=int)
        assert {m["name"] for m in members} == {"m0", "m1", "m2"}
        # keepalive / timetolive on a follower are answered with the leader's clock (forwarded)
        lease = int((await c.ok("/v3/lease/grant", {"TTL": 60}, i=f1))["ID"])
        out = await c.ok("/v3/kv/lease/timetolive", {"ID": lease}, i=f2)
        assert out["grantedTTL"] == "60" and out["header"]["member_id"] == str(c.servers[f2].member_id)
        async with c.session.post(c.url("/v3/lease/keepalive", f2), json={"ID": lease}) as r:
            res = json.loads(await r.read())["result"]
        assert res["TTL"] == "60" and res["header"]["member_id"] == str(c.servers[f2].member_id)
        # quorum lost: writes and linearizable reads time out with 503; serializable reads still work
        await c.servers[li].stop()
        await c.servers[f1].stop()
        t0 = time.monotonic()
        await assert_error(c, "/v3/kv/put", 503, 14, "etcdserver: request timed out",
                           body={"key": b64("q"), "value": b64("1")}, i=f2)  # fmt: skip
        assert 1.0 < time.monotonic() - t0 < 5
        await assert_error(c, "/v3/kv/range", 503, 14, "etcdserver: request timed out",
                           body={"key": b64("fw")}, i=f2)  # fmt: skip
        out = await c.ok("/v3/kv/range", {"key": b64("fw"), "serializable": True}, i=f2)
        assert out["kvs"][0]["value"] == b64("from-follower")
        out = await c.ok("/v3/maintenance/status", {}, i=f2)
        assert "leader" not in out and out["errors"] == ["etcdserver: no leader"]
        async with c.session.get(c.url("/health", f2)) as r:
            assert r.status == 503 and await r.read() == b'{"health":"false"}'
    finally:
        await c.stop()


async def test_member_add_promote_remove() -> None:
    """member/add (learner) -> the new member starts with state existing -> promote -> remove."""
    c = Cluster(1)
    await c.start()
    ports = free_ports(2)
    names, all_ports = ["m0", "m1"], [*c.ports, *ports]
    joiner = KVServer(config_for(names, all_ports, 1, initial_cluster_state="existing"))
    try:
        peer = joiner.config.initial_advertise_peer_urls
        out = await c.ok("/v3/cluster/member/add", {"peerURLs": peer, "isLearner": True})
        new_id = out["member"]["ID"]
        assert out["member"] == {"ID": new_id, "peerURLs": peer, "isLearner": True}
        # the joiner derives the same ID from its peer URLs and the token
        assert new_id == str(member_id_for(peer, joiner.config.initial_cluster_token))
        assert [m["ID"] for m in out["members"]] == sorted((m["ID"] for m in out["members"]), key=int)
        assert {"ID": new_id, "peerURLs": peer, "isLearner": True} in out["members"]  # unstarted: no name
        await assert_error(c, "/v3/cluster/member/add", 412, 9, "etcdserver: Peer URLs already exists",
                           body={"peerURLs": peer})  # fmt: skip
        await assert_error(c, "/v3/cluster/member/promote", 404, 5, "etcdserver: member not found",
                           body={"ID": "12345"})  # fmt: skip
        await joiner.start()
        c.servers.append(joiner)
        assert str(joiner.member_id) == new_id
        deadline = time.monotonic() + 10
        while joiner.machine.revision < c.servers[0].machine.revision or not joiner.state.attributes.get(
            joiner.node_id, {}
        ).get("name"):
            assert time.monotonic() < deadline, "the learner did not catch up"
            await asyncio.sleep(0.05)
        listed = (await c.ok("/v3/cluster/member/list", {}, i=1))["members"]
        assert {m["name"] for m in listed} == {"m0", "m1"}
        st = await c.ok("/v3/maintenance/status", {}, i=1)
        assert st["isLearner"] is True and st["header"]["member_id"] == new_id
        out = await c.ok("/v3/cluster/member/promote", {"ID": int(new_id)}, i=1)  # forwarded to the leader
        assert all("isLearner" not in m for m in out["members"])
        msg = "etcdserver: can only promote a learner member"
        await assert_error(c, "/v3/cluster/member/promote", 412, 9, msg, body={"ID": new_id})
        await c.put("two", "voters")
        out = await c.ok("/v3/cluster/member/remove", {"ID": new_id})
        assert [m["ID"] for m in out["members"]] == [str(c.servers[0].member_id)]
    finally:
        await c.stop()


async def test_member_update_sets_peer_urls_through_the_log_and_raft_dials_them(tmp_path: Any) -> None:
    """cluster/member/update: etcd's errors (unknown ID, another member's URL, bad URLs); the new
    peer URLs are listed by every member and every member's raft transport dials the first one,
    so the member restarted there catches up, and keeps being listed with them although its flags
    still advertise the old URL."""
    c = Cluster(3)
    for i, s in enumerate(c.servers):
        s.config = replace(s.config, data_dir=str(tmp_path / f"m{i}"))
    await c.start()
    try:
        leader = await c.wait_leader()
        mi = next(i for i, s in enumerate(c.servers) if s is not leader)
        ai = next(i for i in range(3) if i not in (mi, c.servers.index(leader)))
        moving = c.servers[mi]
        mid = str(moving.member_id)
        taken = c.servers[ai].config.initial_advertise_peer_urls
        await assert_error(c, "/v3/cluster/member/update", 404, 5, "etcdserver: member not found",
                           body={"ID": "12345", "peerURLs": ["http://127.0.0.1:1"]}, i=ai)  # fmt: skip
        await assert_error(c, "/v3/cluster/member/update", 404, 5, "etcdserver: member not found",
                           body={"peerURLs": ["http://127.0.0.1:1"]})  # fmt: skip
        await assert_error(c, "/v3/cluster/member/update", 412, 9, "etcdserver: Peer URLs already exists",
                           body={"ID": mid, "peerURLs": taken}, i=ai)  # fmt: skip
        for bad in ([], ["127.0.0.1:1"], ["http://127.0.0.1"], "http://127.0.0.1:1", [7]):
            await assert_error(c, "/v3/cluster/member/update", 400, 3,
                               "etcdserver: given member URLs are invalid",
                               body={"ID": mid, "peerURLs": bad})  # fmt: skip
        old_urls = moving.config.initial_advertise_peer_urls
        same = await c.ok("/v3/cluster/member/update", {"ID": mid, "peerURLs": old_urls}, i=mi)
        assert {"ID": mid, "name": f"m{mi}", "peerURLs": old_urls,
                "clientURLs": moving.client_urls} in same["members"]  # fmt: skip
        new_url = f"http://127.0.0.1:{free_ports(1)[0]}"
        out = await c.ok("/v3/cluster/member/update", {"ID": mid, "peerURLs": [new_url]}, i=ai)  # forwarded
        assert set(out) == {"header", "members"} and "revision" not in out["header"]
        assert out["header"]["member_id"] == str(c.servers[ai].member_id)
        assert [m["peerURLs"] for m in out["members"] if m["ID"] == mid] == [[new_url]]
        address = new_url.removeprefix("http://")
        for s in (leader, c.servers[ai]):
            listed = (await c.ok("/v3/cluster/member/list", {}, i=c.servers.index(s)))["members"]
            assert [m["peerURLs"] for m in listed if m["ID"] == mid] == [[new_url]]
            assert s.node is not None and s.node.address_of(moving.node_id) == address
        await moving.stop()
        await c.put("while-away", "1", i=ai)
        # Restarted listening on the new URL, but still advertising the old one in its flags.
        again = KVServer(replace(moving.config, listen_peer_urls=[new_url]))
        c.servers[mi] = again
        await again.start()
        out = await c.ok("/v3/kv/range", {"key": b64("while-away")}, i=mi)
        assert out["kvs"][0]["value"] == b64("1")
        publishing = [t for t in again._tasks if t.get_name() == "kv-publish"]
        await asyncio.wait_for(asyncio.gather(*publishing), 5)  # its name and URLs are in the log
        await c.put("published", "1", i=mi)
        await c.wait_leader()
        for i in range(3):
            listed = (await c.ok("/v3/cluster/member/list", {}, i=i))["members"]
            assert [m["peerURLs"] for m in listed if m["ID"] == mid] == [[new_url]], i
    finally:
        await c.stop()


def test_peer_urls_change_only_through_member_add_or_update() -> None:
    """The replicated attributes: a member's own publication fills its peer URLs in only while none
    are recorded; a ``raft`` command (member add/update) sets them and tells ``on_peer_urls``, the
    hook that points the raft transport at the new URL (etcd: raft attributes change only by a
    configuration change, a restarted member publishes name and client URLs only)."""
    from examples.kvstore.machine import KVMachine
    from examples.kvstore.server import ATTR_TAG, ReplicatedState

    state = ReplicatedState(KVMachine())
    moved: list[tuple[str, list[str]]] = []
    state.on_peer_urls = lambda nid, urls: moved.append((nid, urls))

    def apply(index: int, **attrs: Any) -> None:
        state.apply(ATTR_TAG + json.dumps({"id": "0a", **attrs}).encode(), index)

    apply(1, name="m0", clientURLs=["http://c:1"], peerURLs=["http://p:1"])
    assert state.attributes["0a"]["peerURLs"] == ["http://p:1"] and moved == []
    apply(2, peerURLs=["http://p:2"], raft=True)
    assert state.attributes["0a"]["peerURLs"] == ["http://p:2"] and moved == [("0a", ["http://p:2"])]
    apply(3, name="m0", clientURLs=["http://c:2"], peerURLs=["http://p:1"])  # restarted, old flags
    assert state.attributes["0a"] == {"name": "m0", "clientURLs": ["http://c:2"], "peerURLs": ["http://p:2"]}
    assert len(moved) == 1


# ============================================================================ TLS, snapshots


def _openssl(d: Any, *args: str) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)


def _cert(d: Any, name: str, ca: str | None) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key"]
    if ca is None:
        _openssl(d, "req", "-x509", *ec, "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}")
        return
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(d, "req", *ec, "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext")  # fmt: skip


async def test_client_and_peer_tls(tmp_path: Any) -> None:
    """https clients with client-cert-auth, mutual TLS between peers, lease calls forwarded over https."""
    import shutil
    import ssl

    from examples.kvstore.server import ClientTls
    from raftlib.transport import TlsConfig

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    _cert(tmp_path, "ca", None)
    for n in ("m0", "m1", "m2", "client"):
        _cert(tmp_path, n, "ca")
    names, ports = ["m0", "m1", "m2"], free_ports(6)
    servers = []
    for i, n in enumerate(names):
        cfg = config_for(names, ports, i)
        cfg.listen_client_urls = cfg.advertise_client_urls = [f"https://127.0.0.1:{ports[2 * i]}"]
        cert, key, ca = str(tmp_path / f"{n}.crt"), str(tmp_path / f"{n}.key"), str(tmp_path / "ca.crt")
        cfg.client_tls = ClientTls(cert, key, ca, client_cert_auth=True)
        cfg.peer_tls = TlsConfig(cert, key, ca, peer_identity="address")  # as --peer-cert-file sets it
        servers.append(KVServer(cfg))
    c = Cluster(0)
    c.servers, c.names, c.ports = servers, names, ports
    await c.start()
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
    await c.session.close()
    c.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    try:
        leader = await c.wait_leader()
        f = next(i for i, s in enumerate(servers) if s is not leader)
        assert c.url("/", f).startswith("https://")
        await c.put("secure", "yes", i=f)
        lease = int((await c.ok("/v3/lease/grant", {"TTL": 30}, i=f))["ID"])
        out = await c.ok("/v3/lease/timetolive", {"ID": lease}, i=f)  # forwarded to the leader over https
        assert out["grantedTTL"] == "30"
        plain = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))  # no client certificate
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=plain)) as anon:
            with pytest.raises(aiohttp.ClientError):
                async with anon.post(c.url("/v3/kv/range", f), json={"key": b64("secure")}) as r:
                    await r.read()
    finally:
        await c.stop()


def test_state_snapshot_roundtrip_and_watch_resync() -> None:
    """A member whose state is replaced by a snapshot catches its watchers up from the history."""
    from examples.kvstore.machine import KVMachine
    from examples.kvstore.server import ReplicatedState
    from examples.kvstore.watch import WatchHub

    def put(st: ReplicatedState, index: int, key: str, value: str) -> None:
        st.apply(b"K" + st.kv.prepare_put({"key": b64(key), "value": b64(value)}), index)

    ahead = ReplicatedState(KVMachine())
    ahead.apply(b'A{"id":"00000000000000aa","name":"x","clientURLs":["http://c"],"cluster_id":7}', 1)
    behind = ReplicatedState(KVMachine())
    hub = WatchHub(behind.kv)
    hub.attach()
    for i in range(2, 6):
        put(ahead, i, f"k{i}", "v")
        if i < 4:
            put(behind, i, f"k{i}", "v")
    watcher, created = hub.create(b"k", b"l")
    assert created == 3
    single, _ = hub.create(b"k4", b"")  # single-key watchers catch up too, and only on their key
    other, _ = hub.create(b"k2", b"")
    buf = io.BytesIO()
    ahead.snapshot().write(buf)
    behind.restore(buf.getvalue())
    assert behind.attributes == {"00000000000000aa": {"name": "x", "clientURLs": ["http://c"]}}
    assert behind.cluster_id == 7 and behind.kv.revision == ahead.kv.revision == 5
    hub.resync()
    got = [(item[1], [e["kv"]["key"] for e in item[2]]) for item in watcher.queue]
    assert got == [(4, [b64("k4")]), (5, [b64("k5")])]
    put(behind, 6, "k6", "v")  # live events continue after the caught-up ones, without a gap
    assert [item[1] for item in watcher.queue] == [4, 5, 6]
    assert [(item[1], [e["kv"]["key"] for e in item[2]]) for item in single.queue] == [(4, [b64("k4")])]
    assert not other.queue


def test_a_revision_is_offered_only_to_the_watchers_it_may_match() -> None:
    """Rule: with thousands of single-key watches, a write costs a dict lookup per key it touches
    plus one offer per range watcher, not one call per watcher on the apply path."""
    from unittest import mock

    from examples.kvstore.machine import KVMachine
    from examples.kvstore.watch import Watcher, WatchHub

    machine = KVMachine()
    hub = WatchHub(machine)
    hub.attach()
    singles = [hub.create(f"k{i}".encode(), b"")[0] for i in range(1000)]
    twin, _ = hub.create(b"k5", b"")
    ranged, _ = hub.create(b"k", b"l")
    elsewhere, _ = hub.create(b"x", b"y")
    offered: list[Watcher] = []
    original = Watcher.offer

    def counting(self: Watcher, revision: int, events: Any) -> None:
        offered.append(self)
        original(self, revision, events)

    with mock.patch.object(Watcher, "offer", counting):
        machine.apply(machine.prepare_put({"key": b64("k5"), "value": b64("v")}), 1)
    assert sorted(map(id, offered)) == sorted(map(id, [singles[5], twin, ranged, elsewhere]))
    assert [len(w.queue) for w in (singles[5], twin, ranged)] == [1, 1, 1]
    assert not elsewhere.queue and not any(w.queue for i, w in enumerate(singles) if i != 5)
    for w in (singles[5], twin):  # removing the last watcher of a key drops the key's entry
        hub.remove(w)
    assert b"k5" not in hub._by_key and len(hub.watchers) == 1001
    machine.apply(machine.prepare_put({"key": b64("k5"), "value": b64("w")}), 2)
    assert len(ranged.queue) == 2 and len(singles[5].queue) == 1


def test_watchers_of_one_stream_share_a_queue_budget() -> None:
    """Rule: a stream's watchers together queue at most the stream budget; the watcher that would
    queue past it is cancelled as too slow (its queue freed), the others keep their messages."""
    from examples.kvstore.machine import KVMachine
    from examples.kvstore.watch import QueueBudget, WatchHub

    machine = KVMachine()
    hub = WatchHub(machine, queue_limit=4)
    hub.attach()
    budget = QueueBudget(5)
    watchers = [hub.create(b"p/", b"p0", budget=budget)[0] for _ in range(3)]
    for index, key in enumerate(("p/1", "p/2"), 1):
        machine.apply(machine.prepare_put({"key": b64(key), "value": b64("v")}), index)
    cancelled = [w for w in watchers if w.overflowed]
    kept = [w for w in watchers if not w.overflowed]
    assert len(cancelled) == 1 and [len(w.queue) for w in kept] == [2, 2]
    assert list(cancelled[0].queue) == [
        ("cancel", "watcher is too slow: more than 5 messages of its stream were waiting to be sent", 0)
    ]
    assert budget.used == 5 and cancelled[0] not in hub.watchers

    async def drain() -> None:
        for w in watchers:
            while w.queue:
                await w.get(0)

    asyncio.run(drain())
    assert budget.used == 0
    with pytest.raises(ValueError):
        QueueBudget(0)


async def test_a_joined_member_restarts_from_its_data_dir_and_catches_up(tmp_path: Any) -> None:
    """etcd's runbook: member add, start the new member with --initial-cluster-state existing,
    later restart it with the same flags: it comes back from its data dir (same member ID, no
    second join), catches up on what it missed and serves linearizable reads."""
    c = Cluster(2, data_dir=None)
    for i, s in enumerate(c.servers):
        s.config = replace(s.config, data_dir=str(tmp_path / f"m{i}"))
    await c.start()
    ports = free_ports(2)
    names, all_ports = ["m0", "m1", "m2"], [*c.ports, *ports]
    cfg = config_for(names, all_ports, 2, initial_cluster_state="existing", data_dir=str(tmp_path / "m2"))
    try:
        out = await c.ok("/v3/cluster/member/add", {"peerURLs": cfg.initial_advertise_peer_urls})
        new_id = out["member"]["ID"]
        joiner = KVServer(cfg)
        await joiner.start()
        c.servers.append(joiner)
        await c.put("before", "restart")
        await c.wait_leader()
        await joiner.stop()
        c.servers.remove(joiner)
        for i in range(20):
            await c.put(f"missed{i}", "x")
        again = KVServer(cfg)
        await again.start()
        c.servers.append(again)
        assert str(again.member_id) == new_id
        out = await c.ok("/v3/kv/range", {"key": b64("missed19")}, i=2)
        assert out["kvs"][0]["value"] == b64("x")
        listed = (await c.ok("/v3/cluster/member/list", {}, i=2))["members"]
        assert sorted(m["name"] for m in listed) == names and len(listed) == 3
    finally:
        await c.stop()

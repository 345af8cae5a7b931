"""Auth (RBAC) of the etcd-compatible store, as etcd 3.4 answers it.

Scenarios on in-process clusters (raft over loopback TCP), through the JSON gateway and gRPC on the
same client URL:

* enabling auth is refused until a root user holding the root role exists;
* a reader (READ on a prefix) and a writer (READWRITE on the prefix): a reader writing gets
  ``etcdserver: permission denied`` (gRPC PERMISSION_DENIED, gateway 403 + code 7), a key outside
  the prefix is refused, a txn comparing a forbidden key is refused, a watch on a forbidden key is
  created-and-canceled with etcd's reason;
* wrong password, missing token, unknown token, expired token: etcd's codes and messages;
* a token from one member works on another (Authenticate goes through Raft, as in etcd);
* the auth store reaches followers, survives a snapshot and a restart; a snapshot without an auth
  section (an older store) loads with auth disabled;
* JWT tokens (``--auth-token jwt,...``): etcd's claims and token bytes, forged, tampered, expired
  and malformed tokens refused, a token minted by one member accepted by the others and after a
  restart, ``revision of auth store is old`` after an auth change, every bad flag value exits 2.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
grpc = pytest.importorskip("grpc")

from examples.kvstore import auth  # noqa: E402
from examples.kvstore.grpcapi import grpc_target  # noqa: E402
from examples.kvstore.machine import KVMachine  # noqa: E402
from examples.kvstore.proto.stubs import (  # noqa: E402
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)
from examples.kvstore.server import KVServer  # noqa: E402
from tests.test_kv_api import Cluster, b64  # noqa: E402


def prefix_end(p: str) -> str:
    return b64(auth.prefix_end(p.encode()))


async def setup_users(c: Cluster, i: int = 0) -> None:
    """root (root role), reader (READ on app/), writer (READWRITE on app/); auth not yet enabled."""
    for name, pw in (("root", "rootpw"), ("reader", "rpw"), ("writer", "wpw")):
        await c.ok("/v3/auth/user/add", {"name": name, "password": pw}, i)
    await c.ok("/v3/auth/role/add", {"name": "r"}, i)
    await c.ok("/v3/auth/role/add", {"name": "w"}, i)
    perm = {"key": b64("app/"), "range_end": prefix_end("app/")}
    await c.ok("/v3/auth/role/grant", {"name": "r", "perm": {**perm, "permType": "READ"}}, i)
    await c.ok("/v3/auth/role/grant", {"name": "w", "perm": {**perm, "permType": "READWRITE"}}, i)
    await c.ok("/v3/auth/user/grant", {"user": "root", "role": "root"}, i)
    await c.ok("/v3/auth/user/grant", {"user": "reader", "role": "r"}, i)
    await c.ok("/v3/auth/user/grant", {"user": "writer", "role": "w"}, i)


async def token_of(c: Cluster, name: str, pw: str, i: int = 0) -> str:
    out = await c.ok("/v3/auth/authenticate", {"name": name, "password": pw}, i)
    return str(out["token"])


async def post_as(c: Cluster, token: str | None, path: str, body: Any, i: int = 0) -> tuple[int, Any]:
    headers = {"Authorization": token} if token else {}
    status, out, _ = await c.post(path, body, i, headers=headers)
    return status, out


def etcd_body(code: int, message: str) -> dict[str, Any]:
    return {"error": message, "message": message, "code": code}


@pytest.fixture
async def one() -> AsyncIterator[Cluster]:
    c = Cluster(1)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def three() -> AsyncIterator[Cluster]:
    c = Cluster(3)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_enable_is_refused_without_a_root_user_holding_the_root_role(one: Cluster) -> None:
    status, out = await post_as(one, None, "/v3/auth/enable", {})
    assert (status, out) == (412, etcd_body(9, "etcdserver: root user does not exist"))
    await one.ok("/v3/auth/user/add", {"name": "root", "password": "pw"})
    status, out = await post_as(one, None, "/v3/auth/enable", {})
    assert (status, out) == (412, etcd_body(9, "etcdserver: root user does not have root role"))
    status, out = await post_as(one, None, "/v3/auth/user/add", {"name": "root", "password": "x"})
    assert (status, out) == (412, etcd_body(9, "etcdserver: user name already exists"))
    status, out = await post_as(one, None, "/v3/auth/user/grant", {"user": "root", "role": "nope"})
    assert (status, out) == (412, etcd_body(9, "etcdserver: role name not found"))
    await one.ok("/v3/auth/user/grant", {"user": "root", "role": "root"})
    before = await one.ok("/v3/auth/status", {})
    assert "enabled" not in before
    await one.ok("/v3/auth/enable", {})
    after = await one.ok("/v3/auth/status", {})
    assert after["enabled"] is True and int(after["authRevision"]) > int(before["authRevision"])
    # Auth management now needs root; the root user cannot be deleted while auth is on.
    status, out = await post_as(one, None, "/v3/auth/user/list", {})
    assert (status, out) == (400, etcd_body(3, "etcdserver: user name is empty"))
    root = await token_of(one, "root", "pw")
    status, out = await post_as(one, root, "/v3/auth/user/delete", {"name": "root"})
    assert (status, out) == (400, etcd_body(3, "etcdserver: invalid auth management"))
    status, out = await post_as(one, root, "/v3/auth/user/list", {})
    assert status == 200 and out["users"] == ["root"]
    status, _ = await post_as(one, root, "/v3/auth/disable", {})
    assert status == 200
    assert "enabled" not in await one.ok("/v3/auth/status", {})
    await one.ok("/v3/kv/put", {"key": b64("free"), "value": b64("again")})
    async with one.session.get(one.url("/metrics")) as r:  # counted under etcd's own labels
        text = await r.text()
    assert 'grpc_code="FailedPrecondition",grpc_method="UserAdd",grpc_service="etcdserverpb.Auth"' in text


async def test_gateway_reader_writer_prefix_and_token_errors(three: Cluster) -> None:
    c = three
    await setup_users(c)
    await c.ok("/v3/auth/enable", {})
    put = {"key": b64("app/x"), "value": b64("1")}
    # No token, an unknown token, a wrong password: etcd's answers.
    assert await post_as(c, None, "/v3/kv/put", put) == (400, etcd_body(3, auth.MSG_USER_EMPTY))
    assert await post_as(c, "bogus.1", "/v3/kv/put", put) == (401, etcd_body(16, auth.MSG_INVALID_TOKEN))
    status, out = await post_as(c, None, "/v3/auth/authenticate", {"name": "reader", "password": "bad"})
    assert (status, out) == (400, etcd_body(3, auth.MSG_AUTH_FAILED))
    status, out = await post_as(c, None, "/v3/auth/authenticate", {"name": "ghost", "password": "x"})
    assert (status, out) == (400, etcd_body(3, auth.MSG_AUTH_FAILED))

    writer = await token_of(c, "writer", "wpw", 1)
    reader = await token_of(c, "reader", "rpw", 2)
    # A token assigned through one member is accepted by every member (replicated Authenticate).
    for i in range(3):
        status, _ = await post_as(c, writer, "/v3/kv/put", put, i)
        assert status == 200
    status, out = await post_as(c, reader, "/v3/kv/put", put)
    assert (status, out) == (403, etcd_body(7, "etcdserver: permission denied"))
    status, out = await post_as(c, reader, "/v3/kv/range", {"key": b64("app/x")})
    assert status == 200 and base64.b64decode(out["kvs"][0]["value"]) == b"1"
    whole = {"key": b64("app/"), "range_end": prefix_end("app/")}
    assert (await post_as(c, reader, "/v3/kv/range", whole))[0] == 200
    # Outside the prefix: the whole range must be covered, one key past it is enough to refuse.
    for body in ({"key": b64("apq")}, {"key": b64("app/"), "range_end": b64("app1")}):
        assert (await post_as(c, reader, "/v3/kv/range", body))[0] == 403
    assert (await post_as(c, writer, "/v3/kv/put", {"key": b64("other"), "value": b64("v")}))[0] == 403
    # A txn needs permission on every key it touches, compares included.
    txn = {
        "compare": [{"key": b64("secret"), "target": "VERSION", "result": "EQUAL", "version": "0"}],
        "success": [{"request_put": {"key": b64("app/y"), "value": b64("2")}}],
    }
    status, out = await post_as(c, writer, "/v3/kv/txn", txn)
    assert (status, out) == (403, etcd_body(7, "etcdserver: permission denied"))
    txn["compare"][0]["key"] = b64("app/y")
    assert (await post_as(c, writer, "/v3/kv/txn", txn))[0] == 200
    # The gateway also accepts JSON (lowerCamel) field names: the check sees them too.
    camel = {"success": [{"requestDeleteRange": {"key": b64("secret")}}]}
    assert (await post_as(c, writer, "/v3/kv/txn", camel))[0] == 403
    camel = {"key": b64("app/"), "rangeEnd": b64("b")}
    assert (await post_as(c, reader, "/v3/kv/range", camel))[0] == 403
    # A watch the user may not read: created and canceled with etcd's reason.
    status, out = await post_as(c, reader, "/v3/watch", {"create_request": {"key": b64("secret")}})
    assert (
        status == 200
        and out["result"]["canceled"]
        and out["result"]["cancel_reason"] == (auth.WATCH_DENIED_REASON)
    )
    # Revoking a lease needs write permission on every key attached to it.
    lease = (await c.ok("/v3/lease/grant", {"TTL": "60"}))["ID"]
    assert (await post_as(c, writer, "/v3/kv/put", {**put, "lease": lease}))[0] == 200
    for i in range(3):  # followers forward timetolive to the leader, with the caller's token
        status, out = await post_as(c, reader, "/v3/lease/timetolive", {"ID": lease, "keys": True}, i)
        assert status == 200 and out["keys"] == [b64("app/x")], (i, out)
    assert (await post_as(c, None, "/v3/lease/timetolive", {"ID": lease}))[1] == etcd_body(
        3, auth.MSG_USER_EMPTY
    )
    status, out = await post_as(c, reader, "/v3/lease/revoke", {"ID": lease})
    assert (status, out) == (403, etcd_body(7, "etcdserver: permission denied"))
    assert (await post_as(c, writer, "/v3/lease/revoke", {"ID": lease}))[0] == 200
    # Compaction and auth management need the root role.
    assert (await post_as(c, writer, "/v3/kv/compaction", {"revision": "1"}))[0] == 403
    assert (await post_as(c, writer, "/v3/auth/user/list", {}))[0] == 403


async def test_expired_token_is_an_invalid_token(one: Cluster) -> None:
    await setup_users(one)
    await one.ok("/v3/auth/enable", {})
    one.servers[0].machine.tokens.ttl = 0.2
    token = await token_of(one, "reader", "rpw")
    assert (await post_as(one, token, "/v3/kv/range", {"key": b64("app/a")}))[0] == 200
    await asyncio.sleep(0.3)
    status, out = await post_as(one, token, "/v3/kv/range", {"key": b64("app/a")})
    assert (status, out) == (401, etcd_body(16, "etcdserver: invalid auth token"))


async def test_grpc_permission_denied_txn_and_watch_on_a_follower(three: Cluster) -> None:
    c = three
    await setup_users(c)
    leader = await c.wait_leader()
    follower = next(s for s in c.servers if s is not leader)
    async with grpc.aio.insecure_channel(grpc_target(leader.client_urls[0])) as ch:
        authn = rpc_pb2_grpc.AuthStub(ch)
        await authn.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=5)
        status = await authn.AuthStatus(rpc_pb2.AuthStatusRequest(), timeout=5)
        assert status.enabled and status.authRevision > 0
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await authn.Authenticate(rpc_pb2.AuthenticateRequest(name="reader", password="x"), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.details() == auth.MSG_AUTH_FAILED
        reader = (await authn.Authenticate(rpc_pb2.AuthenticateRequest(name="reader", password="rpw"))).token
        writer = (await authn.Authenticate(rpc_pb2.AuthenticateRequest(name="writer", password="wpw"))).token
    async with grpc.aio.insecure_channel(grpc_target(follower.client_urls[0])) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await kv.Put(rpc_pb2.PutRequest(key=b"app/k", value=b"v"), timeout=5)
        assert (empty.value.code(), empty.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: user name is empty",
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await kv.Put(rpc_pb2.PutRequest(key=b"app/k", value=b"v"), metadata=(("token", reader),))
        assert (denied.value.code(), denied.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "etcdserver: permission denied",
        )
        await kv.Put(rpc_pb2.PutRequest(key=b"app/k", value=b"v"), metadata=(("token", writer),), timeout=5)
        got = await kv.Range(rpc_pb2.RangeRequest(key=b"app/k"), metadata=(("token", reader),), timeout=5)
        assert got.kvs[0].value == b"v"
        txn = rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=b"app/k", target=rpc_pb2.Compare.VALUE, value=b"v")],
            success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"top/secret"))],
        )
        with pytest.raises(grpc.aio.AioRpcError) as txn_denied:
            await kv.Txn(txn, metadata=(("token", reader),), timeout=5)
        assert txn_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await kv.Range(rpc_pb2.RangeRequest(key=b"app/k"), metadata=(("token", "nope.7"),), timeout=5)
        assert (invalid.value.code(), invalid.value.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "etcdserver: invalid auth token",
        )
        # A watch on a key the user may not read is created and canceled at once, as in etcd.
        call = rpc_pb2_grpc.WatchStub(ch).Watch(metadata=(("token", reader),))
        await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"top/secret")))
        answer = await asyncio.wait_for(call.read(), 5)
        assert answer.created and answer.canceled
        assert answer.cancel_reason == auth.WATCH_DENIED_REASON
        await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"app/k")))
        answer = await asyncio.wait_for(call.read(), 5)
        assert answer.created and not answer.canceled
        call.cancel()
        # Lock and election: READ+WRITE on the name's prefix (the reader has READ only), Observe READ.
        md = (("token", reader),)
        with pytest.raises(grpc.aio.AioRpcError) as lock_denied:
            await v3lock_pb2_grpc.LockStub(ch).Lock(
                v3lock_pb2.LockRequest(name=b"app/L"), metadata=md, timeout=5
            )
        assert lock_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        observe = v3election_pb2_grpc.ElectionStub(ch).Observe(
            v3election_pb2.LeaderRequest(name=b"top/E"), metadata=md, timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as observe_denied:
            await observe.read()
        assert observe_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The auth store reached every member through Raft.
    for s in c.servers:
        assert s.machine.auth.enabled and set(s.machine.auth.users) == {"root", "reader", "writer"}


def test_snapshot_keeps_auth_and_an_older_snapshot_loads_with_auth_disabled() -> None:
    m = KVMachine()
    cmds = [
        {"a": "user_add", "name": "root", "password": auth.hash_password("pw", iterations=1000)},
        {"a": "role_add", "name": "r"},
        {"a": "role_grant", "name": "r", "perm": {"permType": auth.READ, "key": b"a", "range_end": b"b"}},
        {"a": "user_grant", "user": "root", "role": "root"},
        {"a": "enable"},
    ]
    for i, cmd in enumerate(cmds, 1):
        assert "error" not in m.apply(m.prepare_auth(cmd), i)
    data = m.snapshot()
    restored = KVMachine()
    restored.restore(data)
    assert restored.auth.dump() == m.auth.dump() and restored.auth.enabled
    assert auth.check_password("pw", restored.auth.users["root"].password)
    assert restored.snapshot() == data
    old = json.loads(data)
    del old["auth"]
    older = KVMachine()
    older.restore(json.dumps(old).encode())
    assert not older.auth.enabled and not older.auth.users
    # A store that never used auth writes no auth section (older readers keep loading it).
    assert "auth" not in json.loads(KVMachine().snapshot())


def test_a_write_checked_before_an_auth_change_is_refused_as_old_revision() -> None:
    """etcd's ErrAuthOldRevision: a command stamped with the auth revision it was checked at is
    refused at apply when the auth store changed in between; with auth off nothing is stamped."""
    m = KVMachine()
    put = {"key": b64("k"), "value": b64("v")}
    token = auth.CHECKED.set(("root", 0))
    try:
        assert b'"au"' not in m.prepare_put(put)  # auth disabled: no stamp, no cost
        for i, cmd in enumerate(
            [
                {"a": "user_add", "name": "root", "password": ""},
                {"a": "user_grant", "user": "root", "role": "root"},
                {"a": "enable"},
            ],
            1,
        ):
            assert "error" not in m.apply(m.prepare_auth(cmd), i)
        auth.CHECKED.set(("root", m.auth.revision))
        current = m.prepare_put(put)
        auth.CHECKED.set(("root", m.auth.revision - 1))
        stale = m.prepare_put(put)
    finally:
        auth.CHECKED.reset(token)
    assert "error" not in m.apply(current, 10)
    err = m.apply(stale, 11)["error"]
    assert (err.grpc_code, err.message) == (3, "etcdserver: revision of auth store is old")


def test_permission_intervals_and_token_expiry() -> None:
    state = auth.AuthState()
    state.users["u"] = auth.User("", ["r"])
    state.roles["r"] = [
        {"permType": auth.READ, "key": b"a", "range_end": b"c"},
        {"permType": auth.READ, "key": b"c", "range_end": b"d"},
        {"permType": auth.WRITE, "key": b"k", "range_end": b""},
        {"permType": auth.READWRITE, "key": b"z", "range_end": b"\0"},
    ]
    state.enabled = True
    state.check_op("u", b"a", b"d", auth.READ)  # adjacent intervals merge
    state.check_op("u", b"k", b"", auth.WRITE)
    state.check_op("u", b"zz", b"\0", auth.WRITE)  # from zz to the end
    for key, end, want in ((b"a", b"d\0", auth.READ), (b"k", b"", auth.READ), (b"kk", b"", auth.WRITE)):
        with pytest.raises(Exception) as err:
            state.check_op("u", key, end, want)
        assert str(err.value) == auth.MSG_PERMISSION_DENIED
    now = [100.0]
    tokens = auth.TokenTable(clock=lambda: now[0], ttl=10)
    tokens.assign("t.1", "u", 1)
    now[0] += 9
    assert tokens.user_of("t.1") == "u"  # use restarts the TTL
    now[0] += 9
    assert tokens.user_of("t.1") == "u"
    now[0] += 10
    assert tokens.user_of("t.1") is None
    # Tokens nobody uses again do not pile up: expired ones are swept as new ones come.
    for n in range(5000):
        tokens.assign(f"x.{n}", "u", 1)
        now[0] += 0.01
    assert len(tokens.tokens) < 2048


async def test_auth_survives_a_snapshot_and_a_restart(tmp_path: Path) -> None:
    c = Cluster(1, data_dir=str(tmp_path / "m0"), snapshot_count=4)
    await c.start()
    try:
        await setup_users(c)
        await c.ok("/v3/auth/enable", {})
        writer = await token_of(c, "writer", "wpw")
        for n in range(6):  # past snapshot_count: the auth store is in a snapshot now
            put = {"key": b64(f"app/{n}"), "value": b64("v")}
            assert (await post_as(c, writer, "/v3/kv/put", put))[0] == 200
        revision = c.servers[0].machine.auth.revision
    finally:
        await c.stop()
    restarted = KVServer(c.servers[0].config)
    c.servers = [restarted]
    await c.start()
    try:
        assert restarted.machine.auth.enabled and restarted.machine.auth.revision == revision
        # Tokens are never in a snapshot (etcd's simple tokens neither): restored state has none.
        restored = KVMachine()
        restored.restore(restarted.machine.snapshot())
        assert restored.tokens.user_of(writer) is None
        reader = await token_of(c, "reader", "rpw")
        status, out = await post_as(c, reader, "/v3/kv/range", {"key": b64("app/1")})
        assert status == 200 and out["count"] == "1"
    finally:
        await c.stop()


async def _enable_auth_with_a_cn_only_client(a: Any) -> None:
    """Through the Auth stub ``a``: root (with the root role), a role ``rw`` with READWRITE on the
    prefix ``app/``, a user ``client`` without a password (its certificate CN is how it logs in)
    holding ``rw``; then auth enabled."""
    await a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="pw"), timeout=10)
    await a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    await a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="rw"), timeout=10)
    grant = rpc_pb2.AuthRoleGrantPermissionRequest(name="rw")
    grant.perm.permType, grant.perm.key, grant.perm.range_end = 2, b"app/", b"app0"  # READWRITE on app/
    await a.RoleGrantPermission(grant, timeout=10)
    add = rpc_pb2.AuthUserAddRequest(name="client")
    add.options.no_password = True
    await a.UserAdd(add, timeout=10)
    await a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="client", role="rw"), timeout=10)
    await a.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=10)


def _client_cert_auth(tmp_path: Path, clients: tuple[str, ...]) -> tuple[Any, Any]:
    """A CA, certificates for the members g0-g2 and ``clients`` (each CN its name): the members'
    ClientTls maker (``--client-cert-auth`` on) and a client's gRPC channel credentials by name."""
    from examples.kvstore.server import ClientTls
    from tests.test_kv_grpc_serving import _cert

    _cert(tmp_path, "ca", None)
    for n in ("g0", "g1", "g2", *clients):
        _cert(tmp_path, n, "ca")
    ca = str(tmp_path / "ca.crt")

    def tls(i: int, name: str) -> ClientTls:
        crt, key = str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key")
        return ClientTls(crt, key, ca, client_cert_auth=True)

    def creds(name: str) -> Any:
        return grpc.ssl_channel_credentials(
            root_certificates=(tmp_path / "ca.crt").read_bytes(),
            private_key=(tmp_path / f"{name}.key").read_bytes(),
            certificate_chain=(tmp_path / f"{name}.crt").read_bytes(),
        )

    return tls, creds


@pytest.mark.parametrize("split", [False, True], ids=["shared-url", "split-urls"])
async def test_client_certificate_cn_is_the_user_with_client_cert_auth(tmp_path: Path, split: bool) -> None:
    """With --client-cert-auth and no token, the certificate's CN names the user (as etcd does),
    both behind the client-URL multiplexer (TLS ended there) and with grpc on its own URL."""
    import shutil

    from tests.test_kv_grpc_serving import configs, started, target

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")

    tls, creds = _client_cert_auth(tmp_path, ("client", "stranger"))

    servers, _, follower = await started(configs("https", split=split, client_tls=tls))
    try:
        async with grpc.aio.secure_channel(target(follower), creds("client")) as ch:
            a = rpc_pb2_grpc.AuthStub(ch)
            await _enable_auth_with_a_cn_only_client(a)
            kv = rpc_pb2_grpc.KVStub(ch)
            await kv.Put(rpc_pb2.PutRequest(key=b"app/cn", value=b"yes"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await kv.Put(rpc_pb2.PutRequest(key=b"elsewhere", value=b"no"), timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # A user without a password cannot authenticate with one.
            with pytest.raises(grpc.aio.AioRpcError) as nopw:
                await a.Authenticate(rpc_pb2.AuthenticateRequest(name="client", password=""), timeout=10)
            assert nopw.value.details() == auth.MSG_AUTH_FAILED
        async with grpc.aio.secure_channel(target(follower), creds("stranger")) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as stranger:
                await rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"app/cn"), timeout=10)
            assert (stranger.value.code(), stranger.value.details()) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "etcdserver: permission denied",
            )
    finally:
        for s in servers:
            await s.stop()


# -- JWT tokens (--auth-token jwt,...) -------------------------------------------------------------


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The decoded header and claims of a JWT (no verification)."""
    header, claims, _ = token.split(".")
    return tuple(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in (header, claims))  # type: ignore[return-value]


def forge(key: bytes, header: dict[str, Any], claims: dict[str, Any], method: str = "sha256") -> str:
    """A JWT with any header and claims, HMAC-signed with ``key``."""
    import hashlib
    import hmac

    def enc(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{enc(json.dumps(header).encode())}.{enc(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), getattr(hashlib, method)).digest()
    return f"{signing_input}.{enc(signature)}"


def test_jwt_tokens_carry_etcds_claims_and_refuse_forged_expired_or_malformed_ones() -> None:
    """Rules (etcd's server/auth/jwt.go with golang-jwt v4): a token is ``{"alg","typ":"JWT"}`` and
    the claims ``exp`` (Unix seconds, now + ttl), ``revision``, ``username``; it is valid while the
    current second is before ``exp`` (and not before ``nbf``/``iat``), only under the configured
    method and key, with a string user name and a numeric revision."""
    key = b"a shared secret\n"  # the whole file, final newline included, as etcd reads it
    now = [1_700_000_000.7]
    tokens = auth.JWTTokens(auth.JWTOptions("HS256", key, 300.0), clock=lambda: now[0])
    token = tokens.assign("alice", 7)
    header, claims = jwt_parts(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims == {"exp": 1_700_000_300, "revision": 7, "username": "alice"}
    assert token.split(".")[0] == "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # Go's json.Marshal, sorted keys
    assert tokens.info(token, 99) == ("alice", 7)  # the token's own revision, not the store's
    # The jwt.io example token (HS256, secret "your-256-bit-secret"): the same signature.
    sample = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0"
        "IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    jwtio = auth.JWTTokens(auth.JWTOptions("HS256", b"your-256-bit-secret"))
    signing_input, _, signature = sample.rpartition(".")
    assert auth._b64url(jwtio._sign(signing_input.encode())) == signature
    assert jwtio.info(sample, 1) is None  # valid signature, but no username/revision claims
    # Expiry: valid through the second before exp, refused from exp on.
    now[0] = 1_700_000_299.99
    assert tokens.info(token, 7) == ("alice", 7)
    now[0] = 1_700_000_300.0
    assert tokens.info(token, 7) is None
    now[0] = 1_700_000_100.0
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    good = {"username": "alice", "revision": 7, "exp": 1_700_000_200}
    refused = {
        "bad signature": f"{head}.{body}.{flipped}",
        "another key": auth.JWTTokens(auth.JWTOptions("HS256", b"other key"), lambda: now[0]).assign(
            "alice", 7
        ),
        "another method": forge(key, {"alg": "HS512", "typ": "JWT"}, good, "sha512"),
        "alg none": f"{forge(key, {'alg': 'none'}, good).rpartition('.')[0]}.",
        "expired": forge(key, {"alg": "HS256"}, {**good, "exp": 1_700_000_100}),
        "not before": forge(key, {"alg": "HS256"}, {**good, "nbf": 1_700_000_101}),
        "issued later": forge(key, {"alg": "HS256"}, {**good, "iat": 1_700_000_101}),
        "exp a string": forge(key, {"alg": "HS256"}, {**good, "exp": "1700000200"}),
        "no username": forge(key, {"alg": "HS256"}, {"revision": 7, "exp": 1_700_000_200}),
        "username a number": forge(key, {"alg": "HS256"}, {**good, "username": 5}),
        "no revision": forge(key, {"alg": "HS256"}, {"username": "alice", "exp": 1_700_000_200}),
        "revision a string": forge(key, {"alg": "HS256"}, {**good, "revision": "7"}),
        "revision a bool": forge(key, {"alg": "HS256"}, {**good, "revision": True}),
        "claims a list": forge(key, {"alg": "HS256"}, [1]),  # type: ignore[arg-type]
        "two segments": f"{head}.{body}",
        "four segments": f"{token}.x",
        "padded base64": f"{head}.{body}=.{sig}",
        "standard alphabet": f"{head}.{body}.{sig.replace('-', '+').replace('_', '/')}+",
        "not JSON": f"{auth._b64url(b'{nope')}.{body}.{sig}",
        "simple token": "abcdefghijklmnop.12",
        "empty": "",
    }
    for why, bad in refused.items():
        assert tokens.info(bad, 7) is None, why
    # Optional claims are honoured when valid, an exp of 0 means none (as golang-jwt v4 reads it).
    fine = forge(key, {"alg": "HS256"}, {**good, "nbf": 1_700_000_000, "iat": 1_700_000_100, "x": [1]})
    assert tokens.info(fine, 1) == ("alice", 7)
    assert tokens.info(forge(key, {"alg": "HS256"}, {**good, "exp": 0}), 1) == ("alice", 7)
    # HS384 and HS512 sign with their own digest; a non-ASCII or HTML-ish name round-trips.
    for method in ("HS384", "HS512"):
        other = auth.JWTTokens(auth.JWTOptions(method, key, 60.0), clock=lambda: now[0])
        minted = other.assign("bö<b>&", 3)
        assert (
            jwt_parts(minted)[0]["alg"] == method
            and "\\u003c" in base64.urlsafe_b64decode(minted.split(".")[1] + "==").decode()
        )
        assert other.info(minted, 1) == ("bö<b>&", 3) and tokens.info(minted, 1) is None


def test_parse_auth_token_follows_etcds_option_syntax(tmp_path: Path) -> None:
    """Rules (etcd 3.5's NewTokenProvider / jwtOptions): ``simple`` or ``jwt,name=value,...`` with
    sign-method, priv-key, pub-key and ttl (a Go duration, default 5m); HMAC methods take the whole
    priv-key file as the secret; everything else is a clear error (see the flag test for exit 2)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    pub = tmp_path / "pub"
    pub.write_bytes(b"ignored for HMAC, but read as etcd does")
    assert auth.parse_auth_token("simple") is None
    opts = auth.parse_auth_token(f"jwt,sign-method=HS256,priv-key={secret}")
    assert opts == auth.JWTOptions("HS256", b"s3cret\n", 300.0)
    assert "s3cret" not in repr(opts)  # the key stays out of logs
    opts = auth.parse_auth_token(f"jwt,pub-key={pub},priv-key={secret},sign-method=HS512,ttl=1h30m")
    assert (opts.method, opts.ttl) == ("HS512", 5400.0) if opts else False
    for text, seconds in (("300s", 300), ("5m", 300), ("1.5h", 5400), ("250ms", 0.25), ("1m30s", 90)):
        assert auth.parse_go_duration(text) == seconds
    for bad in ("", "5", "m", "5 m", "5M", "1d", "--1s"):
        with pytest.raises(ValueError):
            auth.parse_go_duration(bad)


BAD_AUTH_TOKENS = [
    ("", "unknown token type ''"),
    ("bogus", "unknown token type 'bogus'"),
    ("simple,ttl=5m", "simple takes no options"),
    ("jwt", "no sign-method"),
    ("jwt,sign-method", "want name=value"),
    ("jwt,sign-method=HS256,sign-method=HS256", "given twice"),
    ("jwt,sign-method=HS256,priv-key={secret},tll=5m", "unknown jwt option(s) tll"),
    ("jwt,sign-method=XS256,priv-key={secret}", "sign-method 'XS256'"),
    ("jwt,sign-method=none,priv-key={secret}", "sign-method 'none'"),
    ("jwt,sign-method=EdDSA,priv-key={secret}", "sign-method 'EdDSA'"),
    ("jwt,sign-method=RS256,priv-key={secret}", "needs an RSA/ECDSA library (the 'cryptography' package)"),
    ("jwt,sign-method=PS384,pub-key={secret}", "needs an RSA/ECDSA library"),
    ("jwt,sign-method=ES512,priv-key={secret}", "needs an RSA/ECDSA library"),
    ("jwt,sign-method=HS256", "needs priv-key=FILE"),
    ("jwt,sign-method=HS256,priv-key={empty}", "auth: missing key data"),
    ("jwt,sign-method=HS256,priv-key={missing}", "cannot read priv-key"),
    ("jwt,sign-method=HS256,priv-key={secret},pub-key={missing}", "cannot read pub-key"),
    ("jwt,sign-method=HS256,priv-key={tmp}", "Is a directory"),
    ("jwt,sign-method=HS256,priv-key={secret},ttl=5", "ttl '5' is not a duration"),
    ("jwt,sign-method=HS256,priv-key={secret},ttl=0s", "must be positive"),
    ("jwt,sign-method=HS256,priv-key={secret},ttl=-1m", "must be positive"),
]


@pytest.mark.parametrize("value, message", BAD_AUTH_TOKENS, ids=[v for v, _ in BAD_AUTH_TOKENS])
def test_a_bad_auth_token_flag_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    from examples.kvstore.__main__ import main

    (tmp_path / "secret").write_bytes(b"s3cret")
    (tmp_path / "empty").write_bytes(b"")
    files = {
        "secret": tmp_path / "secret",
        "empty": tmp_path / "empty",
        "missing": tmp_path / "nope",
        "tmp": tmp_path,
    }
    assert main(["--auth-token", value.format(**files), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvstore: --auth-token: ") and message in err, err
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_auth_token_flags_map_onto_the_config_and_a_bad_one_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    from examples.kvstore.__main__ import config_from_args

    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret")
    jwt = f"jwt,sign-method=HS384,priv-key={secret},ttl=10m"
    cfg, _ = config_from_args(["--auth-token", jwt, "--auth-token-ttl", "60"])
    assert (cfg.auth_token, cfg.auth_token_ttl) == (jwt, 60.0)
    server = KVServer(cfg)
    assert isinstance(server.tokens, auth.JWTTokens) and server.tokens.ttl == 600.0
    default, _ = config_from_args([])
    assert (default.auth_token, default.auth_token_ttl) == ("simple", 300.0)  # etcd's defaults
    plain = KVServer(default)
    assert plain.tokens is plain.machine.tokens and plain.machine.tokens.ttl == 300.0
    with pytest.raises(Exception, match="needs an RSA/ECDSA library"):  # configured in code: ConfigError
        KVServer(replace(default, auth_token=f"jwt,sign-method=RS256,priv-key={secret}"))
    es256 = f"jwt,sign-method=ES256,priv-key={secret}"
    proc = subprocess.run(  # the real entry point: a message and status 2, as every bad flag
        [sys.executable, "-m", "examples.kvstore", "--auth-token", es256],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert proc.returncode == 2 and "needs an RSA/ECDSA library" in proc.stderr, proc.stderr


def jwt_cluster(n: int, tmp_path: Path, ttl: str = "", **over: Any) -> Cluster:
    key = tmp_path / "jwt.key"
    if not key.exists():
        key.write_bytes(b"cluster-wide HMAC secret")
    return Cluster(
        n, auth_token=f"jwt,sign-method=HS256,priv-key={key}{',ttl=' + ttl if ttl else ''}", **over
    )


async def test_jwt_from_one_member_is_accepted_by_all_and_goes_old_after_an_auth_change(
    tmp_path: Path,
) -> None:
    """Rules (etcd with --auth-token jwt): Authenticate answers a signed token any member verifies
    with the shared key; a tampered or foreign token is ``invalid auth token``; after any auth
    change the token's revision is old: key requests answer ``revision of auth store is old``
    (clientv3 authenticates again), admin requests still pass (etcd's IsAdminPermitted ignores the
    revision), and a fresh token works."""
    c = jwt_cluster(3, tmp_path)
    await c.start()
    try:
        await setup_users(c)
        await c.ok("/v3/auth/enable", {})
        revision = int((await c.ok("/v3/auth/status", {}))["authRevision"])
        writer = await token_of(c, "writer", "wpw", 1)
        reader = await token_of(c, "reader", "rpw", 2)
        assert jwt_parts(writer)[1]["username"] == "writer" and jwt_parts(writer)[1]["revision"] == revision
        for s in c.servers:  # nothing is recorded anywhere: the token is the proof
            assert not s.machine.tokens.tokens
        put = {"key": b64("app/j"), "value": b64("1")}
        for i in range(3):
            assert (await post_as(c, writer, "/v3/kv/put", put, i))[0] == 200
        assert await post_as(c, reader, "/v3/kv/put", put, 0) == (
            403,
            etcd_body(7, auth.MSG_PERMISSION_DENIED),
        )
        head, body, sig = writer.split(".")
        claims = jwt_parts(writer)[1]
        tampered = {
            "signature": f"{head}.{body}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}",
            "claims": f"{head}.{auth._b64url(json.dumps({**claims, 'username': 'root'}).encode())}.{sig}",
            "foreign key": auth.JWTTokens(auth.JWTOptions("HS256", b"another cluster")).assign(
                "root", revision
            ),
        }
        for why, token in tampered.items():
            assert await post_as(c, token, "/v3/kv/put", put, 2) == (
                401,
                etcd_body(16, auth.MSG_INVALID_TOKEN),
            ), why
        # gRPC: Authenticate on a follower, the token in the metadata, on another member.
        leader = await c.wait_leader()
        follower = next(s for s in c.servers if s is not leader)
        async with grpc.aio.insecure_channel(grpc_target(follower.client_urls[0])) as ch:
            answer = await rpc_pb2_grpc.AuthStub(ch).Authenticate(
                rpc_pb2.AuthenticateRequest(name="writer", password="wpw"), timeout=5
            )
        assert jwt_parts(answer.token)[1]["username"] == "writer"
        async with grpc.aio.insecure_channel(grpc_target(leader.client_urls[0])) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            await kv.Put(
                rpc_pb2.PutRequest(key=b"app/g", value=b"v"), metadata=(("token", answer.token),), timeout=5
            )
            with pytest.raises(grpc.aio.AioRpcError) as forged:
                await kv.Range(
                    rpc_pb2.RangeRequest(key=b"app/g"), metadata=(("token", tampered["claims"]),), timeout=5
                )
            assert (forged.value.code(), forged.value.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                auth.MSG_INVALID_TOKEN,
            )
        # An auth change: every token minted before it is old for key requests...
        root = await token_of(c, "root", "rootpw")
        assert (await post_as(c, root, "/v3/auth/role/add", {"name": "extra"}))[0] == 200
        for i in range(3):
            status, out = await post_as(c, writer, "/v3/kv/put", put, i)
            assert (status, out) == (400, etcd_body(3, auth.MSG_OLD_REVISION)), (i, out)
        assert (await post_as(c, reader, "/v3/kv/range", {"key": b64("app/j")}))[1] == etcd_body(
            3, auth.MSG_OLD_REVISION
        )
        # ...a watch with it is created and canceled, as etcd answers a failed permission check...
        status, out = await post_as(c, reader, "/v3/watch", {"create_request": {"key": b64("app/j")}})
        assert status == 200 and out["result"]["cancel_reason"] == auth.WATCH_DENIED_REASON
        # ...admin calls still pass with it, and a fresh token works for keys again.
        assert (await post_as(c, root, "/v3/auth/role/delete", {"role": "extra"}))[0] == 200
        writer = await token_of(c, "writer", "wpw", 2)
        assert (await post_as(c, writer, "/v3/kv/put", put, 0))[0] == 200
        # Deleting the user: its token verifies but grants nothing any more.
        writer_now = writer
        assert (await post_as(c, root, "/v3/auth/user/delete", {"name": "writer"}))[0] == 200
        # (its revision is old now: etcd's isOpPermitted checks that before looking the user up)
        assert await post_as(c, writer_now, "/v3/kv/put", put, 1) == (
            400,
            etcd_body(3, auth.MSG_OLD_REVISION),
        )
    finally:
        await c.stop()


async def test_jwt_expires_after_its_ttl(tmp_path: Path) -> None:
    """Rule: a JWT is refused (``invalid auth token``) from its ``exp`` second on; ttl is a Go
    duration (here 2m); the clock is wall time, as the claim is Unix seconds."""
    c = jwt_cluster(1, tmp_path, ttl="2m")
    await c.start()
    try:
        await setup_users(c)
        await c.ok("/v3/auth/enable", {})
        tokens = c.servers[0].tokens
        assert isinstance(tokens, auth.JWTTokens) and tokens.ttl == 120.0
        now = [2_000_000_000.5]
        tokens.clock = lambda: now[0]
        reader = await token_of(c, "reader", "rpw")
        assert jwt_parts(reader)[1]["exp"] == 2_000_000_120
        now[0] = 2_000_000_119.9
        assert (await post_as(c, reader, "/v3/kv/range", {"key": b64("app/a")}))[0] == 200
        now[0] = 2_000_000_120.0
        status, out = await post_as(c, reader, "/v3/kv/range", {"key": b64("app/a")})
        assert (status, out) == (401, etcd_body(16, auth.MSG_INVALID_TOKEN))
    finally:
        await c.stop()


async def test_jwt_survives_a_restart(tmp_path: Path) -> None:
    """Rule: JWTs are stateless: a token issued before a restart is accepted after it, with no
    Authenticate replayed (a simple token is gone unless its Authenticate entry is replayed)."""
    c = jwt_cluster(1, tmp_path, data_dir=str(tmp_path / "m0"))
    await c.start()
    try:
        await setup_users(c)
        await c.ok("/v3/auth/enable", {})
        writer = await token_of(c, "writer", "wpw")
        assert (await post_as(c, writer, "/v3/kv/put", {"key": b64("app/r"), "value": b64("1")}))[0] == 200
    finally:
        await c.stop()
    restarted = KVServer(c.servers[0].config)
    c.servers = [restarted]
    await c.start()
    try:
        assert not restarted.machine.tokens.tokens
        status, out = await post_as(c, writer, "/v3/kv/range", {"key": b64("app/r")})
        assert status == 200 and out["count"] == "1"
    finally:
        await c.stop()

@pytest.mark.parametrize("split", [False, True], ids=["shared-url", "split-urls"])
async def test_calls_a_follower_forwards_keep_a_cn_only_users_identity(tmp_path: Path, split: bool) -> None:
    """With --client-cert-auth, a CN-only user's LeaseTimeToLive, member changes and MoveLeader
    sent to a follower work as on the leader (as in etcd): the follower checks the permission
    and forwards with a token it has assigned to that CN through Raft, never with a name the
    leader would have to take on trust. The forwarding marker gives a client nothing: a
    forwarded call counts by its token only, so a client that sets it loses its own CN."""
    import shutil
    import ssl

    from tests.test_kv_grpc_serving import configs, started, target

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    from examples.kvstore.grpcapi import FORWARD_KEY
    from examples.kvstore.server import member_id_for

    tls, creds = _client_cert_auth(tmp_path, ("client", "root"))

    servers, leader, follower = await started(configs("https", split=split, client_tls=tls))
    try:
        async with grpc.aio.secure_channel(target(follower), creds("root")) as root_ch:
            a = rpc_pb2_grpc.AuthStub(root_ch)
            await _enable_auth_with_a_cn_only_client(a)

            async with grpc.aio.secure_channel(target(follower), creds("client")) as ch:
                leases = rpc_pb2_grpc.LeaseStub(ch)
                lease = (await leases.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=10)).ID
                put = rpc_pb2.PutRequest(key=b"app/leased", value=b"v", lease=lease)
                await rpc_pb2_grpc.KVStub(ch).Put(put, timeout=10)
                for _ in range(2):  # forwarded to the leader's lease clock, as the CN's user
                    ask = rpc_pb2.LeaseTimeToLiveRequest(ID=lease, keys=True)
                    ttl = await leases.LeaseTimeToLive(ask, timeout=10)
                    assert ttl.grantedTTL == 30 and list(ttl.keys) == [b"app/leased"]
                    assert ttl.header.member_id == follower.member_id
                assert list(follower.forwarding_tokens) == ["client"], "one token per CN, reused"
                # A leader that expired the token on its own clock: the follower assigns a new one.
                minted = follower.forwarding_tokens["client"]
                assert leader.machine.tokens.user_of(minted) == "client"
                del leader.machine.tokens.tokens[minted]
                ttl = await leases.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease), timeout=10)
                assert ttl.grantedTTL == 30 and follower.forwarding_tokens["client"] != minted
                with pytest.raises(grpc.aio.AioRpcError) as denied:  # checked on the follower
                    await rpc_pb2_grpc.MaintenanceStub(ch).MoveLeader(
                        rpc_pb2.MoveLeaderRequest(targetID=follower.member_id), timeout=10
                    )
                assert (denied.value.code(), denied.value.details()) == (
                    grpc.StatusCode.PERMISSION_DENIED, auth.MSG_PERMISSION_DENIED)  # fmt: skip

            cluster = rpc_pb2_grpc.ClusterStub(root_ch)
            peer = f"https://127.0.0.1:{free_port()}"
            learner = rpc_pb2.MemberAddRequest(peerURLs=[peer], isLearner=True)
            added = await cluster.MemberAdd(learner, timeout=10)
            new_id = member_id_for([peer], follower.config.initial_cluster_token)
            assert new_id == added.member.ID
            moved = f"https://127.0.0.1:{free_port()}"
            update = rpc_pb2.MemberUpdateRequest(ID=added.member.ID, peerURLs=[moved])
            updated = await cluster.MemberUpdate(update, timeout=10)
            assert [m.peerURLs for m in updated.members if m.ID == added.member.ID] == [[moved]]
            await cluster.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=added.member.ID), timeout=10)
            await rpc_pb2_grpc.MaintenanceStub(root_ch).MoveLeader(
                rpc_pb2.MoveLeaderRequest(targetID=follower.member_id), timeout=10
            )
            assert follower.is_leader

        # The gateway forwards the same way (to the new leader now, from the old one).
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
        url = (leader.http_urls or leader.client_urls)[0] + "/v3/lease/timetolive"
        async with aiohttp.ClientSession() as session:
            for attempt in range(2):
                if attempt:  # the new leader expired the token: the old one assigns another
                    del follower.machine.tokens.tokens[leader.forwarding_tokens["client"]]
                async with session.post(url, json={"ID": str(lease), "keys": True}, ssl=ctx) as r:
                    out = await r.json(content_type=None)
                assert r.status == 200, out
                assert out["grantedTTL"] == "30" and out["keys"] == [b64("app/leased")]
                assert out["header"]["member_id"] == str(leader.member_id)

        # A client that marks its own call as forwarded is left with its token, i.e. none.
        async with grpc.aio.secure_channel(target(follower), creds("root")) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as claimed:
                await rpc_pb2_grpc.MaintenanceStub(ch).MoveLeader(
                    rpc_pb2.MoveLeaderRequest(targetID=leader.member_id),
                    metadata=((FORWARD_KEY, "1"),),
                    timeout=10,
                )
            assert claimed.value.details() == auth.MSG_USER_EMPTY
    finally:
        for s in servers:
            await s.stop()


def free_port() -> int:
    from raftlib.testing.proccluster import free_ports

    return free_ports(1)[0]

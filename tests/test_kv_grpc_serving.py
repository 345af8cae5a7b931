"""How the store serves gRPC: next to the gateway on one client URL, over TLS, and split apart.

In-process 3-member clusters (raft over loopback TCP, 10 ms heartbeats) driven with grpc.aio:

* one plain client URL answers both a gRPC call and an HTTP/1 gateway request (the connection's
  first bytes decide), and a follower relays LeaseKeepAlive / LeaseTimeToLive to the leader;
* on an https client URL with --client-cert-auth, gRPC needs the client certificate too, and the
  lease calls a follower relays travel over TLS;
* with --listen-client-http-urls the client URL speaks gRPC only and the gateway (including the
  calls a follower forwards to the leader's gateway) lives on its own URL;
* the gateway's /v3/lock and /v3/election paths share the recipes of the gRPC services.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
grpc = pytest.importorskip("grpc")

from examples.kvstore.proto.stubs import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from examples.kvstore.server import ClientTls, KVServer, ServerConfig  # noqa: E402
from raftlib.testing.proccluster import free_ports  # noqa: E402


def b64(x: str | bytes) -> str:
    return base64.b64encode(x.encode() if isinstance(x, str) else x).decode()


def configs(scheme: str = "http", split: bool = False, **over: Any) -> list[ServerConfig]:
    names = ["g0", "g1", "g2"]
    ports = free_ports(9)
    peers = {n: f"http://127.0.0.1:{ports[3 * k + 1]}" for k, n in enumerate(names)}
    out = []
    for i, n in enumerate(names):
        client = f"{scheme}://127.0.0.1:{ports[3 * i]}"
        cfg = ServerConfig(
            name=n,
            data_dir=None,
            listen_client_urls=[client],
            advertise_client_urls=[client],
            listen_client_http_urls=[f"{scheme}://127.0.0.1:{ports[3 * i + 2]}"] if split else [],
            listen_peer_urls=[peers[n]],
            initial_advertise_peer_urls=[peers[n]],
            initial_cluster={m: [u] for m, u in peers.items()},
            initial_cluster_token="grpc-serving",
            heartbeat_interval_ms=10,
            election_timeout_ms=100,
            request_timeout=2.0,
            fsync=False,
            lease_check_interval=0.05,
        )
        for k, v in over.items():
            setattr(cfg, k, v(i, n) if callable(v) else v)
        out.append(cfg)
    return out


async def started(cfgs: list[ServerConfig]) -> tuple[list[KVServer], KVServer, KVServer]:
    """Start the members; (servers, the leader, a follower) once every member knows the leader
    and has published its URLs."""
    servers = [KVServer(c) for c in cfgs]
    await asyncio.gather(*(s.start() for s in servers))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while loop.time() < deadline:
        leaders = {s.node.leader for s in servers if s.node is not None}
        published = all(len(s.state.attributes) == 3 for s in servers)
        if len(leaders) == 1 and None not in leaders and published and any(s.is_leader for s in servers):
            leader = next(s for s in servers if s.is_leader)
            return servers, leader, next(s for s in servers if s is not leader)
        await asyncio.sleep(0.05)
    raise AssertionError("no leader / attributes not published within 15 s")


def target(server: KVServer) -> str:
    return server.client_urls[0].split("://", 1)[1]


async def keepalive_once(channel: Any, lease: int) -> Any:
    call = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive()
    await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
    answer = await asyncio.wait_for(call.read(), 10)
    call.cancel()
    return answer


async def test_one_client_url_serves_grpc_and_the_gateway_and_followers_relay_lease_calls() -> None:
    servers, _, follower = await started(configs())
    try:
        async with grpc.aio.insecure_channel(target(follower)) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            put = await kv.Put(rpc_pb2.PutRequest(key=b"both", value=b"ways"), timeout=10)
            assert put.header.member_id == follower.member_id and put.header.revision > 0
            lease = (
                await rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=10)
            ).ID
            answer = await keepalive_once(ch, lease)
            got_id, got_ttl = answer.ID, answer.TTL
            assert got_id == lease and got_ttl == 30
            assert answer.header.member_id == follower.member_id  # relabelled like etcd's hdr.fill
            ttl = await rpc_pb2_grpc.LeaseStub(ch).LeaseTimeToLive(
                rpc_pb2.LeaseTimeToLiveRequest(ID=lease), timeout=10
            )
            assert ttl.grantedTTL == 30 and ttl.header.member_id == follower.member_id
            unknown = await keepalive_once(ch, lease + 1)
            assert unknown.TTL == 0  # etcd answers an unknown lease's keepalive with TTL 0
        range_url = follower.client_urls[0] + "/v3/kv/range"
        async with aiohttp.ClientSession() as http, http.post(range_url, json={"key": b64("both")}) as r:
            body = await r.json()
        assert r.status == 200 and body["kvs"][0]["value"] == b64("ways")
    finally:
        for s in servers:
            await s.stop()


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)


def _cert(d: Path, name: str, ca: str | None) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key"]
    if ca is None:
        _openssl(d, "req", "-x509", *ec, "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}")
        return
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(d, "req", *ec, "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext")  # fmt: skip


@pytest.mark.parametrize("split", [False, True], ids=["shared-url", "split-urls"])
async def test_tls_client_url_needs_the_client_certificate_for_grpc_too(tmp_path: Path, split: bool) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    _cert(tmp_path, "ca", None)
    for n in ("g0", "g1", "g2", "client"):
        _cert(tmp_path, n, "ca")
    ca = str(tmp_path / "ca.crt")

    def tls(i: int, name: str) -> ClientTls:
        return ClientTls(
            str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"), ca, client_cert_auth=True
        )

    servers, _, follower = await started(configs("https", split=split, client_tls=tls))
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(tmp_path / "ca.crt").read_bytes(),
            private_key=(tmp_path / "client.key").read_bytes(),
            certificate_chain=(tmp_path / "client.crt").read_bytes(),
        )
        async with grpc.aio.secure_channel(target(follower), creds) as ch:
            put = await rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"tls", value=b"yes"), timeout=10)
            assert put.header.revision > 0
            lease = (
                await rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=20), timeout=10)
            ).ID
            assert (await keepalive_once(ch, lease)).TTL == 20  # relayed to the leader over TLS
        anonymous = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "ca.crt").read_bytes())
        async with grpc.aio.secure_channel(target(follower), anonymous) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"tls"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for s in servers:
            await s.stop()


async def test_split_urls_grpc_on_the_client_url_gateway_on_its_own() -> None:
    servers, _, follower = await started(configs(split=True))
    try:
        async with grpc.aio.insecure_channel(target(follower)) as ch:
            put = await rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"split", value=b"1"), timeout=10)
            assert put.header.revision > 0
        gateway = follower.http_urls[0]
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway + "/v3/lease/grant", json={"TTL": 30}) as r:
                lease = (await r.json())["ID"]
            async with http.post(gateway + "/v3/lease/timetolive", json={"ID": lease}) as r:
                assert (
                    r.status == 200 and (await r.json())["grantedTTL"] == "30"
                )  # forwarded to the leader's gateway
            with pytest.raises(aiohttp.ClientError):  # the client URL does not speak HTTP/1 any more
                async with http.post(
                    follower.client_urls[0] + "/v3/kv/range", json={"key": b64("split")}
                ) as r:
                    await r.read()
    finally:
        for s in servers:
            await s.stop()


async def test_gateway_lock_and_election_paths() -> None:
    servers, leader, _ = await started(configs())
    url = leader.client_urls[0]
    try:
        async with aiohttp.ClientSession() as http:

            async def call(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                async with http.post(url + path, json=body) as r:
                    return r.status, await r.json()

            _, grant = await call("/v3/lease/grant", {"TTL": 30})
            lease = int(grant["ID"])
            status, held = await call("/v3/lock/lock", {"name": b64("gl"), "lease": lease})
            assert status == 200 and base64.b64decode(held["key"]) == f"gl/{lease:x}".encode()
            status, _ = await call("/v3/lock/unlock", {"key": held["key"]})
            assert status == 200
            status, won = await call(
                "/v3/election/campaign", {"name": b64("ge"), "lease": lease, "value": b64("x")}
            )
            assert status == 200 and won["leader"]["rev"] == won["header"]["revision"]
            _, now = await call("/v3/election/leader", {"name": b64("ge")})
            assert base64.b64decode(now["kv"]["value"]) == b"x"
            status, err = await call("/v3/election/proclaim", {"value": b64("y")})
            assert (status, err["error"], err["code"]) == (500, '"leader" field must be provided', 2)
            await call("/v3/election/resign", {"leader": won["leader"]})
            status, err = await call("/v3/election/leader", {"name": b64("ge")})
            assert (status, err["message"]) == (500, "election: no leader")
    finally:
        for s in servers:
            await s.stop()


# ------------------------------------------------------------------ answer conversion


def _kv_dicts() -> Any:
    from hypothesis import strategies as st

    i64 = st.integers(0, 2**63 - 1).map(str)
    raw = st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode())
    fields = {
        "key": raw,
        "create_revision": i64,
        "mod_revision": i64,
        "version": i64,
        "value": raw,
        "lease": i64,
    }
    return st.fixed_dictionaries({}, optional=fields)


def _answers() -> Any:
    from hypothesis import strategies as st

    from examples.kvstore.proto.stubs import rpc_pb2 as pb

    u64 = st.integers(0, 2**64 - 1).map(str)
    header = st.fixed_dictionaries(
        {"cluster_id": u64, "member_id": u64},
        optional={"revision": st.integers(1, 2**63 - 1).map(str), "raft_term": u64},
    )
    kvs = st.lists(_kv_dicts(), max_size=3)
    count = st.integers(0, 2**63 - 1).map(str)
    return st.one_of(
        st.tuples(
            st.just(pb.RangeResponse),
            st.fixed_dictionaries(
                {"header": header}, optional={"kvs": kvs, "more": st.booleans(), "count": count}
            ),
        ),
        st.tuples(
            st.just(pb.PutResponse),
            st.fixed_dictionaries({"header": header}, optional={"prev_kv": _kv_dicts()}),
        ),
        st.tuples(
            st.just(pb.DeleteRangeResponse),
            st.fixed_dictionaries({"header": header}, optional={"deleted": count, "prev_kvs": kvs}),
        ),
    )


def test_fast_answer_conversion_equals_json_format() -> None:
    """The hand-written Range/Put/DeleteRange builders make exactly what ParseDict makes."""
    from google.protobuf import json_format
    from hypothesis import given, settings

    from examples.kvstore.grpcapi import to_message

    @settings(max_examples=200, deadline=None)
    @given(_answers())
    def check(case: Any) -> None:
        cls, answer = case
        assert to_message(answer, cls) == json_format.ParseDict(answer, cls())

    check()


def test_fast_request_reading_equals_json_format() -> None:
    """The hand-written Put/Range request readers give exactly what MessageToDict gives."""
    from google.protobuf import json_format
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from examples.kvstore.grpcapi import to_dict
    from examples.kvstore.proto.stubs import rpc_pb2

    i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
    puts = st.builds(
        rpc_pb2.PutRequest, key=st.binary(max_size=8), value=st.binary(max_size=8), lease=i64,
        prev_kv=st.booleans(), ignore_value=st.booleans(), ignore_lease=st.booleans(),
    )  # fmt: skip
    ranges = st.builds(
        rpc_pb2.RangeRequest, key=st.binary(max_size=8), range_end=st.binary(max_size=8), limit=i64,
        revision=i64, sort_order=st.integers(0, 5), sort_target=st.integers(0, 7), serializable=st.booleans(),
        keys_only=st.booleans(), count_only=st.booleans(), min_mod_revision=i64, max_mod_revision=i64,
        min_create_revision=i64, max_create_revision=i64,
    )  # fmt: skip

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(puts, ranges))
    def check(request: Any) -> None:
        assert to_dict(request) == json_format.MessageToDict(request, preserving_proto_field_name=True)

    check()


def test_fast_event_conversion_equals_json_format() -> None:
    from google.protobuf import json_format
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from examples.kvstore.grpcapi import _event
    from examples.kvstore.proto.stubs import kv_pb2

    events = st.fixed_dictionaries(
        {"kv": _kv_dicts()}, optional={"type": st.sampled_from(["PUT", "DELETE"]), "prev_kv": _kv_dicts()}
    )

    @settings(max_examples=200, deadline=None)
    @given(events)
    def check(ev: Any) -> None:
        assert _event(ev) == json_format.ParseDict(ev, kv_pb2.Event())

    check()


async def test_watch_fragments_a_revision_larger_than_max_request_bytes() -> None:
    """With ``fragment``, one revision's events over --max-request-bytes arrive in several responses,
    all but the last flagged ``fragment``; without it, in one response (etcd's rule)."""
    servers, leader, _ = await started(configs(max_request_bytes=4096))
    try:
        async with grpc.aio.insecure_channel(target(leader)) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(8):
                await kv.Put(rpc_pb2.PutRequest(key=f"frag/{i}".encode(), value=b"v" * 1000), timeout=10)
            calls = {}
            for fragment in (True, False):
                call = rpc_pb2_grpc.WatchStub(ch).Watch()
                create = rpc_pb2.WatchCreateRequest(
                    key=b"frag/", range_end=b"frag0", prev_kv=True, fragment=fragment
                )
                await call.write(rpc_pb2.WatchRequest(create_request=create))
                assert (await asyncio.wait_for(call.read(), 10)).created
                calls[fragment] = call
            deleted = await kv.DeleteRange(
                rpc_pb2.DeleteRangeRequest(key=b"frag/", range_end=b"frag0"), timeout=10
            )
            assert deleted.deleted == 8
            parts = []
            while not parts or parts[-1].fragment:
                parts.append(await asyncio.wait_for(calls[True].read(), 10))
            assert len(parts) > 1 and all(p.fragment for p in parts[:-1]) and not parts[-1].fragment
            assert all(p.ByteSize() <= 4096 for p in parts)
            assert sum(len(p.events) for p in parts) == 8
            assert {p.header.revision for p in parts} == {deleted.header.revision}
            whole = await asyncio.wait_for(calls[False].read(), 10)
            assert len(whole.events) == 8 and not whole.fragment
            for call in calls.values():
                call.cancel()
    finally:
        for s in servers:
            await s.stop()


async def test_keepalive_stream_on_a_follower_survives_a_leader_change() -> None:
    """A follower's keepalive relay follows the lease clock to the new leader (MoveLeader over gRPC)."""
    servers, leader, follower = await started(configs())
    other = next(s for s in servers if s is not leader and s is not follower)
    try:
        async with grpc.aio.insecure_channel(target(follower)) as ch:
            lease = (
                await rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30), timeout=10)
            ).ID
            stream = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive()
            await stream.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
            assert (await asyncio.wait_for(stream.read(), 10)).TTL == 30
            moved = await rpc_pb2_grpc.MaintenanceStub(ch).MoveLeader(
                rpc_pb2.MoveLeaderRequest(targetID=other.member_id), timeout=10
            )
            assert moved.header.member_id == follower.member_id
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not (other.primary and follower.leader_client_url() in other.client_urls):
                assert loop.time() < deadline, "leadership did not move"
                await asyncio.sleep(0.02)
            await stream.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
            again = await asyncio.wait_for(stream.read(), 10)
            assert again.TTL == 30 and again.header.member_id == follower.member_id
            stream.cancel()
    finally:
        for s in servers:
            await s.stop()

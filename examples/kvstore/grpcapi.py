"""etcd's v3 gRPC API (etcdserverpb KV, Watch, Lease, Cluster, Maintenance) on grpc.aio.

Each unary call turns the protobuf request into the gateway's JSON object
(``MessageToDict`` with proto field names: int64 as strings, bytes in base64, enums by name),
runs the one implementation in :mod:`examples.kvstore.service`, and turns the answer back into
the response message. Errors leave as etcd sends them: the gRPC status code and message of
:class:`~examples.kvstore.errors.EtcdError` (``etcdserver: requested lease not found`` NOT_FOUND,
``etcdserver: mvcc: required revision has been compacted`` OUT_OF_RANGE, ...).

Calls only the leader can answer (lease keepalive/timetolive on the lease clock, membership
changes, MoveLeader) are forwarded over gRPC to the leader's advertised client URL and the answer's
header is relabelled with this member's, like etcd's ``hdr.fill``. A hop counter in the metadata
(``x-kvstore-forwarded``) stops forwarding loops during leader changes. This member checks the
caller's permission first; the forwarded call carries the caller's token, or one assigned through
Raft to the caller's certificate CN (:meth:`EtcdService.forwarding_token`), and the leader counts
a forwarded call by its token only.

Invariants: every request is validated before anything is proposed; a call that cannot finish
without quorum ends after ``--request-timeout`` with ``etcdserver: request timed out``; the watch
stream is bounded (each watcher's queue is capped, the stream's output queue too) and ends all
its watchers when the client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError, Message

from examples.kvstore import auth, errors
from examples.kvstore.errors import EtcdError
from examples.kvstore.h2grpc import GrpcServer
from examples.kvstore.proto.stubs import kv_pb2, rpc_pb2, rpc_pb2_grpc
from examples.kvstore.service import EtcdService, ForwardToLeader
from examples.kvstore.watch import QueueBudget

if TYPE_CHECKING:
    from examples.kvstore.server import KVServer
    from examples.kvstore.watch import Watcher

log = logging.getLogger("kvstore.grpc")

GRPC_OVERHEAD = 512 * 1024
"""etcd's grpcOverheadBytes: the receive limit is --max-request-bytes plus this."""
MAX_SEND = 2**31 - 1
"""etcd's default send limit (math.MaxInt32)."""
FORWARD_KEY = "x-kvstore-forwarded"
MAX_HOPS = 3
WATCH_OUT_QUEUE = 256
"""Responses a watch stream may hold for the client before its watchers stop being drained."""
WATCH_IN_QUEUE = 1024
"""Requests a watch stream reads ahead of the one being handled (then gRPC flow control holds the
client): while one create waits for its read barrier, the creates behind it arrive and share the
next barrier."""
PROGRESS_WATCH_ID = -1
"""etcd's InvalidWatchID: the watch_id of an answer to a progress request."""

_STATUS = {code.value[0]: code for code in grpc.StatusCode}

#: gRPC method -> the gateway route its metrics are recorded under (see metrics.GRPC_METHODS).
_ROUTES = {
    "Range": "kv/range",
    "Put": "kv/put",
    "DeleteRange": "kv/deleterange",
    "Txn": "kv/txn",
    "Compact": "kv/compaction",
    "LeaseGrant": "lease/grant",
    "LeaseRevoke": "lease/revoke",
    "LeaseTimeToLive": "lease/timetolive",
    "LeaseLeases": "lease/leases",
    "MemberList": "cluster/member/list",
    "MemberAdd": "cluster/member/add",
    "MemberRemove": "cluster/member/remove",
    "MemberPromote": "cluster/member/promote",
    "MemberUpdate": "cluster/member/update",
    "Status": "maintenance/status",
}


#: gRPC method -> the gateway route whose permission rules apply (examples.kvstore.auth).
_AUTH_ROUTES = {
    **_ROUTES,
    "Hash": "maintenance/hash",
    "HashKV": "maintenance/hashkv",
    "MoveLeader": "maintenance/transfer-leadership",
    "Defragment": "maintenance/defragment",
    "Snapshot": "maintenance/snapshot",
    "Lock": "lock/lock",
    "Unlock": "lock/unlock",
    "Campaign": "election/campaign",
    "Proclaim": "election/proclaim",
    "Resign": "election/resign",
    "Leader": "election/leader",
    "Observe": "election/observe",
}

#: etcdserverpb.Auth method -> (gateway route, response message name).
AUTH_METHODS = {
    "AuthEnable": ("auth/enable", "AuthEnableResponse"),
    "AuthDisable": ("auth/disable", "AuthDisableResponse"),
    "AuthStatus": ("auth/status", "AuthStatusResponse"),
    "Authenticate": ("auth/authenticate", "AuthenticateResponse"),
    "UserAdd": ("auth/user/add", "AuthUserAddResponse"),
    "UserGet": ("auth/user/get", "AuthUserGetResponse"),
    "UserList": ("auth/user/list", "AuthUserListResponse"),
    "UserDelete": ("auth/user/delete", "AuthUserDeleteResponse"),
    "UserChangePassword": ("auth/user/changepw", "AuthUserChangePasswordResponse"),
    "UserGrantRole": ("auth/user/grant", "AuthUserGrantRoleResponse"),
    "UserRevokeRole": ("auth/user/revoke", "AuthUserRevokeRoleResponse"),
    "RoleAdd": ("auth/role/add", "AuthRoleAddResponse"),
    "RoleGet": ("auth/role/get", "AuthRoleGetResponse"),
    "RoleList": ("auth/role/list", "AuthRoleListResponse"),
    "RoleDelete": ("auth/role/delete", "AuthRoleDeleteResponse"),
    "RoleGrantPermission": ("auth/role/grant", "AuthRoleGrantPermissionResponse"),
    "RoleRevokePermission": ("auth/role/revoke", "AuthRoleRevokePermissionResponse"),
}
_AUTH_ROUTES.update({method: route for method, (route, _) in AUTH_METHODS.items()})
_ROUTES.update({method: route for method, (route, _) in AUTH_METHODS.items()})  # metrics labels


def call_token(context: grpc.aio.ServicerContext) -> str | None:
    """The auth token of a call: ``token`` metadata (etcdctl, clientv3) or ``authorization``."""
    for key, value in context.invocation_metadata() or ():
        if key in ("token", "authorization"):
            return value if isinstance(value, str) else value.decode()
    return None


def peer_common_name(context: grpc.aio.ServicerContext) -> str | None:
    """The CN of the client certificate (the TLS connection's, see CallContext.auth_context)."""
    names = context.auth_context().get("x509_common_name")
    return bytes(names[0]).decode() if names else None


def call_credentials(service: EtcdService, context: grpc.aio.ServicerContext) -> auth.Credentials:
    """The credentials a call presents (token, and the certificate CN with --client-cert-auth).

    A call forwarded by another member (``x-kvstore-forwarded``) counts by its token only: its
    connection's certificate is the forwarding member's, not the client's (a client that sets
    the header only loses its own CN)."""
    tls = service.server.config.client_tls
    cn = None
    if tls is not None and tls.client_cert_auth and not Forwarder.hops(context):
        cn = peer_common_name(context)
    return service.credentials(call_token(context), cn)


def to_dict(message: Message) -> dict[str, Any]:
    """A protobuf request as the gateway's JSON object.

    Put and Range requests (the hot ones) are read field by field, several times faster than
    ``json_format.MessageToDict``, which reads every other message (same result, see
    tests/test_kv_grpc_serving.py)."""
    read = _FAST_REQUEST.get(type(message))
    if read is not None:
        return read(message)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _put_request(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if m.key:
        d["key"] = _b64(m.key)
    if m.value:
        d["value"] = _b64(m.value)
    if m.lease:
        d["lease"] = str(m.lease)  # proto3 JSON: int64 as a string
    if m.prev_kv:
        d["prev_kv"] = True
    if m.ignore_value:
        d["ignore_value"] = True
    if m.ignore_lease:
        d["ignore_lease"] = True
    return d


_RANGE_ENUMS = (
    ("sort_order", rpc_pb2.RangeRequest.SortOrder),
    ("sort_target", rpc_pb2.RangeRequest.SortTarget),
)


def _range_request(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if m.key:
        d["key"] = _b64(m.key)
    if m.range_end:
        d["range_end"] = _b64(m.range_end)
    for name in ("limit", "revision", "min_mod_revision", "max_mod_revision", "min_create_revision",
                 "max_create_revision"):  # fmt: skip
        value = getattr(m, name)
        if value:
            d[name] = str(value)
    for name, enum in _RANGE_ENUMS:
        value = getattr(m, name)
        if value:  # a known value by its name, an unknown one (proto3 keeps it) as its number
            d[name] = enum.Name(value) if value in enum.values() else value
    for name in ("serializable", "keys_only", "count_only"):
        if getattr(m, name):
            d[name] = True
    return d


_FAST_REQUEST: dict[Any, Callable[[Any], dict[str, Any]]] = {
    rpc_pb2.PutRequest: _put_request,
    rpc_pb2.RangeRequest: _range_request,
}


def to_message(obj: dict[str, Any], cls: type[Message]) -> Any:
    """A service answer (gateway JSON shape) as the response message ``cls``.

    Range, Put and DeleteRange answers (the hot ones) are built field by field, about ten times
    faster than ``json_format.ParseDict``, which builds every other message (same result, see
    tests/test_kv_grpc_serving.py)."""
    build = _FAST.get(cls)
    if build is not None:
        return build(obj)
    return json_format.ParseDict(obj, cls(), ignore_unknown_fields=True)


def _header(h: dict[str, str]) -> Any:
    return rpc_pb2.ResponseHeader(
        cluster_id=int(h.get("cluster_id", 0)),
        member_id=int(h.get("member_id", 0)),
        revision=int(h.get("revision", 0)),
        raft_term=int(h.get("raft_term", 0)),
    )


_b64decode = base64.b64decode


def _kv(d: dict[str, Any]) -> Any:
    return kv_pb2.KeyValue(
        key=_b64decode(d.get("key", "")),
        create_revision=int(d.get("create_revision", 0)),
        mod_revision=int(d.get("mod_revision", 0)),
        version=int(d.get("version", 0)),
        value=_b64decode(d.get("value", "")),
        lease=int(d.get("lease", 0)),
    )


def _range_response(obj: dict[str, Any]) -> Any:
    return rpc_pb2.RangeResponse(
        header=_header(obj.get("header", {})),
        kvs=[_kv(kv) for kv in obj.get("kvs", ())],
        more=bool(obj.get("more", False)),
        count=int(obj.get("count", 0)),
    )


def _put_response(obj: dict[str, Any]) -> Any:
    out = rpc_pb2.PutResponse(header=_header(obj.get("header", {})))
    if "prev_kv" in obj:
        out.prev_kv.CopyFrom(_kv(obj["prev_kv"]))
    return out


def _delete_response(obj: dict[str, Any]) -> Any:
    return rpc_pb2.DeleteRangeResponse(
        header=_header(obj.get("header", {})),
        deleted=int(obj.get("deleted", 0)),
        prev_kvs=[_kv(kv) for kv in obj.get("prev_kvs", ())],
    )


def _event(ev: dict[str, Any]) -> Any:
    """A watch event as the hub renders it (gateway JSON) -> mvccpb.Event."""
    out = kv_pb2.Event(
        type=kv_pb2.Event.DELETE if ev.get("type") == "DELETE" else kv_pb2.Event.PUT, kv=_kv(ev["kv"])
    )
    if "prev_kv" in ev:
        out.prev_kv.CopyFrom(_kv(ev["prev_kv"]))
    return out


_FAST: dict[Any, Callable[[dict[str, Any]], Any]] = {
    rpc_pb2.RangeResponse: _range_response,
    rpc_pb2.PutResponse: _put_response,
    rpc_pb2.DeleteRangeResponse: _delete_response,
}


def status_code(code: int) -> grpc.StatusCode:
    return _STATUS.get(code, grpc.StatusCode.UNKNOWN)


def header_message(server: KVServer, revision: int | None) -> Any:
    h = rpc_pb2.ResponseHeader(
        cluster_id=server.cluster_id, member_id=server.member_id, raft_term=server.term
    )
    if revision:
        h.revision = revision
    return h


def grpc_target(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 2379}"


class Forwarder:
    """gRPC channels to the leader's client URL (one per URL, reused) for calls only it answers."""

    def __init__(self, server: KVServer) -> None:
        self.server = server
        self.channels: dict[str, grpc.aio.Channel] = {}

    def channel(self) -> grpc.aio.Channel:
        url = self.server.leader_client_url()
        if url is None:
            raise errors.timed_out()
        ch = self.channels.get(url)
        if ch is None:
            target = grpc_target(url)
            tls = self.server.config.client_tls
            if urlsplit(url).scheme == "https" and tls is not None:

                def read(path: str | None) -> bytes | None:
                    if not path:
                        return None
                    with open(path, "rb") as f:
                        return f.read()

                creds = grpc.ssl_channel_credentials(
                    root_certificates=read(tls.trusted_ca_file),
                    private_key=read(tls.key_file),
                    certificate_chain=read(tls.cert_file),
                )
                ch = grpc.aio.secure_channel(target, creds)
            else:
                ch = grpc.aio.insecure_channel(target)
            self.channels[url] = ch
        return ch

    @staticmethod
    def hops(context: grpc.aio.ServicerContext) -> int:
        for key, value in context.invocation_metadata() or ():
            if key == FORWARD_KEY:
                try:
                    return int(value)
                except ValueError:
                    return MAX_HOPS
        return 0

    def metadata(
        self, context: grpc.aio.ServicerContext, token: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The forwarded call's metadata: the hop count and ``token`` (default: the caller's own),
        with which the leader checks the caller's permission again."""
        hops = self.hops(context)
        if hops >= MAX_HOPS:
            raise errors.leader_changed()
        token = token or call_token(context)
        if token:
            return ((FORWARD_KEY, str(hops + 1)), ("token", token))
        return ((FORWARD_KEY, str(hops + 1)),)

    async def unary(
        self,
        context: grpc.aio.ServicerContext,
        path: str,
        request: Message,
        response_cls: type[Message],
        token: str | None = None,
    ) -> Any:
        """Send ``request`` to the leader's ``path`` (``/etcdserverpb.Lease/LeaseTimeToLive``),
        as the user of ``token`` (see :meth:`EtcdService.forwarding_token`)."""
        metadata = self.metadata(context, token)
        call = self.channel().unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        try:
            answer = await call(request, metadata=metadata, timeout=self.server.config.request_timeout)
        except grpc.aio.AioRpcError as exc:
            raise as_etcd_error(exc) from None
        self.relabel(answer)
        return answer

    def relabel(self, answer: Any) -> None:
        """The leader's answer carries this member's header (revision kept only if it had one)."""
        had_revision = answer.header.revision != 0
        answer.header.CopyFrom(
            header_message(self.server, self.server.machine.revision if had_revision else None)
        )

    async def close(self) -> None:
        for ch in self.channels.values():
            with contextlib.suppress(Exception):
                await ch.close()
        self.channels.clear()


def as_etcd_error(exc: grpc.aio.AioRpcError) -> EtcdError:
    """A forwarded call's failure, passed on with its code and message."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.timed_out()
    return EtcdError(exc.code().value[0], exc.details() or "")


class _Base:
    """Shared plumbing: run a service call, count it, turn EtcdError into the gRPC status."""

    def __init__(self, server: KVServer, service: EtcdService, forwarder: Forwarder) -> None:
        self.server = server
        self.service = service
        self.forwarder = forwarder

    async def run(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        call: Callable[[], Awaitable[Any]],
        request: Message | None = None,
    ) -> Any:
        metrics = self.server.metrics
        started = time.perf_counter()
        code = 0
        try:
            if self.server.machine.auth.enabled:
                self.authorize(context, method, to_dict(request) if request is not None else {})
            return await call()
        except EtcdError as err:
            code = err.grpc_code
            await context.abort(status_code(err.grpc_code), err.message)
        finally:
            metrics.handled(_ROUTES.get(method, method), code, time.perf_counter() - started)

    def authorize(self, context: grpc.aio.ServicerContext, method: str, body: dict[str, Any]) -> None:
        """Raise etcd's auth error unless the caller may make this call (auth enabled only)."""
        route = _AUTH_ROUTES.get(method)
        if route is not None:
            self.service.authorize(route, body, call_credentials(self.service, context))

    async def unary(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        request: Message,
        fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        response_cls: type[Message],
        forward_path: str | None = None,
    ) -> Any:
        async def call() -> Any:
            try:
                return to_message(await fn(to_dict(request)), response_cls)
            except ForwardToLeader:
                if forward_path is None:
                    raise errors.not_leader() from None
                path = forward_path

                async def send(token: str | None) -> Any:
                    return await self.forwarder.unary(context, path, request, response_cls, token)

                return await self.service.forward_as(call_credentials(self.service, context), send)

        return await self.run(context, method, call, request)


def _sync(fn: Callable[[], dict[str, Any]]) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    async def call(body: dict[str, Any]) -> dict[str, Any]:
        return fn()

    return call


# ------------------------------------------------------------------------------------------- KV


class KVServicer(_Base, rpc_pb2_grpc.KVServicer):
    async def Range(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(context, "Range", request, self.service.range, rpc_pb2.RangeResponse)

    async def Put(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(context, "Put", request, self.service.put, rpc_pb2.PutResponse)

    async def DeleteRange(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context, "DeleteRange", request, self.service.delete_range, rpc_pb2.DeleteRangeResponse
        )

    async def Txn(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(context, "Txn", request, self.service.txn, rpc_pb2.TxnResponse)

    async def Compact(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(context, "Compact", request, self.service.compact, rpc_pb2.CompactionResponse)


# ---------------------------------------------------------------------------------------- Lease


class LeaseServicer(_Base, rpc_pb2_grpc.LeaseServicer):
    async def LeaseGrant(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context, "LeaseGrant", request, self.service.lease_grant, rpc_pb2.LeaseGrantResponse
        )

    async def LeaseRevoke(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context, "LeaseRevoke", request, self.service.lease_revoke, rpc_pb2.LeaseRevokeResponse
        )

    async def LeaseTimeToLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context,
            "LeaseTimeToLive",
            request,
            self.service.lease_timetolive,
            rpc_pb2.LeaseTimeToLiveResponse,
            "/etcdserverpb.Lease/LeaseTimeToLive",
        )

    async def LeaseLeases(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context, "LeaseLeases", request, _sync(self.service.lease_leases), rpc_pb2.LeaseLeasesResponse
        )

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """One answer per request, from the leader's lease clock (a follower relays a stream to it)."""
        upstream: Any = None
        upstream_url: str | None = None
        try:
            async for request in request_iterator:
                try:
                    primary = await self.service.on_primary()
                except EtcdError as err:
                    await context.abort(status_code(err.grpc_code), err.message)
                if primary:
                    answer = self.service.lease_keepalive_local({"ID": str(request.ID)})
                    yield to_message(answer, rpc_pb2.LeaseKeepAliveResponse)
                    continue
                url = self.server.leader_client_url()
                if upstream is None or url != upstream_url:
                    if upstream is not None:
                        upstream.cancel()
                    try:
                        metadata = self.forwarder.metadata(context)
                    except EtcdError as err:
                        await context.abort(status_code(err.grpc_code), err.message)
                    stub = rpc_pb2_grpc.LeaseStub(self.forwarder.channel())
                    upstream, upstream_url = stub.LeaseKeepAlive(metadata=metadata), url
                try:
                    await asyncio.wait_for(upstream.write(request), self.server.config.request_timeout)
                    answer = await asyncio.wait_for(upstream.read(), self.server.config.request_timeout)
                except (grpc.aio.AioRpcError, TimeoutError) as exc:
                    err = as_etcd_error(exc) if isinstance(exc, grpc.aio.AioRpcError) else errors.timed_out()
                    await context.abort(status_code(err.grpc_code), err.message)
                if answer is grpc.aio.EOF:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, errors.MSG_LEADER_CHANGED)
                self.forwarder.relabel(answer)
                yield answer
        finally:
            if upstream is not None:
                upstream.cancel()


# -------------------------------------------------------------------------------------- Cluster


class ClusterServicer(_Base, rpc_pb2_grpc.ClusterServicer):
    async def MemberList(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context, "MemberList", request, _sync(self.service.member_list), rpc_pb2.MemberListResponse
        )

    async def MemberAdd(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context,
            "MemberAdd",
            request,
            self.service.member_add,
            rpc_pb2.MemberAddResponse,
            "/etcdserverpb.Cluster/MemberAdd",
        )

    async def MemberRemove(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context,
            "MemberRemove",
            request,
            self.service.member_remove,
            rpc_pb2.MemberRemoveResponse,
            "/etcdserverpb.Cluster/MemberRemove",
        )

    async def MemberPromote(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context,
            "MemberPromote",
            request,
            self.service.member_promote,
            rpc_pb2.MemberPromoteResponse,
            "/etcdserverpb.Cluster/MemberPromote",
        )

    async def MemberUpdate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context,
            "MemberUpdate",
            request,
            self.service.member_update,
            rpc_pb2.MemberUpdateResponse,
            "/etcdserverpb.Cluster/MemberUpdate",
        )


# ---------------------------------------------------------------------------------- Maintenance


class MaintenanceServicer(_Base, rpc_pb2_grpc.MaintenanceServicer):
    async def Status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context, "Status", request, _sync(self.service.status), rpc_pb2.StatusResponse
        )

    async def Alarm(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """No alarm is ever raised (no quota, no corruption check): GET lists none, DEACTIVATE is a
        no-op; ACTIVATE is refused rather than recorded and ignored."""
        if request.action == rpc_pb2.AlarmRequest.ACTIVATE:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "activating alarms is not supported by this store"
            )
        return rpc_pb2.AlarmResponse(header=header_message(self.server, self.server.machine.revision))

    async def Defragment(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """The store keeps its keys in memory: there is no file to defragment."""

        async def call() -> Any:
            return rpc_pb2.DefragmentResponse(
                header=header_message(self.server, self.server.machine.revision)
            )

        return await self.run(context, "Defragment", call, request)

    async def Hash(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(context, "Hash", request, _sync(self.service.hash), rpc_pb2.HashResponse)

    async def HashKV(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def call(body: dict[str, Any]) -> dict[str, Any]:
            return self.service.hash_kv(body)

        return await self.unary(context, "HashKV", request, call, rpc_pb2.HashKVResponse)

    async def MoveLeader(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.unary(
            context,
            "MoveLeader",
            request,
            self.service.move_leader,
            rpc_pb2.MoveLeaderResponse,
            "/etcdserverpb.Maintenance/MoveLeader",
        )

    async def Downgrade(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "downgrade is not supported by this store")

    async def Snapshot(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The member's state snapshot (this store's format, see docs/kvstore.md) in blob chunks."""
        try:
            if self.server.machine.auth.enabled:
                self.authorize(context, "Snapshot", {})
            async for chunk in self.service.snapshot():
                yield to_message(chunk, rpc_pb2.SnapshotResponse)
        except EtcdError as err:
            await context.abort(status_code(err.grpc_code), err.message)


# ----------------------------------------------------------------------------------------- Auth


class AuthServicer(_Base):
    """etcdserverpb.Auth: every method is :meth:`EtcdService.auth_call` under its gateway route."""

    def __getattr__(self, method: str) -> Any:
        if method not in AUTH_METHODS:
            raise AttributeError(method)
        route, response = AUTH_METHODS[method]
        response_cls = getattr(rpc_pb2, response)

        async def call_method(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async def fn(body: dict[str, Any]) -> dict[str, Any]:
                return await self.service.auth_call(route, body)

            return await self.unary(context, method, request, fn, response_cls)

        return call_method


# ---------------------------------------------------------------------------------------- Watch


class WatchStream:
    """One Watch call: many watchers, created and cancelled by the client's requests.

    A pump task per watcher moves its queued messages into the stream's bounded output queue; the
    call's response generator writes that queue. When the client stops reading, the output queue
    fills, the pumps block, and each watcher's own queue overflows and cancels it; the watchers of
    the stream also share one :class:`~examples.kvstore.watch.QueueBudget` (``watch_stream_budget``
    messages), so the stream's memory is bounded however many watchers it has.
    """

    def __init__(self, server: KVServer, context: grpc.aio.ServicerContext) -> None:
        self.server = server
        self.context = context
        self.out: asyncio.Queue[Any] = asyncio.Queue(WATCH_OUT_QUEUE)
        self.watchers: dict[int, tuple[Watcher, asyncio.Task[None]]] = {}
        self.next_id = 0
        self.budget = QueueBudget(server.config.watch_stream_budget)
        self.received = 0
        """Requests read from the client so far (the receiver numbers them 1, 2, ...)."""
        self.covered = 0
        """Requests received before the start of the last read barrier: their creates need no other."""

    def header(self, revision: int | None) -> Any:
        return header_message(self.server, revision)

    def permitted(self, body: dict[str, Any]) -> bool:
        """Whether the stream's user may read what the create request ``body`` watches."""
        service = EtcdService(self.server)
        try:
            service.authorize("watch", body, call_credentials(service, self.context))
        except EtcdError:
            return False
        return True

    async def handle(self, request: Any, seq: int = 0) -> None:
        """Answer one request; ``seq`` is its number in the stream (see :attr:`received`)."""
        kind = request.WhichOneof("request_union")
        if kind == "create_request":
            await self.create(request.create_request, seq)
        elif kind == "cancel_request":
            await self.cancel(request.cancel_request.watch_id)
        elif kind == "progress_request":
            await self.out.put(
                rpc_pb2.WatchResponse(
                    header=self.header(self.server.machine.revision), watch_id=PROGRESS_WATCH_ID
                )
            )

    async def barrier_for(self, seq: int) -> None:
        """Wait until the watch created by request ``seq`` may start: after every write acknowledged
        before the client sent it (see watch.serve_watch). One read barrier covers every request
        received before it started, so creates that arrived while a barrier was under way share
        the next one instead of taking a round trip each. Without quorum the watch still starts
        (at the local revision) when the barrier times out, and so do those it covered."""
        if seq and seq <= self.covered:
            return
        self.covered = self.received
        with contextlib.suppress(EtcdError):
            await self.server.read_barrier()

    async def create(self, cr: Any, seq: int = 0) -> None:
        from examples.kvstore.watch import parse_create_request

        body = {"create_request": to_dict(cr)}
        options = parse_create_request(body)  # EtcdError: the writer aborts
        assert options is not None
        wid = cr.watch_id
        if self.server.machine.auth.enabled and not self.permitted(body):
            # etcd answers a created-and-canceled watch with the permission error as reason.
            await self.out.put(
                rpc_pb2.WatchResponse(
                    header=self.header(self.server.machine.revision),
                    watch_id=wid,
                    created=True,
                    canceled=True,
                    cancel_reason=auth.WATCH_DENIED_REASON,
                )
            )
            return
        if wid == 0:
            while self.next_id in self.watchers:
                self.next_id += 1
            wid = self.next_id
            self.next_id += 1
        elif wid in self.watchers:
            await self.out.put(
                rpc_pb2.WatchResponse(
                    header=self.header(self.server.machine.revision),
                    watch_id=wid,
                    created=True,
                    canceled=True,
                    cancel_reason="mvcc: duplicate watch ID provided on the WatchStream",
                )
            )
            return
        if not options.get("start_revision"):
            await self.barrier_for(seq)
        watcher, created_at = self.server.hub.create(**options, budget=self.budget)
        await self.out.put(rpc_pb2.WatchResponse(header=self.header(created_at), watch_id=wid, created=True))
        task = asyncio.create_task(self.pump(wid, watcher, cr.fragment))
        self.watchers[wid] = (watcher, task)

    async def cancel(self, wid: int) -> None:
        entry = self.watchers.pop(wid, None)
        if entry is None:
            return  # etcd answers nothing for an unknown watch ID
        self.stop_watcher(*entry)
        await self.out.put(
            rpc_pb2.WatchResponse(
                header=self.header(self.server.machine.revision), watch_id=wid, canceled=True
            )
        )

    def stop_watcher(self, watcher: Watcher, task: asyncio.Task[None]) -> None:
        task.cancel()
        if not watcher.closed:
            watcher.closed = True
            self.server.hub.remove(watcher)

    async def pump(self, wid: int, watcher: Watcher, fragment: bool) -> None:
        loop = asyncio.get_running_loop()
        interval = self.server.config.progress_notify_interval if watcher.progress_notify else None
        next_progress = loop.time() + interval if interval else None
        while True:
            timeout = None if next_progress is None else max(0.0, next_progress - loop.time())
            item = await watcher.get(timeout)
            if item is None:
                if next_progress is not None and loop.time() >= next_progress:
                    next_progress = loop.time() + (interval or 0)
                    rev = self.server.machine.revision
                    await self.out.put(rpc_pb2.WatchResponse(header=self.header(rev), watch_id=wid))
                continue
            if item[0] == "events":
                resp = rpc_pb2.WatchResponse(
                    header=self.header(item[1]), watch_id=wid, events=[_event(ev) for ev in item[2]]
                )
                for part in self.fragments(resp) if fragment else (resp,):
                    await self.out.put(part)
            elif item[0] == "cancel":
                _, reason, compact_revision = item
                resp = rpc_pb2.WatchResponse(
                    header=self.header(None),
                    watch_id=wid,
                    canceled=True,
                    compact_revision=compact_revision,
                    cancel_reason=reason,
                )
                await self.out.put(resp)
                self.watchers.pop(wid, None)
                return

    def fragments(self, resp: Any) -> list[Any]:
        """etcd's fragmenting: responses over --max-request-bytes split, ``fragment`` on all but the last."""
        limit = self.server.config.max_request_bytes
        if resp.ByteSize() <= limit or len(resp.events) <= 1:
            return [resp]
        parts: list[Any] = []
        current = rpc_pb2.WatchResponse(header=resp.header, watch_id=resp.watch_id, fragment=True)
        for ev in resp.events:
            if current.events and current.ByteSize() + ev.ByteSize() + 8 > limit:
                parts.append(current)
                current = rpc_pb2.WatchResponse(header=resp.header, watch_id=resp.watch_id, fragment=True)
            current.events.append(ev)
        current.fragment = False
        parts.append(current)
        return parts

    def close(self) -> None:
        for watcher, task in self.watchers.values():
            self.stop_watcher(watcher, task)
        self.watchers.clear()


class WatchServicer(_Base, rpc_pb2_grpc.WatchServicer):
    async def Watch(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        stream = WatchStream(self.server, context)
        self.server.metrics.watch_started()  # the stream itself (etcd's watch_stream_total)
        failure: list[BaseException] = []
        # The receiver reads ahead (at most WATCH_IN_QUEUE requests) while the handler waits on a
        # create's read barrier; requests are still answered one by one, in order. A failure of
        # the receive side (a malformed request) is queued behind the requests read before it.
        inbox: asyncio.Queue[tuple[Any, int] | BaseException] = asyncio.Queue(WATCH_IN_QUEUE)

        async def receiver() -> None:
            try:
                async for request in request_iterator:
                    stream.received += 1
                    await inbox.put((request, stream.received))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                await inbox.put(exc)
            # A client that half-closes keeps receiving events, as with etcd.

        async def handler() -> None:
            try:
                while True:
                    item = await inbox.get()
                    if isinstance(item, BaseException):
                        raise item
                    await stream.handle(*item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the call is failing: let the writer end it
                failure.append(exc)
                await stream.out.put(None)

        tasks = (asyncio.create_task(receiver()), asyncio.create_task(handler()))
        try:
            while True:
                item = await stream.out.get()
                if item is None:
                    break
                yield item
        finally:
            for task in tasks:
                task.cancel()
            stream.close()
            self.server.metrics.watch_ended()
        # The reader failed: end the call from here (an abort in the reader's task would not).
        if failure and isinstance(failure[0], EtcdError):
            await context.abort(status_code(failure[0].grpc_code), failure[0].message)
        if failure:
            raise failure[0]


# --------------------------------------------------------------------------------------- server


class _Malformed:
    """What a request that does not parse as its message type deserializes to (see :func:`register`)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _deserializer(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


async def _abort_malformed(context: grpc.aio.ServicerContext, request: _Malformed) -> None:
    # grpc-go's answer to a request that does not unmarshal (what etcd sends).
    await context.abort(grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {request.error}")


class MalformedRequest(Exception):
    """A streamed request that is not valid protobuf (ends the call with INTERNAL, see :func:`_handler`)."""

    def __init__(self, request: _Malformed) -> None:
        super().__init__(request.error)
        self.request = request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            raise MalformedRequest(request)
        yield request


def _handler(method: Any, fn: Any) -> grpc.RpcMethodHandler:
    """A method handler whose malformed requests get INTERNAL ``grpc: error unmarshalling request``
    (grpc's Python server would answer UNKNOWN with a Python exception name)."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    de, ser = _deserializer(request_cls), response_cls.SerializeToString
    if not method.client_streaming and not method.server_streaming:

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await _abort_malformed(context, request)
            return await fn(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, de, ser)
    if not method.client_streaming:

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Malformed):
                await _abort_malformed(context, request)
            async for item in fn(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, de, ser)

    async def stream_stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            async for item in fn(_checked_stream(requests), context):
                yield item
        except MalformedRequest as exc:
            await _abort_malformed(context, exc.request)

    return grpc.stream_stream_rpc_method_handler(stream_stream, de, ser)


def register(server: GrpcServer, servicer: Any, service: Any) -> None:
    """Serve ``servicer``'s methods for the service descriptor ``service`` (those it lacks answer
    UNIMPLEMENTED, as any unknown method)."""
    handlers = {
        m.name: _handler(m, getattr(servicer, m.name)) for m in service.methods if hasattr(servicer, m.name)
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class GrpcEndpoint:
    """A member's gRPC services on the store's own server (:mod:`examples.kvstore.h2grpc`); the
    client-URL listener (:mod:`examples.kvstore.grpcapi_mux`) hands it each HTTP/2 connection."""

    def __init__(self, server: KVServer) -> None:
        self.server = server
        limit = server.config.max_request_bytes + GRPC_OVERHEAD
        self.grpc = GrpcServer(max_receive_message_length=limit, max_send_message_length=MAX_SEND)
        self.forwarder = Forwarder(server)
        service = EtcdService(server)
        args = (server, service, self.forwarder)
        services = rpc_pb2.DESCRIPTOR.services_by_name
        register(self.grpc, KVServicer(*args), services["KV"])
        register(self.grpc, WatchServicer(*args), services["Watch"])
        register(self.grpc, LeaseServicer(*args), services["Lease"])
        register(self.grpc, ClusterServicer(*args), services["Cluster"])
        register(self.grpc, MaintenanceServicer(*args), services["Maintenance"])
        register(self.grpc, AuthServicer(*args), services["Auth"])
        from examples.kvstore.grpcapi_election import add_election_and_lock

        add_election_and_lock(self.grpc, *args)

    def protocol(self) -> asyncio.Protocol:
        """The protocol of one accepted connection that starts with the HTTP/2 preface."""
        return self.grpc.protocol()

    async def stop(self, grace: float = 0.5) -> None:
        await self.grpc.stop(grace)
        await self.forwarder.close()


__all__ = ["GrpcEndpoint", "to_dict", "to_message"]

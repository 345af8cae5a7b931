"""etcd 3.4's JSON gateway on aiohttp: paths, methods, shapes, errors (see docs/kvstore.md).

One catch-all route dispatches by path so that the router-level answers are
exactly etcd's: an unknown path under ``/v3/`` (or ``/v3beta/``) is a 404
``Not Found``, any other unknown path Go's ``404 page not found``, a wrong
method on a gateway path ``Method Not Allowed`` (405) -- all ``text/plain``.
Every response carries etcd's CORS headers and ``OPTIONS`` is answered 200
with an empty body.

Request bodies need no Content-Type; an empty body is ``{}``; JSON errors are
reported with Go's messages; a body whose protobuf encoding would exceed
gRPC's 2 MiB receive limit is refused with code 8 (HTTP 429), as etcd does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from examples.kvstore import codec, errors
from examples.kvstore.auth import MSG_INVALID_TOKEN, WATCH_DENIED_REASON, Credentials, auth_error
from examples.kvstore.errors import EtcdError
from examples.kvstore.grpcapi_election import Recipes, missing_leader_key
from examples.kvstore.grpcapi_mux import common_name
from examples.kvstore.server import CLUSTER_VERSION, ETCD_VERSION, etcd_error
from examples.kvstore.service import EtcdService, ForwardToLeader

AUTH_ROUTES = (
    "auth/enable", "auth/disable", "auth/status", "auth/authenticate",
    "auth/user/add", "auth/user/get", "auth/user/list", "auth/user/delete", "auth/user/changepw",
    "auth/user/grant", "auth/user/revoke",
    "auth/role/add", "auth/role/get", "auth/role/list", "auth/role/delete", "auth/role/grant",
    "auth/role/revoke",
)  # fmt: skip
"""The gateway paths of etcd's Auth service (under /v3/)."""

if TYPE_CHECKING:
    from examples.kvstore.server import KVServer

GRPC_RECV_LIMIT = 2 * 1024 * 1024
"""etcd's gRPC receive limit: --max-request-bytes (1.5 MiB) + 512 KiB of overhead."""
_READ_CAP = 4 * GRPC_RECV_LIMIT
"""Bodies longer than this are refused without being read to the end."""
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
}
FORWARD_HEADER = "X-Kvstore-Forwarded"
MAX_HOPS = 3
JSON_CT = "application/json"

Request = web.BaseRequest
"""What the low-level server hands the handlers (no application, no match info)."""
Handler = Callable[[Request, dict[str, Any], bytes], Awaitable[web.StreamResponse]]


def _headers(content_type: str, *extra: tuple[str, str]) -> CIMultiDictProxy[str]:
    """A response's fixed headers, built once (aiohttp copies them into each response)."""
    return CIMultiDictProxy(CIMultiDict([("Content-Type", content_type), *extra, *CORS_HEADERS.items()]))


_GRPC_CT = ("Grpc-Metadata-Content-Type", "application/grpc")
_JSON_OK = _headers(JSON_CT, _GRPC_CT)
_JSON_ERROR = _headers(JSON_CT)
_TEXT = _headers("text/plain; charset=utf-8", ("X-Content-Type-Options", "nosniff"))


# ---------------------------------------------------------------------------------- encoding


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> bytes:
    """Compact JSON, UTF-8 (Go's encoding/json does not escape non-ASCII either)."""
    return _ENCODER.encode(obj).encode()


def text_response(status: int, text: str) -> web.Response:
    """Go's http.Error: the text plus a newline, text/plain; charset=utf-8."""
    return web.Response(status=status, body=(text + "\n").encode(), headers=_TEXT)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(obj), headers=_JSON_OK if status == 200 else _JSON_ERROR)


def add_cors(response: web.StreamResponse) -> web.StreamResponse:
    """etcd's CORS headers, unless the response set its own (call before ``prepare``)."""
    headers = response.headers
    if "Access-Control-Allow-Origin" not in headers:
        for k, v in CORS_HEADERS.items():
            headers.setdefault(k, v)
    return response


def error_response(err: EtcdError) -> web.Response:
    return json_response(err.body(), status=err.http_status)


def invalid(message: str) -> EtcdError:
    return etcd_error(3, message)


def as_object(value: Any) -> dict[str, Any]:
    """A decoded body that must be a JSON object (``null`` is ``{}``), with Go's type error otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        if isinstance(value, list):
            kind = "array"
        elif isinstance(value, bool):
            kind = "bool"
        elif isinstance(value, str) and not isinstance(value, codec.RawFloat):
            kind = "string"
        else:
            kind = "number"
        raise errors.cannot_unmarshal(kind, "map[string]json.RawMessage")
    return value


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body like grpc-gateway's json.Decoder: empty is {}, errors use Go's words."""
    return as_object(codec.decode_json(raw))


def iter_json_objects(raw: bytes) -> list[dict[str, Any]]:
    """A keepalive body: a stream of JSON objects, back to back or separated by whitespace."""
    return [as_object(v) for v in codec.decode_json_stream(raw)]


def int_field(body: dict[str, Any], name: str, go: str = "int64") -> int:
    """An int64/uint64 request field given as a JSON number or a decimal string (0 when absent)."""
    if go == "uint64":
        return codec.parse_int(body.get(name), go, 0, (1 << 64) - 1)
    return codec.parse_int(body.get(name), go)


def bool_field(body: dict[str, Any], name: str) -> bool:
    return codec.parse_bool(body.get(name))


def _varint_len(n: int) -> int:
    n = abs(n)
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def proto_size(value: Any) -> int:
    """Approximate protobuf size of a decoded JSON request (exact for kv put/range/delete keys).

    Strings are taken as base64 bytes fields (their decoded length), which is
    what every large field of etcd's requests is.
    """
    if isinstance(value, dict):
        return sum(_field_size(v) for v in value.values())
    return _field_size(value) - 1


def _field_size(v: Any) -> int:
    if isinstance(v, bool):
        return 2 if v else 0
    if isinstance(v, int):
        return 1 + _varint_len(v) if v else 0
    if isinstance(v, str):
        n = len(v) - v.count("\n") - v.count("\r")
        size = n * 3 // 4 - (2 if v.endswith("==") else 1 if v.endswith("=") else 0)
        return 1 + _varint_len(size) + size if size > 0 else 0
    if isinstance(v, list):
        return sum(_field_size(x) for x in v)
    if isinstance(v, dict):
        inner = proto_size(v)
        return 1 + _varint_len(inner) + inner
    return 0


def too_large(size: int) -> EtcdError:
    return etcd_error(8, f"grpc: received message larger than max ({size} vs. {GRPC_RECV_LIMIT})")


async def read_body(request: Request) -> bytes:
    """The whole body, refusing (code 8) what would exceed the gRPC receive limit."""
    if request.content_length is not None and request.content_length > _READ_CAP:
        raise too_large(request.content_length * 3 // 4)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        total += len(chunk)
        if total > _READ_CAP:
            raise too_large(total * 3 // 4)
        chunks.append(chunk)
    return b"".join(chunks)


def check_size(raw: bytes, body: dict[str, Any]) -> None:
    if len(raw) > GRPC_RECV_LIMIT:  # a proto encoding is never longer than its JSON form here
        size = proto_size(body)
        if size > GRPC_RECV_LIMIT:
            raise too_large(size)


# ---------------------------------------------------------------------------------- the API


def _says_invalid_token(data: bytes) -> bool:
    """Whether a gateway error body is ``invalid auth token``."""
    try:
        body = json.loads(data)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("message") == MSG_INVALID_TOKEN


class GatewayAPI:
    """The request handlers, bound to one :class:`~examples.kvstore.server.KVServer`."""

    def __init__(self, server: KVServer) -> None:
        self.server = server
        self.machine = server.machine
        self.service = EtcdService(server)
        self.recipes = Recipes(server, self.service)
        self.routes: dict[str, Handler] = {
            "kv/put": self.kv_write("prepare_put", "Put"),
            "kv/range": self.kv_range,
            "kv/deleterange": self.kv_write("prepare_deleterange", "DeleteRange"),
            "kv/txn": self.kv_txn,
            "kv/compaction": self.kv_write("prepare_compaction", "Compact"),
            "watch": self.watch,
            "lease/grant": self.lease_grant,
            "lease/revoke": self.lease_revoke,
            "kv/lease/revoke": self.lease_revoke,
            "lease/keepalive": self.lease_keepalive,
            "lease/timetolive": self.lease_timetolive,
            "kv/lease/timetolive": self.lease_timetolive,
            "lease/leases": self.lease_leases,
            "kv/lease/leases": self.lease_leases,
            "cluster/member/list": self.member_list,
            "cluster/member/add": self.leader_call(self.service.member_add),
            "cluster/member/remove": self.leader_call(self.service.member_remove),
            "cluster/member/promote": self.leader_call(self.service.member_promote),
            "cluster/member/update": self.leader_call(self.service.member_update),
            "maintenance/status": self.status,
            "maintenance/snapshot": self.snapshot,
            "maintenance/transfer-leadership": self.leader_call(self.service.move_leader),
            "lock/lock": self.lock,
            "lock/unlock": self.unlock,
            "election/campaign": self.campaign,
            "election/proclaim": self.proclaim,
            "election/leader": self.leader,
            "election/resign": self.resign,
            "election/observe": self.observe,
        }
        for route in AUTH_ROUTES:
            self.routes[route] = self.auth_route(route)

    # -- plumbing ------------------------------------------------------------------------

    async def handle(self, request: Request) -> web.StreamResponse:
        """The aiohttp low-level server's handler: :meth:`dispatch`, plus CORS on every answer.

        (No ``web.Application``: its URL router and response signals cost a few percent of
        every request and the gateway routes by a dict lookup anyway.)"""
        resp = await self.dispatch(request)
        return resp if resp.prepared else add_cors(resp)

    async def dispatch(self, request: Request) -> web.StreamResponse:
        path = request.path
        if request.method == "OPTIONS":
            return web.Response(status=200)
        if path == "/version":
            if request.method not in ("GET", "HEAD"):
                return text_response(405, "Method Not Allowed")
            return web.Response(body=dumps({"etcdserver": ETCD_VERSION, "etcdcluster": CLUSTER_VERSION}),
                                content_type=JSON_CT)  # fmt: skip
        if path == "/health":
            if request.method not in ("GET", "HEAD"):
                return text_response(405, "Method Not Allowed")
            return await self.health()
        if path == "/metrics":
            return self.server.metrics.response()
        for prefix in ("/v3/", "/v3beta/"):
            if path.startswith(prefix):
                handler = self.routes.get(path[len(prefix) :])
                if handler is None:
                    return text_response(404, "Not Found")
                if request.method != "POST":
                    return text_response(405, "Method Not Allowed")
                return await self.call(handler, request, path[len(prefix) :])
        return text_response(404, "404 page not found")

    async def call(self, handler: Handler, request: Request, route: str) -> web.StreamResponse:
        metrics = self.server.metrics
        started = time.perf_counter()
        code = 0
        try:
            raw = await read_body(request)
            metrics.received_bytes(len(raw))
            body = {} if route == "lease/keepalive" else parse_json_object(raw)
            check_size(raw, body)
            if self.machine.auth.enabled and route != "watch":  # watch: see :meth:`watch`
                self.service.authorize(route, body, self.credentials(request))
            resp = await handler(request, body, raw)
            if isinstance(resp, web.Response) and resp.body is not None:
                metrics.sent_bytes(len(resp.body))  # type: ignore[arg-type]
            return resp
        except EtcdError as err:
            code = err.grpc_code
            return error_response(err)
        finally:
            metrics.handled(route, code, time.perf_counter() - started)

    def header(self, revision: int | None = None) -> dict[str, str]:
        return self.server.header(revision)

    def credentials(self, request: Request) -> Credentials:
        """The request's ``Authorization`` token (as etcd's gateway passes it on) and, with
        --client-cert-auth, its client certificate's CN (not for a forwarded request)."""
        cn = None
        # A forwarded request (X-Kvstore-Forwarded) counts by its token only: the certificate of
        # its connection is the forwarding member's.
        if request.transport is not None and not self.hops(request):
            cn = common_name(request.transport.get_extra_info("peercert"))
        return self.service.credentials(request.headers.get("Authorization"), cn)

    def auth_route(self, route: str) -> Handler:
        """The handler of one ``/v3/auth/*`` path (etcd's Auth service over the gateway)."""

        async def handler(request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
            return json_response(await self.service.auth_call(route, body))

        handler.__name__ = route.replace("/", "_")
        return handler

    @staticmethod
    def hops(request: Request) -> int:
        try:
            return int(request.headers.get(FORWARD_HEADER, "0"))
        except ValueError:
            return MAX_HOPS

    async def forward_json(self, request: Request, raw: bytes, stream: bool = False) -> web.Response:
        """Send the request to the leader's client URL and relay its answer.

        The answer's header is replaced by this member's (etcd fills the header
        of a forwarded lease call locally too). ``stream``: the answer is
        newline-delimited ``{"result": ...}`` objects (keepalive).
        """
        hops = self.hops(request)
        if hops >= MAX_HOPS:
            raise errors.leader_changed()
        # The caller's token, or one for its certificate's CN (checked here already): see
        # EtcdService.forwarding_token. A keepalive (stream) needs no credentials.
        creds = self.credentials(request)

        async def send(token: str | None) -> tuple[int, str, bytes]:
            answer = await self.server.forward(request.path, raw, hops, authorization=token)
            if answer[0] == 401 and token and not creds.token and _says_invalid_token(answer[2]):
                raise auth_error(MSG_INVALID_TOKEN)  # EtcdService.forward_as mints a new one
            return answer

        if stream:
            status, ctype, data = await send(creds.token)
        else:
            status, ctype, data = await self.service.forward_as(creds, send)
        if status != 200:
            return web.Response(status=status, body=data, content_type=ctype.split(";")[0])
        objects = iter_json_objects(data)
        for obj in objects:
            target = obj.get("result", obj)
            if isinstance(target, dict):
                self.service.relabel(target)
        if stream:
            return json_response_lines([dumps(obj) for obj in objects])
        return json_response(objects[0] if objects else {})

    # -- KV ------------------------------------------------------------------------------
    # The semantics live in examples.kvstore.service (shared with the gRPC API); these wrap them.

    def kv_write(self, prepare: str, method: str) -> Handler:
        async def handler(request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
            return json_response(await self.service.write(prepare, body))

        handler.__name__ = method
        return handler

    async def kv_range(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(await self.service.range(body))

    async def kv_txn(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(await self.service.txn(body))

    # -- leases --------------------------------------------------------------------------

    async def lease_grant(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(await self.service.lease_grant(body))

    async def lease_revoke(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(await self.service.lease_revoke(body))

    async def lease_timetolive(
        self, request: Request, body: dict[str, Any], raw: bytes
    ) -> web.StreamResponse:
        try:
            return json_response(await self.service.lease_timetolive(body))
        except ForwardToLeader:
            return await self.forward_json(request, raw)

    async def lease_keepalive(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        objects = iter_json_objects(raw)
        for obj in objects:
            int_field(obj, "ID")
        if not await self.service.on_primary():
            return await self.forward_json(request, raw, stream=True)
        lines = [dumps({"result": self.service.lease_keepalive_local(obj)}) for obj in objects]
        return json_response_lines(lines)

    async def lease_leases(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(self.service.lease_leases())

    # -- watch ---------------------------------------------------------------------------

    async def watch(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        from examples.kvstore.watch import serve_watch

        if self.machine.auth.enabled:
            try:
                self.service.authorize("watch", body, self.credentials(request))
            except EtcdError:
                # etcd answers a watch its user may not read created-and-canceled, with the reason.
                result = {"header": self.header(self.machine.revision), "created": True, "canceled": True,
                          "cancel_reason": WATCH_DENIED_REASON}  # fmt: skip
                return json_response_lines([dumps({"result": result})])
        return await serve_watch(self.server, request, body)

    # -- cluster and maintenance (leader-only calls are forwarded over HTTP) -------------

    def leader_call(self, call: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Handler:
        async def handler(request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
            try:
                return json_response(await call(body))
            except ForwardToLeader:
                return await self.forward_json(request, raw)

        handler.__name__ = call.__name__
        return handler

    async def member_list(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(self.service.member_list())

    async def status(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(self.service.status())

    async def snapshot(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        """Stream the member's state snapshot like etcd's Maintenance.Snapshot (blob chunks)."""
        chunks = self.service.snapshot()
        first = await anext(chunks)  # the snapshot is taken before the headers go out
        resp = add_cors(web.StreamResponse(status=200))
        resp.content_type = JSON_CT
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(dumps({"result": first}) + b"\n")
        async for result in chunks:
            await resp.write(dumps({"result": result}) + b"\n")
        await resp.write_eof()
        return resp

    # -- v3lock and v3election (the recipes are shared with the gRPC services) ----------

    async def lock(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        name = codec.parse_bytes(body.get("name"))
        header, key = await self.recipes.lock(name, int_field(body, "lease"))
        return json_response({"header": header, "key": codec.b64(key)})

    async def unlock(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(await self.recipes.unlock(codec.parse_bytes(body.get("key"))))

    async def campaign(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        name, value = codec.parse_bytes(body.get("name")), codec.parse_bytes(body.get("value"))
        return json_response(await self.recipes.campaign(name, int_field(body, "lease"), value))

    @staticmethod
    def _leader_key(body: dict[str, Any]) -> tuple[bytes, bytes, int, int]:
        leader = body.get("leader")
        if leader is None:
            raise missing_leader_key()
        leader = as_object(leader)
        return (
            codec.parse_bytes(leader.get("name")),
            codec.parse_bytes(leader.get("key")),
            int_field(leader, "rev"),
            int_field(leader, "lease"),
        )

    async def proclaim(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        name, key, rev, lease = self._leader_key(body)
        value = codec.parse_bytes(body.get("value"))
        return json_response(await self.recipes.proclaim(name, key, rev, lease, value))

    async def resign(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        _, key, rev, _ = self._leader_key(body)
        return json_response(await self.recipes.resign(key, rev))

    async def leader(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        return json_response(await self.recipes.leader(codec.parse_bytes(body.get("name"))))

    async def observe(self, request: Request, body: dict[str, Any], raw: bytes) -> web.StreamResponse:
        """A stream of ``{"result": LeaderResponse}`` lines, one per leader or proclaimed value."""
        answers = self.recipes.observe(codec.parse_bytes(body.get("name")))
        resp = add_cors(web.StreamResponse(status=200))
        resp.content_type = JSON_CT
        resp.headers["Grpc-Metadata-Content-Type"] = "application/grpc"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            async for answer in answers:
                await resp.write(dumps({"result": answer}) + b"\n")
        except ConnectionError:
            pass
        return resp

    async def health(self) -> web.Response:
        ok = await self.service.healthy()
        body = dumps({"health": "true" if ok else "false"})
        return web.Response(status=200 if ok else 503, body=body, content_type="text/plain", charset="utf-8")


def json_response_lines(lines: list[bytes]) -> web.Response:
    """Newline-delimited JSON objects (a gateway stream that has ended)."""
    resp = web.Response(status=200, body=b"".join(line + b"\n" for line in lines), content_type=JSON_CT)
    resp.headers["Grpc-Metadata-Content-Type"] = "application/grpc"
    return resp


def build_server(server: KVServer) -> web.Server:
    """The aiohttp low-level HTTP server serving etcd's gateway for ``server``."""
    return web.Server(GatewayAPI(server).handle, handler_cancellation=True, access_log=None)


__all__ = ["GatewayAPI", "add_cors", "build_server", "dumps", "parse_json_object", "proto_size"]

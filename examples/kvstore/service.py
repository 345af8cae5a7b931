"""etcd's KV, Lease, Cluster and Maintenance semantics, once, for the JSON gateway and the gRPC API.

:class:`EtcdService` takes requests as the gateway's JSON objects (int64 as strings or numbers,
bytes in base64, enums by name or number -- exactly what ``json_format.MessageToDict`` makes of a
protobuf request) and returns etcd's response objects in the same shape, ``header`` included.
Errors are :class:`~examples.kvstore.errors.EtcdError` (gRPC code + etcd's message).

Invariant: no transport detail lives here. When a call must be answered by the leader (lease
keepalive/timetolive on the lease clock, membership changes, MoveLeader) and this member does not
lead, the service raises :class:`ForwardToLeader`; the transport (HTTP in :mod:`.api`, gRPC in
:mod:`.grpcapi`) sends the request to the leader and relabels the answer with
:meth:`EtcdService.relabel`.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import raftlib
from examples.kvstore import auth, codec
from examples.kvstore.errors import EtcdError, invalid_argument
from examples.kvstore.mvcc import txn_is_readonly, txn_is_serializable
from examples.kvstore.server import ETCD_VERSION, etcd_error, member_id_for, node_name, url_address

if TYPE_CHECKING:
    from examples.kvstore.server import KVServer

T = TypeVar("T")

SNAPSHOT_CHUNK = 64 * 1024
"""Bytes of state per Maintenance.Snapshot message."""
SNAPSHOT_ALIGN = 512
"""etcd's snapshot stream is a bolt file (512-byte multiple) plus its SHA-256; etcdctl checks both."""


def frame_snapshot(data: bytes) -> bytes:
    """The state padded with spaces to a multiple of 512 bytes, then the SHA-256 of that (etcd's framing).

    ``etcdctl snapshot save`` refuses a stream whose length is not ``512 * n + 32``. The padding
    is whitespace so the JSON snapshot still parses; :func:`unframe_snapshot` checks the digest.
    """
    import hashlib

    padded = data + b" " * (-len(data) % SNAPSHOT_ALIGN)
    return padded + hashlib.sha256(padded).digest()


def unframe_snapshot(data: bytes) -> bytes:
    """The state of a snapshot file: the framing of :func:`frame_snapshot` checked and removed.

    A file without the framing (an older snapshot) is returned unchanged; one whose digest does
    not match raises ValueError.
    """
    import hashlib

    if len(data) % SNAPSHOT_ALIGN != 32:
        return data
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("snapshot file is corrupt: its SHA-256 does not match")
    return body


LEARNER_NOT_READY = "etcdserver: can only promote a learner member which is in sync with leader"
LEARNER_READY_PERCENT = 0.9
"""etcd's readyPercent: a learner is promoted only once its log reaches 90 % of the leader's."""


class ForwardToLeader(Exception):
    """This member cannot answer: send the request to the leader (its client URL is known)."""


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise invalid_argument(f"json: cannot unmarshal {type(value).__name__} into Go value of type string")
    return value


def _b(body: dict[str, Any], name: str) -> bytes:
    value = body.get(name)
    if not value:
        return b""
    return codec.parse_bytes(value)


def _uint(body: dict[str, Any], name: str) -> int:
    return codec.parse_int(body.get(name), "uint64", 0, (1 << 64) - 1)


class EtcdService:
    """The calls of etcd's v3 API on one :class:`~examples.kvstore.server.KVServer`."""

    def __init__(self, server: KVServer) -> None:
        self.server = server
        self.machine = server.machine

    # -- headers -------------------------------------------------------------------------

    def header(self, revision: int | None = None) -> dict[str, str]:
        return self.server.header(revision)

    def result(self, result: dict[str, Any]) -> dict[str, Any]:
        """A KVMachine result (with its ``revision`` key) as etcd's response: header first."""
        result = dict(result)
        revision = result.pop("revision", None)
        if revision is None:
            revision = self.machine.revision
        return {"header": self.header(revision), **result}

    def relabel(self, answer: dict[str, Any]) -> dict[str, Any]:
        """An answer forwarded from the leader, with this member's header (etcd's ``hdr.fill``)."""
        if isinstance(answer.get("header"), dict):
            with_revision = "revision" in answer["header"]
            answer["header"] = self.header(self.machine.revision if with_revision else None)
        return answer

    # -- KV ------------------------------------------------------------------------------

    async def write(self, prepare: str, body: dict[str, Any]) -> dict[str, Any]:
        """Put, DeleteRange or Compact: ``prepare`` names the KVMachine method building the command."""
        command = getattr(self.machine, prepare)(body)
        return self.result(await self.server.propose(command))

    async def put(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.write("prepare_put", body)

    async def delete_range(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.write("prepare_deleterange", body)

    async def compact(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.write("prepare_compaction", body)

    async def range(self, body: dict[str, Any]) -> dict[str, Any]:
        """Linearizable (ReadIndex barrier) unless ``serializable``; bad requests fail first."""
        req = codec.parse_range(body)
        if not req.get("key"):
            from examples.kvstore import errors

            raise errors.empty_key()
        if not req.get("serializable"):
            await self.server.read_barrier()
        return self.result(self.machine.serve_range(req))

    async def txn(self, body: dict[str, Any]) -> dict[str, Any]:
        """A txn whose every op is a range is served locally after the read barrier (none when
        all its ranges are serializable), like etcd; any other txn is proposed."""
        req = self.machine.parse_txn(body)
        if txn_is_readonly(req):
            if not txn_is_serializable(req):
                await self.server.read_barrier()
            return self.result(self.machine.serve_read_txn(req))
        return self.result(await self.server.propose(self.machine.txn_command(req)))

    # -- leases --------------------------------------------------------------------------

    async def lease_grant(self, body: dict[str, Any]) -> dict[str, Any]:
        command = self.machine.prepare_lease_grant(body, self.server.rng)
        return self.result(await self.server.propose(command))

    async def lease_revoke(self, body: dict[str, Any]) -> dict[str, Any]:
        command = self.machine.prepare_lease_revoke(body)
        return self.result(await self.server.propose(command))

    async def on_primary(self) -> bool:
        """True when this member answers with its own lease clock (it leads), False to forward."""
        if not await self.server.wait_primary():
            return False
        await self.server.wait_applied_commit()
        return True

    async def lease_timetolive(self, body: dict[str, Any]) -> dict[str, Any]:
        codec.parse_lease_timetolive(body)
        if not await self.on_primary():
            raise ForwardToLeader
        return self.result(self.machine.lease_timetolive(body, time.monotonic()))

    def lease_keepalive_local(self, body: dict[str, Any]) -> dict[str, Any]:
        """One keepalive on this (primary) member's lease clock; call :meth:`on_primary` first."""
        return self.result(self.machine.lease_keepalive(body, time.monotonic()))

    def lease_leases(self) -> dict[str, Any]:
        return self.result(self.machine.lease_leases())

    # -- cluster -------------------------------------------------------------------------

    def member_list(self) -> dict[str, Any]:
        return {"header": self.header(None), "members": self.server.members()}

    async def leader_here(self) -> None:
        """Return when this member leads; raise ForwardToLeader when another does."""
        node = self.server._node()
        if node.is_leader:
            return
        try:
            await node.wait_leader(self.server.config.request_timeout)
        except raftlib.NotLeader:
            raise etcd_error(14, "etcdserver: no leader") from None
        if not node.is_leader:
            raise ForwardToLeader

    async def _conf_change(self, call: Callable[[], Awaitable[Any]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.config.request_timeout
        while True:
            try:
                await asyncio.wait_for(call(), max(0.1, deadline - loop.time()))
                return
            except raftlib.ConfChangeInProgress:
                if loop.time() >= deadline:
                    raise etcd_error(14, "etcdserver: request timed out") from None
                await asyncio.sleep(0.05)
            except raftlib.NotLeader:
                raise etcd_error(14, "etcdserver: leader changed") from None
            except TimeoutError:
                raise etcd_error(14, "etcdserver: request timed out") from None

    async def member_add(self, body: dict[str, Any]) -> dict[str, Any]:
        learner = codec.parse_bool(body.get("isLearner"))
        urls = self._peer_urls(body)
        address = url_address(urls[0])
        await self.leader_here()
        server = self.server
        node = server._node()
        for m in server.members():
            if set(m.get("peerURLs", ())) & set(urls):
                raise etcd_error(9, "etcdserver: Peer URLs already exists")
        mid = member_id_for(urls, server.config.initial_cluster_token)
        nid = node_name(mid)
        await server.propose_attributes(nid, list(urls))
        if learner:
            await self._conf_change(lambda: node.add_learner(nid, address))
        else:
            # Learner first, promoted by raftlib once it has caught up; answer once it is a member.
            task = asyncio.ensure_future(node.add_member(nid, address, timeout=None))
            server.background(task)

            async def added() -> None:
                while nid not in node.membership().members():
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.02)

            await self._conf_change(added)
        member: dict[str, Any] = {"ID": str(mid), "peerURLs": list(urls)}
        if learner:
            member["isLearner"] = True
        return {"header": self.header(None), "member": member, "members": server.members()}

    async def member_update(self, body: dict[str, Any]) -> dict[str, Any]:
        """etcd's MemberUpdate: new peer URLs for a member, set through the log on every member
        (the raft transports dial the first one from then on; the member itself keeps listening
        where it listens until it is restarted with the new URLs, as with etcd)."""
        nid = self._member_nid(body)
        urls = self._peer_urls(body)
        await self.leader_here()
        server = self.server
        async with server.member_update_lock:
            # Checked on the leader, against everything committed before (a previous leader's
            # updates included), one update at a time: etcd's ValidateConfigurationChange.
            await server.wait_applied_commit()
            self._member_nid(body)
            mid = str(int(nid, 16))
            for m in server.members():
                if m["ID"] != mid and set(m.get("peerURLs", ())) & set(urls):
                    raise etcd_error(9, "etcdserver: Peer URLs already exists")
            await server.propose_attributes(nid, urls)
        return {"header": self.header(None), "members": server.members()}

    @staticmethod
    def _peer_urls(body: dict[str, Any]) -> list[str]:
        """``peerURLs``: a non-empty list of ``http(s)://host:port`` (etcd's ErrGRPCMemberBadURLs)."""
        urls = body.get("peerURLs") or []
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise etcd_error(3, "etcdserver: given member URLs are invalid")
        try:
            for u in urls:
                url_address(u)
        except ValueError:
            raise etcd_error(3, "etcdserver: given member URLs are invalid") from None
        return list(urls)

    def _member_nid(self, body: dict[str, Any]) -> str:
        mid = _uint(body, "ID")
        nid = node_name(mid) if mid > 0 else ""
        if not nid or not any(m["ID"] == str(mid) for m in self.server.members()):
            raise etcd_error(5, "etcdserver: member not found")
        return nid

    async def member_remove(self, body: dict[str, Any]) -> dict[str, Any]:
        nid = self._member_nid(body)
        await self.leader_here()
        node = self.server._node()
        try:
            await self._conf_change(lambda: node.remove_member(nid))
        except raftlib.ConfChangeError as exc:
            raise etcd_error(9, f"etcdserver: {exc}") from None
        return {"header": self.header(None), "members": self.server.members()}

    async def member_promote(self, body: dict[str, Any]) -> dict[str, Any]:
        nid = self._member_nid(body)
        node = self.server._node()
        if nid not in node.membership().learners:
            raise etcd_error(9, "etcdserver: can only promote a learner member")
        await self.leader_here()
        if not self._learner_ready(nid):
            raise etcd_error(9, LEARNER_NOT_READY)
        try:
            await self._conf_change(lambda: node.promote(nid))
        except raftlib.ConfChangeError:
            raise etcd_error(9, LEARNER_NOT_READY) from None
        return {"header": self.header(None), "members": self.server.members()}

    def _learner_ready(self, nid: str) -> bool:
        """etcd's isLearnerReady: the learner's match index is at least 90 % of the leader's."""
        progress = self.server._node().status().get("progress") or {}
        leader_match = int((progress.get(self.server.node_id) or {}).get("match", 0))
        learner_match = int((progress.get(nid) or {}).get("match", 0))
        return learner_match >= LEARNER_READY_PERCENT * leader_match

    # -- auth ----------------------------------------------------------------------------

    def authorize(self, route: str, body: dict[str, Any], creds: auth.Credentials) -> None:
        """Raise etcd's auth error unless ``creds`` may make the ``route`` request (no-op when
        auth is disabled; see :func:`examples.kvstore.auth.authorize`)."""
        machine = self.machine
        if not machine.auth.enabled:
            return
        store = machine.store
        auth.authorize(
            machine.auth, self.server.tokens, route, body, creds, lambda lid: list(store.lease_keys(lid))
        )

    def credentials(self, token: str | None, common_name: str | None) -> auth.Credentials:
        """The request's credentials; the certificate CN counts only with --client-cert-auth."""
        tls = self.server.config.client_tls
        if common_name and not (tls is not None and tls.client_cert_auth):
            common_name = None
        if not token and not common_name:
            return auth.NO_CREDENTIALS
        return auth.Credentials(token or None, common_name)

    async def forwarding_token(self, creds: auth.Credentials) -> str | None:
        """The token a call this member forwards to the leader carries (None: no credentials).

        The caller ran :meth:`authorize` here first. A client's own token is passed on. A client
        known only by its certificate's CN (--client-cert-auth) gets a simple token for that
        user, assigned through Raft like Authenticate's (so the leader knows it), minted here
        because this member verified the certificate: the leader cannot see the client's
        certificate (the forwarded call comes over this member's own connection) and trusts no
        name a connection merely claims. One token per CN is kept and reused while it is live;
        it never leaves the members."""
        if creds.token:
            return creds.token
        name = creds.common_name
        if not name or not self.machine.auth.enabled:
            return None
        cache = self.server.forwarding_tokens
        token = cache.get(name)
        if token is not None and self.machine.tokens.user_of(token) == name:
            return token
        token = f"{auth.TokenTable.new_token()}.{self.machine.applied_index + 1}"
        await self._auth_propose({"a": "authenticate", "name": name, "token": token})
        cache[name] = token
        return token

    async def forward_as(self, creds: auth.Credentials, send: Callable[[str | None], Awaitable[T]]) -> T:
        """``send(token)`` to the leader with :meth:`forwarding_token`'s token; once more with a new
        one when the leader no longer knows the token minted for a CN (each member expires an idle
        token on its own clock: a new leader may have dropped one this member kept using)."""
        token = await self.forwarding_token(creds)
        try:
            return await send(token)
        except EtcdError as err:
            if creds.token or token is None or err.message != auth.MSG_INVALID_TOKEN:
                raise
        if creds.common_name:
            self.server.forwarding_tokens.pop(creds.common_name, None)
        return await send(await self.forwarding_token(creds))

    async def _auth_propose(self, req: dict[str, Any]) -> dict[str, Any]:
        result = await self.server.propose(self.machine.prepare_auth(req))
        result.pop("revision", None)
        return {"header": self.header(self.machine.revision), **result}

    async def auth_call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call of etcd's Auth service, by gateway route (``auth/user/add``...); the caller
        ran :meth:`authorize` first. Changes go through Raft; reads are served after a barrier."""
        state = self.machine.auth
        if route == "auth/status":
            await self.server.read_barrier()
            out: dict[str, Any] = {"header": self.header(self.machine.revision)}
            if state.enabled:
                out["enabled"] = True
            if state.revision:
                out["authRevision"] = str(state.revision)
            return out
        if route == "auth/authenticate":
            return await self.authenticate(_str(body, "name"), _str(body, "password"))
        if route in ("auth/enable", "auth/disable"):
            return await self._auth_propose({"a": route[5:]})
        if route == "auth/user/add":
            name = _str(body, "name")
            if not name:
                raise auth.auth_error(auth.MSG_USER_EMPTY)
            if body.get("hashedPassword"):
                raise invalid_argument("etcdserver: hashed passwords are not supported by this store")
            options = body.get("options") if isinstance(body.get("options"), dict) else {}
            no_password = codec.parse_bool((options or {}).get("no_password"))
            hashed = (
                "" if no_password else await asyncio.to_thread(auth.hash_password, _str(body, "password"))
            )
            return await self._auth_propose(
                {"a": "user_add", "name": name, "password": hashed, "no_password": no_password}
            )
        if route == "auth/user/changepw":
            name = _str(body, "name")
            if name not in state.users:
                raise auth.auth_error(auth.MSG_USER_NOT_FOUND)
            hashed = await asyncio.to_thread(auth.hash_password, _str(body, "password"))
            return await self._auth_propose({"a": "user_changepw", "name": name, "password": hashed})
        if route == "auth/user/delete":
            return await self._auth_propose({"a": "user_delete", "name": _str(body, "name")})
        if route == "auth/user/grant":
            return await self._auth_propose(
                {"a": "user_grant", "user": _str(body, "user"), "role": _str(body, "role")}
            )
        if route == "auth/user/revoke":
            return await self._auth_propose(
                {"a": "user_revoke", "name": _str(body, "name"), "role": _str(body, "role")}
            )
        if route == "auth/role/add":
            return await self._auth_propose({"a": "role_add", "name": _str(body, "name")})
        if route == "auth/role/delete":
            return await self._auth_propose({"a": "role_delete", "role": _str(body, "role")})
        if route == "auth/role/grant":
            perm = body.get("perm") if isinstance(body.get("perm"), dict) else {}
            raw_type = (perm or {}).get("permType", 0)
            if isinstance(raw_type, str) and raw_type in auth.PERM_NAMES:
                ptype = auth.PERM_NAMES[raw_type]
            else:
                ptype = codec.parse_int(raw_type, "int32", -(1 << 31), (1 << 31) - 1)
                if ptype not in (auth.READ, auth.WRITE, auth.READWRITE):
                    raise invalid_argument(f'unknown value "{raw_type}" for enum authpb.Permission_Type')
            req = {
                "a": "role_grant",
                "name": _str(body, "name"),
                "perm": {"permType": ptype, "key": _b(perm, "key"), "range_end": _b(perm, "range_end")},
            }
            return await self._auth_propose(req)
        if route == "auth/role/revoke":
            req = {"a": "role_revoke", "role": _str(body, "role"), "key": _b(body, "key"),
                   "range_end": _b(body, "range_end")}  # fmt: skip
            return await self._auth_propose(req)
        await self.server.read_barrier()
        header = self.header(self.machine.revision)
        if route == "auth/user/get":
            return {"header": header, **state.user_get(_str(body, "name"))}
        if route == "auth/role/get":
            return {"header": header, **state.role_get(_str(body, "role"))}
        if route == "auth/user/list":
            users = sorted(state.users)
            return {"header": header, "users": users} if users else {"header": header}
        if route == "auth/role/list":
            roles = sorted(state.roles)
            return {"header": header, "roles": roles} if roles else {"header": header}
        raise invalid_argument(f"unknown auth call {route!r}")

    async def authenticate(self, name: str, password: str) -> dict[str, Any]:
        """etcd's Authenticate: the password is checked here (in a thread), then the token is
        assigned through Raft so that every member accepts it."""
        state = self.machine.auth
        if not state.enabled:
            raise auth.auth_error(auth.MSG_AUTH_NOT_ENABLED)
        user = state.users.get(name)
        if user is None or user.no_password:
            raise auth.auth_error(auth.MSG_AUTH_FAILED)
        if not await asyncio.to_thread(auth.check_password, password, user.password):
            raise auth.auth_error(auth.MSG_AUTH_FAILED)
        jwt = self.server.tokens if isinstance(self.server.tokens, auth.JWTTokens) else None
        # A JWT is signed here once the command is applied, with the auth revision of that moment
        # (etcd assigns it at apply); a simple token is chosen now and recorded by every member.
        token = "" if jwt else f"{auth.TokenTable.new_token()}.{self.machine.applied_index + 1}"
        out = await self._auth_propose({"a": "authenticate", "name": name, "token": token})
        revision = int(out.pop("authRevision", 0))
        if jwt is not None:
            out["token"] = jwt.assign(name, revision)
        return out

    # -- maintenance ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        st = self.server.status_fields()
        size = self.server.db_size()
        out: dict[str, Any] = {"header": self.header(self.machine.revision), "version": ETCD_VERSION}
        if size:
            out["dbSize"] = str(size)
        if st["leader"]:
            out["leader"] = str(st["leader"])
        for key, value in (
            ("raftIndex", st["commit"]),
            ("raftTerm", st["term"]),
            ("raftAppliedIndex", st["applied"]),
        ):
            if value:
                out[key] = str(value)
        if not st["leader"]:
            out["errors"] = ["etcdserver: no leader"]
        if size:
            out["dbSizeInUse"] = str(size)
        if self.server.is_learner():
            out["isLearner"] = True
        return out

    async def snapshot(self) -> AsyncIterator[dict[str, Any]]:
        """Maintenance.Snapshot: the member's state, framed like etcd's (:func:`frame_snapshot`),
        in chunks (``remaining_bytes`` counts down to 0)."""
        data = frame_snapshot(await self.server.snapshot_bytes())
        for offset in range(0, max(1, len(data)), SNAPSHOT_CHUNK):
            blob = data[offset : offset + SNAPSHOT_CHUNK]
            result: dict[str, Any] = {"header": self.header(self.machine.revision)}
            remaining = len(data) - offset - len(blob)
            if remaining:
                result["remaining_bytes"] = str(remaining)
            if blob:
                result["blob"] = codec.b64(blob)
            yield result

    async def move_leader(self, body: dict[str, Any]) -> dict[str, Any]:
        """etcd's MoveLeader (``targetID``: a member ID): the leader hands leadership to a voter."""
        mid = _uint(body, "targetID")
        nid = node_name(mid) if mid > 0 else ""
        node = self.server._node()
        if not nid or nid not in node.membership().voters:
            raise etcd_error(9, "etcdserver: bad leader transferee")
        await self.leader_here()
        if node.leader != nid:
            try:
                await node.transfer_leadership(nid, timeout=self.server.config.request_timeout)
            except TimeoutError:
                raise etcd_error(14, "etcdserver: request timed out, leader transfer took too long") from None
            except raftlib.RaftError as exc:
                raise etcd_error(9, f"etcdserver: {exc}") from None
        return {"header": self.header(None)}

    def hash_kv(self, body: dict[str, Any]) -> dict[str, Any]:
        """HashKV: CRC-32 over every live key, its revisions and value at ``revision`` (0 = current).

        Members holding the same data at that revision answer the same hash (what ``etcdctl
        endpoint hashkv`` compares); the figure is not etcd's (etcd hashes its bolt key layout).
        """
        revision = codec.parse_int(body.get("revision"))
        if revision < 0:
            revision = 0
        req: dict[str, Any] = {"key": "AA==", "range_end": "AA=="}
        if revision:
            req["revision"] = str(revision)
        answer = self.machine.range(req)
        crc = 0
        for kv in answer.get("kvs", ()):
            for field in ("key", "create_revision", "mod_revision", "version", "value", "lease"):
                crc = zlib.crc32(str(kv.get(field, "")).encode(), crc)
        out: dict[str, Any] = {"header": self.header(self.machine.revision)}
        if crc:
            out["hash"] = crc
        if self.machine.compact_revision:
            out["compact_revision"] = str(self.machine.compact_revision)
        return out

    def hash(self) -> dict[str, Any]:
        """Hash: :meth:`hash_kv` at the current revision, leases folded in."""
        out = self.hash_kv({})
        crc = int(out.get("hash", 0))
        for lease in self.machine.lease_leases().get("leases", ()):
            crc = zlib.crc32(lease["ID"].encode(), crc)
        out.pop("compact_revision", None)
        if crc:
            out["hash"] = crc
        return out

    async def healthy(self) -> bool:
        """A leader is known and a ReadIndex round completes within a second (etcd's /health)."""
        server = self.server
        if server.node is None or server.node.leader is None:
            return False
        try:
            await asyncio.wait_for(server.read_barrier(), 1.0)
        except (EtcdError, TimeoutError):
            return False
        return True


__all__ = ["EtcdService", "ForwardToLeader", "frame_snapshot", "unframe_snapshot"]

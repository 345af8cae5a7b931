"""etcd's v3lock and v3election services: locks and leader elections built on leases and txns.

The recipes are those of etcd's client ``concurrency`` package, run inside the member on the
shared service layer (:class:`~examples.kvstore.service.EtcdService`) and the watch hub:

* a contender's key is ``<name>/<lease ID in hex>``, put only if absent (``create_revision == 0``)
  and attached to the caller's lease, so it disappears when the lease expires or is revoked;
* the owner (lock holder, election leader) is the key of the prefix with the smallest
  ``create_revision``; a contender waits until every key created before its own is deleted
  (watching one predecessor at a time, etcd's ``waitDeletes``);
* a waiting Lock or Campaign whose caller goes away deletes its key (etcd does the same), so an
  abandoned contender never blocks the ones behind it.

Errors are etcd's: ``election: not leader`` and ``election: no leader`` (gRPC UNKNOWN, as etcd
returns the plain Go error), ``"leader" field must be provided``, lease errors from the KV layer.
A Lock or Campaign call waits as long as its caller does (the client's deadline or cancel ends it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from examples.kvstore import codec
from examples.kvstore.errors import UNKNOWN, EtcdError
from examples.kvstore.proto.stubs import v3election_pb2, v3election_pb2_grpc, v3lock_pb2, v3lock_pb2_grpc

if TYPE_CHECKING:
    from examples.kvstore.grpcapi import Forwarder
    from examples.kvstore.server import KVServer
    from examples.kvstore.service import EtcdService

SESSION_TTL = 60
"""etcd's default session TTL: the lease granted for a Lock/Campaign sent without one."""


def not_leader() -> EtcdError:
    return EtcdError(UNKNOWN, "election: not leader")


def no_leader() -> EtcdError:
    return EtcdError(UNKNOWN, "election: no leader")


def missing_leader_key() -> EtcdError:
    return EtcdError(UNKNOWN, '"leader" field must be provided')


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class Recipes:
    """Lock and election operations on one member (keys are bytes, answers are gateway-shaped dicts)."""

    def __init__(self, server: KVServer, service: EtcdService) -> None:
        self.server = server
        self.service = service

    # -- KV helpers ----------------------------------------------------------------------

    @staticmethod
    def _create_is(key: bytes, revision: int) -> dict[str, Any]:
        return {
            "key": codec.b64(key),
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": str(revision),
        }

    async def _txn(self, compare: list[Any], success: list[Any], failure: list[Any]) -> dict[str, Any]:
        return await self.service.txn({"compare": compare, "success": success, "failure": failure})

    async def _first_or_last(
        self, prefix: bytes, *, last: bool = False, max_create: int = 0
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The key of ``prefix`` created first (or last, below ``max_create``), and the header."""
        req: dict[str, Any] = {
            "key": codec.b64(prefix),
            "range_end": codec.b64(prefix_end(prefix)),
            "sort_target": "CREATE",
            "sort_order": "DESCEND" if last else "ASCEND",
            "limit": "1",
        }
        if max_create:
            req["max_create_revision"] = str(max_create)
        answer = await self.service.range(req)
        kvs = answer.get("kvs") or []
        return (kvs[0] if kvs else None), answer["header"]

    async def _wait_delete(self, key: bytes, revision: int) -> None:
        """Until ``key`` is deleted at or after ``revision`` (etcd's waitDelete)."""
        watcher, _ = self.server.hub.create(key, b"", start_revision=revision, filters=frozenset({"NOPUT"}))
        try:
            while True:
                item = await watcher.get(None)
                if item is None:
                    continue
                if item[0] == "events" and item[2]:
                    return
                if item[0] == "cancel":
                    raise EtcdError(
                        UNKNOWN, "watch for the previous owner was cancelled: " + (item[1] or "compacted")
                    )
        finally:
            watcher.closed = True
            self.server.hub.remove(watcher)

    async def _wait_deletes(self, prefix: bytes, max_create: int) -> dict[str, Any]:
        """Until no key of ``prefix`` created at or below ``max_create`` is left (etcd's waitDeletes)."""
        while True:
            kv, header = await self._first_or_last(prefix, last=True, max_create=max_create)
            if kv is None:
                return header
            await self._wait_delete(codec.b64decode_go(kv["key"]), int(header["revision"]))

    async def _session_lease(self, lease: int) -> int:
        if lease:
            return lease
        granted = await self.service.lease_grant({"TTL": str(SESSION_TTL)})
        return int(granted["ID"])

    async def _contend(self, name: bytes, lease: int, value: bytes, proclaim: bool) -> tuple[bytes, int]:
        """Put this contender's key if absent; (key, its create revision)."""
        key = name + b"/" + f"{lease:x}".encode()
        put = {"request_put": {"key": codec.b64(key), "value": codec.b64(value), "lease": str(lease)}}
        get = {"request_range": {"key": codec.b64(key)}}
        answer = await self._txn([self._create_is(key, 0)], [put], [get])
        if answer.get("succeeded"):
            return key, int(answer["header"]["revision"])
        kv = answer["responses"][0]["response_range"]["kvs"][0]
        revision = int(kv.get("create_revision", 0))
        if proclaim and codec.b64decode_go(kv.get("value", "")) != value:
            await self.proclaim(name, key, revision, lease, value)
        return key, revision

    async def _delete(self, key: bytes) -> dict[str, Any]:
        return await self.service.delete_range({"key": codec.b64(key)})

    # -- lock ----------------------------------------------------------------------------

    async def lock(self, name: bytes, lease: int) -> tuple[dict[str, Any], bytes]:
        """Acquire the lock ``name`` for ``lease``: (header, the holder's key)."""
        lease = await self._session_lease(lease)
        prefix = name + b"/"
        key, my_rev = await self._contend(prefix[:-1], lease, b"", proclaim=False)
        acquired = False
        try:
            owner, header = await self._first_or_last(prefix)
            if owner is None or int(owner.get("create_revision", 0)) == my_rev:
                acquired = True
                return header, key
            await self._wait_deletes(prefix, my_rev - 1)
            mine = await self.service.range({"key": codec.b64(key)})
            if not mine.get("kvs"):
                raise EtcdError(UNKNOWN, "session expired")
            acquired = True
            return mine["header"], key
        finally:
            if not acquired:
                with contextlib.suppress(EtcdError):
                    await asyncio.shield(self._delete(key))

    async def unlock(self, key: bytes) -> dict[str, Any]:
        answer = await self._delete(key)
        return {"header": answer["header"]}

    # -- election ------------------------------------------------------------------------

    async def campaign(self, name: bytes, lease: int, value: bytes) -> dict[str, Any]:
        lease = await self._session_lease(lease)
        prefix = name + b"/"
        key, rev = await self._contend(name, lease, value, proclaim=True)
        elected = False
        try:
            await self._wait_deletes(prefix, rev - 1)
            mine = await self.service.range({"key": codec.b64(key)})
            if not mine.get("kvs"):
                raise EtcdError(UNKNOWN, "session expired")
            elected = True
            leader = {"name": codec.b64(name), "key": codec.b64(key), "rev": str(rev), "lease": str(lease)}
            return {"header": mine["header"], "leader": leader}
        finally:
            if not elected:
                with contextlib.suppress(EtcdError):
                    await asyncio.shield(self.resign(key, rev))

    async def proclaim(self, name: bytes, key: bytes, rev: int, lease: int, value: bytes) -> dict[str, Any]:
        put = {"request_put": {"key": codec.b64(key), "value": codec.b64(value), "lease": str(lease)}}
        answer = await self._txn([self._create_is(key, rev)], [put], [])
        if not answer.get("succeeded"):
            raise not_leader()
        return {"header": answer["header"]}

    async def resign(self, key: bytes, rev: int) -> dict[str, Any]:
        delete = {"request_delete_range": {"key": codec.b64(key)}}
        answer = await self._txn([self._create_is(key, rev)], [delete], [])
        return {"header": answer["header"]}

    async def leader(self, name: bytes) -> dict[str, Any]:
        kv, header = await self._first_or_last(name + b"/")
        if kv is None:
            raise no_leader()
        return {"header": header, "kv": kv}

    async def observe(self, name: bytes) -> AsyncIterator[dict[str, Any]]:
        """Every leader (and every value a leader proclaims), in order, until the caller leaves."""
        prefix = name + b"/"
        hub = self.server.hub
        while True:
            kv, header = await self._first_or_last(prefix)
            revision = int(header.get("revision", 0))
            if kv is None:
                watcher, _ = hub.create(prefix, prefix_end(prefix), start_revision=revision + 1,
                                        filters=frozenset({"NODELETE"}))  # fmt: skip
                try:
                    while kv is None:
                        item = await watcher.get(None)
                        if item and item[0] == "events" and item[2]:
                            kv, revision = item[2][0]["kv"], item[1]
                        elif item and item[0] == "cancel":
                            break
                finally:
                    watcher.closed = True
                    hub.remove(watcher)
                if kv is None:
                    continue
                header = self.server.header(revision)
            yield {"header": header, "kv": kv}
            key = codec.b64decode_go(kv["key"])
            watcher, _ = hub.create(key, b"", start_revision=revision + 1)
            try:
                while True:
                    item = await watcher.get(None)
                    if not item or item[0] == "cancel":
                        break
                    if item[0] != "events":
                        continue
                    last = item[2][-1]
                    if last.get("type") == "DELETE":
                        break
                    yield {"header": self.server.header(item[1]), "kv": last["kv"]}
            finally:
                watcher.closed = True
                hub.remove(watcher)


# ------------------------------------------------------------------------------------ gRPC


def _leader_key(leader: Any) -> tuple[bytes, bytes, int, int]:
    return bytes(leader.name), bytes(leader.key), int(leader.rev), int(leader.lease)


class LockServicer(v3lock_pb2_grpc.LockServicer):
    def __init__(self, recipes: Recipes, run: Any) -> None:
        self.recipes = recipes
        self.run = run

    async def Lock(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from examples.kvstore.grpcapi import to_message

        async def call() -> Any:
            header, key = await self.recipes.lock(bytes(request.name), request.lease)
            return to_message({"header": header, "key": codec.b64(key)}, v3lock_pb2.LockResponse)

        return await self.run(context, "Lock", call, request)

    async def Unlock(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from examples.kvstore.grpcapi import to_message

        async def call() -> Any:
            return to_message(await self.recipes.unlock(bytes(request.key)), v3lock_pb2.UnlockResponse)

        return await self.run(context, "Unlock", call, request)


class ElectionServicer(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, recipes: Recipes, run: Any, authorize: Any = None) -> None:
        self.recipes = recipes
        self.run = run
        self.authorize = authorize  # (context, method, body): the auth check of Observe

    async def Campaign(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from examples.kvstore.grpcapi import to_message

        async def call() -> Any:
            answer = await self.recipes.campaign(bytes(request.name), request.lease, bytes(request.value))
            return to_message(answer, v3election_pb2.CampaignResponse)

        return await self.run(context, "Campaign", call, request)

    async def Proclaim(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from examples.kvstore.grpcapi import to_message

        async def call() -> Any:
            if not request.HasField("leader"):
                raise missing_leader_key()
            name, key, rev, lease = _leader_key(request.leader)
            answer = await self.recipes.proclaim(name, key, rev, lease, bytes(request.value))
            return to_message(answer, v3election_pb2.ProclaimResponse)

        return await self.run(context, "Proclaim", call, request)

    async def Resign(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from examples.kvstore.grpcapi import to_message

        async def call() -> Any:
            if not request.HasField("leader"):
                raise missing_leader_key()
            _, key, rev, _ = _leader_key(request.leader)
            return to_message(await self.recipes.resign(key, rev), v3election_pb2.ResignResponse)

        return await self.run(context, "Resign", call, request)

    async def Leader(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from examples.kvstore.grpcapi import to_message

        async def call() -> Any:
            return to_message(await self.recipes.leader(bytes(request.name)), v3election_pb2.LeaderResponse)

        return await self.run(context, "Leader", call, request)

    async def Observe(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        from examples.kvstore.grpcapi import status_code, to_dict, to_message

        try:
            if self.authorize is not None and self.recipes.server.machine.auth.enabled:
                self.authorize(context, "Observe", to_dict(request))
            async for answer in self.recipes.observe(bytes(request.name)):
                yield to_message(answer, v3election_pb2.LeaderResponse)
        except EtcdError as err:
            await context.abort(status_code(err.grpc_code), err.message)


def add_election_and_lock(
    grpc_server: grpc.aio.Server, server: KVServer, service: EtcdService, forwarder: Forwarder
) -> Recipes:
    """Register v3lockpb.Lock and v3electionpb.Election on ``grpc_server``."""
    from examples.kvstore.grpcapi import _Base, register

    recipes = Recipes(server, service)
    base = _Base(server, service, forwarder)
    register(grpc_server, LockServicer(recipes, base.run), v3lock_pb2.DESCRIPTOR.services_by_name["Lock"])
    register(
        grpc_server,
        ElectionServicer(recipes, base.run, base.authorize),
        v3election_pb2.DESCRIPTOR.services_by_name["Election"],
    )
    return recipes


__all__ = ["Recipes", "add_election_and_lock", "prefix_end"]

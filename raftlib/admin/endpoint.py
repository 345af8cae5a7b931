"""The admin endpoint a running RaftNode opens when ``NodeConfig.admin_address`` is set.

Owns the server side of the online admin protocol (the client is
:mod:`raftlib.admin.online`) and the protocol's shared constants: JSON lines over one
TCP connection (TLS when the node has a ``TlsConfig``), each line at most
:data:`MAX_LINE_BYTES` bytes.

1. The node greets: ``{"protocol", "node", "cluster", "auth", "nonce"}``.
2. When the node has a ``peer_secret`` (``auth`` contains ``"secret"``), the client
   answers ``{"auth": {"nonce", "proof"}}``: an HMAC-SHA256 proof of the cluster's
   shared secret over both nonces (:class:`raftlib.transport.peerauth.PeerSecret`, with a
   transcript reserved for admin connections so a proof never serves as a peer's), and
   the node answers ``{"ok": true, "proof"}`` (its own proof: both sides know the secret).
3. Requests ``{"id", "op", "args"}`` get ``{"id", "ok": true, "result"}`` or
   ``{"id", "ok": false, "error": {"type", "message", ...}}``, one at a time.

Invariants: no request is served before the client is authenticated (secret proof,
mutual TLS, or, with neither configured, a loopback peer address); every read is
bounded in size and time, every operation by its deadline; :meth:`AdminEndpoint.stop`
closes the listener and cancels and awaits every connection's task (the node awaits it
in ``RaftNode.stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from raftlib.codec import AUTH_MAC_BYTES, AUTH_NONCE_BYTES
from raftlib.errors import (
    LeadershipTransferError,
    NotLeader,
    ProposalDropped,
    RaftError,
    RequestTimeout,
)
from raftlib.transport.base import parse_address
from raftlib.transport.peerauth import ACCEPTOR, DIALLER, PeerSecret

if TYPE_CHECKING:
    from raftlib.runtime.node import RaftNode

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_LINE_BYTES",
    "OPERATIONS",
    "PROTOCOL",
    "AdminEndpoint",
    "admin_proof",
]

log = logging.getLogger("raftlib.admin")

PROTOCOL = "raftlib-admin/1"
"""Name and version of the protocol, sent in the greeting."""
MAX_LINE_BYTES = 64 * 1024
"""Longest line either side accepts (a request or an answer); a longer request closes the connection."""
AUTH_TIMEOUT = 5.0
"""Seconds a client has to prove the secret after the greeting."""
IDLE_TIMEOUT = 300.0
"""Seconds a connection may stay silent between requests before the node closes it."""
MAX_CONNECTIONS = 16
"""Admin connections served at once; more are refused with ``Busy``."""
MAX_OP_TIMEOUT = 3600.0
"""Longest deadline a request may ask for."""
CLIENT_NAME = "admin-client"
"""The dialler's name in the secret proof's transcript."""

OPERATIONS = (
    "status",
    "members.list",
    "members.add",
    "members.remove",
    "members.promote",
    "members.demote",
    "transfer_leader",
    "snapshot",
)
"""Every ``op`` the endpoint serves."""


def admin_proof(
    secret: PeerSecret, role: bytes, cluster_id: str, node_id: str, client_nonce: bytes, node_nonce: bytes
) -> bytes:
    """The proof of ``role`` (``DIALLER``: the client, ``ACCEPTOR``: the node) for one admin connection.

    The cluster field of the transcript is ``"admin:" + cluster_id``, so an admin proof
    never matches a peer handshake's (and the reverse)."""
    return secret.proof(role, f"admin:{cluster_id}", CLIENT_NAME, node_id, client_nonce, node_nonce)


class BadRequest(RaftError, ValueError):
    """A request the endpoint cannot serve (malformed JSON, unknown op, bad argument)."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def error_body(exc: BaseException, node: RaftNode | None = None) -> dict[str, Any]:
    """The ``error`` object of an answer: the exception's class name, message and the facts a
    client acts on (the leader's id and address, whether a dropped change may still commit)."""
    if isinstance(exc, NotLeader) and exc.leader_address is None and exc.leader_id and node is not None:
        exc = NotLeader(exc.leader_id, node.address_of(exc.leader_id))
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, NotLeader):
        body["leader_id"] = exc.leader_id
        body["leader_address"] = exc.leader_address
    if isinstance(exc, ProposalDropped):
        body["reason"] = exc.reason
        body["may_still_commit"] = exc.may_still_commit
    if isinstance(exc, RequestTimeout):
        body["timeout"] = exc.timeout
    return body


def _node_id(args: dict[str, Any], key: str = "id") -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"argument {key!r} must be a non-empty string")
    return value


class AdminEndpoint:
    """The admin listener of one :class:`~raftlib.RaftNode` (see the module docstring).

    Authentication follows the node's peer settings: its ``peer_secret`` (challenge and
    response), its ``tls`` (the client must present a certificate signed by the cluster CA;
    any name is accepted), both, or, with neither, only clients connecting from a loopback
    address.
    """

    def __init__(self, node: RaftNode, address: str) -> None:
        self._node = node
        self._listen = address
        host, port = parse_address(address)
        self._host, self._port = host, port
        secret = node.config.peer_secret
        self._secret = PeerSecret(secret) if secret is not None else None
        self._tls = node.config.tls
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._bound = address
        self.refused: dict[str, int] = {}
        """Connections refused, by reason (``secret_mismatch``, ``not_loopback``, ``busy``, ...)."""

    @property
    def auth(self) -> str:
        """How clients authenticate: ``"secret"``, ``"tls"``, ``"tls+secret"`` or ``"loopback"``."""
        kinds = [k for k, on in (("tls", self._tls is not None), ("secret", self._secret is not None)) if on]
        return "+".join(kinds) or "loopback"

    @property
    def address(self) -> str:
        """The address listened on (the real port when ``admin_address`` gave port 0)."""
        return self._bound

    async def start(self) -> None:
        """Open the listener (raises OSError when the address cannot be bound)."""
        ssl_ctx = self._tls.server_context() if self._tls is not None else None
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, ssl=ssl_ctx, limit=MAX_LINE_BYTES,
            ssl_handshake_timeout=AUTH_TIMEOUT if ssl_ctx is not None else None,
        )  # fmt: skip
        sock = self._server.sockets[0].getsockname()
        host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
        self._bound = f"{host}:{sock[1]}"
        if self.auth == "loopback" and not _is_loopback(self._host):
            log.warning(
                "%s: admin endpoint on %s has neither peer_secret nor tls: only loopback clients are served",
                self._node.id, self._bound,
            )  # fmt: skip
        log.info("%s: admin endpoint on %s (auth: %s)", self._node.id, self._bound, self.auth)

    async def stop(self) -> None:
        """Close the listener, cancel and await every connection's task. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        conns = list(self._conns)
        for t in conns:
            t.cancel()
        if conns:
            await asyncio.wait(conns, timeout=5.0)
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5.0)

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    # -- one connection ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass  # the client went away, or did not read our answer in time
        except Exception:
            log.exception("%s: admin connection failed", self._node.id)
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, default=str, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE_BYTES:
            msg = {"id": msg.get("id"), "ok": False,
                   "error": {"type": "AnswerTooLarge", "message": f"the answer is {len(line)} bytes, "
                             f"more than the protocol's {MAX_LINE_BYTES}"}}  # fmt: skip
            line = json.dumps(msg).encode() + b"\n"
        writer.write(line)
        await asyncio.wait_for(writer.drain(), AUTH_TIMEOUT)

    async def _fail(self, writer: asyncio.StreamWriter, reason: str, kind: str, message: str) -> None:
        self._refuse(reason)
        log.warning("%s: admin connection from %s refused: %s", self._node.id,
                    writer.get_extra_info("peername"), message)  # fmt: skip
        await self._send(writer, {"ok": False, "error": {"type": kind, "message": message}})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if len(self._conns) > MAX_CONNECTIONS:
            await self._fail(writer, "busy", "Busy", f"more than {MAX_CONNECTIONS} admin connections open")
            return
        if self.auth == "loopback" and not _is_loopback(peer_host):
            await self._fail(writer, "not_loopback", "AuthFailed",
                             "this node has neither peer_secret nor tls: its admin endpoint serves "
                             "loopback clients only")  # fmt: skip
            return
        nonce = os.urandom(AUTH_NONCE_BYTES)
        node = self._node
        await self._send(writer, {"protocol": PROTOCOL, "node": node.id, "cluster": node.config.cluster_id,
                                  "auth": self.auth, "nonce": nonce.hex()})  # fmt: skip
        if self._secret is not None:
            try:
                msg = await asyncio.wait_for(self._read(reader), AUTH_TIMEOUT)
            except asyncio.TimeoutError:
                await self._fail(writer, "auth_timeout", "AuthFailed",
                                 f"no secret proof within {AUTH_TIMEOUT:g} s")  # fmt: skip
                return
            except (BadRequest, asyncio.LimitOverrunError) as exc:
                await self._fail(writer, "bad_auth", "AuthFailed", f"not a secret proof: {exc}")
                return
            auth = msg.get("auth") if msg is not None else None
            try:
                assert isinstance(auth, dict)
                client_nonce = bytes.fromhex(str(auth["nonce"]))
                proof = bytes.fromhex(str(auth["proof"]))
                assert len(client_nonce) == AUTH_NONCE_BYTES and len(proof) == AUTH_MAC_BYTES
            except (AssertionError, KeyError, ValueError):
                await self._fail(writer, "no_secret", "AuthFailed",
                                 "this node requires the cluster's shared secret (give --secret-file)")
                return
            cluster = node.config.cluster_id
            expected = admin_proof(self._secret, DIALLER, cluster, node.id, client_nonce, nonce)
            if not hmac.compare_digest(proof, expected):
                await self._fail(writer, "secret_mismatch", "AuthFailed",
                                 "wrong secret: the proof does not match this node's peer_secret")
                return
            mine = admin_proof(self._secret, ACCEPTOR, cluster, node.id, client_nonce, nonce)
            await self._send(writer, {"ok": True, "proof": mine.hex()})
        while True:
            try:
                msg = await asyncio.wait_for(self._read(reader), IDLE_TIMEOUT)
            except asyncio.TimeoutError:
                return
            except asyncio.LimitOverrunError:
                await self._fail(writer, "too_large", "RequestTooLarge",
                                 f"request longer than {MAX_LINE_BYTES} bytes")  # fmt: skip
                return
            except BadRequest as exc:
                await self._send(writer, {"id": None, "ok": False, "error": error_body(exc)})
                continue
            if msg is None:
                return
            await self._send(writer, await self._request(msg))

    async def _read(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        """The next JSON object, None at end of stream; raises BadRequest or LimitOverrunError."""
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise BadRequest("the request line is not terminated by a newline") from None
        except ValueError:  # the stream's limit, raised as ValueError by some Python versions
            raise asyncio.LimitOverrunError("request too large", MAX_LINE_BYTES) from None
        try:
            msg = json.loads(line)
        except ValueError:
            raise BadRequest("a request must be one JSON object per line") from None
        if not isinstance(msg, dict):
            raise BadRequest("a request must be a JSON object")
        return msg

    # -- the operations --------------------------------------------------------------------

    async def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid = msg.get("id")
        try:
            op = msg.get("op")
            args = msg.get("args", {})
            if not isinstance(args, dict):
                raise BadRequest("args must be a JSON object")
            handler = self._handlers().get(op) if isinstance(op, str) else None
            if handler is None:
                raise BadRequest(f"unknown op {op!r}; known: {', '.join(OPERATIONS)}")
            timeout = args.get("timeout")
            if timeout is None:
                limit = self._node.config.default_request_timeout()
            elif isinstance(timeout, (int, float)) and 0 < timeout <= MAX_OP_TIMEOUT:
                limit = float(timeout)
            else:
                raise BadRequest(f"timeout must be a number of seconds in (0, {MAX_OP_TIMEOUT:g}]")
            if math.isinf(limit):
                limit = MAX_OP_TIMEOUT
            try:
                result = await asyncio.wait_for(handler(args, limit), limit + 1.0)
            except asyncio.TimeoutError:
                raise RequestTimeout(str(op), limit) from None
            return {"id": rid, "ok": True, "result": result}
        except (RaftError, ValueError) as exc:
            return {"id": rid, "ok": False, "error": error_body(exc, self._node)}
        except Exception as exc:
            log.exception("%s: admin request %r failed", self._node.id, msg.get("op"))
            return {"id": rid, "ok": False, "error": {"type": "InternalError", "message": repr(exc)}}

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], float], Awaitable[Any]]]:
        return {
            "status": self._status,
            "members.list": self._members_list,
            "members.add": self._members_add,
            "members.remove": self._members_remove,
            "members.promote": self._members_promote,
            "members.demote": self._members_demote,
            "transfer_leader": self._transfer_leader,
            "snapshot": self._snapshot,
        }

    async def _status(self, args: dict[str, Any], limit: float) -> Any:
        return self._node.status()

    async def _members_list(self, args: dict[str, Any], limit: float) -> Any:
        node = self._node
        out: dict[str, Any] = dict(node.membership().to_dict())
        out["addresses"] = node.status().get("members", {})
        out["leader"] = node.leader
        return out

    async def _members_add(self, args: dict[str, Any], limit: float) -> Any:
        node_id, address = _node_id(args), args.get("address")
        if not isinstance(address, str):
            raise BadRequest("argument 'address' must be a 'host:port' string")
        try:
            parse_address(address)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if args.get("learner"):
            await self._node.add_learner(node_id, address, timeout=limit)
        else:
            await self._node.add_member(node_id, address, timeout=limit)
        return await self._members_list(args, limit)

    async def _members_remove(self, args: dict[str, Any], limit: float) -> Any:
        await self._node.remove_member(_node_id(args), timeout=limit)
        return await self._members_list(args, limit)

    async def _members_promote(self, args: dict[str, Any], limit: float) -> Any:
        await self._node.promote(_node_id(args), timeout=limit)
        return await self._members_list(args, limit)

    async def _members_demote(self, args: dict[str, Any], limit: float) -> Any:
        await self._node.demote(_node_id(args), timeout=limit)
        return await self._members_list(args, limit)

    async def _transfer_leader(self, args: dict[str, Any], limit: float) -> Any:
        target = _node_id(args)
        node = self._node
        if node.address_of(target) is None and target != node.id:
            raise LeadershipTransferError(f"{target!r} is not a member this node knows")
        await node.transfer_leadership(target, timeout=limit)
        return {"leader": node.leader, "term": node.status().get("term")}

    async def _snapshot(self, args: dict[str, Any], limit: float) -> Any:
        meta = await self._node.snapshot()
        return {"index": meta.index, "term": meta.term, "membership": meta.membership.to_dict()}

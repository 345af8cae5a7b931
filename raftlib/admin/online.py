"""Commands against a running node: ``status``, ``members ...``, ``transfer-leader``, ``snapshot``.

Owns the client side of the admin protocol (the server and the protocol's rules are in
:mod:`raftlib.admin.endpoint`) and how its answers are printed. Invariants: every
command is bounded by ``--timeout`` (connecting, authenticating and the operation
together); every failure ends as an :class:`~raftlib.admin.errors.AdminError` with its
exit code: the node unreachable or silent (5), not the leader (6, the leader's id and
address printed), authentication refused (3), a refused or failed operation (4).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import itertools
import json
import os
import ssl
from typing import Any, TextIO

from raftlib.admin.endpoint import MAX_LINE_BYTES, PROTOCOL, admin_proof
from raftlib.admin.errors import AdminError, ExitCode
from raftlib.codec import AUTH_NONCE_BYTES
from raftlib.errors import ConfigError
from raftlib.transport.base import parse_address
from raftlib.transport.peerauth import ACCEPTOR, DIALLER, PeerSecret, check_peer_secret

__all__ = ["AdminClient", "RemoteError", "register"]

DEFAULT_TIMEOUT = 30.0


class RemoteError(AdminError):
    """The node answered a request with an error; ``body`` is the protocol's ``error`` object."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.type = str(body.get("type", "Error"))
        self.body = body
        message = f"{self.type}: {body.get('message', '')}"
        code = ExitCode.FAILED
        if self.type == "NotLeader":
            code = ExitCode.NOT_LEADER
            if body.get("leader_id"):
                where = f" at {body['leader_address']}" if body.get("leader_address") else ""
                message += f"\nleader: {body['leader_id']}{where} (run the command against the leader)"
        elif self.type in ("RequestTimeout", "NodeStopped", "Busy"):
            code = ExitCode.UNAVAILABLE
        elif self.type == "AuthFailed":
            code = ExitCode.REFUSED
        elif self.type in ("BadRequest", "RequestTooLarge"):
            code = ExitCode.USAGE
        if body.get("may_still_commit"):
            message += "\nthe change may still take effect: check with `members list`"
        super().__init__(message, code)


class AdminClient:
    """One authenticated connection to a node's admin endpoint."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: dict[str, Any]):
        self._reader = reader
        self._writer = writer
        self.hello = hello
        """The node's greeting: ``node``, ``cluster``, ``auth``."""
        self._ids = itertools.count(1)

    @classmethod
    async def connect(
        cls, address: str, secret: bytes | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> AdminClient:
        """Connect and authenticate (raises AdminError; the caller bounds the time)."""
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise AdminError(f"--admin: {exc}", ExitCode.USAGE) from None
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, limit=MAX_LINE_BYTES,
                server_hostname=host if ssl_context else None,
            )  # fmt: skip
        except ssl.SSLError as exc:
            raise AdminError(f"TLS handshake with {address} failed: {exc}", ExitCode.REFUSED) from None
        except OSError as exc:
            reason = exc.strerror or exc
            raise AdminError(f"cannot connect to {address}: {reason}", ExitCode.UNAVAILABLE) from None
        client = cls(reader, writer, {})
        try:
            hello = await client._read()
        except AdminError:
            await client.close()
            if ssl_context is not None:
                text = f"{address} closed the TLS connection before greeting (refused our certificate?)"
                raise AdminError(text, ExitCode.REFUSED) from None
            text = f"{address} closed the connection before greeting (does the node require TLS? " \
                "give --tls-cert, --tls-key, --tls-ca)"
            raise AdminError(text, ExitCode.UNAVAILABLE) from None
        if "error" in hello:
            await client.close()
            raise RemoteError(hello["error"])
        if hello.get("protocol") != PROTOCOL:
            await client.close()
            raise AdminError(f"{address} is not a raftlib admin endpoint ({PROTOCOL})", ExitCode.FAILED)
        client.hello = hello
        if "secret" in str(hello.get("auth", "")):
            if secret is None:
                await client.close()
                raise AdminError(f"node {hello.get('node')} requires the cluster's shared secret: "
                                 "give --secret-file", ExitCode.REFUSED)  # fmt: skip
            await client._prove(PeerSecret(secret))
        return client

    async def _prove(self, secret: PeerSecret) -> None:
        node_id, cluster = str(self.hello.get("node")), str(self.hello.get("cluster"))
        node_nonce = bytes.fromhex(str(self.hello.get("nonce", "")))
        mine = os.urandom(AUTH_NONCE_BYTES)
        proof = admin_proof(secret, DIALLER, cluster, node_id, mine, node_nonce)
        await self._write({"auth": {"nonce": mine.hex(), "proof": proof.hex()}})
        answer = await self._read()
        if not answer.get("ok"):
            await self.close()
            raise RemoteError(answer.get("error") or {"type": "AuthFailed", "message": "refused"})
        expected = admin_proof(secret, ACCEPTOR, cluster, node_id, mine, node_nonce)
        theirs = bytes.fromhex(str(answer.get("proof", "")))
        if not hmac.compare_digest(theirs, expected):
            await self.close()
            raise AdminError(f"node {node_id} did not prove the shared secret: not the expected node",
                             ExitCode.REFUSED)  # fmt: skip

    async def _write(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        try:
            self._writer.write(line)
            await self._writer.drain()
        except OSError as exc:
            raise AdminError(f"connection lost: {exc}", ExitCode.UNAVAILABLE) from None

    async def _read(self) -> dict[str, Any]:
        try:
            line = await self._reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, OSError):
            raise AdminError("the node closed the connection", ExitCode.UNAVAILABLE) from None
        except (asyncio.LimitOverrunError, ValueError):
            raise AdminError(f"the node's answer exceeds {MAX_LINE_BYTES} bytes", ExitCode.FAILED) from None
        try:
            msg = json.loads(line)
        except ValueError:
            raise AdminError("the node's answer is not JSON", ExitCode.FAILED) from None
        if not isinstance(msg, dict):
            raise AdminError("the node's answer is not a JSON object", ExitCode.FAILED)
        return msg

    async def call(self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Run ``op`` on the node; its result, or RemoteError (``timeout``: the node's deadline)."""
        rid = next(self._ids)
        args = dict(args or {})
        if timeout is not None:
            args["timeout"] = timeout
        await self._write({"id": rid, "op": op, "args": args})
        answer = await self._read()
        if not answer.get("ok"):
            raise RemoteError(answer.get("error") or {"type": "Error", "message": "no detail"})
        if answer.get("id") != rid:
            raise AdminError(f"answer to request {answer.get('id')}, expected {rid}", ExitCode.FAILED)
        return answer.get("result")

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


# -- the command line ----------------------------------------------------------------------------


def _secret(args: argparse.Namespace) -> bytes | None:
    if args.secret_file is None:
        return None
    try:
        with open(args.secret_file, "rb") as f:
            raw = f.read(65536).rstrip(b"\r\n")
    except OSError as exc:
        raise AdminError(f"--secret-file: {exc}", ExitCode.USAGE) from None
    try:
        return check_peer_secret(raw)
    except ConfigError as exc:
        raise AdminError(f"--secret-file {args.secret_file}: {exc}", ExitCode.USAGE) from None


def _ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise AdminError("TLS needs all of --tls-cert, --tls-key and --tls-ca", ExitCode.USAGE)
    from raftlib.transport.tls import TlsConfig

    try:
        return TlsConfig(args.tls_cert, args.tls_key, args.tls_ca).client_context()
    except (OSError, ssl.SSLError) as exc:
        raise AdminError(f"TLS files: {exc}", ExitCode.USAGE) from None


def _run(args: argparse.Namespace, op: str, op_args: dict[str, Any]) -> Any:
    """Connect, authenticate, run ``op``: all within ``--timeout`` seconds."""
    timeout = float(args.timeout)
    if not 0 < timeout <= 3600:
        raise AdminError("--timeout must be in (0, 3600] seconds", ExitCode.USAGE)
    secret, ctx = _secret(args), _ssl(args)

    async def go() -> Any:
        client = await AdminClient.connect(args.admin, secret, ctx)
        try:
            # The node's deadline is shorter than ours so that its own answer (a RequestTimeout
            # saying what timed out) arrives before we give up.
            return await client.call(op, op_args, timeout=max(timeout * 0.9, timeout - 1.0))
        finally:
            await client.close()

    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(go(), timeout)
        except asyncio.TimeoutError:
            raise AdminError(f"no answer from {args.admin} within {timeout:g} s; the outcome of a change "
                             "is unknown", ExitCode.UNAVAILABLE) from None  # fmt: skip

    return asyncio.run(bounded())


def _print_json(out: TextIO, value: Any) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def _print_members(out: TextIO, m: dict[str, Any]) -> None:
    addresses = m.get("addresses", {})
    leader = m.get("leader")
    rows: list[tuple[str, str]] = []
    for role, key in (("voter", "voters"), ("outgoing", "outgoing"), ("learner", "learners")):
        for nid in m.get(key, []):
            if role == "learner" and nid in m.get("promoting", []):
                role = "learner (promoting)"
            rows.append((nid, role))
    for nid, role in rows:
        mark = "  leader" if nid == leader else ""
        out.write(f"{nid:<16} {role:<20} {addresses.get(nid, '?')}{mark}\n")


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    st = _run(args, "status", {})
    if args.json:
        _print_json(out, st)
        return int(ExitCode.OK)
    leader = st.get("leader")
    where = f" at {st['leader_address']}" if st.get("leader_address") else ""
    out.write(f"node:       {st.get('id')} ({st.get('role')}, term {st.get('term')})\n")
    out.write(f"leader:     {leader or 'none known'}{where}\n")
    out.write(f"commit:     {st.get('commit')}   applied: {st.get('applied')}   "
              f"log: {st.get('first_index')}..{st.get('last_index')}   "
              f"snapshot: {st.get('snapshot_index')}\n")  # fmt: skip
    out.write(f"membership: {st.get('membership')}\n")
    if st.get("transferring_to"):
        out.write(f"transferring leadership to {st['transferring_to']}\n")
    if st.get("failure"):
        out.write(f"FAILED:     {st['failure']}\n")
    progress = st.get("progress")
    if progress:
        out.write("peers:\n")
        for peer, pr in progress.items():
            out.write(f"  {peer:<16} {pr.get('state'):<10} match {pr.get('match'):<8} "
                      f"next {pr.get('next'):<8} inflight {pr.get('inflight')}\n")  # fmt: skip
    return int(ExitCode.OK)


def cmd_members(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    action = args.members_action
    op_args: dict[str, Any] = {}
    if action != "list":
        op_args["id"] = args.node_id
    if action == "add":
        op_args["address"] = args.address
        op_args["learner"] = bool(args.learner)
    result = _run(args, f"members.{action}", op_args)
    if args.json:
        _print_json(out, result)
    else:
        _print_members(out, result)
    return int(ExitCode.OK)


def cmd_transfer(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    result = _run(args, "transfer_leader", {"id": args.node_id})
    out.write(f"leader: {result.get('leader')} (term {result.get('term')})\n")
    return int(ExitCode.OK)


def cmd_snapshot(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    result = _run(args, "snapshot", {})
    out.write(f"snapshot at index {result.get('index')}, term {result.get('term')}\n")
    return int(ExitCode.OK)


def _connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--admin", required=True, metavar="HOST:PORT", help="the node's admin_address")
    g.add_argument("--secret-file", metavar="FILE", help="file holding the cluster's peer_secret")
    g.add_argument("--tls-cert", metavar="PEM", help="client certificate signed by the cluster CA")
    g.add_argument("--tls-key", metavar="PEM", help="its private key")
    g.add_argument("--tls-ca", metavar="PEM", help="the cluster CA")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds for the whole command (default {DEFAULT_TIMEOUT:g})")  # fmt: skip


def register(sub: Any) -> None:
    """Add the online commands to the ``python -m raftlib`` parser."""
    p = sub.add_parser("status", help="a running node's role, term, leader, indexes and peers' progress")
    _connection_options(p)
    p.add_argument("--json", action="store_true", help="print node.status() as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("members", help="list or change the membership of a running cluster")
    msub = p.add_subparsers(dest="members_action", metavar="ACTION", required=True)
    for action, text in (("list", "the configuration in force and the members' addresses"),
                         ("add", "add a member (a voter once caught up; --learner: stays a learner)"),
                         ("remove", "remove a voter or learner (the leader hands over first)"),
                         ("promote", "make a learner a voter"),
                         ("demote", "make a voter a learner")):  # fmt: skip
        ap = msub.add_parser(action, help=text)
        _connection_options(ap)
        ap.add_argument("--json", action="store_true", help="print the resulting membership as JSON")
        if action != "list":
            ap.add_argument("node_id", metavar="ID")
        if action == "add":
            ap.add_argument("address", metavar="HOST:PORT", help="the new member's peer address")
            ap.add_argument("--learner", action="store_true", help="add as a non-voting learner")
        ap.set_defaults(func=cmd_members)

    p = sub.add_parser("transfer-leader", help="hand leadership to member ID (run against the leader)")
    _connection_options(p)
    p.add_argument("node_id", metavar="ID")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("snapshot", help="snapshot a running node's state machine now and compact its log")
    _connection_options(p)
    p.set_defaults(func=cmd_snapshot)

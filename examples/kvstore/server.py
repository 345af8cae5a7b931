"""One member of the etcd-compatible store: a RaftNode, the KVMachine, leases, watches and HTTP.

:class:`KVServer` wires the pieces together using only raftlib's public API:

* a :class:`ReplicatedState` (the raftlib state machine) that dispatches each
  committed command on its first byte: ``K`` to the :class:`KVMachine` (keys,
  revisions, leases) and ``A`` to the member attributes (name, client and peer
  URLs, published by each member at start-up, as etcd does); its snapshots hold
  both;
* the lease clock: the leader promotes the lessor (fresh TTLs) when it gains
  leadership, demotes it when it loses it, and proposes an expiry command for
  every lease whose TTL ran out (checked every ``lease_check_interval``);
* the watch hub (:mod:`examples.kvstore.watch`), fed by the local apply stream;
* the client listeners on every ``--listen-client-urls`` address: etcd's gRPC
  API (:mod:`examples.kvstore.grpcapi`) and the JSON gateway
  (:mod:`examples.kvstore.api`) on one port (:mod:`examples.kvstore.grpcapi_mux`),
  or split with ``--listen-client-http-urls``.

Member and cluster IDs are computed the way etcd computes them: a member's ID
is the first 8 bytes (big endian) of SHA-1 over its sorted peer URLs followed
by the cluster token; the cluster ID is the same over the sorted member IDs.
The raftlib node id is the member ID in 16 hex digits (etcd's usual spelling).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import raftlib
from examples.kvstore import auth
from examples.kvstore.errors import MSG_LEADER_CHANGED, MSG_TIMEOUT_LEADER_FAIL, EtcdError
from examples.kvstore.machine import KVMachine
from raftlib.transport import TcpTransport, TlsConfig

log = logging.getLogger("kvstore.server")

ETCD_VERSION = "3.4.23"
CLUSTER_VERSION = "3.4.0"
KV_TAG = b"K"
ATTR_TAG = b"A"
_STATE_FILE = "kvstore-member.json"
_RESTORE_FILE = "restore-pending.snap"
"""--restore-snapshot: the seed, kept in the data dir until a raftlib snapshot holds the restored state."""
_SNAP_HEADER = struct.Struct("<4sI")
_SNAP_MAGIC = b"KVS1"
_ATTRIBUTE_KEYS = ("name", "clientURLs", "peerURLs", "httpURLs")
"""Replicated member attributes (httpURLs: the gateway's URLs under --listen-client-http-urls)."""


# --------------------------------------------------------------------------------- configuration


@dataclass
class ClientTls:
    """TLS of the client listener: --cert-file, --key-file, --trusted-ca-file, --client-cert-auth."""

    cert_file: str
    key_file: str
    trusted_ca_file: str | None = None
    client_cert_auth: bool = False

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.trusted_ca_file:
            ctx.load_verify_locations(cafile=self.trusted_ca_file)
        if self.client_cert_auth:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """Used to forward requests to the leader's (https) client URL: presents our certificate."""
        ctx = ssl.create_default_context(cafile=self.trusted_ca_file)
        ctx.check_hostname = False
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@dataclass
class ServerConfig:
    """Everything a member needs; :mod:`examples.kvstore.__main__` fills it from etcd's flags."""

    name: str = "default"
    data_dir: str | None = "default.etcd"
    """None keeps everything in memory (tests only)."""
    listen_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    listen_client_http_urls: list[str] = field(default_factory=list)
    """etcd 3.5's split: the gateway here, gRPC only on the client URLs (empty: both on the client URLs)."""
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    listen_peer_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2380"])
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2380"])
    initial_cluster: dict[str, list[str]] | None = None
    """name -> peer URLs; None means this member alone."""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    snapshot_count: int = 100_000
    request_timeout: float = 7.0
    """Seconds before a request that cannot complete (no quorum) fails with 'request timed out'."""
    max_request_bytes: int = 1_572_864
    progress_notify_interval: float = 600.0
    watch_queue_limit: int = 1024
    """Messages a watcher may have queued before it is cancelled as too slow."""
    watch_stream_budget: int = 65536
    """Messages all the watchers of one gRPC Watch stream may have queued together (then the one
    that would queue more is cancelled as too slow): bounds a stream's memory, whatever its number
    of watchers (about 150 bytes a message, plus the events when a watcher strips prev_kv)."""
    lease_check_interval: float = 0.25
    client_tls: ClientTls | None = None
    peer_tls: TlsConfig | None = None
    peer_secret: bytes | None = field(default=None, repr=False)
    """Shared secret members prove to each other at the peer handshake (--peer-shared-secret-file)."""
    fsync: bool = True
    auth_token: str = "simple"
    """etcd's --auth-token: ``simple`` or ``jwt,sign-method=HS256,priv-key=FILE[,ttl=5m]``
    (see :func:`examples.kvstore.auth.parse_auth_token`)."""
    auth_token_ttl: float = 300.0
    """etcd's --auth-token-ttl: seconds a simple token lives without use."""
    restore_snapshot: str | None = None
    """A file from ``/v3/maintenance/snapshot`` to seed a NEW member's state with (--restore-snapshot)."""

    def cluster_map(self) -> dict[str, list[str]]:
        return self.initial_cluster or {self.name: list(self.initial_advertise_peer_urls)}

    @property
    def min_lease_ttl(self) -> int:
        """etcd: ceil(1.5 * election timeout), in whole seconds (2 with the default 1000 ms)."""
        return max(1, -(-3 * self.election_timeout_ms // 2000))


# ----------------------------------------------------------------------------------------- IDs


def member_id_for(peer_urls: list[str], token: str) -> int:
    """etcd's member ID: SHA-1 over the sorted peer URLs joined, then the cluster token."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def cluster_id_for(member_ids: list[int]) -> int:
    """etcd's cluster ID: SHA-1 over the sorted member IDs (8 bytes big endian each)."""
    data = b"".join(i.to_bytes(8, "big") for i in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big") or 1


def node_name(member_id: int) -> str:
    """The raftlib node id of a member: its ID in 16 hex digits."""
    return f"{member_id:016x}"


def url_address(url: str) -> str:
    """``http://host:port`` -> ``host:port`` (the form raftlib's transport takes)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"URL {url!r} must be http(s)://host:port")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}"


# ------------------------------------------------------------------------------- state machine


class _CombinedSnapshot(raftlib.SnapshotWriter):
    """Member attributes (JSON, length-prefixed) followed by the KVMachine's own snapshot."""

    def __init__(self, header: bytes, inner: Any) -> None:
        self.header = header
        self.inner = inner

    def chunks(self) -> Iterator[bytes]:
        yield _SNAP_HEADER.pack(_SNAP_MAGIC, len(self.header)) + self.header
        if isinstance(self.inner, bytes | bytearray | memoryview):
            yield bytes(self.inner)
        else:
            yield from self.inner.chunks()

    def release(self) -> None:
        if isinstance(self.inner, raftlib.SnapshotWriter):
            self.inner.release()


class ReplicatedState(raftlib.StateMachine):
    """The raftlib state machine of a member: KVMachine commands and member attributes.

    A command is one tag byte and a payload: ``K`` + a KVMachine command, or
    ``A`` + JSON ``{"id": <hex>, "name", "clientURLs", "peerURLs", "cluster_id"?, "raft"?}``.

    Peer URLs are etcd's "raft attributes": a member's own publication only fills them in when
    none are recorded; a command flagged ``"raft": true`` (member add, member update) sets them
    and calls ``on_peer_urls(id, urls)``, so the raft transport follows at the same point of
    the log on every member.
    """

    def __init__(self, kv: KVMachine) -> None:
        self.kv = kv
        self.attributes: dict[str, dict[str, Any]] = {}
        self.cluster_id = 0
        self.on_restore: Callable[[], None] | None = None
        self.on_peer_urls: Callable[[str, list[str]], None] | None = None

    def apply(self, command: bytes, index: int) -> Any:
        tag = command[:1]
        if tag == KV_TAG:
            return self.kv.apply(command[1:], index)
        if tag == ATTR_TAG:
            try:
                attrs = json.loads(command[1:])
            except ValueError:
                return None
            if not isinstance(attrs, dict) or not isinstance(attrs.get("id"), str):
                return None
            mid = attrs.pop("id")
            cid = attrs.pop("cluster_id", 0)
            if not self.cluster_id and isinstance(cid, int):
                self.cluster_id = cid
            authoritative = attrs.pop("raft", False) is True
            entry = self.attributes.setdefault(mid, {})
            if not authoritative and entry.get("peerURLs"):
                attrs.pop("peerURLs", None)  # set by member add/update: a publication keeps them
            entry.update({k: v for k, v in attrs.items() if k in _ATTRIBUTE_KEYS})
            urls = attrs.get("peerURLs")
            if authoritative and self.on_peer_urls is not None and isinstance(urls, list) and urls:
                self.on_peer_urls(mid, urls)
            return None
        return None  # unknown tag: ignored the same way on every member

    def snapshot(self) -> raftlib.SnapshotWriter:
        header = json.dumps({"attributes": self.attributes, "cluster_id": self.cluster_id}).encode()
        return _CombinedSnapshot(header, self.kv.snapshot_writer())

    def restore_stream(self, stream: BinaryIO) -> None:
        head = stream.read(_SNAP_HEADER.size)
        magic, size = _SNAP_HEADER.unpack(head) if len(head) == _SNAP_HEADER.size else (b"", 0)
        if magic != _SNAP_MAGIC:
            raise ValueError("not a kvstore snapshot")
        meta = json.loads(stream.read(size))
        self.attributes = meta.get("attributes", {})
        self.cluster_id = meta.get("cluster_id", 0)
        self.kv.restore_stream(stream)
        if self.on_restore is not None:
            self.on_restore()

    def restore(self, data: bytes) -> None:
        import io

        self.restore_stream(io.BytesIO(data))


# ----------------------------------------------------------------------------------- the member


def etcd_error(code: int, message: str) -> EtcdError:
    """An EtcdError with gRPC ``code`` and ``message`` (HTTP status derived by errors.py)."""
    return EtcdError(code, message)


def timed_out() -> EtcdError:
    return etcd_error(14, "etcdserver: request timed out")


class KVServer:
    """A member: raft node, KV state, lease expiry driver, watch hub and HTTP listeners."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.machine = KVMachine(
            min_lease_ttl=config.min_lease_ttl, max_request_bytes=config.max_request_bytes
        )
        self.state = ReplicatedState(self.machine)
        self.machine.tokens.ttl = config.auth_token_ttl
        try:
            jwt = auth.parse_auth_token(config.auth_token)
        except auth.AuthTokenError as exc:
            raise raftlib.ConfigError(str(exc)) from None
        self.tokens: auth.TokenProvider = auth.JWTTokens(jwt) if jwt else self.machine.tokens
        """How this member's tokens are made and checked: the machine's simple-token table, or JWT."""
        self.rng = random.SystemRandom()
        self.node: raftlib.RaftNode | None = None
        self.member_id = 0
        self.local_cluster_id = 0
        self.node_id = ""
        self.term = 0
        self.primary = False
        self.client_urls: list[str] = []
        self.has_leader = False
        self.started_at = time.monotonic()
        self._runner: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._expiring: set[int] = set()
        self._http: Any = None
        self._grpc: Any = None
        self._listeners: list[asyncio.Server] = []
        self.http_urls: list[str] = []
        self._stopping = False
        self.forwarding_tokens: dict[str, str] = {}
        """Certificate CN -> the token this member forwards the CN's calls to the leader with
        (see EtcdService.forwarding_token); one per user that has forwarded a call."""
        self.member_update_lock = asyncio.Lock()
        """One member update at a time on the leader (checked, then proposed: see service.py)."""
        from examples.kvstore.metrics import ServerMetrics
        from examples.kvstore.watch import WatchHub

        self.hub = WatchHub(
            self.machine,
            queue_limit=config.watch_queue_limit,
            progress_interval=config.progress_notify_interval,
        )
        self.metrics = ServerMetrics(self)

    # -- identity --------------------------------------------------------------------------

    @property
    def cluster_id(self) -> int:
        return self.state.cluster_id or self.local_cluster_id

    def header(self, revision: int | None = None) -> dict[str, str]:
        """etcd's ResponseHeader; ``revision=None`` leaves it out (member calls, canceled watches)."""
        h = {"cluster_id": str(self.cluster_id), "member_id": str(self.member_id)}
        if revision:
            h["revision"] = str(revision)
        if self.term:
            h["raft_term"] = str(self.term)
        return h

    def _load_identity(self) -> tuple[str, dict[str, str], bool]:
        """(node id, raftlib members map, join) — from the data dir when it holds a member already."""
        cfg = self.config
        state_path = Path(cfg.data_dir) / _STATE_FILE if cfg.data_dir else None
        if state_path is not None and state_path.exists():
            saved = json.loads(state_path.read_text())
            self.member_id = int(saved["member_id"])
            self.local_cluster_id = int(saved["cluster_id"])
            return node_name(self.member_id), dict(saved["members"]), bool(saved["join"])
        cluster = cfg.cluster_map()
        if cfg.name not in cluster:
            raise raftlib.ConfigError(f"--initial-cluster has no entry for --name {cfg.name!r}")
        ids = {name: member_id_for(urls, cfg.initial_cluster_token) for name, urls in cluster.items()}
        self.member_id = ids[cfg.name]
        self.local_cluster_id = cluster_id_for(list(ids.values()))
        members = {node_name(ids[n]): url_address(urls[0]) for n, urls in cluster.items()}
        own = url_address(cfg.initial_advertise_peer_urls[0])
        members[node_name(self.member_id)] = own
        join = cfg.initial_cluster_state == "existing"
        if state_path is not None:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "member_id": str(self.member_id),
                        "cluster_id": str(self.local_cluster_id),
                        "members": members,
                        "join": join,
                        "name": cfg.name,
                    }
                )
            )
            os.replace(tmp, state_path)
        return node_name(self.member_id), members, join

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the raft node, the background tasks and the HTTP listeners."""
        cfg = self.config
        self.node_id, members, join = self._load_identity()
        restoring = self._prepare_restore()
        tick = cfg.heartbeat_interval_ms / 1000.0
        election_tick = max(2, round(cfg.election_timeout_ms / cfg.heartbeat_interval_ms))
        node_cfg = raftlib.NodeConfig(
            tick_interval=tick,
            election_tick=election_tick,
            heartbeat_tick=1,
            forward_proposals=True,
            snapshot_entries=max(1, cfg.snapshot_count),
            # A restored member compacts its whole log into the sealing snapshot: the entries before
            # it were applied on top of the seed, so a member that joins must start from the snapshot.
            snapshot_trailing_entries=0 if restoring else max(1, min(5000, cfg.snapshot_count // 2)),
            cluster_id=cfg.initial_cluster_token,
            tls=cfg.peer_tls,
            peer_secret=cfg.peer_secret,
            fsync=cfg.fsync,
        )
        listen = url_address(cfg.listen_peer_urls[0])
        transport = TcpTransport(
            self.node_id,
            listen,
            {k: v for k, v in members.items() if k != self.node_id},
            cluster_id=cfg.initial_cluster_token,
            ssl=cfg.peer_tls,
            peer_secret=cfg.peer_secret,
        )
        raft_dir = os.path.join(cfg.data_dir, "member") if cfg.data_dir else None
        self.state.on_restore = self._on_restore_threadsafe
        self.state.on_peer_urls = self._on_peer_urls
        self.hub.attach()
        self.node = raftlib.RaftNode(
            self.node_id,
            members,
            self.state,
            data_dir=raft_dir,
            config=node_cfg,
            join=join,
            transport=transport,
            on_leader_change=self._on_leader_change,
            observers=[self.metrics.observer()],  # the Raft figures of /metrics
        )
        self._loop = asyncio.get_running_loop()
        await self.node.start()
        self.term = max(self.term, int(self.node.status().get("term", 0) or 0))
        import aiohttp

        connector_ssl: Any = cfg.client_tls.client_context() if cfg.client_tls else None
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=connector_ssl) if connector_ssl else None,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._tasks = [asyncio.create_task(self._lease_expiry_loop(), name="kv-lease-expiry")]
        if restoring:
            self._tasks.append(asyncio.create_task(self._seal_restore(), name="kv-restore-snapshot"))
        await self._start_http()
        # Published once the listeners are bound: the attributes carry the bound URLs.
        self._tasks.append(asyncio.create_task(self._publish_attributes(), name="kv-publish"))

    def _prepare_restore(self) -> bool:
        """--restore-snapshot: load the seed into the state machine before the raft log is replayed.

        On the first start the file is copied into the data dir; until a raftlib snapshot holds the
        restored state (see :meth:`_seal_restore`) every start loads the copy again and replays the
        (short) log on top of it, so a crash in between loses nothing.
        """
        cfg = self.config
        if not cfg.data_dir:
            if cfg.restore_snapshot:
                raise raftlib.ConfigError("--restore-snapshot needs a data dir")
            return False
        pending = Path(cfg.data_dir) / _RESTORE_FILE
        if cfg.restore_snapshot and not pending.exists() and not (Path(cfg.data_dir) / "member").exists():
            if cfg.initial_cluster_state != "new":
                raise raftlib.ConfigError("--restore-snapshot needs --initial-cluster-state new")
            import shutil

            tmp = pending.with_suffix(".tmp")
            shutil.copyfile(cfg.restore_snapshot, tmp)
            os.replace(tmp, pending)
        if not pending.exists():
            return False
        import io

        from examples.kvstore.service import unframe_snapshot

        try:
            image = unframe_snapshot(pending.read_bytes())  # etcdctl's files carry etcd's checksum
        except ValueError as exc:
            raise raftlib.ConfigError(f"--restore-snapshot: {exc}") from None
        self.state.restore_stream(io.BytesIO(image))
        # Only the keys come from the old cluster: its member attributes and cluster ID do not apply.
        self.state.attributes = {}
        self.state.cluster_id = 0
        log.info("member %s: state restored from %s (revision %d)", cfg.name, pending, self.machine.revision)
        return True

    async def _seal_restore(self) -> None:
        """Once something is applied, snapshot (raftlib) the restored state and drop the seed file."""
        node = self._node()
        while int(node.status().get("applied", 0) or 0) < 1:
            await asyncio.sleep(0.05)
        await node.snapshot()
        assert self.config.data_dir
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(self.config.data_dir) / _RESTORE_FILE)
        log.info("member %s: restored state sealed in a raft snapshot", self.config.name)

    async def _start_http(self) -> None:
        """The client listeners: gRPC and the gateway on every --listen-client-urls address (the
        connection's first bytes decide, see grpcapi_mux), or, with --listen-client-http-urls,
        the gateway alone there and gRPC alone on the client URLs."""
        from aiohttp import web

        from examples.kvstore import grpcapi_mux
        from examples.kvstore.api import build_server
        from examples.kvstore.grpcapi import GrpcEndpoint

        self._runner = web.ServerRunner(build_server(self), shutdown_timeout=1.0)
        await self._runner.setup()
        self._grpc = GrpcEndpoint(self)
        cfg = self.config
        split = bool(cfg.listen_client_http_urls)
        bound: list[str] = []
        for url in cfg.listen_client_urls:
            parts = urlsplit(url)
            ctx = cfg.client_tls.server_context() if cfg.client_tls and parts.scheme == "https" else None
            listener = await grpcapi_mux.serve(
                parts.hostname or "127.0.0.1",
                parts.port or 2379,
                # split: gRPC alone on the client URLs (HTTP/1 connections are closed there)
                http_factory=None if split else self._runner.server,
                grpc_factory=self._grpc.protocol,
                ssl_context=ctx,
            )
            self._listeners.append(listener)
            for sock in listener.sockets or ():
                host, port = sock.getsockname()[:2]
                bound.append(f"{parts.scheme}://{host}:{port}")
        http_bound: list[str] = []
        for url in cfg.listen_client_http_urls:
            parts = urlsplit(url)
            ctx = cfg.client_tls.server_context() if cfg.client_tls and parts.scheme == "https" else None
            site = web.TCPSite(
                self._runner, parts.hostname or "127.0.0.1", parts.port or 2379, ssl_context=ctx,
                reuse_address=True, backlog=grpcapi_mux.LISTEN_BACKLOG,
            )  # fmt: skip
            await site.start()
            server: Any = getattr(site, "_server", None)  # aiohttp keeps the asyncio server private
            for sock in getattr(server, "sockets", None) or ():
                host, port = sock.getsockname()[:2]
                http_bound.append(f"{parts.scheme}://{host}:{port}")
        self.client_urls = bound
        self.http_urls = http_bound
        log.info(
            "member %s (%s) serving clients on %s%s", cfg.name, self.node_id, ", ".join(bound),
            f" (gateway on {', '.join(http_bound)})" if http_bound else "",
        )  # fmt: skip

    def advertised_client_urls(self) -> list[str]:
        urls = list(self.config.advertise_client_urls)
        # A port of 0 in the flags: advertise what was actually bound.
        if any(urlsplit(u).port == 0 for u in urls):
            return self.client_urls
        return urls

    async def stop(self) -> None:
        """Close watches, HTTP listeners, background tasks and the raft node."""
        self._stopping = True
        self.hub.close()
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.node is not None:
            await self.node.stop()

    async def __aenter__(self) -> KVServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- leadership and the lease clock ------------------------------------------------------

    def _on_leader_change(self, change: raftlib.LeaderChange) -> None:
        """Called synchronously by the node: move the lessor between primary and secondary."""
        if change.term > 0:
            self.term = change.term
        self.has_leader = change.leader is not None
        leading = change.leader == self.node_id
        if leading and not self.primary:
            self.machine.lessor.promote(time.monotonic())
            self.primary = True
            log.info("member %s is leader (term %d): lease clock promoted", self.config.name, change.term)
        elif not leading and self.primary:
            self.machine.lessor.demote()
            self.primary = False

    async def _lease_expiry_loop(self) -> None:
        """On the leader: propose the expiry of every lease whose TTL ran out."""
        while True:
            await asyncio.sleep(self.config.lease_check_interval)
            if not self.primary:
                continue
            try:
                expired = self.machine.lessor.expired(time.monotonic())
            except Exception:  # pragma: no cover - defensive: keep the loop alive
                log.exception("lessor.expired failed")
                continue
            for lease_id in expired:
                if lease_id in self._expiring:
                    continue
                self._expiring.add(lease_id)
                task = asyncio.create_task(self._expire(lease_id))
                self._tasks.append(task)
                task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _expire(self, lease_id: int) -> None:
        try:
            await self.propose(self.machine.lease_expire_command(lease_id))
        except EtcdError as exc:
            log.debug("lease %d expiry: %s", lease_id, exc)
        except Exception:
            log.exception("lease %d expiry failed", lease_id)
        finally:
            self._expiring.discard(lease_id)

    async def _publish_attributes(self) -> None:
        """Replicate this member's name and URLs (and, when bootstrapping, the cluster ID)."""
        cfg = self.config
        mine = {
            "name": cfg.name,
            "clientURLs": self.advertised_client_urls(),
            "peerURLs": list(cfg.initial_advertise_peer_urls),
        }
        if self.http_urls:  # the gateway's own URLs (split mode): where followers forward HTTP calls
            mine["httpURLs"] = list(self.http_urls)
        payload: dict[str, Any] = {"id": self.node_id, **mine}
        if cfg.initial_cluster_state == "new":
            payload["cluster_id"] = self.local_cluster_id
        command = ATTR_TAG + json.dumps(payload).encode()
        delay = 0.05
        while True:
            current = self.state.attributes.get(self.node_id, {})
            # Recorded peer URLs stay (etcd: only member add/update set them): once there, they
            # are not this member's to publish, even when its flags name others.
            wanted = {k: v for k, v in mine.items() if k != "peerURLs" or not current.get("peerURLs")}
            if all(current.get(k) == v for k, v in wanted.items()) and (
                self.state.cluster_id or cfg.initial_cluster_state != "new"
            ):
                return
            assert self.node is not None
            try:
                await self.node.propose(command, timeout=max(1.0, cfg.request_timeout))
                continue
            except (raftlib.RaftError, TimeoutError) as exc:
                log.debug("publishing attributes: %r", exc)
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    def _on_peer_urls(self, nid: str, urls: list[str]) -> None:
        """A member's peer URLs were set through the log (member update): raft dials the first.

        Called from apply, in log order on every member; a member raft does not know yet (a
        member add records its URLs before its configuration change, which carries the address
        itself) is left alone."""
        node = self.node
        if node is None or node.address_of(nid) is None:
            return
        try:
            node.set_peer_address(nid, url_address(urls[0]))
        except (ValueError, raftlib.RaftError) as exc:  # checked before proposing; never fatal here
            log.warning("member %s: cannot dial peer URL %r: %s", nid, urls[0], exc)

    def _on_restore_threadsafe(self) -> None:
        """The state was replaced by a snapshot (worker thread): watchers catch up from history."""
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self.hub.resync)

    # -- requests -----------------------------------------------------------------------------

    async def propose(self, command: bytes) -> dict[str, Any]:
        """Replicate a KVMachine command; returns apply's result or raises EtcdError.

        Retries while no leader is known or when the entry was lost to a leader
        change (it was then not applied); fails with 'request timed out' after
        ``request_timeout`` seconds.
        """
        node = self._node()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise timed_out()
            try:
                result = await node.propose(KV_TAG + command, timeout=remaining)
                break
            except TimeoutError:
                raise timed_out() from None
            except raftlib.UncommittedLimitExceeded:
                raise etcd_error(8, "etcdserver: too many requests") from None
            except raftlib.NodeStopped:
                raise etcd_error(14, "etcdserver: server stopped") from None
            except raftlib.NotLeader:
                pass  # no leader (yet): wait for one
            except raftlib.ProposalDropped as exc:
                if exc.may_still_commit:
                    # The leader went away with the entry in its log: it may yet be applied, so
                    # a retry could apply it twice. As etcd: without a leader until the deadline,
                    # 'request timed out'; once another leads, the leader-failure timeout.
                    remaining = deadline - loop.time()
                    with contextlib.suppress(raftlib.NotLeader, raftlib.NodeStopped):
                        if remaining > 0:
                            await node.wait_leader(remaining)
                            raise etcd_error(14, MSG_TIMEOUT_LEADER_FAIL) from None
                    raise timed_out() from None
                if exc.reason not in ("leadership_lost", "transfer_pending", "not_leader", "dropped"):
                    raise timed_out() from None  # applied or not: unknown, as etcd's timeout
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        if isinstance(result, dict) and isinstance(result.get("error"), EtcdError):
            raise result["error"]
        return result  # type: ignore[no-any-return]

    async def read_barrier(self) -> None:
        """Linearizable read point (ReadIndex); 'request timed out' without quorum."""
        node = self._node()
        try:
            await node.read_barrier(timeout=self.config.request_timeout)
        except TimeoutError:
            raise timed_out() from None
        except raftlib.LeadershipLost:
            raise etcd_error(14, MSG_LEADER_CHANGED) from None  # etcd's ReadIndex answer on a leader change
        except raftlib.NodeStopped:
            raise etcd_error(14, "etcdserver: server stopped") from None

    def _node(self) -> raftlib.RaftNode:
        if self.node is None or self._stopping:
            raise etcd_error(14, "etcdserver: server stopped")
        return self.node

    @property
    def is_leader(self) -> bool:
        return self.node is not None and self.node.is_leader

    def leader_member_id(self) -> int:
        lead = self.node.leader if self.node is not None else None
        return int(lead, 16) if lead else 0

    def leader_client_url(self) -> str | None:
        lead = self.node.leader if self.node is not None else None
        if not lead:
            return None
        urls = self.state.attributes.get(lead, {}).get("clientURLs") or []
        return urls[0] if urls else None

    def leader_http_url(self) -> str | None:
        """Where the leader serves the JSON gateway: its client URL, or its own gateway URL when
        it runs with --listen-client-http-urls (then the client URL speaks gRPC only)."""
        lead = self.node.leader if self.node is not None else None
        if not lead:
            return None
        urls = self.state.attributes.get(lead, {}).get("httpURLs") or []
        return urls[0] if urls else self.leader_client_url()

    async def wait_primary(self) -> bool:
        """Wait (up to the request timeout) until this member's lease clock is primary or another leads.

        Returns True when this member is the primary lessor, False when another
        member leads (the caller forwards); raises 'request timed out' without a leader.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout
        while True:
            node = self._node()
            if self.primary and node.is_leader:
                return True
            if node.leader is not None and node.leader != self.node_id and self.leader_client_url():
                return False
            if loop.time() >= deadline:
                raise timed_out()
            await asyncio.sleep(0.02)

    async def forward(
        self,
        path: str,
        body: bytes,
        hops: int,
        on_chunk: Callable[[bytes], Awaitable[None]] | None = None,
        authorization: str | None = None,
    ) -> tuple[int, str, bytes]:
        """POST ``body`` to the leader's client URL; (status, content type, body).

        ``authorization``: the client's auth token, passed on (the leader checks it again).

        With ``on_chunk`` the response body is streamed to it instead of returned.
        """
        url = self.leader_http_url()
        if url is None or self._http is None:
            raise timed_out()
        import aiohttp

        try:
            async with self._http.post(
                url.rstrip("/") + path,
                data=body,
                headers={"X-Kvstore-Forwarded": str(hops + 1)}
                if authorization is None
                else {"X-Kvstore-Forwarded": str(hops + 1), "Authorization": authorization},
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout),
            ) as resp:
                ctype = resp.headers.get("Content-Type", "application/json")
                if on_chunk is None:
                    return resp.status, ctype, await resp.read()
                async for chunk, _ in resp.content.iter_chunks():
                    await on_chunk(chunk)
                return resp.status, ctype, b""
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("forwarding %s to %s failed: %r", path, url, exc)
            raise timed_out() from None

    # -- members --------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """etcd's Member objects, ordered by ID."""
        node = self._node()
        membership = node.membership()
        learners = set(membership.learners)
        ids = set(membership.voters) | set(membership.outgoing) | learners
        out = []
        for nid in sorted(ids, key=lambda n: int(n, 16)):
            attrs = self.state.attributes.get(nid, {})
            m: dict[str, Any] = {"ID": str(int(nid, 16))}
            if attrs.get("name"):
                m["name"] = attrs["name"]
            peers = attrs.get("peerURLs")
            if not peers:
                addr = node.address_of(nid)
                peers = [f"http://{addr}"] if addr else []
            if peers:
                m["peerURLs"] = list(peers)
            if attrs.get("clientURLs"):
                m["clientURLs"] = list(attrs["clientURLs"])
            if nid in learners:
                m["isLearner"] = True
            out.append(m)
        return out

    def is_learner(self) -> bool:
        if self.node is None:
            return False
        with contextlib.suppress(raftlib.RaftError):
            return self.node_id in self.node.membership().learners
        return False

    async def propose_attributes(self, nid: str, peer_urls: list[str]) -> None:
        """Set the peer URLs of a member being added or updated (its name and client URLs come when
        it starts); once applied, every member's raft transport dials a known member there."""
        command = ATTR_TAG + json.dumps({"id": nid, "peerURLs": peer_urls, "raft": True}).encode()
        try:
            await self._node().propose(command, timeout=self.config.request_timeout)
        except TimeoutError:
            raise timed_out() from None
        except raftlib.RaftError as exc:
            raise etcd_error(14, f"etcdserver: {exc}") from None

    def background(self, task: asyncio.Future[Any]) -> None:
        """Keep a task alive (and cancelled at stop) without awaiting it."""
        self._tasks.append(task)  # type: ignore[arg-type]
        task.add_done_callback(self._forget_task)  # type: ignore[arg-type]
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def wait_applied_commit(self) -> None:
        """Wait until this member applied everything it knows committed (etcd's waitAppliedIndex)."""
        node = self._node()
        commit = int(node.status().get("commit", 0) or 0)
        try:
            await node.wait_applied(commit, self.config.request_timeout)
        except TimeoutError:
            raise timed_out() from None

    async def snapshot_bytes(self) -> bytes:
        """The member's state (attributes + KV snapshot) as ``ReplicatedState.restore`` reads it."""
        import io

        writer = self.state.snapshot()
        buf = io.BytesIO()
        try:
            await asyncio.get_running_loop().run_in_executor(None, writer.write, buf)
        finally:
            writer.release()
        return buf.getvalue()

    def db_size(self) -> int:
        """The KVMachine's size estimate plus one 4 KiB page (etcd's bolt file is never empty)."""
        return int(self.machine.db_size()) + 4096

    def status_fields(self) -> dict[str, Any]:
        """raft index/term/applied and leader, for maintenance/status."""
        st = self.node.status() if self.node is not None else {}
        return {
            "term": int(st.get("term", self.term) or 0),
            "commit": int(st.get("commit", 0) or 0),
            "applied": int(st.get("applied", 0) or 0),
            "leader": self.leader_member_id(),
        }

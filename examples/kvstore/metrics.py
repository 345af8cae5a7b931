"""``/metrics``: Prometheus text exposition with etcd's metric names where they exist.

Each server has its own :class:`prometheus_client.CollectorRegistry` (several
servers can live in one process, as in the tests). The Raft-level figures come
from raftlib's exporter (:mod:`raftlib.prometheus`, docs/observability.md): its
observer is given to the server's RaftNode and its collector sits in this
registry, without labels (one member per registry). Values owned by the KVMachine
and the transport are read at scrape time by a custom collector; request counters
and latencies are ordinary prometheus-client metrics.

| metric | type | source |
|---|---|---|
| etcd_server_has_leader, _is_leader, _leader_changes_seen_total | | raftlib.prometheus |
| etcd_server_proposals_committed_total, _applied_total, _pending, _failed_total | | raftlib.prometheus |
| etcd_disk_wal_fsync_duration_seconds | histogram | raftlib.prometheus |
| etcd_debugging_snap_save_total_duration_seconds | histogram | raftlib.prometheus |
| etcd_network_snapshot_*, etcd_network_peer_*_bytes_total | | raftlib.prometheus |
| raftlib_snapshots_installed_total, raftlib_wal_*, raftlib_proposals_* | counter | raftlib.prometheus |
| etcd_server_is_learner | gauge | 1 on a learner |
| etcd_server_id, etcd_server_version | gauge | labels server_id / server_version, value 1 |
| etcd_mvcc_db_total_size_in_bytes | gauge | KVMachine.db_size() |
| etcd_mvcc_db_total_size_in_use_in_bytes | gauge | same (no free pages here) |
| etcd_debugging_mvcc_current_revision | gauge | store revision |
| etcd_debugging_mvcc_compact_revision | gauge | last compaction revision |
| etcd_debugging_mvcc_watcher_total | gauge | watchers registered on this member |
| raftlib_transport_rejected_handshakes_total | counter | peer connections refused at the handshake |
| raftlib_transport_bad_frames_total | counter | peer connections closed on a bad frame (raftlib transport) |
| raftlib_transport_handshake_refused_total{reason} | counter | handshakes refused, by reason |
| etcd_network_client_grpc_received_bytes_total / _sent_bytes_total | counter | request / response bytes |
| grpc_server_handled_total | counter | per gRPC method and code |
| grpc_server_handling_seconds | histogram | per gRPC method |
| process_* | | prometheus-client's process collector |
| python_gc_* | counter | prometheus-client's GC collector (collections per generation) |
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from raftlib.prometheus import PrometheusObserver, RaftMetrics

if TYPE_CHECKING:
    from examples.kvstore.server import KVServer

#: route -> (gRPC service, method) as etcd's interceptors label them.
GRPC_METHODS: dict[str, tuple[str, str]] = {
    "kv/put": ("etcdserverpb.KV", "Put"),
    "kv/range": ("etcdserverpb.KV", "Range"),
    "kv/deleterange": ("etcdserverpb.KV", "DeleteRange"),
    "kv/txn": ("etcdserverpb.KV", "Txn"),
    "kv/compaction": ("etcdserverpb.KV", "Compact"),
    "watch": ("etcdserverpb.Watch", "Watch"),
    "lease/grant": ("etcdserverpb.Lease", "LeaseGrant"),
    "lease/revoke": ("etcdserverpb.Lease", "LeaseRevoke"),
    "kv/lease/revoke": ("etcdserverpb.Lease", "LeaseRevoke"),
    "lease/keepalive": ("etcdserverpb.Lease", "LeaseKeepAlive"),
    "lease/timetolive": ("etcdserverpb.Lease", "LeaseTimeToLive"),
    "kv/lease/timetolive": ("etcdserverpb.Lease", "LeaseTimeToLive"),
    "lease/leases": ("etcdserverpb.Lease", "LeaseLeases"),
    "kv/lease/leases": ("etcdserverpb.Lease", "LeaseLeases"),
    "cluster/member/list": ("etcdserverpb.Cluster", "MemberList"),
    "cluster/member/add": ("etcdserverpb.Cluster", "MemberAdd"),
    "cluster/member/remove": ("etcdserverpb.Cluster", "MemberRemove"),
    "cluster/member/promote": ("etcdserverpb.Cluster", "MemberPromote"),
    "cluster/member/update": ("etcdserverpb.Cluster", "MemberUpdate"),
    "maintenance/status": ("etcdserverpb.Maintenance", "Status"),
    "maintenance/snapshot": ("etcdserverpb.Maintenance", "Snapshot"),
}
GRPC_METHODS.update(
    (route, ("etcdserverpb.Auth", method))
    for route, method in (
        ("auth/enable", "AuthEnable"), ("auth/disable", "AuthDisable"), ("auth/status", "AuthStatus"),
        ("auth/authenticate", "Authenticate"), ("auth/user/add", "UserAdd"), ("auth/user/get", "UserGet"),
        ("auth/user/list", "UserList"), ("auth/user/delete", "UserDelete"),
        ("auth/user/changepw", "UserChangePassword"), ("auth/user/grant", "UserGrantRole"),
        ("auth/user/revoke", "UserRevokeRole"), ("auth/role/add", "RoleAdd"), ("auth/role/get", "RoleGet"),
        ("auth/role/list", "RoleList"), ("auth/role/delete", "RoleDelete"),
        ("auth/role/grant", "RoleGrantPermission"), ("auth/role/revoke", "RoleRevokePermission"),
    )
)  # fmt: skip
GRPC_CODE_NAMES = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
]
STREAMING = {"Watch", "LeaseKeepAlive", "Snapshot"}


class _LiveCollector(Collector):
    """Reads raftlib's and the KVMachine's numbers at scrape time."""

    def __init__(self, server: KVServer, owner: ServerMetrics) -> None:
        self.server = server
        self.owner = owner

    def collect(self) -> Iterator[Any]:
        s = self.server

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            1 if s.is_learner() else 0,
        )
        sid = GaugeMetricFamily(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            labels=["server_id"],
        )
        sid.add_metric([f"{s.member_id:x}"], 1)
        yield sid
        ver = GaugeMetricFamily(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            labels=["server_version"],
        )
        from examples.kvstore.server import ETCD_VERSION

        ver.add_metric([ETCD_VERSION], 1)
        yield ver
        node = s.node
        ts = node.transport_stats if node is not None else {}
        yield CounterMetricFamily(
            "raftlib_transport_rejected_handshakes",
            "Peer connections refused at the handshake (another cluster, unknown member, bad TLS).",
            value=ts.get("rejected_handshakes", 0),
        )
        refused = CounterMetricFamily(
            "raftlib_transport_handshake_refused",
            "Peer connections this member refused at the handshake, by reason (wrong shared secret, "
            "certificate naming another member, another cluster, ...).",
            labels=["reason"],
        )
        for reason, count in sorted((node.handshake_refusals if node is not None else {}).items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "raftlib_transport_bad_frames",
            "Peer connections closed on a malformed, oversized or spoofed frame.",
            value=ts.get("bad_frames", 0),
        )
        m = s.machine
        try:
            size = s.db_size()
        except Exception:
            size = 0
        yield gauge(
            "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database in bytes.", size
        )
        yield gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            size,
        )
        yield gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", m.revision)
        yield gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            m.compact_revision,
        )
        yield gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", len(s.hub.watchers))
        yield gauge(
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
            self.owner.watch_streams,
        )


class ServerMetrics:
    """The registry of one server and the request-side instruments the API updates."""

    def __init__(self, server: KVServer) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.watch_streams = 0
        self.registry.register(_LiveCollector(server, self))
        self.raft = RaftMetrics(self.registry, label_names=())
        """raftlib's exporter: the etcd_server_*/etcd_disk_*/etcd_network_* figures of the member."""
        self.raft_observer: PrometheusObserver | None = None
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)  # the Python counterpart of etcd's go_gc_* metrics
        self.handled_total = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.received = Counter(
            "etcd_network_client_grpc_received_bytes",
            "The total number of bytes received from grpc clients.",
            registry=self.registry,
        )
        self.sent = Counter(
            "etcd_network_client_grpc_sent_bytes",
            "The total number of bytes sent to grpc clients.",
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        """(route, gRPC code) -> (its handled_total child, its handling_seconds child or None)."""

    def observer(self) -> PrometheusObserver:
        """The observer to give the server's (new) RaftNode; replaces the previous one's series."""
        if self.raft_observer is not None:
            self.raft.remove(self.raft_observer)
        self.raft_observer = self.raft.observer()
        return self.raft_observer

    def received_bytes(self, n: int) -> None:
        self.received.inc(n)

    def sent_bytes(self, n: int) -> None:
        self.sent.inc(n)

    def handled(self, route: str, code: int, seconds: float) -> None:
        children = self._children.get((route, code))
        if children is None:
            # labels() takes a lock and builds the label tuple: done once per (route, code).
            service, method = GRPC_METHODS.get(route, ("unknown", route))
            kind = "bidi_stream" if method in STREAMING else "unary"
            name = GRPC_CODE_NAMES[code] if 0 <= code < len(GRPC_CODE_NAMES) else str(code)
            timer = None if method in STREAMING else self.handling_seconds.labels(kind, service, method)
            children = self._children[(route, code)] = (
                self.handled_total.labels(kind, service, method, name),
                timer,
            )
        children[0].inc()
        if children[1] is not None:
            children[1].observe(seconds)

    def watch_started(self) -> None:
        self.watch_streams += 1

    def watch_ended(self) -> None:
        self.watch_streams -= 1

    def response(self) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

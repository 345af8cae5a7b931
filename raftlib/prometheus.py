"""Prometheus exporter: a node's events as metrics with etcd's names (``pip install raftlib[prometheus]``).

Owns :class:`RaftMetrics`, a collector registered once per registry, and the
:class:`PrometheusObserver` it hands out, one per node. Each observer keeps plain
Python numbers that its events update (no lock, no label lookup per event); the
collector turns them into metric families when Prometheus scrapes.

Names follow etcd's (``etcd_server_*``, ``etcd_disk_*``, ``etcd_network_*``,
``etcd_debugging_snap_*``) where the meaning is the same, and ``raftlib_*``
otherwise; docs/observability.md has the table.

Invariants: every sample of a family carries the observer's labels (by default
``group`` and ``member``), so several nodes, or the many groups of one host, share
one registry without clashing; two observers with the same label values are refused.

Example::

    from prometheus_client import start_http_server
    from raftlib.prometheus import RaftMetrics

    metrics = RaftMetrics()                  # registered in prometheus_client.REGISTRY
    node = raftlib.RaftNode("n1", members, sm, observers=[metrics.observer()])
    start_http_server(9100)
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
        UnknownMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "raftlib.prometheus needs prometheus-client: pip install raftlib[prometheus]"
    ) from exc

from raftlib.observe import Observer

if TYPE_CHECKING:
    from raftlib.runtime.node import RaftNode

DISK_BUCKETS: tuple[float, ...] = tuple(0.001 * 2**i for i in range(14))
"""etcd's buckets for disk latencies (WAL fsync, snapshot save): 1 ms to 8.192 s, doubling."""

NETWORK_SNAPSHOT_BUCKETS: tuple[float, ...] = tuple(0.1 * 2**i for i in range(14))
"""etcd's buckets for snapshot transfer durations: 0.1 s to 819.2 s, doubling."""

DEFAULT_LABELS: tuple[str, ...] = ("group", "member")
"""``member``: the node id (filled in when the node is created); ``group``: the Raft group, "" by default."""


class Histogram:
    """Bucket counts of one series (what an event updates: one bisect and two additions)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket ``le=b`` holds value <= b
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count of values <= le)`` per bucket, ``+Inf`` last (the exposition's buckets)."""
        counts = list(self.counts)  # one consistent copy: a scrape may run in another thread
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, counts, strict=False):
            total += n
            out.append((repr(float(bound)), total))
        out.append(("+Inf", total + counts[-1]))
        return out


class PrometheusObserver(Observer):
    """One node's figures, updated by its events; create it with :meth:`RaftMetrics.observer`."""

    def __init__(self, owner: RaftMetrics, labels: dict[str, str]) -> None:
        self.owner = owner
        self.labels = labels
        self.node: RaftNode | None = None
        self.leader: str | None = None
        self.term = 0
        self.is_leader = False
        self.leader_changes = 0
        self.committed = 0
        self.applied = 0
        self.applied_entries = 0
        self.failed: dict[str, int] = {}
        """Failed proposals by reason."""
        self.may_have_committed = 0
        """Failed proposals whose command may still be applied (outcome unknown to the caller)."""
        self.fsync = Histogram(DISK_BUCKETS)
        self.fsync_inline = 0
        self.wal_entries = 0
        self.snap_save = Histogram(DISK_BUCKETS)
        self.send_started: dict[str, float] = {}
        """Peer -> the time its snapshot's first chunk left (until its last one leaves)."""
        self.send_success: dict[str, int] = {}
        self.send_failures: dict[str, int] = {}
        self.send_seconds: dict[str, Histogram] = {}
        self.sent_bytes: dict[str, int] = {}
        self.receive_started: float | None = None
        self.receive_from: dict[str, tuple[int, int, Histogram]] = {}
        """Sender -> (snapshots installed, rejected, transfer durations)."""
        self.received_bytes = 0
        self.installed = 0

    # -- life cycle -------------------------------------------------------------------

    def attach(self, node: RaftNode) -> None:
        if self.node is not None and self.node is not node:
            raise ValueError("a PrometheusObserver reports one node: create one per node")
        self.node = node
        if "member" in self.owner.label_names and "member" not in self.labels:
            self.labels["member"] = node.id
        self.owner._adopt(self)

    def label_values(self) -> list[str]:
        return [self.labels[name] for name in self.owner.label_names]

    # -- events (docs/observability.md) ---------------------------------------------------

    def on_leader_change(self, node_id: str, leader: str | None, term: int) -> None:
        if leader is not None:
            self.leader_changes += 1
        self.leader = leader
        self.term = term
        self.is_leader = leader == node_id

    def on_commit(self, node_id: str, index: int) -> None:
        self.committed = index

    def on_apply(self, node_id: str, index: int, count: int) -> None:
        self.applied = index
        self.applied_entries += count

    def on_fsync(self, node_id: str, seconds: float, entries: int, inline: bool) -> None:
        self.fsync.observe(seconds)
        self.wal_entries += entries
        if inline:
            self.fsync_inline += 1

    def on_snapshot_taken(self, node_id: str, index: int, seconds: float) -> None:
        self.snap_save.observe(seconds)

    def on_snapshot_sent(self, node_id: str, to: str, index: int, offset: int, size: int, done: bool) -> None:
        now = time.perf_counter()
        if offset == 0 or to not in self.send_started:
            self.send_started[to] = now
        self.sent_bytes[to] = self.sent_bytes.get(to, 0) + size
        if done:
            started = self.send_started.pop(to, now)
            self.send_success[to] = self.send_success.get(to, 0) + 1
            hist = self.send_seconds.get(to)
            if hist is None:
                hist = self.send_seconds[to] = Histogram(NETWORK_SNAPSHOT_BUCKETS)
            hist.observe(now - started)

    def on_snapshot_send_failed(self, node_id: str, to: str, index: int, error: str) -> None:
        self.send_started.pop(to, None)
        self.send_failures[to] = self.send_failures.get(to, 0) + 1

    def on_snapshot_received(self, node_id: str, index: int, offset: int, size: int) -> None:
        if offset == 0 or self.receive_started is None:
            self.receive_started = time.perf_counter()
        self.received_bytes += size

    def on_snapshot_installed(self, node_id: str, index: int, seconds: float) -> None:
        self.installed += 1
        self.committed = max(self.committed, index)  # the snapshot's entries are committed and applied
        self.applied = max(self.applied, index)
        now = time.perf_counter()
        started = self.receive_started if self.receive_started is not None else now - seconds
        self.receive_started = None
        ok, bad, hist = self._from()
        hist.observe(now - started)
        self.receive_from[self.leader or ""] = (ok + 1, bad, hist)

    def on_snapshot_rejected(self, node_id: str, error: str) -> None:
        self.receive_started = None
        ok, bad, hist = self._from()
        self.receive_from[self.leader or ""] = (ok, bad + 1, hist)

    def on_proposal_failed(self, node_id: str, reason: str, may_still_commit: bool) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1
        if may_still_commit:
            self.may_have_committed += 1

    def _from(self) -> tuple[int, int, Histogram]:
        got = self.receive_from.get(self.leader or "")
        return got if got is not None else (0, 0, Histogram(NETWORK_SNAPSHOT_BUCKETS))


class RaftMetrics(Collector):
    """The collector of every :class:`PrometheusObserver` it created; register it once per registry.

    ``registry``: where to register (``prometheus_client.REGISTRY`` by default, ``None``: do
    not register). ``label_names``: the labels that tell nodes apart, a subset of
    ``("group", "member")`` in any order; ``()`` for a process with one node (the samples then
    have no such label, as etcd's own).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        label_names: Sequence[str] = DEFAULT_LABELS,
    ) -> None:
        names = tuple(label_names)
        unknown = [n for n in names if n not in DEFAULT_LABELS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"label_names must be distinct names among {DEFAULT_LABELS}, not {names}")
        self.label_names = names
        self._observers: list[PrometheusObserver] = []
        if registry is not None:
            registry.register(self)

    def observer(self, *, member: str | None = None, group: str = "") -> PrometheusObserver:
        """A new observer for one node: pass it in ``RaftNode(..., observers=[...])``.

        ``member`` defaults to the node's id; ``group`` to "" (name the group when one
        process hosts several)."""
        labels: dict[str, str] = {}
        if "group" in self.label_names:
            labels["group"] = group
        if "member" in self.label_names and member is not None:
            labels["member"] = member
        obs = PrometheusObserver(self, labels)
        if "member" not in self.label_names or member is not None:
            self._adopt(obs)
        return obs

    def _adopt(self, obs: PrometheusObserver) -> None:
        if obs in self._observers:
            return
        values = obs.label_values()
        for other in self._observers:
            if other.label_values() == values:
                raise ValueError(
                    f"an observer with labels {dict(zip(self.label_names, values, strict=True))} exists: "
                    "give each node its own member/group"
                )
        self._observers.append(obs)

    def remove(self, observer: PrometheusObserver) -> None:
        """Stop exporting ``observer``'s series (its node was removed or is replaced by a restart)."""
        if observer in self._observers:
            self._observers.remove(observer)

    def collect(self) -> Iterator[Metric]:
        """Build every family from the observers' numbers (called by the registry at scrape time)."""
        names = list(self.label_names)
        observers = list(self._observers)

        def gauge(name: str, doc: str, value: Callable[[PrometheusObserver], float]) -> GaugeMetricFamily:
            fam = GaugeMetricFamily(name, doc, labels=names)
            for o in observers:
                fam.add_metric(o.label_values(), float(value(o)))
            return fam

        def counter(name: str, doc: str, value: Callable[[PrometheusObserver], float]) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=names)
            for o in observers:
                fam.add_metric(o.label_values(), float(value(o)))
            return fam

        yield gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            lambda o: o.leader is not None,
        )
        yield gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            lambda o: o.is_leader,
        )
        yield counter(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            lambda o: o.leader_changes,
        )
        yield gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed (the commit index).",
            lambda o: o.committed,
        )
        yield gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied (the applied index).",
            lambda o: o.applied,
        )
        yield gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            lambda o: o.node.pending_proposals if o.node is not None else 0,
        )
        yield counter(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen.",
            lambda o: sum(o.failed.values()),
        )
        yield gauge("raftlib_term", "The Raft term this member is in.", lambda o: o.term)
        yield counter(
            "raftlib_entries_applied",
            "Committed entries applied (commands, leader no-ops, membership changes).",
            lambda o: o.applied_entries,
        )
        failed = CounterMetricFamily(
            "raftlib_proposals_failed",
            "Failed proposals by reason (leadership_lost, forward_lost, timeout, not_leader, stopped, ...).",
            labels=[*names, "reason"],
        )
        unknown = CounterMetricFamily(
            "raftlib_proposals_outcome_unknown",
            "Failed proposals whose command may still be applied (may_still_commit).",
            labels=names,
        )
        for o in observers:
            for reason, n in sorted(o.failed.items()):
                failed.add_metric([*o.label_values(), reason], n)
            unknown.add_metric(o.label_values(), o.may_have_committed)
        yield failed
        yield unknown

        fsync = HistogramMetricFamily(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            labels=names,
        )
        snap = HistogramMetricFamily(
            "etcd_debugging_snap_save_total_duration_seconds",
            "The total latency distributions of save called by snapshot.",
            labels=names,
        )
        for o in observers:
            fsync.add_metric(o.label_values(), o.fsync.cumulative(), o.fsync.sum)
            snap.add_metric(o.label_values(), o.snap_save.cumulative(), o.snap_save.sum)
        yield fsync
        yield snap
        yield counter(
            "raftlib_wal_fsyncs",
            "WAL writes synced, inline or in the I/O thread.",
            lambda o: o.fsync.count,
        )
        yield counter(
            "raftlib_wal_inline_fsyncs",
            "WAL writes synced on the event loop (fast disk) rather than in the I/O thread.",
            lambda o: o.fsync_inline,
        )
        yield counter("raftlib_wal_entries", "Entries written to the WAL.", lambda o: o.wal_entries)
        yield counter(
            "raftlib_snapshots_installed",
            "Snapshots received from the leader and installed by this member (not an etcd metric).",
            lambda o: o.installed,
        )
        yield from self._snapshot_network(names, observers)
        yield from self._transport(names, observers)

    @staticmethod
    def _snapshot_network(names: list[str], observers: list[PrometheusObserver]) -> Iterator[Metric]:
        # etcd's counters here have no _total suffix; untyped keeps their exact names.
        send_ok = UnknownMetricFamily(
            "etcd_network_snapshot_send_success",
            "Total number of successful snapshot sends",
            labels=[*names, "To"],
        )
        send_bad = UnknownMetricFamily(
            "etcd_network_snapshot_send_failures",
            "Total number of snapshot send failures",
            labels=[*names, "To"],
        )
        send_time = HistogramMetricFamily(
            "etcd_network_snapshot_send_total_duration_seconds",
            "Total latency distributions of v3 snapshot sends",
            labels=[*names, "To"],
        )
        sent = CounterMetricFamily(
            "raftlib_snapshot_sent_bytes",
            "Snapshot bytes handed to the transport, by receiver.",
            labels=[*names, "To"],
        )
        recv_ok = UnknownMetricFamily(
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            labels=[*names, "From"],
        )
        recv_bad = UnknownMetricFamily(
            "etcd_network_snapshot_receive_failures",
            "Total number of snapshot receive failures",
            labels=[*names, "From"],
        )
        recv_time = HistogramMetricFamily(
            "etcd_network_snapshot_receive_total_duration_seconds",
            "Total latency distributions of v3 snapshot receives",
            labels=[*names, "From"],
        )
        received = CounterMetricFamily(
            "raftlib_snapshot_received_bytes",
            "Snapshot bytes received from the leader and written to disk.",
            labels=names,
        )
        for o in observers:
            lv = o.label_values()
            for to in sorted(set(o.send_success) | set(o.send_failures) | set(o.sent_bytes)):
                send_ok.add_metric([*lv, to], o.send_success.get(to, 0))
                send_bad.add_metric([*lv, to], o.send_failures.get(to, 0))
                sent.add_metric([*lv, to], o.sent_bytes.get(to, 0))
                hist = o.send_seconds.get(to)
                if hist is not None:
                    send_time.add_metric([*lv, to], hist.cumulative(), hist.sum)
            for frm, (ok, bad, hist) in sorted(o.receive_from.items()):
                recv_ok.add_metric([*lv, frm], ok)
                recv_bad.add_metric([*lv, frm], bad)
                recv_time.add_metric([*lv, frm], hist.cumulative(), hist.sum)
            received.add_metric(lv, o.received_bytes)
        yield from (send_ok, send_bad, send_time, sent, recv_ok, recv_bad, recv_time, received)

    @staticmethod
    def _transport(names: list[str], observers: list[PrometheusObserver]) -> Iterator[Metric]:
        # Read at scrape time from the transport's own counters: nothing on the hot path.
        families = {
            "bytes_sent": CounterMetricFamily(
                "etcd_network_peer_sent_bytes",
                "The total number of bytes sent to peers (all peers: no To label).",
                labels=names,
            ),
            "bytes_received": CounterMetricFamily(
                "etcd_network_peer_received_bytes",
                "The total number of bytes received from peers (all peers: no From label).",
                labels=names,
            ),
            "sent": CounterMetricFamily(
                "raftlib_transport_messages_sent", "Raft messages handed to the transport.", labels=names
            ),
            "received": CounterMetricFamily(
                "raftlib_transport_messages_received", "Raft messages received from peers.", labels=names
            ),
            "dropped": CounterMetricFamily(
                "raftlib_transport_messages_dropped",
                "Raft messages dropped (peer unreachable, queue full).",
                labels=names,
            ),
            "reconnects": CounterMetricFamily(
                "raftlib_transport_reconnects", "Peer connections re-established.", labels=names
            ),
        }
        for o in observers:
            stats = o.node.transport_stats if o.node is not None else {}
            for key, fam in families.items():
                fam.add_metric(o.label_values(), stats.get(key, 0))
        yield from families.values()


__all__ = ["DISK_BUCKETS", "NETWORK_SNAPSHOT_BUCKETS", "Histogram", "PrometheusObserver", "RaftMetrics"]

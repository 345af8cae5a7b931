"""Observers (raftlib/observe.py) and the Prometheus exporter (raftlib/prometheus.py).

Scenarios over three in-process RaftNodes (memory transport; memory or disk storage).
Each test names the rule of docs/observability.md it checks: events arrive in order with
the node's real values, a failing observer never stops a node, and the exposition carries
etcd's metric names with the same values the node reports.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_node import Cluster, put
from test_runtime_requests import drop

from raftlib import LeadershipLost, Observer, ProposalDropped, RaftNode, RequestTimeout
from raftlib.core import MessageType
from raftlib.observe import EVENTS, ObserverSet, proposal_failure
from raftlib.prometheus import DISK_BUCKETS, Histogram, PrometheusObserver, RaftMetrics
from raftlib.storage import DiskStorage, MemoryStorage
from raftlib.transport.memory import MemoryTransport


class Recorder(Observer):
    """Keeps every event as (name, *args), in arrival order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.attached: RaftNode | None = None

    def attach(self, node: RaftNode) -> None:
        self.attached = node

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [e[1:] for e in self.events if e[0] == name]


def _recording(name: str) -> Any:
    def record(self: Recorder, *args: Any) -> None:
        self.events.append((name, *args))

    return record


for _name in EVENTS:
    setattr(Recorder, _name, _recording(_name))


class Exploding(Observer):
    """Raises in every event."""


def _exploding(name: str) -> Any:
    def boom(self: Exploding, *args: Any) -> None:
        raise RuntimeError(f"observer bug in {name}")

    return boom


for _name in EVENTS:
    setattr(Exploding, _name, _exploding(_name))


class ObservedCluster(Cluster):
    """test_node's Cluster whose nodes get ``observers(node_id)``."""

    def __init__(self, n: int, observers: Any, tmp: Path | None = None, **cfg: Any) -> None:
        super().__init__(n, tmp=tmp, **cfg)
        self.observers = observers

    def make(self, node_id: str, join: bool = False) -> RaftNode:
        sm = self.sms[node_id] = self.sm_factory()
        if self.tmp is not None:
            storage: Any = DiskStorage(self.tmp / node_id)
        else:
            storage = self.storages.get(node_id) or MemoryStorage()
        self.storages[node_id] = storage
        node = RaftNode(
            node_id,
            self.members,
            sm,
            config=self.cfg,
            join=join,
            transport=MemoryTransport(node_id, self.net),
            storage=storage,
            observers=self.observers(node_id),
        )
        self.nodes[node_id] = node
        return node


SNAPSHOT_ONLY = dict(snapshot_entries=10_000, snapshot_trailing_entries=1)
"""Snapshots only when asked, and nothing of the log kept behind them: a lagger needs the snapshot."""


def recorded(n: int = 3, tmp: Path | None = None, **cfg: Any) -> tuple[ObservedCluster, dict[str, Recorder]]:
    recs: dict[str, Recorder] = {}

    def make(node_id: str) -> list[Observer]:
        recs[node_id] = Recorder()  # a restarted node gets a fresh one
        return [recs[node_id]]

    return ObservedCluster(n, make, tmp=tmp, **cfg), recs


async def settle(c: Cluster, leader: RaftNode) -> None:
    """Every running node has applied the leader's commit index."""
    commit = leader.status()["commit"]
    for node in c.nodes.values():
        if node.running:
            await node.wait_applied(commit, timeout=5)


# -- events ---------------------------------------------------------------------------------------


async def test_leader_change_commit_and_apply_events_arrive_in_log_order_with_the_nodes_values() -> None:
    c, recs = recorded()
    await c.start()
    try:
        leader = await c.leader()
        for i in range(10):
            await leader.propose(put(f"k{i}", "v"))
        await settle(c, leader)
        commit = leader.status()["commit"]
        term = leader.status()["term"]
        for node_id, rec in recs.items():
            assert rec.attached is c.nodes[node_id]
            # Everyone ends up following the leader of the current term.
            assert rec.of("on_leader_change")[-1] == (node_id, leader.id, term)
            commits = [e[1] for e in rec.of("on_commit")]
            applies = rec.of("on_apply")
            assert commits == sorted(commits) and commits[-1] == commit
            assert [a[1] for a in applies] == sorted(a[1] for a in applies)
            assert applies[-1][1] == commit
            # One on_apply per batch; the counts add up to every entry of the log.
            assert sum(a[2] for a in applies) == commit
            # A batch is never applied before its commit was reported.
            last_commit = 0
            for e in rec.events:
                if e[0] == "on_commit":
                    last_commit = e[2]
                elif e[0] == "on_apply":
                    assert e[2] <= last_commit
            assert all(e[1] == node_id for e in rec.events)
        assert leader.metrics["leader_changes"] == len(
            [e for e in recs[leader.id].of("on_leader_change") if e[1] is not None]
        )
    finally:
        await c.stop()


async def test_fsync_events_on_disk_storage_carry_real_durations_and_match_the_metrics_dict(
    tmp_path: Path,
) -> None:
    c, recs = recorded(tmp=tmp_path)
    await c.start()
    try:
        leader = await c.leader()
        await asyncio.gather(*(leader.propose(put(f"k{i}", "v")) for i in range(20)))
        fsyncs = recs[leader.id].of("on_fsync")
        assert len(fsyncs) == leader.metrics["fsync_count"] > 0
        assert all(seconds > 0 for _, seconds, _, _ in fsyncs)
        assert sum(s for _, s, _, _ in fsyncs) == pytest.approx(leader.metrics["fsync_seconds_total"])
        assert sum(1 for *_, inline in fsyncs if inline) == leader.metrics["fsync_inline_count"]
        assert sum(n for _, _, n, _ in fsyncs) >= 20  # every proposed entry was written
    finally:
        await c.stop()


async def test_a_lagging_follower_catches_up_by_snapshot_and_both_sides_report_it(tmp_path: Path) -> None:
    c, recs = recorded(tmp=tmp_path, snapshot_chunk_bytes=64, **SNAPSHOT_ONLY)
    await c.start()
    try:
        leader = await c.leader()
        lagger = next(n for n in c.nodes.values() if n is not leader)
        await lagger.stop()
        for i in range(40):
            await leader.propose(put(f"s{i}", "x"))
        meta = await leader.snapshot()
        taken = recs[leader.id].of("on_snapshot_taken")
        assert len(taken) == 1 and taken[0][1] == meta.index and taken[0][2] > 0
        node = c.make(lagger.id)
        await node.start()
        await node.wait_applied(meta.index, timeout=5)

        sent = [e for e in recs[leader.id].of("on_snapshot_sent") if e[1] == lagger.id]
        assert sent and all(e[2] == meta.index for e in sent)
        assert [e[3] for e in sent] == sorted(e[3] for e in sent) and sent[0][3] == 0
        assert sent[-1][5] is True and all(e[5] is False for e in sent[:-1])
        assert len(sent) > 1  # 64-byte chunks: several of them
        total = sent[-1][3] + sent[-1][4]

        rec = recs[lagger.id]
        received = rec.of("on_snapshot_received")
        assert [(e[1], e[2], e[3]) for e in received] == [(e[2], e[3], e[4]) for e in sent]
        assert sum(e[3] for e in received) == total
        installed = rec.of("on_snapshot_installed")
        assert installed == [(lagger.id, meta.index, installed[0][2])] and installed[0][2] >= 0
        names = [e[0] for e in rec.events if e[0].startswith("on_snapshot")]
        assert names[-1] == "on_snapshot_installed"  # after its last chunk
        assert node.metrics["snapshots_installed"] == 1
    finally:
        await c.stop()


async def test_a_step_down_reports_the_held_proposal_as_failed_and_may_still_commit() -> None:
    c, recs = recorded(request_timeout=30.0)
    await c.start()
    try:
        leader = await c.leader()
        c.net.isolate(leader.id)
        with pytest.raises(LeadershipLost):
            await leader.propose(put("a", "1"))
        rec = recs[leader.id]
        assert rec.of("on_proposal_failed") == [(leader.id, "leadership_lost", True)]
        # The step-down itself: the old leader knows no leader any more.
        assert rec.of("on_leader_change")[-1][1] is None
    finally:
        await c.stop()


async def test_a_timeout_is_a_failure_with_unknown_outcome_and_a_cancellation_is_none() -> None:
    c, recs = recorded(request_timeout=30.0)
    await c.start()
    try:
        leader = await c.leader()
        c.net.isolate(leader.id)
        with pytest.raises(RequestTimeout):
            await leader.propose(put("a", "1"), timeout=0.01)
        assert recs[leader.id].of("on_proposal_failed") == [(leader.id, "timeout", True)]
        task = asyncio.ensure_future(leader.propose(put("b", "2")))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(recs[leader.id].of("on_proposal_failed")) == 1
    finally:
        await c.stop()


async def test_a_lost_forward_is_reported_by_the_follower_that_forwarded_it() -> None:
    c, recs = recorded(forward_proposals=True, forward_timeout=0.2, request_timeout=30.0)
    await c.start()
    try:
        leader = await c.leader()
        follower = next(n for n in c.nodes.values() if n is not leader)
        drop(follower, MessageType.PROPOSE)
        with pytest.raises(ProposalDropped):
            await follower.propose(put("a", "1"))
        assert recs[follower.id].of("on_proposal_failed") == [(follower.id, "forward_lost", True)]
        assert recs[leader.id].of("on_proposal_failed") == []
    finally:
        await c.stop()


def test_failure_reasons_name_the_error() -> None:
    assert proposal_failure(LeadershipLost(False)) == ("leadership_lost", False)
    assert proposal_failure(RequestTimeout("propose", 1.0)) == ("timeout", True)


# -- failing observers ----------------------------------------------------------------------------


async def test_an_observer_that_raises_is_logged_once_per_event_and_never_stops_the_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recs: dict[str, Recorder] = {}

    def make(node_id: str) -> list[Observer]:
        recs[node_id] = Recorder()
        return [Exploding(), recs[node_id]]  # the recorder comes after the broken one

    c = ObservedCluster(3, make)
    with caplog.at_level(logging.ERROR, logger="raftlib.observe"):
        await c.start()
        try:
            leader = await c.leader()
            for i in range(5):
                await leader.propose(put(f"k{i}", "v"))
            await settle(c, leader)
            assert all(n.running for n in c.nodes.values())
            assert recs[leader.id].of("on_apply")[-1][1] == leader.status()["commit"]
        finally:
            await c.stop()
    messages = [r.getMessage() for r in caplog.records]
    kinds = [m.split(" failed in ")[1].split()[0] for m in messages if " failed in " in m]
    assert "on_apply" in kinds and "on_commit" in kinds and "on_leader_change" in kinds
    # Logged once per observer and event kind: three broken observers (one per node).
    assert all(kinds.count(k) <= 3 for k in set(kinds)), kinds


def test_observers_must_be_observer_instances() -> None:
    with pytest.raises(TypeError, match=r"raftlib\.Observer"):
        ObserverSet([object()])  # type: ignore[list-item]


# -- the Prometheus exporter ----------------------------------------------------------------------


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back by prometheus_client's own parser."""
    text = generate_latest(registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_the_exposition_carries_etcds_names_with_each_members_values() -> None:
    registry = CollectorRegistry()
    metrics = RaftMetrics(registry)
    c = ObservedCluster(3, lambda node_id: [metrics.observer(group="g1")])
    await c.start()
    try:
        leader = await c.leader()
        await asyncio.gather(*(leader.propose(put(f"k{i}", "v")) for i in range(12)))
        await settle(c, leader)
        got = scrape(registry)
        for node in c.nodes.values():
            lv = (("group", "g1"), ("member", node.id))
            status = node.status()
            assert got[("etcd_server_has_leader", lv)] == 1
            assert got[("etcd_server_is_leader", lv)] == (1 if node is leader else 0)
            assert got[("etcd_server_leader_changes_seen_total", lv)] == node.metrics["leader_changes"] >= 1
            assert got[("etcd_server_proposals_committed_total", lv)] == status["commit"]
            assert got[("etcd_server_proposals_applied_total", lv)] == status["applied"] == status["commit"]
            assert got[("etcd_server_proposals_pending", lv)] == 0
            assert got[("etcd_server_proposals_failed_total", lv)] == 0
            assert got[("etcd_disk_wal_fsync_duration_seconds_count", lv)] == node.metrics["fsync_count"]
            assert got[("etcd_disk_wal_fsync_duration_seconds_sum", lv)] == pytest.approx(
                node.metrics["fsync_seconds_total"]
            )
            inf = (*lv[:1], ("le", "+Inf"), *lv[1:])
            assert got[("etcd_disk_wal_fsync_duration_seconds_bucket", inf)] == node.metrics["fsync_count"]
            assert got[("raftlib_transport_messages_sent_total", lv)] == node.transport_stats["sent"] > 0
        # Buckets are etcd's (1 ms doubling, 14 of them), cumulative.
        lv = (("group", "g1"), ("le", repr(DISK_BUCKETS[-1])), ("member", leader.id))
        assert got[("etcd_disk_wal_fsync_duration_seconds_bucket", lv)] <= leader.metrics["fsync_count"]
        # The step-down of the leader shows in its figures.
        c.net.isolate(leader.id)
        with pytest.raises(LeadershipLost):
            await leader.propose(put("z", "1"))
        got = scrape(registry)
        lv = (("group", "g1"), ("member", leader.id))
        assert got[("etcd_server_proposals_failed_total", lv)] == 1
        assert got[("raftlib_proposals_failed_total", (*lv[:1], *lv[1:], ("reason", "leadership_lost")))] == 1
        assert got[("raftlib_proposals_outcome_unknown_total", lv)] == 1
        assert got[("etcd_server_is_leader", lv)] == 0
    finally:
        await c.stop()


async def test_snapshot_transfers_show_as_etcd_network_snapshot_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = RaftMetrics(registry, label_names=("member",))
    observers: dict[str, PrometheusObserver] = {}

    def observe(node_id: str) -> list[Observer]:
        observers[node_id] = metrics.observer(member=node_id)
        return [observers[node_id]]

    c = ObservedCluster(3, observe, tmp=tmp_path, snapshot_chunk_bytes=64, **SNAPSHOT_ONLY)
    await c.start()
    try:
        leader = await c.leader()
        lagger = next(n for n in c.nodes.values() if n is not leader)
        await lagger.stop()
        metrics.remove(observers[lagger.id])  # a new node object takes its place below, same label
        for i in range(30):
            await leader.propose(put(f"s{i}", "x"))
        meta = await leader.snapshot()
        node = c.make(lagger.id)
        await node.start()
        await node.wait_applied(meta.index, timeout=5)
        got = scrape(registry)
        lead, lag = (("member", leader.id),), (("member", lagger.id),)
        assert got[("etcd_debugging_snap_save_total_duration_seconds_count", lead)] == 1
        assert got[("etcd_network_snapshot_send_success", (("To", lagger.id), *lead))] == 1
        assert got[("etcd_network_snapshot_send_failures", (("To", lagger.id), *lead))] == 0
        to = (("To", lagger.id), *lead)
        assert got[("etcd_network_snapshot_send_total_duration_seconds_count", to)] == 1
        assert got[("etcd_network_snapshot_receive_success", (("From", leader.id), *lag))] == 1
        assert got[("etcd_network_snapshot_receive_failures", (("From", leader.id), *lag))] == 0
        assert got[("raftlib_snapshots_installed_total", lag)] == 1
        # A snapshot moves the applied index too (no on_apply for the entries inside it).
        assert got[("etcd_server_proposals_applied_total", lag)] >= meta.index
        sent = got[("raftlib_snapshot_sent_bytes_total", (("To", lagger.id), *lead))]
        assert sent == got[("raftlib_snapshot_received_bytes_total", lag)] > 64
    finally:
        await c.stop()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False)))
def test_histogram_buckets_count_the_values_at_or_below_each_bound(values: list[float]) -> None:
    # Reference: Prometheus' rule, bucket le=b counts every observed value <= b.
    h = Histogram(DISK_BUCKETS)
    for v in values:
        h.observe(v)
    expected = [(repr(b), sum(1 for v in values if v <= b)) for b in DISK_BUCKETS]
    assert h.cumulative() == [*expected, ("+Inf", len(values))]
    assert h.count == len(values) and h.sum == pytest.approx(sum(values))


def test_two_nodes_cannot_share_label_values_and_one_observer_cannot_watch_two_nodes() -> None:
    metrics = RaftMetrics(None)
    metrics.observer(member="n1")
    with pytest.raises(ValueError, match="member"):
        metrics.observer(member="n1")
    with pytest.raises(ValueError, match="label_names"):
        RaftMetrics(None, label_names=("pod",))
    shared = metrics.observer(member="n2")
    net_nodes = Cluster(2)
    net_nodes.make("n1")
    RaftNode("n2", net_nodes.members, net_nodes.sm_factory(), config=net_nodes.cfg,
             transport=MemoryTransport("n2", net_nodes.net), observers=[shared])
    with pytest.raises(ValueError, match="one node"):
        RaftNode("n1", net_nodes.members, net_nodes.sm_factory(), config=net_nodes.cfg,
                 transport=MemoryTransport("n1", net_nodes.net), observers=[shared])


def test_without_prometheus_client_the_import_error_names_the_extra() -> None:
    code = "import sys; sys.modules['prometheus_client'] = None\nimport raftlib.prometheus"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "pip install raftlib[prometheus]" in out.stderr

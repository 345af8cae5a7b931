"""The unmodified Python gRPC clients ``aetcd`` and ``etcd3`` against the store (and real etcd).

Every check runs once per backend on a 3-member cluster shared by the module (`raftlib`: processes
of ``python -m examples.kvstore``; `etcd`: the real binary, when installed, started the same way by
tests/kvcluster.py), with its own key prefix. The rule checked throughout: a client written for
etcd works unchanged against the store and sees what it sees against etcd -- put/get/range by
prefix, delete, a transaction, a watch that sees a put, a lease whose revoke deletes its key, a
lock, the member list.

* ``aetcd`` (asyncio) runs in the test process.
* ``etcd3`` (python-etcd3 0.12) runs in a child process (tests/pyclient_etcd3.py): its generated
  protobuf modules load only with protobuf's pure-Python implementation, which is chosen per
  process before protobuf is first imported.

A client that is not installed, or does not import, skips its tests with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from kvcluster import BACKENDS, KVCluster, backend_unavailable_reason

ETCD3_SCRIPT = Path(__file__).with_name("pyclient_etcd3.py")


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    reason = backend_unavailable_reason(request.param)
    if reason:
        pytest.skip(reason)
    c = KVCluster(request.param, tmp_path_factory.mktemp(f"pyclients-{request.param}"))
    c.start(timeout=30)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return f"/pyclients/{request.node.originalname}/"


# ------------------------------------------------------------------------------------------ aetcd


def _aetcd() -> Any:
    return pytest.importorskip("aetcd", reason="aetcd is not installed (pip install -e '.[test]')")


@pytest.fixture
async def clients(cluster: KVCluster) -> AsyncIterator[list[Any]]:
    """One aetcd client per member (index = member index)."""
    aetcd = _aetcd()
    opened = [aetcd.Client("127.0.0.1", m.client_port, timeout=10) for m in cluster.members]
    for c in opened:
        await c.connect()
    try:
        yield opened
    finally:
        for c in opened:
            await c.close()


async def test_aetcd_put_get_range_by_prefix_and_delete_through_any_member(
    clients: list[Any], ns: str
) -> None:
    put = await clients[0].put(f"{ns}a".encode(), b"1")
    assert put.header.revision > 0
    await clients[1].put(f"{ns}b".encode(), b"2")
    got = await clients[2].get(f"{ns}a".encode())
    assert (got.key, got.value, got.version) == (f"{ns}a".encode(), b"1", 1)
    assert await clients[2].get(f"{ns}missing".encode()) is None
    listed = await clients[1].get_prefix(ns.encode())
    assert [(kv.key, kv.value) for kv in listed] == [(f"{ns}a".encode(), b"1"), (f"{ns}b".encode(), b"2")]
    ranged = await clients[0].get_range(f"{ns}a".encode(), f"{ns}b".encode())
    assert [kv.key for kv in ranged] == [f"{ns}a".encode()]
    deleted = await clients[2].delete(f"{ns}a".encode(), prev_kv=True)
    assert deleted.deleted == 1 and deleted.prev_kv.value == b"1"
    assert await clients[0].delete(f"{ns}a".encode()) is None  # nothing left to delete
    assert (await clients[0].delete_prefix(ns.encode())).deleted == 1
    assert len(await clients[1].get_prefix(ns.encode())) == 0


async def test_aetcd_transaction_takes_the_branch_its_compare_selects(clients: list[Any], ns: str) -> None:
    c = clients[1]
    key = f"{ns}k".encode()
    await c.put(key, b"v1")
    t = c.transactions

    async def txn() -> tuple[bool, list[Any]]:
        result: tuple[bool, list[Any]] = await c.transaction(
            compare=[t.value(key) == b"v1", t.version(key) > 0],
            success=[t.put(key, b"v2"), t.get(key)],
            failure=[t.put(key, b"other")],
        )
        return result

    ok, responses = await txn()
    assert ok is True and len(responses) == 2
    assert [value for value, _ in responses[1]] == [b"v2"]  # the range in the branch sees the put
    ok, responses = await txn()
    assert ok is False and len(responses) == 1
    assert (await clients[2].get(key)).value == b"other"
    assert await c.replace(key, b"other", b"r") is True
    assert await c.replace(key, b"other", b"r2") is False


async def test_aetcd_watch_on_a_follower_sees_a_put_through_another_member(
    cluster: KVCluster, clients: list[Any], ns: str
) -> None:
    follower = cluster.followers()[0]
    writer = clients[(follower + 1) % len(clients)]
    watch = await clients[follower].watch_prefix(f"{ns}w/".encode(), prev_kv=True)
    try:
        await writer.put(f"{ns}w/x".encode(), b"one")
        await writer.put(f"{ns}w/x".encode(), b"two")
        events: list[Any] = []

        async def collect() -> None:
            async for event in watch:
                events.append(event)
                if len(events) == 2:
                    return

        await asyncio.wait_for(collect(), 10)
    finally:
        await watch.cancel()
    assert [(str(e.kind), e.kv.key, e.kv.value) for e in events] == [
        ("PUT", f"{ns}w/x".encode(), b"one"),
        ("PUT", f"{ns}w/x".encode(), b"two"),
    ]
    assert events[1].prev_kv.value == b"one"


async def test_aetcd_lease_grant_put_with_lease_and_revoke_removes_the_key(
    clients: list[Any], ns: str
) -> None:
    aetcd = _aetcd()
    lease = await clients[0].lease(30)
    assert lease.ttl == 30 and lease.id > 0
    key = f"{ns}leased".encode()
    await clients[0].put(key, b"v", lease=lease)
    assert (await clients[1].get(key)).lease == lease.id
    info = await clients[2].get_lease_info(lease.id)  # a follower relays it to the leader's clock
    assert info.grantedTTL == 30 and 0 < info.TTL <= 30 and list(info.keys) == [key]
    refreshed = await clients[1].refresh_lease(lease.id)
    answered = (refreshed.ID, refreshed.TTL)
    assert answered == (lease.id, 30)
    await lease.revoke()
    assert await clients[1].get(key) is None
    assert (await clients[2].get_lease_info(lease.id)).TTL == -1
    with pytest.raises(aetcd.exceptions.ClientError, match="etcdserver: requested lease not found"):
        await clients[0].revoke_lease(lease.id)


async def test_aetcd_lock_excludes_a_second_holder_until_released(clients: list[Any], ns: str) -> None:
    first = clients[0].lock(f"{ns}lock".encode(), ttl=20)
    second = clients[1].lock(f"{ns}lock".encode(), ttl=20)
    assert await first.acquire(timeout=5) is True
    assert await second.acquire(timeout=1) is False  # held by the first
    waiting = asyncio.ensure_future(second.acquire(timeout=10))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await first.release()
    assert await asyncio.wait_for(waiting, 10) is True  # woken by the delete of the first's key
    await second.release()


async def test_aetcd_member_list_status_and_member_update_errors(
    cluster: KVCluster, clients: list[Any]
) -> None:
    listed = [m async for m in clients[2].members()]
    assert sorted(m.name for m in listed) == sorted(m.name for m in cluster.members)
    assert sorted(u for m in listed for u in m.client_urls) == sorted(cluster.endpoints)
    assert sorted(u for m in listed for u in m.peer_urls) == sorted(m.peer_url for m in cluster.members)
    status = await clients[1].status()
    assert status.leader is not None and status.leader.id in {m.id for m in listed}
    assert status.raft_term > 0 and status.raft_index > 0
    aetcd = _aetcd()
    with pytest.raises(aetcd.exceptions.ClientError, match="etcdserver: member not found"):
        await clients[0].update_member(0x1234ABCD, ["http://127.0.0.1:1"])
    taken = listed[1].peer_urls
    with pytest.raises(aetcd.exceptions.ClientError, match="etcdserver: Peer URLs already exists"):
        await clients[0].update_member(listed[0].id, taken)


# ------------------------------------------------------------------------------------------ etcd3


@functools.cache
def _etcd3_unusable() -> str | None:
    """Why etcd3 cannot be used here (the probe's error), or None."""
    probe = subprocess.run(
        [sys.executable, str(ETCD3_SCRIPT), "--probe"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode == 0:
        return None
    return f"etcd3 does not import: {probe.stderr.strip()}"


def test_etcd3_kv_txn_watch_lease_lock_and_members(cluster: KVCluster, ns: str) -> None:
    reason = _etcd3_unusable()
    if reason:
        pytest.skip(reason)
    leader = cluster.leader()
    follower = cluster.followers()[0]
    endpoints = ",".join(cluster.endpoints[i].removeprefix("http://") for i in (leader, follower))
    run = subprocess.run(
        [sys.executable, str(ETCD3_SCRIPT), endpoints, ns], capture_output=True, text=True, timeout=90
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {
        "put_prev": "1",
        "get": "2",
        "get_missing": [None, None],
        "prefix": [[f"{ns}a", "2"], [f"{ns}b", "3"]],
        "range": [f"{ns}a"],
        "delete": True,
        "delete_again": False,
        "after_delete": [f"{ns}b"],
        "txn_success": [True, 2],
        "txn_failure": [False, 1],
        "txn_value": "from-failure",
        "replace": True,
        "replace_stale": False,
        "watch": ["PutEvent", f"{ns}w/k", "watched"],
        "lease_put": True,
        "lease_keys": [f"{ns}leased"],
        "lease_granted_ttl": 30,
        "lease_refresh_ttl": [30],
        "lease_revoke": None,
        "lease_key_after_revoke": [None, None],
        "lease_ttl_after_revoke": -1,
        "lock": [True, True, True, False],
        "members": sorted([m.name, [m.client_url]] for m in cluster.members),
        "status_leader_listed": True,
    }
    assert {k: seen.get(k) for k in expected} == expected, f"[{cluster.backend}] {seen}"
    assert isinstance(seen["put_revision"], int) and seen["put_revision"] > 0

"""The unmodified Python gRPC clients ``aetcd`` and ``etcd3`` against the store (and real etcd).

Every check runs once per backend (`raftlib`: 3 processes of ``python -m examples.kvstore``;
`etcd`: the real binary, when installed, started the same way by tests/kvcluster.py) and once per
client. The rule checked throughout: a client written for etcd works unchanged against the store
and sees what it sees against etcd -- put/get/range by prefix, delete, a transaction, a watch
that sees a put, a lease whose revoke deletes its key, a lock, the member list, MemberUpdate's
errors.

Each client runs in a child process (tests/pyclient_aetcd.py, tests/pyclient_etcd3.py) that
writes through the leader, reads and watches through a follower, and prints one JSON object of
observations, which the tests below check: a client's generated protobuf modules register etcd's
message names in protobuf's default pool, where they collide with the store's own modules in one
process; etcd3 0.12's modules also need protobuf's pure-Python implementation. A client that is
not installed, or does not import, skips its tests with the reason.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from kvcluster import BACKENDS, KVCluster, backend_unavailable_reason

CLIENTS = ("aetcd", "etcd3")
HERE = Path(__file__).parent


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


@functools.cache
def unusable(client: str) -> str | None:
    """Why ``client`` cannot be used here (its import error), or None."""
    probe = subprocess.run(
        [sys.executable, str(HERE / f"pyclient_{client}.py"), "--probe"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if probe.returncode == 0:
        return None
    return f"{client} is not usable here ({probe.stderr.strip() or 'probe failed'}); pip install -e '.[test]'"


@pytest.fixture(scope="module", params=CLIENTS)
def seen(request: pytest.FixtureRequest, cluster: KVCluster) -> dict[str, Any]:
    """What the client saw, run once per (backend, client)."""
    client = request.param
    reason = unusable(client)
    if reason:
        pytest.skip(reason)
    leader = cluster.leader()
    follower = cluster.followers()[0]
    writer, reader = (cluster.endpoints[i].removeprefix("http://") for i in (leader, follower))
    ns = f"/pyclients/{client}/"
    run = subprocess.run(
        [sys.executable, str(HERE / f"pyclient_{client}.py"), writer, reader, ns],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, f"[{cluster.backend}] {client} failed:\n{run.stderr[-4000:]}"
    out: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    out["ns"], out["backend"] = ns, cluster.backend
    out["expected_members"] = sorted([m.name, [m.client_url], [m.peer_url]] for m in cluster.members)
    return out


def check(seen: dict[str, Any], expected: dict[str, Any]) -> None:
    got = {k: seen.get(k) for k in expected}
    assert got == expected, f"[{seen['backend']}, {seen['client']}] saw {got}"


def test_put_get_range_by_prefix_and_delete(seen: dict[str, Any]) -> None:
    ns = seen["ns"]
    assert isinstance(seen["put_revision"], int) and seen["put_revision"] > 0, seen["put_revision"]
    check(seen, {
        "put_prev": "1",
        "get": "2",
        "get_missing": None,
        "prefix": [[f"{ns}a", "2"], [f"{ns}b", "3"]],
        "range": [f"{ns}a"],
        "delete_prev": ["2"],
        "delete_again": 0,
        "after_delete": [f"{ns}b"],
    })  # fmt: skip


def test_transaction_takes_the_branch_its_compare_selects(seen: dict[str, Any]) -> None:
    check(seen, {
        "txn_success": [True, 2],
        "txn_failure": [False, 1],
        "txn_value": "from-failure",
        "replace": True,
        "replace_stale": False,
    })  # fmt: skip


def test_watch_on_a_follower_sees_a_put_through_the_leader(seen: dict[str, Any]) -> None:
    check(seen, {"watch": ["PUT", f"{seen['ns']}w/k", "watched"]})


def test_lease_grant_put_with_lease_and_revoke_removes_the_key(seen: dict[str, Any]) -> None:
    check(seen, {
        "lease_ttl": 30,
        "lease_put_lease": True,
        "lease_keys": [f"{seen['ns']}leased"],  # time-to-live through a follower: the leader's clock
        "lease_granted_ttl": 30,
        "lease_refresh_ttl": [30],
        "lease_revoke": True,
        "lease_key_after_revoke": None,
        "lease_ttl_after_revoke": -1,
    })  # fmt: skip
    assert "etcdserver: requested lease not found" in str(seen["lease_revoke_again"])


def test_lock_is_held_until_released(seen: dict[str, Any]) -> None:
    check(seen, {"lock": [True, True, True, False]})


def test_a_second_lock_contender_waits_until_the_first_releases(seen: dict[str, Any]) -> None:
    if seen["client"] == "etcd3":
        pytest.skip(seen["lock_contended"])
    check(seen, {"lock_contended": [True, False, True, True]})


def test_member_list_status_and_member_update_errors(seen: dict[str, Any]) -> None:
    check(seen, {"members": seen["expected_members"], "status_leader_listed": True})
    assert "etcdserver: member not found" in str(seen["member_update_unknown"])
    assert "etcdserver: Peer URLs already exists" in str(seen["member_update_taken"])

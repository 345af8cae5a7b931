"""Leases of the kvstore example (contract §3.4): replicated grant/revoke, leader-local clock."""

from __future__ import annotations

import random
from typing import Any

import pytest

from examples.kvstore.errors import EtcdError
from examples.kvstore.lease import Lessor, min_lease_ttl
from examples.kvstore.machine import KVMachine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[KVMachine, Clock]:
    clock = Clock()
    return KVMachine(min_lease_ttl=2, clock=clock), clock


def apply(m: KVMachine, cmd: bytes) -> dict[str, Any]:
    out = m.apply(cmd, m.applied_index + 1)
    if isinstance(out.get("error"), EtcdError):
        raise out["error"]
    return out


def grant(m: KVMachine, ttl: int, lease_id: int = 0, seed: int = 1) -> dict[str, Any]:
    return apply(m, m.prepare_lease_grant({"TTL": ttl, "ID": lease_id}, random.Random(seed)))


def error_of(fn: Any, *args: Any) -> EtcdError:
    with pytest.raises(EtcdError) as exc:
        fn(*args)
    return exc.value


def test_min_ttl_formula() -> None:
    assert min_lease_ttl(1.0) == 2  # etcd's default election timeout
    assert min_lease_ttl(0.1) == 1
    assert min_lease_ttl(3.0) == 5


def test_grant_random_id_min_ttl_and_explicit_id() -> None:
    m, _ = make()
    out = grant(m, 3)
    lid = int(out["ID"])
    assert 0 < lid < 2**63 and out == {"ID": str(lid), "TTL": "3", "revision": 1}
    assert grant(m, 1)["TTL"] == "2"  # raised to the minimum
    assert grant(m, 100, 4242) == {"ID": "4242", "TTL": "100", "revision": 1}
    e = error_of(grant, m, 100, 4242)
    assert (e.grpc_code, e.http_status, e.message) == (9, 412, "etcdserver: lease already exists")
    e = error_of(grant, m, 99999999999)
    assert (e.grpc_code, e.http_status, e.message) == (11, 400, "etcdserver: too large lease TTL")
    assert m.revision == 1  # grants change no revision
    # the random ID is chosen when preparing: the command is deterministic
    c1 = m.prepare_lease_grant({"TTL": 5}, random.Random(7))
    c2 = m.prepare_lease_grant({"TTL": 5}, random.Random(7))
    assert c1 == c2


def test_revoke_deletes_attached_keys_in_one_revision() -> None:
    m, _ = make()
    events: list[tuple[int, list[dict[str, Any]]]] = []
    m.add_listener(lambda rev, evs: events.append((rev, evs)))
    lid = int(grant(m, 60)["ID"])
    apply(m, m.prepare_put({"key": "bGs=", "value": "bHY=", "lease": lid}))  # 2
    apply(m, m.prepare_put({"key": "bGsy", "value": "bHY=", "lease": str(lid)}))  # 3
    apply(m, m.prepare_put({"key": "b3RoZXI=", "value": "bHY="}))  # 4
    assert apply(m, m.prepare_lease_revoke({"ID": lid})) == {"revision": 5}
    assert m.range({"key": "bA==", "range_end": "bQ=="}) == {"revision": 5}
    assert events[-1][0] == 5 and [ev["kv"] for ev in events[-1][1]] == [
        {"key": "bGs=", "mod_revision": "5"},
        {"key": "bGsy", "mod_revision": "5"},
    ]
    assert all(ev["type"] == "DELETE" for ev in events[-1][1])
    e = error_of(apply, m, m.prepare_lease_revoke({"ID": lid}))
    assert (e.grpc_code, e.http_status, e.message) == (5, 404, "etcdserver: requested lease not found")
    e = error_of(apply, m, m.prepare_put({"key": "bGs=", "value": "bHY=", "lease": lid}))
    assert e.grpc_code == 5


def test_revoke_of_keyless_lease_keeps_revision() -> None:
    m, _ = make()
    grant(m, 100, 4242)
    assert apply(m, m.prepare_lease_revoke({"ID": 4242})) == {"revision": 1}


def test_key_moved_to_another_lease_is_not_deleted_with_the_first() -> None:
    m, _ = make()
    grant(m, 60, 1)
    grant(m, 60, 2)
    apply(m, m.prepare_put({"key": "aw==", "lease": 1}))
    apply(m, m.prepare_put({"key": "aw==", "lease": 2}))
    apply(m, m.prepare_put({"key": "aw==", "ignore_lease": True, "value": "dg=="}))
    assert m.range({"key": "aw=="})["kvs"][0]["lease"] == "2"
    assert apply(m, m.prepare_lease_revoke({"ID": 1})) == {"revision": 4}
    assert apply(m, m.prepare_lease_revoke({"ID": 2})) == {"revision": 5}


def test_timetolive_rounds_down_and_reports_keys() -> None:
    m, clock = make()
    lid = int(grant(m, 3)["ID"])
    apply(m, m.prepare_put({"key": "bGsy", "lease": lid}))
    apply(m, m.prepare_put({"key": "bGs=", "lease": lid}))
    now = clock.now + 0.01
    assert m.lease_timetolive({"ID": lid, "keys": True}, now) == {
        "ID": str(lid),
        "TTL": "2",
        "grantedTTL": "3",
        "keys": ["bGs=", "bGsy"],
        "revision": 3,
    }
    assert m.lease_timetolive({"ID": lid}, now) == {
        "ID": str(lid),
        "TTL": "2",
        "grantedTTL": "3",
        "revision": 3,
    }
    assert m.lease_timetolive({"ID": lid}, clock.now + 3.5) == {"ID": str(lid), "TTL": "-1", "revision": 3}
    assert m.lease_timetolive({"ID": 12345}, now) == {"ID": "12345", "TTL": "-1", "revision": 3}


def test_keepalive_resets_to_granted_ttl_leader_local() -> None:
    m, clock = make()
    lid = int(grant(m, 3)["ID"])
    before = m.snapshot()
    assert m.lease_keepalive({"ID": lid}, clock.now + 2.5) == {"ID": str(lid), "TTL": "3", "revision": 1}
    assert m.snapshot() == before  # nothing replicated changed
    assert m.lease_timetolive({"ID": lid}, clock.now + 2.6)["TTL"] == "2"
    assert m.lease_keepalive({"ID": lid}, clock.now + 10) == {"ID": str(lid), "revision": 1}  # expired
    assert m.lease_keepalive({"ID": 999}, clock.now) == {"ID": "999", "revision": 1}


def test_expiry_only_on_primary_with_retry_interval() -> None:
    m, clock = make()
    lessor = m.lessor
    a = int(grant(m, 3, 11)["ID"])
    b = int(grant(m, 10, 12)["ID"])
    t0 = clock.now
    assert lessor.expired(t0 + 100) == []  # secondary: nothing expires
    lessor.promote(t0)
    assert lessor.expired(t0 + 2.9) == []
    assert lessor.expired(t0 + 3.0) == [a]
    assert lessor.expired(t0 + 3.5) == []  # already reported: retried later
    assert lessor.expired(t0 + 6.1) == [a]
    assert lessor.expired(t0 + 10.0) == [a, b]  # a retried again (6.1 + 3), b due
    apply(m, m.lease_expire_command(a))
    assert a not in m.leases
    assert lessor.expired(t0 + 20) == [b]
    # an expire command for a lease already gone is a deterministic "not found"
    assert m.apply(m.lease_expire_command(a), 99)["error"].grpc_code == 5


def test_promote_gives_every_lease_a_fresh_ttl_and_demote_stops_expiry() -> None:
    m, clock = make()
    lid = int(grant(m, 5)["ID"])
    lessor = m.lessor
    lessor.promote(clock.now)
    assert lessor.expired(clock.now + 4) == []
    lessor.demote()
    assert lessor.expired(clock.now + 100) == []
    lessor.promote(clock.now + 100)  # new leader: full TTL from now
    assert lessor.remaining(lid, clock.now + 100) == 5
    assert lessor.expired(clock.now + 104) == []
    assert lessor.expired(clock.now + 105) == [lid]


def test_restore_resets_lessor_and_lease_list() -> None:
    m, clock = make()
    grant(m, 30, 7)
    grant(m, 5, 8)
    other, other_clock = make()
    other_clock.now = clock.now + 50
    other.restore(m.snapshot())
    assert sorted(other.leases.ids()) == [7, 8]
    assert other.lessor.remaining(7, other_clock.now) == 30
    assert other.lease_leases() == {"leases": [{"ID": "8"}, {"ID": "7"}], "revision": 1}  # by expiry
    assert KVMachine().lease_leases() == {"revision": 1}


def test_lessor_standalone() -> None:
    clock = Clock()
    lessor = Lessor(clock, retry_interval=1.0)
    lessor.granted(1, 10)
    assert lessor.keepalive(1, clock.now + 5) == 10
    assert lessor.remaining(1, clock.now + 5) == 10
    assert lessor.keepalive(2, clock.now) == -1
    lessor.revoked(1)
    assert lessor.remaining(1, clock.now) is None

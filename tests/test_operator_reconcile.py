"""The operator's decisions: ``reconcile.plan(spec, observed)`` and the spec parser, no processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from examples.kvstore.operator import reconcile as rc
from examples.kvstore.operator.backup import BackupError, prune, verify, write_backup
from examples.kvstore.operator.reconcile import MemberView, Observed, plan
from examples.kvstore.operator.spec import SpecError, load_spec, parse_spec

SPEC = parse_spec({"name": "t", "size": 3, "grace_period": 10, "backup": {"interval": 60}})
CFG = SPEC.config_hash


def m(i: int, **kw: object) -> MemberView:
    base = dict(name=f"t-{i}", member_id=str(100 + i), index=i, applied=50, config_hash=CFG)
    base.update(kw)
    return MemberView(**base)  # type: ignore[arg-type]


def obs(*members: MemberView, leader: int | None = 0, **kw: object) -> Observed:
    base = dict(members=members, leader_id=None if leader is None else str(100 + leader), commit=50,
                last_backup_age=1.0)  # fmt: skip
    base.update(kw)
    return Observed(**base)  # type: ignore[arg-type]


def one(spec: object, o: Observed) -> rc.Action:
    actions = plan(spec, o)  # type: ignore[arg-type]
    assert len(actions) == 1, actions
    assert actions[0].reason
    return actions[0]


def test_bootstrap_then_grow_one_learner_at_a_time() -> None:
    assert one(SPEC, Observed()).kind == rc.BOOTSTRAP
    a = one(SPEC, obs(m(0)))
    assert a.kind == rc.ADD_LEARNER and "1 voters" in a.reason
    # A learner that is still catching up blocks any further growth.
    a = one(SPEC, obs(m(0), m(1, is_learner=True, applied=10), commit=5000))
    assert a.kind == rc.WAIT and "catching up" in a.reason
    a = one(SPEC, obs(m(0), m(1, is_learner=True, applied=49)))
    assert (a.kind, a.member, a.member_id) == (rc.PROMOTE, "t-1", "101")
    assert one(SPEC, obs(m(0), m(1))).kind == rc.ADD_LEARNER
    assert plan(SPEC, obs(m(0), m(1), m(2))) == []


def test_restore_bootstraps_from_the_backup() -> None:
    a = one(SPEC, Observed(restore_from="/b/t.snap"))
    assert a.kind == rc.BOOTSTRAP and a.target == "/b/t.snap"


def test_dead_member_waits_for_grace_then_is_removed_then_replaced() -> None:
    a = one(SPEC, obs(m(0), m(1), m(2, reachable=False, down_for=3.0)))
    assert a.kind == rc.WAIT and "t-2" in a.reason
    a = one(SPEC, obs(m(0), m(1), m(2, reachable=False, down_for=11.0)))
    assert (a.kind, a.member_id) == (rc.REMOVE, "102") and "grace" in a.reason
    # After the removal: two voters, the plan adds a fresh one.
    assert one(SPEC, obs(m(0), m(1))).kind == rc.ADD_LEARNER


def test_a_learner_that_never_answers_is_removed_after_the_startup_timeout() -> None:
    o = obs(m(0), m(1), m(2, is_learner=True, reachable=False, down_for=12.0))
    assert one(SPEC, o).kind == rc.WAIT  # past the grace period, within the start-up timeout
    o = obs(m(0), m(1), m(2, is_learner=True, reachable=False, down_for=31.0))
    assert one(SPEC, o).kind == rc.REMOVE


def test_never_acts_without_quorum() -> None:
    o = obs(m(0), m(1, reachable=False, down_for=30), m(2, reachable=False, down_for=30), leader=None)
    a = one(SPEC, o)
    assert a.kind == rc.REFUSE
    assert "quorum lost: 1 of 3 voters answer, 2 needed" in a.reason
    assert "restart-stopped" in a.reason and "restore" in a.reason
    # Within the grace period it is only a wait (members may be restarting), still no action.
    o = obs(m(0), m(1, reachable=False, down_for=1), m(2, reachable=False, down_for=1), leader=None)
    assert one(SPEC, o).kind == rc.WAIT
    # Even a spec asking for a change gets no action.
    assert one(replace(SPEC, size=5), obs(m(0), m(1, reachable=False, down_for=30),
                                          m(2, reachable=False, down_for=30))).kind == rc.REFUSE  # fmt: skip


def test_never_removes_two_at_once_and_keeps_quorum() -> None:
    five = replace(SPEC, size=5)
    dead = dict(reachable=False, down_for=60.0)
    # 5 voters, 2 dead: removing one leaves 4 with 3 up (quorum 3): ok, but only one per plan.
    actions = plan(five, obs(m(0), m(1), m(2), m(3, **dead), m(4, **dead)))
    assert [a.kind for a in actions] == [rc.REMOVE]
    # 4 voters, 2 up (a quorum would be 3 already: refused before anything else).
    assert one(five, obs(m(0), m(1), m(3, **dead), m(4, **dead))).kind == rc.REFUSE
    # 3 voters, leader + one down member + one down learner: only one removal.
    assert len(plan(SPEC, obs(m(0), m(1), m(2, **dead), m(3, is_learner=True, **dead)))) == 1


def test_no_leader_means_wait() -> None:
    assert one(SPEC, obs(m(0), m(1), m(2), leader=None)).kind == rc.WAIT


def test_resize_up_and_down_one_at_a_time() -> None:
    five = replace(SPEC, size=5)
    assert one(five, obs(m(0), m(1), m(2))).kind == rc.ADD_LEARNER
    assert one(five, obs(m(0), m(1), m(2), m(3))).kind == rc.ADD_LEARNER
    assert plan(five, obs(m(0), m(1), m(2), m(3), m(4))) == []
    # Shrinking removes the newest member first.
    a = one(SPEC, obs(m(0), m(1), m(2), m(3), m(4)))
    assert (a.kind, a.member) == (rc.REMOVE, "t-4") and "shrinking" in a.reason
    a = one(SPEC, obs(m(0), m(1), m(2), m(3)))
    assert (a.kind, a.member) == (rc.REMOVE, "t-3")


def test_shrinking_moves_leadership_away_first() -> None:
    a = one(SPEC, obs(m(0), m(1), m(2), m(3, applied=50), leader=3))
    assert a.kind == rc.TRANSFER_LEADER and a.member == "t-3"
    assert a.target in ("t-0", "t-1", "t-2") and a.details["target_id"]
    assert "moving leadership away" in a.reason


def test_shrinking_prefers_a_dead_member() -> None:
    a = one(SPEC, obs(m(0), m(1), m(2, reachable=False, down_for=1.0), m(3)))
    assert (a.kind, a.member) == (rc.REMOVE, "t-2")


def test_even_sizes_need_consent() -> None:
    with pytest.raises(SpecError, match="even"):
        parse_spec({"name": "t", "size": 4})
    assert parse_spec({"name": "t", "size": 4, "allow_even_size": True}).size == 4


def test_rolling_restart_one_at_a_time_followers_first_leader_last() -> None:
    old = dict(config_hash="old")
    a = one(SPEC, obs(m(0, **old), m(1, **old), m(2, **old)))
    assert (a.kind, a.member) == (rc.RESTART, "t-1")
    # Waits for a restarted member to catch up before the next one.
    a = one(SPEC, obs(m(0, **old), m(1, applied=1), m(2, **old), commit=5000))
    assert a.kind == rc.WAIT
    a = one(SPEC, obs(m(0, **old), m(1, reachable=False, down_for=0.5), m(2, **old)))
    assert a.kind == rc.WAIT
    assert one(SPEC, obs(m(0, **old), m(1), m(2, **old))).member == "t-2"
    a = one(SPEC, obs(m(0, **old), m(1), m(2)))
    assert a.kind == rc.TRANSFER_LEADER and a.member == "t-0"
    a = one(SPEC, obs(m(0, **old), m(1), m(2), leader=1))
    assert (a.kind, a.member) == (rc.RESTART, "t-0")


def test_backups_when_due_and_healthy() -> None:
    a = one(SPEC, obs(m(0), m(1), m(2), last_backup_age=None))
    assert a.kind == rc.BACKUP and "none yet" in a.reason
    assert one(SPEC, obs(m(0), m(1), m(2), last_backup_age=61)).kind == rc.BACKUP
    assert plan(SPEC, obs(m(0), m(1), m(2), last_backup_age=5)) == []
    # Not while something else needs doing.
    assert one(SPEC, obs(m(0), m(1), last_backup_age=None)).kind == rc.ADD_LEARNER


def test_leftovers_are_cleaned_up() -> None:
    stray = MemberView(name="id:999", member_id="999", managed=False, index=10**9)
    a = one(SPEC, obs(m(0), m(1), m(2), stray))
    assert (a.kind, a.member_id) == (rc.REMOVE, "999") and "not in the operator's state" in a.reason
    a = one(SPEC, obs(m(0), m(1), m(2), m(3, in_membership=False, reachable=False)))
    assert (a.kind, a.member) == (rc.FORGET, "t-3")


def test_plan_is_pure() -> None:
    o = obs(m(0), m(1), m(2, reachable=False, down_for=11.0))
    assert plan(SPEC, o) == plan(SPEC, o)


# ------------------------------------------------------------------------------------- spec


def test_spec_file_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('name = "c"\nsize = 5\nclient_ports = [30000, 30009]\npeer_ports = [30100, 30109]\n'
                 '[backup]\ninterval = 30\nretention = 3\n')  # fmt: skip
    s = load_spec(p)
    assert (s.size, s.client_ports, s.backup.retention) == (5, (30000, 30009), 3)
    assert s.data_root == tmp_path / "c-cluster" and s.backup.directory == tmp_path / "c-backups"
    assert "--heartbeat-interval" in s.member_args()
    bad = {
        "nme = 1": "unknown key",
        'name = "x"\nsize = 0': "size: must be at least 1",
        'name = "x"\nsize = "3"': "size: expected an integer",
        'name = "x"\nclient_ports = [1, 2]': "given together",
        'name = "x"\nclient_ports = [100, 101]\npeer_ports = [200, 201]': "at least size \\+ 1",
        'name = "x"\nheartbeat_interval = 100\nelection_timeout = 200': "at least 5 x",
        'name = "x"\nextra_args = ["--name=y"]': "set by the operator",
        'name = "x"\n[tls]\ncert_file = "nope.pem"': "no such file",
        'name = "x"\nsize = 3\n[backup]\nevery = 3': "backup: unknown",
        "name = ": "not valid TOML",
    }
    for text, message in bad.items():
        p.write_text(text)
        with pytest.raises(SpecError, match=message):
            load_spec(p)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.toml")


def test_config_hash_follows_member_flags() -> None:
    a = parse_spec({"name": "t"})
    assert a.config_hash == parse_spec({"name": "t", "size": 5}).config_hash
    assert a.config_hash != parse_spec({"name": "t", "extra_args": ["--snapshot-count", "10"]}).config_hash


# ------------------------------------------------------------------------------------ backups


def test_backup_checksum_and_retention(tmp_path: Path) -> None:
    paths = [write_backup(tmp_path, "t", b"KVS1" + bytes([i]) * 10, i, retention=3).path for i in range(5)]
    kept = sorted(p.name for p in tmp_path.glob("t-*.snap"))
    assert len(kept) == 3 and kept == sorted(p.name for p in paths[2:])
    assert verify(paths[-1])
    paths[-1].write_bytes(b"KVS1" + b"x" * 10)
    with pytest.raises(BackupError, match="checksum mismatch"):
        verify(paths[-1])
    (tmp_path / "lone.snap").write_bytes(b"KVS1")
    with pytest.raises(BackupError, match="no checksum"):
        verify(tmp_path / "lone.snap")
    assert prune(tmp_path, "t", 1) and len(list(tmp_path.glob("t-*.snap"))) == 1

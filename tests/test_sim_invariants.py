"""The invariant checker catches each kind of violation it claims to (fed broken histories)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raftlib.core import Entry, HardState, Role
from raftlib.testing import InvariantChecker, InvariantViolation, SimCluster, SimStorage

IDS = ["a", "b", "c"]


class FakeCore:
    """Just enough of RawNode's introspection for the checker."""

    def __init__(
        self,
        log: list[tuple[int, bytes]],
        *,
        role: Role = Role.FOLLOWER,
        term: int = 1,
        commit: int = 0,
        applied: int = 0,
    ) -> None:
        self.log = [Entry(i + 1, t, d) for i, (t, d) in enumerate(log)]
        self.role, self.term, self.commit_index, self.applied_index = role, term, commit, applied

    def first_index(self) -> int:
        return 1

    def last_index(self) -> int:
        return len(self.log)

    def term_at(self, i: int) -> int:
        return 0 if i == 0 else self.log[i - 1].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self.log[lo - 1 : hi - 1]


def make(log_by_node: dict[str, list[tuple[int, bytes]]], durable: bool = True) -> InvariantChecker:
    ch = InvariantChecker(IDS)
    for nid in IDS:
        st = SimStorage()
        ch.storages[nid] = st
        core = FakeCore(log_by_node.get(nid, []))
        ch.on_start(nid, core)
        if core.log:
            ch.on_ready(nid, core, SimpleNamespace(entries=core.log, hard_state=None))
            if durable:
                st.append(core.log)
    return ch


def test_election_safety_two_leaders_in_one_term() -> None:
    ch = make({})
    ch.cores["a"].role = Role.LEADER
    ch.after_event(["a"])
    ch.cores["b"].role = Role.LEADER
    with pytest.raises(InvariantViolation) as info:
        ch.after_event(["b"])
    assert info.value.rule == "election-safety" and info.value.nodes == ["a", "b"]


def test_election_safety_remembers_history_across_crashes() -> None:
    ch = make({})
    ch.cores["a"].role = Role.LEADER
    ch.after_event(["a"])
    ch.on_crash("a")
    ch.cores["c"].role = Role.LEADER
    with pytest.raises(InvariantViolation, match="election-safety"):
        ch.after_event(["c"])


def test_log_matching_same_index_and_term_different_data() -> None:
    ch = make({"a": [(1, b"x")]})
    core = FakeCore([(1, b"y")])
    with pytest.raises(InvariantViolation) as info:
        ch.on_ready("b", core, SimpleNamespace(entries=core.log, hard_state=None))
    assert info.value.rule == "log-matching" and info.value.indexes == [1]


def test_log_matching_different_predecessor() -> None:
    ch = make({"a": [(1, b""), (2, b"x")]})
    core = FakeCore([(2, b""), (2, b"x")])
    with pytest.raises(InvariantViolation, match="preceded by term 2"):
        ch.on_ready("b", core, SimpleNamespace(entries=core.log, hard_state=None))


def test_full_sweep_finds_a_durable_entry_that_bypassed_ready() -> None:
    ch = make({"a": [(1, b"")]})
    ch.storages["a"].entries.append(Entry(2, 1, b"sneaky"))
    with pytest.raises(InvariantViolation, match="no Ready ever handed out"):
        ch.check_all()


def test_full_sweep_checks_entries_not_yet_handed_out() -> None:
    ch = make({"a": [(1, b""), (1, b"x")]})
    ch.cores["b"].log = [Entry(1, 1, b""), Entry(2, 1, b"y")]  # same (index, term), other data
    with pytest.raises(InvariantViolation, match="differs"):
        ch.check_all()


def test_leader_completeness() -> None:
    ch = make({"a": [(1, b""), (1, b"x")], "b": [(1, b""), (1, b"x")], "c": [(1, b"")]})
    ch.cores["a"].commit_index = 2
    ch.after_event(["a"])
    assert ch.committed[1:] == [(1, b""), (1, b"x")]
    c = ch.cores["c"]
    c.role, c.term = Role.LEADER, 2
    with pytest.raises(InvariantViolation) as info:
        ch.after_event(["c"])
    assert info.value.rule == "leader-completeness" and info.value.indexes == [2]


def test_commit_durability_needs_a_quorum_on_disk() -> None:
    ch = make({"a": [(1, b"x")], "b": [(1, b"x")]}, durable=False)
    ch.storages["a"].append(ch.cores["a"].log)  # only one of three has it on disk
    ch.cores["a"].commit_index = 1
    with pytest.raises(InvariantViolation, match="commit-durability"):
        ch.after_event(["a"])


def test_commit_index_never_goes_back() -> None:
    ch = make({"a": [(1, b""), (1, b"x")], "b": [(1, b""), (1, b"x")]})
    ch.cores["a"].commit_index = 2
    ch.after_event(["a"])
    ch.cores["a"].commit_index = 1
    with pytest.raises(InvariantViolation, match="commit-monotonic"):
        ch.after_event(["a"])


def test_durable_commit_never_goes_back_across_restarts() -> None:
    ch = make({"a": [(1, b""), (1, b"x")]})
    st = ch.storages["a"]
    st.hard_state = HardState(1, "a", 2)
    ch.on_persist("a", st)
    ch.on_crash("a")
    ch.on_start("a", FakeCore([(1, b""), (1, b"x")]))
    st.hard_state = HardState(1, "a", 1)
    with pytest.raises(InvariantViolation, match="durable commit index goes back"):
        ch.on_persist("a", st)


def test_vote_never_changes_within_a_term() -> None:
    ch = make({})
    st = ch.storages["b"]
    st.hard_state = HardState(3, "a", 0)
    ch.on_persist("b", st)
    with pytest.raises(InvariantViolation, match="single-vote"):
        ch.on_ready("b", ch.cores["b"], SimpleNamespace(entries=[], hard_state=HardState(3, "c", 0)))


def test_state_machine_safety_different_entries_at_one_index() -> None:
    ch = make({"a": [(1, b"x")], "b": [(1, b"x")]})
    ch.cores["a"].commit_index = ch.cores["b"].commit_index = 1
    ch.on_apply("a", ch.cores["a"], Entry(1, 1, b"x"))
    with pytest.raises(InvariantViolation, match="state-machine-safety"):
        ch.on_apply("b", ch.cores["b"], Entry(1, 2, b"y"))


def test_apply_out_of_order_or_beyond_commit() -> None:
    ch = make({"a": [(1, b"x"), (1, b"y")]})
    ch.cores["a"].commit_index = 2
    with pytest.raises(InvariantViolation, match="expected 1"):
        ch.on_apply("a", ch.cores["a"], Entry(2, 1, b"y"))
    ch2 = make({"a": [(1, b"x")]})
    with pytest.raises(InvariantViolation, match="beyond its commit index"):
        ch2.on_apply("a", ch2.cores["a"], Entry(1, 1, b"x"))


def test_applied_beyond_commit() -> None:
    ch = make({"a": [(1, b"x")]})
    ch.cores["a"].applied_index = 1
    with pytest.raises(InvariantViolation, match="applied-le-commit"):
        ch.after_event(["a"])


def test_violation_inside_a_cluster_names_the_seed() -> None:
    c = SimCluster(3, seed=31337)
    leader = c.wait_leader()
    other = next(i for i in c.ids if i != leader)
    # Forge a second leader in the same term: the checker must notice at the next event that touches it.
    c.nodes[other].raw.raft.role = Role.LEADER
    c.nodes[other].raw.raft.term = c.raw(leader).term
    with pytest.raises(InvariantViolation) as info:
        c.run(5)
    text = str(info.value)
    assert info.value.rule == "election-safety"
    assert "seed: 31337" in text and "SimCluster(3, seed=31337)" in text


def test_installing_a_snapshot_of_uncommitted_entries() -> None:
    ch = make({"a": [(1, b""), (1, b"x")], "b": [(1, b""), (1, b"x")]})
    ch.cores["a"].commit_index = 1
    ch.after_event(["a"])
    ch.on_install("c", SimpleNamespace(index=1, term=1))  # fine: index 1 is committed
    with pytest.raises(InvariantViolation, match="beyond the cluster's committed index"):
        ch.on_install("c", SimpleNamespace(index=2, term=1))
    with pytest.raises(InvariantViolation, match="committed entry there has term 1"):
        ch.on_install("c", SimpleNamespace(index=1, term=2))

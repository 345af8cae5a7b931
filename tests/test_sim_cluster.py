"""Tests of the simulated cluster itself (raftlib.testing.cluster): determinism,
the Ready contract, durable storage, crash/restart, failure reports."""

from __future__ import annotations

import pytest

from raftlib.core import Entry, HardState
from raftlib.errors import NotLeader
from raftlib.testing import SimCluster, SimStorage, SimTimeout, SimulationError


def E(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(index, term, data)


def test_storage_append_truncates_from_the_first_new_index() -> None:
    st = SimStorage()
    st.append([E(1, 1, b"a"), E(2, 1, b"b"), E(3, 1, b"c")])
    st.append([E(2, 2, b"x")])  # conflicts at 2: 2 and 3 are replaced
    assert st.log() == [(1, 1, b"a"), (2, 2, b"x")]
    st.append([E(3, 2, b"y")])
    assert st.log() == [(1, 1, b"a"), (2, 2, b"x"), (3, 2, b"y")]
    with pytest.raises(SimulationError):
        st.append([E(5, 2, b"gap")])
    ps = st.state()
    assert [e.index for e in ps.entries] == [1, 2, 3] and ps.entries is not st.entries


def run_script(seed: int, **kw: object) -> list[tuple]:
    c = SimCluster(3, seed=seed, record_trace=True, drop=0.05, delay=(1, 12), persist_delay=(0, 5), **kw)
    c.wait_leader()
    for i in range(5):
        c.replicate(b"v%d" % i)
    c.crash(c.leader())
    c.wait_leader()
    c.replicate(b"after")
    c.run(20)
    assert c.trace is not None
    return c.trace


def test_same_seed_gives_the_same_event_trace() -> None:
    a = run_script(1234)
    b = run_script(1234)
    assert len(a) > 100
    assert a == b
    assert run_script(1235) != a


def test_initial_cluster_elects_and_replicates_to_every_state_machine() -> None:
    c = SimCluster(3, seed=1)
    leader = c.wait_leader(max_ticks=60)
    assert c.leaders() == [leader]
    index, term = c.replicate(b"hello")
    c.wait_applied(index)
    for i in c.ids:
        assert c.state_machine(i).data == [b"hello"]
        assert c.results(i)[index] == index  # RecordingStateMachine.apply returns the index
        assert c.log(i, durable=True)[index - 1] == (index, term, b"hello")


def test_propose_on_a_follower_raises_not_leader_with_the_hint() -> None:
    c = SimCluster(3, seed=2)
    leader = c.wait_leader()
    c.run(5)
    follower = next(i for i in c.ids if i != leader)
    with pytest.raises(NotLeader) as info:
        c.propose(b"x", follower)
    assert info.value.leader_id == leader


def test_crash_loses_what_was_not_yet_durable() -> None:
    # A write takes 5 sub-steps; the leader crashes right after proposing.
    c = SimCluster(3, seed=3, persist_delay=5)
    leader = c.wait_leader()
    c.replicate(b"kept")
    c.run(3)
    before = c.log(leader, durable=True)
    lost_index, _ = c.propose(b"lost", leader)
    assert c.log(leader)[-1] == (lost_index, c.raw(leader).term, b"lost")  # in memory...
    c.crash(leader)  # ...but never written
    assert c.log(leader, durable=True) == before
    c.restart(leader)
    assert all(d != b"lost" for _, _, d in c.log(leader))
    c.run(50)
    assert b"lost" not in c.committed_data()
    assert c.committed_data() == [b"kept"]


def test_restart_rebuilds_the_state_machine_from_the_log() -> None:
    c = SimCluster(3, seed=4)
    c.wait_leader()
    for i in range(4):
        c.replicate(b"c%d" % i)
    c.run(5)
    victim = next(i for i in c.ids if i != c.leader())
    c.crash(victim)
    assert c.state_machine(victim) is None
    c.restart(victim)
    c.run(10)
    assert c.state_machine(victim).data == [b"c0", b"c1", b"c2", b"c3"]
    assert c.nodes[victim].restarts == 1


def test_messages_of_a_crashed_sender_are_lost() -> None:
    c = SimCluster(3, seed=5, delay=(5, 5))
    leader = c.wait_leader()
    c.run(3)
    c.reset_stats()
    c.propose(b"x", leader)  # the APPENDs are now in flight
    c.crash(leader)
    c.run(2)
    assert c.stats()["APPEND"] == 0
    assert c.network.dropped[next(t for t in c.network.sent if t.name == "APPEND")] == 2


def test_timeout_reports_seed_replay_and_recent_events() -> None:
    c = SimCluster(3, seed=99, drop=0.1)
    c.wait_leader()
    c.isolate(c.leader())
    with pytest.raises(SimTimeout) as info:
        c.run_until(lambda: False, max_ticks=30, what="the impossible")
    text = str(info.value)
    assert "seed: 99" in text
    assert "SimCluster(3, seed=99, drop=0.1)" in text
    assert "the impossible" in text
    assert "events:" in text and "deliver" in text and "isolated" in text
    assert len(info.value.trace) <= 30
    assert info.value.seed == 99


def test_a_failing_state_machine_is_reported_with_the_seed() -> None:
    class Boom:
        def apply(self, data: bytes, index: int) -> None:
            if data == b"boom":
                raise RuntimeError("state machine exploded")

    c = SimCluster(3, seed=7, state_machine_factory=Boom)
    c.wait_leader()
    c.propose(b"boom")
    with pytest.raises(SimulationError) as info:
        c.run(10)
    assert "state machine exploded" in str(info.value)
    assert "seed: 7" in str(info.value) and "state_machine_factory=" in str(info.value)


def test_factory_may_take_the_node_id() -> None:
    made = []

    class SM:
        def __init__(self, node_id: str) -> None:
            made.append(node_id)

        def apply(self, data: bytes, index: int) -> None:
            pass

    c = SimCluster(3, seed=0, state_machine_factory=SM)
    assert made == ["n1", "n2", "n3"]
    c.crash("n2")
    c.restart("n2")
    assert made[-1] == "n2"


def test_manual_mode_nothing_happens_without_ticks() -> None:
    c = SimCluster(3, seed=0, auto_tick=False)
    c.settle()
    assert c.leader() is None and c.now == 0
    c.campaign("n2")
    c.settle()
    assert c.leader() == "n2"
    _, term = c.propose(b"x")
    c.settle()
    assert all(c.log(i) == [(1, term, b""), (2, term, b"x")] for i in c.ids)
    with pytest.raises(SimTimeout, match="no event left"):
        c.run_until(lambda: False)


@pytest.mark.parametrize("hold", [False, True])
def test_hard_state_is_durable_after_each_write(hold: bool) -> None:
    c = SimCluster(3, seed=8, persist_delay=(1, 4), hold_unsynced=hold)
    leader = c.wait_leader()
    idx, term = c.replicate(b"d")
    c.run(10)
    for i in c.ids:
        node = c.nodes[i]
        hs = node.storage.hard_state
        assert isinstance(hs, HardState) and hs.term == term
        if hold:
            # Only the commit index moved since the last synced write: held in memory.
            assert hs.commit < idx <= node.held_hard_state.commit
        else:
            assert hs.commit >= idx and node.held_hard_state is None
    assert c.nodes[leader].storage.hard_state.vote == leader


def test_a_held_commit_index_is_lost_in_a_crash_and_learned_again() -> None:
    c = SimCluster(3, seed=8)
    leader = c.wait_leader()
    idx, _ = c.replicate(b"d")
    c.run(5)
    follower = next(i for i in c.ids if i != leader)
    durable = c.nodes[follower].storage.hard_state.commit
    assert durable < idx
    c.crash(follower)
    c.restart(follower)
    assert c.raw(follower).commit_index == durable
    c.wait_applied(idx, node_ids=[follower])
    assert c.state_machine(follower).data == [b"d"]


def test_ids_and_config_overrides() -> None:
    c = SimCluster(ids=["a", "b", "c", "d", "e"], seed=1, config={"election_tick": 20, "heartbeat_tick": 2})
    assert c.raw("a").raft.config.election_tick == 20
    c.wait_leader(max_ticks=200)
    with pytest.raises(TypeError):
        SimCluster(3, config={"no_such_knob": 1})
    with pytest.raises(ValueError):
        SimCluster(ids=["a", "a"])


def test_scheduled_faults_run_at_their_virtual_time() -> None:
    c = SimCluster(3, seed=11)
    leader = c.wait_leader()
    start = c.ticks
    seen = []
    c.at(5, lambda: (seen.append(c.ticks), c.crash(leader)))
    c.run(4)
    assert seen == [] and c.is_up(leader)
    c.run(2)
    assert seen == [pytest.approx(start + 5, abs=0.01)] and not c.is_up(leader)


def test_read_index_on_leader_and_follower_sees_committed_writes() -> None:
    c = SimCluster(3, seed=12)
    leader = c.wait_leader()
    c.replicate(b"w1")
    follower = next(i for i in c.ids if i != leader)
    got: dict[str, object] = {}
    c.read(leader, lambda ok, sm: got.__setitem__("leader", (ok, list(sm.data))))
    c.read(follower, lambda ok, sm: got.__setitem__("follower", (ok, list(sm.data))))
    c.run(3)
    assert got == {"leader": (True, [b"w1"]), "follower": (True, [b"w1"])}


def test_read_without_a_known_leader_raises() -> None:
    c = SimCluster(3, seed=13, auto_tick=False)
    with pytest.raises(NotLeader):
        c.read("n1", lambda ok, sm: None)


def test_replay_hint_names_non_default_options() -> None:
    c = SimCluster(5, seed=3, snapshots=False, persist_delay=(0, 2), config={"pre_vote": False})
    c.isolate("n1")
    c.isolate("n2")
    c.isolate("n3")
    with pytest.raises(SimTimeout) as info:
        c.wait_leader(max_ticks=60)
    assert (
        "SimCluster(5, seed=3, config={'pre_vote': False}, persist_delay=(0, 2), snapshots=False)"
        in str(info.value)
    )

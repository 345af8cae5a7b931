"""Rule-level regressions for core bugs found by the simulator (tests/test_sim_*.py)."""

from __future__ import annotations

from core_harness import Harness

from raftlib.core import Role

ABC = ["a", "b", "c"]


def test_lease_read_is_not_served_once_the_lease_has_run_out() -> None:
    """Found by tests/test_sim_linearizable_clients.py (lease mode, seed 0 of the first sweep): a
    leader cut off from the quorum kept serving lease reads until CheckQuorum deposed it, up
    to two election timeouts after it last heard from the quorum, while the other side
    elected a leader after one timeout and committed writes: stale reads. A lease now lasts
    from the send time of the latest message a quorum acknowledged, for less than an election
    timeout; after that the read takes a heartbeat round (which a cut-off leader never
    completes)."""
    h = Harness(list(ABC), read_only="lease")
    a = h.elect("a")
    h.tick(3)  # heartbeats acknowledged: the lease is fresh
    a.read_index(b"fresh")
    h.run()
    assert [(rs.context, rs.ok) for rs in h.read_states["a"]] == [(b"fresh", True)]
    h.down.update({"b", "c"})  # the leader hears from nobody any more
    for _ in range(8):
        a.tick()
        h.run()
    assert a.role is Role.LEADER  # CheckQuorum has not deposed it yet
    a.read_index(b"late")
    h.run()
    assert [rs.context for rs in h.read_states["a"]] == [b"fresh"]  # not answered from the lease
    h.down.clear()
    h.tick(2)  # a heartbeat round confirms it: now served
    assert [rs.context for rs in h.read_states["a"]] == [b"fresh", b"late"]

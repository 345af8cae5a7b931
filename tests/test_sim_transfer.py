"""Leadership transfer (thesis §3.10) in the simulator, invariants checked after every event."""

from __future__ import annotations

import pytest

from raftlib.errors import ProposalDropped
from raftlib.testing import SimCluster


@pytest.mark.parametrize("seed", range(50))
def test_transfer_under_load_to_a_lagging_member(seed: int) -> None:
    c = SimCluster(3, seed=seed, delay=(1, 4), persist_delay=(0, 2))
    old = c.wait_leader()
    target = next(i for i in c.ids if i != old)
    c.isolate(target)  # it lags behind
    for k in range(5):
        c.replicate(b"a%d" % k)
    c.heal()
    c.raw(old).transfer_leadership(target)
    with pytest.raises(ProposalDropped) as err:
        c.propose(b"refused", old)
    assert err.value.reason == "transfer_pending"
    c.run_until(lambda: c.leader() == target, 60, "the target leads")
    index, _ = c.replicate(b"after")
    c.wait_applied(index, node_ids=c.ids)
    loaded = [d for d in c.committed_data() if d[:1] == b"a" and d != b"after"]
    assert loaded == [b"a%d" % k for k in range(5)]


@pytest.mark.parametrize("seed", range(50))
def test_transfer_to_a_crashed_member_is_abandoned(seed: int) -> None:
    c = SimCluster(3, seed=seed, delay=(1, 4))
    old = c.wait_leader()
    target = next(i for i in c.ids if i != old)
    c.crash(target)
    c.raw(old).transfer_leadership(target)
    with pytest.raises(ProposalDropped):
        c.propose(b"refused", old)
    c.run(12)  # an election timeout
    assert c.leader() == old
    index, _ = c.propose(b"accepted-again", old)
    c.wait_committed(index)

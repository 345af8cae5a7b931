"""The example of docs/testing.md, verbatim: keep the two in step."""

# --- docs/testing.md example begins ---
import pytest

from raftlib.errors import NotLeader
from raftlib.testing import SimCluster


class Counter:
    """The state machine under test: commands are b"+5", b"-2", ..."""

    def __init__(self):
        self.value = 0

    def apply(self, command: bytes, index: int):
        self.value += int(command)
        return self.value


@pytest.mark.parametrize("seed", range(20))
def test_counter_survives_faults(seed):
    c = SimCluster(5, seed=seed, state_machine_factory=Counter,
                   drop=0.05, delay=(1, 10), persist_delay=(0, 4))
    c.wait_leader()
    total = 0
    for k in range(10):
        if k == 3:
            crashed = c.leader()
            c.crash(crashed)                 # lose the leader mid-stream
        if k == 5:
            c.restart(crashed)               # rebuilt from its disk, log re-applied
        if k == 7:
            c.isolate(c.leader())            # cut the new leader off the network
        index, _ = c.replicate(b"+%d" % k)   # propose, wait for a quorum to commit
        total += k
    c.heal()
    c.wait_applied(index, node_ids=c.ids)
    assert [c.state_machine(i).value for i in c.ids] == [total] * 5
    assert c.results(c.leader())[index] == total  # what apply() returned


def test_proposals_to_a_follower_are_refused():
    c = SimCluster(3, seed=1, state_machine_factory=Counter)
    leader = c.wait_leader()
    follower = next(i for i in c.ids if i != leader)
    c.run(5)
    with pytest.raises(NotLeader) as err:
        c.propose(b"+1", follower)
    assert err.value.leader_id == leader
# --- docs/testing.md example ends ---


def test_docs_contain_this_example() -> None:
    import pathlib

    here = pathlib.Path(__file__).read_text()
    begin, end = "# --- docs/testing.md example begins ---\n", "# --- docs/testing.md example ends ---"
    example = here.split(begin)[1].split(end)[0]
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "testing.md").read_text()
    assert example.strip() in doc

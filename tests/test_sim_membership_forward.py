"""Forwarded configuration changes and transfer-first in the simulator (the sans-IO core only),
with the configuration-aware invariants checked after every event.

A follower's ``propose_conf_change_with_context`` travels to the leader as PROPOSE_CONF_CHANGE;
the leader places it or refuses with a reason (``transfer_pending``,
``conf_change_in_progress:<index>``, ``conf_change_invalid:<why>``, ``not_leader``). A forwarded
change that removes or demotes the leader makes it hand leadership over first.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from raftlib._accel import ENTRY_CONF_CHANGE
from raftlib.core import Change, ChangeKind, ConfChange, Entry, Message, MessageType, Role
from raftlib.errors import ConfChangeInProgress, NotLeader
from raftlib.testing import SimCluster

FAULTS = dict(drop=0.02, delay=(1, 6), persist_delay=(0, 3))


def forward(c: SimCluster, node_id: str, *changes: tuple[ChangeKind, str]) -> list[Any]:
    """Forward a change from ``node_id``; returns the list its ProposalResult will land in."""
    got: list[Any] = []
    c._forwarded += 1
    ctx = b"sim-conf-%d" % c._forwarded
    c._proposal_callbacks[ctx] = got.append
    cc = ConfChange(tuple(Change(kind, nid) for kind, nid in changes))
    try:
        c._guard(c.nodes[node_id].raw.propose_conf_change_with_context, cc, ctx)
    except NotLeader:
        del c._proposal_callbacks[ctx]
        raise
    c._guard(c._settle_node, c.nodes[node_id])
    return got


def forward_until_placed(c: SimCluster, node_id: str, *changes: tuple[ChangeKind, str]) -> Any:
    """Forward until the leader places the change (retrying refusals and losses); its result."""
    for _ in range(40):
        c.run_until(lambda: c.raw(node_id).leader is not None, 200, "a leader known")
        if c.raw(node_id).role is Role.LEADER:  # became the leader itself: propose directly
            try:
                index, term = c.propose_conf_change(*changes, node_id=node_id)
            except ConfChangeInProgress:  # a new leader's earlier entries are not applied yet
                c.run(3)
                continue
            return SimpleNamespace(index=index, term=term)
        got = forward(c, node_id, *changes)
        try:
            c.run_until(lambda got=got: got, 40, "the leader's answer")
        except Exception:
            continue  # the forward or its answer was lost
        if got[0].error is None:
            return got[0]
        assert got[0].error in ("transfer_pending", "not_leader") or got[0].error.startswith(
            "conf_change_in_progress:"
        ), got[0].error
        c.run(3)
    raise AssertionError("the change was never placed")


@pytest.mark.parametrize("seed", range(20))
def test_a_followers_forwarded_change_commits_like_the_leaders_own(seed: int) -> None:
    c = SimCluster(3, seed=seed, config={"forward_proposals": True}, **FAULTS)  # type: ignore[arg-type]
    lead = c.wait_leader()
    c.add_node("n4")
    follower = next(i for i in c.ids if i not in (lead, "n4"))
    res = forward_until_placed(c, follower, (ChangeKind.ADD_LEARNER, "n4"))
    c.run_until(lambda: c.committed(res.index, res.term), 400, "the forwarded change committed")
    c.run_until(lambda: "n4" in c.membership().learners, 400, "n4 a learner")
    c.heal()
    index, _ = c.replicate(b"after")
    c.wait_applied(index, node_ids=c.members())
    c.check_invariants()


@pytest.mark.parametrize("seed", range(20))
def test_a_forwarded_change_removing_the_leader_moves_leadership_first(seed: int) -> None:
    c = SimCluster(3, seed=seed, config={"forward_proposals": True})
    old = c.wait_leader()
    term = c.raw(old).term
    follower = next(i for i in c.ids if i != old)
    c.run_until(lambda: c.raw(follower).leader == old, 100, "the follower knows its leader")
    got = forward(c, follower, (ChangeKind.REMOVE, old))
    c.run_until(lambda: got, 50, "the refusal")
    assert got[0].error == "transfer_pending", "the leader refuses and hands over first"
    new = c.run_until(lambda: (lambda lead: lead if lead and lead != old else None)(c.leader()), 50)
    assert c.raw(new).term == term + 1, "a forced election: no election timeout waited"
    res = forward_until_placed(c, follower, (ChangeKind.REMOVE, old))
    c.run_until(lambda: c.committed(res.index, res.term), 100)
    c.run_until(lambda: old not in c.membership().members(), 100, "old leader removed")
    assert c.leader() == new, "the removal happened under the new leader"
    c.detach(old)
    c.check_invariants()


def test_the_leader_refuses_forwarded_changes_with_the_reason_the_proposer_decodes() -> None:
    c = SimCluster(3, seed=1, config={"forward_proposals": True}, drop=0.0)
    lead = c.wait_leader()
    follower = next(i for i in c.ids if i != lead)
    c.run_until(lambda: c.raw(follower).leader == lead, 100, "the follower knows its leader")
    got = forward(c, follower, (ChangeKind.REMOVE, "nobody"))
    c.run_until(lambda: got, 50)
    assert got[0].error.startswith("conf_change_invalid:") and "not a member" in got[0].error
    # A change in flight (its entry not yet applied on the leader).
    c.add_node("n4")
    pending, _ = c.raw(lead).propose_conf_change(ConfChange((Change(ChangeKind.ADD_LEARNER, "n4"),)))
    got = forward(c, follower, (ChangeKind.ADD_LEARNER, "n5"))
    c.run_until(lambda: got, 50)
    assert got[0].error == f"conf_change_in_progress:{pending}"
    c.check_invariants()


def test_a_conf_change_entry_in_an_ordinary_forward_is_never_appended_as_a_command() -> None:
    c = SimCluster(3, seed=2, drop=0.0)
    lead = c.wait_leader()
    follower = next(i for i in c.ids if i != lead)
    raw = c.raw(lead)
    last = raw.last_index()
    cc = ConfChange((Change(ChangeKind.REMOVE, follower),)).encode()
    raw.step(Message(MessageType.PROPOSE, follower, lead, raw.term, context=b"x",
                     entries=[Entry(0, 0, cc, ENTRY_CONF_CHANGE)]))
    raw.step(Message(MessageType.PROPOSE_CONF_CHANGE, follower, lead, raw.term, context=b"y",
                     entries=[Entry(0, 0, b"not a change", ENTRY_CONF_CHANGE)]))
    rd = raw.ready()
    answers = {m.context: m for m in rd.messages if m.type is MessageType.PROPOSE_RESP}
    assert answers[b"x"].reject and answers[b"x"].data == b"invalid"
    assert answers[b"y"].reject and answers[b"y"].data.startswith(b"conf_change_invalid:")
    assert raw.last_index() == last, "nothing appended"
    raw.advance(rd)


def test_without_forwarding_a_follower_cannot_propose_a_change() -> None:
    c = SimCluster(3, seed=3, drop=0.0)
    lead = c.wait_leader()
    follower = next(i for i in c.ids if i != lead)
    c.run_until(lambda: c.raw(follower).leader == lead, 100, "the follower knows its leader")
    with pytest.raises(NotLeader) as err:
        forward(c, follower, (ChangeKind.REMOVE, lead))
    assert err.value.leader_id == lead


def test_handover_target_is_the_most_up_to_date_voter_that_stays_and_only_when_the_leader_goes() -> None:
    c = SimCluster(5, seed=4, drop=0.0)
    lead = c.wait_leader()
    index, _ = c.replicate(b"x")
    c.wait_applied(index, node_ids=c.members())
    raw = c.raw(lead)
    rest = sorted(i for i in c.ids if i != lead)

    def target(*changes: tuple[ChangeKind, str]) -> str | None:
        return raw.handover_target(ConfChange(tuple(Change(k, n) for k, n in changes)))

    assert target((ChangeKind.REMOVE, rest[0])) is None, "the leader stays: no hand-over"
    assert target((ChangeKind.REMOVE, lead)) == rest[0], "all caught up: the smallest id"
    assert target((ChangeKind.ADD_LEARNER, lead)) == rest[0], "demoting the leader hands over too"
    assert target((ChangeKind.REMOVE, lead), (ChangeKind.REMOVE, rest[0])) == rest[1]
    raw.raft.tracker.progress[rest[0]].match -= 1  # rest[0] lags one entry behind
    assert target((ChangeKind.REMOVE, lead)) == rest[1], "the most up-to-date remaining voter"
    assert target((ChangeKind.REMOVE, "nobody")) is None, "an invalid change: nothing to hand over for"
    assert c.raw(rest[0]).handover_target(ConfChange((Change(ChangeKind.REMOVE, lead),))) is None

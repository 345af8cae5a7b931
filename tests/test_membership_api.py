"""Membership from RaftNode: several changes in one step, from any member, leader moved first.

Scenarios over 3-5 in-process RaftNodes (memory transport and storage; TCP and disk for a member
that moves), each naming the rule of ``raftlib/runtime/membership.py`` or ``RaftNode`` (docs/runtime.md,
"Membership changes") it checks.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from test_node import Cluster, put
from test_runtime_requests import drop, pending

from raftlib import (
    ConfChangeError,
    ConfChangeInProgress,
    LeadershipLost,
    NotLeader,
    ProposalDropped,
    RaftNode,
)
from raftlib.core import Membership, MessageType
from raftlib.errors import NodeStopped, RequestTimeout
from raftlib.runtime.membership import (
    AddLearner,
    AddVoter,
    Demote,
    MemberExists,
    MemberRoleError,
    NoVotersLeft,
    Promote,
    Remove,
    UnknownMember,
)


async def started(n: int = 3, **cfg: Any) -> Cluster:
    c = Cluster(n, **cfg)
    await c.start()
    return c


async def joining(c: Cluster, *ids: str) -> None:
    """Start empty nodes that wait to be added (``join=True``)."""
    for nid in ids:
        c.members[nid] = f"mem://{nid}"
        await c.make(nid, join=True).start()


def history(node: RaftNode) -> list[Membership]:
    """The configurations this node went through, in log order."""
    assert node._core is not None
    return [m for _, m in node._core.raft.conf_history]


def others(c: Cluster, node: RaftNode) -> list[RaftNode]:
    return [n for n in c.nodes.values() if n is not node and n.running]


async def writer(node: RaftNode, stop: asyncio.Event, done: list[int]) -> None:
    """Propose on ``node`` until ``stop``; every write must succeed."""
    i = 0
    while not stop.is_set():
        await node.propose(put(f"w{i}", str(i)), timeout=5)
        done.append(i)
        i += 1


# -- one step, simple or joint ------------------------------------------------------------------


async def test_replace_member_swaps_voters_in_one_joint_change_while_writes_continue() -> None:
    c = await started(3)
    try:
        leader = await c.leader()
        await joining(c, "n4")
        old = others(c, leader)[0].id
        stop, done = asyncio.Event(), []
        writes = asyncio.ensure_future(writer(leader, stop, done))
        await asyncio.sleep(0.05)
        before = len(done)
        conf = await leader.replace_member(old, "n4", "mem://n4", timeout=10)
        stop.set()
        await asyncio.wait_for(writes, 5)  # raises if any write failed
        assert len(done) > before, "writes went on during the change"
        assert conf.voters == {leader.id, "n4", *(n.id for n in others(c, leader) if n.id not in (old, "n4"))}
        assert not conf.is_joint() and old not in conf.members()
        # Atomic: straight from the old voters to C_old,new, then to the new voters; never 2 or 4.
        old_voters = frozenset(c.ids)
        steps = history(leader)
        assert steps[-2:] == [
            Membership(conf.voters, old_voters),
            Membership(conf.voters),
        ]
        assert steps[-3].voters == old_voters and not steps[-3].is_joint()
        # The new voter has the log and counts: it applied the writes.
        await c.nodes["n4"].wait_applied(leader.status()["commit"], timeout=5)
        assert c.sms["n4"].data == c.sms[leader.id].data
    finally:
        await c.stop()


async def test_several_changes_go_in_one_step_and_one_voter_change_stays_simple() -> None:
    c = await started(3)
    try:
        leader = await c.leader()
        await joining(c, "n4", "n5", "n6")
        gone = others(c, leader)[0].id
        n_before = len(history(leader))
        conf = await leader.change_membership(
            [AddVoter("n4", "mem://n4"), AddVoter("n5", "mem://n5"), Remove(gone)], timeout=10
        )
        assert conf.voters == (frozenset(c.ids) - {gone}) | {"n4", "n5"}
        steps = history(leader)[n_before:]
        assert len(steps) == 2 and steps[0].is_joint() and steps[1] == conf, "joint, then left"
        # One voter changing (a learner added here) takes the simple path: no joint step.
        n_before = len(history(leader))
        conf = await leader.change_membership([AddLearner("n6", "mem://n6")], timeout=10)
        assert history(leader)[n_before:] == [conf] and conf.learners == {"n6"}
        await c.nodes["n6"].wait_applied(leader.status()["commit"], timeout=5)
    finally:
        await c.stop()


async def test_demote_keeps_a_member_as_learner_and_promote_makes_it_vote_again() -> None:
    c = await started(3)
    try:
        leader = await c.leader()
        member = others(c, leader)[0]
        conf = await leader.demote(member.id, timeout=10)
        assert member.id in conf.learners and member.id not in conf.voters
        for i in range(3):
            await leader.propose(put("after-demote", str(i)), timeout=5)
        index = leader.status()["commit"]
        await member.wait_applied(index, timeout=5)  # a learner still receives the log
        assert c.sms[member.id].data["after-demote"] == "2"
        await leader.promote(member.id, timeout=10)
        conf = leader.membership()
        assert member.id in conf.voters and not conf.learners
    finally:
        await c.stop()


# -- from a follower ------------------------------------------------------------------------------


async def test_a_followers_membership_calls_are_forwarded_to_the_leader() -> None:
    c = await started(3, forward_proposals=True)
    try:
        leader = await c.leader()
        follower = others(c, leader)[0]
        await joining(c, "n4")
        await follower.add_learner("n4", "mem://n4", timeout=10)
        assert "n4" in leader.membership().learners and "n4" in follower.membership().learners
        conf = await follower.change_membership([Promote("n4"), Demote(others(c, leader)[1].id)], timeout=10)
        assert "n4" in conf.voters and conf == leader.membership()
        await follower.remove_member("n4", timeout=10)
        assert "n4" not in leader.membership().members()
        assert pending(follower) == 0
    finally:
        await c.stop()


async def test_without_forwarding_a_follower_refuses_with_the_leaders_address() -> None:
    c = await started(3)
    try:
        leader = await c.leader()
        follower = others(c, leader)[0]
        with pytest.raises(NotLeader) as err:
            await follower.demote(leader.id, timeout=5)
        assert err.value.leader_id == leader.id and err.value.leader_address == f"mem://{leader.id}"
    finally:
        await c.stop()


async def test_leader_change_mid_forwarded_change_ends_the_call_with_leadership_lost() -> None:
    c = await started(3, forward_proposals=True, forward_timeout=30.0)
    try:
        leader = await c.leader()
        await joining(c, "n4")
        follower, third = others(c, leader)[:2]
        drop(leader, MessageType.PROPOSE_RESP)  # the change is placed; its answer never comes
        call = asyncio.ensure_future(follower.add_learner("n4", "mem://n4", timeout=30))
        await asyncio.sleep(0.1)
        assert not call.done()
        began = time.monotonic()
        await leader.transfer_leadership(third.id, timeout=5)
        with pytest.raises(LeadershipLost) as err:
            await asyncio.wait_for(call, 5)
        assert time.monotonic() - began < 5.0 and err.value.may_still_commit is True
        assert pending(follower) == 0
    finally:
        await c.stop()


async def test_a_lost_forwarded_change_ends_with_forward_lost_and_a_deadline_with_request_timeout() -> None:
    c = await started(3, forward_proposals=True, forward_timeout=0.2)
    try:
        leader = await c.leader()
        follower = others(c, leader)[0]
        await joining(c, "n4")
        lost = drop(follower, MessageType.PROPOSE_CONF_CHANGE)
        with pytest.raises(ProposalDropped) as err:
            await follower.add_learner("n4", "mem://n4", timeout=10)
        assert err.value.reason == "forward_lost" and err.value.may_still_commit is True
        assert lost and pending(follower) == 0
        began = time.monotonic()
        with pytest.raises(RequestTimeout) as timeout:
            await follower.add_learner("n4", "mem://n4", timeout=0.1)
        assert time.monotonic() - began < 1.0 and timeout.value.operation == "add_learner"
        assert pending(follower) == 0 and "n4" not in leader.membership().members()
    finally:
        await c.stop()


async def test_a_follower_checks_a_fresh_view_and_a_stuck_joint_change_blocks_the_next_anywhere() -> None:
    c = await started(3, forward_proposals=True)
    try:
        leader = await c.leader()
        follower = others(c, leader)[0]
        with pytest.raises(UnknownMember):
            await follower.remove_member("nobody", timeout=5)
        # Three voters added that never start: C_old,new commits (the old voters), but leaving it
        # needs 4 of the 6 new voters. The call ends at its deadline, its bookkeeping freed.
        new = [AddVoter(f"x{i}", f"mem://x{i}") for i in range(3)]
        with pytest.raises(RequestTimeout):
            await leader.change_membership(new, timeout=0.5)
        assert leader.membership().is_joint() and pending(leader) == 0
        for node in (leader, follower):
            with pytest.raises(ConfChangeInProgress) as err:
                await node.demote(others(c, leader)[1].id, timeout=5)
            assert err.value.pending_index > 0
    finally:
        await c.stop()


# -- removing the leader: transfer first ------------------------------------------------------------


SLOW_ELECTIONS = dict(election_tick=100)  # 1 s election timeout: a gap would show


async def test_removing_the_leader_moves_leadership_first_with_no_election_gap() -> None:
    c = await started(3, **SLOW_ELECTIONS)
    try:
        leader = await c.leader(timeout=10)
        term = leader.status()["term"]
        # Calls in flight on the old leader when it is removed: each must end, none hang.
        inflight = [asyncio.ensure_future(leader.propose(put(f"p{i}", "x"), timeout=5)) for i in range(20)]
        began = time.monotonic()
        await leader.remove_member(leader.id, timeout=5)
        conf = leader.membership()
        new = await c.leader(timeout=1)
        index = await asyncio.wait_for(new.propose(put("right-after", "1")), 1.0)
        elapsed = time.monotonic() - began
        assert elapsed < c.cfg.election_timeout(), f"{elapsed:.2f}s: an election timeout was waited"
        assert index is None and leader.id not in conf.members() and new is not leader
        assert new.status()["term"] == term + 1, "one forced election (the transfer), no failed ones"
        results = await asyncio.wait_for(asyncio.gather(*inflight, return_exceptions=True), 5)
        for r in results:
            assert r is None or isinstance(r, (LeadershipLost, ProposalDropped)), r
        assert pending(leader) == 0
        assert not leader.is_leader
    finally:
        await c.stop()


async def test_demoting_the_leader_moves_leadership_first() -> None:
    c = await started(3, **SLOW_ELECTIONS)
    try:
        leader = await c.leader(timeout=10)
        term = leader.status()["term"]
        began = time.monotonic()
        conf = await leader.demote(leader.id, timeout=5)
        assert time.monotonic() - began < c.cfg.election_timeout()
        assert leader.id in conf.learners and not leader.is_leader
        new = await c.leader(timeout=1)
        assert new.status()["term"] == term + 1
        await asyncio.wait_for(new.propose(put("k", "v")), 1.0)
    finally:
        await c.stop()


async def test_a_follower_removing_the_leader_gets_it_moved_first_and_retries_with_the_new_one() -> None:
    c = await started(3, forward_proposals=True, **SLOW_ELECTIONS)
    try:
        leader = await c.leader(timeout=10)
        term = leader.status()["term"]
        follower = others(c, leader)[0]
        began = time.monotonic()
        await follower.remove_member(leader.id, timeout=5)
        assert time.monotonic() - began < c.cfg.election_timeout()
        new = await c.leader(timeout=1)
        assert new is not leader and new.status()["term"] == term + 1
        assert leader.id not in new.membership().members()
        await asyncio.wait_for(new.propose(put("k", "v")), 1.0)
    finally:
        await c.stop()


async def test_replacing_the_leader_moves_leadership_first_then_swaps_atomically() -> None:
    c = await started(3, **SLOW_ELECTIONS)
    try:
        leader = await c.leader(timeout=10)
        await joining(c, "n4")
        conf = await leader.replace_member(leader.id, "n4", "mem://n4", timeout=5)
        assert conf.voters == (frozenset(c.ids) - {leader.id}) | {"n4"}
        new = await c.leader(timeout=1)
        assert new is not leader
        assert any(m.is_joint() for m in history(new)), "one joint change"
    finally:
        await c.stop()


async def test_a_change_right_after_an_election_waits_for_the_new_leaders_log_instead_of_failing() -> None:
    # A new leader refuses changes until it applied its whole log (any entry of an earlier
    # term might be a change); with no change among them the call waits instead of failing.
    c = await started(3)
    try:
        leader = await c.leader()
        target = others(c, leader)[0]
        held = [(n, n._transport.send) for n in c.nodes.values()]
        for n in c.nodes.values():
            drop(n, MessageType.APPEND_RESP)  # nothing commits from here on
        write = asyncio.ensure_future(leader.propose(put("x", "1"), timeout=5))
        await asyncio.sleep(0.05)  # replicated everywhere, committed nowhere
        assert target._core is not None
        target._core.raft.campaign(force=True)  # an election: the entry is of an earlier term
        target._wake.set()
        async with asyncio.timeout(5):
            while not target.is_leader:
                await asyncio.sleep(0.005)
        raft = target._core.raft
        assert raft.pending_conf_index > raft.log.committed
        call = asyncio.ensure_future(target.demote(leader.id, timeout=5))
        await asyncio.sleep(0.1)
        assert not call.done(), "it waits instead of failing with ConfChangeInProgress"
        for n, send in held:
            n._transport.send = send
        conf = await asyncio.wait_for(call, 5)
        assert leader.id in conf.learners
        await asyncio.gather(write, return_exceptions=True)
    finally:
        await c.stop()


# -- bad input: each its own error ------------------------------------------------------------------


async def test_every_bad_input_gets_its_specific_error() -> None:
    c = await started(3)
    try:
        leader = await c.leader()
        a, b = (n.id for n in others(c, leader))
        with pytest.raises(ConfChangeError, match="no changes"):
            await leader.change_membership([])
        with pytest.raises(UnknownMember) as unknown:
            await leader.remove_member("nobody")
        assert unknown.value.node_id == "nobody"
        with pytest.raises(UnknownMember):
            await leader.promote("nobody")
        with pytest.raises(MemberExists) as exists:
            await leader.change_membership(AddVoter(a, "mem://x"))
        assert exists.value.role == "voter"
        with pytest.raises(MemberRoleError) as role:
            await leader.promote(a)
        assert (role.value.role, role.value.needed) == ("voter", "learner")
        with pytest.raises(ConfChangeError, match="twice"):
            await leader.change_membership([Demote(a), Remove(a)])
        with pytest.raises(ConfChangeError, match="address"):
            await leader.change_membership(AddVoter("n9", ""))
        with pytest.raises(ConfChangeError, match="itself"):
            await leader.replace_member(a, a, "mem://a")
        with pytest.raises(NoVotersLeft):
            await leader.change_membership([Remove(leader.id), Remove(a), Remove(b)])
        with pytest.raises(NoVotersLeft):
            await leader.change_membership([Demote(leader.id), Demote(a), Demote(b)])
        with pytest.raises(TypeError):
            await leader.change_membership(["n4"])  # type: ignore[list-item]
        with pytest.raises(ValueError):
            await leader.demote(a, timeout=-1)
        await leader.demote(a, timeout=5)
        with pytest.raises(MemberExists) as exists:
            await leader.add_learner(a, "mem://a")
        assert exists.value.role == "learner"
        with pytest.raises(MemberRoleError):
            await leader.demote(a)
        assert leader.membership().learners == {a}, "no bad call changed anything"
        assert pending(leader) == 0
    finally:
        await c.stop()
    with pytest.raises(NodeStopped):
        await leader.demote(a)


async def test_a_second_change_while_one_is_in_flight_is_refused_with_its_index() -> None:
    c = await started(3, check_quorum=False)
    try:
        leader = await c.leader()
        await joining(c, "n4")
        for n in others(c, leader):
            if n.id != "n4":
                c.net.isolate(n.id)  # the first change cannot commit
        first = asyncio.ensure_future(leader.add_learner("n4", "mem://n4", timeout=30))
        await asyncio.sleep(0.05)
        with pytest.raises(ConfChangeInProgress) as err:
            await leader.demote(others(c, leader)[0].id, timeout=5)
        assert err.value.pending_index > 0
        c.net.heal()
        await asyncio.wait_for(first, 10)
        assert "n4" in leader.membership().learners
    finally:
        await c.stop()


async def test_removing_the_only_voter_is_refused() -> None:
    c = await started(1)
    try:
        leader = await c.leader()
        with pytest.raises(NoVotersLeft):
            await leader.remove_member(leader.id)
    finally:
        await c.stop()


# -- a member's address moves (set_peer_address) ----------------------------------------------------


async def test_set_peer_address_makes_the_transport_dial_the_moved_member_and_snapshots_keep_it(
    tmp_path: Path,
) -> None:
    """A member restarted on another port is unreachable until every node records its new address
    (``set_peer_address``); then the leader's transport dials it there and it catches up. The new
    address is in ``status()`` and in the snapshots taken after, so a restarted node has it too."""
    from test_node import KV

    from raftlib import NodeConfig
    from raftlib.testing.proccluster import free_ports
    from raftlib.transport.tcp import TcpTransport

    ports = free_ports(4)
    members = {f"n{i}": f"127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}
    moved = f"127.0.0.1:{ports[3]}"
    cfg = NodeConfig(tick_interval=0.02, election_tick=10, heartbeat_tick=1, cluster_id="moves")
    sms: dict[str, KV] = {}
    nodes: dict[str, RaftNode] = {}

    async def start(nid: str, listen: str) -> RaftNode:
        sms[nid] = KV()
        peers = {k: v for k, v in members.items() if k != nid}
        transport = TcpTransport(nid, listen, peers, cluster_id="moves")
        node = RaftNode(nid, members, sms[nid], config=cfg, transport=transport, data_dir=tmp_path / nid)
        await node.start()
        nodes[nid] = node
        return node

    async def eventually(check: Any, seconds: float = 5.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return True
            await asyncio.sleep(0.02)
        return False

    try:
        for nid, address in members.items():
            await start(nid, address)
        assert await eventually(lambda: any(n.is_leader for n in nodes.values()))
        if nodes["n3"].is_leader:
            await nodes["n3"].transfer_leadership("n1", timeout=5)
        assert await eventually(lambda: nodes["n1"].is_leader or nodes["n2"].is_leader)
        leader = nodes["n1"] if nodes["n1"].is_leader else nodes["n2"]
        other = "n2" if leader.id == "n1" else "n1"
        await leader.propose(put("before", "1"), timeout=5)
        assert await eventually(lambda: sms["n3"].data.get("before") == "1")
        await nodes["n3"].stop()
        await start("n3", moved)  # same log, new port; the others still dial the old one
        await leader.propose(put("while-unknown", "1"), timeout=5)
        assert not await eventually(lambda: "while-unknown" in sms["n3"].data, 0.6)

        with pytest.raises(UnknownMember):
            leader.set_peer_address("nobody", moved)
        with pytest.raises(ValueError):
            leader.set_peer_address("n3", "no port here")  # the TCP transport refuses it
        assert leader.address_of("n3") == members["n3"], "a refused address changes nothing"

        for node in nodes.values():
            node.set_peer_address("n3", moved)
        assert leader.status()["members"]["n3"] == moved
        assert await eventually(lambda: sms["n3"].data.get("while-unknown") == "1")
        await leader.propose(put("after", "1"), timeout=5)
        assert await eventually(lambda: sms["n3"].data.get("after") == "1")

        await nodes[other].snapshot()
        await nodes[other].stop()
        restarted = await start(other, members[other])  # started from the bootstrap map: old address
        assert restarted.address_of("n3") == moved, "the snapshot carries the new address"
    finally:
        for node in nodes.values():
            await node.stop()

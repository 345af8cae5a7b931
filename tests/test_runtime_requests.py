"""Every request ends: deadlines, step-down, lost forwards, leader change mid-forward, cancellation.

Scenarios over three in-process RaftNodes (memory transport and storage). Each names
the rule of ``raftlib/runtime/requests.py`` it checks.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from test_node import Cluster, put

import raftlib
from raftlib import LeadershipLost, NodeConfig, ProposalDropped, RaftNode, RequestTimeout
from raftlib.core import Entry, MessageType
from raftlib.core.messages import ProposalResult
from raftlib.runtime.requests import Requests


def pending(node: RaftNode) -> int:
    """The node's bookkeeping of callers: must drop to zero once every call ended."""
    return len(node._requests)


def drop(node: RaftNode, *types: MessageType) -> list[Any]:
    """Make ``node``'s transport lose every outgoing message of ``types``; returns the lost ones."""
    transport = node._transport
    real_send = transport.send
    lost: list[Any] = []

    def send(messages: Any) -> None:
        keep = []
        for m in messages:
            (lost if m.type in types else keep).append(m)
        real_send(keep)

    transport.send = send
    return lost


async def started(n: int = 3, **cfg: Any) -> Cluster:
    c = Cluster(n, **cfg)
    await c.start()
    return c


# -- deadlines ---------------------------------------------------------------------------------


async def test_a_proposal_that_cannot_commit_ends_at_the_configured_default_deadline() -> None:
    # A leader cut off from both followers, check-quorum off so it keeps leading: without a
    # deadline the call would wait until the partition heals.
    c = await started(check_quorum=False, request_timeout=0.3)
    try:
        leader = await c.leader()
        c.net.isolate(leader.id)
        began = time.monotonic()
        with pytest.raises(RequestTimeout) as err:
            await leader.propose(put("a", "1"))  # no timeout given: NodeConfig.request_timeout
        assert 0.25 <= time.monotonic() - began < 2.0
        assert err.value.operation == "propose" and err.value.index > 0
        assert isinstance(err.value, TimeoutError)
        assert pending(leader) == 0, "a timed-out proposal leaves no bookkeeping behind"
    finally:
        await c.stop()


async def test_an_explicit_timeout_overrides_the_default_and_read_barrier_has_one_too() -> None:
    c = await started(check_quorum=False, request_timeout=30.0)
    try:
        leader = await c.leader()
        c.net.isolate(leader.id)
        with pytest.raises(RequestTimeout):
            await leader.propose(put("a", "1"), timeout=0.1)
        with pytest.raises(RequestTimeout) as err:
            await leader.read_barrier(timeout=0.1)
        assert err.value.operation == "read_barrier"
        with pytest.raises(RequestTimeout):
            await leader.wait_applied(10_000, timeout=0.05)
        assert pending(leader) == 0
    finally:
        await c.stop()


def test_the_default_deadline_is_five_seconds_plus_two_election_timeouts() -> None:
    assert NodeConfig().default_request_timeout() == pytest.approx(7.0)  # etcd: 5 s + 2 x 1 s
    assert NodeConfig(tick_interval=0.01, election_tick=20).default_request_timeout() == pytest.approx(5.4)
    assert NodeConfig(request_timeout=math.inf).default_request_timeout() == math.inf


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_non_positive_request_timeout_is_refused(bad: float) -> None:
    with pytest.raises(raftlib.ConfigError, match="request_timeout"):
        RaftNode("n1", {"n1": "mem://n1"}, object(), config=NodeConfig(request_timeout=bad))  # type: ignore[arg-type]


def test_an_infinite_forward_timeout_is_refused() -> None:
    with pytest.raises(raftlib.ConfigError, match="forward_timeout"):
        RaftNode("n1", {"n1": "mem://n1"}, object(), config=NodeConfig(forward_timeout=math.inf))  # type: ignore[arg-type]


async def test_a_negative_or_nan_timeout_argument_is_a_clear_error() -> None:
    c = await started(1)
    try:
        leader = await c.leader()
        for bad in (-1.0, float("nan")):
            with pytest.raises(ValueError, match="timeout"):
                await leader.propose(put("a", "1"), timeout=bad)
        # math.inf: no deadline, asked for explicitly; the proposal still commits.
        assert await leader.propose(put("a", "1"), timeout=math.inf) is None
    finally:
        await c.stop()


# -- step-down ----------------------------------------------------------------------------------


async def test_check_quorum_step_down_fails_held_proposals_at_once_as_may_still_commit() -> None:
    # CheckQuorum: the isolated leader steps down after an election timeout (10 ticks of 10 ms);
    # its caller learns at once, long before the 30 s deadline, that the entry may still commit.
    c = await started(request_timeout=30.0)
    try:
        leader = await c.leader()
        c.net.isolate(leader.id)
        began = time.monotonic()
        with pytest.raises(LeadershipLost) as err:
            await leader.propose(put("a", "1"))
        assert time.monotonic() - began < 5.0
        assert err.value.may_still_commit is True and err.value.index > 0
        assert isinstance(err.value, ProposalDropped) and err.value.reason == "leadership_lost"
        assert pending(leader) == 0
        # The others elect a leader without the entry; once healed it is overwritten (§5.3).
        # Heal only after they have: healed first, the old leader's longer log could win
        # the election (§5.4.1) and commit the entry instead.
        new = await c.leader(among=[n for n in c.nodes.values() if n is not leader])
        c.net.heal()
        await new.propose(put("b", "2"))
        await leader.wait_applied(new.status()["commit"], timeout=5)
        assert c.sms[leader.id].data == {"b": "2"}
    finally:
        await c.stop()


async def test_read_barrier_at_a_leader_that_steps_down_fails_at_once_and_is_safe_to_retry() -> None:
    c = await started(request_timeout=30.0)
    try:
        leader = await c.leader()
        c.net.isolate(leader.id)
        began = time.monotonic()
        with pytest.raises(LeadershipLost) as err:
            await leader.read_barrier()
        assert time.monotonic() - began < 5.0
        assert err.value.may_still_commit is False  # a read changes nothing: retry
        assert pending(leader) == 0
    finally:
        await c.stop()


async def test_a_higher_term_makes_the_old_leader_fail_its_uncommitted_proposals_only() -> None:
    # Check-quorum off: the isolated leader keeps leading until it hears of a higher term.
    c = await started(check_quorum=False, request_timeout=30.0)
    try:
        leader = await c.leader()
        await leader.propose(put("before", "1"))
        c.net.isolate(leader.id)
        call = asyncio.ensure_future(leader.propose(put("during", "2")))
        new = await c.leader(among=[n for n in c.nodes.values() if n is not leader])
        assert not call.done(), "isolated, without check-quorum, the old leader still holds it"
        c.net.heal()
        await new.propose(put("after", "3"))  # its appends carry the higher term
        with pytest.raises(LeadershipLost) as err:
            await asyncio.wait_for(call, 5)
        assert err.value.may_still_commit is True
        assert c.sms[leader.id].data.get("before") == "1"
        assert pending(leader) == 0
    finally:
        await c.stop()


# -- forwarded proposals -----------------------------------------------------------------------------


async def test_a_lost_forward_ends_the_call_and_frees_its_bookkeeping() -> None:
    c = await started(forward_proposals=True, forward_timeout=0.2, request_timeout=30.0)
    try:
        leader = await c.leader()
        follower = next(n for n in c.nodes.values() if n is not leader)
        lost = drop(follower, MessageType.PROPOSE)
        began = time.monotonic()
        with pytest.raises(ProposalDropped) as err:
            await follower.propose(put("a", "1"))
        assert 0.15 <= time.monotonic() - began < 3.0
        assert err.value.reason == "forward_lost" and err.value.may_still_commit is True
        assert lost and pending(follower) == 0
    finally:
        await c.stop()


async def test_a_lost_answer_to_a_forward_ends_the_call_though_the_entry_commits() -> None:
    # The leader placed the entry; only its answer was lost. The caller cannot know: "may still
    # commit" is the truth, and here it did.
    c = await started(forward_proposals=True, forward_timeout=0.2, request_timeout=30.0)
    try:
        leader = await c.leader()
        follower = next(n for n in c.nodes.values() if n is not leader)
        drop(leader, MessageType.PROPOSE_RESP)
        with pytest.raises(ProposalDropped) as err:
            await follower.propose(put("a", "1"))
        assert err.value.may_still_commit is True
        await follower.read_barrier(timeout=5)
        assert c.sms[follower.id].data == {"a": "1"}
        assert pending(follower) == 0
    finally:
        await c.stop()


async def test_leader_change_mid_forward_fails_the_forwarded_call_at_once() -> None:
    c = await started(forward_proposals=True, forward_timeout=30.0, request_timeout=30.0)
    try:
        leader = await c.leader()
        follower, third = [n for n in c.nodes.values() if n is not leader]
        drop(leader, MessageType.PROPOSE_RESP)  # the forward is placed, its answer never comes
        call = asyncio.ensure_future(follower.propose(put("a", "1")))
        await asyncio.sleep(0.05)
        assert not call.done()
        began = time.monotonic()
        await leader.transfer_leadership(third.id, timeout=5)
        with pytest.raises(LeadershipLost) as err:
            await asyncio.wait_for(call, 5)
        assert time.monotonic() - began < 5.0
        assert err.value.may_still_commit is True
        assert pending(follower) == 0
    finally:
        await c.stop()


async def test_a_follower_that_loses_its_leader_fails_its_acked_forwards() -> None:
    # The forward was placed at index i (acked) but cannot commit; then the follower stops
    # hearing from the leader and becomes a (pre-)candidate: the call ends there.
    c = await started(forward_proposals=True, request_timeout=30.0, check_quorum=False)
    try:
        leader = await c.leader()
        follower, third = [n for n in c.nodes.values() if n is not leader]
        c.net.partition(leader.id, third.id)
        drop(follower, MessageType.APPEND_RESP)  # the leader never gets a quorum for new entries
        call = asyncio.ensure_future(follower.propose(put("a", "1")))
        await asyncio.sleep(0.1)
        assert not call.done()
        c.net.partition(leader.id, follower.id)
        with pytest.raises(LeadershipLost) as err:
            await asyncio.wait_for(call, 5)
        assert err.value.may_still_commit is True and err.value.index > 0
        assert pending(follower) == 0
    finally:
        await c.stop()


# -- cancellation -------------------------------------------------------------------------------------


async def test_a_cancelled_propose_may_still_be_applied_and_leaves_no_bookkeeping() -> None:
    c = await started()
    try:
        leader = await c.leader()
        call = asyncio.ensure_future(leader.propose(put("a", "1")))
        await asyncio.sleep(0)  # the entry is in the leader's log now
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert pending(leader) == 0
        # Documented: cancelling stops the wait, not the replication.
        await leader.read_barrier(timeout=5)
        assert c.sms[leader.id].data == {"a": "1"}
    finally:
        await c.stop()


async def test_a_cancelled_forwarded_propose_leaves_no_bookkeeping() -> None:
    c = await started(forward_proposals=True)
    try:
        leader = await c.leader()
        follower = next(n for n in c.nodes.values() if n is not leader)
        drop(follower, MessageType.PROPOSE)
        call = asyncio.ensure_future(follower.propose(put("a", "1")))
        await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert pending(follower) == 0
    finally:
        await c.stop()


async def test_stopping_the_node_ends_every_call_with_node_stopped() -> None:
    c = await started(check_quorum=False, request_timeout=30.0)
    try:
        leader = await c.leader()
        c.net.isolate(leader.id)
        calls = [asyncio.ensure_future(leader.propose(put(f"k{i}", "v"))) for i in range(5)]
        calls.append(asyncio.ensure_future(leader.read_barrier()))
        await asyncio.sleep(0.05)
        await leader.stop()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2)
        assert all(isinstance(r, raftlib.NodeStopped) for r in results)
        assert pending(leader) == 0
    finally:
        await c.stop()


# -- the table's rules, unit by unit ------------------------------------------------------------------


async def test_leader_lost_keeps_committed_entries_waiting_for_their_apply() -> None:
    loop = asyncio.get_running_loop()
    r = Requests(forward_timeout=1.0)
    committed, uncommitted = loop.create_future(), loop.create_future()
    r.add_proposal(4, 2, committed)
    r.add_proposal(6, 2, uncommitted)
    assert r.leader_lost(commit_index=5) == 1
    assert isinstance(uncommitted.exception(), LeadershipLost)
    assert not committed.done(), "index 4 is committed: it will be applied here whoever leads"
    assert r.applied(Entry(4, 2, b"x"), "result") is True
    assert committed.result() == "result"
    assert len(r) == 0


async def test_an_entry_overwritten_by_another_term_certainly_was_not_applied() -> None:
    loop = asyncio.get_running_loop()
    r = Requests(forward_timeout=1.0)
    fut = loop.create_future()
    r.add_proposal(7, 2, fut)
    assert r.applied(Entry(7, 3, b"other"), None) is False
    exc = fut.exception()
    assert isinstance(exc, LeadershipLost) and exc.may_still_commit is False


async def test_forwards_expire_in_deadline_order_and_answers_after_expiry_are_ignored() -> None:
    loop = asyncio.get_running_loop()
    r = Requests(forward_timeout=1.0)
    a, b = loop.create_future(), loop.create_future()
    r.add_forwarded(b"a", a, now=0.0)
    r.add_forwarded(b"b", b, now=0.5)
    assert r.expire_forwards(now=1.2) == 1
    assert isinstance(a.exception(), ProposalDropped) and not b.done()
    r.forward_answered(ProposalResult(b"a", 9, 2), applied=0, leader_address=None)
    assert 9 not in r.by_index, "an expired forward's late answer is dropped"
    r.forward_answered(ProposalResult(b"b", 10, 2), applied=0, leader_address=None)
    assert r.by_index[10][1] is b and len(r.forwarded) == 0


async def test_default_deadlines_are_swept_in_order_and_explicit_timers_are_left_alone() -> None:
    loop = asyncio.get_running_loop()
    r = Requests(forward_timeout=1.0)
    early, timer, late = loop.create_future(), loop.create_future(), loop.create_future()
    r.add_proposal(1, 1, early, deadline=10.0)
    r.add_proposal(2, 1, timer)  # an explicit timeout: the caller's own timer ends it
    r.add_proposal(3, 1, late, deadline=12.0)
    assert r.expire_deadlines(now=11.0, timeout=7.0) == 1
    exc = early.exception()
    assert isinstance(exc, RequestTimeout) and exc.index == 1 and exc.timeout == 7.0
    assert not timer.done() and not late.done()
    assert sorted(r.by_index) == [2, 3]
    assert r.expire_deadlines(now=12.5, timeout=7.0) == 1 and isinstance(late.exception(), RequestTimeout)
    assert list(r.by_index) == [2]

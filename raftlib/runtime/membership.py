"""Membership changes from RaftNode: several changes in one step, from any member, leader moved first.

Owns the logic behind ``RaftNode.change_membership`` and its conveniences (``replace_member``,
``demote``, ``add_member``, ``add_learner``, ``promote``, ``remove_member``):

* the typed change spec (:class:`AddVoter`, :class:`AddLearner`, :class:`Promote`,
  :class:`Demote`, :class:`Remove`, or a raw core :class:`~raftlib.core.Change`) and its
  validation against the configuration in force, each bad input with its own error;
* one ConfChange per call: the core applies it directly when at most one voter changes and
  through joint consensus otherwise (``raftlib/core/confchange.py``), leaving the joint
  configuration by itself;
* on a follower (``forward_proposals`` on), forwarding to the leader, ending exactly as a
  forwarded proposal does (``raftlib/runtime/requests.py``);
* *transfer first*: a change that removes or demotes the leader is not proposed by it; the
  leader hands leadership to the most up-to-date remaining voter, and the change is then
  forwarded to that new leader.

Invariants: every call ends (its deadline bounds every wait); a call puts its change in the
log at most once (it is retried only after a refusal proving it never entered the log:
``transfer_pending``); a call returns only once the *final* configuration is in force on this
node (its change applied, a joint configuration left, members added with ``ADD_MEMBER``
promoted).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raftlib._accel import ENTRY_CONF_CHANGE
from raftlib.core import Change, ChangeKind, ConfChange, Membership, RawNode, Role
from raftlib.core.confchange import apply_change
from raftlib.errors import ConfChangeError, ConfChangeInProgress, NotLeader, ProposalDropped, RequestTimeout
from raftlib.runtime.requests import await_request

if TYPE_CHECKING:
    from raftlib.runtime.node import RaftNode


# -- the change spec ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddVoter:
    """Add a new member as a voter at once (it counts in quorums from the change on)."""

    node_id: str
    address: str


@dataclass(frozen=True, slots=True)
class AddLearner:
    """Add a new non-voting member (replicated to, never votes)."""

    node_id: str
    address: str


@dataclass(frozen=True, slots=True)
class Promote:
    """Make a learner a voter."""

    node_id: str


@dataclass(frozen=True, slots=True)
class Demote:
    """Make a voter a learner (it keeps receiving the log)."""

    node_id: str


@dataclass(frozen=True, slots=True)
class Remove:
    """Remove a voter or a learner."""

    node_id: str


MemberChange = AddVoter | AddLearner | Promote | Demote | Remove | Change
"""One member's change: a typed spec, or a core :class:`~raftlib.core.Change`."""


# -- errors ---------------------------------------------------------------------------------------


class UnknownMember(ConfChangeError):
    """The change names a node that is not a member (of the configuration this node knows)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"{node_id!r} is not a member")


class MemberExists(ConfChangeError):
    """The change adds a node that is already a member; ``role`` is ``"voter"`` or ``"learner"``."""

    def __init__(self, node_id: str, role: str) -> None:
        self.node_id = node_id
        self.role = role
        hint = " (promote it instead)" if role == "learner" else ""
        super().__init__(f"{node_id!r} is already a {role}{hint}")


class MemberRoleError(ConfChangeError):
    """Promote of a node that is not a learner, or demote of one that is not a voter."""

    def __init__(self, node_id: str, role: str, needed: str) -> None:
        self.node_id = node_id
        self.role = role
        self.needed = needed
        super().__init__(f"{node_id!r} is a {role}, not a {needed}")


class NoVotersLeft(ConfChangeError):
    """The change would remove (or demote) every voter: a group needs at least one."""

    def __init__(self) -> None:
        super().__init__("the change would leave no voter (a group needs at least one)")


def to_change(spec: MemberChange) -> Change:
    """The core change a spec stands for."""
    if isinstance(spec, Change):
        return spec
    if isinstance(spec, (AddVoter, AddLearner)):
        if not isinstance(spec.address, str) or not spec.address:
            raise ConfChangeError(f"adding {spec.node_id!r} needs its address, got {spec.address!r}")
        kind = ChangeKind.ADD_VOTER if isinstance(spec, AddVoter) else ChangeKind.ADD_LEARNER
        return Change(kind, spec.node_id, spec.address.encode())
    if isinstance(spec, Promote):
        return Change(ChangeKind.ADD_VOTER, spec.node_id)
    if isinstance(spec, Demote):
        return Change(ChangeKind.ADD_LEARNER, spec.node_id)
    if isinstance(spec, Remove):
        return Change(ChangeKind.REMOVE, spec.node_id)
    raise TypeError(f"not a membership change: {spec!r} (use AddVoter, AddLearner, Promote, Demote, Remove)")


def _role(m: Membership, node_id: str) -> str | None:
    if node_id in m.voters:
        return "voter"
    if node_id in m.learners:
        return "learner"
    return None


def build(specs: Iterable[MemberChange] | MemberChange) -> tuple[tuple[MemberChange, ...], ConfChange]:
    """The specs as a tuple and the one ConfChange they make; rejects what needs no configuration."""
    if isinstance(specs, (AddVoter, AddLearner, Promote, Demote, Remove, Change)):
        specs = (specs,)
    items = tuple(specs)
    if not items:
        raise ConfChangeError("no changes given")
    changes = tuple(to_change(s) for s in items)
    seen: set[str] = set()
    for ch in changes:
        if not isinstance(ch.node_id, str) or not ch.node_id:
            raise ConfChangeError(f"a change needs a non-empty node id, got {ch.node_id!r}")
        if ch.node_id in seen:
            raise ConfChangeError(f"node {ch.node_id!r} appears twice in one change")
        seen.add(ch.node_id)
    return items, ConfChange(changes)


def validate(items: tuple[MemberChange, ...], cc: ConfChange, m: Membership) -> Membership:
    """Check the change against configuration ``m``; returns the configuration it produces."""
    for spec in items:
        nid = spec.node_id
        role = _role(m, nid)
        if isinstance(spec, (AddVoter, AddLearner)):
            if role is not None:
                raise MemberExists(nid, role)
        elif isinstance(spec, Promote):
            if role is None:
                raise UnknownMember(nid)
            if role != "learner":
                raise MemberRoleError(nid, role, "learner")
        elif isinstance(spec, Demote):
            if role is None:
                raise UnknownMember(nid)
            if role != "voter":
                raise MemberRoleError(nid, role, "voter")
        elif role is None and (isinstance(spec, Remove) or spec.kind is ChangeKind.REMOVE):
            raise UnknownMember(nid)
    voters = set(m.voters)
    for ch in cc.changes:
        if ch.kind is ChangeKind.ADD_VOTER:
            voters.add(ch.node_id)
        else:
            voters.discard(ch.node_id)
    if not voters:
        raise NoVotersLeft()
    return apply_change(m, cc)  # the core's own rules (ConfChangeError)


# -- the call -------------------------------------------------------------------------------------


def _in_flight(core: RawNode) -> int:
    """ConfChangeInProgress when a change is in flight (as far as this node can tell).

    Returns the index this leader must apply before it accepts a change when that is no
    change in flight: a committed change only waiting for its apply, or a new leader's
    earlier entries holding no change (it refuses changes until it applied them); the call
    waits for it rather than fail. 0 when nothing is pending.
    """
    raft = core.raft
    if core.membership.is_joint():
        raise ConfChangeInProgress(raft.conf_history[-1][0])
    pending, applied = raft.pending_conf_index, raft.log.applied
    if core.role is Role.LEADER and pending > applied:
        if pending <= raft.log.committed:
            return pending
        # A new leader marks its whole log as pending; only a real change entry is in flight.
        if any(e.type == ENTRY_CONF_CHANGE for e in core.entries(applied + 1, pending + 1)):
            raise ConfChangeInProgress(pending)
        return pending
    return 0


def _refusal(exc: ProposalDropped) -> BaseException | None:
    """The error a leader's refusal of a forwarded change stands for (None: retry)."""
    reason, _, detail = exc.reason.partition(":")
    if reason == "transfer_pending":
        return None
    if reason == "conf_change_in_progress":
        return ConfChangeInProgress(int(detail) if detail.isdigit() else 0)
    if reason == "conf_change_invalid":
        return ConfChangeError(detail or "refused by the leader")
    return exc


class _Deadline:
    def __init__(self, node: RaftNode, operation: str, limit: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.operation = operation
        self.limit = limit
        self.at = None if limit is None else self.loop.time() + limit
        self.tick = node.config.tick_interval

    def left(self) -> float | None:
        """Seconds left (None: no deadline); RequestTimeout once it passed."""
        if self.at is None:
            return None
        left = self.at - self.loop.time()
        if left <= 0:
            raise RequestTimeout(self.operation, self.limit or 0.0)
        return left

    async def until(
        self, node: RaftNode, done: Callable[[RawNode], bool], at_most: float | None = None
    ) -> None:
        """Poll ``done`` once a tick until it holds (or ``at_most`` seconds passed); RequestTimeout at
        the deadline."""
        give_up = None if at_most is None else self.loop.time() + at_most
        while not done(node._check_running()):
            left = self.left()
            if give_up is not None and self.loop.time() >= give_up:
                return
            await asyncio.sleep(self.tick if left is None else min(self.tick, left))


async def change_membership(
    node: RaftNode,
    changes: Iterable[MemberChange] | MemberChange,
    timeout: float | None,
    operation: str = "change_membership",
) -> Membership:
    """See :meth:`RaftNode.change_membership`."""
    items, cc = build(changes)
    node._check_running()
    if node.quiesced:
        node._activity()  # a RaftHost group: resume ticking it
    deadline = _Deadline(node, operation, node._limit(timeout))
    handed_over = False  # this call moved leadership away: forward even without forward_proposals
    while True:
        core = node._check_running()
        committed = _in_flight(core)
        if committed:
            await deadline.until(node, functools.partial(_applied_here, committed))
            continue
        if core.leader is None:
            left = deadline.left()
            try:
                wait = node._leader_wait()
                await node.wait_leader(wait if left is None else min(left, wait))
            except NotLeader:
                deadline.left()
                raise
            continue
        if node._leader != core.leader:
            # The driver has not taken in the change of leader yet; when it does it ends the
            # requests of the previous one: register ours only after that.
            await asyncio.sleep(node.config.tick_interval / 4)
            deadline.left()
            continue
        if core.role is Role.LEADER:
            validate(items, cc, core.membership)
            target = core.handover_target(cc)
            if target is not None:
                # Transfer first: the leader leaves its role before the change removes it.
                core.transfer_leadership(target)
                node._wake.set()
                handed_over = True
                await deadline.until(node, _transfer_over)
                continue
            try:
                index, term = core.propose_conf_change(cc)
            except ProposalDropped as exc:
                if exc.reason != "transfer_pending":
                    raise
                await deadline.until(node, _transfer_over)
                continue
            fut: asyncio.Future[Any] = deadline.loop.create_future()
            node._requests.add_proposal(index, term, fut)
            node._wake.set()
            await _wait(node, fut, deadline, index, None)
            break
        if not (node.config.forward_proposals or handed_over):
            raise node._not_leader()
        # A follower's view of the configuration may lag: catch up with the leader's commit first.
        left = deadline.left()
        read_index = await node.read_barrier(math.inf if left is None else left)
        core = node._check_running()
        if core.role is Role.LEADER or core.leader is None or core.membership.is_joint():
            continue
        validate(items, cc, core.membership)
        leader = core.leader
        ctx = node._new_context()
        core.propose_conf_change_with_context(cc, ctx, forward=True)
        fut = deadline.loop.create_future()
        node._requests.add_forwarded(ctx, fut, deadline.loop.time())
        node._wake.set()
        try:
            await _wait(node, fut, deadline, 0, ctx)
        except ProposalDropped as exc:
            err = _refusal(exc)
            if err is exc:
                raise
            if isinstance(err, ConfChangeInProgress) and 0 < err.pending_index <= read_index:
                # Committed (at or below the read index) and only not applied on the leader yet.
                await asyncio.sleep(node.config.tick_interval)
                continue
            if err is not None:
                raise err from exc
            # The leader is moving (the change removes it, or a transfer was under way): ask the next one.
            moved = functools.partial(_leader_moved, leader)
            await deadline.until(node, moved, 2 * node.config.election_timeout())
            continue
        break
    await deadline.until(node, lambda c: _final(c.membership, cc))
    return node._check_running().membership


def _applied_here(index: int, core: RawNode) -> bool:
    """The leader applied ``index`` (or leads no more: the loop starts over)."""
    return core.applied_index >= index or core.role is not Role.LEADER


def _transfer_over(core: RawNode) -> bool:
    """This node no longer leads, or its transfer was abandoned (then it is retried)."""
    return core.role is not Role.LEADER or core.raft.lead_transferee is None


def _leader_moved(leader: str | None, core: RawNode) -> bool:
    return core.leader is not None and core.leader != leader


def _final(m: Membership, cc: ConfChange) -> bool:
    """The configuration is final: not joint, and every member added with ADD_MEMBER promoted."""
    if m.is_joint():
        return False
    return all(ch.node_id in m.voters for ch in cc.changes if ch.kind is ChangeKind.ADD_MEMBER)


async def _wait(
    node: RaftNode, fut: asyncio.Future[Any], deadline: _Deadline, index: int, ctx: bytes | None
) -> None:
    try:
        await await_request(fut, deadline.left(), deadline.operation, index)
    except BaseException:
        node._requests.forget_proposal(index, ctx, fut)
        raise


__all__ = [
    "AddLearner",
    "AddVoter",
    "Demote",
    "MemberChange",
    "MemberExists",
    "MemberRoleError",
    "NoVotersLeft",
    "Promote",
    "Remove",
    "UnknownMember",
    "change_membership",
]

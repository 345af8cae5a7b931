"""Batteries: replicated objects multiplexed in one Raft group, with exactly-once calls.

Register objects in a :class:`ReplicatedStateMachine` (the same on every member), give it to
your :class:`raftlib.RaftNode` as its state machine, connect, and call::

    group = ReplicatedStateMachine()
    config = group.add(ReplDict("config"))
    locks = group.add(Locks("locks"))
    async with RaftNode("n1", members, group, config=NodeConfig(forward_proposals=True)) as node:
        async with group.connect(node):
            await config.put("mode", "fast")
            async with locks.hold("job-42", owner="worker-1", ttl=10) as token:
                ...

Objects: :class:`ReplDict`, :class:`Counter`, :class:`ReplSet`, :class:`Queue`,
:class:`Locks` (owners, TTL leases, fencing tokens), :class:`Election` (run a coroutine on one
member); write your own with :class:`Replicated` and :func:`replicated`. See docs/recipes.md.
"""

from raftlib.recipes.collections import Counter, Queue, QueueEmpty, QueueFull, ReplDict, ReplSet
from raftlib.recipes.group import ReplicatedStateMachine
from raftlib.recipes.lock import (
    CampaignLost,
    Election,
    InvalidLease,
    LockHolder,
    LockLost,
    LockNotHeld,
    Locks,
    LockTimeout,
)
from raftlib.recipes.replicated import (
    CommandFailed,
    RecipeError,
    Replicated,
    ReplicatedCommand,
    UnknownCommand,
    replicated,
)
from raftlib.valuecodec import CodecError, CommandError, PayloadTooLarge, UnsupportedVersion

__all__ = [
    "CampaignLost",
    "CodecError",
    "CommandError",
    "CommandFailed",
    "Counter",
    "Election",
    "InvalidLease",
    "LockHolder",
    "LockLost",
    "LockNotHeld",
    "LockTimeout",
    "Locks",
    "PayloadTooLarge",
    "Queue",
    "QueueEmpty",
    "QueueFull",
    "RecipeError",
    "ReplDict",
    "ReplSet",
    "Replicated",
    "ReplicatedCommand",
    "ReplicatedStateMachine",
    "UnknownCommand",
    "UnsupportedVersion",
    "replicated",
]

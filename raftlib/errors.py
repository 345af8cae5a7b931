"""Exceptions raised by raftlib.

Every error a caller can act on has its own class and carries what the caller
needs to act: ``NotLeader`` names the leader it knows of, ``ProposalDropped``
says why the proposal was not accepted.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error raised by raftlib."""


class NotLeader(RaftError):
    """The operation needs the leader, and this node is not it.

    ``leader_id`` is the leader this node knows of (``None`` when it knows of
    none, for example during an election); ``leader_address`` is its address
    when the caller layer knows it (the sans-IO core never does).

    >>> err = NotLeader("n2")
    >>> err.leader_id
    'n2'
    """

    def __init__(self, leader_id: str | None, leader_address: str | None = None) -> None:
        self.leader_id = leader_id
        self.leader_address = leader_address
        if leader_id is None:
            msg = "not the leader, and no leader is known (an election may be in progress)"
        elif leader_address is None:
            msg = f"not the leader; the leader is {leader_id!r}"
        else:
            msg = f"not the leader; the leader is {leader_id!r} at {leader_address}"
        super().__init__(msg)


class ProposalDropped(RaftError):
    """A proposal was not accepted into the log, or was lost before committing.

    ``reason`` is a short machine-readable word (``"leadership_lost"``,
    ``"transfer_pending"``, ``"uncommitted_limit"``, ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"proposal dropped ({reason}){': ' + detail if detail else ''}")


class UncommittedLimitExceeded(ProposalDropped):
    """Back-pressure: the leader already holds more uncommitted bytes than allowed.

    Retry once earlier proposals have committed. ``limit`` is the configured
    bound (``Config.max_uncommitted_bytes``), ``pending`` the bytes already
    waiting.
    """

    def __init__(self, limit: int, pending: int) -> None:
        self.limit = limit
        self.pending = pending
        super().__init__(
            "uncommitted_limit",
            f"{pending} uncommitted bytes pending, limit is {limit}",
        )


class ConfChangeError(RaftError, ValueError):
    """A membership change is invalid (removing the last voter, an unknown member, ...)."""


class ConfChangeInProgress(RaftError):
    """Another membership change has not been applied yet; only one may be in flight.

    ``pending_index`` is the log index of the change still in flight.
    """

    def __init__(self, pending_index: int) -> None:
        self.pending_index = pending_index
        super().__init__(
            f"a configuration change (log index {pending_index}) is still in flight; "
            "retry once it has been applied"
        )


class LeadershipTransferError(RaftError):
    """A leadership transfer cannot be started (unknown target, target is a learner, ...)."""


class ConfigError(RaftError, ValueError):
    """A configuration value is invalid (a bad tick count, an empty cluster, ...)."""


class StorageCorrupted(RaftError):
    """Persisted state failed an integrity check; the node must not serve from it.

    ``path`` and ``offset`` locate the damage.
    """

    def __init__(self, path: str, offset: int, detail: str) -> None:
        self.path = path
        self.offset = offset
        self.detail = detail
        super().__init__(f"storage corrupted in {path} at offset {offset}: {detail}")


class StateMachineError(RaftError):
    """The state machine raised while applying an entry: the node stopped.

    A node whose state machine failed to apply a committed entry has diverged
    from its peers and must not serve; ``index`` is the entry that failed.
    """

    def __init__(self, index: int, cause: BaseException) -> None:
        self.index = index
        self.cause = cause
        super().__init__(f"state machine failed to apply entry {index}: {cause!r}")


class NodeStopped(RaftError):
    """The node is not running (not started yet, stopped, or failed); ``reason`` says which."""

    def __init__(self, reason: str = "stopped") -> None:
        self.reason = reason
        super().__init__(f"raft node is not running ({reason})")

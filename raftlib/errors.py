"""Exceptions raised by raftlib.

Every error a caller can act on has its own class and carries what the caller
needs to act: ``NotLeader`` names the leader it knows of, ``ProposalDropped``
says why the proposal was not accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raftlib.core.messages import Message


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
    ``"transfer_pending"``, ``"uncommitted_limit"``, ``"forward_lost"``, ...).

    ``may_still_commit`` tells whether the command can still take effect:

    * ``False``: it certainly never will (it never entered a log, or another
      leader's entry took its index). Retrying is safe.
    * ``True``: the outcome is unknown. The entry sits in some log and a later
      leader may commit and apply it (or already has). Retrying a command that
      is not idempotent may apply it twice: use client sessions, or read the
      state back first.
    """

    def __init__(self, reason: str, detail: str = "", *, may_still_commit: bool = False) -> None:
        self.reason = reason
        self.detail = detail
        self.may_still_commit = may_still_commit
        super().__init__(f"proposal dropped ({reason}){': ' + detail if detail else ''}")


class LeadershipLost(ProposalDropped):
    """The leader that held the request stopped leading before the request completed.

    hashicorp/raft's ``ErrLeadershipLost``: raised at once, for every proposal
    and read barrier in flight, when the leader steps down (check-quorum, a
    higher term, its removal, a leadership transfer), and on a follower for
    the proposals and reads it forwarded to a leader it no longer follows.

    ``may_still_commit`` (see :class:`ProposalDropped`) is ``True`` for a
    proposal that was appended to a log (it may be committed by the next
    leader) and ``False`` for a read barrier (reads change nothing: retry) or
    an entry that was certainly overwritten. ``index`` and ``term`` locate the
    entry when it was appended (0 otherwise).

    >>> err = LeadershipLost(True, index=7, term=2)
    >>> err.reason, err.may_still_commit
    ('leadership_lost', True)
    """

    def __init__(self, may_still_commit: bool, detail: str = "", *, index: int = 0, term: int = 0) -> None:
        self.index = index
        self.term = term
        if not detail:
            where = f"entry {index} of term {term}" if index else "the request"
            outcome = "may still be committed by the next leader" if may_still_commit else "was not applied"
            detail = f"{where} {outcome}"
        super().__init__("leadership_lost", detail, may_still_commit=may_still_commit)


class RequestTimeout(RaftError, TimeoutError):
    """A request did not complete within its deadline (``NodeConfig.request_timeout`` by default).

    The outcome of a timed-out proposal is unknown: its entry may still be
    committed and applied. ``operation`` is ``"propose"``, ``"read_barrier"``,
    ``"wait_applied"``, ``"conf_change"`` or ``"transfer_leadership"``;
    ``timeout`` the deadline in seconds; ``index`` the log index of the entry
    when it was known (0 otherwise). It is a :class:`TimeoutError`, so code
    catching that keeps working.
    """

    def __init__(self, operation: str, timeout: float, index: int = 0) -> None:
        self.operation = operation
        self.timeout = timeout
        self.index = index
        at = f" (log index {index}; it may still be applied)" if index else ""
        super().__init__(f"{operation} did not complete within {timeout:g} s{at}")


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


class CodecError(RaftError, ValueError):
    """A frame or message cannot be encoded or decoded (malformed, oversized, unknown version...).

    Raised by the wire codec (:mod:`raftlib.codec`, which re-exports it; the
    class lives here so that both hot-path implementations can raise it).  When
    raised by :meth:`~raftlib.codec.FrameDecoder.feed`, ``messages`` holds the
    valid messages that preceded the bad frame in the same call (a receiver may
    still deliver them before closing the stream); when raised by
    :meth:`~raftlib.codec.GroupFrameDecoder.feed`, ``groups`` holds the valid
    ``(group id, messages)`` pairs that preceded it.
    """

    messages: tuple[Message, ...] = ()
    groups: tuple[tuple[str, list[Message]], ...] = ()

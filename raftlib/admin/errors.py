"""The admin tool's exit codes and its one error type.

Every failure a command detects is raised as :class:`AdminError` carrying the
message for the operator and the exit code; ``cli.main`` prints it and exits.
"""

from __future__ import annotations

import enum

__all__ = ["AdminError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """What ``python -m raftlib`` returns."""

    OK = 0
    CORRUPT = 1
    """The storage failed an integrity check (``wal verify`` found damage, or a command refused to
    work on damaged storage)."""
    USAGE = 2
    """Bad arguments, or the data directory is missing, unreadable or not a raftlib data directory."""
    REFUSED = 3
    """A safety check refused: a process holds the data directory, or a confirmation flag is missing.
    Online: the node refused the client's authentication (wrong or missing secret, TLS)."""
    FAILED = 4
    """An operation failed part way (a write error); what was durable is reported. Online: the
    node refused or failed the operation (a bad membership change, a failed snapshot)."""
    UNAVAILABLE = 5
    """Online: the node is unreachable, closed the connection, is stopped, or did not answer
    within the timeout (the outcome of a change is then unknown)."""
    NOT_LEADER = 6
    """Online: the operation needs the leader; the leader's id and address are printed."""


class AdminError(Exception):
    """A failure to report to the operator: ``message`` on stderr, ``code`` as the exit status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

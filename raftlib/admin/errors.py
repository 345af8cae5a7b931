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
    """A safety check refused: a process holds the data directory, or a confirmation flag is missing."""
    FAILED = 4
    """An operation failed part way (a write error); what was durable is reported."""


class AdminError(Exception):
    """A failure to report to the operator: ``message`` on stderr, ``code`` as the exit status."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

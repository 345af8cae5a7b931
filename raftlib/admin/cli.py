"""The ``python -m raftlib`` parser and entry point.

Each command module in :data:`COMMAND_MODULES` has a ``register(subparsers)``
function that adds its subcommands, each with ``set_defaults(func=...)``; a
command function takes ``(args, out, err)`` and returns an exit code
(:class:`~raftlib.admin.errors.ExitCode`), raising
:class:`~raftlib.admin.errors.AdminError` for anything to report. Commands
talking to a running node are added the same way, in their own module.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from raftlib._version import __version__
from raftlib.admin import online, recover, wal
from raftlib.admin.errors import AdminError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

COMMAND_MODULES = (wal, recover, online)
"""Modules whose ``register`` adds subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="python -m raftlib",
        description="raftlib's admin tool. Offline commands (wal, recover) work on a stopped node's data "
        "directory; online ones (status, members, transfer-leader, snapshot) talk to a running node's "
        "admin endpoint (see docs/admin.md).",
    )
    parser.add_argument("--version", action="version", version=f"raftlib {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the storage layer's log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit status (argparse exits itself on bad usage, status 2)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    storage_log = logging.getLogger("raftlib.storage")
    storage_log.addHandler(handler)
    old_level = storage_log.level
    storage_log.setLevel(logging.INFO if args.verbose else logging.ERROR)
    try:
        return int(args.func(args, out, err))
    except AdminError as exc:
        err.write(f"error: {exc.message}\n")
        return int(exc.code)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    finally:
        storage_log.removeHandler(handler)
        storage_log.setLevel(old_level)

"""Ending the runtime's background tasks.

Owns: :func:`cancel_and_wait`, the one way the runtime (nodes, hosts, sessions, recipes) stops a
task it owns.

Invariant: when it returns, every task given has ended, even one that swallowed a cancellation.
That happens without any bug in the task: on Python before 3.12, ``asyncio.wait_for`` returns the
inner result instead of raising ``CancelledError`` when the awaited future completes in the same
loop turn as the cancel (a clock waiting for a leader change, say), so ``task.cancel(); await task``
could wait forever.  Here the task is cancelled again every ``retry`` seconds until it ends; each
wait is bounded, and the caller's own cancellation is not swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], retry: float = 0.1) -> None:
    """Cancel ``tasks`` (``None`` entries are skipped) and return once all have ended.

    Their results and exceptions are consumed (a task being stopped has nothing left to report).

    >>> await cancel_and_wait([self._ticker, self._reader])  # doctest: +SKIP
    """
    pending = {t for t in tasks if t is not None}
    for t in pending:
        t.cancel()
    while pending:
        done, pending = await asyncio.wait(pending, timeout=retry)
        for t in done:
            if not t.cancelled():
                with contextlib.suppress(BaseException):
                    t.exception()  # retrieved: no "exception was never retrieved" at exit
        for t in pending:  # it swallowed the cancellation: again
            t.cancel()

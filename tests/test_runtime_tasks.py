"""Stopping the runtime's tasks (raftlib.runtime.tasks.cancel_and_wait): a stop always ends."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from raftlib.runtime.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again_until_it_ends() -> None:
    """asyncio.wait_for before Python 3.12 returns the inner result when it completes in the same
    turn as a cancel; the task then goes on.  `task.cancel(); await task` would wait forever."""
    swallowed = 0

    async def clock() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:  # what a lost cancellation looks like to the stopper
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(clock())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), 5)  # bounded: fails instead of hanging
    assert task.cancelled() and swallowed == 1


async def test_wait_for_racing_an_event_and_a_cancel_still_stops() -> None:
    """The race as the LogClock meets it: the event it waits for is set in the turn it is cancelled."""
    event = asyncio.Event()

    async def idle() -> None:
        while True:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), 3600)
            event.clear()

    tasks = [asyncio.create_task(idle()) for _ in range(20)]
    await asyncio.sleep(0)
    event.set()
    await asyncio.wait_for(cancel_and_wait(tasks), 5)
    assert all(t.done() for t in tasks)


async def test_exceptions_of_stopped_tasks_are_consumed_and_none_entries_skipped() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait([task, None])
    assert isinstance(task.exception(), ValueError)


async def test_the_stoppers_own_cancellation_is_not_swallowed() -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:  # ignores cancels until told to stop
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    stopper = asyncio.create_task(cancel_and_wait([task], retry=0.01))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    stop.set()
    await asyncio.wait_for(cancel_and_wait([task]), 5)

"""cancel_and_wait: stopping tasks without swallowing the stopper's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from driver.tasks import cancel_and_wait


async def test_cancels_every_task_and_waits_for_them() -> None:
    ended: list[str] = []

    async def loop(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # clean-up that takes a turn of the loop
            ended.append(name)

    tasks = [asyncio.create_task(loop(n)) for n in ("a", "b")]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks[0], None, tasks[1])
    assert sorted(ended) == ["a", "b"] and all(t.cancelled() for t in tasks)
    await cancel_and_wait(*tasks)  # already finished: nothing to do


async def test_a_task_that_failed_raises_its_error() -> None:
    async def fail() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancel_and_wait(task)


async def test_the_callers_own_cancellation_propagates() -> None:
    """A loop stopped while it is stopping a helper task must end (it used to go on running)."""
    helper_cancelled = asyncio.Event()
    release = asyncio.Event()

    async def helper() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            helper_cancelled.set()
            await release.wait()  # slow to finish
            raise

    async def watcher() -> None:
        while True:
            running = asyncio.create_task(helper())
            await asyncio.sleep(0)
            await cancel_and_wait(running)

    task = asyncio.create_task(watcher())
    await helper_cancelled.wait()
    task.cancel()
    release.set()
    done, _ = await asyncio.wait([task], timeout=30)  # a bound for the failure only: it ends at once
    assert task in done and task.cancelled()

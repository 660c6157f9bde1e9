"""The node lock excludes other processes and other coroutines, and survives cancellation."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from driver.state.lock import NodeLock
from tests.support.locks import lock_is_free

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Another process holding the lock until its stdin is closed."""
    path = tmp_path / "serialize.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield path, proc
    proc.kill()
    proc.wait()


async def test_waits_for_another_process_then_acquires(holder) -> None:  # type: ignore[no-untyped-def]
    path, proc = holder
    lock = NodeLock(path)
    entered = asyncio.Event()

    async def body() -> None:
        entered.set()

    async def critical() -> None:
        await lock.run(body)

    task = asyncio.create_task(critical())
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "acquired the lock while another process held it"
    proc.stdin.close()  # the holder exits, the kernel drops its lock
    await asyncio.wait_for(task, 10)
    assert entered.is_set()


async def test_serializes_coroutines_of_one_process(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path / "serialize.lock")
    inside = 0
    peak = 0

    async def body() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0)  # yield so an unserialized peer could enter
        inside -= 1

    async def critical() -> None:
        await lock.run(body)

    await asyncio.gather(*(critical() for _ in range(20)))
    assert peak == 1


async def test_cancelled_waiter_does_not_keep_the_lock(holder) -> None:  # type: ignore[no-untyped-def]
    path, proc = holder
    lock = NodeLock(path)

    async def nothing() -> None:
        pass

    async def critical() -> None:
        await lock.run(nothing)

    task = asyncio.create_task(critical())
    await asyncio.wait({task}, timeout=0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    proc.stdin.close()
    proc.wait()
    # Once the worker's flock returns it must release: a fresh process can take the lock.
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(200):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("lock still held after the cancelled waiter's worker returned")
    finally:
        os.close(fd)


async def test_run_finishes_its_body_after_the_caller_is_cancelled(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path / "serialize.lock")
    inside, finish = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def body() -> str:
        inside.set()
        await finish.wait()  # stands for a worker thread, which cancellation cannot stop
        finished.append("body")
        return "done"

    caller = asyncio.create_task(lock.run(body))
    await inside.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not lock_is_free(lock.path), "lock released while the body still runs"
    # A coroutine of the same process queues behind the body, too.
    follower = asyncio.create_task(lock.run(lambda: asyncio.sleep(0, result="follower")))
    finish.set()
    assert await follower == "follower"
    assert finished == ["body"]
    await lock.wait_idle()
    assert lock_is_free(lock.path)


async def test_a_body_failing_after_its_caller_left_releases_the_lock(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path / "serialize.lock")
    inside, finish = asyncio.Event(), asyncio.Event()

    async def body() -> None:
        inside.set()
        await finish.wait()
        raise OSError("disk full")

    caller = asyncio.create_task(lock.run(body))
    await inside.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    finish.set()
    await lock.wait_idle()
    assert lock_is_free(lock.path)
    assert await lock.run(lambda: asyncio.sleep(0, result=1)) == 1


async def test_run_returns_and_raises_what_the_body_does(tmp_path: Path) -> None:
    lock = NodeLock(tmp_path / "serialize.lock")

    async def fails() -> None:
        raise ValueError("claim x: bad")

    with pytest.raises(ValueError, match="claim x: bad"):
        await lock.run(fails)
    assert await lock.run(lambda: asyncio.to_thread(lock_is_free, lock.path)) is False
    assert lock_is_free(lock.path)


async def test_a_lock_file_replaced_while_waiting_is_not_the_one_held(holder) -> None:  # type: ignore[no-untyped-def]
    """The lock file is deleted while this process waits on it: the file it then gets is one nobody else
    opens any more, so it locks the file now at the path instead, which excludes the next instance."""
    path, proc = holder
    lock = NodeLock(path)
    waiting = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "waiting for the node lock, which another process holds":
                waiting.set()

    lock_log = logging.getLogger("driver.state.lock")
    level, seen = lock_log.level, Seen()
    lock_log.addHandler(seen)
    lock_log.setLevel(logging.INFO)
    excluded: list[bool] = []

    async def body() -> None:
        excluded.append(not lock_is_free(path))

    try:
        task = asyncio.create_task(lock.run(body))
        assert await asyncio.to_thread(waiting.wait, 10)
        path.unlink()  # the holder keeps its lock on the deleted file
        proc.stdin.close()  # then exits, so the waiter gets the deleted file
        await asyncio.wait_for(task, 10)
    finally:
        lock_log.removeHandler(seen)
        lock_log.setLevel(level)
    assert excluded == [True]
    assert lock_is_free(path)

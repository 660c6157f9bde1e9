"""Thread work seen from the event loop: waiting on a thread's future never leaves asyncio an exception to
report on its own (a GPU read failing every second would otherwise log "Future exception was never
retrieved" every second)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from typing import Any

import pytest

from driver.threads import CallThread, in_daemon_thread, when_done


def capture_loop_errors() -> list[str]:
    reported: list[str] = []

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reported.append(f"{context.get('message')}: {context.get('exception')!r}")

    asyncio.get_running_loop().set_exception_handler(handle)
    return reported


async def test_a_failed_thread_call_is_read_from_its_future_and_reported_nowhere_else() -> None:
    reported = capture_loop_errors()
    future = in_daemon_thread(lambda: 1 / 0, "fails")
    await asyncio.wait_for(when_done(future), timeout=10)  # guard only
    assert isinstance(future.exception(), ZeroDivisionError)
    del future
    gc.collect()
    assert reported == []


async def test_waiting_gives_up_at_the_timeout_and_a_late_failure_stays_quiet() -> None:
    reported = capture_loop_errors()
    release = threading.Event()

    def hangs_then_fails() -> None:
        release.wait()
        raise RuntimeError("GPU has fallen off the bus")

    future = in_daemon_thread(hangs_then_fails, "hangs")
    waiter = when_done(future)
    done, _ = await asyncio.wait([waiter], timeout=0.05)
    assert done == set() and not future.done()
    release.set()
    await waiter  # resolves to None whatever the outcome
    assert isinstance(future.exception(), RuntimeError)
    del future, waiter, done
    gc.collect()
    assert reported == []


async def test_a_cancelled_wait_ignores_the_thread_finishing_later() -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    waiter = when_done(future)
    waiter.cancel()
    future.set_result(1)  # the thread's answer after shutdown began
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert future.result() == 1


async def test_a_call_thread_answers_each_request_in_its_own_future() -> None:
    answers = iter([1, ValueError("GPU is lost"), 3])

    def call() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    thread = CallThread(call, name="reads")
    futures = [thread.submit() for _ in range(3)]
    await asyncio.wait_for(asyncio.gather(*(when_done(f) for f in futures)), timeout=10)  # guard only
    thread.stop()
    assert futures[0].result() == 1
    assert str(futures[1].exception()) == "GPU is lost"
    assert futures[2].result() == 3

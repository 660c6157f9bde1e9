"""Work in plain threads, seen from the event loop.

NVML calls can hang for seconds (a GPU falling off the bus), so health probes and telemetry reads run in
daemon threads of their own and the event loop only waits, with a timeout, for them to finish. The outcome
is read from the thread's :class:`concurrent.futures.Future` itself; the loop-side future of
:func:`when_done` carries no exception, so a failed read that nobody awaits is not reported a second time
by asyncio as "Future exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _run_into(future: concurrent.futures.Future[T], fn: Callable[[], T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as err:
        future.set_exception(err)


def in_daemon_thread(fn: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    """Run ``fn`` in a new daemon thread (a call that never returns cannot block process exit)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    threading.Thread(target=_run_into, args=(future, fn), name=name, daemon=True).start()
    return future


class CallThread(Generic[T]):
    """A daemon thread of its own that calls ``fn()`` on request, one call after the other.

    One per GPU: a call that hangs in NVML holds up that GPU's next requests only, never another GPU's.
    """

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._fn = fn
        self._requests: queue.SimpleQueue[concurrent.futures.Future[T] | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._requests.put(future)
        return future

    def stop(self) -> None:
        """End the thread once the call in progress (if any) returns."""
        self._requests.put(None)

    def _serve(self) -> None:
        while (future := self._requests.get()) is not None:
            _run_into(future, self._fn)


def when_done(future: concurrent.futures.Future[Any]) -> asyncio.Future[None]:
    """A future of the running loop that resolves to None once ``future`` is done, whatever its outcome.

    Cancelling the returned future (at shutdown) only stops the waiting; a thread finishing later does not
    call into a closed loop.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def notify(_: concurrent.futures.Future[Any]) -> None:
        if done.done():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle)

    future.add_done_callback(notify)
    return done

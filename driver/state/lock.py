"""The node lock that serializes prepare and unprepare.

A ``flock`` on ``<plugin-dir>/serialize.lock`` excludes other processes sharing the plugin directory (the
old and new pod during a rolling update), and an asyncio lock keeps a single process from queueing more
than one blocked thread on it. Every acquisition opens the file afresh, so the lock belongs to that open
file description and is released by closing it even if the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

LOCK_FILE_NAME = "serialize.lock"


class NodeLock:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        async with self._local:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            await _acquire(fd)
            try:
                yield
            finally:
                _release(fd)


def _release(fd: int) -> None:
    # Closing the descriptor drops the flock too; the explicit unlock documents intent.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


async def _acquire(fd: int) -> None:
    """Take the lock, blocking in a worker thread so the event loop keeps serving meanwhile.

    When cancelled while waiting, the descriptor is released once the worker's blocked ``flock``
    returns, never closed underneath it.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    waiter = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
    try:
        await asyncio.shield(waiter)
    except asyncio.CancelledError:
        waiter.add_done_callback(lambda _: _release(fd))
        raise
    except BaseException:
        os.close(fd)
        raise

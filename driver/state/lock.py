"""The node lock that serializes prepare and unprepare.

A ``flock`` on ``<plugin-dir>/serialize.lock`` excludes other processes sharing the plugin directory (the
old and new pod during a rolling update), and an asyncio lock keeps a single process from queueing more
than one blocked thread on it. Every acquisition opens the file afresh, so the lock belongs to that open
file description and is released by closing it even if the process dies.

Node-state work runs in worker threads, which cannot be cancelled. :meth:`NodeLock.run` therefore lets a
critical section, once entered, run to its end even when its caller is cancelled (a kubelet deadline, the
gRPC server stopping): the caller gets its ``CancelledError`` at once, but the lock is only released when
the work has finished, so the next holder never overlaps a thread still writing the checkpoint.

A lock file deleted or replaced (by hand, by a cleanup) while a process waits for it would leave that process
holding a file nobody else opens: after taking the flock, the locked file is compared (device and inode) with
the one at the path, and the path is opened and locked again until they match.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from driver.fsutil import NotRegularFileError, check_regular, set_aside
from driver.log import get_logger

log = get_logger(__name__)

LOCK_FILE_NAME = "serialize.lock"

T = TypeVar("T")


class NodeLock:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = asyncio.Lock()
        self._running: set[asyncio.Task[Any]] = set()

    async def run(self, body: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``body()`` holding the lock; once started it runs to its end, whatever happens to the caller."""
        fd = await self._take()
        try:
            task = asyncio.ensure_future(body())
        except BaseException:
            self._free(fd)
            raise
        self._running.add(task)
        task.add_done_callback(lambda t: self._finished(t, fd))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                log.warning(
                    "caller cancelled; the node-locked operation finishes before the lock is released"
                )
            task.add_done_callback(_report_orphaned)
            raise

    async def wait_idle(self) -> None:
        """Wait until no critical section started by :meth:`run` is still running (orderly shutdown)."""
        while self._running:
            await asyncio.wait(set(self._running))

    async def _take(self) -> int:
        """Acquire both locks; return the descriptor holding the flock."""
        await self._local.acquire()
        try:
            while True:
                fd = _open_lock_file(self.path)
                await _acquire(fd)
                if _still_at(fd, self.path):
                    return fd
                # Deleted or replaced while this process waited: whoever opens the path now locks another
                # file, so holding this one would exclude nobody.
                log.warning(
                    "the lock file was replaced while waiting for it; locking the new one",
                    path=str(self.path),
                )
                _release(fd)
        except BaseException:
            self._local.release()
            raise

    def _finished(self, task: asyncio.Task[Any], fd: int) -> None:
        self._running.discard(task)
        self._free(fd)

    def _free(self, fd: int) -> None:
        _release(fd)
        self._local.release()


def _open_lock_file(path: Path) -> int:
    """Open (creating) the lock file. Something else at its path -- a directory, FIFO or link, which would
    fail every operation or lock somebody else's file -- is moved aside and a lock file created."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        check_regular(path)
        fd = os.open(path, flags, 0o600)
    except (NotRegularFileError, IsADirectoryError) as err:
        aside = set_aside(path)
        log.warning(
            "moved aside what is not a lock file", path=str(path), moved_to=str(aside), error=str(err)
        )
        fd = os.open(path, flags, 0o600)
    return fd


def _still_at(fd: int, path: Path) -> bool:
    """Whether the locked open file ``fd`` is still the file at ``path``. Releases ``fd`` if that cannot be
    told."""
    try:
        held = os.fstat(fd)
        try:
            there = os.lstat(path)
        except FileNotFoundError:
            return False
    except BaseException:
        _release(fd)
        raise
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _report_orphaned(task: asyncio.Task[Any]) -> None:
    """The outcome of a critical section whose caller was cancelled: nobody else will look at it."""
    if task.cancelled():
        log.warning("node-locked operation cancelled after its caller went away")
    elif (err := task.exception()) is not None:
        log.error("node-locked operation failed after its caller went away", error=repr(err))
    else:
        log.info("node-locked operation finished after its caller went away")


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
        # Only when another process (a second plugin instance) holds it: a call waits here, unanswered.
        log.info("waiting for the node lock, which another process holds")
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

"""Stopping asyncio tasks without swallowing the stopper's own cancellation.

The usual ``task.cancel()`` then ``with suppress(CancelledError): await task`` cannot tell the task's
CancelledError from one meant for the caller: a caller cancelled while it waits (a loop being stopped in the
middle of its own clean-up, a Ctrl-C) swallows its cancellation and carries on. A loop that does that runs
forever, and whoever stops it waits forever. :func:`cancel_and_wait` waits with :func:`asyncio.wait`, which
leaves each task's outcome in the task, so the caller's cancellation always propagates.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (None entries are skipped) and wait until every one has finished.

    A task that ends cancelled is what was asked for; one that failed otherwise raises its exception here
    (the first, once all are done), as awaiting it would. If the caller is cancelled while waiting, its
    CancelledError propagates at once.
    """
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    pending = [task for task in running if not task.done()]
    if pending:
        await asyncio.wait(pending)
    for task in running:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error

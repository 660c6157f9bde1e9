"""The sandbox controllers' inputs: a list-then-watch per kind (the driver's own helper) and a work queue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from driver.kube.client import KubeClient, ResourceType
from driver.kube.listwatch import ListWatcher
from driver.kube.retry import Backoff
from driver.log import get_logger

log = get_logger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[None] | None]


async def watch_forever(
    kube: KubeClient,
    rt: ResourceType,
    handler: Handler,
    *,
    namespace: str | None = None,
    field_selector: str | None = None,
    label_selector: str | None = None,
    max_backoff: float = 5.0,
) -> None:
    """Call ``handler(event_type, object)`` for every object (as ADDED after each list) and change.

    Runs until cancelled (:class:`driver.kube.listwatch.ListWatcher`). After a 410 or a broken stream it
    lists again, so handlers must be idempotent.
    """

    async def listed(items: list[dict[str, Any]]) -> None:
        for item in items:
            await _call(handler, "ADDED", item)

    await ListWatcher(
        kube,
        rt,
        on_list=listed,
        on_event=handler,
        namespace=namespace,
        field_selector=field_selector,
        label_selector=label_selector,
        backoff=Backoff(base=0.1, cap=max_backoff, jitter=0.5),
    ).run()


async def _call(handler: Handler, event_type: str, obj: dict[str, Any]) -> None:
    result = handler(event_type, obj)
    if result is not None:
        await result


class WorkQueue:
    """Coalescing queue of keys with one worker: a key queued while being processed runs again after."""

    def __init__(self, process: Callable[[str], Awaitable[None]], name: str) -> None:
        self._process = process
        self._name = name
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()

    def add(self, key: str) -> None:
        self._pending[key] = None
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                key = next(iter(self._pending))
                del self._pending[key]
                try:
                    await self._process(key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("controller step failed", controller=self._name, key=key)

"""List-then-watch loops for the sandbox controllers, resilient to stream ends, 410 Gone and API errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from driver.kube.client import ApiError, KubeClient, ResourceType
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

    Runs until cancelled. After a 410 or a broken stream it lists again, so handlers must be idempotent.
    """
    failures = 0
    resource_version: str | None = None
    while True:
        try:
            if resource_version is None:
                listed = await kube.list(
                    rt, namespace, field_selector=field_selector, label_selector=label_selector
                )
                resource_version = listed["metadata"].get("resourceVersion")
                for item in listed.get("items") or []:
                    await _call(handler, "ADDED", item)
            async for event in kube.watch(
                rt,
                namespace,
                field_selector=field_selector,
                label_selector=label_selector,
                resource_version=resource_version,
            ):
                resource_version = event.object.get("metadata", {}).get("resourceVersion", resource_version)
                failures = 0
                if event.type != "BOOKMARK":
                    await _call(handler, event.type, event.object)
        except asyncio.CancelledError:
            raise
        except ApiError as err:
            resource_version = None
            if err.status != 410:
                failures += 1
                log.warning("watch failed", kind=rt.kind, error=str(err))
                await asyncio.sleep(min(max_backoff, 0.1 * 2**failures))
        except (OSError, TimeoutError, aiohttp.ClientError) as err:
            resource_version = None
            failures += 1
            log.warning("watch interrupted", kind=rt.kind, error=str(err))
            await asyncio.sleep(min(max_backoff, 0.1 * 2**failures))


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

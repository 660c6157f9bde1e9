"""One list-then-watch loop for every reader that follows objects: plugin, exporter and sandbox alike.

:class:`ListWatcher` lists the objects once, hands them to ``on_list``, then watches from the list's
``resourceVersion`` and hands every change to ``on_event``:

- the version moves with every event, ``BOOKMARK`` events included (they are requested, and carry only
  the version), so a watch the server ends after its timeout resumes where it stopped, without a list;
- ``410 Gone`` (the version is too old for the server's watch cache) lists again at once -- once: a second
  410 before any event backs off like any other failure;
- any other failure -- an API error, a malformed answer, a transport error, an exception in a callback --
  is logged, reported to ``on_error``, and followed by a list after an exponential backoff (longer when the
  server asked for it with ``Retry-After``). The count starts over once a watch delivers an event, or a
  list succeeds after failed lists (the server is back); a watch that keeps failing right after good lists
  keeps backing off, so a proxy that breaks every stream does not turn into a storm of lists. Nothing but
  cancellation ends the loop.

Callbacks must be idempotent: after every list ``on_list`` gets the full set again (deletions made while
the watch was down produce no event). The sleep function is injectable, so tests run on a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from driver.kube.client import ApiError, KubeClient, ResourceType
from driver.kube.retry import Backoff, Sleep, is_transport_error
from driver.log import get_logger

log = get_logger(__name__)

JSON = dict[str, Any]
OnList = Callable[[list[JSON]], Awaitable[None] | None]
OnEvent = Callable[[str, JSON], Awaitable[None] | None]
OnError = Callable[[Exception], None]

#: How long one watch request runs before the server ends it (and the watcher resumes).
WATCH_TIMEOUT_SECONDS = 300
#: Between failed rounds: from 0.2 s up to 30 s, spread by up to half, so that the nodes of a cluster that
#: lost its API server do not all list again in the same instant.
DEFAULT_BACKOFF = Backoff(base=0.2, cap=30.0, jitter=0.5)


class ListWatcher:
    """Follows the objects of ``rt`` (in ``namespace``, matching the selectors) until cancelled."""

    def __init__(
        self,
        kube: KubeClient,
        rt: ResourceType,
        *,
        on_list: OnList,
        on_event: OnEvent,
        on_error: OnError | None = None,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        sleep: Sleep = asyncio.sleep,
        watch_timeout: int = WATCH_TIMEOUT_SECONDS,
        name: str = "",
    ) -> None:
        self._kube = kube
        self.rt = rt
        self._on_list = on_list
        self._on_event = on_event
        self._on_error = on_error
        self.namespace = namespace
        self.field_selector = field_selector
        self.label_selector = label_selector
        self._backoff = backoff
        self._sleep = sleep
        self._watch_timeout = watch_timeout
        self.name = name or rt.plural
        #: Where the next watch starts; None: list first.
        self.resource_version: str | None = None
        #: Completed lists (the first one included).
        self.lists = 0
        self._delivered = False

    async def run(self) -> None:
        failures = 0
        gone_before = False
        last_failed = ""
        while True:
            self._delivered = False
            stage = "list"
            try:
                if self.resource_version is None:
                    await self._list()
                    if last_failed == "list":  # the server is back: no reason to wait long next time
                        failures = 0
                stage = "watch"
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self._delivered:  # the stream worked for a while: this failure starts a new count
                    failures, gone_before = 0, False
                self.resource_version = None
                if self._on_error is not None:
                    self._on_error(err)
                if isinstance(err, ApiError) and err.status == 410 and not gone_before:
                    gone_before = True
                    log.info("watch expired; listing again", resource=self.name, error=str(err))
                    continue
                wait = max(self._backoff.delay(failures), _asked(err))
                failures += 1
                last_failed = stage
                self._log_failure(err, wait)
                await self._sleep(wait)
                continue
            if self._delivered:
                failures, gone_before = 0, False
            else:
                # A stream that ended without a single event (not even a bookmark) is not proof of a
                # healthy server: wait before the next one, so a proxy that closes streams at once does
                # not turn this into a busy loop.
                await self._sleep(self._backoff.delay(failures))
                failures += 1

    async def _list(self) -> None:
        listed = await self._kube.list(
            self.rt, self.namespace, field_selector=self.field_selector, label_selector=self.label_selector
        )
        await _call(self._on_list, list(listed.get("items") or []))
        self.lists += 1
        self.resource_version = _version(listed) or None

    async def _watch(self) -> None:
        """Follow one watch stream to its end."""
        async for event in self._kube.watch(
            self.rt,
            self.namespace,
            field_selector=self.field_selector,
            label_selector=self.label_selector,
            resource_version=self.resource_version,
            timeout_seconds=self._watch_timeout,
        ):
            self._delivered = True
            if event.type != "BOOKMARK":
                await _call(self._on_event, event.type, event.object)
            self.resource_version = _version(event.object) or self.resource_version

    def _log_failure(self, err: Exception, wait: float) -> None:
        if isinstance(err, ApiError) or is_transport_error(err):
            log.warning(
                "watch failed; listing again",
                resource=self.name,
                error=str(err) or repr(err),
                retry_in_s=wait,
            )
        else:
            log.exception("watch callback failed; listing again", resource=self.name, retry_in_s=wait)


def _version(obj: JSON) -> str:
    meta = obj.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else ""


def _asked(err: Exception) -> float:
    """What the server asked for (``Retry-After``), or 0."""
    return (err.retry_after or 0.0) if isinstance(err, ApiError) else 0.0


async def _call(callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    result = callback(*args)
    if result is not None:
        await result

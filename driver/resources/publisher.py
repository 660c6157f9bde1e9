"""Keeps this node's ResourceSlices in the API server equal to what the driver wants published.

The publisher lists the node's slices, computes a plan with :func:`driver.resources.slices.plan_sync` and
applies it (deletes, then updates, then creates). It watches the slices so that a slice deleted by someone
else -- the kubelet wipes all of a node's slices when it starts, and 30 s after a driver's socket goes
away -- comes back within moments. The watch also echoes the publisher's own creates and updates; those are
recognised by the resourceVersions the API server answered them with and cause no re-list (an idle plugin
sends nothing). API errors and 409 conflicts are retried with exponential backoff; when nothing changed, a
sync writes nothing.

Neither loop ever ends on its own: an answer the client rejects (:class:`~driver.kube.client.ApiError`,
malformed answers included), a transport error or any unexpected error is logged and retried with
backoff, so one bad answer never stops publishing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from driver.kube.client import NODES, RESOURCE_SLICES, ApiError, KubeClient, MalformedAnswerError
from driver.kube.listwatch import ListWatcher
from driver.kube.retry import Backoff
from driver.log import get_logger
from driver.resources.slices import JSON, Owner, SliceContent, SyncPlan, plan_sync, split_pool
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

# Network-level failures talking to the API server; retried like API errors.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (OSError, TimeoutError, aiohttp.ClientError)
RETRIED_ERRORS: tuple[type[Exception], ...] = (ApiError, *TRANSIENT_ERRORS)


def error_kind(err: BaseException) -> str:
    """The ``kind`` label of a failed API call: HTTP status, ``malformed``, or the error's class."""
    return err.kind if isinstance(err, ApiError) else type(err).__name__


def _log_failure(event: str, err: Exception, **fields: object) -> None:
    """An expected failure (API or transport) as a warning; anything else with its traceback."""
    if isinstance(err, RETRIED_ERRORS):
        log.warning(event, error=str(err) or repr(err), **fields)
    else:
        log.exception(event, **fields)


EVENT_DEBOUNCE_SECONDS = 0.2
#: Own writes remembered until their watch echo arrives (a write made before the watch began never echoes).
OWN_WRITES_KEPT = 256


@dataclass
class PublisherStats:
    syncs: int = 0
    writes: int = 0
    api_errors: int = 0
    generation: int = 0
    #: Watch events that were echoes of this publisher's own writes (no resync).
    echoes: int = 0


class SlicePublisher:
    def __init__(
        self,
        kube: KubeClient,
        *,
        driver: str,
        node: str,
        max_backoff: float = 30.0,
        on_write: Callable[[str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._kube = kube
        self.driver = driver
        self.node = node
        self._max_backoff = max_backoff
        self._on_write = on_write
        self._on_error = on_error
        self._desired: list[SliceContent] | None = None
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()
        self._owner: Owner | None = None
        self._resync_pending = False
        self._watch_listed = False
        #: resourceVersions of the watch events since the last judgement; None: an event that needs a resync.
        self._events: list[str | None] = []
        #: resourceVersions our creates and updates were answered with, until their echo (an ordered set).
        self._own_writes: dict[str, None] = {}
        self._writing = False
        self.stats = PublisherStats()

    @property
    def field_selector(self) -> str:
        return f"spec.driver={self.driver},spec.nodeName={self.node}"

    def set_devices(
        self, devices: Sequence[Mapping[str, Any]], counter_sets: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """Publish this device list (device JSON as in ``spec.devices``) and the counter sets its devices
        consume (``spec.sharedCounters``); cheap, the sync runs in ``run``."""
        self._desired = split_pool(devices, counter_sets)
        self._synced.clear()
        self._dirty.set()

    async def wait_synced(self) -> None:
        """Wait until the API server holds exactly the desired slices (after the latest ``set_devices``)."""
        await self._synced.wait()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        watcher = asyncio.create_task(self._watch_loop(), name="slice-watch")
        try:
            await self._reconcile_loop()
        finally:
            await cancel_and_wait(watcher)

    # -- reconcile -------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        failures = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self._desired is None:
                continue
            try:
                plan = await self.sync_once()
            except Exception as err:  # whatever the API server answered, try again later
                failures += 1
                delay = min(self._max_backoff, 0.2 * 2 ** (failures - 1))
                self.stats.api_errors += 1
                if self._on_error:
                    self._on_error(error_kind(err))
                _log_failure("slice sync failed; retrying", err, retry_in_s=delay, node=self.node)
                await asyncio.sleep(delay)
                self._dirty.set()
                continue
            failures = 0
            if plan.writes:
                log.info(
                    "slices published",
                    generation=plan.generation,
                    slices=plan.slice_count,
                    created=len(plan.creates),
                    updated=len(plan.updates),
                    deleted=len(plan.deletes),
                )
            if not self._dirty.is_set():
                self._synced.set()

    async def _node_owner(self, refresh: bool = False) -> Owner:
        if self._owner is None or refresh:
            node = await self._kube.get(NODES, self.node)
            self._owner = Owner(self.node, node["metadata"]["uid"])
        return self._owner

    async def sync_once(self) -> SyncPlan:
        """One reconcile pass; raises on API errors (the loop retries with backoff)."""
        assert self._desired is not None
        owner = await self._node_owner()
        listed = await self._kube.list(RESOURCE_SLICES, field_selector=self.field_selector)
        existing = self._ours(_checked_slices(listed.get("items") or []))
        plan = plan_sync(existing, self._desired, driver=self.driver, owner=owner)
        if plan.creates:
            # A re-registered Node has a new UID; slices owned by the old one would be garbage collected.
            fresh = await self._node_owner(refresh=True)
            if fresh != owner:
                plan = plan_sync(existing, self._desired, driver=self.driver, owner=fresh)
        self.stats.syncs += 1
        self.stats.generation = plan.generation
        self._writing = True
        try:
            await self._apply(plan)
        finally:
            self._writing = False
            if not self._resync_pending:
                self._judge_events()
        return plan

    async def _apply(self, plan: SyncPlan) -> None:
        for obj in plan.deletes:
            meta = obj["metadata"]
            try:
                await self._kube.delete(
                    RESOURCE_SLICES,
                    meta["name"],
                    uid=meta.get("uid"),
                    resource_version=meta.get("resourceVersion"),
                )
            except ApiError as err:
                if not err.not_found:
                    raise
            self._wrote("delete")
        for obj in plan.updates:
            self._own_write(await self._kube.update(RESOURCE_SLICES, obj))
            self._wrote("update")
        for obj in plan.creates:
            self._own_write(await self._kube.create(RESOURCE_SLICES, obj))
            self._wrote("create")

    def _own_write(self, answer: JSON) -> None:
        version = answer["metadata"].get("resourceVersion")
        if version:
            self._own_writes[str(version)] = None
            while len(self._own_writes) > OWN_WRITES_KEPT:
                del self._own_writes[next(iter(self._own_writes))]

    def _ours(self, slices: list[JSON]) -> list[JSON]:
        """The field selector, checked again: a server that ignores it must not make us update or delete
        other nodes' or drivers' slices."""
        return [
            s
            for s in slices
            if s["spec"].get("driver") == self.driver and s["spec"].get("nodeName") == self.node
        ]

    def _wrote(self, verb: str) -> None:
        self.stats.writes += 1
        if self._on_write:
            self._on_write(verb)

    # -- watch -----------------------------------------------------------------------------------

    def _schedule_resync(self, resource_version: str | None = None) -> None:
        """Coalesce a burst of watch events into one sync. ``resource_version``: the added or modified
        slice's, which needs no sync when it is the echo of our own write."""
        self._events.append(resource_version)
        if self._resync_pending:
            return
        self._resync_pending = True

        def fire() -> None:
            self._resync_pending = False
            self._judge_events()

        asyncio.get_running_loop().call_later(EVENT_DEBOUNCE_SECONDS, fire)

    def _judge_events(self) -> None:
        """Sync unless every event since the last judgement echoed our own write. While a sync writes, its
        answers may still be on their way: it judges them when it is done."""
        if self._writing or not self._events:
            return
        events, self._events = self._events, []
        echoes = 0
        for version in events:
            if version is not None and version in self._own_writes:
                del self._own_writes[version]
                echoes += 1
        self.stats.echoes += echoes
        if echoes < len(events):
            self._dirty.set()
        else:
            log.debug("watch events were this publisher's own writes; no resync", events=echoes)

    def _relisted(self, slices: list[JSON]) -> None:
        """Every list after the first follows a failed or expired watch: deletions made while it was down
        produced no event, so sync."""
        if self._watch_listed:
            self._schedule_resync()
        self._watch_listed = True

    def _slice_changed(self, event_type: str, obj: JSON) -> None:
        """A deletion always syncs; an addition or change may be the echo of our own write (by its
        resourceVersion, judged when the debounce fires)."""
        if event_type == "DELETED":
            self._schedule_resync()
        elif event_type in ("MODIFIED", "ADDED"):
            version = obj.get("metadata", {}).get("resourceVersion")
            self._schedule_resync(str(version) if version else None)

    async def _watch_loop(self) -> None:
        """Trigger a sync whenever someone else touches our slices (debounced), and after every re-list."""
        await ListWatcher(
            self._kube,
            RESOURCE_SLICES,
            on_list=self._relisted,
            on_event=self._slice_changed,
            field_selector=self.field_selector,
            backoff=Backoff(base=0.2, cap=self._max_backoff, jitter=0.5),
            name="resourceslices (publisher)",
        ).run()


def _checked_slices(items: Sequence[Any]) -> list[JSON]:
    """The listed slices, each with the fields a sync plan reads; a slice without them is an answer no
    API server sends (it validates slices), so the whole list is distrusted and the sync retried."""
    for item in items:
        spec = item.get("spec")
        pool = spec.get("pool") if isinstance(spec, dict) else None
        generation = pool.get("generation", 0) if isinstance(pool, dict) else None
        devices = spec.get("devices", []) if isinstance(spec, dict) else None
        if (
            not isinstance(generation, int)
            or isinstance(generation, bool)
            or not isinstance(devices, list)
            or not all(isinstance(d, dict) for d in devices)
        ):
            raise MalformedAnswerError(
                200,
                f"ResourceSlice {item['metadata']['name']} has no valid spec.pool or spec.devices",
                about=f"LIST {RESOURCE_SLICES.plural}",
            )
    return [dict(item) for item in items]

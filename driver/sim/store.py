"""In-memory object storage for the sandbox API server: objects, one global resourceVersion, event history.

It plays etcd's part: every write gets the next resourceVersion, is recorded in a bounded event history
(so watches can resume from a resourceVersion, or get 410 Gone when it has been compacted away), and
is pushed to live subscriptions. It knows nothing of REST semantics (see ``driver.sim.registry``).

Everything runs on one asyncio event loop; the methods that change state are synchronous, so each of
them is atomic with respect to the coroutines that serve requests.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

JSON = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
T = TypeVar("T")
# Aliases: inside ObjectStore, "list" names the method.
Objects = list[JSON]
ObjectKeys = list[tuple[str, str, str]]
Events = list["StoreEvent"]


@dataclass(frozen=True)
class StoreEvent:
    """One committed change. ``previous`` is the object before a MODIFIED or DELETED."""

    rv: int
    type: EventType
    resource: str
    object: JSON
    previous: JSON | None = None


class TooOldResourceVersion(Exception):  # noqa: N818 - named after the condition, like the server's message
    """The requested resourceVersion is older than the retained history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclass(eq=False)
class Subscription:
    """Live events of one resource, queued for a watch. ``None`` in the queue means: the store closed."""

    resource: str
    queue: asyncio.Queue[StoreEvent | None] = field(default_factory=asyncio.Queue)


class ResourceLike(Protocol):
    """Anything naming a resource, such as ``driver.kube.client.ResourceType``."""

    @property
    def plural(self) -> str: ...

    @property
    def group(self) -> str: ...


Resource = str | ResourceLike


def resource_key(resource: Resource) -> str:
    """The store's key for a resource: ``pods``, ``resourceslices.resource.k8s.io``."""
    if isinstance(resource, str):
        return resource
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def _meta(obj: JSON) -> JSON:
    meta: JSON = obj.setdefault("metadata", {})
    return meta


def object_key(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


class ObjectStore:
    """Objects by (resource, namespace, name), plus history and subscriptions."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self._objects: dict[str, dict[tuple[str, str], JSON]] = {}
        self._history: deque[StoreEvent] = deque(maxlen=history_limit)
        self._compacted_rv = 0  # events at or below this resourceVersion are no longer retained
        self._rv = 0
        self._subscriptions: set[Subscription] = set()
        self._waiters: list[asyncio.Future[None]] = []

    # -- reading ---------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, resource: Resource, namespace: str, name: str) -> JSON | None:
        """A copy of the stored object, or None (``namespace`` is "" for cluster-scoped objects)."""
        obj = self._objects.get(resource_key(resource), {}).get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: Resource, namespace: str | None = None) -> Objects:
        """Copies of the objects of ``resource`` (in ``namespace`` when given), ordered by namespace/name."""
        return [copy.deepcopy(obj) for obj in self._iter(resource, namespace)]

    def count(self, resource: Resource, namespace: str | None = None) -> int:
        return sum(1 for _ in self._iter(resource, namespace))

    def _iter(self, resource: Resource, namespace: str | None) -> Iterator[JSON]:
        objects = self._objects.get(resource_key(resource), {})
        for key in sorted(objects):
            if namespace is None or key[0] == namespace:
                yield objects[key]

    def dependents(self, owner_uid: str) -> ObjectKeys:
        """(resource, namespace, name) of every object with an ownerReference to ``owner_uid``."""
        found = []
        for resource, objects in self._objects.items():
            for key, obj in objects.items():
                refs = (obj.get("metadata") or {}).get("ownerReferences") or []
                if any(isinstance(ref, dict) and ref.get("uid") == owner_uid for ref in refs):
                    found.append((resource, *key))
        return found

    # -- writing ---------------------------------------------------------------------------------

    def put(self, resource: str, obj: JSON) -> JSON:
        """Store ``obj`` (ADDED or MODIFIED) with the next resourceVersion; returns a copy of what was stored."""
        key = object_key(obj)
        previous = self._objects.get(resource, {}).get(key)
        stored = copy.deepcopy(obj)
        rv = self._next_rv()
        _meta(stored)["resourceVersion"] = str(rv)
        self._objects.setdefault(resource, {})[key] = stored
        self._commit(StoreEvent(rv, "MODIFIED" if previous else "ADDED", resource, stored, previous))
        return copy.deepcopy(stored)

    def remove(self, resource: str, namespace: str, name: str) -> JSON | None:
        """Delete an object; the DELETED event carries a new resourceVersion. Returns the deleted object."""
        previous = self._objects.get(resource, {}).pop((namespace, name), None)
        if previous is None:
            return None
        deleted = copy.deepcopy(previous)
        rv = self._next_rv()
        _meta(deleted)["resourceVersion"] = str(rv)
        self._commit(StoreEvent(rv, "DELETED", resource, deleted, previous))
        return copy.deepcopy(deleted)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _commit(self, event: StoreEvent) -> None:
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(event)
        for subscription in self._subscriptions:
            if subscription.resource == event.resource:
                subscription.queue.put_nowait(event)
        self._wake_waiters()

    # -- history and subscriptions ---------------------------------------------------------------

    def compact(self) -> None:
        """Forget all history (a test hook: any watch from an older resourceVersion now gets 410 Gone)."""
        self._history.clear()
        self._compacted_rv = self._rv

    def events_since(self, resource: str, rv: int) -> Events:
        """Retained events of ``resource`` newer than ``rv``; raises when some were compacted away."""
        if rv < self._compacted_rv:
            raise TooOldResourceVersion(rv, self._compacted_rv + 1)
        return [event for event in self._history if event.rv > rv and event.resource == resource]

    def subscribe(self, resource: str) -> Subscription:
        subscription = Subscription(resource)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def close_subscriptions(self) -> None:
        """End every watch (used when the server stops)."""
        for subscription in self._subscriptions:
            subscription.queue.put_nowait(None)
        self._subscriptions.clear()

    # -- awaiting conditions ---------------------------------------------------------------------

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, predicate: Callable[[ObjectStore], T], timeout: float = 10.0) -> T:
        """Return ``predicate(store)`` once it is truthy, re-checking after every committed change.

        Raises :class:`TimeoutError` (naming the predicate) if it does not hold within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                name = getattr(predicate, "__name__", repr(predicate))
                raise TimeoutError(f"condition {name} not met within {timeout}s (resourceVersion {self._rv})")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), remaining)
            except TimeoutError:
                continue

"""Local, watched copies of this node's pods and ResourceSlices (optional attribution sources).

Each index lists its objects once, then watches from the list's resourceVersion; a watch that ends is
resumed, a 410 Gone (or any other error) relists after a backoff. Lookups read the local copy only, so a
scrape never waits on the API server.

What the API server sends is not trusted further than needed: objects of another node (a server that
ignores the field selector) are dropped, and fields of an unexpected type are skipped, so a lying or broken
server can at most leave attribution incomplete, never attribute a GPU to another node's pod. The exporter needs ``list``/``watch`` on ``pods`` and
``resource.k8s.io/resourceslices``; without them the index stays empty and attribution falls back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from driver.exporter.attribution import ContainerKey
from driver.kube.client import PODS, RESOURCE_SLICES, ApiError, KubeClient, ResourceType, retry_backoff
from driver.log import get_logger

log = get_logger(__name__)

JSON = dict[str, Any]
WATCH_TIMEOUT_SECONDS = 300


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class ListWatch:
    """Objects of one type matching a field selector, kept current by list + watch."""

    def __init__(
        self,
        kube: KubeClient,
        rt: ResourceType,
        field_selector: str | None,
        on_error: Callable[[str], None] | None = None,
        keep: Callable[[Mapping[str, Any]], bool] = lambda _obj: True,
    ) -> None:
        self._kube = kube
        self._rt = rt
        self._selector = field_selector
        self._on_error = on_error
        #: Whether an object belongs here (the field selector, checked again on our side).
        self._keep = keep
        self.objects: dict[tuple[str, str], JSON] = {}
        self.synced = asyncio.Event()
        #: Bumped on every change, so derived lookups know when to rebuild.
        self.version = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch-{self._rt.plural}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                failures = 0
                while version:
                    version = await self._watch(version)
            except Exception as err:  # API errors, transport errors, 410 Gone: relist after a backoff
                if self._on_error is not None:
                    self._on_error(str(err))
                log.warning(
                    "kubernetes watch failed; relisting",
                    resource=self._rt.plural,
                    error=str(err) if isinstance(err, ApiError) else repr(err),
                )
                await retry_backoff(failures, cap=30.0)
                failures += 1

    async def _list(self) -> str:
        listed = await self._kube.list(self._rt, field_selector=self._selector)
        self.objects = {_key(obj): obj for obj in listed.get("items") or [] if self._keep(obj)}
        self.version += 1
        self.synced.set()
        return str(listed.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        """Follow one watch stream; return the resourceVersion to resume from."""
        async for event in self._kube.watch(
            self._rt,
            field_selector=self._selector,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
        ):
            version = event.object.get("metadata", {}).get("resourceVersion", version)
            if event.type in ("ADDED", "MODIFIED") and self._keep(event.object):
                self.objects[_key(event.object)] = event.object
            elif event.type == "DELETED":
                self.objects.pop(_key(event.object), None)
            else:
                continue
            self.version += 1
        return version


def on_node(node: str) -> Callable[[Mapping[str, Any]], bool]:
    """Whether an object's ``spec.nodeName`` is ``node`` (pods, ResourceSlices)."""

    def keep(obj: Mapping[str, Any]) -> bool:
        spec = obj.get("spec")
        return isinstance(spec, Mapping) and spec.get("nodeName") == node

    return keep


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _container_id(raw: str) -> str:
    """``containerd://<id>`` -> ``<id>``."""
    return raw.split("://", 1)[-1]


class PodIndex:
    """This node's pods: container ID -> (namespace, pod, container)."""

    def __init__(self, watch: ListWatch) -> None:
        self.watch = watch
        self._built_at = -1
        self._containers: dict[str, ContainerKey] = {}

    @classmethod
    def for_node(cls, kube: KubeClient, node: str, on_error: Callable[[str], None] | None = None) -> PodIndex:
        return cls(ListWatch(kube, PODS, f"spec.nodeName={node}", on_error, on_node(node)))

    @property
    def ready(self) -> bool:
        return self.watch.synced.is_set()

    def container(self, container_id: str) -> ContainerKey | None:
        if self._built_at != self.watch.version:
            self._containers = self._build()
            self._built_at = self.watch.version
        return self._containers.get(container_id)

    def phase(self, namespace: str, name: str) -> str | None:
        """The pod's ``status.phase``; ``"Gone"`` when the synced index does not have the pod (deleted);
        ``None`` before the index is synced or when the pod reports no phase."""
        if not self.ready:
            return None
        pod = self.watch.objects.get((namespace, name))
        if pod is None:
            return "Gone"
        status = pod.get("status")
        phase = status.get("phase") if isinstance(status, Mapping) else None
        return phase if isinstance(phase, str) else None

    def _build(self) -> dict[str, ContainerKey]:
        out: dict[str, ContainerKey] = {}
        for pod in self.watch.objects.values():
            meta, status = _dict(pod.get("metadata")), _dict(pod.get("status"))
            for kind in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
                for entry in _list(status.get(kind)):
                    cs = _dict(entry)
                    if _str(cs.get("containerID")):
                        out[_container_id(cs["containerID"])] = ContainerKey(
                            _str(meta.get("namespace")), _str(meta.get("name")), _str(cs.get("name"))
                        )
        return out


class SliceIndex:
    """This node's ResourceSlices, all drivers: (driver, pool, device) -> the device's JSON."""

    def __init__(self, watch: ListWatch) -> None:
        self.watch = watch
        self._built_at = -1
        self._devices: dict[tuple[str, str, str], Mapping[str, Any]] = {}

    @classmethod
    def for_node(
        cls, kube: KubeClient, node: str, on_error: Callable[[str], None] | None = None
    ) -> SliceIndex:
        return cls(ListWatch(kube, RESOURCE_SLICES, f"spec.nodeName={node}", on_error, on_node(node)))

    def device(self, driver: str, pool: str, name: str) -> Mapping[str, Any] | None:
        if self._built_at != self.watch.version:
            self._devices = self._build()
            self._built_at = self.watch.version
        return self._devices.get((driver, pool, name))

    def _build(self) -> dict[tuple[str, str, str], Mapping[str, Any]]:
        out: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        for obj in self.watch.objects.values():
            spec = _dict(obj.get("spec"))
            driver, pool = _str(spec.get("driver")), _str(_dict(spec.get("pool")).get("name"))
            for device in _list(spec.get("devices")):
                if isinstance(device, Mapping) and _str(device.get("name")):
                    out[(driver, pool, device["name"])] = device
        return out

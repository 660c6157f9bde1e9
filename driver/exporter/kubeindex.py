"""Local, watched copies of this node's pods and ResourceSlices (optional attribution sources).

Each index lists its objects once, then watches from the list's resourceVersion
(:mod:`driver.kube.listwatch`): a watch that ends is resumed, a 410 Gone relists, any other error relists
after a backoff. Lookups read the local copy only, so a
scrape never waits on the API server.

What the API server sends is not trusted further than needed: objects of another node (a server that
ignores the field selector) are dropped, and fields of an unexpected type are skipped, so a lying or broken
server can at most leave attribution incomplete, never attribute a GPU to another node's pod. The exporter needs ``list``/``watch`` on ``pods`` and
``resource.k8s.io/resourceslices``; without them the index stays empty and attribution falls back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from driver.exporter.attribution import ContainerKey
from driver.kube.client import PODS, RESOURCE_SLICES, KubeClient, ResourceType
from driver.kube.listwatch import ListWatcher
from driver.log import get_logger
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

JSON = dict[str, Any]


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class ListWatch:
    """Objects of one type matching a field selector, kept current by a
    :class:`~driver.kube.listwatch.ListWatcher`."""

    def __init__(
        self,
        kube: KubeClient,
        rt: ResourceType,
        field_selector: str | None,
        on_error: Callable[[str], None] | None = None,
        keep: Callable[[Mapping[str, Any]], bool] = lambda _obj: True,
    ) -> None:
        self._on_error = on_error
        #: Whether an object belongs here (the field selector, checked again on our side).
        self._keep = keep
        self.objects: dict[tuple[str, str], JSON] = {}
        self.synced = asyncio.Event()
        #: Bumped on every change, so derived lookups know when to rebuild.
        self.version = 0
        self._watcher = ListWatcher(
            kube,
            rt,
            on_list=self.replace,
            on_event=self.apply,
            on_error=self._failed,
            field_selector=field_selector,
            name=f"{rt.plural} (exporter index)",
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watcher.run(), name=f"watch-{self._watcher.rt.plural}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def replace(self, items: list[JSON]) -> None:
        """A fresh list: it replaces everything held."""
        self.objects = {_key(obj): obj for obj in items if self._keep(obj)}
        self.version += 1
        self.synced.set()

    def apply(self, event_type: str, obj: JSON) -> None:
        if event_type in ("ADDED", "MODIFIED") and self._keep(obj):
            self.objects[_key(obj)] = obj
        elif event_type == "DELETED":
            self.objects.pop(_key(obj), None)
        else:
            return
        self.version += 1

    def _failed(self, err: Exception) -> None:
        if self._on_error is not None:
            self._on_error(str(err) or repr(err))


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

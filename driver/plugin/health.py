"""The plugin's side of device health: taints in the slices, the kubelet health stream, clear requests.

- :class:`HealthServicer` serves ``DRAResourceHealth/NodeWatchResources`` on the DRA socket, in both versions
  the kubelet knows (``v1``, which a 1.37 kubelet prefers, and ``v1alpha1``, which 1.36 kubelets use and
  1.40 removes): the full device list at once, on every change and at least every ``interval`` seconds (the
  kubelet marks a device Unknown when it was not refreshed within ``health_check_timeout_seconds``);
- :class:`ClearWatcher` watches this node's Node object for ``clear.health.<driver>/<device>`` annotations
  (:mod:`driver.health.clearing`) and hands new requests to the monitor;
- :class:`PluginHealth` ties monitor, stream, clear requests and taint rules together for
  :class:`driver.plugin.app.Plugin`. Taint rules depend on the API server's version (``GET /version``,
  read once): the ``None`` effect only from 1.35. When the API server drops the taints the plugin
  writes (its ``DRADeviceTaints`` feature gate is off), taints are turned off after the first write, so
  the publisher does not rewrite the slices forever; health then shows only in the stream and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import grpc

from driver._proto.dra_health.v1 import api_pb2 as health_v1
from driver._proto.dra_health.v1 import api_pb2_grpc as health_v1_grpc
from driver._proto.dra_health.v1alpha1 import api_pb2 as health_v1alpha1
from driver._proto.dra_health.v1alpha1 import api_pb2_grpc as health_v1alpha1_grpc
from driver.config import PluginConfig
from driver.devices.backend import Capabilities
from driver.devices.events import HealthSource, QuietSource
from driver.devices.model import Inventory
from driver.health.clearing import clear_requests
from driver.health.monitor import HealthMonitor, MonitorSettings
from driver.health.state import DeviceHealth, HealthState, Policy
from driver.health.store import STATE_FILE_NAME
from driver.health.taints import TaintRules, device_taints
from driver.health.xid import XidPolicy
from driver.kube.client import NODES, RESOURCE_SLICES, KubeClient
from driver.kube.listwatch import ListWatcher
from driver.kube.retry import Backoff
from driver.log import get_logger
from driver.plugin.registration import HEALTH_V1, HEALTH_V1ALPHA1
from driver.plugin.server import ExtraService
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

JSON = dict[str, Any]
MAX_MESSAGE = 1024  # the kubelet keeps at most this many characters
# The enum values are the same in every version (tests/unit/plugin/test_proto_wire.py).
_STATUS = {
    "healthy": health_v1.HEALTHY,
    "unhealthy": health_v1.UNHEALTHY,
    "unknown": health_v1.UNKNOWN,
}
VERSION_TIMEOUT_SECONDS = 5.0


def truncate_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """What the kubelet would keep anyway: at most ``limit`` characters, ``...`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def watch_response(
    devices: Sequence[DeviceHealth],
    pool: str,
    timeout_seconds: int,
    now: float | None = None,
    pb: ModuleType = health_v1,
) -> Any:
    """One ``NodeWatchResourcesResponse`` of API version ``pb``: every device of the driver, not a delta."""
    stamp = int(time.time() if now is None else now)
    return pb.NodeWatchResourcesResponse(
        devices=[
            pb.DeviceHealth(
                device=pb.DeviceIdentifier(pool_name=pool, device_name=d.device),
                health=_STATUS[d.status],
                last_updated_time=stamp,
                health_check_timeout_seconds=timeout_seconds,
                message=truncate_message(d.message),
            )
            for d in devices
        ]
    )


class HealthServicer:
    """``DRAResourceHealth``: one stream per kubelet connection, woken by :meth:`changed` or the interval.

    Serves ``v1`` itself; :meth:`version` gives the same streams for another API version's module."""

    def __init__(
        self,
        devices: Callable[[], Sequence[DeviceHealth]],
        pool: str,
        *,
        interval: float = 10.0,
        timeout_seconds: int = 30,
    ) -> None:
        self._devices = devices
        self._pool = pool
        self._interval = interval
        self._timeout_seconds = timeout_seconds
        self._wakers: set[asyncio.Event] = set()

    @property
    def streams(self) -> int:
        return len(self._wakers)

    def changed(self) -> None:
        for waker in self._wakers:
            waker.set()

    async def NodeWatchResources(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self.stream(health_v1, HEALTH_V1):
            yield response

    def version(self, pb: ModuleType, service: str) -> VersionedHealthServicer:
        return VersionedHealthServicer(self, pb, service)

    async def stream(self, pb: ModuleType, service: str) -> AsyncIterator[Any]:
        waker = asyncio.Event()
        self._wakers.add(waker)
        log.info("kubelet health stream opened", pool=self._pool, service=service)
        try:
            while True:
                waker.clear()
                yield watch_response(self._devices(), self._pool, self._timeout_seconds, pb=pb)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), self._interval)
        finally:
            self._wakers.discard(waker)
            log.info("kubelet health stream closed", pool=self._pool, service=service)


class VersionedHealthServicer:
    """The streams of a :class:`HealthServicer` in another API version (``v1alpha1``)."""

    def __init__(self, core: HealthServicer, pb: ModuleType, service: str) -> None:
        self._core = core
        self._pb = pb
        self._service = service

    async def NodeWatchResources(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self._core.stream(self._pb, self._service):
            yield response


class ClearWatcher:
    """Watches this node's Node object and passes clear requests to ``on_request(device, request_id)``."""

    def __init__(
        self,
        kube: KubeClient,
        node: str,
        driver: str,
        on_request: Callable[[str, str], bool],
        max_backoff: float = 30.0,
    ) -> None:
        self._kube = kube
        self._node = node
        self._driver = driver
        self._on_request = on_request
        self._max_backoff = max_backoff

    def _handle(self, node: Mapping[str, Any]) -> None:
        annotations = (node.get("metadata") or {}).get("annotations")
        for device, request in sorted(clear_requests(annotations, self._driver).items()):
            self._on_request(device, request)

    def _listed(self, nodes: list[JSON]) -> None:
        for node in nodes:
            self._handle(node)

    def _changed(self, event_type: str, node: JSON) -> None:
        if event_type in ("ADDED", "MODIFIED"):
            self._handle(node)

    async def run(self) -> None:
        await ListWatcher(
            self._kube,
            NODES,
            on_list=self._listed,
            on_event=self._changed,
            field_selector=f"metadata.name={self._node}",
            backoff=Backoff(base=0.2, cap=self._max_backoff, jitter=0.5),
            name="node (health clear requests)",
        ).run()


async def taint_rules(kube: KubeClient) -> TaintRules:
    """The rules of the API server's version (``GET /version``)."""
    return TaintRules.from_version_info(await kube.server_version())


async def taints_kept(kube: KubeClient, driver: str, node: str, desired: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the published slices hold the taints of ``desired`` (the server drops them when its
    ``DRADeviceTaints`` feature gate is off)."""
    wanted = {d["name"]: len(d.get("taints") or []) for d in desired if d.get("taints")}
    if not wanted:
        return True
    listed = await kube.list(RESOURCE_SLICES, field_selector=f"spec.driver={driver},spec.nodeName={node}")
    held = {
        d.get("name"): len(d.get("taints") or [])
        for s in listed.get("items") or []
        for d in (s.get("spec") or {}).get("devices") or []
    }
    return all(held.get(name, 0) >= count for name, count in wanted.items())


def health_source(caps: Capabilities, inventory: Inventory) -> HealthSource:
    if caps.health is not None:
        return caps.health.health_source(inventory)
    log.warning("device backend cannot report health events; only probes run")
    return QuietSource()


class PluginHealth:
    """Device health inside the plugin process."""

    def __init__(
        self,
        *,
        config: PluginConfig,
        kube: KubeClient,
        inventory: Inventory,
        source: HealthSource,
        on_change: Callable[[], None],
        wait_synced: Callable[[], Awaitable[None]],
    ) -> None:
        self.config = config
        self.kube = kube
        self.inventory = inventory
        self.policy = Policy(
            xids=XidPolicy.build(config.health_ignore_xids, config.health_fatal_xids),
            recovery=config.health_recovery,
            recovery_probes=config.health_recovery_probes,
        )
        self.monitor = HealthMonitor(
            inventory,
            source,
            self.policy,
            os.path.join(config.plugin_dir, STATE_FILE_NAME),
            settings=MonitorSettings(
                probe_interval=config.health_probe_interval, probe_timeout=config.health_probe_timeout
            ),
            on_change=self._changed,
        )
        self.servicer = HealthServicer(
            self.monitor.devices,
            config.node_name,
            interval=config.health_stream_interval,
            timeout_seconds=config.health_stream_timeout,
        )
        self.rules = TaintRules()  # 1.34's, until the server says more is allowed
        self.taints_enabled = config.health_taints
        self._on_change = on_change
        self._wait_synced = wait_synced
        self._taints_checked = False
        self._check_taints = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def create(
        cls,
        config: PluginConfig,
        kube: KubeClient,
        caps: Capabilities,
        inventory: Inventory,
        *,
        on_change: Callable[[], None],
        wait_synced: Callable[[], Awaitable[None]],
    ) -> PluginHealth:
        source = health_source(caps, inventory)
        return cls(
            config=config,
            kube=kube,
            inventory=inventory,
            source=source,
            on_change=on_change,
            wait_synced=wait_synced,
        )

    def extra_services(self) -> list[ExtraService]:
        """The health service in both versions: a 1.37 kubelet opens the newest it knows (v1), a 1.36
        kubelet always v1alpha1."""
        return [
            ExtraService(health_v1_grpc.add_DRAResourceHealthServicer_to_server, self.servicer, HEALTH_V1),
            ExtraService(
                health_v1alpha1_grpc.add_DRAResourceHealthServicer_to_server,
                self.servicer.version(health_v1alpha1, HEALTH_V1ALPHA1),
                HEALTH_V1ALPHA1,
            ),
        ]

    # -- taints ----------------------------------------------------------------------------------------

    def taints(self, device: str) -> list[JSON]:
        found = self.inventory.device(device)
        if found is None or not self.taints_enabled:
            return []
        return device_taints(self.monitor.device(found), self.config.driver_name, self.rules)

    def with_taints(self, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """ResourceSlice device entries with their health taints added (entries are not modified)."""
        out: list[dict[str, Any]] = []
        for entry in entries:
            taints = self.taints(str(entry["name"]))
            out.append({**entry, "taints": taints} if taints else dict(entry))
        return out

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the taint rules, load the persisted state and start watching, before the first publish."""
        try:
            self.rules = await asyncio.wait_for(taint_rules(self.kube), VERSION_TIMEOUT_SECONDS)
        except Exception as err:
            log.warning("API server version unknown; using Kubernetes 1.34 taint rules", error=str(err))
            self._tasks.append(asyncio.create_task(self._learn_rules(), name="health-taint-rules"))
        await self.monitor.start()
        self._tasks.append(
            asyncio.create_task(
                ClearWatcher(
                    self.kube, self.config.node_name, self.config.driver_name, self.monitor.clear
                ).run(),
                name="health-clear-requests",
            )
        )
        self._tasks.append(asyncio.create_task(self._guard_taints(), name="health-taint-guard"))
        self._check_taints.set()
        log.info(
            "device health monitoring running",
            none_effect=self.rules.allow_none_effect,
            recovery=self.policy.recovery,
            unhealthy=[d.device for d in self.monitor.devices() if d.status == "unhealthy"],
        )

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        await self.monitor.stop()

    def _changed(self, state: HealthState) -> None:
        self.servicer.changed()
        self._check_taints.set()
        self._on_change()

    async def _learn_rules(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(min(60.0, 2.0 * attempt))
            try:
                rules = await taint_rules(self.kube)
            except Exception as err:
                log.debug("API server version still unknown", error=str(err))
                continue
            if rules != self.rules:
                self.rules = rules
                log.info("taint rules from the API server version", none_effect=rules.allow_none_effect)
                self._on_change()
            return

    async def _guard_taints(self) -> None:
        """After the first publish with taints, check that the API server kept them."""
        while not self._taints_checked and self.taints_enabled:
            await self._check_taints.wait()
            self._check_taints.clear()
            desired = [
                {"name": d.name, "taints": t} for d in self.inventory.devices if (t := self.taints(d.name))
            ]
            if not desired:
                continue
            await self._wait_synced()
            try:
                kept = await taints_kept(self.kube, self.config.driver_name, self.config.node_name, desired)
            except Exception as err:
                log.warning("cannot check published taints", error=str(err))
                self._check_taints.set()
                await asyncio.sleep(5.0)
                continue
            self._taints_checked = True
            if not kept:
                self.taints_enabled = False
                log.error(
                    "the API server dropped the device taints (is the DRADeviceTaints feature gate on?); "
                    "publishing without taints, health shows in the kubelet stream and metrics only"
                )
                self._on_change()

"""A kubelet emulator for the DRA side of the kubelet: plugin registration and prepare/unprepare.

It follows the kubelet's plugin watcher and DRA plugin manager (Kubernetes 1.34 to 1.37):

* it walks the registry directory at start and then watches it, subdirectories included; names starting
  with ``.`` and anything that is not a socket are ignored; a socket that disappears deregisters its
  plugin, a socket replaced in place is deregistered and registered again;
* registration: dial the socket, ``GetInfo`` (1 s timeout), reject an unknown plugin type, an empty
  version list or a list with nothing the kubelet knows (it takes the *first* entry of the plugin's list
  that it knows), reject an endpoint already registered for that driver, connect the DRA endpoint
  (the registration socket itself when ``endpoint`` is empty), then ``NotifyRegistrationStatus``;
* several instances of one driver may be registered at once (rolling update); calls go to the most
  recently registered instance that is connected, else the most recent one;
* prepare/unprepare judge responses as the kubelet does: a gRPC error, a result for a claim UID that was
  not asked for, a missing entry or a per-claim error all fail the call (45 s timeout per call);
* a failed registration is retried with exponential backoff (0.5 s doubling up to about 2 min);
* with an API client it registers its Node object (when missing) and wipes ResourceSlices as the kubelet
  does: all of the node's slices at start, and a driver's slices on the node 30 s after no instance of it
  is connected any more -- deregistered, or its DRA gRPC connection lost while the sockets stay (a killed
  plugin) -- cancelled when an instance (re)connects. The connection state is followed through the gRPC
  channel's state changes, and a lost connection is dialled again;
* with the ``ResourceHealthStatus`` gate (``resource_health_status``, on here), after registering a plugin
  that advertises ``DRAResourceHealth`` it opens ``NodeWatchResources`` on the DRA connection -- in the
  newest version both know, as a 1.37 kubelet does (``known_health_versions``: v1, then v1alpha1; a 1.36
  kubelet knows only v1alpha1) -- and
  keeps per-device health stamped with the receive time; a device not refreshed within its
  ``health_check_timeout_seconds`` (30 s when unset) is Unknown; when the stream ends the driver's health is
  cleared (all Unknown) and the stream is opened again every 5 s. Listeners hear of every change.

The directory is polled (50 ms by default) where the real kubelet uses inotify; only the latency differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc

from driver import __version__
from driver._proto.dra.v1 import api_pb2 as dra_v1
from driver._proto.dra.v1 import api_pb2_grpc as dra_v1_grpc
from driver._proto.dra.v1beta1 import api_pb2 as dra_v1beta1
from driver._proto.dra.v1beta1 import api_pb2_grpc as dra_v1beta1_grpc
from driver._proto.dra_health.v1 import api_pb2 as health_v1
from driver._proto.dra_health.v1 import api_pb2_grpc as health_v1_grpc
from driver._proto.dra_health.v1alpha1 import api_pb2 as health_v1alpha1
from driver._proto.dra_health.v1alpha1 import api_pb2_grpc as health_v1alpha1_grpc
from driver._proto.pluginregistration.v1 import api_pb2 as reg_pb
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver.kube.client import NODES, RESOURCE_SLICES, ApiError, KubeClient
from driver.log import get_logger
from driver.sim import timestamps
from driver.sim.discovery import KUBERNETES_VERSION
from driver.state.api import ClaimRef, PreparedDevice
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

DRA_PLUGIN_TYPE = "DRAPlugin"
GET_INFO_TIMEOUT = 1.0
# The kubelet retries a failed registration with exponential backoff (its operation executor's policy).
RETRY_INITIAL = 0.5
RETRY_MAX = 122.0
NOTIFY_TIMEOUT = 5.0
DEFAULT_CALL_TIMEOUT = 45.0
DEFAULT_WIPING_DELAY = 30.0
DEFAULT_HEALTH_TIMEOUT = 30.0  # the kubelet's DefaultHealthTimeout
HEALTH_RETRY_INTERVAL = 5.0
_HEALTH_NAMES = {health_v1.HEALTHY: "Healthy", health_v1.UNHEALTHY: "Unhealthy"}  # equal in both versions

# Advertised version -> (generated messages, generated stubs) the kubelet speaks for it, in its preference.
SERVICES: dict[str, tuple[ModuleType, ModuleType]] = {
    "v1.DRAPlugin": (dra_v1, dra_v1_grpc),
    "v1beta1.DRAPlugin": (dra_v1beta1, dra_v1beta1_grpc),
}
# The same for the health service, newest first (the 1.37 kubelet's healthServicesSupportedByKubelet).
HEALTH_SERVICES: dict[str, tuple[ModuleType, ModuleType]] = {
    "v1.DRAResourceHealth": (health_v1, health_v1_grpc),
    "v1alpha1.DRAResourceHealth": (health_v1alpha1, health_v1alpha1_grpc),
}


_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def node_object(name: str, kubelet_version: str) -> dict[str, Any]:
    """The Node a kubelet registers: labels, a Ready condition and ``status.nodeInfo`` (this machine's OS
    and kernel; the sandbox's runtime)."""
    now = timestamps.now()
    machine = platform.machine()
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": _ARCHITECTURES.get(machine, machine),
            },
        },
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "architecture": _ARCHITECTURES.get(machine, machine),
                "operatingSystem": "linux",
                "kernelVersion": platform.release(),
                "osImage": "accel-dra sandbox",
                "containerRuntimeVersion": f"accel-dra-sandbox://{__version__}",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


class KubeletError(Exception):
    """What the kubelet would report for a failed DRA call (the pod stays in ContainerCreating)."""


@dataclass
class PluginInstance:
    driver: str
    endpoint: str
    registration_socket: str
    version: str
    supported_versions: list[str]
    channel: grpc.aio.Channel
    sequence: int
    ready: bool = False  # the DRA connection is up (as last seen by the connection monitor)
    #: The health service version chosen at registration; None when the plugin offers none we know.
    health_version: str | None = None

    @property
    def messages(self) -> ModuleType:
        return SERVICES[self.version][0]

    def stub(self) -> Any:
        return SERVICES[self.version][1].DRAPluginStub(self.channel)

    def connected(self) -> bool:
        return bool(self.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY)


@dataclass(frozen=True)
class RegistrationRecord:
    socket: str
    driver: str
    accepted: bool
    error: str = ""


@dataclass(frozen=True)
class DeviceHealthRecord:
    """The last report for one device, stamped with the receive time (the kubelet ignores the plugin's)."""

    health: str  # Healthy | Unhealthy | Unknown
    received: float  # event-loop time
    timeout: float
    message: str = ""


@dataclass
class _Watched:
    identity: tuple[int, int]  # (inode, mtime_ns): a re-created socket may reuse the inode
    instance: PluginInstance | None = None
    failures: int = 0
    retry_at: float = 0.0


@dataclass
class SimKubelet:
    registry_dir: str
    known_versions: Sequence[str] = tuple(SERVICES)
    known_health_versions: Sequence[str] = tuple(HEALTH_SERVICES)
    poll_interval: float = 0.05
    call_timeout: float = DEFAULT_CALL_TIMEOUT
    kube: KubeClient | None = None
    node_name: str = ""
    wiping_delay: float = DEFAULT_WIPING_DELAY
    resource_health_status: bool = True
    health_retry_interval: float = HEALTH_RETRY_INTERVAL
    #: What the Node's ``status.nodeInfo.kubeletVersion`` says.
    kubelet_version: str = KUBERNETES_VERSION
    records: list[RegistrationRecord] = field(default_factory=list)
    #: Called with the driver name whenever a device of that driver changes health.
    health_listeners: list[Callable[[str], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = (set(self.known_versions) - set(SERVICES)) | (
            set(self.known_health_versions) - set(HEALTH_SERVICES)
        )
        if unknown:
            raise ValueError(f"the emulator cannot speak {sorted(unknown)}")
        self._watched: dict[str, _Watched] = {}
        self._changed = asyncio.Condition()
        self._sequence = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._wipers: dict[str, asyncio.Task[None]] = {}
        self._health: dict[str, dict[tuple[str, str], DeviceHealthRecord]] = {}
        self._health_shown: dict[str, dict[tuple[str, str], tuple[str, str]]] = {}
        self._health_streams: dict[str, asyncio.Task[None]] = {}
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._notifying: set[asyncio.Task[None]] = set()
        if self.kube is not None and not self.node_name:
            raise ValueError("slice wiping needs the node name")

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.registry_dir, exist_ok=True)
        if self.kube is not None:
            await self._register_node()
            await self.kube.delete_collection(
                RESOURCE_SLICES, field_selector=f"spec.nodeName={self.node_name}"
            )
        await self._scan()
        self._task = asyncio.create_task(self._watch(), name="sim-kubelet-plugin-watcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for path in list(self._watched):
            await self._deregister(path)
        for wiper in self._wipers.values():
            wiper.cancel()
        self._wipers.clear()

    async def __aenter__(self) -> SimKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- registry watching -----------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._scan()
            except Exception:
                log.exception("registry scan failed", dir=self.registry_dir)

    def _sockets(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for root, dirs, files in os.walk(self.registry_dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(path)
                    if stat.S_ISSOCK(st.st_mode):
                        found[path] = (st.st_ino, st.st_mtime_ns)
        return found

    async def _scan(self) -> None:
        current = self._sockets()
        for path, watched in list(self._watched.items()):
            if current.get(path) != watched.identity:
                await self._deregister(path)
        now = asyncio.get_running_loop().time()
        for path, identity in current.items():
            watched = self._watched.setdefault(path, _Watched(identity))
            if watched.instance is None and now >= watched.retry_at:
                await self._register(path)
                if watched.instance is None:
                    watched.failures += 1
                    watched.retry_at = now + min(RETRY_MAX, RETRY_INITIAL * 2 ** (watched.failures - 1))

    # -- registration ----------------------------------------------------------------------------

    async def _register(self, socket_path: str) -> None:
        channel = grpc.aio.insecure_channel(f"unix://{socket_path}")
        try:
            stub = reg_grpc.RegistrationStub(channel)
            info = await stub.GetInfo(reg_pb.InfoRequest(), timeout=GET_INFO_TIMEOUT)
            driver = info.name
            try:
                instance = await self._validate_and_connect(socket_path, info)
            except KubeletError as err:
                await self._record(RegistrationRecord(socket_path, driver, False, str(err)))
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.NotifyRegistrationStatus(
                        reg_pb.RegistrationStatus(plugin_registered=False, error=str(err)),
                        timeout=NOTIFY_TIMEOUT,
                    )
                return
            self._watched[socket_path].instance = instance
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.NotifyRegistrationStatus(
                    reg_pb.RegistrationStatus(plugin_registered=True), timeout=NOTIFY_TIMEOUT
                )
            log.info("plugin registered", driver=driver, endpoint=instance.endpoint, version=instance.version)
            if self.resource_health_status and instance.health_version is not None:
                self._health_streams[socket_path] = asyncio.create_task(
                    self._watch_health(instance), name=f"health-{driver}"
                )
            # Started last: its first state report must not wake waiters before the registration is recorded.
            self._monitors[socket_path] = asyncio.create_task(
                self._monitor_connection(instance), name=f"connection-{driver}"
            )
            await self._record(RegistrationRecord(socket_path, driver, True))
        except grpc.aio.AioRpcError as err:
            await self._record(RegistrationRecord(socket_path, "", False, f"GetInfo failed: {err.details()}"))
        finally:
            await channel.close()

    async def _validate_and_connect(self, socket_path: str, info: Any) -> PluginInstance:
        if info.type != DRA_PLUGIN_TYPE:
            raise KubeletError(f"no handler registered for plugin type: {info.type} at socket {socket_path}")
        if not info.name:
            raise KubeletError("plugin name is empty")
        versions = list(info.supported_versions)
        if not versions:
            raise KubeletError(f"plugin {info.name}: empty list for supported versions")
        chosen = next((v for v in versions if v in self.known_versions), None)
        if chosen is None:
            raise KubeletError(
                f"plugin {info.name}: none of the versions supported by the plugin {versions}"
                f" are supported by the kubelet {list(self.known_versions)}"
            )
        endpoint = info.endpoint or socket_path
        if any(i.endpoint == endpoint for i in self.instances(info.name)):
            raise KubeletError(f"plugin {info.name}: endpoint {endpoint} is already registered")
        channel = grpc.aio.insecure_channel(f"unix://{endpoint}")
        channel.get_state(try_to_connect=True)
        return PluginInstance(
            driver=info.name,
            endpoint=endpoint,
            registration_socket=socket_path,
            version=chosen,
            supported_versions=versions,
            channel=channel,
            sequence=next(self._sequence),
            health_version=next((v for v in self.known_health_versions if v in versions), None),
        )

    async def _deregister(self, socket_path: str) -> None:
        # Called from the registry watcher too: a stop that comes meanwhile must still end the watcher.
        await cancel_and_wait(
            self._health_streams.pop(socket_path, None), self._monitors.pop(socket_path, None)
        )
        watched = self._watched.pop(socket_path, None)
        if watched and watched.instance:
            driver = watched.instance.driver
            log.info("plugin deregistered", driver=driver, endpoint=watched.instance.endpoint)
            await watched.instance.channel.close()
            self._sync_wiping(driver)
        async with self._changed:
            self._changed.notify_all()

    async def _record(self, record: RegistrationRecord) -> None:
        self.records.append(record)
        async with self._changed:
            self._changed.notify_all()

    async def _register_node(self) -> None:
        assert self.kube is not None
        try:
            await self.kube.get(NODES, self.node_name)
        except ApiError as err:
            if not err.not_found:
                raise
            await self.kube.create(NODES, node_object(self.node_name, self.kubelet_version))

    # -- ResourceSlice wiping ----------------------------------------------------------------------

    async def _monitor_connection(self, instance: PluginInstance) -> None:
        """Follow the DRA connection of one instance (the kubelet's connection stats handler): whenever it
        changes, wipe the driver's slices later if no instance is connected, or cancel that on reconnect."""
        channel = instance.channel
        state = channel.get_state(try_to_connect=True)
        while True:
            up = state == grpc.ChannelConnectivity.READY
            if up != instance.ready:
                instance.ready = up
                log.info(
                    "DRA connection up" if up else "DRA connection down",
                    driver=instance.driver,
                    endpoint=instance.endpoint,
                    state=state.name,
                )
                await self._notify()
            self._sync_wiping(instance.driver)
            await channel.wait_for_state_change(state)
            # An idle channel does not dial again by itself; the kubelet keeps reconnecting.
            state = channel.get_state(try_to_connect=True)

    def _sync_wiping(self, driver: str) -> None:
        if any(i.ready for i in self.instances(driver)):
            self._cancel_wiping(driver)
        else:
            self._schedule_wiping(driver)

    def _schedule_wiping(self, driver: str) -> None:
        if self.kube is None or driver in self._wipers:
            return
        self._wipers[driver] = asyncio.create_task(self._wipe_later(driver), name=f"wipe-{driver}")

    def _cancel_wiping(self, driver: str) -> None:
        wiper = self._wipers.pop(driver, None)
        if wiper is not None:
            wiper.cancel()

    async def _wipe_later(self, driver: str) -> None:
        assert self.kube is not None
        await asyncio.sleep(self.wiping_delay)
        self._wipers.pop(driver, None)
        selector = f"spec.nodeName={self.node_name},spec.driver={driver}"
        log.info("wiping ResourceSlices of unregistered driver", driver=driver, node=self.node_name)
        try:
            await self.kube.delete_collection(RESOURCE_SLICES, field_selector=selector)
        except Exception:
            log.exception("wiping ResourceSlices failed", driver=driver)

    # -- device health (KEP-4680) ---------------------------------------------------------------

    async def _watch_health(self, instance: PluginInstance) -> None:
        """Consume the plugin's health stream; on its end clear the driver's health and retry."""
        driver = instance.driver
        assert instance.health_version is not None
        messages, stubs = HEALTH_SERVICES[instance.health_version]
        log.info("opening health stream", driver=driver, service=instance.health_version)
        while True:
            call = stubs.DRAResourceHealthStub(instance.channel).NodeWatchResources(
                messages.NodeWatchResourcesRequest()
            )
            try:
                async for response in call:
                    self._receive_health(driver, response)
                log.info("health stream ended", driver=driver)
            except grpc.aio.AioRpcError as err:
                log.info("health stream failed", driver=driver, code=err.code().name, error=err.details())
            finally:
                # On every exit, deregistration (cancellation) included: nothing vouches for these devices.
                call.cancel()
                self._health.pop(driver, None)
                self._health_changed(driver)
            await asyncio.sleep(self.health_retry_interval)

    def _receive_health(self, driver: str, response: Any) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        records = self._health.setdefault(driver, {})
        timeouts: set[float] = set()
        for entry in response.devices:
            seconds = entry.health_check_timeout_seconds
            timeout = float(seconds) if seconds > 0 else DEFAULT_HEALTH_TIMEOUT
            timeouts.add(timeout)
            key = (entry.device.pool_name, entry.device.device_name)
            records[key] = DeviceHealthRecord(
                _HEALTH_NAMES.get(entry.health, "Unknown"), now, timeout, entry.message
            )
        for timeout in timeouts:
            # Re-evaluate once these reports go stale (they may have been refreshed by then).
            loop.call_later(timeout + 0.01, self._health_changed, driver)
        self._health_changed(driver)

    def device_health(self, driver: str, pool: str, device: str) -> str:
        """``Healthy``, ``Unhealthy`` or ``Unknown`` (never reported, stale, or the stream ended)."""
        record = self._health.get(driver, {}).get((pool, device))
        if record is None:
            return "Unknown"
        if asyncio.get_running_loop().time() - record.received >= record.timeout:
            return "Unknown"
        return record.health

    def health_record(self, driver: str, pool: str, device: str) -> DeviceHealthRecord | None:
        return self._health.get(driver, {}).get((pool, device))

    def _health_changed(self, driver: str) -> None:
        keys = set(self._health.get(driver, {})) | set(self._health_shown.get(driver, {}))
        shown = {
            key: (
                self.device_health(driver, *key),
                (r.message if (r := self.health_record(driver, *key)) else ""),
            )
            for key in keys
        }
        if shown == self._health_shown.get(driver):
            return
        self._health_shown[driver] = shown
        for listener in self.health_listeners:
            listener(driver)
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifying.add(task)  # keep a reference until it ran
        task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- queries ---------------------------------------------------------------------------------

    def instances(self, driver: str) -> list[PluginInstance]:
        found = [w.instance for w in self._watched.values() if w.instance and w.instance.driver == driver]
        return sorted(found, key=lambda i: i.sequence)

    def pick(self, driver: str) -> PluginInstance:
        instances = self.instances(driver)
        if not instances:
            raise KubeletError(f"DRA driver {driver} is not registered")
        connected = [i for i in instances if i.connected()]
        return (connected or instances)[-1]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds, re-checking after every registration change."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_registered(
        self, driver: str, count: int = 1, timeout: float = 10.0
    ) -> list[PluginInstance]:
        await self.wait_for(lambda k: len(k.instances(driver)) >= count, timeout)
        return self.instances(driver)

    # -- DRA calls -------------------------------------------------------------------------------

    async def prepare(self, driver: str, claims: Sequence[ClaimRef]) -> dict[str, list[PreparedDevice]]:
        """NodePrepareResources as the kubelet calls and judges it; returns devices per claim UID."""
        instance = self.pick(driver)
        pb = instance.messages
        request = pb.NodePrepareResourcesRequest(
            claims=[pb.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]
        )
        try:
            response = await instance.stub().NodePrepareResources(request, timeout=self.call_timeout)
        except grpc.aio.AioRpcError as err:
            raise KubeletError(f"NodePrepareResources: {err.code().name}: {err.details()}") from err
        _check_keys("NodePrepareResources", claims, response.claims)
        out: dict[str, list[PreparedDevice]] = {}
        for claim in claims:
            entry = response.claims[claim.uid]
            if entry.error:
                raise KubeletError(
                    f"NodePrepareResources failed for ResourceClaim {claim.name}: {entry.error}"
                )
            out[claim.uid] = [_device(d) for d in entry.devices]
        return out

    async def unprepare(self, driver: str, claims: Sequence[ClaimRef]) -> None:
        instance = self.pick(driver)
        pb = instance.messages
        request = pb.NodeUnprepareResourcesRequest(
            claims=[pb.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]
        )
        try:
            response = await instance.stub().NodeUnprepareResources(request, timeout=self.call_timeout)
        except grpc.aio.AioRpcError as err:
            raise KubeletError(f"NodeUnprepareResources: {err.code().name}: {err.details()}") from err
        _check_keys("NodeUnprepareResources", claims, response.claims)
        for claim in claims:
            error = response.claims[claim.uid].error
            if error:
                raise KubeletError(f"NodeUnprepareResources failed for ResourceClaim {claim.name}: {error}")


def _check_keys(call: str, claims: Sequence[ClaimRef], answered: Any) -> None:
    asked = {c.uid for c in claims}
    unknown = [uid for uid in answered if uid not in asked]
    if unknown:
        raise KubeletError(f"{call} returned result for unknown claim UID {unknown[0]}")
    skipped = len(asked) - len(set(answered))
    if skipped:
        raise KubeletError(f"{call} skipped {skipped} ResourceClaims")


def _device(d: Any) -> PreparedDevice:
    share_id = d.share_id if "share_id" in d.DESCRIPTOR.fields_by_name and d.HasField("share_id") else None
    return PreparedDevice(
        request_names=tuple(d.request_names),
        pool_name=d.pool_name,
        device_name=d.device_name,
        cdi_device_ids=tuple(d.cdi_device_ids),
        share_id=share_id,
    )

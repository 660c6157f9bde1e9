"""``accel-dra plugin``: wires the kubelet plugin together and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from contextlib import AbstractContextManager

from driver.config import PluginConfig
from driver.devices.backend import BackendError, DeviceBackend, backend_options, capabilities, open_backend
from driver.devices.migmode import apply_mig_modes
from driver.flags import ConfigError
from driver.kube.client import KubeClient
from driver.kube.connection import KubeConfigError
from driver.log import get_logger, setup
from driver.plugin.health import PluginHealth
from driver.plugin.metrics import PluginMetrics
from driver.plugin.node_service import KubeClaimSource, NodeService
from driver.plugin.paths import dra_socket_path, registration_socket_path
from driver.plugin.preparer import make_preparer
from driver.plugin.server import PluginServer
from driver.resources.apiprobe import supported
from driver.resources.counters import counter_sets
from driver.resources.publisher import SlicePublisher
from driver.resources.publishing import PublishOptions, publish_entries, shared_gpus
from driver.state.lock import LOCK_FILE_NAME, NodeLock
from driver.state.prepare import NodePreparer
from driver.state.sweeper import ClaimSweeper
from driver.tasks import cancel_and_wait

log = get_logger(__name__)

STOP_GRACE_SECONDS = 0.5
#: The plugin's own umask: nothing it creates (the CDI directory and its parents, state files, sockets) is
#: writable by other users, whatever umask it inherited. Files and sockets get tighter modes of their own.
UMASK = 0o022


class Plugin:
    """Everything one plugin process runs, started and stopped in dependency order."""

    def __init__(self, config: PluginConfig, kube: KubeClient, backend: DeviceBackend) -> None:
        self.config = config
        self.kube = kube
        self.backend = backend
        self.caps = capabilities(backend)
        # Each GPU as its MIG mode says: dynamic ones offer every MIG (profile, placement).
        self.inventory = apply_mig_modes(backend.discover(), config.mig_modes)
        self.options = PublishOptions(
            list_attributes=config.list_attributes,
            host_memory_per_pod=config.host_memory_per_pod,
            shared=shared_gpus(config.shared_gpus, config.share_memory_step, self.inventory),
        )
        self.metrics = PluginMetrics(config.driver_name) if config.metrics_listen else None
        self.publisher = SlicePublisher(
            kube,
            driver=config.driver_name,
            node=config.node_name,
            on_write=self.metrics.slice_write if self.metrics else None,
            on_error=self.metrics.api_error if self.metrics else None,
        )
        self._publishing: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        os.makedirs(config.plugin_dir, mode=0o750, exist_ok=True)
        self.lock = NodeLock(os.path.join(config.plugin_dir, LOCK_FILE_NAME))
        self.preparer = self._make_preparer(self.lock)
        claims = KubeClaimSource(kube, on_error=self.metrics.api_error if self.metrics else None)
        self.sweeper = ClaimSweeper(self.preparer, claims, config.sweep_interval)
        self.node = NodeService(claims, self.preparer, self.lock, config.driver_name)
        self.health = (
            PluginHealth.create(
                config,
                kube,
                self.caps,
                self.inventory,
                on_change=self._republish,
                wait_synced=self.publisher.wait_synced,
            )
            if config.health
            else None
        )
        self.server = PluginServer(
            driver_name=config.driver_name,
            dra_socket=dra_socket_path(config.plugin_dir, config.driver_name, config.pod_uid),
            registration_socket=registration_socket_path(
                config.registry_dir, config.driver_name, config.pod_uid
            ),
            node=self.node,
            extra_services=self.health.extra_services() if self.health else [],
            metrics=_PreparedDevicesGauge(self.metrics, self.preparer) if self.metrics else None,
        )

    def _make_preparer(self, lock: NodeLock) -> NodePreparer:
        return make_preparer(self.config, self.caps, self.inventory, self.kube, lock)

    def desired_devices(self) -> list[dict[str, object]]:
        devices = publish_entries(
            self.inventory.devices, self.inventory, self.config.driver_name, self.options
        )
        return self.health.with_taints(devices) if self.health else list(devices)

    def _republish(self) -> None:
        """Device health changed: one new desired state, so one slice update."""
        self.publisher.set_devices(self.desired_devices(), counter_sets(self.inventory))

    async def start(self) -> None:
        if self.metrics is not None:
            await self.metrics.start(self.config.metrics_listen)
        # Persisted health first, so a tainted device is never published untainted after a restart.
        if self.health is not None:
            await self.health.start()
        # Publishing next: the scheduler can place pods while the sockets come up. Alpha fields only where
        # the API server keeps them.
        self.options = await supported(
            self.kube, self.config.driver_name, self.config.node_name, self.options
        )
        self.publisher.set_devices(self.desired_devices(), counter_sets(self.inventory))
        self._publishing = asyncio.create_task(self.publisher.run(), name="slice-publisher")
        # Crash and reboot leftovers are settled before the kubelet can call.
        await self.preparer.start()
        if self.metrics is not None:
            self.metrics.set_prepared_devices(self.preparer.prepared_device_count())
        await self.server.start()
        self._sweeping = asyncio.create_task(self.sweeper.run(), name="claim-sweeper")

    async def stop(self) -> None:
        # Slices stay published: a restarting or upgraded instance takes them over, and the kubelet
        # removes them if no instance comes back.
        await self.server.stop(STOP_GRACE_SECONDS)
        if self.health is not None:
            await self.health.stop()
        for task in (self._sweeping, self._publishing):
            if task is not None:
                await _cancelled(task)
        # Calls cut off by the stop are still finishing their node-state work: let them, so no thread is
        # left writing the checkpoint after the lock's owner is gone.
        await self.lock.wait_idle()
        await self.preparer.close()
        if self.metrics is not None:
            await self.metrics.stop()


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel a background loop and wait for it; a loop that died of an error is logged, not re-raised,
    so a clean stop still exits 0."""
    try:
        await cancel_and_wait(task)
    except Exception:
        log.exception("background task had failed", task=task.get_name())


class _PreparedDevicesGauge:
    """Operation metrics that also refresh the prepared-devices gauge after every call.

    The count is what the preparer last read or wrote under the node lock: the gauge never touches the
    checkpoint file itself (loading it can rebuild or rewrite it, which only a lock holder may do).
    """

    def __init__(self, metrics: PluginMetrics, preparer: NodePreparer) -> None:
        self._metrics = metrics
        self._preparer = preparer

    def in_flight(self, operation: str) -> AbstractContextManager[None]:
        return self._metrics.in_flight(operation)

    def observe(self, operation: str, result: str, seconds: float) -> None:
        self._metrics.observe(operation, result, seconds)
        self._metrics.set_prepared_devices(self._preparer.prepared_device_count())


async def serve(config: PluginConfig, backend: DeviceBackend) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kube = await KubeClient.connect(config.kubeconfig)
    try:
        plugin = Plugin(config, kube, backend)
        await plugin.start()
        log.info(
            "plugin running",
            driver=config.driver_name,
            node=config.node_name,
            dra_socket=plugin.server.dra_socket,
            registration_socket=plugin.server.registration_socket,
        )
        try:
            await stop.wait()
            log.info("stopping on signal")
        finally:
            await plugin.stop()
    finally:
        with contextlib.suppress(Exception):
            await kube.close()
    return 0


def run(args: argparse.Namespace) -> int:
    os.umask(UMASK)
    setup(args.log_level, args.log_format)
    try:
        config = PluginConfig.from_args(args)
    except ConfigError as err:
        log.error("invalid configuration", error=str(err))
        return 2
    try:
        backend = open_backend(config.backend, **plugin_backend_options(config))
    except BackendError as err:
        log.error("cannot open device backend", backend=config.backend, error=str(err))
        return 1
    try:
        return asyncio.run(serve(config, backend))
    except BackendError as err:
        log.error("device discovery failed", backend=config.backend, error=str(err))
        return 1
    except KubeConfigError as err:
        log.error("cannot reach the API server", error=str(err))
        return 1
    finally:
        backend.close()


def plugin_backend_options(config: PluginConfig) -> dict[str, object]:
    return backend_options(
        config.backend,
        node_name=config.node_name,
        state_dir=config.fake_state_dir,
        driver_root=config.driver_root,
    )

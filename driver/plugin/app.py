"""``accel-dra plugin``: wires the kubelet plugin together and runs it until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from driver.config import ConfigError, PluginConfig
from driver.devices.backend import BackendError, DeviceBackend, open_backend
from driver.kube.client import KubeClient
from driver.log import get_logger, setup
from driver.plugin.node_service import KubeClaimSource, NodeService
from driver.plugin.paths import dra_socket_path, registration_socket_path
from driver.plugin.server import PluginServer
from driver.resources.attributes import device_entry
from driver.resources.publisher import SlicePublisher
from driver.state.api import Preparer
from driver.state.lock import LOCK_FILE_NAME, NodeLock
from driver.state.memory import InMemoryPreparer

log = get_logger(__name__)

STOP_GRACE_SECONDS = 0.5


class Plugin:
    """Everything one plugin process runs, started and stopped in dependency order."""

    def __init__(self, config: PluginConfig, kube: KubeClient, backend: DeviceBackend) -> None:
        self.config = config
        self.kube = kube
        self.backend = backend
        self.inventory = backend.discover()
        self.publisher = SlicePublisher(kube, driver=config.driver_name, node=config.node_name)
        self._publishing: asyncio.Task[None] | None = None
        os.makedirs(config.plugin_dir, mode=0o750, exist_ok=True)
        self.preparer = self._make_preparer()
        self.node = NodeService(
            KubeClaimSource(kube),
            self.preparer,
            NodeLock(os.path.join(config.plugin_dir, LOCK_FILE_NAME)),
            config.driver_name,
        )
        self.server = PluginServer(
            driver_name=config.driver_name,
            dra_socket=dra_socket_path(config.plugin_dir, config.driver_name, config.pod_uid),
            registration_socket=registration_socket_path(
                config.registry_dir, config.driver_name, config.pod_uid
            ),
            node=self.node,
        )

    def _make_preparer(self) -> Preparer:
        if self.config.preparer == "memory":
            return InMemoryPreparer(self.config.driver_name)
        raise ConfigError("the node-state preparer is not available in this build; use --preparer memory")

    def desired_devices(self) -> list[dict[str, object]]:
        return [device_entry(d, self.inventory, self.config.driver_name) for d in self.inventory.devices]

    async def start(self) -> None:
        # Publishing first: the scheduler can place pods while the sockets come up.
        self.publisher.set_devices(self.desired_devices())
        self._publishing = asyncio.create_task(self.publisher.run(), name="slice-publisher")
        await self.server.start()

    async def stop(self) -> None:
        # Slices stay published: a restarting or upgraded instance takes them over, and the kubelet
        # removes them if no instance comes back.
        await self.server.stop(STOP_GRACE_SECONDS)
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing


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
    setup(args.log_level, args.log_format)
    try:
        config = PluginConfig.from_args(args)
    except ConfigError as err:
        log.error("invalid configuration", error=str(err))
        return 2
    try:
        backend = open_backend(config.backend, **backend_options(config))
    except BackendError as err:
        log.error("cannot open device backend", backend=config.backend, error=str(err))
        return 1
    try:
        return asyncio.run(serve(config, backend))
    except BackendError as err:
        log.error("device discovery failed", backend=config.backend, error=str(err))
        return 1
    finally:
        backend.close()


def backend_options(config: PluginConfig) -> dict[str, object]:
    """Simulated GPUs get node-specific UUIDs so several simulated nodes never share a GPU."""
    return {"node_name": config.node_name} if config.backend.startswith(("fake:", "file:")) else {}

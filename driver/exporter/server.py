"""``accel-dra exporter``: per-GPU telemetry under standard names, attributed to pods and claims.

Wiring: device backend -> :class:`~driver.exporter.collector.Collector` (background sampling) ->
:class:`~driver.exporter.render.Renderer` -> :class:`~driver.exporter.endpoint.MetricsServer`. Attribution
sources: the kubelet's PodResources socket, and (optional) this node's pods and ResourceSlices from the API
server. Runs until SIGTERM/SIGINT, then exits 0. Flags: :func:`driver.exporter.options.add_exporter_arguments`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence

from driver.devices.backend import (
    BackendError,
    DeviceBackend,
    HealthCapable,
    backend_options,
    capabilities,
    open_backend,
)
from driver.devices.telemetry import TelemetrySource
from driver.exporter.collector import Collector, Settings
from driver.exporter.endpoint import MetricsServer
from driver.exporter.holders import ClaimIndex
from driver.exporter.kubeindex import PodIndex, SliceIndex
from driver.exporter.options import ExporterConfig, add_exporter_arguments
from driver.exporter.podresources import DeviceResolver, PodResourcesClient
from driver.exporter.render import Renderer
from driver.exporter.xids import XidCounter
from driver.flags import ConfigError
from driver.kube.client import KubeClient
from driver.kube.connection import KubeConfigError
from driver.log import get_logger, setup

log = get_logger(__name__)

__all__ = ["Exporter", "add_exporter_arguments", "main", "run"]


class Exporter:
    """Everything one exporter process runs, started and stopped in dependency order."""

    def __init__(self, config: ExporterConfig, backend: DeviceBackend) -> None:
        caps = capabilities(backend)
        if caps.telemetry is None:
            raise BackendError(f"device backend {config.backend!r} cannot report telemetry")
        self.config = config
        self.backend: TelemetrySource = caps.telemetry
        self.health: HealthCapable | None = caps.health
        self.inventory = backend.discover()
        self.kube: KubeClient | None = None
        self.pods: PodIndex | None = None
        self.slices: SliceIndex | None = None
        self.claims: ClaimIndex | None = None
        self.collector: Collector | None = None
        self.server: MetricsServer | None = None

    async def _connect_kube(self) -> None:
        cfg = self.config
        if not cfg.use_kube_api:
            return
        if not cfg.node_name:
            log.warning("no --node-name: pods and ResourceSlices are not read; shared GPUs are not split")
            return
        try:
            self.kube = await KubeClient.connect(cfg.kubeconfig)
        except KubeConfigError as err:
            if cfg.kube_api == "on":
                raise ConfigError(f"cannot configure the Kubernetes client: {err}") from err
            log.warning("no Kubernetes API access; shared GPUs are not split", error=str(err))
            return
        self.pods = PodIndex.for_node(self.kube, cfg.node_name, lambda _e: self._api_error())
        self.slices = SliceIndex.for_node(self.kube, cfg.node_name, lambda _e: self._api_error())
        self.claims = ClaimIndex(self.kube, lambda _e: self._api_error())
        self.pods.watch.start()
        self.slices.watch.start()

    def _api_error(self) -> None:
        if self.collector is not None:
            self.collector.count_attribution_error("kubernetes")

    async def start(self) -> None:
        cfg = self.config
        await self._connect_kube()
        pods = self.pods
        self.collector = Collector(
            self.inventory,
            self.backend,
            DeviceResolver(self.inventory, cfg.driver_name, cfg.node_name or None, self.slices),
            settings=Settings(
                interval=cfg.interval,
                sample_timeout=cfg.sample_timeout,
                proc_root=cfg.proc_root,
                health_state_file=cfg.health_state_file,
                chargeback_retention=cfg.chargeback_retention,
            ),
            pod_resources=PodResourcesClient(cfg.pod_resources_socket) if cfg.pod_resources_socket else None,
            containers=pods.container if pods is not None else None,
            containers_ready=(lambda: pods.ready) if pods is not None else (lambda: False),
            pod_phase=pods.phase if pods is not None else None,
            claims=self.claims,
            xids=self._xid_counter(),
            node_name=cfg.node_name,
            backend_name=cfg.backend,
        )
        await self.collector.start()
        collector = self.collector
        self.server = MetricsServer(Renderer(lambda: collector.snapshot).render, collector.healthy)
        await self.server.start(cfg.listen)

    def _xid_counter(self) -> XidCounter | None:
        """XID events through the backend's own health source, read-only (no plugin needed)."""
        if self.health is None:
            return None
        return XidCounter(self.health.health_source(self.inventory, read_only=True), self.inventory)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.collector is not None:
            await self.collector.stop()
        for index in (self.pods, self.slices):
            if index is not None:
                await index.watch.stop()
        if self.kube is not None:
            with contextlib.suppress(Exception):
                await self.kube.close()


def exporter_backend_options(config: ExporterConfig) -> dict[str, object]:
    return backend_options(
        config.backend,
        node_name=config.node_name,
        state_dir=config.fake_state_dir,
        driver_root=config.driver_root,
    )


async def serve(config: ExporterConfig, backend: DeviceBackend) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    exporter = Exporter(config, backend)
    try:
        await exporter.start()
        assert exporter.server is not None
        log.info(
            "exporter running",
            listen=config.listen,
            port=exporter.server.port,
            gpus=len(exporter.inventory.gpus),
            backend=config.backend,
            node=config.node_name or "-",
        )
        await stop.wait()
        log.info("stopping on signal")
    finally:
        await exporter.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``accel-dra exporter`` (flags from :func:`add_exporter_arguments`)."""
    setup(args.log_level, args.log_format)
    try:
        config = ExporterConfig.from_args(args)
    except ConfigError as err:
        log.error("invalid configuration", error=str(err))
        return 2
    try:
        backend = open_backend(config.backend, **exporter_backend_options(config))
    except BackendError as err:
        log.error("cannot open device backend", backend=config.backend, error=str(err))
        return 1
    try:
        return asyncio.run(serve(config, backend))
    except (BackendError, ConfigError, ValueError, OSError) as err:
        log.error("exporter failed", backend=config.backend, listen=config.listen, error=str(err))
        return 1
    finally:
        backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m driver.exporter``: the same as ``accel-dra exporter`` (until the CLI knows it)."""
    parser = argparse.ArgumentParser(prog="accel-dra exporter", description=__doc__.splitlines()[0])
    add_exporter_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

"""The sim kubelet consumes a plugin's DRAResourceHealth stream as the kubelet does: receive-time stamps,
Unknown after the report's timeout, cleared on stream end and reopened after the retry interval."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver._proto.dra_health.v1 import api_pb2_grpc as health_v1_grpc
from driver._proto.dra_health.v1alpha1 import api_pb2 as health_pb
from driver._proto.dra_health.v1alpha1 import api_pb2_grpc as health_grpc
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver.sim.kubelet import SimKubelet
from tests.support.fake_plugin import FakeRegistration

DRIVER = "gpu.example.com"
POOL = "node-1"


class ScriptedHealth:
    """Each stream sends what the test queues; ``None`` ends the stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.streams = 0
        self.opened = asyncio.Event()

    async def NodeWatchResources(self, request: Any, context: Any) -> Any:
        self.streams += 1
        self.opened.set()
        while (item := await self.queue.get()) is not None:
            yield item


def report(*devices: tuple[str, int, int, str]) -> Any:
    return health_pb.NodeWatchResourcesResponse(
        devices=[
            health_pb.DeviceHealth(
                device=health_pb.DeviceIdentifier(pool_name=POOL, device_name=name),
                health=health,
                last_updated_time=1,  # ignored: the kubelet stamps the receive time
                health_check_timeout_seconds=timeout,
                message=message,
            )
            for name, health, timeout, message in devices
        ]
    )


async def serve(path: Path, *servicers: tuple[Any, Any]) -> grpc.aio.Server:
    server = grpc.aio.server()
    for add, servicer in servicers:
        add(servicer, server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server


@pytest.fixture
async def plugin() -> AsyncIterator[tuple[ScriptedHealth, SimKubelet]]:
    with tempfile.TemporaryDirectory(prefix="adra-hk-", dir="/tmp") as root:
        registry, dra = Path(root, "registry"), Path(root, "dra.sock")
        registry.mkdir()
        health = ScriptedHealth()
        versions = ["v1.DRAPlugin", "v1alpha1.DRAResourceHealth"]
        servers = [
            await serve(dra, (health_grpc.add_DRAResourceHealthServicer_to_server, health)),
            await serve(
                registry / f"{DRIVER}-reg.sock",
                (reg_grpc.add_RegistrationServicer_to_server, FakeRegistration(DRIVER, str(dra), versions)),
            ),
        ]
        kubelet = SimKubelet(str(registry), health_retry_interval=0.1)
        await kubelet.start()
        try:
            await kubelet.wait_registered(DRIVER)
            yield health, kubelet
        finally:
            await kubelet.stop()
            for server in servers:
                await server.stop(0)


async def until(kubelet: SimKubelet, device: str, health: str, timeout: float = 10.0) -> None:
    await kubelet.wait_for(lambda k: k.device_health(DRIVER, POOL, device) == health, timeout)


async def test_reports_are_kept_per_device_with_their_message(
    plugin: tuple[ScriptedHealth, SimKubelet],
) -> None:
    health, kubelet = plugin
    await health.opened.wait()
    assert kubelet.device_health(DRIVER, POOL, "gpu-a") == "Unknown", "nothing reported yet"
    await health.queue.put(
        report(("gpu-a", health_pb.HEALTHY, 30, "healthy"), ("gpu-b", health_pb.UNHEALTHY, 0, "XID 79"))
    )
    await until(kubelet, "gpu-b", "Unhealthy")
    assert kubelet.device_health(DRIVER, POOL, "gpu-a") == "Healthy"
    record = kubelet.health_record(DRIVER, POOL, "gpu-b")
    assert record is not None and record.message == "XID 79"
    assert record.timeout == 30, "0 means the kubelet's default of 30 s"


async def test_a_report_not_refreshed_within_its_timeout_becomes_unknown(
    plugin: tuple[ScriptedHealth, SimKubelet],
) -> None:
    health, kubelet = plugin
    changes: list[str] = []
    kubelet.health_listeners.append(changes.append)
    await health.queue.put(report(("gpu-a", health_pb.HEALTHY, 1, ""), ("gpu-b", health_pb.HEALTHY, 60, "")))
    await until(kubelet, "gpu-a", "Healthy")
    await until(kubelet, "gpu-a", "Unknown")
    assert kubelet.device_health(DRIVER, POOL, "gpu-b") == "Healthy"
    assert changes == [DRIVER, DRIVER], "listeners hear the report and the expiry"
    # A fresh report brings it back.
    await health.queue.put(report(("gpu-a", health_pb.UNHEALTHY, 1, "lost")))
    await until(kubelet, "gpu-a", "Unhealthy")


async def test_stream_end_clears_health_and_the_stream_is_reopened(
    plugin: tuple[ScriptedHealth, SimKubelet],
) -> None:
    health, kubelet = plugin
    await health.queue.put(report(("gpu-a", health_pb.UNHEALTHY, 60, "XID 48")))
    await until(kubelet, "gpu-a", "Unhealthy")
    await health.queue.put(None)
    await until(kubelet, "gpu-a", "Unknown")
    await health.queue.put(report(("gpu-a", health_pb.HEALTHY, 60, "")))
    await until(kubelet, "gpu-a", "Healthy")
    assert health.streams == 2


@pytest.mark.parametrize(
    ("kubelet_knows", "plugin_offers", "opened"),
    [
        # A 1.37 kubelet: the newest version both know, whatever order the plugin lists them in.
        (("v1", "v1alpha1"), ("v1alpha1", "v1"), "v1"),
        (("v1", "v1alpha1"), ("v1alpha1",), "v1alpha1"),
        # A 1.36 kubelet knows only v1alpha1.
        (("v1alpha1",), ("v1", "v1alpha1"), "v1alpha1"),
        (("v1alpha1",), ("v1",), None),
    ],
)
async def test_the_health_version_is_the_newest_both_know(
    kubelet_knows: tuple[str, ...], plugin_offers: tuple[str, ...], opened: str | None
) -> None:
    servicers = {"v1": ScriptedHealth(), "v1alpha1": ScriptedHealth()}
    adders = {
        "v1": health_v1_grpc.add_DRAResourceHealthServicer_to_server,
        "v1alpha1": health_grpc.add_DRAResourceHealthServicer_to_server,
    }
    with tempfile.TemporaryDirectory(prefix="adra-hv-", dir="/tmp") as root:
        registry, dra = Path(root, "registry"), Path(root, "dra.sock")
        registry.mkdir()
        versions = ["v1.DRAPlugin", *(f"{v}.DRAResourceHealth" for v in plugin_offers)]
        servers = [
            await serve(dra, *((adders[v], servicers[v]) for v in plugin_offers)),
            await serve(
                registry / f"{DRIVER}-reg.sock",
                (reg_grpc.add_RegistrationServicer_to_server, FakeRegistration(DRIVER, str(dra), versions)),
            ),
        ]
        kubelet = SimKubelet(
            str(registry), known_health_versions=tuple(f"{v}.DRAResourceHealth" for v in kubelet_knows)
        )
        await kubelet.start()
        try:
            await kubelet.wait_registered(DRIVER)
            (instance,) = kubelet.instances(DRIVER)
            if opened is None:
                assert instance.health_version is None
            else:
                await asyncio.wait_for(servicers[opened].opened.wait(), 10)
                assert instance.health_version == f"{opened}.DRAResourceHealth"
            assert [v for v, s in servicers.items() if s.streams] == ([opened] if opened else [])
        finally:
            await kubelet.stop()
            for server in servers:
                await server.stop(0)

"""The sampler under failure: hanging and lost GPUs, an unreachable kubelet; scrapes over real HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver.devices.fake import load_named_profile
from driver.devices.model import Inventory
from driver.devices.nvml import NvmlBackend
from driver.exporter.collector import Collector, Settings
from driver.exporter.endpoint import MetricsServer, parse_listen
from driver.exporter.podresources import ContainerResources, DeviceResolver, PodResourcesError
from driver.exporter.render import Renderer
from tests.unit.exporter.test_exporter_nvml import Readings, TelemetryNvml

DRIVER = "gpu.accel-dra.dev"
Series = dict[tuple[str, ...], float]


@dataclass
class Running:
    nvml: TelemetryNvml
    inventory: Inventory
    collector: Collector
    url: str
    http: aiohttp.ClientSession

    async def scrape(self, accept: str = "") -> str:
        # Guard only: a scrape reads the snapshot, so it answers at once even while NVML hangs.
        async with asyncio.timeout(5), self.http.get(self.url, headers={"Accept": accept}) as response:
            assert response.status == 200
            return await response.text()

    async def scrape_until(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                text = await self.scrape()
                if predicate(text):
                    return text
                await asyncio.sleep(0.02)


def series(text: str, name: str, *labels: str) -> Series:
    return {
        tuple(s.labels.get(label, "") for label in labels): s.value
        for family in parse_text(text)
        for s in family.samples
        if s.name == name
    }


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    inventory = load_named_profile("pcie-l4x4").inventory
    nvml = TelemetryNvml(inventory, {i: Readings(util=10 * (i + 1)) for i in range(len(inventory.gpus))})
    backend = NvmlBackend(nvml=nvml)
    found = backend.discover()
    collector = Collector(
        found,
        backend,
        DeviceResolver(found, DRIVER),
        settings=Settings(interval=0.05, sample_timeout=0.3),
    )
    server = MetricsServer(Renderer(lambda: collector.snapshot).render, collector.healthy)
    try:
        await collector.start()
        await server.start("127.0.0.1:0")
        async with aiohttp.ClientSession() as http:
            yield Running(nvml, found, collector, f"http://127.0.0.1:{server.port}/metrics", http)
    finally:
        for event in nvml.hang.values():
            event.set()
        await server.stop()
        await collector.stop()
        backend.close()


async def test_a_hanging_gpu_fails_alone_and_recovers(running: Running) -> None:
    uuids = [g.uuid for g in running.inventory.gpus]
    await running.scrape_until(lambda t: series(t, "hw_gpu_utilization_ratio", "uuid", "hw_gpu_task") != {})
    hang = running.nvml.hang[1] = threading.Event()

    text = await running.scrape_until(
        lambda t: series(t, "hw_status", "uuid", "hw_state").get((uuids[1], "failed")) == 1
    )
    util = series(text, "hw_gpu_utilization_ratio", "uuid", "hw_gpu_task")
    assert {uuid for uuid, _ in util} == {uuids[0], uuids[2], uuids[3]}  # the hung GPU's values are dropped
    assert util[(uuids[3], "general")] == 0.4
    timeouts = series(text, "accel_dra_gpu_read_errors_total", "uuid", "field", "reason")
    assert timeouts == {(uuids[1], "sample", "timeout"): 1}
    info = series(text, "accel_dra_gpu_info", "uuid")
    assert set(info) == {(u,) for u in uuids}  # the GPU is still listed
    # Scrapes keep answering while the GPU hangs, in both formats.
    assert "hw_status" in await running.scrape("application/openmetrics-text; version=1.0.0")

    hang.set()
    text = await running.scrape_until(
        lambda t: series(t, "hw_status", "uuid", "hw_state").get((uuids[1], "ok")) == 1
    )
    assert series(text, "hw_gpu_utilization_ratio", "uuid", "hw_gpu_task")[(uuids[1], "general")] == 0.2
    async with running.http.get(running.url.replace("/metrics", "/healthz")) as response:
        assert (response.status, await response.text()) == (200, "ok\n")


async def test_a_lost_gpu_does_not_hide_the_others(running: Running) -> None:
    uuids = [g.uuid for g in running.inventory.gpus]
    running.nvml.lost.add(2)
    text = await running.scrape_until(
        lambda t: series(t, "hw_status", "uuid", "hw_state").get((uuids[2], "failed")) == 1
    )
    assert (
        series(text, "accel_dra_gpu_read_errors_total", "uuid", "field", "reason")[
            (uuids[2], "sample", "lost")
        ]
        >= 1
    )
    memory = series(text, "hw_gpu_memory_usage_bytes", "uuid")
    assert set(memory) == {(uuids[0],), (uuids[1],), (uuids[3],)}
    ok = series(text, "hw_status", "uuid", "hw_state")
    assert [ok[(u, "ok")] for u in uuids] == [1, 1, 0, 1]


class FlakyKubelet:
    def __init__(self, containers: list[ContainerResources]) -> None:
        self.containers = containers
        self.fail = False
        self.closed = False

    async def list(self) -> list[ContainerResources]:
        if self.fail:
            raise PodResourcesError("kubelet PodResources socket /x/kubelet.sock: UNAVAILABLE")
        return self.containers

    async def close(self) -> None:
        self.closed = True


async def test_an_unreachable_kubelet_keeps_the_last_answer() -> None:
    inventory = load_named_profile("pcie-l4x4").inventory
    backend = NvmlBackend(nvml=TelemetryNvml(inventory, {0: Readings()}))
    found = backend.discover()
    gpu = found.gpus[0]
    kubelet = FlakyKubelet(
        [ContainerResources("ns", "pod", "main", device_ids=(("nvidia.com/gpu", gpu.uuid),))]
    )
    collector = Collector(
        found, backend, DeviceResolver(found, DRIVER), settings=Settings(interval=60), pod_resources=kubelet
    )
    await collector.start()
    try:
        first = collector.snapshot
        assert first.pod_resources_up is True
        kubelet.fail = True
        second = await collector.tick()
    finally:
        await collector.stop()
        backend.close()
    assert kubelet.closed
    assert (second.pod_resources_up, dict(second.attribution_errors)) == (False, {"pod_resources": 1})
    assert [s.consumer.pod for s in second.gpus[0].shares] == ["pod"]
    text = Renderer(lambda: second).render("")[0].decode()
    assert series(text, "accel_dra_exporter_pod_resources_up") == {(): 0.0}
    assert series(text, "accel_dra_gpu_allocation_info", "uuid", "pod") == {(gpu.uuid, "pod"): 1.0}


def test_listen_addresses() -> None:
    assert parse_listen(":9400") == (None, 9400)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9400") == ("::1", 9400)
    for bad in ("9400", "host:", "host:99999", ":port"):
        with pytest.raises(ValueError, match="listen address"):
            parse_listen(bad)

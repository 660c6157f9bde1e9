"""The exporter follows MIG instances created and destroyed while it runs (dynamic MIG): their series appear
and go, and the pods holding them are attributed to them."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend
from driver.devices.model import MigDevice
from driver.exporter.collector import Collector, Settings
from driver.exporter.podresources import ClaimDevice, ContainerResources, DeviceResolver
from driver.exporter.render import Renderer

DRIVER = "gpu.accel-dra.dev"
A100 = "gpu-0000-0f-00-0"


class Allocations:
    """The kubelet's PodResources answer, set by the test."""

    def __init__(self) -> None:
        self.containers: list[ContainerResources] = []

    async def list(self) -> list[ContainerResources]:
        return self.containers

    async def close(self) -> None:
        pass


def holding(device: str) -> ContainerResources:
    return ContainerResources(
        "team", "trainer", "main", claim_devices=(ClaimDevice("team", "mig", DRIVER, "node-1", device),)
    )


def backend(state: Path) -> FakeBackend:
    found = open_backend("fake:mig-dynamic", node_name="node-1", state_dir=str(state))
    assert isinstance(found, FakeBackend)
    return found


def mig_series(text: str, name: str) -> dict[str, dict[str, str]]:
    return {
        s.labels["mig_uuid"]: s.labels
        for family in parse_text(text)
        for s in family.samples
        if s.name == name and "mig_uuid" in s.labels
    }


def create(plugin: FakeBackend, name: str, start: int) -> MigDevice:
    gpu = plugin.discover().gpus[1]
    profile = next(p for p in gpu.mig_profiles if p.name == name)
    instance = plugin.create_gpu_instance(
        gpu.uuid, profile, next(p for p in profile.placements if p.start == start)
    )
    return plugin.create_compute_instance(gpu.uuid, instance)


async def test_instances_created_and_destroyed_at_run_time_are_followed(tmp_path: Path) -> None:
    exporter, plugin = backend(tmp_path), backend(tmp_path)
    inventory = exporter.discover()
    allocations = Allocations()
    collector = Collector(
        inventory,
        exporter,
        DeviceResolver(inventory, DRIVER, "node-1"),
        settings=Settings(interval=60),
        pod_resources=allocations,
        node_name="node-1",
    )
    render = Renderer(lambda: collector.snapshot).render
    await collector.tick()
    before = render()[0].decode()
    assert {labels["mig_profile"] for labels in mig_series(before, "accel_dra_mig_info").values()} == {
        "1g.5gb",
        "2g.10gb",
        "3g.20gb",
    }  # GPU 0's hand-made instances only

    mig = create(plugin, "2g.10gb", 4)  # the plugin prepares a claim
    allocations.containers = [holding(f"{A100}-mig-2g-10gb-4")]
    await collector.tick()
    text = render()[0].decode()
    info = mig_series(text, "accel_dra_mig_info")
    assert info[mig.uuid]["mig_profile"] == "2g.10gb"
    held = mig_series(text, "accel_dra_gpu_allocation_info")
    assert held[mig.uuid]["pod"] == "trainer" and held[mig.uuid]["resource_claim"] == "mig"

    gpu = plugin.discover().gpus[1].uuid
    plugin.destroy_compute_instance(gpu, mig.gpu_instance_id or 0, 0)  # ... and unprepares it
    plugin.destroy_gpu_instance(gpu, mig.gpu_instance_id or 0)
    allocations.containers = []
    await collector.tick()
    assert mig.uuid not in mig_series(render()[0].decode(), "accel_dra_mig_info")
    await collector.stop()


async def test_the_whole_gpu_of_a_dynamic_gpu_is_attributed_to_its_full_instance(tmp_path: Path) -> None:
    exporter, plugin = backend(tmp_path), backend(tmp_path)
    inventory = exporter.discover()
    allocations = Allocations()
    collector = Collector(
        inventory,
        exporter,
        DeviceResolver(inventory, DRIVER, "node-1"),
        settings=Settings(interval=60),
        pod_resources=allocations,
    )
    full = create(plugin, "7g.40gb", 0)
    allocations.containers = [holding(A100)]
    await collector.tick()
    (gpu,) = [g for g in collector.snapshot.gpus if g.gpu.name == A100]
    (share,) = gpu.shares
    assert share.consumer.mig_uuid == full.uuid
    await collector.stop()

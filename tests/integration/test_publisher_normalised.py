"""The slice publisher against a server that stores objects in normal form: a resync must write nothing.

A real kube-apiserver returns quantities canonical ("81920Mi" comes back as "80Gi") and drops empty
``omitempty`` maps (``attributes: {}``). A publisher that compared its raw desired JSON with that would
update the slice on every resync, bumping its generation forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from driver.kube.client import NODES, RESOURCE_SLICES, KubeClient
from driver.resources.publisher import SlicePublisher
from driver.sim.apiserver import SimApiServer

DRIVER = "gpu.example.com"
NODE = "node-a"
SLICES = r"^/apis/resource\.k8s\.io/v1/resourceslices"

# Devices as a driver may describe them: none of these is the form the server stores.
DEVICES: list[dict[str, Any]] = [
    {"name": "gpu-0", "attributes": {}, "capacity": {"memory": {"value": "81920Mi"}}},
    {"name": "gpu-1", "capacity": {"memory": {"value": "1000000"}, "cores": {"value": 1500000}}},
    {
        "name": "gpu-2",
        "attributes": {"model": {"string": "x"}},
        "capacity": {"memory": {"value": "0.5Gi"}},
        "taints": [],
    },
]


@pytest.fixture
async def server() -> AsyncIterator[SimApiServer]:
    async with SimApiServer() as srv:
        srv.create(NODES, {"metadata": {"name": NODE}})
        yield srv


@pytest.fixture
async def kube(server: SimApiServer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
    yield client
    await client.close()


async def test_the_server_stores_the_normal_form(server: SimApiServer, kube: KubeClient) -> None:
    publisher = SlicePublisher(kube, driver=DRIVER, node=NODE)
    publisher.set_devices(DEVICES)
    await publisher.sync_once()
    (stored,) = server.objects(RESOURCE_SLICES)
    devices = {d["name"]: d for d in stored["spec"]["devices"]}
    assert devices["gpu-0"] == {"name": "gpu-0", "capacity": {"memory": {"value": "80Gi"}}}
    assert devices["gpu-1"]["capacity"] == {"memory": {"value": "1M"}, "cores": {"value": "1500k"}}
    assert devices["gpu-2"]["capacity"] == {"memory": {"value": "512Mi"}}
    assert "taints" not in devices["gpu-2"]


async def test_resync_against_the_stored_form_writes_nothing(server: SimApiServer, kube: KubeClient) -> None:
    publisher = SlicePublisher(kube, driver=DRIVER, node=NODE)
    publisher.set_devices(DEVICES)
    first = await publisher.sync_once()
    assert first.writes == 1
    generation = server.objects(RESOURCE_SLICES)[0]["metadata"]["generation"]

    mark = server.request_log.mark()
    again = await publisher.sync_once()
    assert again.writes == 0
    assert server.request_log.writes(mark, SLICES) == []
    assert server.objects(RESOURCE_SLICES)[0]["metadata"]["generation"] == generation


async def test_running_publisher_settles_without_writes(server: SimApiServer, kube: KubeClient) -> None:
    publisher = SlicePublisher(kube, driver=DRIVER, node=NODE)
    publisher.set_devices(DEVICES)
    task = asyncio.create_task(publisher.run())
    try:
        await asyncio.wait_for(publisher.wait_synced(), 10)
        mark = server.request_log.mark()
        publisher.set_devices(DEVICES)  # the same devices again: a resync
        await asyncio.wait_for(publisher.wait_synced(), 10)
        assert publisher.stats.syncs >= 2
        assert server.request_log.writes(mark, SLICES) == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

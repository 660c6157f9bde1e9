"""The exporter fed broken or lying sources: a PodResources answer that does not decode, a source or resolver
that throws, an API server that sends other nodes' objects or fields of the wrong type. Sampling goes on,
and no GPU is attributed to a pod that does not hold it on this node."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest

from driver.devices.fake import load_named_profile
from driver.devices.nvml import NvmlBackend
from driver.exporter.collector import Collector, Settings
from driver.exporter.kubeindex import PodIndex, SliceIndex
from driver.exporter.podresources import (
    ContainerResources,
    DeviceResolver,
    PodResourcesClient,
    PodResourcesError,
)
from tests.unit.exporter.test_exporter_nvml import Readings, TelemetryNvml

DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"


@pytest.fixture
async def garbage_kubelet() -> AsyncIterator[str]:
    """A PodResources server whose List answer does not decode as a ListPodResourcesResponse."""
    with tempfile.TemporaryDirectory(prefix="adra-", dir="/tmp") as root:
        path = os.path.join(root, "kubelet.sock")
        server = grpc.aio.server()

        async def answer(request: bytes, context: Any) -> bytes:
            return b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, with an impossible length

        handler = grpc.method_handlers_generic_handler(
            "v1.PodResourcesLister",
            {
                "List": grpc.unary_unary_rpc_method_handler(
                    answer, request_deserializer=bytes, response_serializer=bytes
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        yield path
        await server.stop(None)


async def test_a_pod_resources_answer_that_does_not_decode_is_a_pod_resources_error(
    garbage_kubelet: str,
) -> None:
    client = PodResourcesClient(garbage_kubelet)
    try:
        with pytest.raises(PodResourcesError, match="does not decode"):
            await client.list()
    finally:
        await client.close()


class Exploding:
    """An allocation source that fails with something other than PodResourcesError."""

    async def list(self) -> list[ContainerResources]:
        raise RuntimeError("surprise")

    async def close(self) -> None:
        pass


class ExplodingResolver(DeviceResolver):
    def consumers(self, containers: Any) -> Any:
        raise KeyError("device")


@pytest.mark.parametrize("broken", ["source", "resolver"])
async def test_sampling_goes_on_when_attribution_breaks(broken: str) -> None:
    inventory = load_named_profile("pcie-l4x4").inventory
    backend = NvmlBackend(nvml=TelemetryNvml(inventory, {0: Readings()}))
    found = backend.discover()
    resolver = (ExplodingResolver if broken == "resolver" else DeviceResolver)(found, DRIVER)
    collector = Collector(found, backend, resolver, settings=Settings(interval=60), pod_resources=Exploding())
    try:
        await collector.start()
        second = await collector.tick()
    finally:
        await collector.stop()
        backend.close()
    assert second.seq == 2
    assert second.gpus[0].telemetry is not None
    assert all(not g.shares for g in second.gpus)
    assert dict(second.attribution_errors).get("pod_resources" if broken == "source" else "resolve")


class Listing:
    """A KubeClient stand-in that answers one LIST, then has nothing more to say."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    async def list(self, rt: Any, *args: Any, **kw: Any) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": ""}, "items": self.items}


def pod(name: str, node: str, container_id: str, status: Any = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"nodeName": node},
        "status": status
        if status is not None
        else {"containerStatuses": [{"name": "main", "containerID": f"containerd://{container_id}"}]},
    }


async def test_pods_of_other_nodes_and_broken_fields_are_ignored() -> None:
    items = [
        pod("mine", NODE, "c-mine"),
        pod("elsewhere", "node-2", "c-other"),
        pod("broken", NODE, "c-broken", status={"containerStatuses": "not a list"}),
        pod("broken-entry", NODE, "c-x", status={"containerStatuses": [7, {"containerID": 3}]}),
        {"metadata": {"name": "no-spec"}, "spec": "x"},
    ]
    index = PodIndex.for_node(Listing(items), NODE)  # type: ignore[arg-type]
    await index.watch._watcher._list()  # one LIST through the real list/watch helper
    assert index.container("c-mine") is not None
    assert index.container("c-other") is None
    assert index.container("c-broken") is None


def slice_of(node: str, devices: Any, pool: Any = None) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{node}-slice"},
        "spec": {
            "nodeName": node,
            "driver": "other.example.com",
            "pool": pool or {"name": node},
            "devices": devices,
        },
    }


async def test_slices_of_other_nodes_and_broken_fields_are_ignored() -> None:
    inventory = load_named_profile("pcie-l4x4", node_name=NODE).inventory
    uuid = inventory.gpus[0].uuid
    attrs: Mapping[str, Any] = {"uuid": {"string": uuid}}
    items = [
        # Another node's slice claiming one of our GPUs: a server that ignores the field selector.
        slice_of("node-2", [{"name": "dev-a", "attributes": attrs}]),
        slice_of(NODE, "not a list"),
        {**slice_of(NODE, [{"name": "dev-b", "attributes": ["not", "a", "map"]}]), "metadata": {"name": "b"}},
        {**slice_of(NODE, [], pool="not an object"), "metadata": {"name": "c"}},
    ]
    index = SliceIndex.for_node(Listing(items), NODE)  # type: ignore[arg-type]
    await index.watch._watcher._list()  # one LIST through the real list/watch helper
    resolver = DeviceResolver(inventory, DRIVER, NODE, index)
    assert resolver.device_for_claim_device("other.example.com", "node-2", "dev-a") is None
    assert resolver.device_for_claim_device("other.example.com", NODE, "dev-b") is None

"""The kubelet emulator follows each plugin's DRA connection, not only its registration socket.

Hand-built plugins on real unix sockets and the sim API server: losing the DRA connection while the sockets
stay (a killed or wedged plugin) must wipe the driver's slices after the delay, and ending the registration
must clear the health the plugin reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from driver._proto.dra.v1 import api_pb2 as v1
from driver._proto.dra.v1 import api_pb2_grpc as v1_grpc
from driver._proto.dra_health.v1alpha1 import api_pb2 as health
from driver._proto.dra_health.v1alpha1 import api_pb2_grpc as health_grpc
from driver._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from driver.kube.client import RESOURCE_SLICES, KubeClient
from driver.sim.apiserver import SimApiServer
from driver.sim.kubelet import SimKubelet
from tests.integration.conftest import NODE, NodeDirs
from tests.support.fake_plugin import FakeRegistration

DRIVER = "gpu.example.com"


class Dra:
    async def NodePrepareResources(self, request: Any, context: Any) -> Any:
        return v1.NodePrepareResourcesResponse()

    async def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
        return v1.NodeUnprepareResourcesResponse()


class Health:
    """Reports gpu-0 Healthy once and keeps the stream open until ``done``."""

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def NodeWatchResources(self, request: Any, context: Any) -> AsyncIterator[Any]:
        device = health.DeviceIdentifier(pool_name=NODE, device_name="gpu-0")
        yield health.NodeWatchResourcesResponse(
            devices=[
                health.DeviceHealth(device=device, health=health.HEALTHY, health_check_timeout_seconds=600)
            ]
        )
        await self.done.wait()


@dataclass
class Plugin:
    dra: grpc.aio.Server
    registration: grpc.aio.Server
    health: Health

    async def stop(self) -> None:
        self.health.done.set()
        await self.dra.stop(0)
        await self.registration.stop(0)


async def start_plugin(dirs: NodeDirs) -> Plugin:
    """One plugin instance (DRA server with the health API, registration server)."""
    endpoint = str(dirs.plugins / "dra.sock")
    dra = grpc.aio.server()
    v1_grpc.add_DRAPluginServicer_to_server(Dra(), dra)
    health = Health()
    health_grpc.add_DRAResourceHealthServicer_to_server(health, dra)
    dra.add_insecure_port(f"unix://{endpoint}")
    registration = grpc.aio.server()
    reg_grpc.add_RegistrationServicer_to_server(
        FakeRegistration(DRIVER, endpoint, ["v1.DRAPlugin", "v1alpha1.DRAResourceHealth"]), registration
    )
    registration.add_insecure_port(f"unix://{dirs.registry}/{DRIVER}-reg.sock")
    await dra.start()
    await registration.start()
    return Plugin(dra, registration, health)


def slice_body() -> dict[str, Any]:
    return {
        "metadata": {"generateName": f"{NODE}-{DRIVER}-"},
        "spec": {
            "driver": DRIVER,
            "nodeName": NODE,
            "pool": {"name": NODE, "generation": 0, "resourceSliceCount": 1},
            "devices": [{"name": "gpu-0"}],
        },
    }


def driver_slices(apiserver: SimApiServer) -> list[dict[str, Any]]:
    return [s for s in apiserver.objects(RESOURCE_SLICES) if s["spec"]["driver"] == DRIVER]


async def test_losing_the_dra_connection_wipes_the_slices_though_the_sockets_stay(
    apiserver: SimApiServer, kube: KubeClient, node_dirs: NodeDirs
) -> None:
    plugin = await start_plugin(node_dirs)
    try:
        async with SimKubelet(
            str(node_dirs.registry), kube=kube, node_name=NODE, wiping_delay=0.2
        ) as kubelet:
            await kubelet.wait_for(lambda k: [i.ready for i in k.instances(DRIVER)] == [True])
            await kube.create(RESOURCE_SLICES, slice_body())
            assert driver_slices(apiserver)

            plugin.health.done.set()
            await plugin.dra.stop(0)  # the DRA server dies; the registration socket is still there
            await apiserver.wait_for(lambda _s: not driver_slices(apiserver))
            assert [i.ready for i in kubelet.instances(DRIVER)] == [False]  # still registered
    finally:
        await plugin.stop()


async def test_deregistration_clears_the_health_the_plugin_reported(node_dirs: NodeDirs) -> None:
    plugin = await start_plugin(node_dirs)
    try:
        async with SimKubelet(str(node_dirs.registry)) as kubelet:
            await kubelet.wait_for(lambda k: k.device_health(DRIVER, NODE, "gpu-0") == "Healthy")
            await plugin.registration.stop(0)  # removes the registration socket: the plugin is deregistered
            await kubelet.wait_for(lambda k: not k.instances(DRIVER))
            assert kubelet.device_health(DRIVER, NODE, "gpu-0") == "Unknown"
    finally:
        await plugin.stop()

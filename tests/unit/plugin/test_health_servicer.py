"""The DRAResourceHealth servicer over a real unix socket: the full list at once, on change, periodically."""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from driver._proto.dra_health.v1alpha1 import api_pb2 as health_pb
from driver._proto.dra_health.v1alpha1 import api_pb2_grpc as health_grpc
from driver.health.state import DeviceHealth
from driver.plugin.health import HealthServicer, truncate_message, watch_response

POOL = "node-1"


class Devices:
    def __init__(self) -> None:
        self.current = [DeviceHealth("gpu-a"), DeviceHealth("gpu-b")]

    def __call__(self) -> list[DeviceHealth]:
        return list(self.current)


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthServicer, Devices, Any]]:
    devices = Devices()
    servicer = HealthServicer(devices, POOL, interval=0.2, timeout_seconds=45)
    with tempfile.TemporaryDirectory(prefix="adra-h-", dir="/tmp") as root:
        socket = Path(root, "dra.sock")
        server = grpc.aio.server()
        health_grpc.add_DRAResourceHealthServicer_to_server(servicer, server)
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        channel = grpc.aio.insecure_channel(f"unix://{socket}")
        try:
            yield servicer, devices, health_grpc.DRAResourceHealthStub(channel)
        finally:
            await channel.close()
            await server.stop(0)


def summary(response: Any) -> list[tuple[str, str, int]]:
    return [(d.device.pool_name, d.device.device_name, d.health) for d in response.devices]


async def test_the_full_list_comes_at_once_then_on_change(
    served: tuple[HealthServicer, Devices, Any],
) -> None:
    servicer, devices, stub = served
    call = stub.NodeWatchResources(health_pb.NodeWatchResourcesRequest())
    first = await call.read()
    assert summary(first) == [(POOL, "gpu-a", health_pb.HEALTHY), (POOL, "gpu-b", health_pb.HEALTHY)]
    entry = first.devices[0]
    assert entry.health_check_timeout_seconds == 45 and entry.message == "healthy"
    assert abs(entry.last_updated_time - time.time()) < 60
    assert servicer.streams == 1

    devices.current[1] = DeviceHealth("gpu-b", lost="GPU is lost", message="GPU lost since ...: GPU is lost")
    servicer.changed()
    changed = await call.read()
    assert summary(changed)[1] == (POOL, "gpu-b", health_pb.UNHEALTHY), "every message carries every device"
    assert len(changed.devices) == 2 and changed.devices[1].message.startswith("GPU lost")
    call.cancel()


async def test_the_list_is_resent_without_changes(served: tuple[HealthServicer, Devices, Any]) -> None:
    _, _, stub = served
    call = stub.NodeWatchResources(health_pb.NodeWatchResourcesRequest())
    first, second = await call.read(), await call.read()
    assert summary(first) == summary(second)
    call.cancel()


def test_unmonitored_devices_are_unknown_and_long_messages_are_cut() -> None:
    response = watch_response(
        [DeviceHealth("gpu-a", unmonitored="no events", message="x" * 2000)], POOL, 30, now=1_700_000_000
    )
    (entry,) = response.devices
    assert entry.health == health_pb.UNKNOWN and entry.last_updated_time == 1_700_000_000
    assert len(entry.message) == 1024 and entry.message.endswith("...")
    assert truncate_message("short") == "short"

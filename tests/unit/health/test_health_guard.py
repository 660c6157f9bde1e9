"""PluginHealth against an API server that drops device taints (DRADeviceTaints gate off): taints are turned
off after the first write, so the publisher does not rewrite the slices forever; the stream still reports."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from driver.config import PluginConfig, add_plugin_arguments
from driver.devices.events import QuietSource, XidEvent
from driver.devices.fake import load_named_profile
from driver.kube.client import NODES, ResourceType
from driver.plugin.health import PluginHealth

INVENTORY = load_named_profile("pcie-l4x4").inventory
DRIVER = "gpu.accel-dra.dev"


class TaintDroppingApi:
    """Serves ``/version`` and slices as an API server with the taints gate off would store them."""

    def __init__(self, version: str = "35") -> None:
        self.version = version
        self.slice_lists = 0

    async def server_version(self) -> dict[str, str]:
        return {"major": "1", "minor": self.version}

    async def list(self, rt: ResourceType, namespace: str | None = None, **_: Any) -> dict[str, Any]:
        if rt == NODES:
            return {"items": [], "metadata": {"resourceVersion": "1"}}
        self.slice_lists += 1
        devices = [{"name": d.name} for d in INVENTORY.devices]  # no taints: dropped on write
        return {"items": [{"spec": {"devices": devices}}], "metadata": {}}

    async def watch(self, rt: ResourceType, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None  # pragma: no cover


def config(tmp_path: Path) -> PluginConfig:
    parser = argparse.ArgumentParser()
    add_plugin_arguments(parser)
    return PluginConfig.from_args(parser.parse_args(["--node-name", "node-1", "--plugin-dir", str(tmp_path)]))


async def test_taints_are_turned_off_when_the_server_drops_them(tmp_path: Path) -> None:
    republished = asyncio.Event()
    calls: list[str] = []

    def on_change() -> None:
        calls.append("republish")
        republished.set()

    async def synced() -> None:
        return None

    api = TaintDroppingApi()
    health = PluginHealth(
        config=config(tmp_path),
        kube=api,  # type: ignore[arg-type]
        inventory=INVENTORY,
        source=QuietSource(),
        on_change=on_change,
        wait_synced=synced,
    )
    await health.start()
    try:
        device = INVENTORY.devices[0]
        assert health.rules.allow_none_effect
        health.monitor.submit([XidEvent(device.uuid, 79)])
        assert health.taints(device.name) == [{"key": f"{DRIVER}/xid", "value": "79", "effect": "NoSchedule"}]
        async with asyncio.timeout(5):
            while health.taints_enabled:
                republished.clear()
                await republished.wait()
        assert health.taints(device.name) == []
        assert health.monitor.device(device).status == "unhealthy", "the stream and metrics still know"
        assert calls == ["republish", "republish"], "one publish with taints, one without"
        assert api.slice_lists == 1
    finally:
        await health.stop()


async def test_on_1_34_servers_informational_taints_are_left_out(tmp_path: Path) -> None:
    async def synced() -> None:
        return None

    health = PluginHealth(
        config=config(tmp_path),
        kube=TaintDroppingApi("34"),  # type: ignore[arg-type]
        inventory=INVENTORY,
        source=QuietSource(),
        on_change=lambda: None,
        wait_synced=synced,
    )
    await health.start()
    try:
        device = INVENTORY.devices[1]
        health.monitor.submit([XidEvent(device.uuid, 13)])
        assert not health.rules.allow_none_effect
        assert health.taints(device.name) == []
        assert health.with_taints([{"name": device.name, "attributes": {}}]) == [
            {"name": device.name, "attributes": {}}
        ]
    finally:
        await health.stop()

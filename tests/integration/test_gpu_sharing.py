"""Sharing a GPU by memory (consumable capacity) in the sandbox: the plugin publishes its GPUs shareable
(``--shared-gpus=all``), the sandbox scheduler gives two pods' claims shares of one GPU, and each container
sees the GPU with its own share."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from driver.kube.client import RESOURCE_CLAIMS, RESOURCE_SLICES
from driver.sim.sandbox import Sandbox, SandboxConfig
from tests.support.chart import DEPLOY

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLE = DEPLOY / "examples" / "gpu-test-sharing" / "gpu-test-sharing.yaml"
NAMESPACE = "gpu-test-sharing"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(profile="pcie-l4x4", exporter=False, extra_plugin_args=("--shared-gpus=all",))
    async with Sandbox(config) as box:
        yield box


def held_until_released(objects: list[dict[str, Any]], fifos: Path) -> list[dict[str, Any]]:
    """The example with each container, once it printed its devices, waiting for a line on a FIFO of its
    pod's name instead of sleeping an hour: the test looks at the claims while the pods hold them."""
    for pod in (o for o in objects if o["kind"] == "Pod"):
        fifo = fifos / pod["metadata"]["name"]
        os.mkfifo(fifo)
        (container,) = pod["spec"]["containers"]
        container["args"] = [container["args"][0].replace("sleep 3600", f"read -r _ < {fifo}")]
        assert "sleep" not in container["args"][0]
    return objects


def release(fifo: Path) -> None:
    with fifo.open("w") as end:  # blocks until the container reads
        end.write("go\n")


async def test_the_plugin_publishes_its_gpus_shareable_by_memory(sandbox: Sandbox) -> None:
    devices = [d for s in sandbox.apiserver.objects(RESOURCE_SLICES) for d in s["spec"]["devices"]]
    assert len(devices) == 4
    for device in devices:
        assert device["allowMultipleAllocations"] is True
        assert device["capacity"]["memory"] == {
            "value": "23034Mi",
            "requestPolicy": {"default": "22Gi", "validRange": {"min": "1Gi", "step": "1Gi"}},
        }


async def test_two_pods_share_one_gpu_each_with_its_memory(sandbox: Sandbox, tmp_path: Path) -> None:
    objects = [o for o in yaml.safe_load_all(EXAMPLE.read_text()) if o]
    await sandbox.apply(held_until_released(objects, tmp_path))
    for pod in ("pod0", "pod1"):
        await sandbox.wait_pod(NAMESPACE, pod, ["Running"])
    claims = {
        c["metadata"]["name"].split("-gpu-")[0]: c
        for c in sandbox.apiserver.objects(RESOURCE_CLAIMS, NAMESPACE)
    }
    results = {pod: c["status"]["allocation"]["devices"]["results"][0] for pod, c in claims.items()}
    assert {r["device"] for r in results.values()} == {"gpu-0000-01-00-0"}
    assert len({r["shareID"] for r in results.values()}) == 2
    assert all(r["consumedCapacity"] == {"memory": "8Gi"} for r in results.values())
    for pod in claims:
        await asyncio.to_thread(release, tmp_path / pod)
        await sandbox.wait_pod(NAMESPACE, pod, ["Succeeded"])
    for pod, claim in claims.items():
        env = dict(
            line.split("=", 1)
            for line in sandbox.pod_log(NAMESPACE, pod, "ctr").splitlines()
            if line.startswith("ACCEL_DRA_DEVICE_GPU_0000_01_00_0")
        )
        assert env["ACCEL_DRA_DEVICE_GPU_0000_01_00_0_SHARE_ID"] == results[pod]["shareID"]
        assert env["ACCEL_DRA_DEVICE_GPU_0000_01_00_0_MEMORY"] == "8Gi"
        assert env["ACCEL_DRA_DEVICE_GPU_0000_01_00_0_CLAIM_UID"] == claim["metadata"]["uid"]

"""Dynamic MIG end to end in the sandbox: the example's claim is allocated on a dynamic GPU's partitionable
devices by the sandbox scheduler, the real plugin creates both MIG instances, the containers see exactly their
instance (env, ``nvidia-smi -L``), the exporter reports them, and deleting the pod destroys them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend
from driver.kube.client import PODS, RESOURCE_CLAIMS
from driver.sim.sandbox import Sandbox, SandboxConfig
from tests.support.jsonstream import documents

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "gpu-test-mig-dynamic"
NODE = "sandbox-node"
NAMESPACE = "gpu-test-mig-dynamic"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(
        profile="mig-dynamic",
        node_name=NODE,
        exporter_interval=0.2,
        # Only the A100 dynamic: the example's 4g + 3g land on it.
        extra_plugin_args=("--mig-mode", "static,0000:0f:00.0=dynamic"),
    )
    async with Sandbox(config) as box:
        yield box


def hardware(sandbox: Sandbox) -> tuple[FakeBackend, str]:
    backend = open_backend("fake:mig-dynamic", node_name=NODE, state_dir=str(sandbox.path("fake-state")))
    assert isinstance(backend, FakeBackend)
    (gpu,) = [g for g in backend.discover().gpus if g.pci_bus_id == "0000:0f:00.0"]
    return backend, gpu.uuid


async def log_with(sandbox: Sandbox, container: str, needle: str) -> str:
    for _ in range(200):
        text = sandbox.pod_log(NAMESPACE, "pod", container)
        if needle in text:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{container} never logged {needle!r}: {text!r}")


async def exported_migs(sandbox: Sandbox) -> dict[str, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(f"{sandbox.exporter_url}/metrics") as response:
        text = await response.text()
    return {
        s.labels["mig_uuid"]: s.labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "accel_dra_mig_info"
    }


async def test_the_pod_gets_two_instances_of_one_gpu_and_they_go_with_it(sandbox: Sandbox) -> None:
    backend, gpu = hardware(sandbox)
    assert backend.gpu_instances(gpu) == []
    objects: list[dict[str, Any]] = [
        d for d in yaml.safe_load_all(next(EXAMPLE.glob("*.yaml")).read_text()) if d
    ]
    await sandbox.apply(objects)
    await sandbox.wait_pod(NAMESPACE, "pod", ["Running"])
    (claim,) = sandbox.apiserver.objects(RESOURCE_CLAIMS, NAMESPACE)
    results = {r["request"]: r["device"] for r in claim["status"]["allocation"]["devices"]["results"]}
    assert results == {"big": "gpu-0000-0f-00-0-mig-4g-20gb-0", "small": "gpu-0000-0f-00-0-mig-3g-20gb-4"}
    instances = {i.devices[0].profile: i.devices[0].uuid for i in backend.gpu_instances(gpu)}
    assert set(instances) == {"4g.20gb", "3g.20gb"}
    # Each container sees its own instance: in its environment and through nvidia-smi.
    for container, profile in (("trainer", "4g.20gb"), ("evaluator", "3g.20gb")):
        text = await log_with(sandbox, container, "MIG ")
        assert f"={instances[profile]}" in text
        assert [line.split("(UUID: ")[1].rstrip(")") for line in text.splitlines() if "  MIG " in line] == [
            instances[profile]
        ]
    for _ in range(100):  # the exporter's next rounds pick the new instances up
        if set(instances.values()) <= set(await exported_migs(sandbox)):
            break
        await asyncio.sleep(0.1)
    assert set(instances.values()) <= set(await exported_migs(sandbox))
    assert sandbox.kube is not None
    await sandbox.kube.delete(PODS, "pod", NAMESPACE)
    await sandbox.apiserver.wait_for(lambda s: not sandbox.apiserver.get_object(PODS, "pod", NAMESPACE), 20)

    def unprepared(store: Any) -> bool:
        (current,) = sandbox.apiserver.objects(RESOURCE_CLAIMS, NAMESPACE) or [{}]
        return not current.get("status", {}).get("allocation")

    await sandbox.apiserver.wait_for(unprepared, timeout=20)
    assert backend.gpu_instances(gpu) == []


async def test_an_extended_resource_pod_gets_a_created_instance_and_its_metadata_names_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """``nvidia.com/mig-4g.20gb`` (the chart's per-profile class) is served by a dynamic slot: only the
    dynamic A100 offers that profile here. The instance is created at prepare, and the device metadata file
    the container reads names it -- the same UUID as its CDI environment and the claim's status."""
    backend, gpu = hardware(sandbox)
    assert backend.gpu_instances(gpu) == []
    namespace = "extended-mig-dynamic"
    fifo = tmp_path / "held"
    os.mkfifo(fifo)
    script = (
        "env | grep '^ACCEL_DRA_DEVICE_' | sort; "
        "for f in $(find /var/run/kubernetes.io/dra-device-attributes -name '*-metadata.json'); "
        f'do echo "== $f"; cat "$f"; done; echo "== end"; read -r _ < {fifo}'
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": "pod"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "ctr",
                    "image": "ubuntu:24.04",
                    "command": ["bash", "-c", script],
                    "resources": {"limits": {"nvidia.com/mig-4g.20gb": 1}},
                }
            ],
        },
    }
    await sandbox.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, pod])
    # Opening the FIFO returns once the container printed everything; it then waits on it until deleted.
    with await asyncio.to_thread(fifo.open, "w"):
        (claim,) = sandbox.apiserver.objects(RESOURCE_CLAIMS, namespace)
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert result["device"].startswith("gpu-0000-0f-00-0-mig-4g-20gb-"), result
        (made,) = [i.devices[0].uuid for i in backend.gpu_instances(gpu)]
        lines = sandbox.pod_log(namespace, "pod", "ctr").strip().splitlines()
        assert any(line.endswith(f"={made}") for line in lines if line.startswith("ACCEL_DRA_DEVICE_")), lines
        start = next(i for i, line in enumerate(lines) if line.startswith("== /"))
        first = documents("\n".join(lines[start + 1 : lines.index("== end")]))[0]
        (device,) = first["requests"][0]["devices"]
        assert device["name"] == result["device"]
        assert device["attributes"]["uuid"] == {"string": made}
        assert device["attributes"]["profile"] == {"string": "4g.20gb"}
        assert sandbox.kube is not None
        await sandbox.kube.delete(PODS, "pod", namespace)
        # The pod is removed once the kubelet unprepared its claims.
        await sandbox.apiserver.wait_for(
            lambda s: not sandbox.apiserver.get_object(PODS, "pod", namespace), 20
        )
    assert backend.gpu_instances(gpu) == []

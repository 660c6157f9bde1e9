"""Dynamic MIG on the real cluster: the real scheduler allocates a partitionable device of node-2's H100
(dynamic MIG mode) through the GPU's shared counters, the real kubelet prepares it through the plugin --
which creates the MIG instance on the (fake) GPU -- and unprepares it with the pod, which destroys the
instance; the exporter follows the instance while it exists."""

from __future__ import annotations

from typing import Any

import pytest

from driver.devices.backend import open_backend
from driver.devices.fake import FakeBackend
from driver.devices.mig import GpuInstance
from driver.kube.client import NAMESPACES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.state.cdi import spec_file_name
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    claim_and_pod,
    condition,
    delete_and_wait,
    exporter_on,
    running,
    scheduling_decided,
    scrape_until,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NODE = "node-2"
NAMESPACE = "mig-dynamic"
H100 = "gpu-0000-47-00-0"
MIG_CLASS = DRIVER.replace("gpu.", "mig.", 1)
JSON = dict[str, Any]


def hardware(driver: Driver) -> FakeBackend:
    """node-2's fake GPUs, as its plugin and exporter see them (the chart's fake state directory)."""
    backend = open_backend(
        "fake:mig-dynamic", node_name=NODE, state_dir=str(driver.plugin_dir(NODE) / "fake-state")
    )
    assert isinstance(backend, FakeBackend)
    return backend


def instances(driver: Driver) -> list[GpuInstance]:
    fake = hardware(driver)
    (gpu,) = [g for g in fake.discover().gpus if g.name == H100]
    return fake.gpu_instances(gpu.uuid)


def claim(name: str, klass: str, expression: str) -> tuple[JSON, JSON]:
    selector = {"cel": {"expression": expression}}
    request = {"name": "gpu", "exactly": {"deviceClassName": klass, "selectors": [selector]}}
    made, pod = claim_and_pod(NAMESPACE, name, {"requests": [request]})
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    return made, pod


def mig_uuids(samples: list[Any]) -> set[str]:
    return {s.labels["mig_uuid"] for s in samples if s.name == "accel_dra_mig_info"}


@pytest.mark.usefixtures("node2_in_service")
async def test_a_pod_gets_a_mig_instance_created_for_it_and_it_is_gone_after_the_pod(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient
) -> None:
    slices = (await admin.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}"))["items"]
    assert any(c["name"] == f"{H100}-counters" for s in slices for c in s["spec"].get("sharedCounters") or [])
    assert instances(accel_dra) == []
    await apply_manifest(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    exporter, url = exporter_on(accel_dra, NODE)
    exporter.start()  # before the instance exists: it has to follow it
    slice_claim, slice_pod = claim("slice", MIG_CLASS, f'device.attributes["{DRIVER}"].profile == "3g.40gb"')
    whole_claim, whole_pod = claim(
        "whole", DRIVER, f'device.attributes["{DRIVER}"].productName.contains("H100")'
    )
    try:
        await scrape_until(
            url, exporter, lambda s: any(x.name == "accel_dra_mig_info" for x in s), "MIG series"
        )
        await admin.create(RESOURCE_CLAIMS, slice_claim, NAMESPACE)
        await admin.create(PODS, slice_pod, NAMESPACE)
        await wait_for(admin, PODS, "slice", NAMESPACE, running, what="pod slice Running")
        allocated = await wait_for(
            admin,
            RESOURCE_CLAIMS,
            "slice",
            NAMESPACE,
            lambda c: bool(c and c["status"].get("devices")),
            what="status.devices of slice",
        )
        assert allocated is not None
        (entry,) = allocated["status"]["devices"]
        assert entry["device"] in (f"{H100}-mig-3g-40gb-0", f"{H100}-mig-3g-40gb-4")
        # The instance exists on the GPU, at the allocated placement, and the claim names it.
        (instance,) = instances(accel_dra)
        (mig,) = instance.devices
        assert entry["device"].endswith(f"-{instance.placement.start}")
        assert (mig.profile, entry["data"]["uuid"], entry["data"]["migProfile"]) == (
            "3g.40gb",
            mig.uuid,
            "3g.40gb",
        )
        spec = accel_dra.cluster.nodes[NODE].cdi_dir / spec_file_name(DRIVER, allocated["metadata"]["uid"])
        assert "/dev/nvidia-caps/nvidia-cap" in spec.read_text()
        # The exporter sees the new instance and the pod holding it.
        samples = await scrape_until(
            url,
            exporter,
            lambda s: any(
                x.name == "accel_dra_gpu_allocation_info" and x.labels.get("mig_uuid") == mig.uuid for x in s
            ),
            f"attribution of {mig.uuid}",
        )
        (held,) = [
            x.labels
            for x in samples
            if x.name == "accel_dra_gpu_allocation_info" and x.labels.get("mig_uuid") == mig.uuid
        ]
        assert (held["pod"], held["dra_device"]) == ("slice", entry["device"])
        # The whole H100 consumes every counter of the GPU, some of which the instance holds: unschedulable.
        await admin.create(RESOURCE_CLAIMS, whole_claim, NAMESPACE)
        await admin.create(PODS, whole_pod, NAMESPACE)
        pending = await wait_for(
            admin, PODS, "whole", NAMESPACE, scheduling_decided, what="pod whole decided"
        )
        scheduled = condition(pending, "PodScheduled")
        assert scheduled and scheduled["reason"] == "Unschedulable", pending
        await delete_and_wait(admin, PODS, "whole", NAMESPACE)
        # The kubelet unprepares the claim before it lets the pod go: the instance is destroyed with it.
        await delete_and_wait(admin, PODS, "slice", NAMESPACE)
        assert instances(accel_dra) == []
        assert not spec.exists()
        await scrape_until(url, exporter, lambda s: mig.uuid not in mig_uuids(s), "MIG series gone")
    finally:
        exporter.stop()
        for name in ("whole", "slice"):
            await delete_and_wait(admin, PODS, name, NAMESPACE)
            await delete_and_wait(admin, RESOURCE_CLAIMS, name, NAMESPACE)
        await admin.delete(NAMESPACES, NAMESPACE)

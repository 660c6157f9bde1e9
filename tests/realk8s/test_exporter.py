"""The exporter, run as the chart runs it, attributes a GPU to the pod, container and claim that hold it
through the real kubelet's PodResources API."""

from __future__ import annotations

import pytest
from prometheus_client.samples import Sample

from driver.kube.client import PODS, RESOURCE_CLAIMS, KubeClient
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    claim_and_pod,
    delete_and_wait,
    exporter_on,
    running,
    scrape_until,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NAMESPACE = "exporter"
NODE = "node-1"


def allocation_of(uuid: str, sample: Sample) -> bool:
    return sample.name == "accel_dra_gpu_allocation_info" and sample.labels.get("uuid") == uuid


async def test_the_exporter_attributes_a_gpu_through_the_kubelets_pod_resources(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient
) -> None:
    await apply_manifest(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    claim, pod = claim_and_pod(
        NAMESPACE, "trainer", {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}
    )
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    await admin.create(RESOURCE_CLAIMS, claim, NAMESPACE)
    await admin.create(PODS, pod, NAMESPACE)
    exporter, url = exporter_on(accel_dra, NODE)
    try:
        await wait_for(admin, PODS, "trainer", NAMESPACE, running, what="pod trainer Running")
        allocated = await wait_for(
            admin,
            RESOURCE_CLAIMS,
            "trainer",
            NAMESPACE,
            lambda c: bool(c and c["status"].get("devices")),
            what="status.devices",
        )
        assert allocated is not None
        (entry,) = allocated["status"]["devices"]
        exporter.start()
        uuid = entry["data"]["uuid"]
        samples = await scrape_until(
            url, exporter, lambda s: any(allocation_of(uuid, x) for x in s), f"allocation sample for {uuid}"
        )
        labels = next(dict(s.labels) for s in samples if allocation_of(uuid, s))
        assert {k: labels.get(k) for k in ("namespace", "pod", "container")} == {
            "namespace": NAMESPACE,
            "pod": "trainer",
            "container": "ctr",
        }
        assert {
            k: labels.get(k)
            for k in ("resource_claim_namespace", "resource_claim", "dra_driver", "dra_pool", "dra_device")
        } == {
            "resource_claim_namespace": NAMESPACE,
            "resource_claim": "trainer",
            "dra_driver": DRIVER,
            "dra_pool": entry["pool"],
            "dra_device": entry["device"],
        }
    finally:
        exporter.stop()
        await delete_and_wait(admin, PODS, "trainer", NAMESPACE)
        await delete_and_wait(admin, RESOURCE_CLAIMS, "trainer", NAMESPACE)

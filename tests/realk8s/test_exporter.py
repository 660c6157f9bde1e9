"""The exporter, run as the chart runs it, attributes a GPU to the pod, container and claim that hold it
through the real kubelet's PodResources API."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driver.kube.client import PODS, RESOURCE_CLAIMS, KubeClient
from tests.support import processes
from tests.support.realk8s import Cluster, Component
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    claim_and_pod,
    delete_and_wait,
    exporter_args,
    running,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NAMESPACE = "exporter"
NODE = "node-1"


def free_port(ip: str) -> int:
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return int(probe.getsockname()[1])


async def scrape_until_attributed(
    url: str, uuid: str, exporter: Component, timeout: float = 60
) -> dict[str, str]:
    """The labels of the exporter's allocation sample for ``uuid``, polling /metrics until it is there."""
    text = ""
    async with aiohttp.ClientSession() as http:
        try:
            async with asyncio.timeout(timeout):
                while exporter.running:
                    try:
                        async with http.get(url) as response:
                            text = await response.text()
                    except aiohttp.ClientConnectionError:
                        text = ""  # not listening yet
                    for family in text_string_to_metric_families(text):
                        for sample in family.samples:
                            if (
                                sample.name == "accel_dra_gpu_allocation_info"
                                and sample.labels.get("uuid") == uuid
                            ):
                                return dict(sample.labels)
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pass
    raise AssertionError(
        f"no allocation sample for {uuid}; exporter log:\n{exporter.tail()}\nmetrics:\n{text[-3000:]}"
    )


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
    listen = f"{realk8s.ip}:{free_port(realk8s.ip)}"
    exporter = Component(
        "exporter-node-1",
        processes.accel_dra(*exporter_args(realk8s, NODE, listen)),
        realk8s.dir / "exporter-node-1.log",
        env={"NODE_NAME": NODE, "KUBECONFIG": str(accel_dra.kubeconfigs[NODE])},
    )
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
        labels = await scrape_until_attributed(f"http://{listen}/metrics", entry["data"]["uuid"], exporter)
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

"""DRA features of Kubernetes 1.37 on the real cluster (and what 1.36 does with them): the health stream in
the version the kubelet picks, extended resources backed by DRA, GPU sharing by consumable capacity and device
metadata. node-1 (fake ``dgx-h100``) serves every test here; node-2 stays out of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from driver.kube.client import PODS, KubeClient
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    Driver,
    apply_manifest,
    claim_and_pod,
    delete_namespace,
    running,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NODE = "node-1"
JSON = dict


@pytest.fixture
async def admin(realk8s: Cluster) -> AsyncIterator[KubeClient]:
    async with await KubeClient.connect(str(realk8s.kubeconfig)) as kube:
        yield kube


@pytest.fixture
async def namespace(request: pytest.FixtureRequest, admin: KubeClient) -> AsyncIterator[str]:
    name = "dra-" + request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40].strip("-")
    await apply_manifest(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    yield name
    await delete_namespace(admin, name)


def health_service(realk8s: Cluster) -> str:
    """The health service a kubelet of the cluster's release opens: the newest it knows."""
    return "v1.DRAResourceHealth" if realk8s.minor >= 37 else "v1alpha1.DRAResourceHealth"


def device_health(pod: JSON | None) -> list[tuple[str, str]]:
    """(resource id, health) of every device in the pod's ``allocatedResourcesStatus``."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return [
        (resource["resourceID"], resource.get("health", ""))
        for status in statuses
        for entry in status.get("allocatedResourcesStatus") or []
        for resource in entry.get("resources") or []
    ]


async def test_the_kubelet_reads_device_health_from_the_newest_stream_it_knows(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient, namespace: str
) -> None:
    service = health_service(realk8s)
    accel_dra.plugins[NODE].wait_log(rf"kubelet health stream opened.*service={service}")
    claim, pod = claim_and_pod(
        namespace,
        "health",
        {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.accel-dra.dev"}}]},
    )
    await apply_manifest(admin, [claim, pod])
    await wait_for(admin, PODS, "health", namespace, running, what="pod health Running")
    # The kubelet shows what the stream said about the pod's device in the pod's status.
    shown = await wait_for(
        admin, PODS, "health", namespace, lambda p: bool(device_health(p)), what="allocatedResourcesStatus"
    )
    assert [health for _, health in device_health(shown)] == ["Healthy"]
    streams = accel_dra.plugins[NODE].output()
    assert f"service={service}" in streams
    if realk8s.minor >= 37:
        assert "service=v1alpha1.DRAResourceHealth" not in streams, "a 1.37 kubelet needs only v1"

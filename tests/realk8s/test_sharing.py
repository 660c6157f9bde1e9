"""Two pods share one GPU by memory on a real control plane (consumable capacity, beta and on in 1.36 and
1.37): the plugin publishes node-1's GPUs shareable (chart value ``plugin.sharing.gpus``), the real scheduler
gives the gpu-test-sharing example's two claims shares of one GPU, the real kubelet prepares each share."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
import yaml

from driver.kube.client import PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.state.cdi import spec_file_name
from tests.realk8s.conftest import driver_on_a_cluster_of_its_own
from tests.support.chart import DEPLOY
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    delete_namespace,
    running,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NODE = "node-1"
EXAMPLE = DEPLOY / "examples" / "gpu-test-sharing" / "gpu-test-sharing.yaml"
NAMESPACE = "gpu-test-sharing"


@pytest.fixture(scope="module")
def sharing(realk8s: Cluster) -> Iterator[Driver]:
    with driver_on_a_cluster_of_its_own(
        realk8s.binary,
        NODE,
        values={"plugin": {"sharing": {"gpus": ["all"], "memoryStep": "1Gi"}}},
        profiles={"node-1": "pcie-l4x4", "node-2": "pcie-l4x4"},
    ) as driver:
        yield driver


@pytest.fixture
async def admin(sharing: Driver) -> AsyncIterator[KubeClient]:
    async with await KubeClient.connect(str(sharing.cluster.kubeconfig)) as kube:
        yield kube


async def test_two_pods_share_one_gpu_by_memory(sharing: Driver, admin: KubeClient) -> None:
    listed = await admin.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    stored = [d for s in listed["items"] for d in s["spec"]["devices"]]
    assert stored and all(d.get("allowMultipleAllocations") is True for d in stored), stored
    assert stored[0]["capacity"]["memory"]["requestPolicy"] == {
        "default": "22Gi",
        "validRange": {"min": "1Gi", "step": "1Gi"},
    }

    await apply_manifest(admin, [o for o in yaml.safe_load_all(EXAMPLE.read_text()) if o])
    try:
        for pod in ("pod0", "pod1"):
            await wait_for(admin, PODS, pod, NAMESPACE, running, what=f"pod {pod} Running")
        claims = (await admin.list(RESOURCE_CLAIMS, NAMESPACE))["items"]
        results = [c["status"]["allocation"]["devices"]["results"] for c in claims]
        assert len(results) == 2 and all(len(r) == 1 for r in results)
        (first,), (second,) = results
        assert first["device"] == second["device"], "both shares on one GPU"
        assert first["shareID"] != second["shareID"]
        assert first["consumedCapacity"] == second["consumedCapacity"] == {"memory": "8Gi"}
        cdi_dir = sharing.cluster.nodes[NODE].cdi_dir
        for claim, (result,) in zip(claims, results, strict=True):
            spec = json.loads((cdi_dir / spec_file_name(DRIVER, claim["metadata"]["uid"])).read_text())
            (device,) = spec["devices"]
            env = device["containerEdits"]["env"]
            assert (
                f"ACCEL_DRA_DEVICE_{result['device'].upper().replace('-', '_')}_SHARE_ID={result['shareID']}"
                in (env)
            )
    finally:
        await delete_namespace(admin, NAMESPACE)
    assert not list(sharing.cluster.nodes[NODE].cdi_dir.glob("*.json")), "the shares' specs outlived the pods"

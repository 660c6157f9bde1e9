"""Alpha ResourceSlice fields on a real cluster of their own, with DRAListTypeAttributes and
DRANodeAllocatableResources on in every component: the plugin (chart values ``plugin.listTypeAttributes``,
``plugin.hostMemoryPerPod``) publishes numaNode as lists and the host memory pods need, the real scheduler
matches devices by list and accounts the memory. node-1 serves fake ``pcie-l40s-snc`` GPUs (sub-NUMA
clustering: each GPU near two nodes)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.kube.client import PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.resources.publishing import NUMA_NODE
from tests.realk8s.conftest import driver_on_a_cluster_of_its_own
from tests.support.processes import accel_dra
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    claim_and_pod,
    condition,
    delete_namespace,
    running,
    scheduling_decided,
    wait_for,
)

pytestmark = pytest.mark.realk8s

GATES = ("DRAListTypeAttributes", "DRANodeAllocatableResources")
NODE = "node-1"
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def alpha(realk8s: Cluster) -> Iterator[Driver]:
    with driver_on_a_cluster_of_its_own(
        realk8s.binary,
        NODE,
        values={"plugin": {"listTypeAttributes": True, "hostMemoryPerPod": "1Gi"}},
        profiles={"node-1": "pcie-l40s-snc", "node-2": "pcie-l4x4"},
        feature_gates=GATES,
    ) as driver:
        yield driver


@pytest.fixture
async def admin(alpha: Driver) -> AsyncIterator[KubeClient]:
    async with await KubeClient.connect(str(alpha.cluster.kubeconfig)) as kube:
        yield kube


def current_api(cluster: Cluster) -> bool:
    """Both features as the plugin publishes them need 1.37: ``Device.nodeAllocatableResources`` with
    overhead is the 1.37 API (1.36 had mappings only), and the 1.36 scheduler's CEL cannot read a device
    with a list-type attribute."""
    return cluster.minor >= 37


async def node_devices(kube: KubeClient) -> dict[str, JSON]:
    listed = await kube.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    return {
        d["name"]: d for s in listed["items"] if s["spec"]["driver"] == DRIVER for d in s["spec"]["devices"]
    }


async def test_the_plugin_publishes_numa_node_lists_and_the_host_memory_pods_need(
    alpha: Driver, admin: KubeClient
) -> None:
    devices = await node_devices(admin)
    log = alpha.plugins[NODE].output()
    numa = [devices[name]["attributes"][NUMA_NODE] for name in sorted(devices)]
    allocatable = {str(d.get("nodeAllocatableResources")) for d in devices.values()}
    if current_api(alpha.cluster):
        assert numa == [{"ints": [0, 1]}, {"ints": [1, 0]}, {"ints": [2, 3]}, {"ints": [3, 2]}], log
        assert allocatable == {"{'memory': {'overhead': {'perPod': '1Gi'}}}"}, devices
        assert "level=error" not in log
    else:  # 1.36 has both gates, but cannot use what the plugin would publish: it says so and does without
        assert numa == [{"int": n} for n in (0, 1, 2, 3)], log
        assert allocatable == {"None"}
        assert "list-type attributes need Kubernetes 1.37" in log
        assert "feature=DRANodeAllocatableResources" in log


@pytest.fixture
async def namespace(request: pytest.FixtureRequest, admin: KubeClient) -> AsyncIterator[str]:
    name = request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    await apply_manifest(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    yield name
    await delete_namespace(admin, name)


async def test_the_scheduler_matches_gpus_by_numa_node_list_and_counts_their_host_memory(
    alpha: Driver, admin: KubeClient, namespace: str, tmp_path: Path
) -> None:
    devices_spec = {
        "requests": [{"name": "gpus", "exactly": {"deviceClassName": "gpu.accel-dra.dev", "count": 2}}],
        "constraints": [{"requests": ["gpus"], "matchAttribute": NUMA_NODE}],
    }
    claim, pod = claim_and_pod(namespace, "pair", devices_spec)
    path = tmp_path / "claim.yaml"
    path.write_text(yaml.safe_dump(claim))
    explained = subprocess.run(
        accel_dra(
            "explain",
            str(path),
            "--kubeconfig",
            str(alpha.cluster.kubeconfig),
            "--node",
            NODE,
            "-o",
            "json",
            "--feature-gates",
            "DRAListTypeAttributes=true",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    without = subprocess.run(
        accel_dra("explain", str(path), "--kubeconfig", str(alpha.cluster.kubeconfig), "--node", NODE),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    await apply_manifest(admin, [claim, pod])
    if not current_api(alpha.cluster):
        # Single NUMA nodes, one per GPU: no two match, whatever the gate.
        assert (explained.returncode, without.returncode) == (1, 1)
        decided = await wait_for(admin, PODS, "pair", namespace, scheduling_decided, what="the scheduler")
        assert (condition(decided, "PodScheduled") or {}).get("reason") == "Unschedulable"
        return
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert without.returncode == 1, "with the gate off no list matches another"
    started = await wait_for(admin, PODS, "pair", namespace, running, what="pod pair Running")
    allocated = await admin.get(RESOURCE_CLAIMS, "pair", namespace)
    chosen = sorted(r["device"] for r in allocated["status"]["allocation"]["devices"]["results"])
    assert chosen in (["gpu-0000-19-00-0", "gpu-0000-3b-00-0"], ["gpu-0000-99-00-0", "gpu-0000-bb-00-0"])
    report = json.loads(explained.stdout)
    (node_report,) = report["nodes"]
    (claim_report,) = node_report["claims"]
    fitting = {
        d["device"].rpartition("/")[2] for r in claim_report["requests"] for d in r["devices"] if d["match"]
    }
    assert set(chosen) <= fitting
    # The scheduler records the host memory: each device's 1Gi, summed over the claim's two devices.
    statuses = (started or {})["status"].get("nodeAllocatableResourceClaimStatuses") or []
    assert [(s["resourceClaimName"], s.get("overhead")) for s in statuses] == [
        ("pair", [{"name": "memory", "perPod": "2Gi"}])
    ], statuses


async def test_host_memory_counts_against_the_nodes_allocatable_memory(
    alpha: Driver, admin: KubeClient, namespace: str
) -> None:
    """A hollow node has 3.75Gi of memory: four GPUs' 1Gi each does not fit beside the kubelet's reserve."""
    devices_spec = {
        "requests": [{"name": "gpus", "exactly": {"deviceClassName": "gpu.accel-dra.dev", "count": 4}}]
    }
    claim, pod = claim_and_pod(namespace, "all", devices_spec)
    await apply_manifest(admin, [claim, pod])
    decided = await wait_for(
        admin, PODS, "all", namespace, scheduling_decided, what="the scheduler's decision"
    )
    scheduled = condition(decided, "PodScheduled") or {}
    if current_api(alpha.cluster):
        assert scheduled.get("reason") == "Unschedulable" and "Insufficient memory" in scheduled["message"]
    else:  # 1.36: no host memory declared, so the four GPUs fit
        assert (decided or {})["spec"].get("nodeName") == NODE

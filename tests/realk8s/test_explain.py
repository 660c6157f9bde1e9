"""``accel-dra explain --kubeconfig`` against the real scheduler on claims generated around the two nodes'
devices (node-1: eight H100s on two NUMA nodes in one NVLink domain; node-2: four A100 MIG devices): the
same verdict, and the scheduler's devices are ones explain finds fitting."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.kube.client import NAMESPACES, PODS, RESOURCE_CLAIMS, KubeClient
from tests.support.realk8s import Cluster, run_async
from tests.support.realk8s_driver import (
    DRIVER,
    apply_manifest,
    claim_and_pod,
    condition,
    delete_and_wait,
    expected_nodes,
    explain,
    explained_devices,
    scheduling_decided,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NAMESPACE = "explain-vs-scheduler"
GPU, MIG = DRIVER, DRIVER.replace("gpu.", "mig.", 1)
NUMA = "resource.kubernetes.io/numaNode"
JSON = dict[str, Any]


def exactly(device_class: str = GPU, count: int = 1, *cel: str, name: str = "r") -> JSON:
    request: JSON = {"deviceClassName": device_class, "count": count}
    if cel:
        request["selectors"] = [{"cel": {"expression": e}} for e in cel]
    return {"name": name, "exactly": request}


def attr(name: str) -> str:
    return f'device.attributes["{DRIVER}"].{name}'


MEMORY = f'device.capacity["{DRIVER}"].memory'

#: name -> the claim's ``spec.devices``.
CASES: dict[str, JSON] = {
    "one-gpu": {"requests": [exactly()]},
    "memory-80gi": {"requests": [exactly(GPU, 1, f'{MEMORY}.compareTo(quantity("80Gi")) >= 0')]},
    "memory-100gi": {"requests": [exactly(GPU, 1, f'{MEMORY}.compareTo(quantity("100Gi")) >= 0')]},
    "eight-gpus": {"requests": [exactly(GPU, 8)]},
    "nine-gpus": {"requests": [exactly(GPU, 9)]},
    "all-gpus": {"requests": [{"name": "r", "exactly": {"deviceClassName": GPU, "allocationMode": "All"}}]},
    "hopper-x4": {"requests": [exactly(GPU, 4, f'{attr("architecture")} == "Hopper"')]},
    "ampere-gpu": {"requests": [exactly(GPU, 1, f'{attr("architecture")} == "Ampere"')]},
    "same-numa-x4": {"requests": [exactly(GPU, 4)], "constraints": [{"matchAttribute": NUMA}]},
    "same-numa-x5": {"requests": [exactly(GPU, 5)], "constraints": [{"matchAttribute": NUMA}]},
    "distinct-numa-x2": {"requests": [exactly(GPU, 2)], "constraints": [{"distinctAttribute": NUMA}]},
    "distinct-numa-x3": {"requests": [exactly(GPU, 3)], "constraints": [{"distinctAttribute": NUMA}]},
    "nvlink-pair": {"requests": [exactly(GPU, 2)], "constraints": [{"matchAttribute": f"{DRIVER}/nvlinkDomain"}]},
    "mig-3g": {"requests": [exactly(MIG, 1, f'{attr("profile")} == "3g.20gb"')]},
    "mig-1g-x2": {"requests": [exactly(MIG, 2, f'{attr("profile")} == "1g.5gb"')]},
    "mig-1g-x3": {"requests": [exactly(MIG, 3, f'{attr("profile")} == "1g.5gb"')]},
    "gpu-and-mig": {"requests": [exactly(GPU, name="gpu"), exactly(MIG, name="mig")]},
    "first-available-falls-back-to-mig": {
        "requests": [
            {
                "name": "r",
                "firstAvailable": [
                    {"name": "big", **exactly(GPU, 1, f'{MEMORY}.compareTo(quantity("100Gi")) >= 0')["exactly"]},
                    {"name": "slice", "deviceClassName": MIG},
                ],
            }
        ]
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def namespace(realk8s: Cluster) -> Iterator[str]:
    async def create() -> None:
        async with await KubeClient.connect(str(realk8s.kubeconfig)) as kube:
            await apply_manifest(
                kube, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
            )

    async def delete() -> None:
        async with await KubeClient.connect(str(realk8s.kubeconfig)) as kube:
            await kube.delete(NAMESPACES, NAMESPACE)

    run_async(create())
    yield NAMESPACE
    run_async(delete())


_names = (f"c{i}" for i in itertools.count())


@pytest.mark.usefixtures("accel_dra", "namespace")
@pytest.mark.parametrize("case", sorted(CASES))
async def test_explain_and_the_scheduler_agree(
    request: pytest.FixtureRequest,
    realk8s: Cluster,
    admin: KubeClient,
    tmp_path: Path,
    case: str,
) -> None:
    name = next(_names)
    claim, pod = claim_and_pod(NAMESPACE, name, CASES[case])
    path = tmp_path / "claim.yaml"
    path.write_text(yaml.safe_dump(claim))
    report = explain(realk8s, path)
    expected = await expected_nodes(request, admin, report)
    await admin.create(RESOURCE_CLAIMS, claim, NAMESPACE)
    await admin.create(PODS, pod, NAMESPACE)
    try:
        decided = await wait_for(
            admin, PODS, name, NAMESPACE, scheduling_decided, what="the scheduler's decision"
        )
        assert decided is not None
        node = decided["spec"].get("nodeName")
        if not expected:
            assert node is None, f"scheduled on {node}; explain: not allocatable"
            assert "cannot allocate all claims" in (condition(decided, "PodScheduled") or {}).get(
                "message", ""
            )
            return
        assert node in expected, f"scheduled on {node}; explain: allocatable on {sorted(expected)}"
        allocated = await admin.get(RESOURCE_CLAIMS, name, NAMESPACE)
        verdicts = explained_devices(report, node, f"{NAMESPACE}/{name}")
        for result in allocated["status"]["allocation"]["devices"]["results"]:
            device = f"{result['driver']}/{result['pool']}/{result['device']}"
            verdict = verdicts.get((result["request"], device))
            assert verdict and verdict["match"], (
                f"the scheduler chose {device} for {result['request']}: {verdict}"
            )
    finally:
        await delete_and_wait(admin, PODS, name, NAMESPACE)
        await delete_and_wait(admin, RESOURCE_CLAIMS, name, NAMESPACE)

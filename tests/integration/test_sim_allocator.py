"""The sandbox scheduler's DRA step against the sim API server over HTTP, and `explain --kubeconfig`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from driver.devices.backend import open_backend
from driver.kube.client import (
    DEVICE_CLASSES,
    NAMESPACES,
    NODES,
    PODS,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    KubeClient,
)
from driver.resources.attributes import device_entry
from driver.sim.allocator import SimAllocator
from driver.sim.apiserver import SimApiServer

REPO = Path(__file__).resolve().parents[2]
DRIVER = "gpu.accel-dra.dev"
NODE = "node-1"
JSON = dict[str, Any]
BIG_MEMORY = f'device.capacity["{DRIVER}"].memory.compareTo(quantity("40Gi")) >= 0'


def claim_body(name: str, count: int = 1, selectors: tuple[str, ...] = ()) -> JSON:
    exactly: JSON = {"deviceClassName": DRIVER, "count": count}
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    return {
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
    }


async def seed(kube: KubeClient) -> list[str]:
    """A node with the fake 4x L4 box published as one slice, and the GPU DeviceClass; the device names."""
    inventory = open_backend("fake:pcie-l4x4", node_name=NODE).discover()
    devices = [device_entry(gpu, inventory, DRIVER) for gpu in inventory.gpus]
    await kube.create(NODES, {"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}})
    await kube.create(
        DEVICE_CLASSES,
        {
            "metadata": {"name": DRIVER},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
        },
    )
    await kube.create(
        RESOURCE_SLICES,
        {
            "metadata": {"name": f"{NODE}-{DRIVER}-a"},
            "spec": {
                "driver": DRIVER,
                "nodeName": NODE,
                "pool": {"name": NODE, "generation": 0, "resourceSliceCount": 1},
                "devices": devices,
            },
        },
    )
    return [d["name"] for d in devices]


async def pod_with_claims(kube: KubeClient, name: str, *claims: str, namespace: str = "default") -> JSON:
    body = {
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "busybox"}],
            "resourceClaims": [{"name": f"c{i}", "resourceClaimName": c} for i, c in enumerate(claims)],
        },
    }
    return await kube.create(PODS, body, namespace)


async def test_pod_claim_is_allocated_and_reserved(kube: KubeClient) -> None:
    devices = await seed(kube)
    await kube.create(RESOURCE_CLAIMS, claim_body("gpu-a"), "default")
    pod = await pod_with_claims(kube, "pod-a", "gpu-a")

    outcome = await SimAllocator(kube).allocate_for_pod(pod, NODE)

    assert outcome.allocated, outcome.reason
    stored = await kube.get(RESOURCE_CLAIMS, "gpu-a", "default")
    assert stored["status"]["allocation"] == {
        "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": NODE, "device": devices[0]}]},
        "nodeSelector": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE]}]}
            ]
        },
    }
    assert stored["status"]["reservedFor"] == [
        {"resource": "pods", "name": "pod-a", "uid": pod["metadata"]["uid"]}
    ]
    assert outcome.claims[0]["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


async def test_second_pod_cannot_get_the_same_device(kube: KubeClient) -> None:
    devices = await seed(kube)
    allocator = SimAllocator(kube)
    await kube.create(RESOURCE_CLAIMS, claim_body("gpu-a"), "default")
    assert (await allocator.allocate_for_pod(await pod_with_claims(kube, "pod-a", "gpu-a"), NODE)).allocated

    await kube.create(RESOURCE_CLAIMS, claim_body("all-four", count=4), "default")
    blocked = await allocator.allocate_for_pod(await pod_with_claims(kube, "pod-b", "all-four"), NODE)
    assert not blocked.allocated
    assert "request gpu needs 4 device(s); 3 of 4 device(s) fit (1 are in use)" in blocked.reason
    assert "allocation" not in (await kube.get(RESOURCE_CLAIMS, "all-four", "default")).get("status", {})

    await kube.create(RESOURCE_CLAIMS, claim_body("three", count=3), "default")
    fits = await allocator.allocate_for_pod(await pod_with_claims(kube, "pod-c", "three"), NODE)
    assert fits.allocated, fits.reason
    taken = [r["device"] for r in fits.claims[0]["status"]["allocation"]["devices"]["results"]]
    assert taken == devices[1:]


async def test_impossible_claim_returns_a_reason(kube: KubeClient) -> None:
    await seed(kube)
    await kube.create(RESOURCE_CLAIMS, claim_body("big", selectors=(BIG_MEMORY,)), "default")
    outcome = await SimAllocator(kube).allocate_for_pod(await pod_with_claims(kube, "pod-big", "big"), NODE)
    assert not outcome.allocated
    assert f"fail request gpu selector #0 `{BIG_MEMORY}`" in outcome.reason
    assert not (await kube.get(RESOURCE_CLAIMS, "big", "default")).get("status", {}).get("allocation")


async def test_shared_claim_is_reserved_for_both_pods(kube: KubeClient) -> None:
    await seed(kube)
    allocator = SimAllocator(kube)
    await kube.create(RESOURCE_CLAIMS, claim_body("shared"), "default")
    first = await allocator.allocate_for_pod(await pod_with_claims(kube, "pod-1", "shared"), NODE)
    second = await allocator.allocate_for_pod(await pod_with_claims(kube, "pod-2", "shared"), NODE)
    assert first.allocated and second.allocated
    stored = await kube.get(RESOURCE_CLAIMS, "shared", "default")
    assert [r["name"] for r in stored["status"]["reservedFor"]] == ["pod-1", "pod-2"]
    assert stored["status"]["allocation"] == first.claims[0]["status"]["allocation"]


async def test_write_conflict_is_retried(kube: KubeClient, apiserver: SimApiServer) -> None:
    await seed(kube)
    await kube.create(RESOURCE_CLAIMS, claim_body("gpu-a"), "default")
    pod = await pod_with_claims(kube, "pod-a", "gpu-a")
    apiserver.inject_fault("PUT", r"/resourceclaims/gpu-a/status$", 409, count=2)
    outcome = await SimAllocator(kube).allocate_for_pod(pod, NODE)
    assert outcome.allocated, outcome.reason
    stored = await kube.get(RESOURCE_CLAIMS, "gpu-a", "default")
    assert stored["status"]["reservedFor"][0]["name"] == "pod-a"


async def test_missing_claim_and_uncreated_template_claim(kube: KubeClient) -> None:
    await seed(kube)
    allocator = SimAllocator(kube)
    missing = await allocator.allocate_for_pod(await pod_with_claims(kube, "pod-x", "nope"), NODE)
    assert missing.reason == "resourceclaim default/nope not found"
    templated = {
        "metadata": {"name": "pod-t", "namespace": "default", "uid": "u-t"},
        "spec": {"resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]},
    }
    pending = await allocator.allocate_for_pod(templated, NODE)
    assert pending.reason == "waiting for the ResourceClaim of pod claim gpu (template one-gpu) to be created"


async def test_explain_reads_the_cluster(kube: KubeClient, kubeconfig: Path, tmp_path: Path) -> None:
    devices = await seed(kube)
    await kube.create(NAMESPACES, {"metadata": {"name": "team-a"}})
    await kube.create(RESOURCE_CLAIMS, claim_body("holder", count=4), "team-a")
    trainer = await pod_with_claims(kube, "trainer", "holder", namespace="team-a")
    assert (await SimAllocator(kube).allocate_for_pod(trainer, NODE)).allocated
    claim_file = tmp_path / "claim.yaml"
    mine = {
        "kind": "ResourceClaim",
        **claim_body("mine"),
        "metadata": {"name": "mine", "namespace": "default"},
    }
    claim_file.write_text(yaml.safe_dump(mine))

    code = (
        "import argparse, sys\n"
        "from driver.allocation.cli import add_explain_arguments, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_explain_arguments(parser)\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(claim_file), "--kubeconfig", str(kubeconfig), "-o", "json",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, stderr.decode()
    node = json.loads(stdout)["nodes"][0]
    assert node["node"] == NODE
    reasons = [d["reasons"][0] for d in node["claims"][0]["requests"][0]["devices"]]
    assert [r["message"] for r in reasons] == ["already allocated to claim team-a/holder"] * len(devices)

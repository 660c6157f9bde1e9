"""The sandbox scheduler's DRA step against the sim API server over HTTP, and `explain --kubeconfig`."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from driver.devices.backend import open_backend
from driver.kube.client import (
    DEVICE_CLASSES,
    DEVICE_TAINT_RULES,
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
    allocation = dict(stored["status"]["allocation"])
    # kube-scheduler 1.37 stamps every allocation and protects the claim from deletion while allocated.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", allocation.pop("allocationTimestamp"))
    assert stored["metadata"]["finalizers"] == ["resource.kubernetes.io/delete-protection"]
    assert allocation == {
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


# -- consumable capacity, DeviceTaintRules, binding conditions ---------------------------------------------------


async def publish(kube: KubeClient, name: str, devices: list[JSON]) -> None:
    await kube.create(
        RESOURCE_SLICES,
        {
            "metadata": {"name": name},
            "spec": {
                "driver": DRIVER,
                "nodeName": NODE,
                "pool": {"name": name, "generation": 0, "resourceSliceCount": 1},
                "devices": devices,
            },
        },
    )


def memory_claim(name: str, memory: str) -> JSON:
    body = claim_body(name)
    body["spec"]["devices"]["requests"][0]["exactly"]["capacity"] = {"requests": {"memory": memory}}
    return body


async def test_shared_device_capacity_is_accounted_across_pods(kube: KubeClient) -> None:
    await seed(kube)
    shared = {
        "name": "shared-0",
        "allowMultipleAllocations": True,
        "capacity": {
            "memory": {"value": "40Gi", "requestPolicy": {"default": "10Gi", "validValues": ["10Gi", "20Gi"]}}
        },
    }
    await kube.delete(RESOURCE_SLICES, f"{NODE}-{DRIVER}-a")
    await publish(kube, "shared", [shared])
    allocator = SimAllocator(kube)
    results = []
    for index, memory in enumerate(("20Gi", "15Gi")):  # 15Gi rounds up to the valid value 20Gi
        await kube.create(RESOURCE_CLAIMS, memory_claim(f"share-{index}", memory), "default")
        outcome = await allocator.allocate_for_pod(
            await pod_with_claims(kube, f"pod-{index}", f"share-{index}"), NODE
        )
        assert outcome.allocated, outcome.reason
        results.append(outcome.claims[0]["status"]["allocation"]["devices"]["results"][0])
    assert [r["consumedCapacity"] for r in results] == [{"memory": "20Gi"}, {"memory": "20Gi"}]
    assert results[0]["shareID"] != results[1]["shareID"]
    # 40Gi are taken: a third share does not fit, whatever it asks.
    await kube.create(RESOURCE_CLAIMS, memory_claim("share-2", "10Gi"), "default")
    full = await allocator.allocate_for_pod(await pod_with_claims(kube, "pod-2", "share-2"), NODE)
    assert not full.allocated
    assert "1 lack the capacity asked for" in full.reason


async def test_device_taint_rules_taint_devices(kube: KubeClient) -> None:
    devices = await seed(kube)
    rule = {
        "metadata": {"name": "drain-first"},
        "spec": {
            "deviceSelector": {"driver": DRIVER, "pool": NODE, "device": devices[0]},
            "taint": {"key": "example.com/maintenance", "effect": "NoSchedule"},
        },
    }
    await kube.create(DEVICE_TAINT_RULES, rule)
    await kube.create(RESOURCE_CLAIMS, claim_body("gpu-a"), "default")
    outcome = await SimAllocator(kube).allocate_for_pod(await pod_with_claims(kube, "pod-a", "gpu-a"), NODE)
    assert outcome.allocated, outcome.reason
    assert outcome.claims[0]["status"]["allocation"]["devices"]["results"][0]["device"] == devices[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def attach_style(kube: KubeClient) -> None:
    """Two devices that must be attached before a pod may use them (binding conditions)."""
    await seed(kube)
    await kube.delete(RESOURCE_SLICES, f"{NODE}-{DRIVER}-a")
    devices = [
        {
            "name": f"fabric-{i}",
            "bindingConditions": ["Attached"],
            "bindingFailureConditions": ["AttachFailed"],
        }
        for i in range(2)
    ]
    await publish(kube, "fabric", devices)


async def set_condition(kube: KubeClient, claim: str, condition: str) -> None:
    stored = await kube.get(RESOURCE_CLAIMS, claim, "default")
    result = stored["status"]["allocation"]["devices"]["results"][0]
    entry = {
        "driver": result["driver"],
        "pool": result["pool"],
        "device": result["device"],
        "conditions": [
            {
                "type": condition,
                "status": "True",
                "reason": "Test",
                "message": f"{condition} by the test",
                "lastTransitionTime": "2027-01-01T00:00:00Z",
            }
        ],
    }
    stored["status"]["devices"] = [entry]
    await kube.update(RESOURCE_CLAIMS, stored, "default", subresource="status")


async def test_binding_conditions_hold_the_pod_until_they_are_met(kube: KubeClient) -> None:
    await attach_style(kube)
    clock = FakeClock()
    allocator = SimAllocator(kube, clock=clock)
    await kube.create(RESOURCE_CLAIMS, claim_body("attach"), "default")
    pod = await pod_with_claims(kube, "pod-a", "attach")

    waiting = await allocator.allocate_for_pod(pod, NODE)
    assert waiting.allocated and waiting.waiting
    assert "binding conditions not met yet: gpu.accel-dra.dev/fabric/fabric-0 Attached" in waiting.reason
    allocation = waiting.claims[0]["status"]["allocation"]
    assert allocation["allocationTimestamp"] == "2027-01-15T08:00:00Z"
    assert allocation["devices"]["results"][0]["bindingConditions"] == ["Attached"]

    await set_condition(kube, "attach", "Attached")
    ready = await allocator.allocate_for_pod(pod, NODE)
    assert ready.allocated and not ready.waiting, ready.reason


async def test_failed_binding_deallocates_and_retries(kube: KubeClient) -> None:
    await attach_style(kube)
    clock = FakeClock()
    allocator = SimAllocator(kube, clock=clock)
    await kube.create(RESOURCE_CLAIMS, claim_body("attach"), "default")
    pod = await pod_with_claims(kube, "pod-a", "attach")
    assert (await allocator.allocate_for_pod(pod, NODE)).waiting

    await set_condition(kube, "attach", "AttachFailed")
    retried = await allocator.allocate_for_pod(pod, NODE)
    assert not retried.allocated
    assert "binding failure condition AttachFailed is true: AttachFailed by the test" in retried.reason
    released = await kube.get(RESOURCE_CLAIMS, "attach", "default")
    assert not released.get("status", {}).get("allocation")

    again = await allocator.allocate_for_pod(pod, NODE)
    assert again.waiting  # allocated anew; waits for the new attach

    clock.now += 601  # nothing attached within the binding timeout
    timed_out = await allocator.allocate_for_pod(pod, NODE)
    assert not timed_out.allocated
    assert "binding conditions not met within 600s" in timed_out.reason

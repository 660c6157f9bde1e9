"""End to end through the sandbox: example manifests -> claims -> scheduler -> real plugin -> containers.

One sandbox (API server, controllers, node, real plugin and exporter processes) serves the module; every
test works in its own namespaces.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from driver.kube.client import (
    DEVICE_CLASSES,
    EVENTS,
    NODES,
    PODS,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    ApiError,
    KubeClient,
)
from driver.sim.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLES = Path(__file__).parents[2] / "deploy" / "examples"
DRIVER = "gpu.accel-dra.dev"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(profile="dgx-h100", exporter=False)) as box:
        yield box


def example(name: str) -> list[dict[str, Any]]:
    return [
        d for p in sorted((EXAMPLES / name).glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]


def claims_of(sandbox: Sandbox, namespace: str) -> list[dict[str, Any]]:
    return sandbox.apiserver.objects(RESOURCE_CLAIMS, namespace)


def events_of(sandbox: Sandbox, namespace: str, name: str) -> list[dict[str, Any]]:
    return [e for e in sandbox.apiserver.objects(EVENTS, namespace) if e["involvedObject"]["name"] == name]


def allocated_devices(claim: dict[str, Any]) -> list[str]:
    return [r["device"] for r in claim["status"]["allocation"]["devices"]["results"]]


def attributes(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    return {
        d["name"]: {**d.get("attributes", {}), **d.get("capacity", {})}
        for s in sandbox.apiserver.objects(RESOURCE_SLICES)
        for d in s["spec"]["devices"]
    }


async def log_of(sandbox: Sandbox, namespace: str, pod: str, container: str, needle: str) -> str:
    """The container's log once it contains ``needle`` (logs are files: re-read until it shows up)."""
    for _ in range(200):
        text = sandbox.pod_log(namespace, pod, container)
        if needle in text:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError(f"{namespace}/{pod}/{container} never logged {needle!r}: {text!r}")


def gpu_env(log_text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in log_text.splitlines() if line.startswith("ACCEL_DRA_DEVICE_"))
    return {k: v for k, v in pairs if not k.endswith(("_CLAIM", "_CLAIM_UID"))}


async def test_one_gpu_per_pod_from_a_template(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test1"))
    pod = await sandbox.wait_pod("gpu-test1", "pod", ["Running"])
    (claim,) = claims_of(sandbox, "gpu-test1")
    owner = claim["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("Pod", pod["metadata"]["uid"])
    (device,) = allocated_devices(claim)
    text = await log_of(sandbox, "gpu-test1", "pod", "ctr", "GPU 0:")
    uuid = attributes(sandbox)[device]["uuid"]["string"]
    assert list(gpu_env(text).values()) == [uuid]
    # nvidia-smi inside the container sees exactly the claimed GPU.
    assert [line for line in text.splitlines() if line.startswith("GPU ")] == [
        f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {uuid})"
    ]
    assert claim["status"]["reservedFor"] == [
        {"resource": "pods", "name": "pod", "uid": pod["metadata"]["uid"]}
    ]


async def test_two_containers_share_one_gpu(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test2"))
    pod = await sandbox.wait_pod("gpu-test2", "pod", ["Running"])
    names = [c["name"] for c in pod["spec"]["containers"]]
    envs = [gpu_env(await log_of(sandbox, "gpu-test2", "pod", n, "ACCEL_DRA_DEVICE_")) for n in names]
    assert len(envs) == 2 and envs[0] == envs[1] and len(envs[0]) == 1


async def test_two_pods_share_one_claim(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test3"))
    for name in ("pod0", "pod1"):
        await sandbox.wait_pod("gpu-test3", name, ["Running"])
    (claim,) = claims_of(sandbox, "gpu-test3")
    assert len(claim["status"]["reservedFor"]) == 2
    envs = [
        gpu_env(await log_of(sandbox, "gpu-test3", p, "ctr", "ACCEL_DRA_DEVICE_")) for p in ("pod0", "pod1")
    ]
    assert envs[0] == envs[1]


async def test_an_extended_resource_limit_gets_a_gpu_through_dra(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test-extended-resource"))
    pod = await sandbox.wait_pod("gpu-test-extended-resource", "pod", ["Running"])
    status = pod["status"]["extendedResourceClaimStatus"]
    assert status["requestMappings"] == [
        {"containerName": "ctr", "resourceName": "nvidia.com/gpu", "requestName": "container-0-request-0"}
    ]
    (claim,) = claims_of(sandbox, "gpu-test-extended-resource")
    assert claim["metadata"]["name"] == status["resourceClaimName"]
    assert claim["metadata"]["name"].startswith("pod-extended-resources-")
    assert claim["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    assert claim["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == "gpu.accel-dra.dev"
    # Made at PreBind as kube-scheduler makes it: protected from deletion while allocated, stamped.
    assert claim["metadata"]["finalizers"] == ["resource.kubernetes.io/delete-protection"]
    assert claim["status"]["allocation"]["allocationTimestamp"]
    (device,) = allocated_devices(claim)
    text = await log_of(sandbox, "gpu-test-extended-resource", "pod", "ctr", "GPU 0:")
    assert list(gpu_env(text).values()) == [attributes(sandbox)[device]["uuid"]["string"]]
    assert [(e["reason"], e["message"]) for e in events_of(sandbox, "gpu-test-extended-resource", "pod")] == [
        ("Scheduled", f"Successfully assigned gpu-test-extended-resource/pod to {sandbox.config.node_name}")
    ]


@pytest.mark.parametrize(
    ("limits", "verdict"),
    [
        # More GPUs than the node has: the DynamicResources filter cannot allocate the extended claim.
        (
            {"nvidia.com/gpu": 9},
            "1 cannot allocate all claims. preemption: 0/1 nodes are available: 1 "
            "Preemption is not helpful for scheduling.",
        ),
        # Neither a device plugin nor a DeviceClass provides it: NodeResourcesFit's shortage.
        (
            {"example.com/fpga": 1},
            "1 Insufficient example.com/fpga. preemption: 0/1 nodes are available: 1 "
            "No preemption victims found for incoming pod.",
        ),
    ],
    ids=["too-many-gpus", "not-backed"],
)
async def test_an_extended_resource_no_node_can_give_leaves_the_pod_pending_in_the_schedulers_words(
    sandbox: Sandbox, limits: dict[str, int], verdict: str
) -> None:
    namespace = f"extended-{next(iter(limits)).split('/')[-1]}"
    (pod,) = [o for o in example("gpu-test-extended-resource") if o["kind"] == "Pod"]
    pod["metadata"]["namespace"] = namespace
    pod["spec"]["containers"][0]["resources"]["limits"] = limits
    await sandbox.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, pod])

    def unschedulable(_store: Any) -> Any:
        current = sandbox.apiserver.get_object(PODS, "pod", namespace) or {}
        return next(
            (
                c
                for c in current.get("status", {}).get("conditions") or []
                if c["type"] == "PodScheduled" and c["status"] == "False"
            ),
            None,
        )

    condition = await sandbox.apiserver.wait_for(unschedulable, timeout=20)
    assert (condition["reason"], condition["message"]) == (
        "Unschedulable",
        f"0/1 nodes are available: {verdict}",
    )
    assert [(e["reason"], e["message"]) for e in events_of(sandbox, namespace, "pod")] == [
        ("FailedScheduling", condition["message"])
    ]
    # The claim is made only when it can be allocated: none is left behind.
    assert claims_of(sandbox, namespace) == []
    current = sandbox.apiserver.get_object(PODS, "pod", namespace)
    assert current is not None and "extendedResourceClaimStatus" not in current["status"]
    # A pending pod is tried again on every claim or slice change: leave none to the module's later tests.
    assert sandbox.kube is not None
    await sandbox.kube.delete(PODS, "pod", namespace)
    await sandbox.apiserver.wait_for(lambda _s: not sandbox.apiserver.get_object(PODS, "pod", namespace))


async def test_cel_memory_selector(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test4"))
    await sandbox.wait_pod("gpu-test4", "pod", ["Running"])
    (claim,) = claims_of(sandbox, "gpu-test4")
    (device,) = allocated_devices(claim)
    assert attributes(sandbox)[device]["memory"]["value"] == "81559Mi"


async def test_nvlink_pair_by_match_attribute(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test5"))
    await sandbox.wait_pod("gpu-test5", "pod", ["Running"])
    (claim,) = claims_of(sandbox, "gpu-test5")
    devices = allocated_devices(claim)
    domains = {attributes(sandbox)[d]["nvlinkDomain"]["string"] for d in devices}
    assert len(devices) == 2 and len(set(devices)) == 2 and len(domains) == 1
    env = gpu_env(await log_of(sandbox, "gpu-test5", "pod", "ctr", "ACCEL_DRA_DEVICE_"))
    assert len(env) == 2


async def test_impossible_claim_stays_pending_with_a_reason(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test-impossible"))

    def unschedulable(store: Any) -> Any:
        """The verdict once the claim exists (before that the scheduler waits for it to be created)."""
        pod = sandbox.apiserver.get_object(PODS, "pod", "gpu-test-impossible")
        conditions = (pod or {}).get("status", {}).get("conditions") or []
        return next(
            (
                c
                for c in conditions
                if c["type"] == "PodScheduled"
                and c["status"] == "False"
                and "cannot allocate" in c["message"]
            ),
            None,
        )

    condition = await sandbox.apiserver.wait_for(unschedulable, timeout=20)
    assert condition["reason"] == "Unschedulable"
    # kube-scheduler's words: no per-device detail (that is what `accel-dra explain` adds).
    assert condition["message"] == (
        "0/1 nodes are available: 1 cannot allocate all claims. "
        "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    )
    events = [
        e
        for e in sandbox.apiserver.objects(EVENTS)
        if e["involvedObject"]["name"] == "pod" and e["metadata"]["namespace"] == "gpu-test-impossible"
    ]
    assert [(e["type"], e["reason"], e["reportingComponent"], e["message"]) for e in events] == [
        ("Warning", "FailedScheduling", "default-scheduler", condition["message"])
    ]
    pod = sandbox.apiserver.get_object(PODS, "pod", "gpu-test-impossible")
    assert pod is not None and pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    (claim,) = claims_of(sandbox, "gpu-test-impossible")
    assert not claim.get("status", {}).get("allocation")


async def test_deleting_pods_unprepares_and_frees_devices(sandbox: Sandbox) -> None:
    objects = example("gpu-test3")  # two pods sharing one claim, moved to a namespace of this test
    for obj in objects:
        obj["metadata"]["name" if obj["kind"] == "Namespace" else "namespace"] = "freed"
    await sandbox.apply(objects)
    for name in ("pod0", "pod1"):
        await sandbox.wait_pod("freed", name, ["Running"])
    (claim,) = claims_of(sandbox, "freed")
    uid = claim["metadata"]["uid"]
    spec_file = sandbox.path("cdi", f"k8s.{DRIVER}-gpu_{uid}.json")
    assert spec_file.exists()
    assert sandbox.kube is not None
    await sandbox.kube.delete(PODS, "pod0", "freed")
    await sandbox.apiserver.wait_for(
        lambda s: not sandbox.apiserver.get_object(PODS, "pod0", "freed"), timeout=20
    )
    # pod1 still uses the claim: it stays prepared and allocated; the controller releases pod0's reservation.
    assert spec_file.exists()

    def one_user_left(store: Any) -> bool:
        (current,) = claims_of(sandbox, "freed")
        return len(current["status"].get("reservedFor") or []) == 1

    await sandbox.apiserver.wait_for(one_user_left, timeout=20)
    (claim,) = claims_of(sandbox, "freed")
    assert claim["status"].get("allocation") and spec_file.exists()
    await sandbox.kube.delete(PODS, "pod1", "freed")

    def released(store: Any) -> bool:
        (current,) = claims_of(sandbox, "freed")
        return not current["status"].get("allocation") and not spec_file.exists()

    await sandbox.apiserver.wait_for(released, timeout=20)


@pytest.mark.asyncio(loop_scope="function")
async def test_the_demo_runs_and_explains_itself() -> None:
    """The README's demo command, as a user runs it (its own sandbox, cleaned up afterwards)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "driver", "demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for needle in (
        "=== gpu-test1",
        "=== gpu-test5",
        "why Pending:",
        "accel-dra explain (exit 1)",
        "accel_dra_container_gpu_utilization_ratio",
        "every claim unprepared",
    ):
        assert needle in out, f"{needle!r} missing from the demo output:\n{out}"
    assert "GPU 0: NVIDIA H100 80GB HBM3" in out


async def test_the_node_reports_its_kubelet_runtime_and_os_as_a_kubelet_does(sandbox: Sandbox) -> None:
    node = sandbox.apiserver.get_object(NODES, sandbox.config.node_name)
    assert node is not None
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.37.2" and info["operatingSystem"] == "linux"
    assert info["containerRuntimeVersion"].startswith("accel-dra-sandbox://")
    assert info["kernelVersion"] == os.uname().release
    (ready,) = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True" and ready["message"] == "kubelet is posting ready status"


async def test_unschedulable_pods_leave_the_scheduler_idle(sandbox: Sandbox) -> None:
    """Two pods no node can take get their verdicts and then cost nothing until something changes (a
    scheduling step that requeued every pending pod had two such pods requeue each other for ever)."""
    objects = example("gpu-test-impossible")
    second = next(o for o in objects if o["kind"] == "Pod")
    second = {**second, "metadata": {**second["metadata"], "name": "pod-2"}}
    for obj in objects:
        obj["metadata"]["name" if obj["kind"] == "Namespace" else "namespace"] = "idle-scheduler"
    second["metadata"]["namespace"] = "idle-scheduler"
    await sandbox.apply([*objects, second])

    def verdicts(_store: Any) -> bool:
        pods = [sandbox.apiserver.get_object(PODS, n, "idle-scheduler") or {} for n in ("pod", "pod-2")]
        return all(
            any(
                c["type"] == "PodScheduled" and c["status"] == "False"
                for c in p.get("status", {}).get("conditions") or []
            )
            for p in pods
        )

    await sandbox.apiserver.wait_for(verdicts, timeout=20)
    mark = sandbox.apiserver.request_log.mark()
    # Nothing can announce that no attempt will come: a second of quiet is the check (a requeue loop makes
    # dozens of attempts in it, each listing every slice; the plugin's own reads of its slices select them).
    await asyncio.sleep(1.0)
    attempts = [
        r
        for r in sandbox.apiserver.request_log.since(mark)
        if r.path.endswith("/resourceslices") and not r.query
    ]
    # Each pod may still be tried once for its own verdict's update and once for a change that came during
    # its step (the other pod's claim); a loop makes dozens.
    assert len(attempts) <= 4, f"{len(attempts)} scheduling attempts in a second of quiet"


async def test_the_driver_runs_as_the_charts_service_account_under_the_charts_rbac(sandbox: Sandbox) -> None:
    """The plugin published with the chart's permissions only; a call the chart does not grant is refused."""
    async with await KubeClient.connect(str(sandbox.driver_kubeconfig)) as driver:
        published = await driver.list(RESOURCE_SLICES)
        assert {s["spec"]["driver"] for s in published["items"]} == {DRIVER}
        with pytest.raises(ApiError) as err:
            await driver.create(DEVICE_CLASSES, {"metadata": {"name": "mine"}, "spec": {}})
    assert err.value.status == 403
    assert 'User "system:serviceaccount:accel-dra:accel-dra" cannot create' in err.value.message

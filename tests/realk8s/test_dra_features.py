"""DRA features of Kubernetes 1.37 on the real cluster (and what 1.36 does with them): the health stream in
the version the kubelet picks, extended resources backed by DRA, GPU sharing by consumable capacity and device
metadata. node-1 (fake ``dgx-h100``) serves every test here; node-2 stays out of it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.allocation.extended import extended_claim, is_extended_claim
from driver.kube.client import (
    DEVICE_CLASSES,
    DEVICE_TAINT_RULES,
    NODES,
    PODS,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    KubeClient,
)
from driver.kube.discovery import served_type
from driver.state.cdi import spec_file_name
from tests.support.processes import accel_dra
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    claim_and_pod,
    delete_namespace,
    explain,
    explained_devices,
    running,
    scheduling_decided,
    wait_for,
)

pytestmark = pytest.mark.realk8s

NODE = "node-1"
JSON = dict[str, Any]


@pytest.fixture
async def namespace(request: pytest.FixtureRequest, admin: KubeClient) -> AsyncIterator[str]:
    name = "dra-" + request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:40].strip("-")
    await apply_manifest(admin, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    yield name
    await delete_namespace(admin, name)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(accel_dra(*args), capture_output=True, text=True, timeout=120, check=False)


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


async def test_device_taint_rules_count_in_explain_and_health_status(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient, namespace: str, tmp_path: Path
) -> None:
    """A DeviceTaintRule (v1 in 1.37, v1beta2 in 1.36) keeps a device from the real scheduler; ``explain``
    names the rule, ``health status`` lists it, ``health clear`` says it cannot lift it."""
    rules = await served_type(admin, DEVICE_TAINT_RULES)
    assert rules.version == ("v1" if realk8s.minor >= 37 else "v1beta2")
    slices = await admin.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={NODE}")
    device = min(
        (d for s in slices["items"] if s["spec"]["driver"] == DRIVER for d in s["spec"]["devices"]),
        key=lambda d: d["name"],
    )
    uuid = device["attributes"]["uuid"]["string"]
    rule = {
        "apiVersion": f"resource.k8s.io/{rules.version}",
        "kind": "DeviceTaintRule",
        "metadata": {"name": f"{namespace}-drain"},
        "spec": {
            "deviceSelector": {"driver": DRIVER, "pool": NODE, "device": device["name"]},
            "taint": {"key": "example.com/maintenance", "value": "planned", "effect": "NoSchedule"},
        },
    }
    await admin.create(rules, rule)
    try:
        selector = f'device.attributes["{DRIVER}"].uuid == "{uuid}"'
        claim, pod = claim_and_pod(
            namespace,
            "ruled",
            {
                "requests": [
                    {
                        "name": "gpu",
                        "exactly": {
                            "deviceClassName": "gpu.accel-dra.dev",
                            "selectors": [{"cel": {"expression": selector}}],
                        },
                    }
                ]
            },
        )
        await apply_manifest(admin, [claim, pod])
        decided = await wait_for(admin, PODS, "ruled", namespace, scheduling_decided, what="the scheduler")
        assert not (decided or {}).get("spec", {}).get("nodeName"), "scheduled onto a device a rule taints"

        path = tmp_path / "claim.yaml"
        path.write_text(yaml.safe_dump(claim))
        report = explain(realk8s, path)
        verdict = explained_devices(report, NODE, f"{namespace}/ruled")[
            ("gpu", f"{DRIVER}/{NODE}/{device['name']}")
        ]
        assert not verdict["match"]
        assert f"DeviceTaintRule {rule['metadata']['name']}" in json.dumps(verdict["reasons"])

        status = run_cli("health", "status", "--kubeconfig", str(realk8s.kubeconfig), "--node", NODE)
        assert status.returncode == 0, status.stderr
        assert (
            f"{device['name']}  example.com/maintenance=planned:NoSchedule "
            f"(DeviceTaintRule {rule['metadata']['name']})"
        ) in status.stdout
        cleared = run_cli(
            "health", "clear", device["name"], "--node", NODE, "--kubeconfig", str(realk8s.kubeconfig)
        )
        assert cleared.returncode == 1 and f"(DeviceTaintRule {rule['metadata']['name']})" in cleared.stderr
    finally:
        await admin.delete(rules, rule["metadata"]["name"])


def pause(name: str, gpus: int, **extra: Any) -> JSON:
    limits = {"nvidia.com/gpu": gpus} if gpus else {}
    return {"name": name, "image": "registry.k8s.io/pause:3.10", "resources": {"limits": limits}, **extra}


def container_started(pod: JSON | None) -> bool:
    status = (pod or {}).get("status") or {}
    return any(
        "running" in (c.get("state") or {})
        for c in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    )


POD_SHAPES: dict[str, JSON] = {
    "two containers": {"containers": [pause("train", 2), pause("helper", 1)]},
    "init containers and a sidecar": {
        "initContainers": [pause("setup", 2), pause("proxy", 1, restartPolicy="Always"), pause("small", 1)],
        "containers": [pause("main", 1), pause("plain", 0)],
    },
}


@pytest.mark.parametrize("shape", sorted(POD_SHAPES))
async def test_a_pod_asking_for_nvidia_com_gpu_in_its_limits_gets_gpus_through_dra(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient, namespace: str, shape: str
) -> None:
    """The real scheduler makes the claim the chart's ``extendedResourceName`` implies, exactly as
    :func:`driver.allocation.extended.extended_claim` computes it; the kubelet prepares it through the
    plugin, and the claim goes with the pod."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "extended", "namespace": namespace},
        "spec": POD_SHAPES[shape],
    }
    await apply_manifest(admin, [pod])
    scheduled = await wait_for(
        admin,
        PODS,
        "extended",
        namespace,
        lambda p: bool(p and p["status"].get("extendedResourceClaimStatus") and p["spec"].get("nodeName")),
        what="pod extended scheduled with its claim",
    )
    assert scheduled is not None and scheduled["spec"]["nodeName"] == NODE
    status = scheduled["status"]["extendedResourceClaimStatus"]
    claim = await wait_for(
        admin,
        RESOURCE_CLAIMS,
        status["resourceClaimName"],
        namespace,
        lambda c: bool(c and c.get("status", {}).get("allocation")),
        what="the extended-resource claim allocated",
    )
    assert claim is not None and is_extended_claim(claim)
    assert claim["metadata"]["ownerReferences"][0]["uid"] == scheduled["metadata"]["uid"]
    node = await admin.get(NODES, NODE)
    classes = (await admin.list(DEVICE_CLASSES))["items"]
    expected = extended_claim(scheduled, classes, node["status"]["allocatable"])
    assert expected is not None
    keys = ("deviceClassName", "allocationMode", "count")
    assert [(r["name"], *(r["exactly"][k] for k in keys)) for r in claim["spec"]["devices"]["requests"]] == [
        (r["name"], *(r["exactly"][k] for k in keys)) for r in expected.requests
    ]
    assert sorted(status["requestMappings"], key=str) == sorted(expected.mappings, key=str)
    results = claim["status"]["allocation"]["devices"]["results"]
    assert sum(r["exactly"]["count"] for r in expected.requests) == len(results)
    assert {r["driver"] for r in results} == {DRIVER}
    # The kubelet prepares the claim before it starts any container (the fake runtime never ends an init
    # container, so the second shape stays in its init phase).
    started = await wait_for(
        admin, PODS, "extended", namespace, container_started, what="a container started"
    )
    cdi = realk8s.nodes[NODE].cdi_dir / spec_file_name(DRIVER, claim["metadata"]["uid"])
    assert cdi.is_file(), "the kubelet prepared the claim through the plugin"
    if not POD_SHAPES[shape].get("initContainers"):
        assert running(started) or running(
            await wait_for(admin, PODS, "extended", namespace, running, what="pod extended Running")
        )
    await admin.delete(PODS, "extended", namespace)
    await wait_for(admin, PODS, "extended", namespace, lambda o: o is None, what="pod extended gone")
    await wait_for(
        admin,
        RESOURCE_CLAIMS,
        claim["metadata"]["name"],
        namespace,
        lambda o: o is None,
        what="its claim gone",
    )
    assert not cdi.exists()


async def test_the_cdi_spec_mounts_each_requests_device_metadata(
    realk8s: Cluster, accel_dra: Driver, admin: KubeClient, namespace: str
) -> None:
    """Claims from a template carry the pod's name for them (``resource.kubernetes.io/pod-claim-name``, set by
    the real controller manager): the metadata file lands where a consumer of that pod looks for it."""
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "one", "namespace": namespace},
        "spec": {
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}}
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "meta", "namespace": namespace},
        "spec": {
            "resourceClaims": [{"name": "accel", "resourceClaimTemplateName": "one"}],
            "containers": [
                {
                    "name": "ctr",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"claims": [{"name": "accel"}]},
                }
            ],
        },
    }
    await apply_manifest(admin, [template, pod])
    started = await wait_for(admin, PODS, "meta", namespace, running, what="pod meta Running")
    (status,) = (started or {})["status"]["resourceClaimStatuses"]
    claim = await admin.get(RESOURCE_CLAIMS, status["resourceClaimName"], namespace)
    assert claim["metadata"]["annotations"]["resource.kubernetes.io/pod-claim-name"] == "accel"
    spec = json.loads(
        (realk8s.nodes[NODE].cdi_dir / spec_file_name(DRIVER, claim["metadata"]["uid"])).read_text()
    )
    ((mount,),) = [d["containerEdits"]["mounts"] for d in spec["devices"]]
    assert mount["containerPath"] == (
        "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/accel/gpu/"
        f"{DRIVER}-metadata.json"
    )
    first = json.JSONDecoder().raw_decode(Path(mount["hostPath"]).read_text())[0]
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (first["metadata"]["uid"], first["requests"][0]["devices"][0]["name"]) == (
        claim["metadata"]["uid"],
        result["device"],
    )

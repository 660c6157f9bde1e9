"""Every example in deploy/examples on the real cluster: the real scheduler allocates it (or, for the
impossible one, says it cannot), ``accel-dra explain --kubeconfig`` agrees, the real kubelet prepares it
through the plugin (CDI specs, ``status.devices``), and deleting it unprepares it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.kube.client import NAMESPACES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, KubeClient
from driver.state.cdi import spec_file_name
from tests.support.chart import DEPLOY
from tests.support.realk8s import Cluster
from tests.support.realk8s_driver import (
    DRIVER,
    Driver,
    apply_manifest,
    condition,
    delete_and_wait,
    expected_nodes,
    explain,
    explained_devices,
    running,
    scheduling_decided,
    wait_for,
)

pytestmark = pytest.mark.realk8s

EXAMPLES = DEPLOY / "examples"
JSON = dict[str, Any]


def manifest(name: str) -> Path:
    (path,) = sorted((EXAMPLES / name).glob("*.yaml"))
    return path


def explain_refs(pods: list[JSON]) -> dict[str, str]:
    """Cluster claim name -> the claim or template explain reports it under (``namespace/name``)."""
    out = {}
    for pod in pods:
        ns = pod["metadata"]["namespace"]
        sources = {c["name"]: c for c in pod["spec"].get("resourceClaims") or []}
        for source in sources.values():
            if source.get("resourceClaimName"):
                out[source["resourceClaimName"]] = f"{ns}/{source['resourceClaimName']}"
        for status in pod["status"].get("resourceClaimStatuses") or []:
            template = sources[status["name"]]["resourceClaimTemplateName"]
            out[status["resourceClaimName"]] = f"{ns}/{template}"
        extended = pod["status"].get("extendedResourceClaimStatus")
        if extended:  # explain names the claim it makes for the pod's extended resources this way
            out[extended["resourceClaimName"]] = f"{ns}/{pod['metadata']['name']}-extended-resources"
    return out


def device_statuses_written(claim: JSON | None) -> bool:
    results = (
        [r for r in claim["status"]["allocation"]["devices"]["results"] if r["driver"] == DRIVER]
        if claim
        else []
    )
    written = {
        (d["pool"], d["device"])
        for d in (claim or {}).get("status", {}).get("devices") or []
        if d["driver"] == DRIVER
    }
    return bool(results) and {(r["pool"], r["device"]) for r in results} <= written


async def device_uuids(kube: KubeClient) -> dict[tuple[str, str], str]:
    """(pool, device) -> the uuid attribute the plugin published; a dynamic MIG device has none (its
    instance is created at prepare): its parent's UUID, as ``parent:<uuid>``."""
    out = {}
    for item in (await kube.list(RESOURCE_SLICES))["items"]:
        if item["spec"]["driver"] == DRIVER:
            for device in item["spec"].get("devices") or []:
                attributes = device["attributes"]
                uuid = attributes.get("uuid") or {"string": "parent:" + attributes["parentUUID"]["string"]}
                out[(item["spec"]["pool"]["name"], device["name"])] = uuid["string"]
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
async def test_the_example_runs_as_explain_says(
    request: pytest.FixtureRequest, realk8s: Cluster, accel_dra: Driver, admin: KubeClient, name: str
) -> None:
    path = manifest(name)
    report = explain(realk8s, path)
    expected = await expected_nodes(request, admin, report)
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    pod_names = [o["metadata"]["name"] for o in objects if o["kind"] == "Pod"]
    await apply_manifest(admin, objects)
    try:
        pods = [
            await wait_for(
                admin, PODS, pod, namespace, scheduling_decided, what=f"the scheduler's decision on {pod}"
            )
            for pod in pod_names
        ]
        if not expected:
            for pod in pods:
                scheduled = condition(pod, "PodScheduled")
                assert scheduled and scheduled["reason"] == "Unschedulable", pod
                assert "cannot allocate all claims" in scheduled["message"]
            return
        pods = [
            await wait_for(admin, PODS, pod, namespace, running, what=f"pod {pod} Running")
            for pod in pod_names
        ]
        assert all(p and p["spec"]["nodeName"] in expected for p in pods), "scheduled where explain says no"
        await check_prepared(admin, accel_dra, report, [p for p in pods if p])
    finally:
        claims = await delete_example(admin, namespace, pod_names)
    for claim in claims:
        uid = claim["metadata"]["uid"]
        leftover = [
            n for n, node in realk8s.nodes.items() if (node.cdi_dir / spec_file_name(DRIVER, uid)).exists()
        ]
        assert not leftover, f"the CDI spec of {claim['metadata']['name']} outlived its pods on {leftover}"


async def delete_example(kube: KubeClient, namespace: str, pods: list[str]) -> list[JSON]:
    """Delete the pods (the kubelet unprepares their claims before it lets them go), then the claims; the
    namespace goes in the background. Returns the claims there were."""
    for pod in pods:
        await kube.delete(PODS, pod, namespace)
    for pod in pods:
        await wait_for(kube, PODS, pod, namespace, lambda o: o is None, what=f"pod {pod} gone")
    claims: list[JSON] = (await kube.list(RESOURCE_CLAIMS, namespace))["items"]
    for claim in claims:
        await delete_and_wait(kube, RESOURCE_CLAIMS, claim["metadata"]["name"], namespace)
    await kube.delete(NAMESPACES, namespace)
    return claims


async def check_prepared(kube: KubeClient, driver: Driver, report: JSON, pods: list[JSON]) -> None:
    """Every claim of the pods: allocated on the pod's node with devices explain finds fitting, a CDI
    spec on that node, and ``status.devices`` with the UUIDs the plugin published."""
    namespace = pods[0]["metadata"]["namespace"]
    refs = explain_refs(pods)
    nodes = {p["spec"]["nodeName"] for p in pods}
    uuids = await device_uuids(kube)
    for claim_name, ref in refs.items():
        claim = await wait_for(
            kube,
            RESOURCE_CLAIMS,
            claim_name,
            namespace,
            device_statuses_written,
            what=f"status.devices of {claim_name}",
        )
        assert claim is not None
        (node,) = claim["status"]["allocation"]["nodeSelector"]["nodeSelectorTerms"][0]["matchFields"][0][
            "values"
        ]
        assert node in nodes
        verdicts = explained_devices(report, node, ref)
        for result in claim["status"]["allocation"]["devices"]["results"]:
            device = f"{result['driver']}/{result['pool']}/{result['device']}"
            verdict = verdicts.get((result["request"], device))
            assert verdict and verdict["match"], (
                f"{claim_name}: the scheduler chose {device}; explain: {verdict}"
            )
        cdi = driver.cluster.nodes[node].cdi_dir / spec_file_name(DRIVER, claim["metadata"]["uid"])
        assert cdi.is_file(), f"no CDI spec for {claim_name} on {node}"
        for entry in claim["status"]["devices"]:
            if entry["driver"] != DRIVER:
                continue
            published = uuids[(entry["pool"], entry["device"])]
            data = entry["data"]
            if published.startswith("parent:"):  # a dynamic MIG device: the instance created for the claim
                assert data["parentUUID"] == published.removeprefix("parent:")
                assert data["uuid"].startswith("MIG-")
            elif data["uuid"] != published:  # the whole GPU of a dynamic GPU: its full-size instance
                assert data["parentUUID"] == published and data["uuid"].startswith("MIG-"), data

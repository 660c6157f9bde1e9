"""The whole health path in the sandbox: inject an XID -> tainted slice -> scheduling avoids the device ->
the running pod's device is reported unhealthy (kubelet stream -> pod status) -> the exporter agrees ->
``accel-dra health clear`` restores all of it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from driver.kube.client import PODS, RESOURCE_CLAIMS, RESOURCE_SLICES
from driver.sim.sandbox import Sandbox, SandboxConfig
from tests.integration.test_sandbox import example
from tests.support.processes import accel_dra

pytestmark = pytest.mark.asyncio(loop_scope="module")

DRIVER = "gpu.accel-dra.dev"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(profile="dgx-h100", extra_plugin_args=("--health-probe-interval", "0.2"))
    async with Sandbox(config) as box:
        yield box


def slice_devices(box: Sandbox) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in box.apiserver.objects(RESOURCE_SLICES) for d in s["spec"]["devices"]}


def xid_tainted(box: Sandbox, device: str, xid: int) -> bool:
    taints = slice_devices(box)[device].get("taints") or []
    return any(t["key"] == f"{DRIVER}/xid" and t["value"] == str(xid) for t in taints)


def pinned_pod(namespace: str, uuid: str) -> list[dict[str, Any]]:
    """A pod whose claim can only be satisfied by the GPU with this UUID."""
    selector = f'device.attributes["{DRIVER}"].uuid == "{uuid}"'
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "pinned", "namespace": namespace},
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "gpu",
                            "exactly": {
                                "deviceClassName": DRIVER,
                                "selectors": [{"cel": {"expression": selector}}],
                            },
                        }
                    ]
                }
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pod", "namespace": namespace},
            "spec": {
                "restartPolicy": "Never",
                "resourceClaims": [{"name": "gpu", "resourceClaimName": "pinned"}],
                "containers": [
                    {
                        "name": "ctr",
                        "image": "x",
                        "command": ["sleep", "3600"],
                        "resources": {"claims": [{"name": "gpu"}]},
                    }
                ],
            },
        },
    ]


def resource_health(box: Sandbox, namespace: str, pod: str) -> dict[str, str]:
    """resourceID -> health from the pod's allocatedResourcesStatus."""
    obj = box.apiserver.get_object(PODS, pod, namespace) or {}
    return {
        r["resourceID"]: r["health"]
        for c in (obj.get("status") or {}).get("containerStatuses") or []
        for entry in c.get("allocatedResourcesStatus") or []
        for r in entry["resources"]
    }


async def until_pod_health(box: Sandbox, namespace: str, pod: str, health: str) -> dict[str, str]:
    try:
        result: dict[str, str] = await box.apiserver.wait_for(
            lambda _s: (h := resource_health(box, namespace, pod)) and set(h.values()) == {health} and h,
            timeout=10,
        )
    except TimeoutError:
        raise AssertionError(
            f"{namespace}/{pod}: {resource_health(box, namespace, pod)}, wanted {health}"
        ) from None
    return result


async def gpu_series(box: Sandbox, device: str) -> dict[tuple[str, str], float]:
    """(metric, state-or-error-type) -> value for one GPU's hw_status and hw_errors_total."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(await box.scrape()):
        for sample in family.samples:
            if sample.labels.get("hw_id") != device:
                continue
            if sample.name == "hw_status":
                out[("hw_status", sample.labels["hw_state"])] = sample.value
            elif sample.name == "hw_errors_total":
                out[("hw_errors_total", sample.labels["error_type"])] = sample.value
    return out


async def until_metrics(box: Sandbox, device: str, expected: dict[tuple[str, str], float]) -> None:
    """Scrape until the exporter shows ``expected`` (it samples every 0.5 s; nothing to await but scrapes)."""
    series: dict[tuple[str, str], float] = {}
    for _ in range(100):
        series = await gpu_series(box, device)
        if expected.items() <= series.items():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{device}: exporter shows {series}, expected {expected}")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(accel_dra(*args), capture_output=True, text=True, timeout=60, check=False)


async def test_xid_to_taint_to_scheduling_to_pod_status_to_metrics_and_back(sandbox: Sandbox) -> None:
    await sandbox.apply(example("gpu-test1"))
    await sandbox.wait_pod("gpu-test1", "pod", ["Running"])
    (claim,) = sandbox.apiserver.objects(RESOURCE_CLAIMS, "gpu-test1")
    (held,) = [r["device"] for r in claim["status"]["allocation"]["devices"]["results"]]
    (cdi_id,) = await until_pod_health(sandbox, "gpu-test1", "pod", "Healthy")
    free = next(name for name in sorted(slice_devices(sandbox)) if name != held)
    free_uuid = slice_devices(sandbox)[free]["attributes"]["uuid"]["string"]

    state = str(sandbox.path("fake-state"))
    for device in (held, free):
        result = await asyncio.to_thread(
            run, "sim", "inject", "--state-dir", state, "--gpu", device, "--xid", "79"
        )
        assert result.returncode == 0, result.stderr
        await sandbox.apiserver.wait_for(lambda _s, d=device: xid_tainted(sandbox, d, 79), timeout=2)

    # The running pod keeps its GPU but is told it is unhealthy.
    assert await until_pod_health(sandbox, "gpu-test1", "pod", "Unhealthy") == {cdi_id: "Unhealthy"}
    # The exporter agrees with the plugin.
    await until_metrics(
        sandbox, held, {("hw_status", "failed"): 1, ("hw_status", "ok"): 0, ("hw_errors_total", "xid"): 1}
    )

    # A new claim that only the tainted free GPU could satisfy is not allocated.
    await sandbox.apply(pinned_pod("pinned", free_uuid))

    def refused(_store: Any) -> Any:
        pod = sandbox.apiserver.get_object(PODS, "pod", "pinned") or {}
        conditions = (pod.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    condition = await sandbox.apiserver.wait_for(refused, timeout=20)
    # kube-scheduler's words carry no per-device detail; that the taint was the reason shows when it is
    # cleared below and the pod gets that very GPU.
    assert "cannot allocate all claims" in condition["message"], condition

    result = await asyncio.to_thread(
        run, "health", "clear", held, free, "--kubeconfig", str(sandbox.kubeconfig), "--timeout", "20"
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # Cleared: the pinned pod gets its GPU, the running pod is healthy again, so is the exporter.
    await sandbox.wait_pod("pinned", "pod", ["Running"])
    (pinned,) = sandbox.apiserver.objects(RESOURCE_CLAIMS, "pinned")
    assert [r["device"] for r in pinned["status"]["allocation"]["devices"]["results"]] == [free]
    assert await until_pod_health(sandbox, "gpu-test1", "pod", "Healthy") == {cdi_id: "Healthy"}
    await until_metrics(
        sandbox, held, {("hw_status", "failed"): 0, ("hw_status", "ok"): 1, ("hw_errors_total", "xid"): 1}
    )


async def test_a_lost_gpu_fails_in_the_exporter_and_recovers(sandbox: Sandbox) -> None:
    device = sorted(slice_devices(sandbox))[-1]
    state = str(sandbox.path("fake-state"))
    result = await asyncio.to_thread(run, "sim", "inject", "--state-dir", state, "--gpu", device, "--lost")
    assert result.returncode == 0, result.stderr
    await sandbox.apiserver.wait_for(
        lambda _s: any(
            t["key"] == f"{DRIVER}/gpu-lost" for t in slice_devices(sandbox)[device].get("taints") or []
        ),
        timeout=2,
    )
    await until_metrics(sandbox, device, {("hw_status", "failed"): 1})
    result = await asyncio.to_thread(run, "sim", "inject", "--state-dir", state, "--gpu", device, "--clear")
    assert result.returncode == 0, result.stderr
    await sandbox.apiserver.wait_for(lambda _s: not slice_devices(sandbox)[device].get("taints"), timeout=10)
    await until_metrics(sandbox, device, {("hw_status", "ok"): 1})

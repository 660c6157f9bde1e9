"""ResourceClaims for the node-state tests, allocated as the scheduler would (configs copied into the allocation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from driver.kube.client import RESOURCE_CLAIMS, KubeClient
from driver.state.api import ClaimRef
from driver.state.opaque import API_VERSION

DRIVER = "gpu.accel-dra.dev"
# Device names of the fake:pcie-l4x4 profile the plugin runs with (named after their PCI addresses).
GPU0, GPU1, GPU2, GPU3 = "gpu-0000-01-00-0", "gpu-0000-41-00-0", "gpu-0000-81-00-0", "gpu-0000-c1-00-0"


def ref(claim: dict[str, Any]) -> ClaimRef:
    m = claim["metadata"]
    return ClaimRef(m["namespace"], m["uid"], m["name"])


def result(request: str, device: str, driver: str = DRIVER, **extra: Any) -> dict[str, Any]:
    return {"request": request, "driver": driver, "pool": "node-1", "device": device, **extra}


def gpu_config(interval: str | None = None, **fields: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "GpuConfig", **fields}
    if interval is not None:
        parameters["sharing"] = {"strategy": "TimeSlicing", "timeSlicing": {"interval": interval}}
    return parameters


def opaque(parameters: Any, driver: str = DRIVER, requests: tuple[str, ...] = ()) -> dict[str, Any]:
    entry: dict[str, Any] = {"opaque": {"driver": driver, "parameters": parameters}}
    if requests:
        entry["requests"] = list(requests)
    return entry


async def allocated_claim(
    kube: KubeClient,
    name: str,
    results: list[dict[str, Any]],
    *,
    config: Sequence[dict[str, Any]] = (),
    class_config: Sequence[dict[str, Any]] = (),
    requests: tuple[str, ...] = ("gpu",),
    namespace: str = "default",
) -> dict[str, Any]:
    """Create a claim with ``config`` in its spec, then allocate it with class and claim configs copied."""
    devices: dict[str, Any] = {
        "requests": [{"name": r, "exactly": {"deviceClassName": DRIVER}} for r in requests],
    }
    if config:
        devices["config"] = list(config)
    claim = await kube.create(
        RESOURCE_CLAIMS,
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"devices": devices}},
        namespace,
    )
    allocation_config = [{**c, "source": "FromClass"} for c in class_config] + [
        {**c, "source": "FromClaim"} for c in config
    ]
    allocation: dict[str, Any] = {"devices": {"results": results}}
    if allocation_config:
        allocation["devices"]["config"] = allocation_config
    claim["status"] = {"allocation": allocation}
    return await kube.update(RESOURCE_CLAIMS, claim, namespace, subresource="status")

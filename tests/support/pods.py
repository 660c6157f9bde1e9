"""Pods and claims in the sim API server as a node's kubelet and the scheduler would leave them."""

from __future__ import annotations

import secrets
from typing import Any

from driver.kube.client import PODS, RESOURCE_CLAIMS, KubeClient


async def running_pod(kube: KubeClient, namespace: str, name: str, node: str) -> tuple[str, str]:
    """A Running pod on ``node`` with one container ``main``: (pod UID, container id)."""
    pod = await kube.create(
        PODS,
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "sim"}]},
        },
        namespace,
    )
    container_id = secrets.token_hex(32)
    pod["status"] = {
        "phase": "Running",
        "containerStatuses": [{"name": "main", "containerID": f"containerd://{container_id}", "ready": True}],
    }
    await kube.update(PODS, pod, namespace, subresource="status")
    return pod["metadata"]["uid"], container_id


async def set_phase(kube: KubeClient, namespace: str, name: str, phase: str) -> None:
    pod = await kube.get(PODS, name, namespace)
    pod["status"]["phase"] = phase
    await kube.update(PODS, pod, namespace, subresource="status")


async def allocated_claim(
    kube: KubeClient,
    namespace: str,
    name: str,
    device_class: str,
    results: list[tuple[str, str, str]],
    *,
    admin: bool = False,
    result_fields: dict[str, Any] | None = None,
) -> None:
    """A ResourceClaim with one request allocated to ``(driver, pool, device)`` results (each with
    ``result_fields`` too: a share's ``shareID`` and ``consumedCapacity``, say)."""
    request: dict[str, Any] = {"deviceClassName": device_class, **({"adminAccess": True} if admin else {})}
    claim = await kube.create(
        RESOURCE_CLAIMS,
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": request}]}},
        },
        namespace,
    )
    allocated = [
        {
            "request": "gpu",
            "driver": driver,
            "pool": pool,
            "device": device,
            **({"adminAccess": True} if admin else {}),
            **(result_fields or {}),
        }
        for driver, pool, device in results
    ]
    claim["status"] = {"allocation": {"devices": {"results": allocated}}}
    await kube.update(RESOURCE_CLAIMS, claim, namespace, subresource="status")

"""What the run was run against, for the report: Kubernetes and component versions, never the server URL.

Read once at the start of a run, from what any cluster-admin can read: the API server's ``/version``; the
accelerator nodes' ``status.nodeInfo`` (kubelet, container runtime, OS image, kernel) and the vendor's
version labels; and the drivers that publish devices, with their device counts. Nothing here is a check:
a field that cannot be read is left out.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

from driver.conformance.vendor import Vendor
from driver.kube.client import NODES, RESOURCE_SLICES, ApiError, KubeClient

JSON = dict[str, Any]
MAX_NODES = 20
_NODE_INFO = ("kubeletVersion", "containerRuntimeVersion", "osImage", "kernelVersion", "architecture")


async def _get(kube: KubeClient, path: str) -> JSON:
    with contextlib.suppress(ApiError, OSError, TimeoutError, ValueError):
        return await kube.request("GET", path)
    return {}


def _accelerator_nodes(nodes: list[JSON], slices: list[JSON], vendor: Vendor) -> list[JSON]:
    """The nodes with devices of the vendor's driver (or its extended resource); all nodes when none has."""
    with_devices = {
        (s.get("spec") or {}).get("nodeName")
        for s in slices
        if (s.get("spec") or {}).get("driver") == vendor.driver_name and (s.get("spec") or {}).get("devices")
    }
    chosen = [
        n
        for n in nodes
        if n["metadata"]["name"] in with_devices
        or (
            vendor.extended_resource
            and (n.get("status") or {}).get("allocatable", {}).get(vendor.extended_resource)
        )
    ]
    return (chosen or nodes)[:MAX_NODES]


def node_row(node: Mapping[str, Any], vendor: Vendor) -> JSON:
    info = (node.get("status") or {}).get("nodeInfo") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    row: JSON = {"name": node["metadata"]["name"], **{k: info[k] for k in _NODE_INFO if info.get(k)}}
    wanted = (*vendor.versions.driver_labels, *vendor.versions.runtime_labels)
    found = {k: labels[k] for k in wanted if k in labels}
    if found:
        row["versionLabels"] = found
    if vendor.extended_resource:
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(vendor.extended_resource)
        if allocatable:
            row["allocatable"] = {vendor.extended_resource: allocatable}
    return row


async def platform_info(kube: KubeClient, vendor: Vendor) -> JSON:
    version = await _get(kube, "/version")
    nodes = (await _get(kube, NODES.path())).get("items") or []
    slices = (await _get(kube, RESOURCE_SLICES.path())).get("items") or []
    devices = Counter(
        str((s.get("spec") or {}).get("driver", "?"))
        for s in slices
        for _ in (s.get("spec") or {}).get("devices") or []
    )
    info: JSON = {
        "version": version.get("gitVersion", ""),
        "platform": version.get("platform", ""),
        "nodes": [node_row(n, vendor) for n in _accelerator_nodes(nodes, slices, vendor)],
        "nodeCount": len(nodes),
        "draDrivers": dict(sorted(devices.items())),
    }
    return info

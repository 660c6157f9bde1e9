"""The Kubernetes APIs beyond DRA that some probes use, and how a probe asks whether a cluster serves them.

A cluster serves an API group/version when ``GET /apis/<group>/<version>`` answers its resource list; a 404
means it does not (the group is not installed, as Kueue's or the custom-metrics API may not be). The kinds
are :class:`~driver.kube.client.ResourceType` values like the client's own.
"""

from __future__ import annotations

from typing import Any

from driver.kube.client import ApiError, KubeClient, ResourceType

DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", namespaced=True)
HPAS = ResourceType(
    "autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", namespaced=True
)
JOBS = ResourceType("batch", "v1", "jobs", "Job", namespaced=True)
RUNTIME_CLASSES = ResourceType("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", namespaced=False)
CUSTOM_METRICS_GROUP = "custom.metrics.k8s.io"
CUSTOM_METRICS_VERSIONS = ("v1beta2", "v1beta1")
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSIONS = ("v1beta2", "v1beta1")


async def served(kube: KubeClient, group: str, version: str) -> list[str] | None:
    """The resource names ``group/version`` serves, or None when the cluster does not serve it."""
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    try:
        listing: dict[str, Any] = await kube.request("GET", path)
    except ApiError as err:
        if err.status in (404, 503):  # not installed, or an aggregated API whose backend is down
            return None
        raise
    return [str(r.get("name")) for r in listing.get("resources") or [] if r.get("name")]


async def first_served(
    kube: KubeClient, group: str, versions: tuple[str, ...]
) -> tuple[str, list[str]] | None:
    """The first of ``versions`` the cluster serves for ``group``, with its resources."""
    for version in versions:
        resources = await served(kube, group, version)
        if resources is not None:
            return version, resources
    return None


def kueue_kind(version: str, plural: str, kind: str, namespaced: bool) -> ResourceType:
    return ResourceType(KUEUE_GROUP, version, plural, kind, namespaced=namespaced)

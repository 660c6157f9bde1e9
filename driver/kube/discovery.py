"""Which version of an API group serves a kind, from the API server's discovery documents.

Some kinds move between versions from one Kubernetes release to the next -- DeviceTaintRule is served from
``resource.k8s.io/v1beta2`` in 1.36 (behind the DRADeviceTaintRules gate) and from ``v1`` since 1.37 -- so
a client that must work against several releases asks the server instead of naming a version.
Discovery is readable by every authenticated client (``system:discovery``): it needs no RBAC rule.
"""

from __future__ import annotations

from typing import Any

from driver.kube.client import ApiError, KubeClient, ResourceType


class NotServedError(Exception):
    """The API server serves the kind in no version of its group."""


async def served_type(kube: KubeClient, rt: ResourceType) -> ResourceType:
    """``rt`` at the version the server serves its kind in: the group's preferred version when that one
    serves it, otherwise the first version in the server's order of preference that does."""
    try:
        group = await kube.request("GET", f"/apis/{rt.group}" if rt.group else "/api")
    except ApiError as err:
        if err.not_found:
            raise NotServedError(f"the API server does not serve the API group {rt.group}") from None
        raise
    versions = _versions(group)
    for version in versions:
        found = next((t for t in await _served(kube, rt.group, version) if t.plural == rt.plural), None)
        if found is not None and found.kind == rt.kind:
            return found
    raise NotServedError(
        f"the API server serves no version of {rt.plural}.{rt.group or 'core'} (kind {rt.kind}); "
        f"versions of the group: {', '.join(versions) or 'none'}"
    )


async def list_served(kube: KubeClient, rt: ResourceType) -> list[dict[str, Any]]:
    """Every object of ``rt``'s kind, read at the version the server serves it in (:func:`served_type`);
    none when the server serves the kind in no version (a 1.36 cluster without DeviceTaintRules)."""
    try:
        found = await served_type(kube, rt)
    except NotServedError:
        return []
    listed = await kube.list(found)
    return [dict(item) for item in listed.get("items") or [] if isinstance(item, dict)]


async def resource_type(kube: KubeClient, api_version: str, kind: str) -> ResourceType:
    """Where objects of ``kind`` in ``api_version`` (``group/version`` or ``v1``) live in the REST tree."""
    group, _, version = api_version.rpartition("/")
    found = next((t for t in await _served(kube, group, version) if t.kind == kind), None)
    if found is None:
        raise NotServedError(f"the API server does not serve kind {kind} in {api_version}")
    return found


async def _served(kube: KubeClient, group: str, version: str) -> list[ResourceType]:
    """The resources (not subresources) the server serves in ``group/version``; none when it serves no
    such version (it may have gone away since the group was read)."""
    try:
        listed = await kube.request("GET", f"/apis/{group}/{version}" if group else f"/api/{version}")
    except ApiError as err:
        if err.not_found:
            return []
        raise
    return [
        ResourceType(group, version, str(r["name"]), str(r.get("kind")), bool(r.get("namespaced")))
        for r in listed.get("resources") or []
        if isinstance(r, dict) and "/" not in str(r.get("name", "/"))
    ]


def _versions(group: dict[str, Any]) -> list[str]:
    """The group's versions, preferred first (the order the server lists them in otherwise)."""
    if group.get("kind") == "APIVersions":  # the core group: /api
        return [str(v) for v in group.get("versions") or []]
    listed = [str(v.get("version")) for v in group.get("versions") or [] if v.get("version")]
    preferred = str((group.get("preferredVersion") or {}).get("version") or "")
    return ([preferred] if preferred in listed else []) + [v for v in listed if v != preferred]

"""Extended resources backed by DRA (KEP-5004): the claim kube-scheduler makes for a pod's ``resources``.

A pod that asks for an extended resource (``resources.limits: {nvidia.com/gpu: 1}``) on a node whose
``status.allocatable`` does not carry it (no device plugin there) gets its devices through DRA when a
DeviceClass stands for the resource -- its ``extendedResourceName``, or implicitly
``deviceclass.resource.kubernetes.io/<class name>``. kube-scheduler 1.37 then creates one ResourceClaim for
all such resources of the pod (``<pod>-extended-resources-<suffix>``, owned by the pod, annotated
``resource.kubernetes.io/extended-resource-claim: "true"``), with one request per container and resource
(``container-<i>-request-<j>``: ``i`` indexes init containers then containers, ``j`` the resource among the
container's sorted request names), and records in ``pod.status.extendedResourceClaimStatus`` which
container's resource maps to which request. The kubelet prepares that claim like any other and hands each
container the devices of its requests. Init containers that run to completion reuse the requests of the
containers that start after them, as the scheduler does.

This module computes that claim (pure); :mod:`driver.sim.controllers` creates it and ``accel-dra explain``
explains it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driver.allocation.model import JSON

EXTENDED_CLAIM_ANNOTATION = "resource.kubernetes.io/extended-resource-claim"
IMPLICIT_PREFIX = "deviceclass.resource.kubernetes.io/"


def is_extended_resource_name(name: str) -> bool:
    """A resource name the scheduler may back with DRA: a vendor's (``domain/name`` outside
    ``kubernetes.io``, not a quota ``requests.`` name) or an implicit class name."""
    if name.startswith(IMPLICIT_PREFIX):
        return True
    return "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    """A container's extended-resource requests (for these, requests default to limits and must equal
    them)."""
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {
        name: n
        for name, value in merged.items()
        if is_extended_resource_name(name) and (n := _quantity(value))
    }


def _is_sidecar(container: Mapping[str, Any]) -> bool:
    return container.get("restartPolicy") == "Always"


def pod_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """What the pod needs of each extended resource at once: long-lived containers together, or the
    largest init container that runs to completion."""
    spec = pod.get("spec") or {}
    inits = list(spec.get("initContainers") or [])
    long_lived = [*(c for c in inits if _is_sidecar(c)), *(spec.get("containers") or [])]
    out: dict[str, int] = {}
    for container in long_lived:
        for name, n in container_requests(container).items():
            out[name] = out.get(name, 0) + n
    for container in inits:
        if not _is_sidecar(container):
            for name, n in container_requests(container).items():
                out[name] = max(out.get(name, 0), n)
    return out


def class_for(resource: str, classes: Iterable[Mapping[str, Any]]) -> str | None:
    """The DeviceClass that stands for ``resource``: the newest one naming it (the lower name on a tie),
    or the class an implicit name names."""
    found: tuple[str, str] | None = None  # (creationTimestamp, name)
    for item in classes:
        meta = item.get("metadata") or {}
        name = str(meta.get("name") or "")
        if resource == f"{IMPLICIT_PREFIX}{name}":
            return name
        if (item.get("spec") or {}).get("extendedResourceName") != resource:
            continue
        stamp = str(meta.get("creationTimestamp") or "")
        if found is None or stamp > found[0] or (stamp == found[0] and name < found[1]):
            found = (stamp, name)
    return None if found is None else found[1]


@dataclass(frozen=True)
class ExtendedClaim:
    """The claim for a pod's DRA-backed extended resources on one node, and the container mappings."""

    requests: tuple[JSON, ...]
    mappings: tuple[JSON, ...]  # {containerName, resourceName, requestName}

    def claim(self, pod: Mapping[str, Any]) -> JSON:
        """The ResourceClaim object, as the scheduler creates it (name left to ``generateName``)."""
        meta = pod.get("metadata") or {}
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {
                "generateName": f"{meta.get('name')}-extended-resources-",
                "namespace": meta.get("namespace") or "default",
                "annotations": {EXTENDED_CLAIM_ANNOTATION: "true"},
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta.get("name"),
                        "uid": meta.get("uid"),
                        "controller": True,
                    }
                ],
            },
            "spec": {"devices": {"requests": [dict(r) for r in self.requests]}},
        }

    def status(self, claim_name: str) -> JSON:
        """``pod.status.extendedResourceClaimStatus`` for the claim once created."""
        return {"resourceClaimName": claim_name, "requestMappings": [dict(m) for m in self.mappings]}


class NotBackedError(ValueError):
    """The pod asks for an extended resource that neither the node nor a DeviceClass provides."""

    def __init__(self, resource: str) -> None:
        super().__init__(
            f"Insufficient {resource}: no device plugin on the node and no DeviceClass with "
            f"extendedResourceName {resource}"
        )
        self.resource = resource


def _request_for(
    index: int, container: Mapping[str, Any], resource: str, class_name: str, reusable: Sequence[JSON | None]
) -> tuple[JSON | None, list[JSON]]:
    """A container's request for ``resource`` (None when the reusable requests cover it) and its mappings."""
    wanted = container_requests(container).get(resource, 0)
    if not wanted:
        return None, []
    mappings: list[JSON] = []
    covered = 0
    for request in reusable:
        if request is None:
            continue
        covered += int(request["exactly"]["count"])
        mappings.append(
            {"containerName": container["name"], "resourceName": resource, "requestName": request["name"]}
        )
        if covered >= wanted:
            return None, mappings
    names = sorted(
        {
            **((container.get("resources") or {}).get("limits") or {}),
            **((container.get("resources") or {}).get("requests") or {}),
        }
    )
    name = f"container-{index}-request-{names.index(resource)}"
    request = {
        "name": name,
        "exactly": {"deviceClassName": class_name, "allocationMode": "ExactCount", "count": wanted - covered},
    }
    mappings.append({"containerName": container["name"], "resourceName": resource, "requestName": name})
    return request, mappings


def extended_claim(
    pod: Mapping[str, Any], classes: Iterable[Mapping[str, Any]], allocatable: Mapping[str, Any]
) -> ExtendedClaim | None:
    """The claim the scheduler makes for ``pod`` on a node with ``allocatable`` (``status.allocatable``);
    None when nothing is backed by DRA there. Raises :class:`NotBackedError` for a resource nothing
    provides."""
    classes = list(classes)
    backed: dict[str, str] = {}
    for resource in sorted(pod_requests(pod)):
        class_name = class_for(resource, classes)
        if class_name is not None and not _quantity(allocatable.get(resource, 0)):
            backed[resource] = class_name
        elif resource not in allocatable:
            raise NotBackedError(resource)
    if not backed:
        return None
    spec = pod.get("spec") or {}
    inits = list(spec.get("initContainers") or [])
    containers = [*inits, *(spec.get("containers") or [])]
    short_lived = [i for i, c in enumerate(containers) if i < len(inits) and not _is_sidecar(c)]
    requests: list[JSON] = []
    mappings: list[JSON] = []
    for resource, class_name in backed.items():
        long_requests: list[JSON | None] = [None] * len(containers)
        long_mappings: list[JSON] = []
        for i, container in enumerate(containers):
            if i in short_lived:
                continue
            long_requests[i], found = _request_for(i, container, resource, class_name, ())
            long_mappings += found
        biggest: JSON | None = None
        short_names: set[str] = set()
        short_mappings: list[JSON] = []
        for i in short_lived:
            request, found = _request_for(i, containers[i], resource, class_name, long_requests[i:])
            if request is not None:
                short_names.add(request["name"])
                if biggest is None or biggest["exactly"]["count"] < request["exactly"]["count"]:
                    biggest = request
            short_mappings += found
        if biggest is not None:
            # Init containers run one at a time: the largest request serves them all.
            short_mappings = [
                {**m, "requestName": biggest["name"]} if m["requestName"] in short_names else m
                for m in short_mappings
            ]
            requests.append(biggest)
        requests += [r for r in long_requests if r is not None]
        mappings += long_mappings + short_mappings
    requests.sort(key=lambda r: str(r["name"]))
    return ExtendedClaim(tuple(requests), tuple(mappings))


def is_extended_claim(claim: Mapping[str, Any]) -> bool:
    return ((claim.get("metadata") or {}).get("annotations") or {}).get(EXTENDED_CLAIM_ANNOTATION) == "true"

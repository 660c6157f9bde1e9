"""The sandbox scheduler's DRA step: allocate a pending pod's ResourceClaims on a node and record it.

A thin layer over :mod:`driver.allocation.allocator` (the pure allocator ``accel-dra explain`` uses too):
read the pod's claims, the ResourceSlices, DeviceClasses, the node and every claim's allocation (to know
which devices are in use) from the API server; allocate; write ``status.allocation`` and add the pod to
``status.reservedFor`` through each claim's ``/status`` subresource, guarded by resourceVersion. A 409
means something changed underneath: everything is read again and the allocation retried.

Pod lifecycle (binding, creating claims from templates, deallocation) is the cluster wiring's job.
Calls are serialised so two pods never get the same device from one allocator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driver.allocation.allocator import allocate
from driver.allocation.model import InputError, Node, node_selector_matches, object_ref
from driver.allocation.pools import in_use_from_claims
from driver.kube.client import DEVICE_CLASSES, NODES, RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError, KubeClient
from driver.log import get_logger

log = get_logger(__name__)

JSON = dict[str, Any]
DEFAULT_CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class AllocationOutcome:
    """``allocated``: every claim of the pod is allocated and reserved for it (``claims`` as written);
    otherwise ``reason`` says why not (suitable for a pod's PodScheduled condition message)."""

    allocated: bool
    claims: tuple[JSON, ...] = ()
    reason: str = ""


def pod_claim_names(pod: Mapping[str, Any]) -> list[str] | str:
    """The ResourceClaim names a pod uses, or why they are not known yet (a template's claim not created)."""
    statuses = {
        s.get("name"): s.get("resourceClaimName")
        for s in (pod.get("status") or {}).get("resourceClaimStatuses") or ()
    }
    names: list[str] = []
    for entry in (pod.get("spec") or {}).get("resourceClaims") or ():
        if entry.get("resourceClaimName"):
            names.append(str(entry["resourceClaimName"]))
        elif entry.get("name") in statuses:
            if statuses[entry["name"]]:  # None: the template needs no claim for this pod
                names.append(str(statuses[entry["name"]]))
        else:
            return (
                f"waiting for the ResourceClaim of pod claim {entry.get('name')} "
                f"(template {entry.get('resourceClaimTemplateName')}) to be created"
            )
    return names


def _reservation(pod: Mapping[str, Any]) -> JSON:
    meta = pod.get("metadata") or {}
    return {"resource": "pods", "name": meta.get("name"), "uid": meta.get("uid")}


class _ConflictError(Exception):
    """A claim changed between reading and writing it."""


class SimAllocator:
    """Allocates pods' claims against the API server ``kube`` talks to."""

    def __init__(self, kube: KubeClient, *, conflict_retries: int = DEFAULT_CONFLICT_RETRIES) -> None:
        self.kube = kube
        self.conflict_retries = conflict_retries
        self._lock = asyncio.Lock()

    async def allocate_for_pod(self, pod: Mapping[str, Any], node: str) -> AllocationOutcome:
        names = pod_claim_names(pod)
        if isinstance(names, str):
            return AllocationOutcome(False, reason=names)
        namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
        async with self._lock:
            for _ in range(self.conflict_retries):
                try:
                    outcome = await self._attempt(pod, node, namespace, names)
                except _ConflictError:
                    continue
                log.info(
                    "pod claims allocated" if outcome.allocated else "pod claims not allocatable",
                    pod=object_ref(pod),
                    node=node,
                    claims=",".join(names),
                    reason=outcome.reason,
                )
                return outcome
        return AllocationOutcome(
            False, reason=f"claims kept changing: {self.conflict_retries} write conflicts"
        )

    async def _attempt(
        self, pod: Mapping[str, Any], node: str, namespace: str, names: Sequence[str]
    ) -> AllocationOutcome:
        claims: list[JSON] = []
        for name in names:
            try:
                claims.append(await self.kube.get(RESOURCE_CLAIMS, name, namespace))
            except ApiError as exc:
                if exc.not_found:
                    return AllocationOutcome(False, reason=f"resourceclaim {namespace}/{name} not found")
                raise
        target = await self._node(node)
        pending = [c for c in claims if not (c.get("status") or {}).get("allocation")]
        for claim in claims:
            if claim not in pending and not _allocated_for(claim, target):
                return AllocationOutcome(
                    False, reason=f"claim {object_ref(claim)} is allocated for another node"
                )
        allocations: dict[str, JSON] = {}
        if pending:
            decided = await self._allocate(pending, target)
            if isinstance(decided, str):
                return AllocationOutcome(False, reason=decided)
            allocations = decided
        written = [
            await self._write(claim, allocations.get(object_ref(claim)), pod, namespace) for claim in claims
        ]
        return AllocationOutcome(True, tuple(written))

    async def _node(self, name: str) -> Node:
        try:
            return Node.from_object(await self.kube.get(NODES, name))
        except ApiError as exc:
            if exc.not_found:
                return Node(name)
            raise

    async def _allocate(self, pending: list[JSON], node: Node) -> dict[str, JSON] | str:
        slices = (await self.kube.list(RESOURCE_SLICES)).get("items") or []
        classes = (await self.kube.list(DEVICE_CLASSES)).get("items") or []
        everyone = (await self.kube.list(RESOURCE_CLAIMS)).get("items") or []
        mine = [str(c["metadata"].get("uid")) for c in pending]
        in_use = in_use_from_claims(everyone, exclude=mine)
        try:
            result = allocate(pending, slices, classes, node, in_use)
        except InputError as exc:
            return str(exc)
        if result.failure is not None:
            return result.failure.message
        return {a.claim.ref: a.allocation for a in result.allocations}

    async def _write(
        self, claim: JSON, allocation: JSON | None, pod: Mapping[str, Any], namespace: str
    ) -> JSON:
        status = dict(claim.get("status") or {})
        if allocation is not None:
            status["allocation"] = allocation
        reserved = list(status.get("reservedFor") or [])
        entry = _reservation(pod)
        if all(r.get("uid") != entry["uid"] for r in reserved):
            reserved.append(entry)
        status["reservedFor"] = reserved
        body = {**claim, "status": status}  # carries metadata.resourceVersion: a stale read gets 409
        try:
            return await self.kube.update(RESOURCE_CLAIMS, body, namespace, subresource="status")
        except ApiError as exc:
            if exc.conflict:
                raise _ConflictError from exc
            raise


def _allocated_for(claim: Mapping[str, Any], node: Node) -> bool:
    selector = ((claim.get("status") or {}).get("allocation") or {}).get("nodeSelector")
    return selector is None or node_selector_matches(selector, node)

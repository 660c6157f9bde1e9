"""The sandbox scheduler's DRA step: allocate a pending pod's ResourceClaims on a node and record it.

A thin layer over :mod:`driver.allocation.allocator` (the pure allocator ``accel-dra explain`` uses too):
read the pod's claims, the ResourceSlices, DeviceClasses, DeviceTaintRules, the node and every claim's
allocation (which devices, shares and capacity are held) from the API server; allocate; add the
``resource.kubernetes.io/delete-protection`` finalizer; write ``status.allocation`` (stamped with
``allocationTimestamp``, as kube-scheduler 1.37 does) and add the pod to ``status.reservedFor`` through each
claim's ``/status`` subresource, guarded by resourceVersion. A 409 means something changed underneath: everything is read again
and the allocation retried.

Binding conditions (attach-style devices) are honoured as kube-scheduler's PreBind does: an allocation
with such devices is reserved, but the pod is bound only once every
binding condition of every device is ``True`` in the claim's ``status.devices``. A binding failure
condition, or no success within the binding timeout (10 minutes), deallocates the claim so that the next
attempt may choose other devices.

Pod lifecycle (binding, creating claims from templates, deallocation) is the cluster wiring's job.
Calls are serialised so two pods never get the same device from one allocator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from driver.allocation.allocated import AllocatedState
from driver.allocation.allocator import ERROR, AllocationFailure, allocate
from driver.allocation.model import InputError, Node, node_selector_matches, object_ref
from driver.kube.client import (
    DEVICE_CLASSES,
    DEVICE_TAINT_RULES,
    NODES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    ApiError,
    KubeClient,
)
from driver.log import get_logger

log = get_logger(__name__)

JSON = dict[str, Any]
DEFAULT_CONFLICT_RETRIES = 5
DELETE_PROTECTION = "resource.kubernetes.io/delete-protection"
BINDING_TIMEOUT = 600.0  # kube-scheduler's DynamicResources bindingTimeout default (seconds)


@dataclass(frozen=True)
class AllocationOutcome:
    """``allocated``: every claim of the pod is allocated and reserved for it (``claims`` as written);
    ``waiting``: so is it, but binding conditions are not met yet (the pod must not be bound); otherwise
    ``reason`` says why not (suitable for a pod's PodScheduled condition message)."""

    allocated: bool
    claims: tuple[JSON, ...] = ()
    reason: str = ""
    waiting: bool = False
    #: Why not, as kube-scheduler's DynamicResources plugin classifies it: ``driver.allocation.allocator``'s
    #: failure causes (``no-fit``, ``error``, ...), :data:`NOT_AVAILABLE` or :data:`NO_CLAIM`.
    cause: str = ""


#: AllocationOutcome.cause: a claim is allocated for another node.
NOT_AVAILABLE = "not-available"
#: AllocationOutcome.cause: a claim of the pod does not exist (yet).
NO_CLAIM = "no-claim"


def pod_claim_names(pod: Mapping[str, Any]) -> list[str] | str:
    """The ResourceClaim names a pod uses (its extended-resource claim too, once made), or why they are not
    known yet (a template's claim not created)."""
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
    extended = (pod.get("status") or {}).get("extendedResourceClaimStatus") or {}
    if extended.get("resourceClaimName"):
        names.append(str(extended["resourceClaimName"]))
    return names


def _reservation(pod: Mapping[str, Any]) -> JSON:
    meta = pod.get("metadata") or {}
    return {"resource": "pods", "name": meta.get("name"), "uid": meta.get("uid")}


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


class _ConflictError(Exception):
    """A claim changed between reading and writing it."""


def binding_state(claim: Mapping[str, Any], now: float, timeout: float = BINDING_TIMEOUT) -> str | None:
    """None when the claim's devices may be used (no binding conditions, or all of them ``True``);
    otherwise "waiting: ...", or "failed: ..." for a failure condition or the binding timeout
    (kube-scheduler's ``isClaimReadyForBinding`` / ``isClaimTimeout``)."""
    status = claim.get("status") or {}
    allocation = status.get("allocation") or {}
    pending: list[str] = []
    for result in (allocation.get("devices") or {}).get("results") or ():
        conditions = result.get("bindingConditions") or []
        if not conditions:
            continue
        device = f"{result.get('driver')}/{result.get('pool')}/{result.get('device')}"
        known = _device_conditions(status, result)
        for name in result.get("bindingFailureConditions") or ():
            if known.get(name, {}).get("status") == "True":
                message = known[name].get("message") or known[name].get("reason") or ""
                return f"failed: device {device}: binding failure condition {name} is true: {message}".rstrip(
                    ": "
                )
        pending += [f"{device} {name}" for name in conditions if known.get(name, {}).get("status") != "True"]
    if not pending:
        return None
    stamp = allocation.get("allocationTimestamp")
    if stamp and _seconds(stamp) + timeout < now:
        return f"failed: binding conditions not met within {int(timeout)}s: {', '.join(pending)}"
    return f"waiting: binding conditions not met yet: {', '.join(pending)}"


def _device_conditions(status: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    for entry in status.get("devices") or ():
        same = all(entry.get(k) == result.get(k) for k in ("driver", "pool", "device"))
        if same and entry.get("shareID") == result.get("shareID"):
            return {str(c.get("type")): c for c in entry.get("conditions") or ()}
    return {}


class SimAllocator:
    """Allocates pods' claims against the API server ``kube`` talks to."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        conflict_retries: int = DEFAULT_CONFLICT_RETRIES,
        binding_timeout: float = BINDING_TIMEOUT,
        clock: Callable[[], float] = time.time,
        list_type_attributes: bool = False,
    ) -> None:
        self.kube = kube
        self.list_type_attributes = list_type_attributes
        self.conflict_retries = conflict_retries
        self.binding_timeout = binding_timeout
        self.clock = clock
        self._lock = asyncio.Lock()

    async def allocate_for_pod(
        self, pod: Mapping[str, Any], node: str, extended: JSON | None = None
    ) -> AllocationOutcome:
        """Allocate and reserve the pod's claims on ``node``. ``extended`` is the claim for the pod's
        extended resources (:mod:`driver.allocation.extended`), not yet in the API: it is created, with its
        allocation, only when everything fits -- as kube-scheduler creates it at PreBind."""
        names = pod_claim_names(pod)
        if isinstance(names, str):
            return AllocationOutcome(False, reason=names, cause=NO_CLAIM)
        namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
        async with self._lock:
            for _ in range(self.conflict_retries):
                try:
                    outcome = await self._attempt(pod, node, namespace, names, extended)
                except _ConflictError:
                    continue
                log.info(
                    "pod claims allocated" if outcome.allocated else "pod claims not allocatable",
                    pod=object_ref(pod),
                    node=node,
                    claims=",".join(names),
                    waiting=outcome.waiting,
                    reason=outcome.reason,
                )
                return outcome
        return AllocationOutcome(
            False, reason=f"claims kept changing: {self.conflict_retries} write conflicts"
        )

    async def _attempt(
        self, pod: Mapping[str, Any], node: str, namespace: str, names: Sequence[str], extended: JSON | None
    ) -> AllocationOutcome:
        claims: list[JSON] = []
        for name in names:
            try:
                claims.append(await self.kube.get(RESOURCE_CLAIMS, name, namespace))
            except ApiError as exc:
                if exc.not_found:
                    reason = f"resourceclaim {namespace}/{name} not found"
                    return AllocationOutcome(False, reason=reason, cause=NO_CLAIM)
                raise
        if extended is not None:
            claims.append(dict(extended))
        failed = await self._release_failed_bindings(claims, namespace)
        if failed:
            return AllocationOutcome(False, reason=failed)
        target = await self._node(node)
        pending = [c for c in claims if not (c.get("status") or {}).get("allocation")]
        for claim in claims:
            if claim not in pending and not _allocated_for(claim, target):
                return AllocationOutcome(
                    False,
                    reason=f"claim {object_ref(claim)} is allocated for another node",
                    cause=NOT_AVAILABLE,
                )
        allocations: dict[str, JSON] = {}
        if pending:
            decided = await self._allocate(pending, target)
            if isinstance(decided, AllocationFailure):
                return AllocationOutcome(False, reason=decided.message, cause=decided.cause)
            allocations = decided
        written = [
            await self._write(claim, allocations.get(object_ref(claim)), pod, namespace) for claim in claims
        ]
        waiting = [s for c in written if (s := binding_state(c, self.clock(), self.binding_timeout))]
        if waiting:
            return AllocationOutcome(True, tuple(written), reason="; ".join(waiting), waiting=True)
        return AllocationOutcome(True, tuple(written))

    async def _release_failed_bindings(self, claims: list[JSON], namespace: str) -> str:
        """Deallocate claims whose binding failed or timed out (kube-scheduler's PostFilter does), so that
        this attempt allocates them again; returns why, when one was released."""
        reasons = []
        for index, claim in enumerate(claims):
            state = binding_state(claim, self.clock(), self.binding_timeout)
            if state is None or not state.startswith("failed"):
                continue
            status = {
                k: v
                for k, v in (claim.get("status") or {}).items()
                if k not in ("allocation", "reservedFor", "devices")
            }
            try:
                claims[index] = await self.kube.update(
                    RESOURCE_CLAIMS, {**claim, "status": status}, namespace, subresource="status"
                )
            except ApiError as exc:
                if exc.conflict:
                    raise _ConflictError from exc
                raise
            log.info("deallocated claim after failed binding", claim=object_ref(claim), reason=state)
            reasons.append(f"claim {object_ref(claim)} {state}")
        return "; ".join(reasons)

    async def _node(self, name: str) -> Node:
        try:
            return Node.from_object(await self.kube.get(NODES, name))
        except ApiError as exc:
            if exc.not_found:
                return Node(name)
            raise

    async def _allocate(self, pending: list[JSON], node: Node) -> dict[str, JSON] | AllocationFailure:
        slices = (await self.kube.list(RESOURCE_SLICES)).get("items") or []
        classes = (await self.kube.list(DEVICE_CLASSES)).get("items") or []
        rules = (await self.kube.list(DEVICE_TAINT_RULES)).get("items") or []
        everyone = (await self.kube.list(RESOURCE_CLAIMS)).get("items") or []
        mine = [str(c["metadata"].get("uid")) for c in pending]
        allocated = AllocatedState.from_claims(everyone, exclude=mine)
        try:
            result = allocate(
                pending,
                slices,
                classes,
                node,
                allocated,
                taint_rules=rules,
                list_type_attributes=self.list_type_attributes,
            )
        except InputError as exc:
            return AllocationFailure(str(exc), ERROR)
        if result.failure is not None:
            return result.failure
        stamp = _rfc3339(self.clock())
        out = {}
        for claim_allocation in result.allocations:
            allocation = claim_allocation.allocation
            # kube-scheduler 1.37 stamps every allocation (the binding timeout of attach-style devices
            # counts from it).
            allocation["allocationTimestamp"] = stamp
            out[claim_allocation.claim.ref] = allocation
        return out

    async def _protect(self, claim: JSON, namespace: str) -> JSON:
        """The claim with the delete-protection finalizer, added before its allocation is written (as
        kube-scheduler's PreBind does): the claim controller removes it once the claim is deallocated, so a
        claim deleted while allocated stays until no pod uses its devices."""
        finalizers = list(claim["metadata"].get("finalizers") or [])
        if DELETE_PROTECTION in finalizers:
            return claim
        body = {**claim, "metadata": {**claim["metadata"], "finalizers": [*finalizers, DELETE_PROTECTION]}}
        try:
            return await self.kube.update(RESOURCE_CLAIMS, body, namespace)
        except ApiError as exc:
            if exc.conflict:
                raise _ConflictError from exc
            raise

    async def _write(
        self, claim: JSON, allocation: JSON | None, pod: Mapping[str, Any], namespace: str
    ) -> JSON:
        if allocation is not None and (claim.get("metadata") or {}).get("uid"):
            claim = await self._protect(claim, namespace)
        status = dict(claim.get("status") or {})
        if allocation is not None:
            status["allocation"] = allocation
        reserved = list(status.get("reservedFor") or [])
        entry = _reservation(pod)
        if all(r.get("uid") != entry["uid"] for r in reserved):
            reserved.append(entry)
        status["reservedFor"] = reserved
        if not (claim.get("metadata") or {}).get("uid"):  # the extended-resource claim: created now
            meta = claim.get("metadata") or {}
            finalizers = [*(meta.get("finalizers") or []), DELETE_PROTECTION]
            claim = {**claim, "metadata": {**meta, "finalizers": finalizers}}
            claim = await self.kube.create(RESOURCE_CLAIMS, claim, namespace)
            log.info("created extended-resource claim", claim=object_ref(claim), pod=object_ref(pod))
        body = {**claim, "status": status}  # carries metadata.resourceVersion: a stale read gets 409
        try:
            return await self.kube.update(RESOURCE_CLAIMS, body, namespace, subresource="status")
        except ApiError as exc:
            if exc.conflict:
                raise _ConflictError from exc
            raise


def _allocated_for(claim: Mapping[str, Any], node: Node) -> bool:
    selector = ((claim.get("status") or {}).get("allocation") or {}).get("nodeSelector")
    try:
        return selector is None or node_selector_matches(selector, node)
    except InputError:
        return False

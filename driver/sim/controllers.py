"""The control-plane loops the sandbox needs around DRA: the ResourceClaim controller and the scheduler.

ResourceClaim controller (as in kube-controller-manager, 1.34+):
* for every pod entry with ``resourceClaimTemplateName`` it creates a claim from the template
  (``generateName: <pod>-<entry>-``, owned by the pod, annotated ``resource.kubernetes.io/pod-claim-name``)
  and records it in ``pod.status.resourceClaimStatuses``;
* when a pod has finished or is gone it removes the pod from its claims' ``status.reservedFor``; a claim
  nobody reserves any more is deallocated (its ``status.allocation`` cleared). Claims generated for a pod are
  deleted with the pod by owner-reference garbage collection.

Scheduler (the DRA part of kube-scheduler): a pending pod whose claims can all be allocated on a Ready node
gets them allocated and reserved (``driver.sim.allocator``) and is bound to that node, once the binding
conditions of attach-style devices hold; otherwise its ``PodScheduled`` condition says why, and it is
retried whenever pods, claims or slices change. Extended resources (``resources.limits``) that the node's
device plugin does not provide but a DeviceClass backs get the claim kube-scheduler 1.37 makes for them
(``driver.allocation.extended``), created once it is allocated, and ``status.extendedResourceClaimStatus``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from driver.allocation.extended import ExtendedClaim, NotBackedError, extended_claim, is_extended_claim
from driver.allocation.extended import pod_requests as pod_extended_requests
from driver.kube.client import (
    DEVICE_CLASSES,
    NODES,
    PODS,
    RESOURCE_CLAIM_TEMPLATES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    ApiError,
    KubeClient,
)
from driver.log import get_logger
from driver.sim.allocator import SimAllocator, pod_claim_names
from driver.sim.deviceplugin import pod_requests
from driver.sim.informer import WorkQueue, watch_forever

log = get_logger(__name__)

JSON = dict[str, Any]
POD_CLAIM_NAME_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
TERMINAL_PHASES = ("Succeeded", "Failed")


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _split(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Loops:
    """Runs a set of coroutines as tasks; ``stop`` cancels them."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


class ClaimController:
    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._queue = WorkQueue(self._sync_pod, "resourceclaim")
        self._pods: dict[str, JSON] = {}
        self._loops = _Loops()

    async def start(self) -> None:
        self._loops.spawn(self._queue.run(), "claim-controller-queue")
        self._loops.spawn(watch_forever(self.kube, PODS, self._on_pod), "claim-controller-pods")

    async def stop(self) -> None:
        await self._loops.stop()

    def _on_pod(self, event: str, pod: JSON) -> None:
        key = _key(pod)
        if event == "DELETED":
            self._pods.pop(key, None)
            self._queue.add(f"deleted:{key}:{pod['metadata'].get('uid', '')}")
        else:
            self._pods[key] = pod
            self._queue.add(key)

    async def _sync_pod(self, key: str) -> None:
        if key.startswith("deleted:"):
            _, pod_key, uid = key.split(":", 2)
            await self._release(_split(pod_key)[0], uid)
            return
        namespace, name = _split(key)
        try:
            pod = await self.kube.get(PODS, name, namespace)
        except ApiError as err:
            if err.not_found:
                return
            raise
        if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES or pod["metadata"].get(
            "deletionTimestamp"
        ):
            await self._release(namespace, pod["metadata"]["uid"])
            return
        await self._ensure_template_claims(pod)

    async def _ensure_template_claims(self, pod: JSON) -> None:
        meta = pod["metadata"]
        namespace = meta["namespace"]
        statuses = {s["name"]: s for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
        created: list[JSON] = []
        for entry in (pod.get("spec") or {}).get("resourceClaims") or []:
            template_name = entry.get("resourceClaimTemplateName")
            if not template_name or entry["name"] in statuses:
                continue
            claim = await self._existing_claim(pod, entry["name"]) or await self._create_claim(
                pod, entry["name"], template_name
            )
            if claim is None:
                return  # template missing: retried when the pod changes
            created.append({"name": entry["name"], "resourceClaimName": claim["metadata"]["name"]})
        if created:
            status = {"resourceClaimStatuses": [*statuses.values(), *created]}
            await self.kube.patch(PODS, meta["name"], {"status": status}, namespace, subresource="status")

    async def _existing_claim(self, pod: JSON, entry: str) -> JSON | None:
        """A claim already generated for this pod entry (the controller may have crashed before recording it)."""
        claims = await self.kube.list(RESOURCE_CLAIMS, pod["metadata"]["namespace"])
        for claim in claims.get("items") or []:
            owners = claim["metadata"].get("ownerReferences") or []
            annotations = claim["metadata"].get("annotations") or {}
            if (
                any(o.get("uid") == pod["metadata"]["uid"] for o in owners)
                and annotations.get(POD_CLAIM_NAME_ANNOTATION) == entry
            ):
                return dict(claim)
        return None

    async def _create_claim(self, pod: JSON, entry: str, template_name: str) -> JSON | None:
        meta = pod["metadata"]
        try:
            template = await self.kube.get(RESOURCE_CLAIM_TEMPLATES, template_name, meta["namespace"])
        except ApiError as err:
            if err.not_found:
                log.warning("resource claim template not found", pod=_key(pod), template=template_name)
                return None
            raise
        template_meta = (template.get("spec") or {}).get("metadata") or {}
        body = {
            "metadata": {
                "generateName": f"{meta['name']}-{entry}-",
                "namespace": meta["namespace"],
                "labels": dict(template_meta.get("labels") or {}),
                "annotations": {**(template_meta.get("annotations") or {}), POD_CLAIM_NAME_ANNOTATION: entry},
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"]["spec"],
        }
        claim = await self.kube.create(RESOURCE_CLAIMS, body, meta["namespace"])
        log.info("created claim from template", pod=_key(pod), claim=claim["metadata"]["name"])
        return claim

    async def _release(self, namespace: str, pod_uid: str) -> None:
        claims = await self.kube.list(RESOURCE_CLAIMS, namespace)
        for claim in claims.get("items") or []:
            reserved = (claim.get("status") or {}).get("reservedFor") or []
            if not any(r.get("uid") == pod_uid for r in reserved):
                continue
            status = dict(claim["status"])
            status["reservedFor"] = [r for r in reserved if r.get("uid") != pod_uid]
            if not status["reservedFor"]:
                status.pop("reservedFor")
                status.pop("allocation", None)
                status.pop("devices", None)
            with contextlib.suppress(ApiError):  # gone or changed: the next event retries
                await self.kube.update(
                    RESOURCE_CLAIMS, {**claim, "status": status}, namespace, subresource="status"
                )
                log.info(
                    "released claim",
                    claim=_key(claim),
                    pod_uid=pod_uid,
                    deallocated="allocation" not in status,
                )


def extended_resources(pod: Mapping[str, Any]) -> set[str]:
    """Extended resources (``vendor.com/name``) the pod's containers ask for."""
    spec = pod.get("spec") or {}
    names: set[str] = set()
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for group in ("limits", "requests"):
            names.update(k for k in ((container.get("resources") or {}).get(group) or {}) if "/" in k)
    return names


class Scheduler:
    def __init__(self, kube: KubeClient, *, list_type_attributes: bool = False) -> None:
        self.kube = kube
        self.allocator = SimAllocator(kube, list_type_attributes=list_type_attributes)
        self._queue = WorkQueue(self._schedule, "scheduler")
        self._pending: set[str] = set()
        self._loops = _Loops()

    async def start(self) -> None:
        self._loops.spawn(self._queue.run(), "scheduler-queue")
        self._loops.spawn(watch_forever(self.kube, PODS, self._on_pod), "scheduler-pods")
        for rt in (RESOURCE_CLAIMS, RESOURCE_SLICES, NODES):
            self._loops.spawn(watch_forever(self.kube, rt, self._retry_pending), f"scheduler-{rt.plural}")

    async def stop(self) -> None:
        await self._loops.stop()

    def _on_pod(self, event: str, pod: JSON) -> None:
        key = _key(pod)
        if event == "DELETED" or pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            self._pending.discard(key)
            return
        self._pending.add(key)
        self._queue.add(key)

    def _retry_pending(self, event: str, obj: JSON) -> None:
        for key in list(self._pending):
            self._queue.add(key)

    async def _schedule(self, key: str) -> None:
        namespace, name = _split(key)
        try:
            pod = await self.kube.get(PODS, name, namespace)
        except ApiError as err:
            if err.not_found:
                self._pending.discard(key)
                return
            raise
        if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            self._pending.discard(key)
            return
        reasons: list[str] = []
        for node in await self._ready_nodes():
            node_obj = await self.kube.get(NODES, node)
            try:
                extended = await self._extended_claim(pod, node_obj)
            except NotBackedError as err:
                reasons.append(str(err))
                continue
            backed = {str(m["resourceName"]) for m in extended.mappings} if extended else set()
            short = await self._extended_shortage(pod, node_obj, backed)
            if short:
                reasons.append(short)
                continue
            outcome = await self.allocator.allocate_for_pod(
                pod, node, extended.claim(pod) if extended else None
            )
            if outcome.allocated and extended is not None:
                made = next(c for c in outcome.claims if is_extended_claim(c))
                await self._record_extended(pod, extended.status(made["metadata"]["name"]))
            if outcome.waiting:
                # Reserved on this node; bound once the binding conditions hold (a claim change retries),
                # and looked at again when the binding timeout would run out.
                log.info("pod waits for binding conditions", pod=key, node=node, reason=outcome.reason)
                asyncio.get_running_loop().call_later(self.allocator.binding_timeout, self._queue.add, key)
                return
            if outcome.allocated:
                await self._bind(pod, node)
                self._pending.discard(key)
                return
            reasons.append(outcome.reason)
        claim_names = pod_claim_names(pod)
        message = "; ".join(reasons) or "no Ready node"
        if isinstance(claim_names, str):
            message = claim_names
        await self._unschedulable(pod, message)

    async def _extended_claim(self, pod: JSON, node: JSON) -> ExtendedClaim | None:
        """The claim for the pod's extended resources that DeviceClasses back on ``node`` (KEP-5004); None
        when there are none, or the pod got its claim in an earlier round."""
        if (pod.get("status") or {}).get("extendedResourceClaimStatus"):
            return None
        if not pod_extended_requests(pod):
            return None
        classes = (await self.kube.list(DEVICE_CLASSES)).get("items") or []
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        return extended_claim(pod, classes, allocatable)

    async def _record_extended(self, pod: JSON, status: JSON) -> None:
        meta = pod["metadata"]
        await self.kube.patch(
            PODS,
            meta["name"],
            {"status": {"extendedResourceClaimStatus": status}},
            meta["namespace"],
            subresource="status",
        )

    async def _extended_shortage(self, pod: JSON, node_obj: JSON, backed: set[str]) -> str:
        """ "Insufficient <resource>" when the node's allocatable extended resources (a device plugin's units)
        cannot cover the pod's requests on top of what its other pods hold; "" when they fit. Resources
        ``backed`` by the pod's extended-resource claim are DRA's."""
        wanted = {r: n for r in extended_resources(pod) - backed if (n := pod_requests(pod, r))}
        if not wanted:
            return ""
        node = node_obj["metadata"]["name"]
        allocatable = (node_obj.get("status") or {}).get("allocatable") or {}
        pods = (await self.kube.list(PODS, field_selector=f"spec.nodeName={node}")).get("items") or []
        active = [
            p
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and p["metadata"].get("uid") != pod["metadata"].get("uid")
        ]
        for resource, count in wanted.items():
            used = sum(pod_requests(p, resource) for p in active)
            if used + count > int(str(allocatable.get(resource, "0")) or 0):
                return f"Insufficient {resource}"
        return ""

    async def _ready_nodes(self) -> list[str]:
        nodes = (await self.kube.list(NODES)).get("items") or []
        ready = [
            n["metadata"]["name"]
            for n in nodes
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in n.get("status", {}).get("conditions") or []
            )
            and not n.get("spec", {}).get("unschedulable")
        ]
        return sorted(ready)

    async def _bind(self, pod: JSON, node: str) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        await self.kube.request("POST", PODS.path(meta["namespace"], meta["name"], "binding"), body=binding)
        log.info("pod scheduled", pod=_key(pod), node=node)

    async def _unschedulable(self, pod: JSON, message: str) -> None:
        conditions = [
            c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != "PodScheduled"
        ]
        current = next(
            (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"),
            None,
        )
        if current and current.get("message") == message and current.get("status") == "False":
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": _now(),
        }
        meta = pod["metadata"]
        status = {"phase": "Pending", "conditions": [*conditions, condition]}
        with contextlib.suppress(ApiError):
            await self.kube.patch(
                PODS, meta["name"], {"status": status}, meta["namespace"], subresource="status"
            )
        log.info("pod unschedulable", pod=_key(pod), reason=message)

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
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from driver.allocation.allocator import ERROR, INVALID_SELECTOR, TIMEOUT
from driver.allocation.extended import (
    ExtendedClaim,
    NotBackedError,
    extended_claim,
    is_extended_claim,
    pod_requests,
)
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
from driver.sim import events
from driver.sim.allocator import (
    DELETE_PROTECTION,
    NO_CLAIM,
    NOT_AVAILABLE,
    SimAllocator,
    pod_claim_names,
)
from driver.sim.informer import WorkQueue, watch_forever
from driver.sim.timestamps import transition_time
from driver.tasks import cancel_and_wait

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


class _Loops:
    """Runs a set of coroutines as tasks; ``stop`` cancels them."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
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
                # The controller reads templates from its informer's cache, whose NotFound names the resource
                # in the singular.
                message = (
                    f'PodResourceClaim {entry}: resource claim template "{template_name}": '
                    f'resourceclaimtemplate.resource.k8s.io "{template_name}" not found'
                )
                event = events.component_event(
                    pod, "Warning", "FailedResourceClaimCreation", message, component=events.CLAIM_CONTROLLER
                )
                await events.record(self.kube, event)
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
                updated = await self.kube.update(
                    RESOURCE_CLAIMS, {**claim, "status": status}, namespace, subresource="status"
                )
                log.info(
                    "released claim",
                    claim=_key(claim),
                    pod_uid=pod_uid,
                    deallocated="allocation" not in status,
                )
                if "allocation" not in status:
                    await self._unprotect(updated, namespace)

    async def _unprotect(self, claim: JSON, namespace: str) -> None:
        """Drop the delete-protection finalizer of a deallocated claim (a deleted claim then goes)."""
        finalizers = claim["metadata"].get("finalizers") or []
        if DELETE_PROTECTION not in finalizers:
            return
        kept = [f for f in finalizers if f != DELETE_PROTECTION]
        await self.kube.update(
            RESOURCE_CLAIMS, {**claim, "metadata": {**claim["metadata"], "finalizers": kept}}, namespace
        )


class Scheduler:
    """kube-scheduler's DRA-relevant behaviour, as a user sees it: the pod's ``PodScheduled`` condition and
    the ``FailedScheduling``/``Scheduled`` events carry kube-scheduler 1.37's words (:func:`fit_error`).

    Like kube-scheduler, a pod whose ResourceClaims do not all exist yet is not tried at all (its claims
    gate it: no condition, no event), and each attempt runs in two steps: the scheduling step here, then
    allocation and binding in a task of their own, during which the pod's unallocated claims are "in
    flight": another pod sharing one of them is told the claim "is in the process of being allocated" and is
    tried again when the first pod's step ends. Attempts are serialised (one allocation at a time). The
    claim for a pod's DRA-backed extended resources is worked out node by node in the second step (which
    nodes have a device plugin for the resource decides what DRA must provide) and created there, allocated,
    just before the pod is bound."""

    def __init__(self, kube: KubeClient, *, list_type_attributes: bool = False) -> None:
        self.kube = kube
        self.allocator = SimAllocator(kube, list_type_attributes=list_type_attributes)
        self._queue = WorkQueue(self._schedule, "scheduler")
        self._pending: set[str] = set()
        self._in_flight: dict[str, str] = {}  # claim key -> the pod key whose binding step allocates it
        self._binding: dict[str, asyncio.Task[None]] = {}  # pod key -> its allocation and binding step
        self._waiting: dict[str, set[str]] = {}  # pod key -> pods held back by its claims in flight
        self._cycle = asyncio.Lock()
        self._loops = _Loops()

    async def start(self) -> None:
        self._loops.spawn(self._queue.run(), "scheduler-queue")
        self._loops.spawn(watch_forever(self.kube, PODS, self._on_pod), "scheduler-pods")
        for rt in (RESOURCE_CLAIMS, RESOURCE_SLICES, NODES, DEVICE_CLASSES):
            self._loops.spawn(watch_forever(self.kube, rt, self._retry_pending), f"scheduler-{rt.plural}")

    async def stop(self) -> None:
        await self._loops.stop()
        await cancel_and_wait(*self._binding.values())

    def _on_pod(self, event: str, pod: JSON) -> None:
        key = _key(pod)
        if event == "DELETED" or pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            self._pending.discard(key)
            return
        self._pending.add(key)
        self._queue.add(key)

    def _retry_pending(self, event: str, obj: JSON) -> None:
        for key in list(self._pending):
            if key in self._binding:
                # Its step may have read the state before this change: try it again when the step ends
                # (else the change would be lost until the next one).
                self._waiting.setdefault(key, set()).add(key)
            self._queue.add(key)

    async def _schedule(self, key: str) -> None:
        if key in self._binding:
            return  # its step runs; a claim, slice, node or class change meanwhile requeues it after
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
        claims = await self._claims(pod)
        if claims is None:
            return  # gated until its claims exist (a claim event tries it again)
        nodes = (await self.kube.list(NODES)).get("items") or []
        unallocated = [c for c in claims if not (c.get("status") or {}).get("allocation")]
        busy = [c for c in unallocated if self._in_flight.get(_key(c), key) != key]
        if busy:
            self._waiting.setdefault(self._in_flight[_key(busy[0])], set()).add(key)
            message = f"resource claim {_key(busy[0])} is in the process of being allocated"
            await self._unschedulable(pod, fit_error(len(nodes), prefilter=message))
            return
        missing = await self._missing_class(unallocated)
        if missing:
            await self._unschedulable(pod, fit_error(len(nodes), prefilter=missing))
            return
        for claim in unallocated:
            self._in_flight[_key(claim)] = key
        task = asyncio.create_task(self._allocate_and_bind(key), name=f"scheduler-bind-{key}")
        self._binding[key] = task

    async def _claims(self, pod: JSON) -> list[JSON] | None:
        """The pod's ResourceClaims; None while one of its own does not exist (kube-scheduler's PreEnqueue
        gate). A pod with no claims of its own is never gated, nor is one by its extended-resource claim:
        that one is the scheduler's to make (the step making it binds the pod, so it only exists here for a
        pod waiting on binding conditions)."""
        names = pod_claim_names(pod)
        if isinstance(names, str):
            return None
        extended = ((pod.get("status") or {}).get("extendedResourceClaimStatus") or {}).get(
            "resourceClaimName"
        )
        claims = []
        for name in names:
            try:
                claims.append(await self.kube.get(RESOURCE_CLAIMS, name, pod["metadata"]["namespace"]))
            except ApiError as err:
                if not err.not_found:
                    raise
                if name != extended:
                    return None
        return claims

    async def _missing_class(self, claims: list[JSON]) -> str:
        """kube-scheduler's PreFilter check: every request of an unallocated claim names a DeviceClass that
        exists; else why not, in its words."""
        classes = {c["metadata"]["name"] for c in (await self.kube.list(DEVICE_CLASSES)).get("items") or []}
        for claim in claims:
            for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or []:
                wanted = [(request.get("name"), (request.get("exactly") or {}).get("deviceClassName"))]
                wanted += [
                    (f"{request.get('name')}/{sub.get('name')}", sub.get("deviceClassName"))
                    for sub in request.get("firstAvailable") or []
                ]
                for name, class_name in wanted:
                    if class_name and class_name not in classes:
                        return f"request {name}: device class {class_name} does not exist"
        return ""

    async def _allocate_and_bind(self, key: str) -> None:
        namespace, name = _split(key)
        try:
            async with self._cycle:
                # What changed while another pod's step ran counts: read the pod and the nodes again.
                pod = await self.kube.get(PODS, name, namespace)
                if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                    return
                nodes = (await self.kube.list(NODES)).get("items") or []
                await self._try_nodes(key, pod, nodes)
        except ApiError as err:
            if not err.not_found:
                log.exception("scheduling attempt failed", pod=key)
        except Exception:
            log.exception("scheduling attempt failed", pod=key)
        finally:
            self._binding.pop(key, None)
            for claim, owner in list(self._in_flight.items()):
                if owner == key:
                    del self._in_flight[claim]
            # Only the pods this step held back: requeueing every pending pod here would have two
            # unschedulable pods requeue each other for ever.
            for waiting in self._waiting.pop(key, set()):
                self._queue.add(waiting)

    async def _try_nodes(self, key: str, pod: JSON, nodes: list[JSON]) -> None:
        reasons: dict[str, str] = {}  # node -> why not
        victims: set[str] = set()  # nodes where preemption could help (a shortage of extended resources)
        classes = await self._extended_classes(pod)
        for node in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
            name = str(node["metadata"]["name"])
            blocked = _node_blocked(node)
            if blocked:
                reasons[name] = blocked
                continue
            try:
                extended = _extended_claim(pod, node, classes)
            except NotBackedError as err:  # NodeResourcesFit: neither a device plugin nor DRA has it
                reasons[name] = f"Insufficient {err.resource}"
                victims.add(name)
                continue
            backed = {str(m["resourceName"]) for m in extended.mappings} if extended else set()
            short = await self._extended_shortage(pod, node, backed)
            if short:
                reasons[name] = short
                victims.add(name)
                continue
            outcome = await self.allocator.allocate_for_pod(
                pod, name, extended.claim(pod) if extended else None
            )
            if outcome.allocated and extended is not None:
                made = next(c for c in outcome.claims if is_extended_claim(c))
                await self._record_extended(pod, extended.status(made["metadata"]["name"]))
            if outcome.waiting:
                # Reserved on this node; bound once the binding conditions hold (a claim change retries),
                # and looked at again when the binding timeout would run out.
                log.info("pod waits for binding conditions", pod=key, node=name, reason=outcome.reason)
                asyncio.get_running_loop().call_later(self.allocator.binding_timeout, self._queue.add, key)
                return
            if outcome.allocated:
                await self._bind(pod, name)
                self._pending.discard(key)
                return
            if outcome.cause == NO_CLAIM:
                return  # a claim went away meanwhile: gated again
            if outcome.cause in (ERROR, INVALID_SELECTOR):
                # A plugin error ends the attempt on the first node, with the error itself.
                message = f'running "DynamicResources" filter plugin: {outcome.reason}'
                await self._unschedulable(pod, message, reason="SchedulerError")
                return
            reasons[name] = {
                NOT_AVAILABLE: "resourceclaim not available on the node",
                TIMEOUT: "timed out trying to allocate devices",
            }.get(outcome.cause, "cannot allocate all claims")
            log.info("pod claims not allocatable", pod=key, node=name, reason=outcome.reason)
        await self._unschedulable(pod, fit_error(len(nodes), reasons=reasons, victims=victims))

    async def _extended_classes(self, pod: JSON) -> list[JSON] | None:
        """The DeviceClasses that may back the pod's extended resources, read once per attempt; None when it
        asks for none, or got its claim in an earlier round."""
        if (pod.get("status") or {}).get("extendedResourceClaimStatus"):
            return None
        if not pod_requests(pod):
            return None
        return (await self.kube.list(DEVICE_CLASSES)).get("items") or []

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
        wanted = {r: n for r, n in pod_requests(pod).items() if r not in backed}
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
            used = sum(pod_requests(p).get(resource, 0) for p in active)
            if used + count > int(str(allocatable.get(resource, "0")) or 0):
                return f"Insufficient {resource}"
        return ""

    async def _bind(self, pod: JSON, node: str) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        await self.kube.request("POST", PODS.path(meta["namespace"], meta["name"], "binding"), body=binding)
        message = f"Successfully assigned {_key(pod)} to {node}"
        await events.record(self.kube, events.scheduler_event(pod, "Normal", "Scheduled", "Binding", message))
        log.info("pod scheduled", pod=_key(pod), node=node)

    async def _unschedulable(self, pod: JSON, message: str, reason: str = "Unschedulable") -> None:
        """``PodScheduled=False`` with kube-scheduler's words and a ``FailedScheduling`` event, once per
        verdict (kube-scheduler records an event per attempt; its recorder folds repeats into a series)."""
        current = pod_condition(pod, "PodScheduled")
        if current and (current.get("message"), current.get("reason")) == (message, reason):
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "lastProbeTime": None,
            "lastTransitionTime": transition_time(current, "False"),
            "reason": reason,
            "message": message,
            "observedGeneration": pod["metadata"].get("generation"),
        }
        others = [
            c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != "PodScheduled"
        ]
        meta = pod["metadata"]
        status = {"phase": "Pending", "conditions": [*others, condition]}
        # The event first, as kube-scheduler's failure handler records it before it updates the pod.
        event = events.scheduler_event(pod, "Warning", "FailedScheduling", "Scheduling", message)
        await events.record(self.kube, event)
        with contextlib.suppress(ApiError):
            await self.kube.patch(
                PODS, meta["name"], {"status": status}, meta["namespace"], subresource="status"
            )
        log.info("pod unschedulable", pod=_key(pod), reason=message)


def _extended_claim(pod: JSON, node: JSON, classes: list[JSON] | None) -> ExtendedClaim | None:
    """The claim for the pod's extended resources that DeviceClasses back on ``node`` (KEP-5004); None when
    nothing is backed there, or the pod needs no such claim (``classes`` is None)."""
    if classes is None:
        return None
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return extended_claim(pod, classes, allocatable)


def pod_condition(pod: Mapping[str, Any], kind: str) -> JSON | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


#: Why a node is out of the question before any plugin looks at the pod's claims (kube-scheduler's
#: NodeUnschedulable and TaintToleration filters; no pod of the sandbox tolerates either taint).
UNSCHEDULABLE_NODE = "node(s) were unschedulable"
NOT_READY_NODE = "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
#: kube-scheduler's preemption verdicts per node (DefaultPreemption).
PREEMPTION_NOT_HELPFUL = "Preemption is not helpful for scheduling"
NO_VICTIMS = "No preemption victims found for incoming pod"


def _node_blocked(node: Mapping[str, Any]) -> str:
    if (node.get("spec") or {}).get("unschedulable"):
        return UNSCHEDULABLE_NODE
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )
    return "" if ready else NOT_READY_NODE


def _histogram(reasons: Iterable[str]) -> str:
    return ", ".join(sorted(f"{n} {reason}" for reason, n in Counter(reasons).items()))


def fit_error(
    nodes: int,
    *,
    prefilter: str = "",
    reasons: Mapping[str, str] | None = None,
    victims: Iterable[str] = (),
) -> str:
    """kube-scheduler's message for a pod no node can take (its ``FitError``), with the preemption step's
    verdict: ``0/N nodes are available: <PreFilter message, or a histogram of the nodes' reasons>.
    preemption: 0/N nodes are available: <histogram>.``

    ``reasons`` maps each node to why it was rejected; ``victims`` are the nodes where evicting other pods
    could help (a resource shortage: preemption finds no victim in the sandbox, whose pods have no
    priorities); every other rejection is one preemption cannot resolve. A PreFilter rejection applies to
    every node."""
    if nodes == 0:
        return "no nodes available to schedule pods"
    head = f"0/{nodes} nodes are available:"
    per_node = dict(reasons or {})
    if prefilter:
        message = f"{head} {prefilter}."
        preemption = [PREEMPTION_NOT_HELPFUL] * nodes
    else:
        message = f"{head} {_histogram(per_node.values())}." if per_node else head
        helpful = set(victims)
        preemption = [NO_VICTIMS if n in helpful else PREEMPTION_NOT_HELPFUL for n in per_node]
    return f"{message} preemption: {head} {_histogram(preemption)}."

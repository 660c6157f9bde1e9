"""Sim parity: scenarios a user runs, observed the same way on the sandbox and on a real cluster.

Each scenario applies objects through the API, waits for what a user waits for, and returns an
*observation*: what ``kubectl get -o yaml`` and ``kubectl get events`` show of the objects it made -- object
status and conditions, finalizers, event types, reasons, reporting components and messages, HTTP status codes
and messages -- with what may differ between two clusters by right taken out: names the server generates,
node names and counts, uids and times (their presence is kept).

``tests/integration/test_sim_parity.py`` runs every scenario against the sandbox and compares with the
scenario's ``expected`` observation, which is what the real components answer; ``tests/realk8s/test_parity.py``
runs them against the real cluster and the sandbox side by side and compares all three. What stays different
is listed in docs/sandbox.md, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driver.kube.client import (
    EVENTS,
    NAMESPACES,
    PODS,
    RESOURCE_CLAIM_TEMPLATES,
    RESOURCE_CLAIMS,
    ApiError,
    KubeClient,
    ResourceType,
)

JSON = dict[str, Any]
DRIVER = "gpu.accel-dra.dev"
DELETE_PROTECTION = "resource.kubernetes.io/delete-protection"
WAIT = 120.0

Apply = Callable[[KubeClient, Sequence[Mapping[str, Any]]], Awaitable[None]]


@dataclass
class Target:
    """A cluster to run scenarios on: an admin client, how many nodes its scheduler sees, and how objects
    are applied there (a real cluster needs a namespace's default ServiceAccount before its pods)."""

    name: str
    kube: KubeClient
    nodes: Sequence[str]
    apply: Apply


async def create_all(kube: KubeClient, objects: Sequence[Mapping[str, Any]]) -> None:
    kinds = {rt.kind: rt for rt in (NAMESPACES, PODS, RESOURCE_CLAIMS, RESOURCE_CLAIM_TEMPLATES)}
    for obj in objects:
        rt = kinds[obj["kind"]]
        namespace = obj["metadata"].get("namespace") if rt.namespaced else None
        await kube.create(rt, dict(obj), namespace)


# -- building objects ---------------------------------------------------------------------------------


def namespace(name: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def request(class_name: str = DRIVER, **exactly: Any) -> JSON:
    return {"name": "gpu", "exactly": {"deviceClassName": class_name, **exactly}}


def claim(ns: str, name: str, *requests: JSON) -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"devices": {"requests": list(requests or [request()])}},
    }


def template(ns: str, name: str, *requests: JSON) -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"spec": {"devices": {"requests": list(requests or [request()])}}},
    }


def pod(ns: str, name: str, *, claim_name: str = "", template_name: str = "") -> JSON:
    source = {"resourceClaimName": claim_name} if claim_name else {"resourceClaimTemplateName": template_name}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "resourceClaims": [{"name": "gpu", **source}],
            "containers": [
                {
                    "name": "ctr",
                    "image": "registry.k8s.io/pause:3.10",
                    "command": ["sleep", "3600"],
                    "resources": {"claims": [{"name": "gpu"}]},
                }
            ],
        },
    }


IMPOSSIBLE = request(
    count=2,
    selectors=[
        {"cel": {"expression": f'device.capacity["{DRIVER}"].memory.compareTo(quantity("1Ti")) >= 0'}}
    ],
)


# -- waiting and reading ------------------------------------------------------------------------------


async def poll(what: str, probe: Callable[[], Awaitable[Any]], timeout: float = WAIT) -> Any:
    """``probe()``'s first truthy value; polled, against a deadline that only matters when broken."""
    delay = 0.05
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = await probe()
                if value:
                    return value
                await asyncio.sleep(delay)
                delay = min(0.5, delay * 1.5)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from None


async def get(kube: KubeClient, rt: ResourceType, name: str, ns: str) -> JSON | None:
    try:
        return await kube.get(rt, name, ns)
    except ApiError as err:
        if err.not_found:
            return None
        raise


async def prepared(kube: KubeClient, ns: str, name: str, *, pods: int) -> JSON | None:
    """The claim once reserved for ``pods`` pods and prepared (the plugin wrote its ``status.devices``)."""
    c = await get(kube, RESOURCE_CLAIMS, name, ns)
    status = (c or {}).get("status") or {}
    return c if len(status.get("reservedFor") or []) == pods and status.get("devices") else None


def condition(obj: Mapping[str, Any] | None, kind: str) -> JSON | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


async def events_of(kube: KubeClient, ns: str, name: str) -> list[JSON]:
    items = (await kube.list(EVENTS, ns)).get("items") or []
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]


async def generated_claim(kube: KubeClient, ns: str, pod_name: str) -> JSON | None:
    current = await get(kube, PODS, pod_name, ns)
    for status in ((current or {}).get("status") or {}).get("resourceClaimStatuses") or []:
        if status.get("resourceClaimName"):
            return await get(kube, RESOURCE_CLAIMS, status["resourceClaimName"], ns)
    return None


# -- normalising --------------------------------------------------------------------------------------


class Normal:
    """Takes out of an observation what differs between two clusters by right."""

    def __init__(self, target: Target) -> None:
        self.nodes = list(target.nodes)

    def text(self, message: str) -> str:
        message = re.sub(r"0/\d+ nodes are available", "0/N nodes are available", message)
        message = re.sub(r"(available:|,) \d+ ", r"\1 N ", message)
        for node in self.nodes:
            message = re.sub(rf"\b{re.escape(node)}\b", "<node>", message)
        message = re.sub(
            r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<uid>", message
        )
        return message

    def time(self, value: Any) -> str:
        if value is None:
            return "null"
        return (
            "<time>" if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", str(value)) else str(value)
        )

    def pod_condition(self, c: Mapping[str, Any] | None) -> JSON | None:
        if c is None:
            return None
        out: JSON = {k: c.get(k) for k in ("type", "status", "reason") if k in c}
        if "message" in c:
            out["message"] = self.text(str(c["message"]))
        out["lastProbeTime"] = self.time(c["lastProbeTime"]) if "lastProbeTime" in c else "absent"
        out["lastTransitionTime"] = self.time(c.get("lastTransitionTime"))
        out["observedGeneration"] = c.get("observedGeneration")
        return out

    def event(self, e: Mapping[str, Any]) -> tuple[str, str, str, str]:
        component = e.get("reportingComponent") or (e.get("source") or {}).get("component") or ""
        return (str(e.get("type")), str(e.get("reason")), str(component), self.text(str(e.get("message"))))

    def events(self, events: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
        """Distinct events in the order they first happened (recorders fold repeats differently)."""
        ordered = sorted(events, key=lambda e: str(e.get("eventTime") or e.get("firstTimestamp") or ""))
        return list(dict.fromkeys(self.event(e) for e in ordered))

    def claim(self, c: Mapping[str, Any] | None) -> JSON | None:
        if c is None:
            return None
        meta = c.get("metadata") or {}
        status = c.get("status") or {}
        allocation = status.get("allocation")
        out: JSON = {
            "finalizers": meta.get("finalizers"),
            "deleting": bool(meta.get("deletionTimestamp")),
            "status": sorted(status),
        }
        if allocation:
            out["allocation"] = sorted(allocation)
            out["allocationTimestamp"] = self.time(allocation.get("allocationTimestamp"))
            out["results"] = [sorted(r) for r in allocation["devices"]["results"]]
        if status.get("reservedFor"):
            out["reservedFor"] = [sorted(r) for r in status["reservedFor"]]
        if status.get("devices"):
            # The fields the server keeps (``conditions: null`` included); ``data`` is the driver's own.
            out["devices"] = [
                {"fields": sorted(d), "conditions": d.get("conditions", "absent")} for d in status["devices"]
            ]
        return out


# -- scenarios ----------------------------------------------------------------------------------------

Observation = dict[str, Any]
Scenario = Callable[[Target, str], Awaitable[Observation]]


async def unsatisfiable_claim(target: Target, ns: str) -> Observation:
    """A claim no node can satisfy: the pod's PodScheduled condition and events, and the claim untouched."""
    kube, norm = target.kube, Normal(target)
    await target.apply(
        kube, [namespace(ns), template(ns, "huge", IMPOSSIBLE), pod(ns, "pod", template_name="huge")]
    )

    async def verdict() -> JSON | None:
        c = condition(await get(kube, PODS, "pod", ns), "PodScheduled")
        return c if c and c.get("status") == "False" else None

    scheduled = await poll("the scheduler's verdict", verdict)
    generated = await generated_claim(kube, ns, "pod")
    assert generated is not None
    meta = generated["metadata"]
    return {
        "PodScheduled": norm.pod_condition(scheduled),
        "events": norm.events(await events_of(kube, ns, "pod")),
        "claim": norm.claim(generated),
        "claimName": re.sub(r"-[a-z0-9]{5}$", "-<random>", meta["name"]),
        "claimAnnotations": meta.get("annotations"),
        "claimOwner": [
            (o["kind"], o["name"], o.get("controller")) for o in meta.get("ownerReferences") or []
        ],
    }


async def missing_device_class(target: Target, ns: str) -> Observation:
    kube, norm = target.kube, Normal(target)
    await target.apply(
        kube,
        [namespace(ns), claim(ns, "noclass", request("no-such-class")), pod(ns, "pod", claim_name="noclass")],
    )

    async def verdict() -> JSON | None:
        c = condition(await get(kube, PODS, "pod", ns), "PodScheduled")
        return c if c and c.get("status") == "False" else None

    scheduled = await poll("the scheduler's verdict", verdict)
    return {
        "PodScheduled": norm.pod_condition(scheduled),
        "events": norm.events(await events_of(kube, ns, "pod")),
        "claim": norm.claim(await get(kube, RESOURCE_CLAIMS, "noclass", ns)),
    }


async def missing_claim_and_template(target: Target, ns: str) -> Observation:
    """A pod whose template does not exist: the claim controller says so in events; a pod whose claim does
    not exist yet: nothing at all, until the claim is created -- then it is scheduled with no complaint."""
    kube, norm = target.kube, Normal(target)
    await target.apply(
        kube,
        [namespace(ns), pod(ns, "notemplate", template_name="absent"), pod(ns, "later", claim_name="later")],
    )

    async def complaint() -> list[JSON]:
        return [
            e
            for e in await events_of(kube, ns, "notemplate")
            if e.get("reason") == "FailedResourceClaimCreation"
        ]

    await poll("the claim controller's event", complaint)
    await target.apply(kube, [claim(ns, "later")])

    async def bound() -> JSON | None:
        current = await get(kube, PODS, "later", ns)
        return current if (current or {}).get("spec", {}).get("nodeName") else None

    await poll("the pod scheduled once its claim exists", bound)

    async def scheduled_event() -> list[JSON]:
        return [e for e in await events_of(kube, ns, "later") if e.get("reason") == "Scheduled"]

    await poll("the Scheduled event", scheduled_event)
    notemplate = await get(kube, PODS, "notemplate", ns)
    return {
        "notemplate": {
            "PodScheduled": norm.pod_condition(condition(notemplate, "PodScheduled")),
            "resourceClaimStatuses": (notemplate or {}).get("status", {}).get("resourceClaimStatuses"),
            "events": norm.events(await events_of(kube, ns, "notemplate")),
        },
        "later": {"events": norm.events(await events_of(kube, ns, "later"))},
    }


async def running_pod(target: Target, ns: str) -> Observation:
    """A pod with one GPU from a template, Running: its conditions, device health, events; the claim's
    allocation, finalizer, reservation and device status. Then the pod goes: the claim with it."""
    kube, norm = target.kube, Normal(target)
    await target.apply(kube, [namespace(ns), template(ns, "one"), pod(ns, "pod", template_name="one")])

    async def healthy() -> JSON | None:
        current = await get(kube, PODS, "pod", ns)
        statuses = ((current or {}).get("status") or {}).get("containerStatuses") or []
        reported = [s for s in statuses if s.get("allocatedResourcesStatus")]
        return current if (current or {}).get("status", {}).get("phase") == "Running" and reported else None

    running = await poll("the pod Running with its device health", healthy)

    async def written() -> JSON | None:
        c = await generated_claim(kube, ns, "pod")
        return c if (c or {}).get("status", {}).get("devices") else None

    allocated = await written_claim(written)
    (status,) = running["status"]["containerStatuses"]
    health = [
        {
            "name": entry["name"],
            "resources": [{k: v for k, v in r.items() if k != "resourceID"} for r in entry["resources"]],
        }
        for entry in status["allocatedResourcesStatus"]
    ]
    observation: Observation = {
        "phase": running["status"]["phase"],
        "conditions": [norm.pod_condition(c) for c in running["status"]["conditions"]],
        "observedGeneration": running["status"].get("observedGeneration"),
        "allocatedResourcesStatus": health,
        "events": [e for e in norm.events(await events_of(kube, ns, "pod")) if e[2] != "kubelet"],
        "claim": norm.claim(allocated),
    }
    name = allocated["metadata"]["name"]
    await kube.delete(PODS, "pod", ns)

    async def claim_gone() -> bool:
        return await get(kube, RESOURCE_CLAIMS, name, ns) is None

    await poll("the generated claim gone with its pod", claim_gone)
    return observation


def extended_pod(ns: str, name: str, gpus: int) -> JSON:
    """A pod asking for GPUs the device-plugin way (``nvidia.com/gpu``), which the driver's DeviceClass backs
    with DRA: no claim of its own."""
    spec = pod(ns, name, template_name="-")
    spec["spec"].pop("resourceClaims")
    spec["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return spec


async def extended_resource(target: Target, ns: str) -> Observation:
    """Extended resources backed by DRA (KEP-5004): a pod with ``nvidia.com/gpu: 1`` and no claim is
    scheduled (no PreEnqueue gate), gets the claim the scheduler makes for it -- name, annotation, owner,
    finalizer, allocation -- and ``status.extendedResourceClaimStatus``; a pod asking for more GPUs than any
    node has gets the scheduler's verdict and no claim."""
    kube, norm = target.kube, Normal(target)
    await target.apply(kube, [namespace(ns), extended_pod(ns, "pod", 1), extended_pod(ns, "huge", 20)])

    async def made() -> JSON | None:
        current = await get(kube, PODS, "pod", ns)
        status = ((current or {}).get("status") or {}).get("extendedResourceClaimStatus") or {}
        if not status.get("resourceClaimName") or not (current or {}).get("spec", {}).get("nodeName"):
            return None
        c = await get(kube, RESOURCE_CLAIMS, status["resourceClaimName"], ns)
        return c if (c or {}).get("status", {}).get("reservedFor") else None

    claim_made = await poll("the extended-resource claim made and reserved", made)

    async def scheduled() -> list[JSON]:
        return [e for e in await events_of(kube, ns, "pod") if e.get("reason") == "Scheduled"]

    await poll("the Scheduled event", scheduled)

    async def verdict() -> JSON | None:
        c = condition(await get(kube, PODS, "huge", ns), "PodScheduled")
        return c if c and c.get("status") == "False" else None

    refused = await poll("the scheduler's verdict on the huge pod", verdict)
    current = await get(kube, PODS, "pod", ns) or {}
    status = dict(current["status"]["extendedResourceClaimStatus"])
    meta = claim_made["metadata"]
    status["resourceClaimName"] = re.sub(r"-[a-z0-9]{5}$", "-<random>", status["resourceClaimName"])
    huge = await get(kube, PODS, "huge", ns) or {}
    return {
        "extendedResourceClaimStatus": status,
        "claimName": re.sub(r"-[a-z0-9]{5}$", "-<random>", meta["name"]),
        "claimAnnotations": meta.get("annotations"),
        "claimOwner": [
            (o["kind"], o["name"], o.get("controller")) for o in meta.get("ownerReferences") or []
        ],
        "claimRequests": claim_made["spec"]["devices"]["requests"],
        "claim": {k: v for k, v in (norm.claim(claim_made) or {}).items() if k not in ("status", "devices")},
        "events": [e for e in norm.events(await events_of(kube, ns, "pod")) if e[2] != "kubelet"],
        "huge": {
            "PodScheduled": norm.pod_condition(refused),
            "events": norm.events(await events_of(kube, ns, "huge")),
            "extendedResourceClaimStatus": huge.get("status", {}).get("extendedResourceClaimStatus"),
        },
        "claims": len((await kube.list(RESOURCE_CLAIMS, ns)).get("items") or []),
    }


async def written_claim(probe: Callable[[], Awaitable[JSON | None]]) -> JSON:
    found: JSON = await poll("the claim's status.devices", probe)
    return found


async def shared_claim(target: Target, ns: str) -> Observation:
    """Two pods share a claim: both run (the second may be told the claim is being allocated meanwhile).
    The claim, deleted while in use, stays until its last pod goes; deallocated, it is gone."""
    kube, norm = target.kube, Normal(target)
    await target.apply(
        kube,
        [
            namespace(ns),
            claim(ns, "shared"),
            pod(ns, "pod0", claim_name="shared"),
            pod(ns, "pod1", claim_name="shared"),
        ],
    )
    for name in ("pod0", "pod1"):

        async def scheduled(n: str = name) -> list[JSON]:
            return [e for e in await events_of(kube, ns, n) if e.get("reason") == "Scheduled"]

        await poll(f"{name} scheduled", scheduled)
    transient = "0/N nodes are available: resource claim {ns}/shared is in the process of being allocated."
    observation: Observation = {}
    for name in ("pod0", "pod1"):
        seen = norm.events(await events_of(kube, ns, name))
        # The transient verdict depends on timing, on either cluster: only its wording is compared.
        waits = [e for e in seen if e[1] == "FailedScheduling"]
        assert all(e[3].startswith(transient.format(ns=ns)) for e in waits), waits
        observation[name] = [e for e in seen if e[1] != "FailedScheduling"]
    reserved = await poll("the shared claim prepared", lambda: prepared(kube, ns, "shared", pods=2))
    observation["claim"] = norm.claim(reserved)
    await kube.delete(RESOURCE_CLAIMS, "shared", ns)
    observation["deletedInUse"] = norm.claim(await get(kube, RESOURCE_CLAIMS, "shared", ns))
    await kube.delete(PODS, "pod0", ns)

    async def one_left() -> JSON | None:
        c = await get(kube, RESOURCE_CLAIMS, "shared", ns)
        return c if c and len(c.get("status", {}).get("reservedFor") or []) == 1 else None

    observation["onePodLeft"] = norm.claim(await poll("pod0 released", one_left))
    await kube.delete(PODS, "pod1", ns)

    async def gone() -> bool:
        return await get(kube, RESOURCE_CLAIMS, "shared", ns) is None

    await poll("the claim gone with its last pod", gone)
    return observation


async def released_claim(target: Target, ns: str) -> Observation:
    """A claim of its own outlives its pod: deallocated, its finalizer dropped."""
    kube, norm = target.kube, Normal(target)
    await target.apply(kube, [namespace(ns), claim(ns, "solo"), pod(ns, "pod", claim_name="solo")])

    before = norm.claim(await poll("the claim prepared", lambda: prepared(kube, ns, "solo", pods=1)))
    await kube.delete(PODS, "pod", ns)

    async def released() -> JSON | None:
        c = await get(kube, RESOURCE_CLAIMS, "solo", ns)
        return (
            c
            if c and not (c.get("status") or {}).get("allocation") and not c["metadata"].get("finalizers")
            else None
        )

    return {"allocated": before, "released": norm.claim(await poll("the claim released", released))}


async def api_answers(target: Target, ns: str) -> Observation:
    """HTTP status codes and messages of a few everyday mistakes."""
    kube = target.kube
    await target.apply(kube, [namespace(ns), claim(ns, "c")])
    answers: Observation = {}

    async def answer(what: str, call: Awaitable[Any]) -> None:
        try:
            await call
        except ApiError as err:
            answers[what] = (err.status, err.reason, err.message)
        else:
            answers[what] = "ok"

    await answer("get a missing claim", kube.get(RESOURCE_CLAIMS, "nope", ns))
    await answer("create an existing claim", kube.create(RESOURCE_CLAIMS, claim(ns, "c"), ns))
    await answer("delete a missing pod", kube.delete(PODS, "nope", ns))
    stale = await kube.get(RESOURCE_CLAIMS, "c", ns)
    await kube.patch(RESOURCE_CLAIMS, "c", {"metadata": {"labels": {"a": "b"}}}, ns)
    await answer("update with a stale resourceVersion", kube.update(RESOURCE_CLAIMS, stale, ns))
    return answers


async def cleanup(kube: KubeClient, ns: str) -> None:
    with contextlib.suppress(ApiError):
        await kube.delete(NAMESPACES, ns)


#: The scenarios, each run in a namespace of its own, ``parity-<name>``. What the real kube-apiserver,
#: kube-scheduler, kube-controller-manager and kubelet of Kubernetes 1.37 answer for each is in
#: :data:`EXPECTED` (recorded from the real-cluster tier, which checks it still holds).
SCENARIOS: dict[str, Scenario] = {
    "unsatisfiable-claim": unsatisfiable_claim,
    "missing-device-class": missing_device_class,
    "missing-claim-and-template": missing_claim_and_template,
    "running-pod": running_pod,
    "shared-claim": shared_claim,
    "released-claim": released_claim,
    "api-answers": api_answers,
    "extended-resource": extended_resource,
}

EXPECTED_FILE = Path(__file__).parents[1] / "fixtures" / "parity" / "expected.json"


def expected(name: str) -> Observation:
    observations: dict[str, Observation] = json.loads(EXPECTED_FILE.read_text())
    return observations[name]


def comparable(observation: Observation) -> Observation:
    """The observation as JSON gives it back (tuples as lists), to compare with :data:`EXPECTED_FILE`."""
    loaded: Observation = json.loads(json.dumps(observation))
    return loaded

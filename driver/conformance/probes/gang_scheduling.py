"""``gang_scheduling``: an all-or-nothing workload through the platform's gang scheduler (Kueue).

Checks: Kueue's API (``kueue.x-k8s.io``) is served and the vendor names where it takes workloads
(``gangScheduling.namespace`` with a LocalQueue, and ``jobLabels`` such as
``kueue.x-k8s.io/queue-name=<queue>``), as upstream's ``TestGangScheduling`` asks; a Job of N pods that fits
the queue's quota is admitted whole and completes; a Job of N pods of which only N-1 fit the ClusterQueue's
CPU quota runs no pod at all during ``negativeWindowSeconds`` (a scheduler without gangs would start the pods
that fit). The Jobs use only CPU and memory, as upstream's test does: gang semantics do not depend on
accelerators. Without Kueue, or without its namespace configured, the checks are skipped with that reason:
gang scheduling is then shown another way (upstream's test imported with ``--import-junit``, or documentation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from driver.conformance import pods as podlib
from driver.conformance.apis import JOBS, KUEUE_GROUP, KUEUE_VERSIONS, first_served, kueue_kind
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import unique
from driver.kube.client import PODS, ApiError
from driver.quantity import parse_quantity

JSON = dict[str, Any]
JOB_LABEL = "conformance.accel-dra.dev/job"
POLL = 2.0
POD_CPU, POD_MEMORY = "10m", "16Mi"


def labels_of(pairs: Sequence[str]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in pairs)


def job(name: str, vendor: Any, pods: int, cpu: str, extra_labels: Mapping[str, str]) -> JSON:
    """A suspended Job of ``pods`` parallel pods (the gang scheduler unsuspends it once all fit)."""
    container = podlib.Container(
        "member", podlib.script('echo "RESULT: MEMBER=$(hostname)"', keep_alive=False, then="sleep 5")
    )
    pod = podlib.pod(vendor, name, [container])
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    spec["containers"][0]["resources"] = {
        "requests": {"cpu": cpu, "memory": POD_MEMORY},
        "limits": {"cpu": cpu, "memory": POD_MEMORY},
    }
    return {
        "kind": "Job",
        "metadata": {"name": name, "labels": dict(extra_labels)},
        "spec": {
            "suspend": True,
            "parallelism": pods,
            "completions": pods,
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {JOB_LABEL: name, **extra_labels}}, "spec": spec},
        },
    }


def cpu_quota(cluster_queue: Mapping[str, Any]) -> float | None:
    """The ClusterQueue's nominal CPU quota summed over its flavors (cores), or None without one."""
    total = 0.0
    found = False
    for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []:
        for flavor in group.get("flavors") or []:
            for resource in flavor.get("resources") or []:
                if resource.get("name") == "cpu" and resource.get("nominalQuota") is not None:
                    total += float(parse_quantity(str(resource["nominalQuota"])))
                    found = True
    return total if found else None


def oversized_cpu(quota: float, pods: int) -> str:
    """Per-pod CPU such that ``pods - 1`` pods fit the quota and ``pods`` do not (millicores)."""
    per_pod = math.floor(quota * 1000 / (pods - 1))
    if per_pod * pods <= quota * 1000:  # cannot happen for pods >= 2, but never claim a gang that fits
        per_pod += 1
    return f"{per_pod}m"


def phases(pods: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in pods:
        phase = str((p.get("status") or {}).get("phase") or "Pending")
        out[phase] = out.get(phase, 0) + 1
    return out


async def _pods_of(ctx: ProbeContext, name: str, namespace: str) -> list[JSON]:
    return list(
        (await ctx.kube.list(PODS, namespace, label_selector=f"{JOB_LABEL}={name}")).get("items") or []
    )


async def _kueue(ctx: ProbeContext) -> tuple[str, str] | None:
    """(Kueue API version, namespace) once Kueue is served and configured."""
    async with ctx.check("GangSchedulerServed") as check:
        ctx.step("reading API discovery for kueue.x-k8s.io")
        found = await first_served(ctx.kube, KUEUE_GROUP, KUEUE_VERSIONS)
        if found is None:
            raise CheckSkippedError(
                "no gang scheduler found: the cluster serves no Kueue API (kueue.x-k8s.io); show gang scheduling "
                "another way (upstream's TestGangScheduling with --import-junit, or documentation)"
            )
        version, _ = found
        gang = ctx.vendor.gang
        if not gang.namespace or not gang.job_labels:
            queues = kueue_kind(version, "localqueues", "LocalQueue", namespaced=True)
            listed = (await ctx.kube.list(queues)).get("items") or []
            names = (
                ", ".join(f"{q['metadata']['namespace']}/{q['metadata']['name']}" for q in listed) or "none"
            )
            raise CheckSkippedError(
                f"Kueue ({KUEUE_GROUP}/{version}) is served, but gangScheduling.namespace and jobLabels are not set "
                f"(a namespace with a LocalQueue and e.g. kueue.x-k8s.io/queue-name=<queue>; LocalQueues: {names})"
            )
        check.message = f"Kueue {KUEUE_GROUP}/{version}; workloads go to namespace {gang.namespace} with {', '.join(gang.job_labels)}"
        return version, gang.namespace
    return None


async def _admitted_whole(ctx: ProbeContext, namespace: str) -> None:
    async with ctx.check("GangAdmittedAndCompleted") as check:
        gang = ctx.vendor.gang
        name = unique("gang")
        await ctx.create(
            JOBS, job(name, ctx.vendor, gang.pods, POD_CPU, labels_of(gang.job_labels)), namespace
        )
        ctx.step(f"waiting for Job {namespace}/{name} ({gang.pods} pods) to complete")
        deadline = ctx.clock.now() + ctx.vendor.pod_timeout
        status: JSON = {}
        most_running = 0
        while ctx.clock.now() < deadline:
            status = (await ctx.kube.get(JOBS, name, namespace)).get("status") or {}
            counts = phases(await _pods_of(ctx, name, namespace))
            most_running = max(most_running, counts.get("Running", 0) + counts.get("Succeeded", 0))
            ctx.waiting(
                f"Job {name}: {status.get('active', 0)} active, {status.get('succeeded', 0)} succeeded; pods {counts}"
            )
            if int(status.get("succeeded") or 0) >= gang.pods:
                check.message = f"Job {namespace}/{name} was admitted and all {gang.pods} pods completed"
                await ctx.delete(JOBS, name, namespace)
                return
            if int(status.get("failed") or 0):
                raise CheckFailedError(f"Job {namespace}/{name} has failed pods: {status}")
            await ctx.clock.sleep(POLL)
        await ctx.delete(JOBS, name, namespace)
        raise CheckFailedError(
            f"Job {namespace}/{name} of {gang.pods} pods did not complete within {ctx.vendor.pod_timeout:g}s "
            f"(status {status}); check the LocalQueue's quota"
        )


async def _partial_stays_pending(ctx: ProbeContext, version: str, namespace: str) -> None:
    async with ctx.check("PartialGangRunsNothing") as check:
        gang = ctx.vendor.gang
        queue_name = next(
            (v for k, v in labels_of(gang.job_labels).items() if k.endswith("/queue-name")), None
        )
        if queue_name is None:
            raise CheckSkippedError(
                "jobLabels name no kueue.x-k8s.io/queue-name: the quota to exceed is unknown"
            )
        local = await ctx.kube.get(
            kueue_kind(version, "localqueues", "LocalQueue", True), queue_name, namespace
        )
        cq_name = str((local.get("spec") or {}).get("clusterQueue") or "")
        try:
            cq = await ctx.kube.get(kueue_kind(version, "clusterqueues", "ClusterQueue", False), cq_name)
        except ApiError as err:
            raise CheckSkippedError(
                f"ClusterQueue {cq_name!r} of LocalQueue {queue_name} cannot be read: {err}"
            ) from None
        quota = cpu_quota(cq)
        if not quota:
            raise CheckSkippedError(
                f"ClusterQueue {cq_name} sets no CPU quota: a gang that does not fit cannot be built"
            )
        cpu = oversized_cpu(quota, gang.pods)
        name = unique("gang-too-big")
        await ctx.create(JOBS, job(name, ctx.vendor, gang.pods, cpu, labels_of(gang.job_labels)), namespace)
        ctx.step(
            f"watching Job {namespace}/{name} for {gang.negative_window:g}s: {gang.pods} pods x {cpu} CPU > quota {quota:g}"
        )
        deadline = ctx.clock.now() + gang.negative_window
        while ctx.clock.now() < deadline:
            counts = phases(await _pods_of(ctx, name, namespace))
            if counts.get("Running", 0) or counts.get("Succeeded", 0):
                await ctx.delete(JOBS, name, namespace)
                raise CheckFailedError(
                    f"Job {name} of {gang.pods} pods x {cpu} CPU exceeds ClusterQueue {cq_name}'s {quota:g} CPU, yet pods "
                    f"started ({counts}): the workload was not held back whole"
                )
            await ctx.clock.sleep(POLL)
        await ctx.delete(JOBS, name, namespace)
        await ctx.wait_pods_gone(f"{JOB_LABEL}={name}", namespace)
        check.message = (
            f"Job {name} ({gang.pods} pods x {cpu} CPU, more than ClusterQueue {cq_name}'s {quota:g} CPU) ran no pod "
            f"for {gang.negative_window:g}s"
        )


async def run(ctx: ProbeContext) -> None:
    found = await _kueue(ctx)
    if found is None:
        for name in ("GangAdmittedAndCompleted", "PartialGangRunsNothing"):
            async with ctx.check(name):
                raise CheckSkippedError("no gang scheduler to test (see GangSchedulerServed)")
        return
    version, namespace = found
    await _admitted_whole(ctx, namespace)
    await _partial_stays_pending(ctx, version, namespace)


PROBE = Probe(
    name="gang_scheduling",
    test="TestGangScheduling",
    title="All-or-nothing scheduling through the platform's gang scheduler",
    requirements=("gang_scheduling",),
    run=run,
    timeout=900.0,
    required=("GangSchedulerServed", "GangAdmittedAndCompleted", "PartialGangRunsNothing"),
    modes=("dra", "device-plugin"),
)

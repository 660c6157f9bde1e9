"""``pod_autoscaling``: a HorizontalPodAutoscaler scales accelerator pods on an accelerator metric.

Checks: the custom-metrics API (``custom.metrics.k8s.io``) serves a per-pod accelerator metric -- the
vendor's ``podAutoscaling.metric``, else the first ``pods/...util...`` one (an adapter such as
prometheus-adapter serving the metrics exporter's series); ``autoscaling/v2`` and ``apps/v1`` are served; a
Deployment of one pod holding one accelerator (a claim from a template, or the extended resource) runs the
vendor's load, and an HPA with a ``Pods`` target on that metric below the load's value scales the Deployment
up: the metric reaches the HPA, its desired replicas rise above one and the Deployment follows. Without the
custom-metrics API, the HPA API or a load command the checks are skipped with that reason (the sandbox serves
neither API: this probe runs on real clusters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from driver.conformance import pods as podlib
from driver.conformance.apis import (
    CUSTOM_METRICS_GROUP,
    CUSTOM_METRICS_VERSIONS,
    DEPLOYMENTS,
    HPAS,
    first_served,
    served,
)
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import one_device, unique
from driver.quantity import parse_quantity

JSON = dict[str, Any]
APP_LABEL = "conformance.accel-dra.dev/app"
POLL = 5.0
#: Seconds on top of the pod timeout for the metric pipeline (exporter, scraper, adapter) and the HPA's
#: 15-second sync period.
METRIC_LAG = 240.0


@dataclass(frozen=True)
class CustomMetrics:
    version: str
    metric: str


def choose_metric(resources: Sequence[str], configured: str | None) -> str | None:
    """The per-pod metric to scale on: the configured one when listed, else the first utilization one."""
    pods = [r.removeprefix("pods/") for r in resources if r.startswith("pods/")]
    if configured:
        return configured if configured in pods else None
    return next((m for m in pods if "util" in m.lower()), None)


def deployment(name: str, pod: JSON, labels: Mapping[str, str]) -> JSON:
    spec = dict(pod["spec"])
    spec["restartPolicy"] = "Always"  # the only policy a Deployment's pods may have
    return {
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {APP_LABEL: name}},
            "template": {"metadata": {"labels": {APP_LABEL: name, **labels}}, "spec": spec},
        },
    }


def autoscaler(name: str, metric: str, target: str, max_replicas: int) -> JSON:
    return {
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": metric},
                        "target": {"type": "AverageValue", "averageValue": target},
                    },
                }
            ],
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}},
        },
    }


def hpa_state(hpa: Mapping[str, Any]) -> str:
    """The HPA's status in words: replicas, the metric it sees, and its conditions' reasons."""
    status = hpa.get("status") or {}
    seen = [
        str(((m.get("pods") or {}).get("current") or {}).get("averageValue"))
        for m in status.get("currentMetrics") or []
        if m.get("type") == "Pods"
    ]
    conditions = "; ".join(
        f"{c.get('type')}={c.get('status')} ({c.get('reason')}: {c.get('message', '')})"
        for c in status.get("conditions") or []
    )
    return (
        f"current {status.get('currentReplicas', '?')}, desired {status.get('desiredReplicas', '?')} replica(s); "
        f"metric {', '.join(seen) or 'not seen yet'}" + (f"; {conditions}" if conditions else "")
    )


def scaled(hpa: Mapping[str, Any], deploy: Mapping[str, Any]) -> bool:
    """The HPA wants more than one replica and the Deployment was scaled to that."""
    desired = int((hpa.get("status") or {}).get("desiredReplicas") or 0)
    replicas = int((deploy.get("spec") or {}).get("replicas") or 0)
    return desired > 1 and replicas > 1


async def _apis(ctx: ProbeContext) -> CustomMetrics | None:
    async with ctx.check("CustomMetricsAPIServed") as check:
        ctx.step("reading API discovery for custom.metrics.k8s.io, autoscaling/v2 and apps/v1")
        found = await first_served(ctx.kube, CUSTOM_METRICS_GROUP, CUSTOM_METRICS_VERSIONS)
        if found is None:
            raise CheckSkippedError(
                "the cluster serves no custom-metrics API (custom.metrics.k8s.io): an HPA cannot scale on an "
                "accelerator metric; install an adapter (e.g. prometheus-adapter) that serves the metrics "
                "exporter's series"
            )
        version, resources = found
        metric = choose_metric(resources, ctx.vendor.autoscaling.metric)
        if metric is None:
            wanted = ctx.vendor.autoscaling.metric or "a pods/...util... metric"
            raise CheckFailedError(
                f"custom.metrics.k8s.io/{version} serves no {wanted} ({len(resources)} resources listed)"
            )
        for rt in (HPAS, DEPLOYMENTS):
            if await served(ctx.kube, rt.group, rt.version) is None:
                raise CheckSkippedError(f"the cluster serves no {rt.api_version} {rt.kind}")
        check.message = f"custom.metrics.k8s.io/{version} serves pods/{metric}"
        return CustomMetrics(version, metric)
    return None


async def _metric_values(ctx: ProbeContext, api: CustomMetrics, app: str) -> list[float]:
    selector = quote(f"{APP_LABEL}={app}", safe="")
    path = (
        f"/apis/{CUSTOM_METRICS_GROUP}/{api.version}/namespaces/{ctx.namespace}/pods/*/{api.metric}"
        f"?labelSelector={selector}"
    )
    listing = await ctx.kube.request("GET", path)
    values = []
    for item in listing.get("items") or []:
        raw = item.get("value")
        if raw is not None:
            values.append(float(parse_quantity(str(raw))))
    return values


async def _scales(ctx: ProbeContext, api: CustomMetrics) -> None:
    async with ctx.check("ScalesOnAcceleratorMetric") as check:
        load, settings = ctx.vendor.load, ctx.vendor.autoscaling
        if not load.command:
            raise CheckSkippedError(
                f"vendor {ctx.vendor.name} sets no load.command that keeps an accelerator busy (the metric must rise)"
            )
        grant = await one_device(ctx, "autoscaled")
        name = unique("autoscaled")
        script = podlib.script(podlib.device_script(ctx.vendor), then=load.command)
        pod = podlib.pod(
            ctx.vendor, name, [grant.container("load", script, load.image)], templates=grant.templates
        )
        await ctx.create(DEPLOYMENTS, deployment(name, pod, ctx.labels()))
        await ctx.create(HPAS, autoscaler(name, api.metric, settings.target, settings.max_replicas))
        try:
            check.message = await _watch(ctx, api, name)
        finally:
            await ctx.delete(HPAS, name)
            await ctx.delete(DEPLOYMENTS, name)
            await ctx.wait_pods_gone(f"{APP_LABEL}={name}")


async def _watch(ctx: ProbeContext, api: CustomMetrics, name: str) -> str:
    """Poll the HPA, the Deployment and the metric until the Deployment is scaled up; fail at the deadline."""
    settings = ctx.vendor.autoscaling
    ctx.step(f"waiting for the HPA on {api.metric} (target {settings.target}) to scale Deployment {name}")
    deadline = ctx.clock.now() + ctx.vendor.pod_timeout + METRIC_LAG
    hpa: JSON = {}
    values: list[float] = []
    while ctx.clock.now() < deadline:
        hpa = await ctx.kube.get(HPAS, name, ctx.namespace)
        deploy = await ctx.kube.get(DEPLOYMENTS, name, ctx.namespace)
        values = await _metric_values(ctx, api, name)
        ctx.waiting(f"HPA {name}: {hpa_state(hpa)}; {api.metric} {values or 'none yet'}")
        if scaled(hpa, deploy):
            ctx.note(f"HPA {name}: {hpa_state(hpa)}")
            replicas = deploy["spec"]["replicas"]
            return (
                f"the HPA scaled Deployment {name} to {replicas} replicas on {api.metric} "
                f"({', '.join(f'{v:g}' for v in values) or 'value'} over target {settings.target})"
            )
        await ctx.clock.sleep(POLL)
    raise CheckFailedError(
        f"Deployment {name} was not scaled up within {ctx.vendor.pod_timeout + METRIC_LAG:g}s: HPA {hpa_state(hpa)}; "
        f"{api.metric} of its pods: {values or 'not served'}"
    )


async def run(ctx: ProbeContext) -> None:
    api = await _apis(ctx)
    if api is not None:
        await _scales(ctx, api)
    else:
        async with ctx.check("ScalesOnAcceleratorMetric"):
            raise CheckSkippedError(
                "no custom-metrics API serving an accelerator metric (see CustomMetricsAPIServed)"
            )


PROBE = Probe(
    name="pod_autoscaling",
    test="TestAcceleratorPodAutoscaling",
    title="An HPA scales accelerator pods on an accelerator metric",
    requirements=("pod_autoscaling",),
    run=run,
    timeout=900.0,
    required=("CustomMetricsAPIServed", "ScalesOnAcceleratorMetric"),
    modes=("dra", "device-plugin"),
)

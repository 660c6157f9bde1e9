"""``accelerator_metrics``: a metrics endpoint with per-accelerator utilization and memory, attributed to pods.

Scrapes the vendor's metrics Service through the API server's service proxy (as the upstream test does).
Checks: the endpoint answers Prometheus text; per-accelerator utilization and memory series exist (a series
counts only with an identity label such as ``uuid`` or ``pci_bus_id``); temperature, power and interconnect
series are reported where present (never a failure); with the vendor's load command, utilization of the
claimed accelerator rises while the load runs and series name the load's pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from driver.conformance import devices as devlib
from driver.conformance import metrics as m
from driver.conformance import pods as podlib
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import granted_devices, one_device, unique
from driver.conformance.vendor import Metrics
from driver.kube.client import ApiError

PCI_BUS_ID_ATTRIBUTE = "resource.kubernetes.io/pciBusID"  # the Kubernetes standard attribute
_PCI_RE = re.compile(r"^([0-9a-f]+):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
SCRAPE_INTERVAL = 0.5


def proxy_path(metrics: Metrics) -> str:
    return f"/api/v1/namespaces/{metrics.namespace}/services/{metrics.service}:{metrics.port}/proxy{metrics.path}"


def normalize_id(value: str) -> str:
    """Compare device ids loosely: case, and PCI domains written with 4 or 8 digits."""
    text = value.strip().lower()
    if match := _PCI_RE.match(text):
        return f"{int(match[1], 16):04x}:{match[2]}:{match[3]}.{match[4]}"
    return text


async def scrape(ctx: ProbeContext) -> list[m.Sample]:
    metrics = ctx.vendor.metrics
    try:
        text = await ctx.kube.request_text("GET", proxy_path(metrics))
    except ApiError as err:
        raise CheckFailedError(
            f"cannot scrape {metrics.namespace}/{metrics.service}:{metrics.port}{metrics.path} through the API "
            f"server's service proxy: {err}"
        ) from None
    try:
        return m.parse(text)
    except m.MetricsFormatError as err:
        raise CheckFailedError(f"{metrics.service}: {err}") from None


def _choose(configured: str | None, detected: str | None, all_names: Sequence[str], what: str) -> str:
    if configured:
        if configured not in all_names:
            raise CheckFailedError(f"the {what} metric {configured} is not exposed")
        return configured
    if detected is None:
        raise CheckFailedError(
            f"no per-accelerator {what} metric found by auto-detection (set metrics.{what})"
        )
    return detected


def _per_device(samples: Sequence[m.Sample], name: str, labels: Sequence[str], what: str) -> list[m.Sample]:
    found = m.series(samples, name)
    per = m.per_accelerator(found, labels)
    if not per:
        detail = (
            f"{len(found)} series, none with an identity label ({', '.join(labels)})"
            if found
            else "no series"
        )
        raise CheckFailedError(f"{what} metric {name}: {detail}")
    return per


def _endpoint(metrics: Metrics) -> str:
    return f"{metrics.namespace}/{metrics.service}:{metrics.port}{metrics.path}"


async def _core(ctx: ProbeContext, samples: list[m.Sample]) -> dict[str, str]:
    metrics = ctx.vendor.metrics
    labels = metrics.identity_labels
    all_names = m.names(samples)
    per_samples = m.per_accelerator(samples, labels)
    per_names = m.names(per_samples)
    reported = m.accelerator_count(per_samples, labels)
    chosen: dict[str, str] = {}
    for what, configured, candidates in (
        ("utilization", metrics.utilization, m.utilization_candidates),
        ("memory", metrics.memory, m.memory_candidates),
    ):
        async with ctx.check(f"PerAccelerator{what.capitalize()}Metric") as check:
            if not samples:  # an empty page proves nothing: the core metrics are what the requirement asks
                raise CheckFailedError(
                    f"the metrics endpoint {_endpoint(metrics)} answered without any sample: no per-accelerator "
                    f"{what} series"
                )
            detected = m.widest(per_samples, candidates(per_names), labels)
            name = _choose(configured, detected, all_names, what)
            per = _per_device(samples, name, labels, what)
            devices = m.accelerator_count(per, labels)
            ctx.note(f"{name}: {len(per)} series for {devices} accelerator(s), e.g. {per[0].show()}")
            chosen[what] = name
            how = "configured" if configured else "auto-detected"
            check.message = (
                f"{name} ({how}): series for {devices} of the {reported} accelerator(s) the endpoint reports"
            )
    return chosen


async def _optional(ctx: ProbeContext, samples: list[m.Sample]) -> None:
    async with ctx.check("OptionalMetrics") as check:
        metrics = ctx.vendor.metrics
        per_names = m.names(m.per_accelerator(samples, metrics.identity_labels))
        found, missing = [], []
        for kind, configured in (
            ("temperature", metrics.temperature),
            ("power", metrics.power),
            ("interconnect", metrics.interconnect),
        ):
            names = (
                [configured] if configured and configured in per_names else m.detect_optional(kind, per_names)
            )
            if names:
                found.append(f"{kind}: {', '.join(names[:3])}")
            else:
                missing.append(kind)
                ctx.note(f"WARNING: no per-accelerator {kind} metric (SHOULD, where the hardware reports it)")
        ctx.data["optional_metrics"] = found
        check.message = "; ".join(found) + (f"; not found: {', '.join(missing)}" if missing else "")


def device_ids(device: devlib.Device, identity_attribute: str | None) -> set[str]:
    """What a metrics exporter may call the device: its vendor id attribute and its PCI address."""
    keys = [k for k in (identity_attribute, PCI_BUS_ID_ATTRIBUTE) if k]
    return {normalize_id(str(v)) for k in keys if (v := device.attribute(k)) is not None}


def _gpu_values(samples: Sequence[m.Sample], name: str, labels: Sequence[str], ids: set[str]) -> list[float]:
    return [
        s.value
        for s in m.series(samples, name)
        if any(normalize_id(v) in ids for v in m.identity(s, labels).values())
    ]


def _series_ids(samples: Sequence[m.Sample], labels: Sequence[str]) -> set[str]:
    """The identity-label values of samples (an exporter that names devices only by index, like AMD's
    ``gpu_id``, is matched through the series that name the load's pod)."""
    return {normalize_id(v) for s in samples for v in m.identity(s, labels).values()}


async def _workload(ctx: ProbeContext, chosen: Mapping[str, str]) -> None:
    async with ctx.check("WorkloadDrivenUtilization") as check:
        load, metrics = ctx.vendor.load, ctx.vendor.metrics
        if not load.command:
            raise CheckSkippedError(
                f"vendor {ctx.vendor.name} sets no load.command (and load.image) that keeps an accelerator busy"
            )
        if "utilization" not in chosen:
            raise CheckSkippedError("no per-accelerator utilization metric to watch")
        util, labels = chosen["utilization"], metrics.identity_labels
        baseline = await scrape(ctx)
        grant = await one_device(ctx, "load")
        name = unique("load")
        script = podlib.script(podlib.device_script(ctx.vendor), then=load.command)
        body = podlib.pod(
            ctx.vendor, name, [grant.container("load", script, load.image)], templates=grant.templates
        )
        run = await ctx.run_pod(body)
        devices = await granted_devices(ctx, run)
        device = devices[0].name if devices else "the load's device"
        ids = {i for d in devices for i in device_ids(d, ctx.vendor.identity_attribute)}
        ids |= {normalize_id(i) for i in run.outputs["load"].identities}
        ctx.note(f"load pod {name} holds {device} ({', '.join(sorted(ids)) or 'ids unknown'})")
        ctx.step(f"watching {util} and pod attribution while {name} runs")
        deadline = ctx.clock.now() + min(60.0, ctx.vendor.pod_timeout)
        before: list[float] = []
        during: list[float] = []
        attributed: list[m.Sample] = []
        while ctx.clock.now() < deadline:
            samples = await scrape(ctx)
            attributed = m.attributed_to(
                samples, name, ctx.namespace, metrics.pod_label, metrics.namespace_label
            )
            mine = ids | _series_ids(m.series(attributed, util), labels)
            before = _gpu_values(baseline, util, labels, mine)
            during = _gpu_values(samples, util, labels, mine)
            if during and max(during) > max(before or [0.0]) and attributed:
                break
            await ctx.clock.sleep(SCRAPE_INTERVAL)
        await ctx.delete_pods([name])
        if not during:
            raise CheckFailedError(
                f"no {util} series identifies {device} (by {', '.join(sorted(ids)) or 'no id'}, or by naming pod "
                f"{name})"
            )
        if max(during) <= max(before or [0.0]):
            raise CheckFailedError(f"{util} of {device} stayed at {max(during):g} while the load ran")
        if not attributed:
            raise CheckFailedError(f"no series names the load's pod ({metrics.pod_label}={name})")
        ctx.note(f"{util} before: {before or 'no series'}; attributed to {name}: {attributed[0].show()}")
        check.message = (
            f"{util} of {device} rose from {max(before or [0.0]):g} to {max(during):g}; "
            f"{len(attributed)} series name pod {name}"
        )


async def run(ctx: ProbeContext) -> None:
    metrics = ctx.vendor.metrics
    samples: list[m.Sample] | None = None
    async with ctx.check("MetricsEndpointReachable") as check:
        if not metrics.configured:
            raise CheckSkippedError(
                "no metrics Service configured (metrics.namespace and metrics.service, or --metrics-namespace "
                "and --metrics-service) of the accelerator metrics solution installed on the platform; "
                "accelerator_metrics is a MUST, which the CNCF validator accepts only as Implemented"
            )
        ctx.step(f"scraping {metrics.namespace}/{metrics.service}:{metrics.port} through the service proxy")
        samples = await scrape(ctx)
        ctx.data["metric_names"] = m.names(samples)
        check.message = f"{len(samples)} samples of {len(m.names(samples))} metrics"
    if samples is None:  # not configured, or not reachable: the checks below are not run (so not passed)
        return
    chosen = await _core(ctx, samples)
    await _optional(ctx, samples)
    await _workload(ctx, chosen)


PROBE = Probe(
    name="accelerator_metrics",
    test="TestAcceleratorPerformanceMetrics",
    title="Per-accelerator metrics, attributed to pods",
    requirements=("accelerator_metrics",),
    run=run,
    required=("MetricsEndpointReachable", "PerAcceleratorUtilizationMetric", "PerAcceleratorMemoryMetric"),
    modes=("dra", "device-plugin"),
)

"""The probes for APIs the sandbox does not serve -- pod_autoscaling (HPA on a custom metric), gang_scheduling
(Kueue) and workload_sandboxing (RuntimeClasses) -- against an in-memory cluster whose controllers compute
what Kubernetes' do (tests/support/fakecluster.py), on a clock that moves only when a probe waits."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from driver.conformance import context as ctxlib
from driver.conformance.e2elog import E2ELog
from driver.conformance.model import CheckResult, Probe
from driver.conformance.probes import gang_scheduling, pod_autoscaling, workload_sandboxing
from driver.conformance.vendor import Autoscaling, Gang, Load, Sandboxing, Vendor, load_vendor
from tests.support.fakecluster import FakeCluster

METRIC = "hw_gpu_utilization_ratio"
CUSTOM_METRICS = {"custom.metrics.k8s.io/v1beta2": [f"pods/{METRIC}", "pods/hw_power_watts"]}
WORKLOAD_APIS = {"autoscaling/v2": ["horizontalpodautoscalers"], "apps/v1": ["deployments"]}
KUEUE = {"kueue.x-k8s.io/v1beta1": ["localqueues", "clusterqueues", "workloads"], "batch/v1": ["jobs"]}


class TickingClock(ctxlib.Clock):
    """Time moves when a probe sleeps, and the cluster's controllers run then."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += seconds
        self.cluster.tick()


async def run_probe(probe: Probe, cluster: FakeCluster, vendor: Vendor) -> dict[str, CheckResult]:
    ctx = ctxlib.ProbeContext(
        kube=cluster,  # type: ignore[arg-type]
        vendor=vendor,
        namespace="run-ns",
        run_id="t",
        probe=probe,
        log=E2ELog(None),
        clock=TickingClock(cluster),
    )
    await probe.run(ctx)
    await ctx.cleanup()
    return {c.name: c for c in ctx.checks}


def device_plugin_vendor(**changes: Any) -> Vendor:
    """A device-plugin vendor whose probe pods run for real with /bin/sh (no device nodes, no tool)."""
    base = load_vendor("nvidia")
    return dataclasses.replace(
        base,
        allocation="device-plugin",
        device_globs=("/nonexistent/dev/nvidia[0-9]*",),
        identity_command=None,
        load=Load(command="exec sleep 600"),
        pod_timeout=60.0,
        **changes,
    )


# -- pod_autoscaling ---------------------------------------------------------------------------------------


async def test_the_hpa_scales_the_accelerator_pods_on_their_metric() -> None:
    cluster = FakeCluster(groups={**CUSTOM_METRICS, **WORKLOAD_APIS}, metric=lambda pod: 0.9)
    checks = await run_probe(pod_autoscaling.PROBE, cluster, device_plugin_vendor())
    assert checks["CustomMetricsAPIServed"].message == f"custom.metrics.k8s.io/v1beta2 serves pods/{METRIC}"
    scaled = checks["ScalesOnAcceleratorMetric"]
    assert scaled.outcome == "passed", scaled.message
    assert scaled.message.startswith("the HPA scaled Deployment autoscaled-")
    assert "to 2 replicas on hw_gpu_utilization_ratio (0.9 over target 0.5)" in scaled.message
    assert not [k for k in cluster.objects if k[0] in ("deployments", "horizontalpodautoscalers", "pods")]


async def test_a_metric_that_stays_under_the_target_fails_with_the_hpas_state() -> None:
    cluster = FakeCluster(groups={**CUSTOM_METRICS, **WORKLOAD_APIS}, metric=lambda pod: 0.2)
    checks = await run_probe(pod_autoscaling.PROBE, cluster, device_plugin_vendor())
    failed = checks["ScalesOnAcceleratorMetric"]
    assert failed.outcome == "failed"
    assert "was not scaled up within 300s: HPA current 1, desired 1 replica(s); metric 200m" in failed.message
    assert "ScalingActive=True (ValidMetricFound" in failed.message


async def test_an_hpa_without_the_metric_says_what_it_reported() -> None:
    cluster = FakeCluster(groups={**CUSTOM_METRICS, **WORKLOAD_APIS}, metric=lambda pod: None)
    checks = await run_probe(pod_autoscaling.PROBE, cluster, device_plugin_vendor())
    assert (
        "ScalingActive=False (FailedGetPodsMetric: unable to get metric"
        in checks["ScalesOnAcceleratorMetric"].message
    )


@pytest.mark.parametrize(
    ("groups", "vendor", "outcome", "says"),
    [
        ({}, device_plugin_vendor(), "skipped", "serves no custom-metrics API (custom.metrics.k8s.io)"),
        (
            CUSTOM_METRICS,
            device_plugin_vendor(autoscaling=Autoscaling(metric="gpu_gfx_activity")),
            "failed",
            "custom.metrics.k8s.io/v1beta2 serves no gpu_gfx_activity",
        ),
        (
            CUSTOM_METRICS,
            device_plugin_vendor(),
            "skipped",
            "serves no autoscaling/v2 HorizontalPodAutoscaler",
        ),
    ],
)
async def test_without_the_apis_the_probe_says_which_one_is_missing(
    groups: dict[str, list[str]], vendor: Vendor, outcome: str, says: str
) -> None:
    checks = await run_probe(pod_autoscaling.PROBE, FakeCluster(groups=groups), vendor)
    assert checks["CustomMetricsAPIServed"].outcome == outcome
    assert says in checks["CustomMetricsAPIServed"].message
    assert checks["ScalesOnAcceleratorMetric"].outcome == "skipped"


def test_the_hpa_targets_the_metric_as_an_average_per_pod() -> None:
    hpa = pod_autoscaling.autoscaler("x", METRIC, "500m", 3)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {"metric": {"name": METRIC}, "target": {"type": "AverageValue", "averageValue": "500m"}},
        }
    ]
    assert pod_autoscaling.choose_metric(["pods/hw_power_watts", f"pods/{METRIC}", "nodes/x"], None) == METRIC


# -- gang_scheduling ----------------------------------------------------------------------------------------


def kueue_cluster(quota: str = "1") -> FakeCluster:
    cluster = FakeCluster(groups=KUEUE)
    cluster.objects[("localqueues", "gang-ns", "e2e-lq")] = {
        "metadata": {"name": "e2e-lq", "namespace": "gang-ns", "uid": "lq"},
        "spec": {"clusterQueue": "e2e-cq"},
    }
    cluster.objects[("clusterqueues", "", "e2e-cq")] = {
        "metadata": {"name": "e2e-cq", "uid": "cq"},
        "spec": {"resourceGroups": [{"coveredResources": ["cpu"], "flavors": [{"name": "f", "resources": [{"name": "cpu", "nominalQuota": quota}]}]}]},
    }  # fmt: skip
    return cluster


GANG = Gang(
    namespace="gang-ns", job_labels=("kueue.x-k8s.io/queue-name=e2e-lq",), pods=2, negative_window=30.0
)


async def test_kueue_admits_the_gang_whole_and_holds_back_one_that_does_not_fit() -> None:
    cluster = kueue_cluster()
    checks = await run_probe(gang_scheduling.PROBE, cluster, device_plugin_vendor(gang=GANG))
    assert {n: c.outcome for n, c in checks.items()} == {
        "GangSchedulerServed": "passed",
        "GangAdmittedAndCompleted": "passed",
        "PartialGangRunsNothing": "passed",
    }, checks
    assert "and all 2 pods completed" in checks["GangAdmittedAndCompleted"].message
    assert "(2 pods x 1000m CPU, more than ClusterQueue e2e-cq's 1 CPU) ran no pod for 30s" in (
        checks["PartialGangRunsNothing"].message
    )
    assert not [k for k in cluster.objects if k[0] in ("jobs", "pods")]


async def test_a_scheduler_that_starts_part_of_a_gang_fails() -> None:
    cluster = kueue_cluster()
    original = cluster._kueue

    def partial() -> None:  # admits whatever fits, pod by pod: no gang
        for (plural, _, _), job in list(cluster.objects.items()):
            if plural == "jobs" and job["spec"].get("suspend") and "too-big" in job["metadata"]["name"]:
                job["spec"]["suspend"] = False
                cluster._new_pod(job, "Job", job["spec"]["template"], 0)
        original()

    cluster._kueue = partial  # type: ignore[method-assign]
    checks = await run_probe(gang_scheduling.PROBE, cluster, device_plugin_vendor(gang=GANG))
    failed = checks["PartialGangRunsNothing"]
    assert failed.outcome == "failed"
    assert "exceeds ClusterQueue e2e-cq's 1 CPU, yet pods started ({'Running': 1})" in failed.message


@pytest.mark.parametrize(
    ("cluster", "gang", "says"),
    [
        (FakeCluster(), GANG, "no gang scheduler found: the cluster serves no Kueue API (kueue.x-k8s.io)"),
        (
            kueue_cluster(),
            Gang(),
            "gangScheduling.namespace and jobLabels are not set (a namespace with a LocalQueue",
        ),
    ],
)
async def test_without_kueue_or_its_queue_the_checks_are_skipped_saying_why(
    cluster: FakeCluster, gang: Gang, says: str
) -> None:
    checks = await run_probe(gang_scheduling.PROBE, cluster, device_plugin_vendor(gang=gang))
    assert {c.outcome for c in checks.values()} == {"skipped"}
    assert says in checks["GangSchedulerServed"].message
    if "LocalQueues" in checks["GangSchedulerServed"].message:
        assert "LocalQueues: gang-ns/e2e-lq" in checks["GangSchedulerServed"].message


def test_the_oversized_gang_fits_all_but_one_pod() -> None:
    for quota, pods in ((1.0, 2), (10.0, 4), (0.5, 3)):
        per_pod = float(gang_scheduling.oversized_cpu(quota, pods).removesuffix("m")) / 1000
        assert per_pod * (pods - 1) <= quota < per_pod * pods


# -- workload_sandboxing ------------------------------------------------------------------------------------


def runtime_classes(cluster: FakeCluster, *handlers: str) -> FakeCluster:
    cluster.groups["node.k8s.io/v1"] = ["runtimeclasses"]
    for handler in handlers:
        cluster.objects[("runtimeclasses", "", handler)] = {
            "metadata": {"name": handler, "uid": handler},
            "handler": handler,
        }
    return cluster


async def test_a_sandboxed_runtime_class_runs_pods_on_a_kernel_of_their_own() -> None:
    cluster = runtime_classes(FakeCluster(sandbox_kernel="4.4.0"), "runc", "gvisor-runsc")
    cluster.objects[("runtimeclasses", "", "gvisor-runsc")]["handler"] = "runsc"
    checks = await run_probe(workload_sandboxing.PROBE, cluster, device_plugin_vendor())
    assert (
        checks["SandboxRuntimeClassOffered"].message
        == "sandboxed RuntimeClass(es): gvisor-runsc (handler runsc)"
    )
    kernel = checks["SandboxedPodRunsOnItsOwnKernel"]
    assert kernel.outcome == "passed" and kernel.message.startswith(
        "a pod with RuntimeClass gvisor-runsc runs kernel 4.4.0"
    )


async def test_a_runtime_class_that_shares_the_node_kernel_fails() -> None:
    import platform

    cluster = runtime_classes(FakeCluster(sandbox_kernel=platform.release()), "kata")
    checks = await run_probe(workload_sandboxing.PROBE, cluster, device_plugin_vendor())
    failed = checks["SandboxedPodRunsOnItsOwnKernel"]
    assert failed.outcome == "failed" and "runs on node node-a's own kernel" in failed.message


@pytest.mark.parametrize(
    ("cluster", "vendor", "outcome", "says"),
    [
        (FakeCluster(), device_plugin_vendor(), "skipped", "serves no node.k8s.io/v1 RuntimeClass"),
        (
            runtime_classes(FakeCluster(), "runc", "crun"),
            device_plugin_vendor(),
            "skipped",
            "offers no sandboxed RuntimeClass (no handler runsc or kata*; RuntimeClasses: runc (runc), crun (crun))",
        ),
        (
            runtime_classes(FakeCluster(), "runc"),
            device_plugin_vendor(sandboxing=Sandboxing(("secure",))),
            "failed",
            "RuntimeClass secure does not exist",
        ),
    ],
)
async def test_without_a_sandboxed_runtime_class_the_probe_says_so(
    cluster: FakeCluster, vendor: Vendor, outcome: str, says: str
) -> None:
    checks = await run_probe(workload_sandboxing.PROBE, cluster, vendor)
    assert checks["SandboxRuntimeClassOffered"].outcome == outcome
    assert says in checks["SandboxRuntimeClassOffered"].message
    assert checks["SandboxedPodRunsOnItsOwnKernel"].outcome == "skipped"

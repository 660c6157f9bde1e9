"""The accelerator-metrics probe against a metrics Service whose page the test controls.

The sim API server proxies ``services/<name>:<port>/proxy/metrics`` to a real HTTP server of this test, as a
cluster's API server proxies to an exporter; the suite runs as ``accel-dra conformance run --run`` would and
writes its outputs, which the tests read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from driver.conformance.checklist import load_checklist
from driver.conformance.report import write_outputs
from driver.conformance.runner import RunOptions, run_suite
from driver.conformance.vendor import Metrics, Vendor, load_vendor
from driver.kube.client import NAMESPACES, SERVICES, KubeClient
from driver.sim.apiserver import SimApiServer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "conformance"
NAMESPACE, SERVICE, PORT = "monitoring", "gpu-metrics", 9400
ENDPOINT = f"{NAMESPACE}/{SERVICE}:{PORT}/metrics"


class MetricsPage:
    """An HTTP server answering ``/metrics`` with whatever ``body`` currently is."""

    def __init__(self) -> None:
        self.body = ""
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.body, content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def page(apiserver: SimApiServer, kube: KubeClient) -> AsyncIterator[MetricsPage]:
    server = MetricsPage()
    await server.start()
    await kube.create(NAMESPACES, {"metadata": {"name": NAMESPACE}})
    await kube.create(
        SERVICES,
        {"metadata": {"name": SERVICE, "namespace": NAMESPACE}, "spec": {"ports": [{"port": PORT}]}},
        NAMESPACE,
    )
    apiserver.register_service_backend(NAMESPACE, SERVICE, server.url, PORT)
    yield server
    await server.stop()


def vendor(**metrics: Any) -> Vendor:
    base = load_vendor("accel-dra")
    settings = {"namespace": NAMESPACE, "service": SERVICE, "port": PORT, **metrics}
    return dataclasses.replace(base, metrics=dataclasses.replace(base.metrics, **settings))


async def run_metrics_probe(kube: KubeClient, out: Path, chosen: Vendor) -> dict[str, Any]:
    options = RunOptions(
        checklist=load_checklist(str(FIXTURES / "checklist-1.35.yaml")),
        vendor=chosen,
        out_dir=out,
        run_filter="^accelerator_metrics$",
        keep_namespace=True,
    )
    suite = await run_suite(kube, options)
    write_outputs(suite, out, {})
    data: dict[str, Any] = json.loads((out / "results" / "summary.json").read_text())
    return data


def checks(data: dict[str, Any]) -> dict[str, tuple[str, str]]:
    (probe,) = data["probes"]
    return {c["name"]: (c["outcome"], c["message"]) for c in probe["checks"]}


def status(data: dict[str, Any], requirement: str) -> str:
    (found,) = [r for r in data["requirements"] if r["id"] == requirement]
    return str(found["status"])


@pytest.mark.parametrize(
    "body", ["", "# HELP gpu_util x\n# TYPE gpu_util gauge\n"], ids=["empty", "only-help"]
)
async def test_a_page_without_samples_does_not_meet_accelerator_metrics(
    page: MetricsPage, kube: KubeClient, tmp_path: Path, body: str
) -> None:
    page.body = body
    data = await run_metrics_probe(kube, tmp_path, vendor())
    found = checks(data)
    assert found["MetricsEndpointReachable"][0] == "passed"  # it answers; it just has nothing in it
    for check, what in (
        ("PerAcceleratorUtilizationMetric", "utilization"),
        ("PerAcceleratorMemoryMetric", "memory"),
    ):
        outcome, message = found[check]
        assert outcome == "failed"
        assert ENDPOINT in message and f"no per-accelerator {what} series" in message
    assert status(data, "accelerator_metrics") != "Implemented"
    assert any(f.startswith("accelerator_metrics (") for f in data["summary"]["mustFailures"])


def gpu_line(name: str, uuid: str, value: float, **extra: str) -> str:
    labels = ",".join(f'{k}="{v}"' for k, v in {"uuid": uuid, **extra}.items())
    return f"{name}{{{labels}}} {value}"


async def test_auto_detection_takes_the_metric_that_covers_every_accelerator(
    page: MetricsPage, kube: KubeClient, tmp_path: Path
) -> None:
    """A per-container series names only the allocated GPU; the per-accelerator one names all eight."""
    uuids = [f"GPU-{i}" for i in range(8)]
    page.body = "\n".join(
        [
            gpu_line("accel_dra_container_gpu_utilization_ratio", uuids[0], 0.5, pod="train", namespace="ml"),
            gpu_line(
                "accel_dra_container_gpu_memory_used_bytes", uuids[0], 1024, pod="train", namespace="ml"
            ),
            *(gpu_line("hw_gpu_utilization_ratio", u, 0.1) for u in uuids),
            *(gpu_line("hw_gpu_memory_used_bytes", u, 2048) for u in uuids),
        ]
    )
    data = await run_metrics_probe(kube, tmp_path, vendor(utilization=None, memory=None))
    found = checks(data)
    assert found["PerAcceleratorUtilizationMetric"] == (
        "passed",
        "hw_gpu_utilization_ratio (auto-detected): series for 8 of the 8 accelerator(s) the endpoint reports",
    )
    assert found["PerAcceleratorMemoryMetric"][1].startswith(
        "hw_gpu_memory_used_bytes (auto-detected): series for 8 "
    )


async def test_without_a_metrics_service_the_must_is_reported_unverified(
    kube: KubeClient, apiserver: SimApiServer, tmp_path: Path
) -> None:
    unconfigured = dataclasses.replace(load_vendor("accel-dra"), metrics=Metrics())
    data = await run_metrics_probe(kube, tmp_path, unconfigured)
    outcome, message = checks(data)["MetricsEndpointReachable"]
    assert outcome == "skipped"
    assert "notApplicable" not in message and "only as Implemented" in message
    (failure,) = [f for f in data["summary"]["mustFailures"] if f.startswith("accelerator_metrics")]
    assert failure.startswith(
        "accelerator_metrics (left blank: left for the platform: ran TestAcceleratorPerformanceMetrics"
    )
    assert (
        "could not verify it (TestAcceleratorPerformanceMetrics skipped: MetricsEndpointReachable:" in failure
    )

"""The kubelet plugin's operation metrics: the callbacks, the spec, promtool, and serving over HTTP."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterable

import aiohttp
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from driver.exporter import names as n
from driver.plugin.metrics import MAX_ERROR_KINDS, PluginMetrics

parse_openmetrics: Callable[[str], Iterable[Metric]] = openmetrics_parser.text_string_to_metric_families


def values(metrics: PluginMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics.render("")[0].decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in parse_text(text)
        for s in f.samples
        if s.name == name
    }


def test_known_series_exist_before_the_first_call() -> None:
    metrics = PluginMetrics("gpu.accel-dra.dev")
    requests = values(metrics, "accel_dra_plugin_requests_total")
    assert requests == {
        (("operation", op), ("result", result)): 0.0
        for op in ("prepare", "unprepare")
        for result in ("success", "error")
    }
    assert values(metrics, "accel_dra_plugin_info") == {
        (("dra_driver", "gpu.accel-dra.dev"), ("version", metrics_version())): 1.0
    }
    assert values(metrics, "accel_dra_plugin_prepared_devices") == {(): 0.0}


def metrics_version() -> str:
    from driver import __version__

    return __version__


def test_callbacks_update_the_series() -> None:
    metrics = PluginMetrics()
    metrics.observe("prepare", "success", 0.004)
    metrics.observe("prepare", "success", 0.2)
    metrics.observe("unprepare", "error", 0.001)
    metrics.set_prepared_devices(3)
    for verb in ("create", "create", "update", "delete"):
        metrics.slice_write(verb)
    metrics.api_error("409")
    metrics.api_error("ClientConnectorError")
    requests = values(metrics, "accel_dra_plugin_requests_total")
    assert requests[(("operation", "prepare"), ("result", "success"))] == 2
    assert requests[(("operation", "unprepare"), ("result", "error"))] == 1
    assert (
        values(metrics, "accel_dra_plugin_request_duration_seconds_count")[(("operation", "prepare"),)] == 2
    )
    assert values(metrics, "accel_dra_plugin_request_duration_seconds_sum")[
        (("operation", "prepare"),)
    ] == pytest.approx(0.204)
    buckets = values(metrics, "accel_dra_plugin_request_duration_seconds_bucket")
    assert buckets[(("le", "0.005"), ("operation", "prepare"))] == 1
    assert buckets[(("le", "0.25"), ("operation", "prepare"))] == 2
    assert values(metrics, "accel_dra_plugin_prepared_devices") == {(): 3.0}
    assert values(metrics, "accel_dra_plugin_slice_writes_total") == {
        (("verb", "create"),): 2,
        (("verb", "update"),): 1,
        (("verb", "delete"),): 1,
    }
    assert values(metrics, "accel_dra_plugin_api_errors_total") == {
        (("kind", "409"),): 1,
        (("kind", "ClientConnectorError"),): 1,
    }


def test_in_flight_counts_open_calls() -> None:
    metrics = PluginMetrics()
    key = (("operation", "prepare"),)
    with metrics.in_flight("prepare"):
        with metrics.in_flight("prepare"):
            assert values(metrics, "accel_dra_plugin_requests_in_flight")[key] == 2
        assert values(metrics, "accel_dra_plugin_requests_in_flight")[key] == 1
    with pytest.raises(RuntimeError), metrics.in_flight("prepare"):
        raise RuntimeError("prepare failed")
    assert values(metrics, "accel_dra_plugin_requests_in_flight")[key] == 0


def test_label_values_stay_low_cardinality() -> None:
    metrics = PluginMetrics()
    metrics.observe("NodePrepareResources", "timeout", 1.0)
    metrics.slice_write("patch")
    for index in range(MAX_ERROR_KINDS + 10):
        metrics.api_error(f"kind-{index}")
    assert (
        values(metrics, "accel_dra_plugin_requests_total")[(("operation", "other"), ("result", "other"))] == 1
    )
    assert values(metrics, "accel_dra_plugin_slice_writes_total")[(("verb", "other"),)] == 1
    kinds = values(metrics, "accel_dra_plugin_api_errors_total")
    assert len(kinds) == MAX_ERROR_KINDS + 1
    assert kinds[(("kind", "other"),)] == 10


def test_output_matches_the_spec() -> None:
    metrics = PluginMetrics("gpu.accel-dra.dev")
    metrics.observe("prepare", "success", 0.01)
    metrics.api_error("500")
    specs = {spec.family: spec for spec in n.PLUGIN_METRICS}
    seen = set()
    for family in parse_openmetrics(
        metrics.render("application/openmetrics-text; version=1.0.0")[0].decode()
    ):
        spec = specs[family.name]
        seen.add(family.name)
        assert (family.type, family.unit, family.documentation) == (spec.type, spec.unit, spec.help)
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(spec.labels), sample
            for label, allowed in spec.values.items():
                assert sample.labels[label] in allowed
    assert seen == set(specs)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_promtool_check_metrics_is_clean() -> None:
    metrics = PluginMetrics("gpu.accel-dra.dev")
    metrics.observe("prepare", "success", 0.01)
    metrics.slice_write("create")
    metrics.api_error("409")
    text = metrics.render("")[0].decode()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


async def test_served_on_its_own_port() -> None:
    first, second = PluginMetrics("a.example.com"), PluginMetrics("b.example.com")
    await first.start("127.0.0.1:0")
    await second.start("127.0.0.1:0")
    try:
        first.observe("prepare", "success", 0.01)
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            base = f"http://127.0.0.1:{first.port}"
            async with http.get(f"{base}/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                body = await response.text()
            async with http.get(
                f"{base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            ) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await response.text()).endswith("# EOF\n")
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"http://127.0.0.1:{second.port}/metrics") as response:
                other = await response.text()
    finally:
        await first.stop()
        await second.stop()
    assert 'accel_dra_plugin_requests_total{operation="prepare",result="success"} 1.0' in body
    assert (
        'accel_dra_plugin_requests_total{operation="prepare",result="success"} 0.0' in other
    )  # own registry
    assert 'dra_driver="b.example.com"' in other

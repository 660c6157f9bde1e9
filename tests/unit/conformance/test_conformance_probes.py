"""The probes' pure parts: container scripts (run for real with /bin/sh), metric detection, pools, verdicts."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from driver.conformance import devices as devlib
from driver.conformance import metrics as m
from driver.conformance import pods as podlib
from driver.conformance.checklist import load_checklist
from driver.conformance.evidence import decide, evidence, fills, must_failures
from driver.conformance.model import CheckResult, Outcome, ProbeResult, summarize
from driver.conformance.probes import PROBES
from driver.conformance.probes.accelerator_metrics import normalize_id
from driver.conformance.probes.attribute_selection import connected_groups, memory_selector
from driver.conformance.probes.driver_runtime import versions_match
from driver.conformance.runner import select
from driver.conformance.vendor import Versions, load_vendor
from tests.support import paths

FIXTURES = paths.FIXTURES / "conformance"
SH = shutil.which("sh") or "/bin/sh"


def run_sh(script: str) -> podlib.Output:
    result = subprocess.run([SH, "-c", script], capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    return podlib.parse_output(result.stdout)


def test_the_device_script_counts_nodes_and_reports_ids(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia3", "nvidiactl"):
        (tmp_path / name).touch()
    vendor = dataclasses.replace(
        load_vendor("accel-dra"),
        device_globs=(f"{tmp_path}/nvidia[0-9]*",),
        identity_command="printf 'GPU-a\\nGPU-b\\n'",
    )
    out = run_sh(podlib.script(podlib.device_script(vendor), keep_alive=False))
    assert out.done and out.count == 2
    assert out.devices == [f"{tmp_path}/nvidia0", f"{tmp_path}/nvidia3"]
    assert out.identities == ["GPU-a", "GPU-b"]


def test_no_devices_means_no_identity_query(tmp_path: Path) -> None:
    vendor = dataclasses.replace(
        load_vendor("accel-dra"),
        device_globs=(f"{tmp_path}/nvidia[0-9]*",),
        identity_command="echo should-not-run",
    )
    out = run_sh(podlib.script(podlib.device_script(vendor), keep_alive=False))
    assert (out.count, out.devices, out.identities) == (0, [], [])


def test_a_failing_vendor_tool_is_reported_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "nvidia0").touch()
    vendor = dataclasses.replace(
        load_vendor("accel-dra"),
        device_globs=(f"{tmp_path}/nvidia[0-9]*",),
        identity_command="echo 'No devices were found'; exit 6",
        versions=Versions(driver_command="echo 580.65.06", runtime_command="echo broken >&2; exit 9"),
    )
    out = run_sh(podlib.script(podlib.device_script(vendor), podlib.version_script(vendor), keep_alive=False))
    assert out.identities == []
    assert out.results["IDENTITY_ERROR"] == "No devices were found"
    assert out.results["DRIVER_VERSION"] == "580.65.06"
    assert out.results["RUNTIME_VERSION_ERROR"] == "broken"
    assert "RUNTIME_VERSION" not in out.results


def test_the_keep_alive_tail_ends_promptly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [SH, "-c", podlib.script('echo "RESULT: X=1"')], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "RESULT: X=1"
    assert proc.stdout.readline().strip() == podlib.DONE
    proc.terminate()
    assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("published", "observed", "same"),
    [
        ("580.65.6", "580.65.06", True),
        ("12.9.0", "12.9", True),
        ("12.9", "12.9.1", False),
        ("535.288.1", "580.65.06", False),
        ("580.65.6", "580.65.6-1ubuntu1", True),
        ("N/A", "N/A", True),
    ],
)
def test_versions_compare_by_their_numbers(published: str, observed: str, same: bool) -> None:
    assert versions_match(published, observed) is same


DCGM = """# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_MEM_COPY_UTIL{gpu="0",UUID="GPU-a",pci_bus_id="00000000:18:00.0"} 3
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",pci_bus_id="00000000:18:00.0",pod="",namespace=""} 87
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",pci_bus_id="00000000:2A:00.0",pod="train",namespace="ml"} 12
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-a"} 40000
DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 51
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a"} 300.5
DCGM_FI_PROF_NVLINK_TX_BYTES{gpu="0",UUID="GPU-a"} 123
node_load1 0.5
dcgm_nan_metric{gpu="0"} NaN
"""


def test_dcgm_style_metrics_are_recognised() -> None:
    samples = m.parse(DCGM)
    labels = load_vendor("nvidia").metrics.identity_labels
    per = m.per_accelerator(samples, labels)
    names = m.names(per)
    assert "node_load1" not in names and "dcgm_nan_metric" not in names
    assert m.detect_utilization(names) == "DCGM_FI_DEV_GPU_UTIL"
    assert m.detect_memory(names) == "DCGM_FI_DEV_FB_USED"
    assert m.detect_optional("temperature", names) == ["DCGM_FI_DEV_GPU_TEMP"]
    assert m.detect_optional("power", names) == ["DCGM_FI_DEV_POWER_USAGE"]
    assert m.detect_optional("interconnect", names) == ["DCGM_FI_PROF_NVLINK_TX_BYTES"]
    (attributed,) = m.attributed_to(samples, "train", "ml", "pod", "namespace")
    assert attributed.labels["UUID"] == "GPU-b"
    first = m.series(samples, "DCGM_FI_DEV_GPU_UTIL")[0]
    assert "pod" not in first.labels  # empty label values are dropped, as upstream's parser does


def test_the_compute_utilization_wins_over_memory_utilization() -> None:
    names = ["hw_gpu_memory_utilization_ratio", "hw_gpu_utilization_ratio"]
    assert m.detect_utilization(names) == "hw_gpu_utilization_ratio"
    assert m.detect_memory(["hw_gpu_memory_usage_bytes", "accel_dra_gpu_memory_used_bytes"]) == (
        "accel_dra_gpu_memory_used_bytes"
    )


def test_malformed_exposition_is_an_error() -> None:
    with pytest.raises(m.MetricsFormatError):
        m.parse('metric{label="x" 1\n')


def test_device_ids_compare_across_notations() -> None:
    assert normalize_id("00000000:2A:00.0") == normalize_id("0000:2a:00.0")
    assert normalize_id("GPU-ABC") == normalize_id("gpu-abc")


def _slice(name: str, pool: str, generation: int, count: int, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "driver": "gpu.example.com",
            "pool": {"name": pool, "generation": generation, "resourceSliceCount": count},
            **spec,
        },
    }


def _node(name: str, ready: bool = True, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_pools_count_only_their_newest_generation() -> None:
    device = {
        "name": "gpu-0",
        "attributes": {"uuid": {"string": "GPU-0"}},
        "capacity": {"memory": {"value": "80Gi"}},
    }
    pools = devlib.pools(
        [
            _slice("a-old", "node-a", 1, 1, nodeName="node-a", devices=[device]),
            _slice("a-new-0", "node-a", 2, 2, nodeName="node-a", devices=[device]),
            _slice("b-0", "node-b", 1, 1, nodeName="node-b", devices=[device]),
        ]
    )
    described = [p.describe() for p in pools]
    assert described == [
        "pool node-a of gpu.example.com (generation 2): 1 of 2 slice(s) published",
        "pool node-b of gpu.example.com (generation 1): 1 of 1 slice(s) published",
    ]
    (usable,) = devlib.devices(pools)
    assert (usable.node, usable.attribute("uuid"), usable.attribute("gpu.example.com/uuid")) == (
        "node-b",
        "GPU-0",
        "GPU-0",
    )
    assert usable.capacity_bytes("memory") == 80 * 2**30


def test_slices_are_reachable_from_ready_nodes_only() -> None:
    nodes = devlib.ready_nodes([_node("a", zone="x"), _node("b", zone="y"), _node("c", ready=False)])
    selector = {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["y"]}]}]
    }
    assert devlib.reachable_nodes(_slice("s", "p", 1, 1, nodeName="c"), nodes) == []
    assert devlib.reachable_nodes(_slice("s", "p", 1, 1, nodeName="a"), nodes) == ["a"]
    assert devlib.reachable_nodes(_slice("s", "p", 1, 1, allNodes=True), nodes) == ["a", "b"]
    assert devlib.reachable_nodes(_slice("s", "p", 1, 1, nodeSelector=selector), nodes) == ["b"]


def test_interconnect_groups_need_two_devices_on_one_node() -> None:
    def dev(name: str, node: str, domain: str | None) -> devlib.Device:
        attrs = {"nvlinkDomain": domain} if domain else {}
        return devlib.Device("gpu.example.com", node, "s", name, node, attrs, {})

    devices = [dev("a0", "a", "d1"), dev("a1", "a", "d1"), dev("b0", "b", "d1"), dev("b1", "b", None)]
    assert connected_groups(devices, "nvlinkDomain") == {("a", "d1"): ["a0", "a1"]}
    assert memory_selector("gpu.example.com", "memory", 80 * 2**30) == (
        'device.capacity["gpu.example.com"].memory.compareTo(quantity("80Gi")) >= 0'
    )


def _result(probe: str, requirements: tuple[str, ...], *outcomes: Outcome) -> ProbeResult:
    checks = [CheckResult(f"C{i}", o, "why" if o != "passed" else "") for i, o in enumerate(outcomes)]
    outcome, message = summarize(checks)
    return ProbeResult(
        probe, f"Test{probe}", probe, requirements, outcome, message, checks, 1.0, 60.0, (3, 9)
    )


def test_requirement_status_follows_the_checks() -> None:
    checklist = load_checklist(str(FIXTURES / "checklist-1.35.yaml"))
    vendor = dataclasses.replace(load_vendor("accel-dra"), not_applicable={"gpu_sharing": "no sharing mode"})
    results = [
        _result("a", ("dra_support",), "passed", "skipped"),
        _result("b", ("dra_support",), "passed"),
        _result("c", ("secure_accelerator_access",), "passed", "failed"),
        _result("d", ("accelerator_metrics",), "failed"),
        _result("e", ("driver_runtime_management",), "skipped"),
        _result("f", ("gpu_sharing",), "skipped"),
    ]
    decisions = decide(checklist, results, vendor, "run1")
    statuses = {d.id: (d.source, d.status) for d in decisions if d.source in ("verified", "declared")}
    assert statuses == {
        "dra_support": ("verified", "Implemented"),
        "secure_accelerator_access": ("verified", "Partially Implemented"),
        "accelerator_metrics": ("verified", "Not Implemented"),
        "gpu_sharing": ("declared", "N/A"),
    }  # driver_runtime_management: every check skipped, a SHOULD left blank with the reason
    filled = fills(decisions)
    assert filled["gpu_sharing"].notes == "no sharing mode"
    assert filled["driver_runtime_management"].status == ""
    assert "Teste skipped: C0: why" in filled["driver_runtime_management"].notes
    assert filled["dra_support"].evidence == evidence("dra_support", results[:2])
    assert evidence("dra_support", results[:2]) == (
        "file://results/dra_support/junit.xml#Testa",
        "file://results/dra_support/junit.xml#Testb",
        "file://results/dra_support/results.json#Testa",
        "file://results/dra_support/results.json#Testb",
        "file://results/dra_support/e2e.log",
        "file://report.html#a",
        "file://report.html#b",
    )
    # a failed probe's artifacts would get the whole submission rejected: only its report section is cited
    assert filled["accelerator_metrics"].evidence == ("file://report.html#d",)
    assert "not cited" in filled["accelerator_metrics"].notes
    assert "C1 skipped: why" in filled["dra_support"].notes
    assert [f.split(" (")[0] for f in must_failures(decisions)] == [
        "ai_inference",
        "gang_scheduling",
        "cluster_autoscaling",
        "pod_autoscaling",
        "accelerator_metrics",
        "ai_service_metrics",
        "secure_accelerator_access",
        "robust_controller",
    ]


def test_an_interrupted_probe_fills_nothing_but_the_open_note() -> None:
    checklist = load_checklist(str(FIXTURES / "checklist-1.36.yaml"))
    stopped = dataclasses.replace(
        _result("s", ("secure_accelerator_access",), "passed", "failed"), interrupted=True
    )
    (decision,) = [
        d
        for d in decide(checklist, [stopped], load_vendor("accel-dra"), "r")
        if d.id == "secure_accelerator_access"
    ]
    assert decision.source == "open" and decision.status == ""
    assert decision.fill is not None and decision.fill.notes.startswith("Left for the platform")


def test_run_selects_probes_like_go_test() -> None:
    assert [p.name for p in select(PROBES, "Secure|sharing")] == ["secure_accelerator_access", "gpu_sharing"]
    assert len(select(PROBES, None)) == len(PROBES) == len({p.test for p in PROBES})
    assert summarize([]) == ("failed", "the probe ran no checks")

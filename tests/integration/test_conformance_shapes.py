"""The suite against three vendors' shapes in the sandbox (this driver, AMD's, Intel's), in DRA and in
device-plugin mode, and its fail-fast on a claim nothing can allocate.

Each run uses the runner in-process against a sandbox of its own (the shape is fixed when a sandbox starts).
What each shape cannot show is asserted as skipped with its reason, so a probe that starts to pass or fail
for the wrong reason is noticed: Intel's driver publishes no version and the sandbox image has no Intel tool.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from driver.conformance.checklist import load_checklist
from driver.conformance.report import write_outputs
from driver.conformance.runner import RunOptions, run_suite
from driver.conformance.submission import check_submission
from driver.conformance.vendor import Vendor, load_vendor
from driver.sim.runtime import isolation_available
from driver.sim.sandbox import Sandbox, SandboxConfig
from tests.integration.test_conformance_sandbox import leftovers, summary

pytestmark = pytest.mark.skipif(
    not isolation_available(),
    reason="sandbox containers need a private mount namespace (root or user namespaces)",
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "conformance"
CHECKLIST = FIXTURES / "checklist-1.37.yaml"


async def run_shape(
    config: SandboxConfig, vendor: Vendor, out: Path, run_filter: str | None = None
) -> dict[str, Any]:
    async with Sandbox(config) as box:
        assert box.kube is not None
        options = RunOptions(
            checklist=load_checklist(str(CHECKLIST)),
            vendor=vendor,
            out_dir=out,
            sandbox=True,
            run_filter=run_filter,
        )
        suite = await run_suite(box.kube, options)
        write_outputs(suite, out, {})
        assert leftovers(box) == []
    return summary(out)


def outcomes(data: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(p["name"], c["name"]): (c["outcome"], c["message"]) for p in data["probes"] for c in p["checks"]}


def statuses(data: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["status"] for r in data["requirements"] if r["source"] == "verified"}


#: The sharing strategies neither stand-in driver offers (their presets name none).
NO_SHARING_STRATEGY = {
    ("gpu_sharing", "TimeSlicing"): "names no time-slicing configuration",
    ("gpu_sharing", "Partitions"): "names no DeviceClass of hardware partitions",
    ("gpu_sharing", "ConsumableCapacity"): "names no capacity to share",
}
#: shape -> (vendor preset, checks that skip with the words of their reason)
SHAPES: dict[str, tuple[str, dict[tuple[str, str], str]]] = {
    "amd": (
        "sandbox-amd",
        {
            (
                "attribute_selection",
                "MatchAttributeInterconnectPair",
            ): "names no interconnect-domain attribute",
            **NO_SHARING_STRATEGY,
        },
    ),
    "intel": (
        "sandbox-intel",
        {
            (
                "attribute_selection",
                "MatchAttributeInterconnectPair",
            ): "names no interconnect-domain attribute",
            ("secure_accelerator_access", "EnvVarBypassTest"): "names no device-selecting environment",
            (
                "driver_runtime_management",
                "VerifiableMechanismExposed",
            ): "names no version attribute or node label",
            ("driver_runtime_management", "DriverAndRuntimeCompatibility"): "sets no versions.driverCommand",
            ("gpu_sharing", "ConsumersUseTheSharedDevice"): "sets no health.command",
            **NO_SHARING_STRATEGY,
        },
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_the_suite_runs_against_another_vendors_driver_shape(shape: str, tmp_path: Path) -> None:
    preset, expected_skips = SHAPES[shape]
    config = SandboxConfig(
        shape=shape, profile="mi300x-4" if shape == "amd" else "flex170-2", log_level="warning"
    )
    data = await run_shape(config, load_vendor(preset), tmp_path)
    found = {k: v for k, v in outcomes(data).items() if k[0] != "attribute_profile"}  # advisory (see below)
    skipped = {
        k: m
        for k, (o, m) in found.items()
        if o == "skipped" and k[0] not in {"workload_sandboxing", "pod_autoscaling", "gang_scheduling"}
    }
    assert set(skipped) == set(expected_skips), skipped
    for key, words in expected_skips.items():
        assert words in skipped[key]
    assert {o for k, (o, _) in found.items() if o != "skipped"} == {"passed"}
    must = statuses(data)
    assert must["secure_accelerator_access"] == must["accelerator_metrics"] == "Implemented"
    assert must["gpu_sharing"] == "Partially Implemented"  # one claim is shared, but no strategy is shown
    assert (
        check_submission(tmp_path / "PRODUCT.yaml", load_checklist(str(CHECKLIST)), draft=True).errors == []
    )


async def test_amd_shape_devices_look_like_amds_driver(tmp_path: Path) -> None:
    config = SandboxConfig(shape="amd", profile="mi300x-4", log_level="warning")
    data = await run_shape(
        config, load_vendor("sandbox-amd"), tmp_path, run_filter="Secure|Runtime|AttributeProfile"
    )
    found = outcomes(data)
    positive = found[("secure_accelerator_access", "PositiveAccessTest")][1]
    assert (
        "sees exactly its device gpu-0-128 (0000:0c:00.0)" in positive
    )  # amd-smi's BDF = the pciBusID attribute
    versions = found[("driver_runtime_management", "DriverAndRuntimeCompatibility")][1]
    assert versions == "driverVersion 6.12.12 = amd-smi 6.12.12"
    (profile,) = [p for p in data["probes"] if p["name"] == "attribute_profile"]
    assert profile["advisory"] and profile["outcome"] == "failed"  # AMD's driver has no uuid: advisory only
    assert "uuid: required attribute is missing" in profile["message"]
    claimed = (tmp_path / "results" / "probes" / "secure_accelerator_access").glob("claimed-*.log")
    text = next(claimed).read_text()
    assert "DEVICE: /dev/dri/renderD128" in text and "DEVICE: /dev/kfd" in text


@pytest.mark.parametrize("shape", ["accel-dra", "amd"])
async def test_device_plugin_mode_checks_access_versions_and_metrics(shape: str, tmp_path: Path) -> None:
    preset = {"accel-dra": "sandbox", "amd": "sandbox-amd"}[shape]
    vendor = dataclasses.replace(load_vendor(preset), allocation="device-plugin")
    config = SandboxConfig(shape=shape, profile="dgx-h100" if shape == "accel-dra" else "mi300x-4",
                           device_plugin=True, log_level="warning")  # fmt: skip
    data = await run_shape(
        config, vendor, tmp_path, run_filter="DRASupport|Secure|Runtime|PerformanceMetrics"
    )
    found = outcomes(data)
    assert found[("dra_support", "NotApplicable")][0] == "skipped"  # DRA-only: said so, not failed
    assert "allocation mode device-plugin" in found[("dra_support", "NotApplicable")][1]
    for probe in ("secure_accelerator_access", "driver_runtime_management", "accelerator_metrics"):
        assert {o for (p, _), (o, _) in found.items() if p == probe} == {"passed"}, found
    resource = vendor.extended_resource
    assert (
        f"the container that requests {resource} on node sandbox-node sees exactly its device"
        in found[("secure_accelerator_access", "PositiveAccessTest")][1]
    )
    assert "node label" in found[("driver_runtime_management", "VerifiableMechanismExposed")][1]
    manifests = (tmp_path / "results" / "probes" / "secure_accelerator_access" / "manifests.yaml").read_text()
    assert f"{resource}: '1'" in manifests and "resourceClaims" not in manifests


async def test_a_claim_for_a_missing_device_class_fails_at_once_with_the_schedulers_words(
    tmp_path: Path,
) -> None:
    vendor = dataclasses.replace(
        load_vendor("sandbox"), device_class="gpu.missing.example", pod_timeout=3600.0
    )
    config = SandboxConfig(profile="pcie-l4x4", exporter=False, log_level="warning")
    data = await run_shape(config, vendor, tmp_path, run_filter="^TestDRASupport$")
    found = outcomes(data)
    assert found[("dra_support", "DeviceClassExists")] == (
        "failed",
        "DeviceClass gpu.missing.example does not exist",
    )
    outcome, message = found[("dra_support", "PodWithClaimTemplate")]
    assert outcome == "failed"
    assert "cannot be scheduled; the scheduler says:" in message and "gpu.missing.example" in message
    assert "did not print its results within" not in message  # not after the pod timeout (an hour here)

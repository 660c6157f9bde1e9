"""When the suite may call a requirement met: required checks, N/A MUSTs, and the checks' own verdicts
(health commands and the env-var bypass run for real with /bin/sh)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from driver.conformance import metrics as m
from driver.conformance import pods as podlib
from driver.conformance.checklist import load_checklist
from driver.conformance.evidence import decide, fills, must_failures
from driver.conformance.model import CheckFailedError, CheckResult, Outcome, ProbeResult, summarize
from driver.conformance.probes import PROBES
from driver.conformance.probes.gpu_sharing import health_verdict
from driver.conformance.probes.secure_access import env_bypass_verdict
from driver.conformance.vendor import Health, VendorError, load_vendor, vendor_from_mapping
from tests.support import paths

FIXTURES = paths.FIXTURES / "conformance"
SH = shutil.which("sh") or "/bin/sh"
CHECKLIST = load_checklist(str(FIXTURES / "checklist-1.35.yaml"))


def run_sh(script: str, env: dict[str, str] | None = None) -> podlib.Output:
    result = subprocess.run(
        [SH, "-c", script], capture_output=True, text=True, timeout=20, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    return podlib.parse_output(result.stdout)


def result(requirement: str, checks: dict[str, Outcome], required: tuple[str, ...]) -> ProbeResult:
    found = [CheckResult(n, o, "why" if o != "passed" else "") for n, o in checks.items()]
    outcome, message = summarize(found)
    return ProbeResult(
        "p", "TestP", "p", (requirement,), outcome, message, found, 1.0, 60.0, (1, 2), required=required
    )


# -- required checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ({"Exposed": "passed", "Compared": "passed"}, "Implemented"),
        ({"Exposed": "passed", "Compared": "skipped"}, "Partially Implemented"),
        ({"Exposed": "passed"}, "Partially Implemented"),  # the probe stopped before the required check
        ({"Exposed": "passed", "Compared": "passed", "Optional": "skipped"}, "Implemented"),
        ({"Exposed": "failed", "Compared": "skipped"}, "Not Implemented"),
    ],
)
def test_a_requirement_is_implemented_only_when_its_required_checks_ran_and_passed(
    checks: dict[str, Outcome], expected: str
) -> None:
    probe = result("driver_runtime_management", checks, ("Exposed", "Compared"))
    filled = fills(decide(CHECKLIST, [probe], load_vendor("accel-dra"), "r"))
    assert filled["driver_runtime_management"].status == expected
    if "Compared" not in checks:
        assert "not run: Compared" in filled["driver_runtime_management"].notes


def test_the_substantive_checks_of_each_probe_are_required() -> None:
    required = {p.name: set(p.required) for p in PROBES}
    assert "DriverAndRuntimeCompatibility" in required["driver_runtime_management"]
    assert {"PerAcceleratorUtilizationMetric", "PerAcceleratorMemoryMetric"} <= required[
        "accelerator_metrics"
    ]
    assert "ConsumersUseTheSharedDevice" in required["gpu_sharing"]
    assert "NegativeIsolationTest" in required["secure_accelerator_access"]


def test_a_must_declared_not_applicable_is_not_conformant() -> None:
    vendor = dataclasses.replace(
        load_vendor("accel-dra"),
        not_applicable={"accelerator_metrics": "no metrics", "gpu_sharing": "one GPU per VM"},
    )
    results = [
        result("accelerator_metrics", {"NotApplicable": "skipped"}, ()),
        result("gpu_sharing", {"NotApplicable": "skipped"}, ()),
    ]
    decisions = decide(CHECKLIST, results, vendor, "r")
    filled = fills(decisions)
    assert filled["accelerator_metrics"].status == filled["gpu_sharing"].status == "N/A"
    # the CNCF validator accepts only Implemented for a MUST; a SHOULD may be N/A
    assert [f for f in must_failures(decisions) if f.startswith("accelerator_metrics")] == [
        "accelerator_metrics (N/A, which the CNCF validator does not accept for a MUST: vendor: no metrics)"
    ]


def test_a_covered_must_whose_checks_were_all_skipped_is_not_met() -> None:
    skipped = result("secure_accelerator_access", {"PositiveAccessTest": "skipped"}, ("PositiveAccessTest",))
    decisions = decide(CHECKLIST, [skipped], load_vendor("accel-dra"), "r")
    (secure,) = [d for d in decisions if d.id == "secure_accelerator_access"]
    assert (secure.source, secure.status) == ("open", "")  # left for the platform, saying why ...
    assert (
        secure.fill is not None
        and "could not verify it (TestP skipped: PositiveAccessTest: why)" in secure.fill.notes
    )
    assert any(
        f.startswith("secure_accelerator_access (left blank") for f in must_failures(decisions)
    )  # ... not met


# -- metric auto-detection ---------------------------------------------------------------------------------


def test_the_per_accelerator_metric_beats_a_per_container_one() -> None:
    lines = ['accel_dra_container_gpu_utilization_ratio{uuid="GPU-0",pod="a"} 0.5']
    lines += [f'hw_gpu_utilization_ratio{{uuid="GPU-{i}"}} 0.1' for i in range(8)]
    samples = m.parse("\n".join(lines) + "\n")
    labels = load_vendor("accel-dra").metrics.identity_labels
    names = m.names(samples)
    assert m.detect_utilization(names) == "accel_dra_container_gpu_utilization_ratio"  # by name alone
    assert m.widest(samples, m.utilization_candidates(names), labels) == "hw_gpu_utilization_ratio"
    assert m.accelerator_count(samples, labels) == 8


# -- health commands (gpu_sharing) --------------------------------------------------------------------------


def test_the_health_script_reports_the_tool_or_its_error() -> None:
    vendor = load_vendor("accel-dra")
    good = dataclasses.replace(vendor, health=Health(command="echo 'GPU-a, 3 %, 10 MiB'; echo more"))
    bad = dataclasses.replace(vendor, health=Health(command="echo 'No devices were found'; exit 6"))
    assert run_sh(podlib.script(podlib.health_script(good), keep_alive=False)).results == {
        "HEALTH": "GPU-a, 3 %, 10 MiB"
    }
    out = run_sh(podlib.script(podlib.health_script(bad), keep_alive=False))
    assert out.results == {"HEALTH_ERROR": "exit 6: No devices were found"}
    assert podlib.health_script(dataclasses.replace(vendor, health=Health())) == ""


def test_every_consumer_must_pass_the_health_command() -> None:
    ok = podlib.parse_output("RESULT: HEALTH=GPU-a, 5 %\nRESULT: DONE\n")
    broken = podlib.parse_output("RESULT: HEALTH_ERROR=exit 6: No devices were found\nRESULT: DONE\n")
    silent = podlib.parse_output("RESULT: DONE\n")
    assert "all 2 consumers" in health_verdict({"pod a": ok, "pod b": ok}, "nvidia-smi")
    with pytest.raises(
        CheckFailedError, match="pod b: exit 6: No devices were found; pod c: printed no health"
    ):
        health_verdict({"pod a": ok, "pod b": broken, "pod c": silent}, "nvidia-smi")


# -- env-var bypass (secure_accelerator_access) ---------------------------------------------------------------


def test_the_env_bypass_probe_asks_the_tool_even_without_device_nodes(tmp_path: Path) -> None:
    """A runtime that honours the variable may hand out the tool's view without a node the glob matches."""
    vendor = dataclasses.replace(
        load_vendor("accel-dra"),
        device_globs=(f"{tmp_path}/nvidia[0-9]*",),
        identity_command='[ "$NVIDIA_VISIBLE_DEVICES" = all ] && echo GPU-leaked || { echo "No devices were found"; exit 6; }',
    )
    script = podlib.script(podlib.device_script(vendor, always_identify=True), keep_alive=False)
    env = {"PATH": "/usr/bin:/bin"}
    leaked = run_sh(script, env | dict(vendor.bypass_env))
    with pytest.raises(CheckFailedError, match="sets NVIDIA_VISIBLE_DEVICES=all sees 0 device"):
        env_bypass_verdict(leaked, "node-a", vendor.bypass_env)
    isolated = run_sh(script, env)
    assert env_bypass_verdict(isolated, "node-a", vendor.bypass_env) == (
        "a pod without a claim on node node-a that sets NVIDIA_VISIBLE_DEVICES=all sees no device "
        "(vendor tool: No devices were found)"
    )
    (tmp_path / "nvidia0").touch()
    with pytest.raises(CheckFailedError, match="sees 1 device"):
        env_bypass_verdict(run_sh(script, env), "node-a", vendor.bypass_env)


def test_vendor_files_set_the_health_command_and_bypass_env() -> None:
    nvidia = load_vendor("nvidia")
    assert nvidia.bypass_env == {"NVIDIA_VISIBLE_DEVICES": "all"} and nvidia.health.command
    custom = vendor_from_mapping(
        {
            "preset": "nvidia",
            "health": {"image": "cuda:12", "command": "/samples/deviceQuery"},
            "bypassEnv": {},
        },
        "amd.yaml",
    )
    assert custom.health == Health("cuda:12", "/samples/deviceQuery") and custom.bypass_env == {}
    with pytest.raises(VendorError, match="bypassEnv"):
        vendor_from_mapping({"preset": "nvidia", "bypassEnv": {"NOT-A-NAME": "x"}}, "bad.yaml")

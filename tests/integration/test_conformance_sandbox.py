"""The conformance suite against the sandbox: every probe passes on a healthy one, and each injected fault
makes exactly the probe that covers it fail, with a message that says what is wrong.

``accel-dra conformance run --sandbox`` runs once as a user (and CI) runs it; the fault runs use the runner
in-process, each with a sandbox of its own (the faults are fixed when a sandbox starts); the interrupt and
timeout runs share one healthy sandbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from driver.conformance.checklist import check_filled, load_checklist, parse_checklist
from driver.conformance.context import MANAGED_BY, MANAGED_BY_LABEL
from driver.conformance.report import write_outputs
from driver.conformance.runner import E2E_LOG, RunOptions, run_suite
from driver.conformance.vendor import Health, Vendor, Versions, load_vendor
from driver.kube.client import NAMESPACES, PODS, RESOURCE_CLAIM_TEMPLATES, RESOURCE_CLAIMS
from driver.sim.runtime import isolation_available
from driver.sim.sandbox import (
    FAULT_INCOMPLETE_POOL,
    FAULT_LEAKY_RUNTIME,
    FAULT_UNLABELLED_METRICS,
    FAULT_WRONG_DRIVER_VERSION,
    Sandbox,
    SandboxConfig,
)

module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = pytest.mark.skipif(
    not isolation_available(),
    reason="sandbox containers need a private mount namespace (root or user namespaces)",
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "conformance"
ALL_PROBES = {
    "dra_support",
    "attribute_selection",
    "secure_accelerator_access",
    "driver_runtime_management",
    "accelerator_metrics",
    "gpu_sharing",
    "attribute_profile",
}


def leftovers(box: Sandbox) -> list[str]:
    """Objects of any conformance run still in the sandbox's API server."""
    found = []
    for rt in (PODS, RESOURCE_CLAIMS, RESOURCE_CLAIM_TEMPLATES, NAMESPACES):
        for obj in box.apiserver.objects(rt):
            if (obj["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
                found.append(f"{rt.kind} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}")
    return found


# -- the command, as CI runs it ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.CompletedProcess[str], Path]]:
    out = tmp_path_factory.mktemp("conformance-out")
    result = subprocess.run(
        [
            sys.executable, "-m", "driver", "conformance", "run", "--sandbox",
            "--checklist", str(FIXTURES / "checklist-1.35.yaml"), "--out", str(out),
            "--metadata", "platformName=accel-dra sandbox", "--metadata", "vendorName=Example Vendor",
        ],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    yield result, out


def test_every_probe_passes_on_the_healthy_sandbox(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, out = cli_run
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((out / "results" / "results.json").read_text())
    assert {p["name"] for p in data["probes"]} == ALL_PROBES
    outcomes = {(p["name"], c["name"]): c["outcome"] for p in data["probes"] for c in p["checks"]}
    assert set(outcomes.values()) == {"passed"}, outcomes  # nothing skipped: the sandbox has it all
    assert not data["interrupted"] and data["summary"]["mustFailures"] == []
    assert "[1/7] TestDRASupport" in result.stderr  # progress
    assert "7 passed, 0 failed" in result.stdout


def test_the_filled_checklist_keeps_the_template_and_cites_real_files(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    template = load_checklist(str(FIXTURES / "checklist-1.35.yaml"))
    filled = parse_checklist((out / "PRODUCT.yaml").read_text(), "PRODUCT.yaml")
    covered = {
        "dra_support",
        "driver_runtime_management",
        "gpu_sharing",
        "accelerator_metrics",
        "secure_accelerator_access",
    }
    problems = check_filled(template, filled, out)
    uncovered_musts = {
        f"{r.id}: a MUST is not filled in, not Implemented"
        for r in template.requirements
        if r.level == "MUST" and r.id not in covered
    }
    placeholders = {f"metadata {k} is still a placeholder" for k in filled.placeholders()}
    assert set(problems) == uncovered_musts | placeholders  # ids, text, levels, statuses and files all fine
    for requirement in filled.requirements:
        if requirement.id in covered:
            assert requirement.status == "Implemented"
            assert "SANDBOX: a simulated cluster" in requirement.notes
            files = [e for e in requirement.evidence if e.startswith("file://")]
            assert files and all((out / e.removeprefix("file://").split("#")[0]).is_file() for e in files)
        else:
            assert requirement == template.requirement(requirement.id)
    assert filled.metadata["platformName"] == "accel-dra sandbox"


def test_evidence_anchors_point_at_each_probes_log_block(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    data = json.loads((out / "results" / "results.json").read_text())
    log = (out / E2E_LOG).read_text().splitlines()
    for probe in data["probes"]:
        first, last = probe["log"]["firstLine"], probe["log"]["lastLine"]
        assert log[first - 1] == f"=== RUN   {probe['test']}"
        assert log[last - 1].startswith(f"--- PASS: {probe['test']} (")
        assert f"file://{E2E_LOG}#L{first}-L{last}" in probe["evidence"]
    junit = ET.parse(out / "results" / "junit.xml").getroot()
    assert junit.get("failures") == "0"
    names = {case.get("name") for case in junit.iter("testcase")}
    assert {"TestSecureAcceleratorAccess", "TestSecureAcceleratorAccess/NegativeIsolationTest"} <= names


def test_the_report_shows_the_summary_evidence_and_devices(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    report = (out / "report.html").read_text()
    for probe in ALL_PROBES:
        assert f'id="{probe}"' in report
    assert report.count("<code>gpu-0000-") == 8  # one row per device of the dgx-h100 node
    assert "nvlinkDomain" in report and "81559Mi" in report
    assert "Unsatisfiable" in report and "cannot allocate" in report  # why the impossible claim stays pending


def test_sharing_consumers_use_the_device_and_env_vars_open_nothing(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    data = json.loads((out / "results" / "results.json").read_text())
    messages = {(p["name"], c["name"]): c["message"] for p in data["probes"] for c in p["checks"]}
    sharing = messages[("gpu_sharing", "ConsumersUseTheSharedDevice")]
    assert sharing.startswith("all 4 consumers of shared devices ran `nvidia-smi --query-gpu=uuid,")
    assert "GPU-" in sharing  # what the tool printed in a consumer: it reached the device
    bypass = messages[("secure_accelerator_access", "EnvVarBypassTest")]
    assert "that sets NVIDIA_VISIBLE_DEVICES=all sees no device" in bypass


# -- faults ---------------------------------------------------------------------------------------------


async def run_against(
    box: Sandbox,
    out: Path,
    checklist: str = "checklist-1.35.yaml",
    vendor: Vendor | None = None,
    **options: Any,
) -> dict[str, Any]:
    assert box.kube is not None
    run_options = RunOptions(
        checklist=load_checklist(str(FIXTURES / checklist)),
        vendor=vendor or load_vendor("sandbox"),
        out_dir=out,
        sandbox=True,
        **options,
    )
    suite = await run_suite(box.kube, run_options)
    write_outputs(suite, out, {}, (out / E2E_LOG).read_text().splitlines())
    data: dict[str, Any] = json.loads((out / "results" / "results.json").read_text())
    return data


#: fault -> (probe, the checks it must fail, what the first one's message must say)
FAULTS: dict[str, tuple[str, set[str], str]] = {
    FAULT_INCOMPLETE_POOL: ("dra_support", {"PoolsCompleteAndReachable"}, "1 of 2 slice(s) published"),
    FAULT_WRONG_DRIVER_VERSION: (
        "driver_runtime_management",
        {"DriverAndRuntimeCompatibility"},
        "publishes driverVersion 535.288.1, but nvidia-smi in a container that claimed it reports 580.65.06",
    ),
    FAULT_LEAKY_RUNTIME: (
        "secure_accelerator_access",
        {"NegativeIsolationTest", "EnvVarBypassTest", "MultiContainerIsolationTest"},
        "a pod without a claim on node sandbox-node sees 8 device(s)",
    ),
    FAULT_UNLABELLED_METRICS: (
        "accelerator_metrics",
        {"PerAcceleratorUtilizationMetric", "PerAcceleratorMemoryMetric"},
        "none with an identity label",
    ),
}
#: Faults that break unrelated probes share a sandbox: two sandboxes instead of four. Each run must fail
#: exactly the checks of its two faults, so neither fault can hide behind the other.
PAIRS = ((FAULT_INCOMPLETE_POOL, FAULT_WRONG_DRIVER_VERSION), (FAULT_LEAKY_RUNTIME, FAULT_UNLABELLED_METRICS))


def failed_checks(data: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p["name"], c["name"]) for p in data["probes"] for c in p["checks"] if c["outcome"] == "failed"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fault_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """fault -> (results.json, objects left behind) of the whole suite against a sandbox with that fault."""
    runs: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for pair in PAIRS:
        async with Sandbox(SandboxConfig(faults=frozenset(pair), log_level="warning")) as box:
            data = await run_against(box, tmp_path_factory.mktemp("-".join(pair)))
            runs |= dict.fromkeys(pair, (data, leftovers(box)))
    return runs


@pytest.mark.parametrize("fault", list(FAULTS))
@module_loop
async def test_a_fault_fails_the_probe_that_covers_it(
    fault_runs: dict[str, tuple[dict[str, Any], list[str]]], fault: str
) -> None:
    data, left = fault_runs[fault]
    probe, checks, message = FAULTS[fault]
    assert left == []
    (pair,) = [p for p in PAIRS if fault in p]
    expected = {(FAULTS[f][0], c) for f in pair for c in FAULTS[f][1]}
    assert failed_checks(data) == expected  # nothing else fails
    (result,) = [p for p in data["probes"] if p["name"] == probe]
    messages = {c["name"]: c["message"] for c in result["checks"] if c["name"] in checks}
    assert any(message in text for text in messages.values()), messages
    statuses = {r["id"]: r["status"] for r in data["requirements"] if r["covered"]}
    assert statuses[probe] != "Implemented"
    broken = {FAULTS[f][0] for f in pair}
    assert {s for r, s in statuses.items() if r not in broken} == {"Implemented"}


async def test_without_connected_devices_the_pair_check_says_why_it_is_skipped(tmp_path: Path) -> None:
    async with Sandbox(SandboxConfig(profile="pcie-l4x4", exporter=False, log_level="warning")) as box:
        data = await run_against(box, tmp_path, run_filter="AttributeSelection")
        assert leftovers(box) == []
    (probe,) = data["probes"]
    outcomes = {c["name"]: (c["outcome"], c["message"]) for c in probe["checks"]}
    assert outcomes["MatchAttributeInterconnectPair"] == (
        "skipped",
        "no node has two devices that share a nvlinkDomain value",
    )
    assert {o for n, (o, _) in outcomes.items() if n != "MatchAttributeInterconnectPair"} == {"passed"}
    assert outcomes["SelectByProductName"][1].endswith("(NVIDIA L4)")


def test_unknown_faults_are_refused() -> None:
    with pytest.raises(Exception, match="unknown sandbox fault"):
        Sandbox(SandboxConfig(faults=frozenset({"gremlins"})))


# -- one healthy sandbox: other checklist versions, timeouts, Ctrl-C --------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(log_level="warning")) as box:
        yield box


@module_loop
async def test_a_checklist_without_dra_support_gets_the_rest(sandbox: Sandbox, tmp_path: Path) -> None:
    data = await run_against(sandbox, tmp_path, "checklist-1.37.yaml", run_filter="Secure|DRASupport")
    assert [p["name"] for p in data["probes"]] == ["dra_support", "secure_accelerator_access"]
    covered = {r["id"]: r["status"] for r in data["requirements"] if r["covered"]}
    assert covered == {"secure_accelerator_access": "Implemented"}  # dra_support ran, but 1.37 has no such id
    filled = parse_checklist((tmp_path / "PRODUCT.yaml").read_text())
    assert [r.id for r in filled.requirements] == [
        r.id for r in load_checklist(str(FIXTURES / "checklist-1.37.yaml")).requirements
    ]
    assert leftovers(sandbox) == []


def statuses(data: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["status"] for r in data["requirements"] if r["covered"]}


def outcomes(data: dict[str, Any], probe: str) -> dict[str, tuple[str, str]]:
    (found,) = [p for p in data["probes"] if p["name"] == probe]
    return {c["name"]: (c["outcome"], c["message"]) for c in found["checks"]}


@module_loop
async def test_unverified_versions_do_not_make_the_requirement_implemented(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    base = load_vendor("sandbox")
    vendor = dataclasses.replace(base, versions=Versions(driver_attributes=base.versions.driver_attributes))
    data = await run_against(sandbox, tmp_path, vendor=vendor, run_filter="DriverRuntime")
    found = outcomes(data, "driver_runtime_management")
    assert found["VerifiableMechanismExposed"][0] == "passed"
    assert found["DriverAndRuntimeCompatibility"] == (
        "skipped",
        "vendor sandbox sets no versions.driverCommand to run in a container",
    )
    assert statuses(data) == {"driver_runtime_management": "Partially Implemented"}
    assert leftovers(sandbox) == []


@pytest.mark.parametrize(
    ("command", "outcome", "says"),
    [
        (None, "skipped", "sets no health.command"),
        ("nvidia-smi --query-gpu=bogus --format=csv", "failed", 'exit 2: Field "bogus" is not a valid field'),
    ],
)
@module_loop
async def test_sharing_is_implemented_only_when_every_consumer_uses_the_device(
    sandbox: Sandbox, tmp_path: Path, command: str | None, outcome: str, says: str
) -> None:
    vendor = dataclasses.replace(load_vendor("sandbox"), health=Health(command=command))
    data = await run_against(sandbox, tmp_path, vendor=vendor, run_filter="^gpu_sharing$")
    found = outcomes(data, "gpu_sharing")
    assert found["TwoContainersOneClaim"][0] == found["TwoPodsOneClaim"][0] == "passed"
    assert found["ConsumersUseTheSharedDevice"][0] == outcome
    assert says in found["ConsumersUseTheSharedDevice"][1]
    assert statuses(data) == {"gpu_sharing": "Partially Implemented"}
    assert leftovers(sandbox) == []


@module_loop
async def test_a_probe_that_times_out_fails_and_cleans_up(sandbox: Sandbox, tmp_path: Path) -> None:
    data = await run_against(sandbox, tmp_path, run_filter="^gpu_sharing$", timeout=0.3)
    (probe,) = data["probes"]
    assert probe["outcome"] == "failed"
    assert "timed out after 0.3s while" in probe["message"]
    assert leftovers(sandbox) == []


@module_loop
async def test_ctrl_c_stops_the_run_and_removes_its_objects(sandbox: Sandbox, tmp_path: Path) -> None:
    """The command against an already running cluster (here: the sandbox, through its kubeconfig)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "driver", "conformance", "run", "--kubeconfig", str(sandbox.kubeconfig),
        "--vendor", "sandbox", "--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--out", str(tmp_path),
        "--run", "Secure", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip

    def probe_pod_exists(store: Any) -> bool:
        return any(
            (p["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
            for p in sandbox.apiserver.objects(PODS)
        )

    await sandbox.apiserver.wait_for(probe_pod_exists, timeout=60)
    process.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 130, stdout.decode() + stderr.decode()
    assert "interrupted" in stderr.decode()
    assert leftovers(sandbox) == []
    data = json.loads((tmp_path / "results" / "results.json").read_text())
    assert data["interrupted"] is True
    assert "interrupted (Ctrl-C)" in data["probes"][0]["message"]
    (secure,) = [r for r in data["requirements"] if r["id"] == "secure_accelerator_access"]
    assert not secure["covered"] and secure["status"] == ""  # an interrupted probe proves nothing
    assert "run interrupted" in (tmp_path / E2E_LOG).read_text()

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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from driver.conformance.checklist import load_checklist, parse_checklist
from driver.conformance.context import MANAGED_BY, MANAGED_BY_LABEL
from driver.conformance.gotest import parse_junit, parse_test_json, parse_test_log
from driver.conformance.report import write_outputs
from driver.conformance.runner import RUN_LOG, RunOptions, run_suite
from driver.conformance.submission import check_submission
from driver.conformance.vendor import Health, Partitions, TimeSlicing, Vendor, Versions, load_vendor
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
    "workload_sandboxing",
    "pod_autoscaling",
    "gang_scheduling",
    "attribute_profile",
}
#: Probes whose APIs the sandbox does not serve: they skip, saying so (tests/unit cover them with fakes).
NOT_IN_SANDBOX = {"workload_sandboxing", "pod_autoscaling", "gang_scheduling"}


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
            "--checklist", str(FIXTURES / "checklist-1.37.yaml"), "--out", str(out),
            "--platform-name", "accel-dra sandbox", "--vendor-name", "Example Vendor",
        ],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    yield result, out


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results" / "summary.json").read_text())
    return data


def test_every_probe_passes_or_says_why_it_cannot_run_on_the_healthy_sandbox(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, out = cli_run
    data = summary(out)
    assert {p["name"] for p in data["probes"]} == ALL_PROBES
    outcomes = {(p["name"], c["name"]): c["outcome"] for p in data["probes"] for c in p["checks"]}
    skipped = {k for k, v in outcomes.items() if v == "skipped"}
    assert {p for p, _ in skipped} == NOT_IN_SANDBOX  # the sandbox serves no RuntimeClass, HPA or Kueue API
    assert {v for k, v in outcomes.items() if k not in skipped} == {"passed"}
    messages = {c["message"] for p in data["probes"] if p["name"] in NOT_IN_SANDBOX for c in p["checks"]}
    assert any("serves no node.k8s.io/v1 RuntimeClass" in m for m in messages)
    assert any("no custom-metrics API (custom.metrics.k8s.io)" in m for m in messages)
    assert any("serves no Kueue API (kueue.x-k8s.io)" in m for m in messages)
    assert "[1/10] TestDRASupport" in result.stderr  # progress, with the overall position
    assert "7 passed, 0 failed, 3 skipped" in result.stdout


def test_a_run_with_musts_left_for_the_platform_exits_non_zero_and_names_them(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, out = cli_run
    assert result.returncode == 1, result.stdout + result.stderr
    data = summary(out)
    open_musts = {
        r["id"] for r in data["requirements"] if r["level"] == "MUST" and r["status"] != "Implemented"
    }
    assert open_musts == {
        "ai_inference",
        "gang_scheduling",
        "cluster_autoscaling",
        "pod_autoscaling",
        "ai_service_metrics",
        "robust_controller",
    }
    for must in open_musts:
        assert f"    - {must} (left blank: left for the platform:" in result.stdout
    sources = {r["id"]: r["source"] for r in data["requirements"]}
    assert sources["secure_accelerator_access"] == sources["accelerator_metrics"] == "verified"
    assert sources["ai_inference"] == "open" and sources["workload_sandboxing"] == "not covered"


def test_the_filled_checklist_keeps_the_template_and_passes_the_validator_rules(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    template = load_checklist(str(FIXTURES / "checklist-1.37.yaml"))
    filled = parse_checklist((out / "PRODUCT.yaml").read_text(), "PRODUCT.yaml")
    verified = {
        "driver_runtime_management",
        "gpu_sharing",
        "accelerator_metrics",
        "secure_accelerator_access",
    }
    for requirement in filled.requirements:
        original = template.requirement(requirement.id)
        assert original is not None
        assert (requirement.description, requirement.level) == (original.description, original.level)
        if requirement.id in verified:
            assert requirement.status == "Implemented"
            assert "SANDBOX: a simulated cluster" in requirement.notes
            assert f"file://results/{requirement.id}/e2e.log" in requirement.evidence  # cited whole
            assert all("#L" not in e for e in requirement.evidence)  # fragments name tests, not lines
        elif requirement.level == "MUST":
            assert requirement.status == "" and requirement.notes.startswith("Left for the platform")
        elif requirement.id == "workload_sandboxing":
            assert requirement.status == "" and "RuntimeClass" in requirement.notes  # the honest note
        else:
            assert requirement == original
    assert filled.metadata["platformName"] == "accel-dra sandbox"
    draft = check_submission(out / "PRODUCT.yaml", template, draft=True)
    assert draft.errors == []
    strict = check_submission(out / "PRODUCT.yaml", template)
    assert set(strict.errors) == set(draft.todos)  # what only the platform can add, nothing else
    command = subprocess.run(
        [sys.executable, "-m", "driver", "conformance", "check", str(out / "PRODUCT.yaml"), "--draft",
         "--template", str(FIXTURES / "checklist-1.37.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert command.returncode == 0, command.stdout
    assert "passes the CNCF validator's rules (0 error(s), " in command.stdout


def test_the_artifacts_are_go_test_shaped_and_advisory_checks_stay_apart(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    results = out / "results"
    for directory in ("", "secure_accelerator_access", "advisory"):
        report = parse_test_json((results / directory / "results.json").read_text())
        assert report.failures == []
        assert parse_test_log((results / directory / "e2e.log").read_text()).outcomes == report.outcomes
        assert parse_junit((results / directory / "junit.xml").read_text()).outcomes == report.outcomes
    secure = parse_test_json((results / "secure_accelerator_access" / "results.json").read_text())
    assert set(secure.outcomes) == {
        "TestSecureAcceleratorAccess",
        "TestSecureAcceleratorAccess/PositiveAccessTest",
        "TestSecureAcceleratorAccess/NegativeIsolationTest",
        "TestSecureAcceleratorAccess/EnvVarBypassTest",
        "TestSecureAcceleratorAccess/MultiContainerIsolationTest",
    }  # that requirement's probe only
    everything = parse_test_json((results / "results.json").read_text()).outcomes
    assert "TestAttributeProfile" not in everything  # advisory: never in the cited artifacts
    assert set(parse_junit((results / "advisory" / "junit.xml").read_text()).outcomes) == {
        "TestAttributeProfile",
        "TestAttributeProfile/gpu.accel-dra.dev",
    }
    first = json.loads((results / "results.json").read_text().splitlines()[0])
    assert first["Action"] == "start" and first["Package"] == "accel-dra/conformance"
    verdict, package = (results / "e2e.log").read_text().splitlines()[-2:]
    assert verdict == "PASS" and package.startswith("ok  \taccel-dra/conformance\t")


def test_the_report_shows_platform_sources_reproduction_and_raw_output(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    report = (out / "report.html").read_text()
    for probe in ALL_PROBES:
        assert f'id="{probe}"' in report
    assert 'class="banner">SANDBOX RUN' in report
    assert (
        "http://127.0.0.1" not in report and "127.0.0.1" not in (out / "results" / "summary.json").read_text()
    )
    assert "verified by this run" in report and "left for the platform" in report
    assert "Steps to reproduce" in report and "accel-dra conformance run --sandbox" in report
    assert "Kubernetes <b>v1." in report
    # the advisory table: one row per device of the dgx-h100-mig node (6 whole GPUs, 7 + 4 MIG devices)
    assert report.count("<code>gpu-0000-") == 17
    assert "Sharing strategies shown: TimeSlicing, Partitions, ConsumableCapacity." in report
    assert "nvlinkDomain" in report and "81559Mi" in report
    assert "Unsatisfiable" in report and "cannot allocate" in report  # why the impossible claim stays pending
    assert "<details" not in report  # nothing collapsed: it prints in full
    manifests = yaml.safe_load_all(
        (out / "results" / "probes" / "secure_accelerator_access" / "manifests.yaml").read_text()
    )
    kinds = [m["kind"] for m in manifests]
    assert kinds[0] == "ResourceClaimTemplate" and kinds.count("Pod") == 4
    outputs = {
        p.name: p.read_text()
        for p in (out / "results" / "probes" / "secure_accelerator_access").glob("*.log")
    }
    assert len(outputs) == 5  # claimed, unclaimed, env-bypass, and the two containers of one pod
    (claimed,) = [text for name, text in outputs.items() if name.startswith("claimed-")]
    assert "RESULT: ACCELERATOR_COUNT=1" in claimed and "DEVICE: /dev/nvidia" in claimed


def test_sharing_consumers_use_the_device_and_env_vars_open_nothing(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = cli_run
    data = summary(out)
    messages = {(p["name"], c["name"]): c["message"] for p in data["probes"] for c in p["checks"]}
    sharing = messages[("gpu_sharing", "ConsumersUseTheSharedDevice")]
    assert sharing.startswith("all 10 consumers of shared devices ran `nvidia-smi --query-gpu=uuid,")
    assert "GPU-" in sharing  # what the tool printed in a consumer: it reached the device
    bypass = messages[("secure_accelerator_access", "EnvVarBypassTest")]
    assert "that sets NVIDIA_VISIBLE_DEVICES=all sees no device" in bypass


def test_the_sandbox_shows_every_sharing_strategy(
    cli_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """dgx-h100-mig with one GPU shared by memory: time slicing, MIG partitions and consumable capacity."""
    _, out = cli_run
    (probe,) = [p for p in summary(out)["probes"] if p["name"] == "gpu_sharing"]
    checks = {c["name"]: c for c in probe["checks"]}
    assert {
        n: checks[n]["outcome"] for n in ("TimeSlicing", "Partitions", "ConsumableCapacity")
    } == dict.fromkeys(("TimeSlicing", "Partitions", "ConsumableCapacity"), "passed")
    sliced = checks["TimeSlicing"]["message"]
    assert "ran at the same time on GPU-" in sliced and '"interval": "Long"' in sliced
    assert "every container was given 'TimeSlicing:Long'" in sliced  # the driver told each container
    partitions = checks["Partitions"]["message"]
    assert "-mig-" in partitions and "of one device (parentUUID GPU-" in partitions
    seen = partitions.split("they see ")[1].split(" and ")
    assert len(seen) == 2 and seen[0] != seen[1] and all(s.startswith("MIG-") for s in seen)
    capacity = checks["ConsumableCapacity"]["message"]
    assert "asking for 39Gi of memory, ran at the same time on device gpu-0000-5d-00-0" in capacity
    assert "consumedCapacity memory=39Gi (of 81559Mi free)" in capacity
    assert "a third claim that would exceed it stays unschedulable: '0/1 nodes are available" in capacity
    assert [s["strategy"] for s in probe["data"]["strategies"]] == [
        "TimeSlicing",
        "Partitions",
        "ConsumableCapacity",
    ]
    (sharing,) = [
        r for r in parse_checklist((out / "PRODUCT.yaml").read_text()).requirements if r.id == "gpu_sharing"
    ]
    assert sharing.status == "Implemented"
    assert "shown: TimeSlicing, Partitions, ConsumableCapacity" in sharing.notes


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
    write_outputs(suite, out, {})
    return summary(out)


#: fault -> (probe, the checks it must fail, what the first one's message must say)
FAULTS: dict[str, tuple[str, set[str], str]] = {
    FAULT_INCOMPLETE_POOL: ("dra_support", {"PoolsCompleteAndReachable"}, "1 of 2 slice(s) published"),
    FAULT_WRONG_DRIVER_VERSION: (
        "driver_runtime_management",
        {"DriverAndRuntimeCompatibility"},
        "publishes driverVersion 535.288.1, but nvidia-smi in a container given it reports 580.65.06",
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


@pytest.mark.parametrize("version", ["1.33", "1.34", "1.35", "1.36"])
@module_loop
async def test_older_checklists_keep_working(sandbox: Sandbox, tmp_path: Path, version: str) -> None:
    data = await run_against(
        sandbox, tmp_path, f"checklist-{version}.yaml", run_filter="Secure|^TestDRASupport$"
    )
    expected = {"secure_accelerator_access": "Implemented"}
    if version != "1.36":  # dra_support left the checklist in 1.36
        expected["dra_support"] = "Implemented"
    assert statuses(data) == expected
    template = load_checklist(str(FIXTURES / f"checklist-{version}.yaml"))
    assert check_submission(tmp_path / "PRODUCT.yaml", template, draft=True).errors == []
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
async def test_one_strategy_shown_is_enough_and_the_others_say_why_they_were_not(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """dgx-h100 without MIG or shared GPUs: time slicing is shown, the others are not offered."""
    data = await run_against(sandbox, tmp_path, "checklist-1.37.yaml", run_filter="^gpu_sharing$")
    found = outcomes(data, "gpu_sharing")
    assert found["TimeSlicing"][0] == "passed"
    assert found["Partitions"] == (
        "skipped",
        "gpu.accel-dra.dev publishes no physical device with two partitions (devices naming their parent in "
        "attribute parentUUID) on a Ready, schedulable node: MIG or partitioning is not set up",
    )
    assert found["ConsumableCapacity"] == (
        "skipped",
        "gpu.accel-dra.dev publishes no device that allows multiple allocations with a memory capacity on a "
        "Ready, schedulable node: sharing by consumable capacity is not set up",
    )
    assert statuses(data) == {"gpu_sharing": "Implemented"}
    (sharing,) = [r for r in data["requirements"] if r["id"] == "gpu_sharing"]
    assert "shown: TimeSlicing" in sharing["notes"]
    assert leftovers(sandbox) == []


async def test_partitionable_devices_are_shown_as_partitions(tmp_path: Path) -> None:
    """Dynamic MIG: the partitions are partitionable devices whose instances the driver creates at prepare."""
    dynamic = "--mig-mode=off,0000:0f:00.0=dynamic,0000:47:00.0=dynamic"  # GPU 0's static instances hidden
    config = SandboxConfig(
        profile="mig-dynamic", extra_plugin_args=(dynamic,), exporter=False, log_level="warning"
    )
    async with Sandbox(config) as box:
        data = await run_against(box, tmp_path, "checklist-1.37.yaml", run_filter="^gpu_sharing$")
        assert leftovers(box) == []
    outcome, message = outcomes(data, "gpu_sharing")["Partitions"]
    assert outcome == "passed", message
    assert "(partitionable devices: each consumes counters of the device it is cut from)" in message
    seen = message.split("they see ")[1].split(" and ")
    assert seen[0] != seen[1] and all(s.startswith("MIG-") for s in seen)  # instances created for the claims


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def uniform_mig() -> AsyncIterator[Sandbox]:
    """Only GPU 6 left in MIG mode, all its partitions 1g.10gb."""
    config = SandboxConfig(
        profile="dgx-h100-mig",
        extra_plugin_args=("--mig-mode=static,0000:db:00.0=off",),
        exporter=False,
        log_level="warning",
    )
    async with Sandbox(config) as box:
        yield box


@module_loop
async def test_partitions_of_a_uniform_mig_layout_are_shown(uniform_mig: Sandbox, tmp_path: Path) -> None:
    """Any two of seven equal partitions fit side by side."""
    data = await run_against(uniform_mig, tmp_path, "checklist-1.37.yaml", run_filter="^gpu_sharing$")
    assert leftovers(uniform_mig) == []
    outcome, message = outcomes(data, "gpu_sharing")["Partitions"]
    assert outcome == "passed", message
    assert "-mig-1g-10gb-" in message and "(partitionable devices" not in message
    seen = message.split("they see ")[1].split(" and ")
    assert seen[0] != seen[1] and all(s.startswith("MIG-") for s in seen)


@module_loop
async def test_without_a_partition_id_command_the_partitions_seen_are_not_checked(
    uniform_mig: Sandbox, tmp_path: Path
) -> None:
    """The whole GPU's id command would print the parent's UUID in both partitions' containers."""
    base = load_vendor("sandbox")
    partitions = Partitions(device_class="mig.accel-dra.dev")
    vendor = dataclasses.replace(base, sharing=dataclasses.replace(base.sharing, partitions=partitions))
    data = await run_against(
        uniform_mig, tmp_path, "checklist-1.37.yaml", vendor=vendor, run_filter="^gpu_sharing$"
    )
    outcome, message = outcomes(data, "gpu_sharing")["Partitions"]
    assert outcome == "passed", message
    assert message.endswith(
        "what each container sees of its partition was not checked (sharing.partitions.identityCommand is not set)"
    )
    assert "they see" not in message  # no ids compared


@pytest.mark.parametrize(
    ("time_slicing", "outcome", "says", "verdict"),
    [
        (
            TimeSlicing(),
            "skipped",
            "names no time-slicing configuration (sharing.timeSlicing.config)",
            "not offered",
        ),
        (  # the pods ran and the config reached the allocation: what Kubernetes gives any driver
            dataclasses.replace(load_vendor("sandbox").sharing.time_slicing, show_command=None, expect=None),
            "skipped",
            "in its allocation; but no container can show the setting it was given",
            "not shown (skipped)",
        ),
        (
            dataclasses.replace(load_vendor("sandbox").sharing.time_slicing, expect="TimeSlicing:Short"),
            "failed",
            "a container was not given the time-slicing setting (expected 'TimeSlicing:Short')",
            "FAILED",
        ),
    ],
)
@module_loop
async def test_without_a_shown_strategy_sharing_is_only_partially_implemented(
    sandbox: Sandbox, tmp_path: Path, *, time_slicing: TimeSlicing, outcome: str, says: str, verdict: str
) -> None:
    base = load_vendor("sandbox")
    vendor = dataclasses.replace(base, sharing=dataclasses.replace(base.sharing, time_slicing=time_slicing))
    data = await run_against(
        sandbox, tmp_path, "checklist-1.37.yaml", vendor=vendor, run_filter="^gpu_sharing$"
    )
    found = outcomes(data, "gpu_sharing")
    assert found["TimeSlicing"][0] == outcome and says in found["TimeSlicing"][1]
    (probe,) = data["probes"]
    assert probe["data"]["strategies"][0]["verdict"] == verdict  # what the report's table says
    assert found["TwoPodsOneClaim"][0] == found["ConsumersUseTheSharedDevice"][0] == "passed"
    assert statuses(data) == {"gpu_sharing": "Partially Implemented"}  # no strategy shown / one failed
    (sharing,) = [r for r in data["requirements"] if r["id"] == "gpu_sharing"]
    if outcome == "skipped":
        assert "none of TimeSlicing, Partitions, ConsumableCapacity was shown" in sharing["notes"]
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
    data = summary(tmp_path)
    assert data["interrupted"] is True
    assert "interrupted (Ctrl-C)" in data["probes"][0]["message"]
    (secure,) = [r for r in data["requirements"] if r["id"] == "secure_accelerator_access"]
    assert secure["source"] == "open" and secure["status"] == ""  # an interrupted probe proves nothing
    assert "run interrupted" in (tmp_path / RUN_LOG).read_text()
